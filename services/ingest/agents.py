"""ingest: raw sources → validate → (re-key by impression) → dedup + join → canonical events.

Two agents, because dedup and join state must be co-partitioned by impression_id while the raw
topics may be keyed by anything: `validate` re-keys, `join` owns the state.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from services.ingest import validating
from services.ingest.app import app, settings
from services.ingest.formats import Limits, parse_ad_event, parse_click, parse_clickstream, parse_impression
from services.ingest.joining import Join, JoinBatch, join_messages
from services.ingest.validating import Parser, Validation
from shared import metrics
from shared.app import keyed_table, owned_partitions, raw_schema
from shared.batch_output import BatchOutput
from shared.bundles import Bundler
from shared.direct_reader import DirectReader
from shared.event_batches import event_batches
from shared.source_idleness import SourceActivity
from shared.topics import topic_names
from shared.watermark_relay import repeat_markers
from shared.watermarks import MARKER_REPEAT_S, NEG_INF

log = logging.getLogger(__name__)
topics = topic_names(settings)
limits = Limits.from_settings(settings)
PARTITIONS = settings.topic_partitions
by_key_topic = app.topic(topics.by_event_key, partitions=PARTITIONS, schema=raw_schema())

# What happened to every input message, for /stats and the accounting tests.
outcomes: Counter[str] = Counter()
PARSERS: dict[str, Parser] = {
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
validation = Validation(PARSERS, SOURCE_NAMES, limits, topics, PARTITIONS, outcomes)
RAW_SOURCE_PARTITIONS = validation.raw_source_partitions
IDLE_CHECK_S = 0.5  # how often raw partitions are checked for "nothing left to read"

join_state = keyed_table(app, "join_state", PARTITIONS)  # key: impression_id

# The join's state and its in-memory indexes (services/ingest/joining.py).
joiner = Join(join_state, topics, PARTITIONS, settings.join_window_ms, settings.dedup_ttl_ms, outcomes)


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
# raw source partition -> max valid event time (validation's, kept across reader restarts)
raw_progress = validation.progress
# A validate batch, the idle-marker timer and a raw rebalance must not interleave.
validate_lock = raw_reader.lock
# A join batch and the marker repeats must not interleave either: a batch's events wait in their
# per-partition batches until its flush, and a repeated "idle" must not overtake them.
join_lock = asyncio.Lock()


@app.task
async def validate() -> None:
    await raw_reader.run(validate_batches, "validate", lambda: app.should_stop)


def by_key_bundler() -> Bundler:
    """validate's bundles, one per ingest-by-key partition and batch. Their keys, the dedup ids, are
    nearly all new: remembering their partitions would only fill a cache and empty it again."""
    return Bundler(topics.by_event_key, PARTITIONS, remember_partitions=False)


async def validate_batches() -> None:
    out = BatchOutput(app)
    by_key = by_key_bundler()
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
    """services/ingest/validating.py's loop with this worker's parsers, outcomes and progress."""
    await validating.validate_records(validation, records, out, by_key)


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


@app.on_partitions_assigned.connect
async def reindex_after_assignment(app: Any, assigned: Any, **kwargs: Any) -> None:
    await reindex_after_rebalance(app)


@app.on_rebalance_complete.connect
async def reindex_after_rebalance(app: Any, **kwargs: Any) -> None:
    """Tables are recovered now: rebuild the in-memory indexes from them (lazily, next use)."""
    # Rebuilt from the recovered table at the next batch (see Join.partition_state).
    joiner.partitions.clear()


@app.agent(by_key_topic)
async def join(stream: Any) -> None:
    out = BatchOutput(app)
    canonical = Bundler(topics.canonical, PARTITIONS)
    async for events in event_batches(stream, settings.batch_max_events, settings.batch_within_seconds):
        async with join_lock:
            messages = [(e.message.partition, e.message.offset, e.value) for e in events]
            await join_messages(JoinBatch(joiner, out, canonical), messages)


@app.timer(interval=MARKER_REPEAT_S)
async def repeat_join_markers() -> None:
    owned = owned_partitions(app, topics.by_event_key)()
    async with join_lock:
        relays = [joiner.partitions[p].relay for p in owned if p in joiner.partitions]
        await repeat_markers(BatchOutput(app), relays, topics.canonical, PARTITIONS)


@app.page("/stats")
async def stats(web: Any, request: Any) -> Any:
    return web.json({"outcomes": dict(outcomes), "partitions": sorted(joiner.partitions)})


@app.page("/watermarks")
async def watermarks(web: Any, request: Any) -> Any:
    """Event-time progress: how far each raw source got, what each join partition forwards."""
    return web.json(
        {
            "raw_sources": dict(raw_progress),
            "join": {p: part.relay.describe() for p, part in sorted(joiner.partitions.items())},
        }
    )
