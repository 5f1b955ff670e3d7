"""ctr agents: canonical events → per-campaign window counts → ctr-metrics (+ late-events)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from services.ctr.app import app, settings
from services.ctr.metrics import contribution, ctr_result, shift_latest
from shared.app import keyed_table, raw_schema
from shared.batch_output import BatchOutput
from shared.topics import topic_names
from shared.windowed_agent import WindowedAggregation
from shared.windows import Emit, WindowSpec, sum_into

topics = topic_names(settings)
PARTITIONS = settings.topic_partitions

canonical_topic = app.topic(topics.canonical, partitions=PARTITIONS, schema=raw_schema())

# campaign_id -> its open windows; changelogged, co-partitioned with canonical-events by campaign.
ctr_windows = keyed_table(app, "ctr_windows", PARTITIONS)
# campaign_id -> {"latest": result, "previous": result}; served by the views.
ctr_latest = keyed_table(app, "ctr_latest", PARTITIONS)

spec = WindowSpec(settings.window_size_ms, settings.allowed_lateness_ms, settings.watermark_delay_ms)
windows = WindowedAggregation(ctr_windows, spec, settings.idle_flush_timeout_ms / 1000)


def contribute(rec: dict[str, Any]) -> Callable[[list[Any] | None], list[Any]] | None:
    values = contribution(rec)
    return sum_into(values) if values is not None else None


async def publish(out: BatchOutput, emits: list[Emit]) -> None:
    for emit in emits:
        result = ctr_result(emit)
        key = emit.key.encode()
        await out.send(topics.ctr_metrics, key, orjson.dumps(result))
        current = ctr_latest.get(key)
        ctr_latest[key] = orjson.dumps(shift_latest(orjson.loads(current) if current else None, result))


@app.agent(canonical_topic)
async def count_windows(stream: Any) -> None:
    out = BatchOutput(app)
    async for events in stream.take_events(settings.batch_max_events, settings.batch_within_seconds):
        async with windows.lock:
            decoded = [(e.message.partition, e.key, orjson.loads(e.value)) for e in events]
            result = windows.process(decoded, contribute)
            for rec, window_start, wm in result.late:
                late = {**rec, "stage": "ctr", "window_start": window_start, "watermark_ms": wm}
                await out.send(topics.late_events, rec["campaign_id"].encode(), orjson.dumps(late))
            await publish(out, result.emits)
            # Results must be on the broker before faust acks (and later commits) this batch.
            await out.flush()


@app.timer(interval=1.0)
async def close_idle_windows() -> None:
    out = BatchOutput(app)
    async with windows.lock:
        emits = windows.flush_idle()
        await publish(out, emits)
        await out.flush()
