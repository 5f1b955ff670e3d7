"""alerting agents: anomalies → pending deliveries (table) → Slack, recorded on alert-deliveries.

Run one alerting worker. Both tables are written outside any stream event (by the delivery loop),
so their partition is computed from the key, not taken from an input partition: with several
workers a key's state could sit on another worker than the anomaly that needs it; a single worker
restores every partition and sees all of it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

from services.alerting.app import alerting_settings, app, settings
from services.alerting.records import InvalidAnomaly, parse_anomaly
from services.alerting.settings import AlertingSettings
from services.alerting.slack_delivery import AlertDeliverer
from services.alerting.slack_transport import build_transport
from shared import metrics
from shared.app import keyed_table
from shared.topics import topic_names

log = logging.getLogger(__name__)

topics = topic_names(settings)
PRODUCER_FLUSH_TIMEOUT_S = 10.0

anomalies_topic = app.topic(
    topics.anomalies, value_type=bytes, value_serializer="raw", key_type=bytes, key_serializer="raw"
)
alert_deliveries_topic = app.topic(
    topics.alert_deliveries, value_type=bytes, value_serializer="raw", key_type=bytes, key_serializer="raw"
)

# Both tables: str keys, orjson-encoded bytes values (keys go to the changelog as JSON strings,
# values raw; both come back as written on recovery).
# Keyed tables, not faust's `use_partitioner=True`: that one asks the producer's metadata cache for
# the changelog's partitions synchronously, and right after start the cache may not know a changelog
# created a moment before. aiokafka then fails with "'NoneType' object is not iterable" between the
# two writes of an intake, and every later window of that incident became a new top-level message.
# anomaly_id -> Delivery (orjson): dedup across restarts, pending retries, the ts of each message.
delivery_table = keyed_table(app, "alerting-deliveries", settings.topic_partitions, key_type=str)
# "key_type:key" -> OpenAlert (orjson): the key's last top-level alert, for the cooldown.
open_alert_table = keyed_table(app, "alerting-open-alerts", settings.topic_partitions, key_type=str)


def log_mode(config: AlertingSettings, mode: str) -> None:
    if mode == "bot":
        log.info("alerting: Slack bot token, channel %s, API %s", config.slack_channel, config.slack_base_url)
    elif mode == "webhook":
        log.info("alerting: Slack incoming webhook (no threads: repeats within the cooldown are not sent)")
    else:
        log.warning("alerting: neither SLACK_BOT_TOKEN nor SLACK_WEBHOOK_URL is set: alerts are only logged")


async def record_delivery(record: dict[str, Any]) -> None:
    metrics.slack_attempts.labels(record["status"]).inc()
    await alert_deliveries_topic.send(key=record["anomaly_id"].encode(), value=orjson.dumps(record))


async def flush_producer() -> None:
    """Puts the in-flight mark (a changelog write) on the broker before the Slack call."""
    await asyncio.wait_for(app.producer.flush(), PRODUCER_FLUSH_TIMEOUT_S)


deliverer = AlertDeliverer(
    alerting_settings,
    delivery_table,
    open_alert_table,
    build_transport(alerting_settings),
    record_delivery,
    persist=flush_producer,
)


def tables_ready() -> bool:
    # Deliveries must not be planned from half-recovered tables (a sent alert would look new).
    return app.tables.recovery.completed.is_set() and not app.rebalancing and not app.in_recovery


@app.agent(anomalies_topic)
async def take_anomalies(stream: Any) -> None:
    async for event in stream.events():
        try:
            anomaly = parse_anomaly(event.value)
        except InvalidAnomaly as exc:
            message = event.message
            log.warning(
                "skipping anomaly %s[%s]@%s: %s", message.topic, message.partition, message.offset, exc
            )
            continue
        # Synchronous: only records the intent and wakes the delivery loop; Slack never blocks the stream.
        try:
            deliverer.intake(anomaly)
        except Exception as exc:  # unreadable state for this key: skip it, keep the stream alive
            error = deliverer.redact.exception_text(exc)
            # With its traceback (secrets are masked in every log line and traceback, shared.logs).
            log.error("could not take anomaly %s: %s", anomaly.anomaly_id, error, exc_info=True)


@app.task
async def deliver_alerts() -> None:
    log_mode(alerting_settings, deliverer.mode)
    await deliverer.run(tables_ready)
