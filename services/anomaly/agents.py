"""anomaly agents: ctr-metrics and engagement-metrics (closed windows) → anomalies.

Each batch: every window goes through its key's detector (services/anomaly/monitor.py), the
events go to the `anomalies` topic keyed by campaign_id / item_id, and only once the broker has
them are the new detector states written (see monitor.py for why that order).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from faust.types import EventT

from services.anomaly.app import anomaly_settings, app, settings
from services.anomaly.detectors import Event
from services.anomaly.monitor import CtrMonitor, SalesMonitor
from shared.app import keyed_table, raw_schema
from shared.batch_output import BatchOutput
from shared.event_batches import event_batches
from shared.topics import topic_names

log = logging.getLogger(__name__)
topics = topic_names(settings)
PARTITIONS = settings.topic_partitions

ctr_metrics_topic = app.topic(topics.ctr_metrics, partitions=PARTITIONS, schema=raw_schema())
engagement_topic = app.topic(topics.engagement_metrics, partitions=PARTITIONS, schema=raw_schema())

# campaign_id -> {"d": detector state, "e": open incident's latest event, "p": partition}; keyed
# like ctr-metrics, so a campaign's state lives in the partition that owns its windows.
campaign_states = keyed_table(app, "anomaly_campaigns", PARTITIONS)
# one key per partition (see shared.app.partition_key) -> that partition's live windows (silence.py)
partition_progress = keyed_table(app, "anomaly_partitions", PARTITIONS)
# item_id -> {"d", "e"}; co-partitioned with engagement-metrics if that topic is keyed by item_id.
item_states = keyed_table(app, "anomaly_items", PARTITIONS)

ctr_monitor = CtrMonitor(
    campaign_states,
    partition_progress,
    anomaly_settings.ctr_config(),
    anomaly_settings.anomaly_silence_lag_windows,
    PARTITIONS,
)
sales_monitor = SalesMonitor(item_states, anomaly_settings.sales_config())
# engagement-metrics partition -> newest item window_start judged by this worker since it started:
# only for /anomalies/progress (how far sales detection got), so not worth a changelog.
items_judged_to: dict[int, int] = {}


def decode(event: EventT) -> dict[str, Any] | None:
    try:
        record = orjson.loads(event.value)
    except orjson.JSONDecodeError:
        record = None
    if not isinstance(record, dict):
        m = event.message
        log.error("not a JSON object at %s[%s]@%s: skipped", m.topic, m.partition, m.offset)
        return None
    return record


async def publish(out: BatchOutput, events: list[Event]) -> None:
    """Events onto the broker (acknowledged) before the caller commits the states behind them."""
    detected_at_ms = time.time_ns() // 1_000_000
    for event in events:
        record = {**event, "detected_at_ms": detected_at_ms}
        await out.send(topics.anomalies, event["key"].encode(), orjson.dumps(record))
    await out.flush()
    for event in events:
        log.info(
            "anomaly %s: %s %s %s window %s",
            event["anomaly_id"],
            event["kind"],
            event["key_type"],
            event["key"],
            event["window_start"],
        )


@app.agent(ctr_metrics_topic)
async def detect_campaign_anomalies(stream: Any) -> None:
    out = BatchOutput(app)
    async for batch in event_batches(stream, settings.batch_max_events, settings.batch_within_seconds):
        ctr_monitor.discard()  # nothing staged by a batch that failed halfway
        found: list[Event] = []
        for event in batch:
            record = decode(event)
            if record is None:
                continue
            try:
                found += ctr_monitor.observe(event.message.partition, record)
            except (KeyError, TypeError, ValueError) as exc:  # our own topic: a bad record is a bug
                m = event.message
                log.error("cannot judge %s[%s]@%s: %r", m.topic, m.partition, m.offset, exc)
        await publish(out, found)
        ctr_monitor.commit()


@app.agent(engagement_topic)
async def detect_item_anomalies(stream: Any) -> None:
    out = BatchOutput(app)
    async for batch in event_batches(stream, settings.batch_max_events, settings.batch_within_seconds):
        sales_monitor.discard()
        found: list[Event] = []
        for event in batch:
            record = decode(event)
            # The topic also carries device, user and experiment results (and watermark markers).
            if record is None or record.get("metric") != "item":
                continue
            try:
                found += sales_monitor.observe(record)
                p = event.message.partition
                items_judged_to[p] = max(items_judged_to.get(p, 0), int(record["window_start"]))
            except (KeyError, TypeError, ValueError) as exc:
                m = event.message
                log.error("cannot judge %s[%s]@%s: %r", m.topic, m.partition, m.offset, exc)
        await publish(out, found)
        sales_monitor.commit()


@app.on_rebalance_complete.connect
async def reindex_campaigns(sender: Any, **kwargs: Any) -> None:
    # Partitions may have moved: which campaigns belong to which partition is re-read from the table.
    ctr_monitor.forget_members()
