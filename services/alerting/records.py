"""The shapes the alerting service reads and writes: anomalies in, delivery state, delivery records out.

Table values are small orjson documents (one per anomaly_id / per key), never growing lists.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

import orjson

from shared.app import table_json

AnomalyKind = Literal["ctr_high", "ctr_low", "traffic_drop", "sales_spike", "resolved"]
KeyType = Literal["campaign", "item"]
Severity = Literal["warning", "critical"]
# post: a new top-level message; fold: a reply in the open alert's thread (or nothing, with a
# webhook); resolve: mark the resolved alert's message resolved.
Action = Literal["post", "fold", "resolve"]
Status = Literal["pending", "sent", "updated", "folded", "logged", "failed_permanent"]
# What a record on the alert-deliveries topic says about one attempt.
RecordStatus = Literal["sent", "updated", "folded", "retry", "failed_permanent", "logged"]

FINAL_STATUSES: frozenset[str] = frozenset(get_args(Status)) - {"pending"}


class InvalidAnomaly(ValueError):
    """The record cannot be alerted on; the message says which field is wrong (never a value)."""


@dataclass(frozen=True)
class Anomaly:
    anomaly_id: str
    kind: AnomalyKind
    key_type: KeyType
    key: str
    severity: Severity | None = None
    window_start: int | None = None
    window_end: int | None = None
    observed: float | None = None
    expected: float | None = None
    score: float | None = None
    direction: str | None = None
    # Only on kind == "resolved": the anomaly_id of the alert (incident) it closes.
    resolves: str | None = None
    # The detector's incident: the anomaly_id of the incident's first window (absent: its own id).
    incident_id: str | None = None

    @property
    def incident(self) -> str:
        return self.incident_id or self.anomaly_id

    @property
    def is_resolution(self) -> bool:
        return self.kind == "resolved"

    @property
    def key_id(self) -> str:
        """The cooldown key: one open alert per (key_type, key)."""
        return f"{self.key_type}:{self.key}"


def _require_str(record: dict[str, Any], field: str) -> str:
    value = record.get(field)
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise InvalidAnomaly(f"missing or non-string {field!r}")
    return value


def _optional_number(record: dict[str, Any], field: str, kind: type[int] | type[float]) -> Any:
    value = record.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidAnomaly(f"non-numeric {field!r}")
    return kind(value)


def parse_anomaly(raw: bytes | dict[str, Any]) -> Anomaly:
    try:
        record = orjson.loads(raw) if isinstance(raw, bytes | bytearray | memoryview | str) else raw
    except orjson.JSONDecodeError as exc:
        raise InvalidAnomaly("not JSON") from exc
    if not isinstance(record, dict):
        raise InvalidAnomaly("not a JSON object")
    kind = _require_str(record, "kind")
    if kind not in get_args(AnomalyKind):
        raise InvalidAnomaly("unknown 'kind'")
    key_type = _require_str(record, "key_type")
    if key_type not in get_args(KeyType):
        raise InvalidAnomaly("unknown 'key_type'")
    severity = record.get("severity")
    if kind != "resolved" and severity not in get_args(Severity):
        raise InvalidAnomaly("unknown 'severity'")
    direction = record.get("direction")
    window_start = _optional_number(record, "window_start", int)
    window_end = _optional_number(record, "window_end", int)
    if kind != "resolved" and (window_start is None or window_end is None):
        raise InvalidAnomaly("missing 'window_start' or 'window_end'")  # the cooldown clock
    return Anomaly(
        anomaly_id=_require_str(record, "anomaly_id"),
        kind=kind,  # type: ignore[arg-type]
        key_type=key_type,  # type: ignore[arg-type]
        key=_require_str(record, "key"),
        severity=severity if severity in get_args(Severity) else None,
        window_start=window_start,
        window_end=window_end,
        observed=_optional_number(record, "observed", float),
        expected=_optional_number(record, "expected", float),
        score=_optional_number(record, "score", float),
        direction=direction if isinstance(direction, str) else None,
        resolves=_require_str(record, "resolves") if kind == "resolved" else None,
        incident_id=record["incident_id"] if isinstance(record.get("incident_id"), str) else None,
    )


@dataclass(frozen=True)
class Delivery:
    """The delivery state of one anomaly_id: the value of the `alerting-deliveries` table."""

    anomaly: Anomaly
    action: Action
    # fold: the key's open alert; resolve: the alert whose message is marked resolved.
    parent_id: str | None
    created_ms: int
    # fold only: the open alert had been resolved, so this repeat re-opens it.
    reopened: bool = False
    status: Status = "pending"
    attempts: int = 0
    next_attempt_ms: int = 0
    # Set (and persisted) just before a non-idempotent Slack call, cleared by a definite answer.
    # Still set after a restart or a timeout: Slack may have posted it, so look before re-posting.
    unknown_outcome: bool = False
    slack_ts: str | None = None
    channel: str | None = None
    finished_ms: int | None = None
    last_error: str | None = None
    last_http_status: int | None = None

    @property
    def anomaly_id(self) -> str:
        return self.anomaly.anomaly_id

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


def _known_fields(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    # Tolerates fields written by a newer version (rolling back must not crash recovery).
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def encode_delivery(delivery: Delivery) -> bytes:
    return table_json(dataclasses.asdict(delivery))


def decode_delivery(raw: bytes) -> Delivery:
    values = _known_fields(Delivery, orjson.loads(raw))
    values["anomaly"] = Anomaly(**_known_fields(Anomaly, values["anomaly"]))
    return Delivery(**values)


@dataclass(frozen=True)
class OpenAlert:
    """The last top-level alert of one key: the value of the `alerting-open-alerts` table."""

    anomaly_id: str
    # Event time (window_end) of the anomaly that opened it: the cooldown counts from here.
    opened_event_ms: int
    opened_wall_ms: int
    resolved: bool = False
    # The key's current detector incident (the one posted, or one folded in since, e.g. a
    # superseding one); later windows of it fold into this alert whatever the cooldown says.
    incident_id: str | None = None


def encode_open_alert(open_alert: OpenAlert) -> bytes:
    return table_json(dataclasses.asdict(open_alert))


def decode_open_alert(raw: bytes) -> OpenAlert:
    return OpenAlert(**_known_fields(OpenAlert, orjson.loads(raw)))


def delivery_record(
    delivery: Delivery,
    status: RecordStatus,
    at_ms: int,
    *,
    http_status: int | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """One record of the alert-deliveries topic (persisted as fct_alert). `error` must be redacted."""
    return {
        "anomaly_id": delivery.anomaly_id,
        "attempt": delivery.attempts,
        "status": status,
        "http_status": http_status,
        "error": error,
        "slack_ts": delivery.slack_ts,
        "channel": delivery.channel,
        "at_ms": at_ms,
    }
