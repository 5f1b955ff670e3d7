"""ctr agents: canonical events → per-campaign window counts → ctr-metrics (+ late-events)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from services.ctr.app import app, settings
from services.ctr.metrics import contribution, ctr_result, shift_latest, window_closed
from shared import metrics as mesh_metrics
from shared.app import keyed_table, owned_partitions, partition_key, raw_schema, table_json
from shared.batch_output import BatchOutput
from shared.bundles import unbundle
from shared.event_batches import event_batches
from shared.topics import canonical_key, topic_names
from shared.watermarks import MARKER_KIND
from shared.windowed_agent import BatchResult, WindowedAggregation
from shared.windows import WindowSpec, sum_into

topics = topic_names(settings)
PARTITIONS = settings.topic_partitions

canonical_topic = app.topic(topics.canonical, partitions=PARTITIONS, schema=raw_schema())

# campaign_id -> its open windows; changelogged, co-partitioned with canonical-events by campaign.
ctr_windows = keyed_table(app, "ctr_windows", PARTITIONS)
# campaign_id -> {"latest": result, "previous": result}; served by the views.
ctr_latest = keyed_table(app, "ctr_latest", PARTITIONS)

spec = WindowSpec(settings.window_size_ms, settings.allowed_lateness_ms, settings.watermark_delay_ms)


windows = WindowedAggregation(
    ctr_windows,
    spec,
    settings.idle_flush_timeout_ms / 1000,
    PARTITIONS,
    assigned=owned_partitions(app, topics.canonical),
)


def contribute(rec: dict[str, Any]) -> Callable[[list[Any] | None], list[Any]] | None:
    values = contribution(rec)
    return sum_into(values) if values is not None else None


async def publish(out: BatchOutput, result: BatchResult) -> None:
    """Results to the broker first, then the state that says they were produced."""
    latest: list[dict[str, Any]] = []
    for rec, window_start, wm in result.late:
        late = {**rec, "stage": "ctr", "window_start": window_start, "watermark_ms": wm}
        await out.send(topics.late_events, rec["campaign_id"].encode(), orjson.dumps(late))
    if result.late:
        mesh_metrics.late_events.labels("ctr").inc(len(result.late))
    now_ms = time.time() * 1000
    # In window order across campaigns (each campaign's windows stay in order): the anomaly
    # service decides that a campaign had no events in a window from the order of results in a
    # partition (services/anomaly/silence.py), and a close pass that covers many windows at once
    # (a backlog drained fast) must not list campaign A's later windows before B's earlier ones.
    # Each window the partition's watermark passed follows its results: "window closed" proves
    # that the partition's campaigns without a result had no events in it, also when none had.
    ordered = sorted(
        [((e.start_ms, 0, e.key), e) for e in result.emits]
        + [((s, 1, str(p)), window_closed(p, s, e)) for p, s, e in result.passed],
        key=lambda x: x[0],
    )
    for _, item in ordered:
        if isinstance(item, dict):
            key = partition_key("window-closed", item["partition"], PARTITIONS)  # reaches partition p
            await out.send(topics.ctr_metrics, key, orjson.dumps(item))
            continue
        mesh_metrics.window_emit_lag.labels("ctr").observe(
            max(now_ms - item.end_ms - spec.delay_ms, 0) / 1000
        )
        metrics = ctr_result(item)
        latest.append(metrics)
        await out.send(topics.ctr_metrics, item.key.encode(), orjson.dumps(metrics))
    await out.flush()
    await windows.write_states(result, out)
    for row in latest:
        key = row["campaign_id"].encode()
        current = ctr_latest.get(key)
        ctr_latest[key] = table_json(shift_latest(orjson.loads(current) if current else None, row))


@app.on_partitions_assigned.connect
async def reindex_after_assignment(app: Any, assigned: Any, **kwargs: Any) -> None:
    await reindex_after_rebalance(app)


@app.on_rebalance_complete.connect
async def reindex_after_rebalance(app: Any, **kwargs: Any) -> None:
    """Tables are recovered now: rebuild the in-memory indexes from them (lazily, next use)."""
    windows.forget_partitions()


@app.agent(canonical_topic)
async def count_windows(stream: Any) -> None:
    out = BatchOutput(app)
    async for events in event_batches(stream, settings.batch_max_events, settings.batch_within_seconds):
        async with windows.lock:
            decoded = [
                (e.message.partition, b"" if rec.get("kind") == MARKER_KIND else canonical_key(rec), rec)
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
