"""ingest: raw sources → validate → (re-key by impression) → dedup + join → canonical events.

Two agents, because dedup and join state must be co-partitioned by impression_id while the raw
topics may be keyed by anything: `validate` re-keys, `join` owns the state.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections import Counter
from typing import Any

import orjson
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from services.ingest.app import app, settings
from services.ingest.formats import (
    Limits,
    Rejected,
    parse_ad_event,
    parse_click,
    parse_clickstream,
    parse_impression,
)
from services.ingest.join import Outcome, Record, apply_once, expire, new_entry, on_event
from shared import metrics
from shared.app import keyed_table, owned_partitions, raw_schema, table_json
from shared.batch_output import BatchOutput
from shared.bundles import Bundler, unbundle
from shared.direct_reader import DirectReader
from shared.event_batches import event_batches
from shared.source_idleness import SourceActivity
from shared.topics import canonical_key, topic_names
from shared.watermark_relay import RelayedWatermark, repeat_markers
from shared.watermarks import MARKER_KIND, MARKER_REPEAT_S, NEG_INF

log = logging.getLogger(__name__)
topics = topic_names(settings)
limits = Limits.from_settings(settings)
PARTITIONS = settings.topic_partitions
by_key_topic = app.topic(topics.by_event_key, partitions=PARTITIONS, schema=raw_schema())

PARSERS = {
    topics.impressions: parse_impression,
    topics.clicks: parse_click,
    topics.ad_events: parse_ad_event,
    topics.clickstream: parse_clickstream,
}
SOURCE_NAMES = {
    topics.impressions: "impressions",
    topics.clicks: "clicks",
    topics.ad_events: "ad_events",
    topics.clickstream: "clickstream",
}
RAW_SOURCE_PARTITIONS = len(PARSERS) * PARTITIONS
IDLE_CHECK_S = 0.5  # how often raw partitions are checked for "nothing left to read"

join_state = keyed_table(app, "join_state", PARTITIONS)  # key: impression_id

# What happened to every input message, for /stats and the accounting tests.
outcomes: Counter[str] = Counter()


def dead_letter_headers(record: ConsumerRecord, err: Rejected) -> list[tuple[str, bytes]]:
    return [
        ("dlq.reason", err.reason.encode()),
        ("dlq.detail", err.detail.encode("utf-8", "replace")[:500]),
        ("dlq.topic", record.topic.encode()),
        ("dlq.partition", str(record.partition).encode()),
        ("dlq.offset", str(record.offset).encode()),
        ("dlq.stage", b"ingest"),
    ]


async def claim_raw_partitions(assigned: set[TopicPartition]) -> None:
    """Before reading raw partitions it has just been given, say that they are active: an idle
    claim by their previous reader (that died, or left) may still look fresh downstream while
    input has arrived behind it. Idle ones are marked idle again before the first batch's events
    go on (or at the timer's next tick). Runs inside the raw reader's rebalance, under its lock
    (validate_lock). Not while the worker stops: it validates nothing more (see validate_batches),
    and its producer may be gone already (the claim failed with NotReady in a test's log)."""
    if app.should_stop:
        return
    raw_activity.unchecked = True
    out = BatchOutput(app)
    for tp in sorted(assigned):
        source = f"{tp.topic}:{tp.partition}"
        progress = raw_progress.get(source, NEG_INF)
        await out.broadcast_marker(topics.by_event_key, PARTITIONS, source, progress, RAW_SOURCE_PARTITIONS)
    await out.flush()


# The raw topics bypass faust's per-message path (shared/direct_reader.py); the faust group
# that read them before keeps the offsets a first start begins from.
raw_reader = DirectReader(
    settings,
    topics.raw_sources(),
    f"{app.conf.id}-raw",
    app.conf.id,
    on_assigned=claim_raw_partitions,
    track_committed=True,  # the idle check (raw_activity) reads them
)
raw_activity = SourceActivity(
    raw_reader, topics.raw_sources(), settings.source_idle_timeout_ms / 1000, never_active_quiet_s=0.0
)
app.direct_consumers.append(raw_reader)  # its lag on /metrics
raw_progress: dict[str, int] = {}  # raw source partition -> max valid event time
# A validate batch, the idle-marker timer and a raw rebalance must not interleave.
validate_lock = raw_reader.lock
# A join batch and the marker repeats must not interleave either: a batch's events wait in their
# per-partition batches until its flush, and a repeated "idle" must not overtake them.
join_lock = asyncio.Lock()


@app.task
async def validate() -> None:
    await raw_reader.run(validate_batches, "validate", lambda: app.should_stop)


async def validate_batches() -> None:
    out = BatchOutput(app)
    by_key = Bundler(topics.by_event_key, PARTITIONS)
    async for batch in raw_reader.batches(settings.batch_max_events, settings.batch_within_seconds):
        async with validate_lock:
            if batch.stale or app.should_stop:  # stopping: left to the partitions' next owner
                continue
            if raw_activity.unchecked:
                # First batch since an assignment: say which partitions are empty before any event
                # goes on, not at the timer's next tick. Until the join has heard every source
                # its watermark is unknown, and ctr counts all it gets, however late: a backlog
                # drained on a loaded machine went 80% through before the tick's markers did.
                raw_activity.unchecked = False
                await send_idle_markers(out, [tp for tp, _ in await raw_activity.idle_partitions()])
            await validate_records(batch.records, out, by_key)
            await out.flush()
            for tp, next_offset in batch.next_offsets().items():
                raw_activity.processed(tp, next_offset - 1)
            # Only now, with everything the batch produced acknowledged.
            await raw_reader.commit(batch)
            metrics.count_topics(metrics.events_in, "ingest", (m.topic for m in batch.records))


async def validate_records(records: list[ConsumerRecord], out: BatchOutput, by_key: Bundler) -> None:
    """Parse and normalize raw messages into `by_key`'s bundles (rejects to the dead letters), send
    them, then the progress of the raw sources (topic:partition) they came from; the caller
    flushes `out`. bench/ingest_cpu.py drives it alone."""
    progress = raw_progress
    touched: set[str] = set()
    for m in records:
        try:
            rec = PARSERS[m.topic](m.value, limits)
        except Rejected as err:
            outcomes[f"dead_letter:{err.reason}"] += 1
            metrics.dead_lettered.labels("ingest", err.reason).inc()
            headers = dead_letter_headers(m, err)
            await out.send(topics.dead_letters, m.key, m.value or b"", headers=headers)
            continue
        rec["src"] = f"{m.topic}:{m.partition}:{m.offset}"
        rec["source"] = SOURCE_NAMES[m.topic]
        source = f"{m.topic}:{m.partition}"
        if rec["ts"] > progress.get(source, NEG_INF):
            progress[source] = rec["ts"]
        # Where the stream stood at this message (markers only come after the batch): the
        # join measures a click's wait and an id's TTL from here.
        rec["at"] = progress[source]
        touched.add(source)
        by_key.add(rec["dedup_key"].encode(), orjson.dumps(rec))
    # One message per ingest-by-key partition and batch (shared/bundles.py), then markers.
    await by_key.send(out)
    for source in touched:
        await out.broadcast_marker(
            topics.by_event_key, PARTITIONS, source, progress[source], RAW_SOURCE_PARTITIONS
        )


@app.timer(interval=IDLE_CHECK_S)
async def mark_idle_sources() -> None:
    """Tell the join which raw partitions have nothing left to read, so it need not wait for them
    (often enough that an empty source topic does not hold the watermark while a backlog drains).

    The end offsets are asked for outside validate's lock: that round trip can wait up to a
    fetch's long poll behind the consumer's fetch on the same connection, and validate must not
    wait with it (measured: it halved ingest's rate once most fetches came back empty). A
    partition validate read from in the meantime is left for the next check."""
    candidates = await raw_activity.idle_partitions()
    if not candidates:
        return
    out = BatchOutput(app)
    async with validate_lock:
        await send_idle_markers(out, raw_activity.still_idle(candidates))


async def send_idle_markers(out: BatchOutput, idle: list[Any]) -> None:
    for tp in idle:
        source = f"{tp.topic}:{tp.partition}"
        progress = raw_progress.get(source, NEG_INF)
        await out.broadcast_marker(
            topics.by_event_key, PARTITIONS, source, progress, RAW_SOURCE_PARTITIONS, idle=True
        )
    await out.flush()


class ExpiryIndex:
    """Keys bucketed by when they fall due (event time), so a sweep visits only the due buckets
    instead of every key held: each key is looked at about once per change, not once per sweep.
    The buckets' numbers are in a heap, so a sweep reads only the due ones: scanning them all
    was 7% of ingest draining a 5M-event backlog, whose held ids span hours of event time."""

    def __init__(self, bucket_ms: int) -> None:
        self.bucket_ms = bucket_ms
        self.buckets: dict[int, set[bytes]] = {}
        self.bucket_of: dict[bytes, int] = {}
        self._order: list[int] = []  # heap of the numbers of `buckets`

    def track(self, key: bytes, due_ms: int) -> None:
        b = due_ms // self.bucket_ms
        old = self.bucket_of.get(key)
        if old == b:
            return
        if old is not None:
            self.buckets[old].discard(key)
        keys = self.buckets.get(b)
        if keys is None:
            keys = self.buckets[b] = set()
            heapq.heappush(self._order, b)
        keys.add(key)
        self.bucket_of[key] = b

    def untrack(self, key: bytes) -> None:
        old = self.bucket_of.pop(key, None)
        if old is not None:
            self.buckets[old].discard(key)

    def due(self, now_ms: int) -> list[bytes]:
        """Keys whose bucket has started by now (a survivor is re-tracked by the caller)."""
        keys: list[bytes] = []
        order = self._order
        while order and order[0] * self.bucket_ms <= now_ms:
            for key in self.buckets.pop(heapq.heappop(order)):
                del self.bucket_of[key]
                keys.append(key)
        return keys


class JoinPartition:
    """In-memory companions of one partition's join state: its watermark and what to expire."""

    def __init__(self, p: int) -> None:
        self.relay = RelayedWatermark(f"join:{p}")
        self.forget_at = ExpiryIndex(SWEEP_EVERY_MS)  # key -> when its dedup TTL runs out
        self.orphan_at = ExpiryIndex(1_000)  # key -> when its first waiting click is an orphan
        self.swept_at = NEG_INF

    def track(self, key: bytes, entry: Record) -> None:
        self.forget_at.track(key, entry["t"] + settings.dedup_ttl_ms)
        if entry["pending"]:
            first = min(c["wait_from"] for c in entry["pending"])
            self.orphan_at.track(key, first + settings.join_window_ms)
        else:
            self.orphan_at.untrack(key)

    def untrack(self, key: bytes) -> None:
        self.forget_at.untrack(key)
        self.orphan_at.untrack(key)


join_partitions: dict[int, JoinPartition] = {}
SWEEP_EVERY_MS = max(1_000, min(settings.join_window_ms, settings.dedup_ttl_ms) // 10)


def partition_state(p: int) -> JoinPartition:
    if not join_partitions:
        # First batch since start: index what table recovery restored.
        for key, raw in join_state.items():
            entry = orjson.loads(raw)
            join_partitions.setdefault(entry["p"], JoinPartition(entry["p"])).track(key, entry)
    part = join_partitions.get(p)
    if part is None:
        part = join_partitions[p] = JoinPartition(p)
    return part


class JoinBatch:
    """One batch's view of the join state: entries are read once, changed in memory, and written
    back only after the batch's outputs are on the broker (so "applied" implies "delivered")."""

    def __init__(self, out: BatchOutput, canonical: Bundler) -> None:
        self.out = out
        self.canonical = canonical  # ctr and engagement pay per Kafka message: bundles
        self.entries: dict[bytes, Record] = {}
        self.writes: dict[bytes, bytes | None] = {}

    def entry(self, key: bytes, p: int) -> Record:
        e = self.entries.get(key)
        if e is None:
            raw = join_state.get_stored(key)
            e = self.entries[key] = orjson.loads(raw) if raw is not None else new_entry(p)
        return e

    async def emit(self, outcome: Outcome, seq_base: list[int] | None) -> None:
        for i, rec in enumerate(outcome.emit):
            outcomes[f"counted:{rec['kind']}"] += 1
            # seq lets ctr/engagement recognise a canonical event produced again after a crash.
            # (Set in place: the join makes each emitted record afresh, see join.canonical.)
            if seq_base is not None:
                rec["seq"] = [*seq_base, i]
            self.canonical.add(canonical_key(rec), orjson.dumps(rec))
        for rec in outcome.discard:
            outcomes[rec["reason"]] += 1
            metrics.discarded.labels("ingest", rec["reason"]).inc()
            await self.out.send(topics.discarded, rec["src"].encode(), orjson.dumps(rec))

    def changed(self, key: bytes, entry: Record, forget: bool = False) -> None:
        self.writes[key] = None if forget else table_json(entry)

    async def send_events(self) -> None:
        """The events so far, ahead of a marker (or of the batch's end)."""
        await self.canonical.send(self.out)

    async def commit(self) -> None:
        await self.send_events()
        await self.out.flush()
        await join_state.write_many(self.out, self.writes)
        await self.out.flush()


async def sweep(batch: JoinBatch, part: JoinPartition, p: int, wm: int) -> None:
    """Orphan clicks past the join window; forget entries past the dedup TTL. Visits only the keys
    the expiry indexes say are due."""
    keys = set(part.orphan_at.due(wm))
    if wm - part.forget_at.bucket_ms >= part.swept_at:
        keys.update(part.forget_at.due(wm))
        part.swept_at = wm
    for key in keys:
        if key not in batch.entries and join_state.get_stored(key) is None:
            part.untrack(key)
            continue
        entry = batch.entry(key, p)
        forget, outcome = expire(entry, wm, settings.join_window_ms, settings.dedup_ttl_ms)
        await batch.emit(outcome, None)
        if forget:
            batch.changed(key, entry, forget=True)
            part.untrack(key)
        else:
            if outcome.discard:
                batch.changed(key, entry)
            part.track(key, entry)  # not due yet (or still waiting): back in its bucket


@app.on_partitions_assigned.connect
async def reindex_after_assignment(app: Any, assigned: Any, **kwargs: Any) -> None:
    await reindex_after_rebalance(app)


@app.on_rebalance_complete.connect
async def reindex_after_rebalance(app: Any, **kwargs: Any) -> None:
    """Tables are recovered now: rebuild the in-memory indexes from them (lazily, next use)."""
    # Rebuilt from the recovered table at the next batch (see partition_state).
    join_partitions.clear()


async def advance(batch: JoinBatch, part: JoinPartition, p: int) -> None:
    """If the partition's watermark moved: expire what it passed, then tell ctr and engagement."""
    if part.relay.moved():
        await sweep(batch, part, p, part.relay.watermark.value)
        await batch.send_events()
        await part.relay.forward(batch.out, topics.canonical, PARTITIONS)


@app.agent(by_key_topic)
async def join(stream: Any) -> None:
    out = BatchOutput(app)
    canonical = Bundler(topics.canonical, PARTITIONS)
    async for events in event_batches(stream, settings.batch_max_events, settings.batch_within_seconds):
        async with join_lock:
            messages = [(e.message.partition, e.message.offset, e.value) for e in events]
            await join_messages(JoinBatch(out, canonical), messages)


async def join_messages(batch: JoinBatch, messages: list[tuple[int, int, bytes]]) -> None:
    """One batch of ingest-by-key messages (partition, offset, value): dedup and join them, and
    send their canonical events, markers and join state (bench/ingest_cpu.py drives it alone)."""
    touched: set[int] = set()
    for p, offset, value in messages:
        part = partition_state(p)
        touched.add(p)
        for j, rec in unbundle(value):
            if rec.get("kind") == MARKER_KIND:
                part.relay.observe(rec)
                # Progress goes on at once, in order with the events around it: what
                # ctr may judge late must not depend on how many bundles a batch took
                # (a first batch holding a whole backlog left ctr blind all through it).
                await advance(batch, part, p)
                continue
            key = rec["dedup_key"].encode()
            entry = batch.entry(key, p)
            if not apply_once(entry, rec["src"]):
                outcomes["replayed"] += 1
                continue
            outcome = on_event(entry, rec, max(rec["at"], part.relay.watermark.value))
            batch.changed(key, entry)
            part.track(key, entry)
            await batch.emit(outcome, [p, offset, j])
    for p in touched:
        part = join_partitions[p]
        await advance(batch, part, p)
        await batch.send_events()
        await part.relay.forward(batch.out, topics.canonical, PARTITIONS)  # idleness, first word
    await batch.commit()


@app.timer(interval=MARKER_REPEAT_S)
async def repeat_join_markers() -> None:
    owned = owned_partitions(app, topics.by_event_key)()
    async with join_lock:
        relays = [join_partitions[p].relay for p in owned if p in join_partitions]
        await repeat_markers(BatchOutput(app), relays, topics.canonical, PARTITIONS)


@app.page("/stats")
async def stats(web: Any, request: Any) -> Any:
    return web.json({"outcomes": dict(outcomes), "partitions": sorted(join_partitions)})


@app.page("/watermarks")
async def watermarks(web: Any, request: Any) -> Any:
    """Event-time progress: how far each raw source got, what each join partition forwards."""
    return web.json(
        {
            "raw_sources": dict(raw_progress),
            "join": {p: part.relay.describe() for p, part in sorted(join_partitions.items())},
        }
    )
