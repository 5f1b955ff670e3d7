"""ingest: raw sources → validate → (re-key by impression) → dedup + join → canonical events.

Two agents, because dedup and join state must be co-partitioned by impression_id while the raw
topics may be keyed by anything: `validate` re-keys, `join` owns the state.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import orjson
from faust.types import EventT

from services.ingest.app import app, settings
from services.ingest.formats import Limits, Rejected, parse_click, parse_impression
from services.ingest.join import Record, expire, new_entry, on_event
from shared.app import keyed_table, raw_schema
from shared.batch_output import BatchOutput
from shared.topics import topic_names
from shared.watermarks import MARKER_KIND, NEG_INF, MultiSourceWatermark

log = logging.getLogger(__name__)
topics = topic_names(settings)
limits = Limits.from_settings(settings)
PARTITIONS = settings.topic_partitions
raw_topic = app.topic(*topics.raw_sources(), schema=raw_schema())
by_impression_topic = app.topic(topics.by_impression, partitions=PARTITIONS, schema=raw_schema())

PARSERS = {topics.impressions: parse_impression, topics.clicks: parse_click}
RAW_SOURCE_PARTITIONS = len(PARSERS) * PARTITIONS

join_state = keyed_table(app, "join_state", PARTITIONS)  # key: impression_id

# What happened to every input message, for /stats and the accounting tests.
outcomes: Counter[str] = Counter()


def src_of(event: EventT) -> str:
    m = event.message
    return f"{m.topic}:{m.partition}:{m.offset}"


def dead_letter_headers(event: EventT, err: Rejected) -> list[tuple[str, bytes]]:
    m = event.message
    return [
        ("dlq.reason", err.reason.encode()),
        ("dlq.detail", err.detail.encode("utf-8", "replace")[:500]),
        ("dlq.topic", m.topic.encode()),
        ("dlq.partition", str(m.partition).encode()),
        ("dlq.offset", str(m.offset).encode()),
        ("dlq.stage", b"ingest"),
    ]


@app.agent(raw_topic)
async def validate(stream: Any) -> None:
    out = BatchOutput(app)
    progress: dict[str, int] = {}  # raw source partition -> max valid event time
    async for events in stream.take_events(settings.batch_max_events, settings.batch_within_seconds):
        touched: set[str] = set()
        for event in events:
            m = event.message
            try:
                rec = PARSERS[m.topic](event.value, limits)
            except Rejected as err:
                outcomes[f"dead_letter:{err.reason}"] += 1
                headers = dead_letter_headers(event, err)
                await out.send(topics.dead_letters, m.key, event.value or b"", headers=headers)
                continue
            rec["src"] = src_of(event)
            await out.send(topics.by_impression, rec["impression_id"].encode(), orjson.dumps(rec))
            source = f"{m.topic}:{m.partition}"
            if rec["ts"] > progress.get(source, NEG_INF):
                progress[source] = rec["ts"]
            touched.add(source)
        for source in touched:
            await out.broadcast_marker(
                topics.by_impression, PARTITIONS, source, progress[source], RAW_SOURCE_PARTITIONS
            )
        await out.flush()


class JoinPartition:
    """In-memory companions of one partition's join state: its watermark and what to expire."""

    def __init__(self) -> None:
        self.watermark = MultiSourceWatermark(settings.idle_flush_timeout_ms / 1000)
        self.sent_watermark = NEG_INF
        self.last_ts: dict[bytes, int] = {}  # key -> latest event time (for TTL expiry)
        self.pending: set[bytes] = set()  # keys holding clicks that wait for their impression
        self.swept_at = NEG_INF


join_partitions: dict[int, JoinPartition] = {}
SWEEP_EVERY_MS = max(1_000, min(settings.join_window_ms, settings.dedup_ttl_ms) // 10)


def partition_state(p: int) -> JoinPartition:
    if not join_partitions:
        # First batch since start: index what table recovery restored.
        for key, raw in join_state.items():
            entry = orjson.loads(raw)
            part = join_partitions.setdefault(entry["p"], JoinPartition())
            part.last_ts[key] = entry["t"]
            if entry["pending"]:
                part.pending.add(key)
    return join_partitions.setdefault(p, JoinPartition())


async def emit_outcome(out: BatchOutput, emit: list[Record], discard: list[Record]) -> None:
    for rec in emit:
        outcomes[f"counted:{rec['kind']}"] += 1
        await out.send(topics.canonical, rec["campaign_id"].encode(), orjson.dumps(rec))
    for rec in discard:
        outcomes[rec["reason"]] += 1
        await out.send(topics.discarded, rec["impression_id"].encode(), orjson.dumps(rec))


async def sweep(out: BatchOutput, part: JoinPartition, wm: int) -> None:
    """Orphan clicks past the join window; forget entries past the dedup TTL."""
    full = wm - part.swept_at >= SWEEP_EVERY_MS
    keys = list(part.last_ts) if full else list(part.pending)
    for key in keys:
        raw = join_state.get(key)
        if raw is None:
            part.last_ts.pop(key, None)
            part.pending.discard(key)
            continue
        entry = orjson.loads(raw)
        had_pending = bool(entry["pending"])
        forget, outcome = expire(entry, wm, settings.join_window_ms, settings.dedup_ttl_ms)
        await emit_outcome(out, outcome.emit, outcome.discard)
        if not entry["pending"]:
            part.pending.discard(key)
        if forget:
            del join_state[key]
            part.last_ts.pop(key, None)
        elif had_pending and outcome.discard:
            join_state[key] = orjson.dumps(entry)
    if full:
        part.swept_at = wm


@app.agent(by_impression_topic)
async def join(stream: Any) -> None:
    out = BatchOutput(app)
    async for events in stream.take_events(settings.batch_max_events, settings.batch_within_seconds):
        touched: set[int] = set()
        for event in events:
            p = event.message.partition
            part = partition_state(p)
            rec = orjson.loads(event.value)
            touched.add(p)
            if rec.get("kind") == MARKER_KIND:
                part.watermark.observe(rec["src"], rec["ts"], rec["of"])
                continue
            key = event.key
            raw = join_state.get(key)
            entry = orjson.loads(raw) if raw is not None else new_entry(p)
            outcome = on_event(entry, rec, part.watermark.value)
            join_state[key] = orjson.dumps(entry)
            part.last_ts[key] = entry["t"]
            if entry["pending"]:
                part.pending.add(key)
            else:
                part.pending.discard(key)
            await emit_outcome(out, outcome.emit, outcome.discard)
        for p in touched:
            part = join_partitions[p]
            wm = part.watermark.recompute()
            if wm > part.sent_watermark:
                await sweep(out, part, wm)
                await out.broadcast_marker(topics.canonical, PARTITIONS, f"join:{p}", wm, PARTITIONS)
                part.sent_watermark = wm
        await out.flush()


@app.page("/stats")
async def stats(web: Any, request: Any) -> Any:
    return web.json({"outcomes": dict(outcomes), "partitions": sorted(join_partitions)})
