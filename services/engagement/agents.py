"""engagement agents: canonical events → one message per dimension → per-key windows and distinct
sets → engagement-metrics (+ late-events).

Two agents, because canonical-events is keyed by campaign (clickstream: by user) while the metrics
are per device, user, item and experiment: `fan_out` re-keys each event to every dimension it has
and forwards the watermark (as ingest's join does to canonical-events); `aggregate` owns the keys'
windows (shared.windowed_agent, the same engine and settings as ctr) and distinct sets
(services.engagement.distinct: why and how distinct counts stay exact and bounded).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from services.engagement.app import app, engagement_settings, settings
from services.engagement.distinct import DistinctSets, aggregate_key_of, counting
from services.engagement.fan_out import fan_out_batch
from services.engagement.metrics import (
    EXPERIMENT,
    Record,
    lifetime_arms,
    split_key,
    window_records,
)
from services.engagement.readout import readout_records
from shared.app import key_partition, keyed_table, owned_partitions, raw_schema, table_json
from shared.batch_output import BatchOutput
from shared.bundles import Bundler, unbundle
from shared.event_batches import event_batches
from shared.topics import topic_names
from shared.watermark_relay import RelayedWatermark, repeat_markers
from shared.watermarks import MARKER_REPEAT_S
from shared.windowed_agent import BatchResult, WindowedAggregation
from shared.windows import WindowSpec

topics = topic_names(settings)
PARTITIONS = settings.topic_partitions

canonical_topic = app.topic(topics.canonical, partitions=PARTITIONS, schema=raw_schema())
by_key_topic = app.topic(topics.engagement_by_key, partitions=PARTITIONS, schema=raw_schema())

# dimension key -> its open windows; co-partitioned with engagement-by-key.
engagement_windows = keyed_table(app, "engagement_windows", PARTITIONS)
# one entry per distinct-set member, in the partition of its dimension key (see distinct.py).
engagement_distinct = keyed_table(app, "engagement_distinct", PARTITIONS, partition_by=aggregate_key_of)
# "experiment:<name>" -> {variation: latest readout}; served by the views.
engagement_readouts = keyed_table(app, "engagement_readouts", PARTITIONS)

spec = WindowSpec(settings.window_size_ms, settings.allowed_lateness_ms, settings.watermark_delay_ms)


windows = WindowedAggregation(
    engagement_windows,
    spec,
    settings.idle_flush_timeout_ms / 1000,
    PARTITIONS,
    assigned=owned_partitions(app, topics.engagement_by_key),
)
distinct = DistinctSets(engagement_distinct, spec, PARTITIONS)


# -- fan out -------------------------------------------------------------------------------------
# canonical partition -> its event-time progress, forwarded to engagement-by-key
fan_out_partitions: dict[int, RelayedWatermark] = {}
# A fan-out batch and the marker repeats must not interleave: a batch's bundles wait until its
# flush, and a repeated "idle" must not overtake them.
fan_out_lock = asyncio.Lock()


def fan_out_partition(p: int) -> RelayedWatermark:
    relay = fan_out_partitions.get(p)
    if relay is None:
        relay = fan_out_partitions[p] = RelayedWatermark(f"engagement-fan-out:{p}")
    return relay


@app.agent(canonical_topic)
async def fan_out(stream: Any) -> None:
    out = BatchOutput(app)
    # One message per engagement-by-key partition and batch, not one per event and dimension.
    bundles = Bundler(topics.engagement_by_key, PARTITIONS)
    async for events in event_batches(stream, settings.batch_max_events, settings.batch_within_seconds):
        async with fan_out_lock:
            await fan_out_batch(events, bundles, out, fan_out_partition)


@app.timer(interval=MARKER_REPEAT_S)
async def repeat_fan_out_markers() -> None:
    owned = owned_partitions(app, topics.canonical)()
    async with fan_out_lock:
        relays = [fan_out_partitions[p] for p in owned if p in fan_out_partitions]
        await repeat_markers(BatchOutput(app), relays, topics.engagement_by_key, PARTITIONS)


# -- aggregate -----------------------------------------------------------------------------------
contribute = counting(distinct)


class ReadoutVersions:
    """Wall-clock microseconds, strictly increasing: an experiment's newest readout replaces the
    older ones in ClickHouse, also after a restart (the clock has moved on)."""

    def __init__(self) -> None:
        self.last = 0

    def next(self) -> int:
        self.last = max(self.last + 1, time.time_ns() // 1000)
        return self.last


readout_versions = ReadoutVersions()
# partition -> watermark up to which the states that dropped windows are on the broker
durably_closed: dict[int, int] = {}


def closed_watermarks() -> dict[int, int]:
    return {p: max(c.closed_to, c.floor) for p, c in windows.partitions.items()}


def experiment_readouts(key: str) -> list[Record]:
    name = split_key(key)[1]
    as_of = windows.partitions[key_partition(key.encode(), PARTITIONS)].closed_to
    splits = engagement_settings.engagement_experiment_splits.get(name)
    arms = lifetime_arms(distinct.sizes(key, None))
    return readout_records(name, arms, splits, as_of, readout_versions.next())


async def publish(out: BatchOutput, result: BatchResult) -> None:
    """Results to the broker first, then the state that says they were produced."""
    if not (result.late or result.emits or result.writes or distinct.pending):
        return
    await distinct.write(out)  # members of the events counted: on the broker with the results
    for rec, window_start, wm in result.late:
        late = {**rec, "stage": "engagement", "window_start": window_start, "watermark_ms": wm}
        await out.send(topics.late_events, rec["key"].encode(), orjson.dumps(late))
    emitted_at_ms = time.time_ns() // 1_000_000
    experiments: set[str] = set()
    for emit in result.emits:
        # Keyed by the dimension's value: item records by item_id, as the anomaly service expects.
        out_key = split_key(emit.key)[1].encode()
        for record in window_records(emit, distinct.sizes(emit.key, emit.start_ms), emitted_at_ms):
            await out.send(topics.engagement_metrics, out_key, orjson.dumps(record))
        if split_key(emit.key)[0] == EXPERIMENT:
            experiments.add(emit.key)
    readouts = {key: experiment_readouts(key) for key in sorted(experiments)}
    for key, records in readouts.items():
        for record in records:
            await out.send(topics.engagement_metrics, split_key(key)[1].encode(), orjson.dumps(record))
    await out.flush()
    distinct.expire(durably_closed)  # windows dropped by the states flushed before
    await distinct.write(out)  # those deletions, with the states
    await windows.write_states(result, out)
    durably_closed.update(closed_watermarks())
    for key, records in readouts.items():
        engagement_readouts[key.encode()] = table_json({r["variation"]: r for r in records})


@app.on_partitions_assigned.connect
async def reindex_after_assignment(app: Any, assigned: Any, **kwargs: Any) -> None:
    await reindex_after_rebalance(app)


@app.on_rebalance_complete.connect
async def reindex_after_rebalance(app: Any, **kwargs: Any) -> None:
    """Tables are recovered now: rebuild the in-memory indexes from them (lazily, next use)."""
    # Rebuilt from the recovered tables at the next batch.
    windows.forget_partitions()
    distinct.forget()
    durably_closed.clear()
    fan_out_partitions.clear()


@app.agent(by_key_topic)
async def aggregate(stream: Any) -> None:
    out = BatchOutput(app)
    async for events in event_batches(stream, settings.batch_max_events, settings.batch_within_seconds):
        async with windows.lock:
            decoded = [
                (e.message.partition, rec["key"].encode() if "key" in rec else e.key, rec)
                for e in events
                for _, rec in unbundle(e.value)
            ]
            # Results must be on the broker before faust acks (and later commits) this batch.
            await publish(out, windows.process(decoded, contribute))


@app.timer(interval=1.0)
async def close_idle_windows() -> None:
    out = BatchOutput(app)
    async with windows.lock:
        await publish(out, windows.flush_idle())
