"""How each topic's records become rows of a fact table (pure; one Sink per topic)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from shared.topics import TopicNames

Row = list[Any]


@dataclass(frozen=True)
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]
    timestamp_ms: int


@dataclass(frozen=True)
class Sink:
    table: str
    columns: list[str]
    to_row: Callable[[Message], Row | None]  # None: not for this table (e.g. a watermark marker)


def _json(m: Message) -> dict[str, Any]:
    return orjson.loads(m.value)


def ctr_row(m: Message) -> Row:
    r = _json(m)
    return [
        r["campaign_id"],
        r["window_start"],
        r["window_end"],
        r["impressions"],
        r["clicks"],
        r["ctr"],
        r["cost"],
        r["cpc"],
        r["cpm"],
        r["version"],
        r["emitted_at_ms"],
    ]


def _header_int(h: dict[str, str], name: str) -> int:
    v = h.get(name, "")
    return int(v) if v.isdigit() else 0


def dead_letter_row(m: Message) -> Row:
    # Must never fail: whatever reached the dead-letter topic is kept, headers or not.
    h = {k: v.decode("utf-8", "replace") for k, v in m.headers.items()}
    topic = h.get("dlq.topic", "")
    partition, offset = _header_int(h, "dlq.partition"), _header_int(h, "dlq.offset")
    source = f"{topic}:{partition}:{offset}" if topic else f"{m.topic}:{m.partition}:{m.offset}"
    return [
        source,
        topic,
        partition,
        offset,
        h.get("dlq.stage", "unknown"),
        h.get("dlq.reason", "unknown"),
        h.get("dlq.detail", ""),
        (m.key or b"").decode("utf-8", "replace"),
        m.value.decode("utf-8", "replace"),
        m.timestamp_ms,
    ]


def late_row(m: Message) -> Row:
    r = _json(m)
    return [
        r["stage"],
        r["src"],
        r["kind"],
        r["id"],
        r.get("campaign_id", ""),
        r["ts"],
        r["window_start"],
        max(r["watermark_ms"], 0),
    ]


def discarded_row(m: Message) -> Row:
    r = _json(m)
    return [r["reason"], r["src"], r["kind"], r["id"], r["impression_id"], r["ts"]]


def anomaly_row(m: Message) -> Row:
    # Fields an event kind lacks (a "resolved" has no score, only it has "resolves") stay NULL / ''.
    r = _json(m)
    text = ("direction", "severity", "incident_id", "supersedes", "resolves", "reason")
    return [
        r["anomaly_id"],
        r["kind"],
        r["key_type"],
        r["key"],
        r["window_start"],
        r["window_end"],
        r.get("observed"),
        r.get("expected"),
        r.get("score"),
        *(r.get(name) or "" for name in text),
        r.get("detected_at_ms", m.timestamp_ms),
    ]


def alert_row(m: Message) -> Row:
    r = _json(m)
    optional = (r.get("error"), r.get("slack_ts"), r.get("channel"))
    return [
        r["anomaly_id"],
        r["attempt"],
        r["status"],
        r.get("http_status"),
        *(v or "" for v in optional),
        r["at_ms"],
    ]


def sinks_for(topics: TopicNames) -> dict[str, Sink]:
    return {
        topics.ctr_metrics: Sink(
            "fct_campaign_ctr",
            [
                "campaign_id",
                "window_start",
                "window_end",
                "impressions",
                "clicks",
                "ctr",
                "cost",
                "cpc",
                "cpm",
                "version",
                "emitted_at",
            ],
            ctr_row,
        ),
        topics.dead_letters: Sink(
            "fct_dead_letter",
            [
                "source",
                "source_topic",
                "source_partition",
                "source_offset",
                "stage",
                "reason",
                "detail",
                "message_key",
                "payload",
                "dead_lettered_at",
            ],
            dead_letter_row,
        ),
        topics.late_events: Sink(
            "fct_late_event",
            ["stage", "source", "kind", "event_id", "campaign_id", "event_time", "window_start", "watermark"],
            late_row,
        ),
        topics.discarded: Sink(
            "fct_discarded_event",
            ["reason", "source", "kind", "event_id", "impression_id", "event_time"],
            discarded_row,
        ),
        topics.anomalies: Sink(
            "fct_anomaly",
            [
                "anomaly_id",
                "kind",
                "key_type",
                "key",
                "window_start",
                "window_end",
                "observed",
                "expected",
                "score",
                "direction",
                "severity",
                "incident_id",
                "supersedes",
                "resolves",
                "reason",
                "detected_at",
            ],
            anomaly_row,
        ),
        topics.alert_deliveries: Sink(
            "fct_alert",
            ["anomaly_id", "attempt", "status", "http_status", "error", "slack_ts", "channel", "at"],
            alert_row,
        ),
    }
