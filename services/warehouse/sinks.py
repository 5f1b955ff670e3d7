"""How each topic's records become rows of fact tables (pure; one Sink or RoutedSink per topic)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from shared.topics import WINDOW_CLOSED, TopicNames

Row = list[Any]


@dataclass(slots=True)  # one per row: frozen fields cost ~2 us to set
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

    def route(self, m: Message) -> tuple[str, Row] | None:
        row = self.to_row(m)
        return None if row is None else (self.table, row)

    def tables(self) -> dict[str, list[str]]:
        return {self.table: self.columns}


@dataclass(frozen=True)
class RoutedSink:
    """One topic feeding several tables: each record names its table (None: for no table)."""

    columns: dict[str, list[str]]  # table -> columns
    route: Callable[[Message], tuple[str, Row] | None]

    def tables(self) -> dict[str, list[str]]:
        return self.columns


def columns_by_table(sinks: dict[str, Sink | RoutedSink]) -> dict[str, list[str]]:
    return {table: cols for sink in sinks.values() for table, cols in sink.tables().items()}


def _json(m: Message) -> dict[str, Any]:
    return orjson.loads(m.value)


def ctr_row(m: Message) -> Row | None:
    r = _json(m)
    if r.get("kind") == WINDOW_CLOSED:  # ctr's "no other campaign had events": not a result
        return None
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


# engagement-metrics: record "metric" -> (table, columns); rows take the columns' fields in order,
# except emitted_at (from emitted_at_ms) and srm_chi2 (inf travels as JSON null).
ENGAGEMENT_WINDOW = ["window_start", "window_end"]
ENGAGEMENT_TABLES = {
    "device": (
        "fct_device_engagement",
        ["device_type", *ENGAGEMENT_WINDOW, "impressions", "clicks", "ctr", "unique_users", "conversions"],
    ),
    "user": (
        "fct_user",
        [
            "user_id",
            *ENGAGEMENT_WINDOW,
            "views",
            "clicks",
            "purchases",
            "sessions",
            "first_seen",
            "last_seen",
        ],
    ),
    "item": (
        "fct_item",
        ["item_id", *ENGAGEMENT_WINDOW, "views", "clicks", "add_to_carts", "purchases", "conversion_rate"],
    ),
    "experiment": (
        "fct_experiment",
        ["experiment", "variation", *ENGAGEMENT_WINDOW, "users", "conversions", "conversion_rate"],
    ),
}
READOUT_COLUMNS = [
    "experiment",
    "variation",
    "as_of",
    "users",
    "conversions",
    "conversion_rate",
    "control_users",
    "control_conversions",
    "z",
    "p_value",
    "lift_abs",
    "lift_rel",
    "ci_low",
    "ci_high",
    "srm_chi2",
    "srm_p_value",
    "version",
]


def engagement_table_row(m: Message) -> tuple[str, Row] | None:
    r = _json(m)
    metric = r.get("metric")
    if metric == "experiment_readout":
        r["srm_chi2"] = math.inf if r["srm_chi2"] is None else r["srm_chi2"]
        return "fct_experiment_readout", [r[c] for c in READOUT_COLUMNS]
    if metric not in ENGAGEMENT_TABLES:
        return None
    table, columns = ENGAGEMENT_TABLES[metric]
    return table, [*(r[c] for c in columns), r["version"], r["emitted_at_ms"]]


def engagement_sink() -> RoutedSink:
    columns = {t: [*cols, "version", "emitted_at"] for t, cols in ENGAGEMENT_TABLES.values()}
    return RoutedSink({**columns, "fct_experiment_readout": READOUT_COLUMNS}, engagement_table_row)


def sinks_for(topics: TopicNames) -> dict[str, Sink | RoutedSink]:
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
        topics.engagement_metrics: engagement_sink(),
    }
