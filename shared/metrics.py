"""Prometheus metrics every service exposes on GET /metrics (one registry per process).

Messages in are counted by a faust sensor (a cached child per topic; ingest's raw reader counts
its own), messages out per batch when the batch's sends are acknowledged. The consumer lag gauge is
computed when scraped (end offsets vs. positions of the assigned partitions, of faust's consumer
and of any a service runs besides it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from faust.sensors import Sensor
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client import Counter as PromCounter

registry = CollectorRegistry()

events_in = PromCounter("mesh_events_in_total", "Messages consumed", ["service", "topic"], registry=registry)
events_out = PromCounter(
    "mesh_events_out_total", "Messages produced", ["service", "topic"], registry=registry
)
dead_lettered = PromCounter(
    "mesh_dead_lettered_total",
    "Input rejected to the dead-letter topic",
    ["service", "reason"],
    registry=registry,
)
discarded = PromCounter(
    "mesh_discarded_total", "Valid input not counted by design", ["service", "reason"], registry=registry
)
late_events = PromCounter(
    "mesh_late_events_total", "Events beyond allowed lateness", ["service"], registry=registry
)
window_emit_lag = Histogram(
    "mesh_window_emit_lag_seconds",
    "Wall clock from a window's end (+ watermark delay) to its result being produced",
    ["service"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
    registry=registry,
)
clickhouse_insert_seconds = Histogram(
    "mesh_clickhouse_insert_seconds", "ClickHouse batch insert latency", ["table"], registry=registry
)
clickhouse_insert_failures = PromCounter(
    "mesh_clickhouse_insert_failures_total",
    "Failed ClickHouse inserts (retried)",
    ["table"],
    registry=registry,
)
slack_attempts = PromCounter(
    "mesh_slack_delivery_attempts_total", "Slack delivery attempts by outcome", ["status"], registry=registry
)
alert_in_process_seconds = Histogram(
    "mesh_alert_in_process_seconds",
    "alerting: anomaly taken in -> Slack answered OK (with any retries, a restart's wait included)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 30, 300),
    registry=registry,
)
consumer_lag = Gauge(
    "mesh_consumer_lag_messages",
    "End offset minus position, per assigned partition",
    ["service", "topic", "partition"],
    registry=registry,
)


def count_topics(counter: PromCounter, service: str, topics: Iterable[str]) -> None:
    """Bump a per-topic counter once per topic for a whole batch."""
    for topic, n in Counter(topics).items():
        counter.labels(service, topic).inc(n)


def consumers(app: Any) -> list[Any]:
    """faust's consumer (unless the service runs without one) and the direct readers beside it."""
    own = [app.consumer] if getattr(app, "faust_consumer", True) else []
    return own + getattr(app, "direct_consumers", [])


async def refresh_consumer_lag(app: Any, service: str) -> None:
    for consumer in consumers(app):
        tps = list(consumer.assignment())
        if not tps:
            continue
        ends = await consumer.highwaters(*tps)
        for tp in tps:
            position = await consumer.position(tp)
            end = ends.get(tp)
            if end is not None and position is not None:
                consumer_lag.labels(service, tp.topic, str(tp.partition)).set(max(end - position, 0))


def exposition() -> tuple[bytes, str]:
    return generate_latest(registry), CONTENT_TYPE_LATEST


class PrometheusSensor(Sensor):
    """faust calls this for every message it consumes: count them per topic (children cached,
    so a message costs a dict lookup and an increment)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service
        self._in: dict[str, Any] = {}

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        child = self._in.get(tp.topic)
        if child is None:
            child = self._in[tp.topic] = events_in.labels(self.service, tp.topic)
        child.inc()


def count_out(service: str, topics: Iterable[str]) -> None:
    count_topics(events_out, service, topics)
