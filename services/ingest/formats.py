"""Decoding and validation of the raw source formats (hot path: orjson plus explicit checks).

A parser takes the raw Kafka value and returns a normalized dict, or raises `Rejected` with a
machine-readable reason. It never raises anything else for any input: see tests/test_formats_fuzz.py.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import orjson

from shared.settings import Settings


class Rejected(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    min_ts_ms: int
    max_future_skew_ms: int

    @classmethod
    def from_settings(cls, s: Settings) -> Limits:
        return cls(s.max_event_bytes, s.min_event_timestamp_ms, s.max_future_skew_ms)


MAX_ID_LEN = 256


def decode_object(raw: bytes | None, limits: Limits) -> dict[str, Any]:
    if raw is None:
        raise Rejected("empty_payload", "message has no value")
    if len(raw) > limits.max_bytes:
        raise Rejected("too_large", f"{len(raw)} bytes > {limits.max_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Rejected("invalid_json", str(exc)[:200]) from None
    if not isinstance(obj, dict):
        raise Rejected("not_an_object", type(obj).__name__)
    return obj


def req_id(obj: dict[str, Any], field: str) -> str:
    if field not in obj or obj[field] is None:
        raise Rejected("missing_field", field)
    v = obj[field]
    if isinstance(v, bool) or not isinstance(v, str | int):
        raise Rejected("wrong_type", f"{field}: {type(v).__name__}")
    s = str(v).strip()
    if not s:
        raise Rejected("empty_id", field)
    if len(s) > MAX_ID_LEN:
        raise Rejected("bad_value", f"{field}: longer than {MAX_ID_LEN}")
    return s


def opt_str(obj: dict[str, Any], field: str, default: str = "unknown") -> str:
    v = obj.get(field)
    if v is None:
        return default
    if not isinstance(v, str):
        raise Rejected("wrong_type", f"{field}: {type(v).__name__}")
    v = v.strip()[:MAX_ID_LEN]
    return v or default


def epoch_ms(obj: dict[str, Any], field: str, limits: Limits, *, now_ms: int | None = None) -> int:
    if field not in obj or obj[field] is None:
        raise Rejected("missing_field", field)
    v = obj[field]
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise Rejected("wrong_type", f"{field}: {type(v).__name__}")
    if isinstance(v, float) and not math.isfinite(v):
        raise Rejected("bad_timestamp", f"{field}: not finite")
    ts = int(v)
    return check_ts(ts, field, limits, now_ms=now_ms)


def check_ts(ts: int, field: str, limits: Limits, *, now_ms: int | None = None) -> int:
    if ts <= 0:
        raise Rejected("bad_timestamp", f"{field}: non-positive")
    if ts < limits.min_ts_ms:
        raise Rejected("bad_timestamp", f"{field}: {ts} before {limits.min_ts_ms} (seconds instead of ms?)")
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    if ts > now_ms + limits.max_future_skew_ms:
        raise Rejected("bad_timestamp", f"{field}: {ts} too far in the future")
    return ts


def money_micros(obj: dict[str, Any], field: str) -> int:
    v = obj.get(field, 0)
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise Rejected("wrong_type", f"{field}: {type(v).__name__}")
    if not math.isfinite(v) or v < 0 or v > 1_000_000:
        raise Rejected("bad_value", f"{field}: {v!r}")
    # Integer micro-units: sums are exact and independent of arrival order.
    return round(v * 1_000_000)


def parse_impression(raw: bytes | None, limits: Limits) -> dict[str, Any]:
    o = decode_object(raw, limits)
    return {
        "kind": "impression",
        "id": req_id(o, "impression_id"),
        "impression_id": req_id(o, "impression_id"),
        "user_id": req_id(o, "user_id"),
        "campaign_id": req_id(o, "campaign_id"),
        "ad_id": req_id(o, "ad_id"),
        "device_type": opt_str(o, "device_type"),
        "browser": opt_str(o, "browser"),
        "ts": epoch_ms(o, "event_timestamp", limits),
        "cost_micros": money_micros(o, "cost"),
    }


def parse_click(raw: bytes | None, limits: Limits) -> dict[str, Any]:
    o = decode_object(raw, limits)
    return {
        "kind": "click",
        "id": req_id(o, "click_id"),
        "impression_id": req_id(o, "impression_id"),
        "user_id": req_id(o, "user_id"),
        "ts": epoch_ms(o, "event_timestamp", limits),
    }
