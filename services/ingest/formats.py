"""Decoding and validation of the raw source formats (hot path: orjson plus explicit checks).

A parser takes the raw Kafka value and returns a normalized dict, or raises `Rejected` with a
machine-readable reason. It never raises anything else for any input: see tests/test_formats_fuzz.py.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from datetime import datetime
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


# The helpers below start with a fast path for the common well-formed value, which returns what
# the full checks after it would (a str of 1-256 characters without surrounding whitespace is its
# own strip(); strip() and isspace() agree on what whitespace is). Anything else takes the full
# checks, which decide every rejection. Parsing was 12.4 us per impression, 14% of ingest.


def req_id(obj: dict[str, Any], field: str) -> str:
    v = obj.get(field)
    if type(v) is str and 0 < len(v) <= MAX_ID_LEN and not v[0].isspace() and not v[-1].isspace():
        return v
    return _checked_id(obj, field)


def _checked_id(obj: dict[str, Any], field: str) -> str:
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
    if type(v) is str and 0 < len(v) <= MAX_ID_LEN and not v[0].isspace() and not v[-1].isspace():
        return v
    if v is None:
        return default
    if not isinstance(v, str):
        raise Rejected("wrong_type", f"{field}: {type(v).__name__}")
    v = v.strip()[:MAX_ID_LEN]
    return v or default


def epoch_ms(obj: dict[str, Any], field: str, limits: Limits, *, now_ms: int | None = None) -> int:
    v = obj.get(field)
    if type(v) is int:
        return check_ts(v, field, limits, now_ms=now_ms)
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
    if type(v) is float and 0.0 <= v <= 1_000_000:  # NaN fails both comparisons
        return round(v * 1_000_000)
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
    impression_id = req_id(o, "impression_id")
    rec = {
        "kind": "impression",
        "id": impression_id,
        "impression_id": impression_id,
        "user_id": req_id(o, "user_id"),
        "campaign_id": req_id(o, "campaign_id"),
        "ad_id": req_id(o, "ad_id"),
        "device_type": opt_str(o, "device_type"),
        "browser": opt_str(o, "browser"),
        "ts": epoch_ms(o, "event_timestamp", limits),
        "cost_micros": money_micros(o, "cost"),
    }
    rec["dedup_key"] = rec["impression_id"]  # the impression, its clicks and their copies meet
    return rec


def parse_click(raw: bytes | None, limits: Limits) -> dict[str, Any]:
    o = decode_object(raw, limits)
    rec = {
        "kind": "click",
        "id": req_id(o, "click_id"),
        "impression_id": req_id(o, "impression_id"),
        "user_id": req_id(o, "user_id"),
        "ts": epoch_ms(o, "event_timestamp", limits),
    }
    rec["dedup_key"] = rec["impression_id"]
    return rec


AD_EVENT_KINDS = {"view": "impression", "click": "click", "purchase": "conversion"}
CLICKSTREAM_KINDS = {
    "view": "item_view",
    "click": "item_click",
    "add_to_cart": "add_to_cart",
    "purchase": "purchase",
}
NS_PER_MS = 1_000_000


def content_id(source: str, obj: dict[str, Any], fields: tuple[str, ...]) -> str:
    """A stable id for sources without one: the same event sent twice hashes the same, so it can
    be deduplicated (within the dedup TTL) like an event with an id."""
    digest = hashlib.blake2b(orjson.dumps([source, *(obj.get(f) for f in fields)]), digest_size=12)
    return digest.hexdigest()


def choice(obj: dict[str, Any], field: str, allowed: dict[str, str]) -> str:
    v = obj.get(field)
    if v is None:
        raise Rejected("missing_field", field)
    if not isinstance(v, str):
        raise Rejected("wrong_type", f"{field}: {type(v).__name__}")
    if v not in allowed:
        raise Rejected("bad_value", f"{field}: {v[:40]!r} not one of {sorted(allowed)}")
    return allowed[v]


def epoch_ns_to_ms(obj: dict[str, Any], field: str, limits: Limits) -> int:
    if field not in obj or obj[field] is None:
        raise Rejected("missing_field", field)
    v = obj[field]
    if isinstance(v, bool) or not isinstance(v, int):
        raise Rejected("wrong_type", f"{field}: {type(v).__name__} (integer nanoseconds expected)")
    return check_ts(v // NS_PER_MS, field, limits)


def ms_or_iso(obj: dict[str, Any], field: str, limits: Limits) -> int:
    """Epoch milliseconds, or ISO-8601 with a zone; anything else is rejected."""
    v = obj.get(field)
    if isinstance(v, str):
        try:
            dt = datetime.fromisoformat(v.strip())
        except ValueError:
            raise Rejected("bad_timestamp", f"{field}: not ISO-8601: {v[:40]!r}") from None
        if dt.tzinfo is None:
            raise Rejected("bad_timestamp", f"{field}: ISO-8601 without a zone: {v[:40]!r}")
        return check_ts(int(dt.timestamp() * 1000), field, limits)
    return epoch_ms(obj, field, limits)


AD_EVENT_FIELDS = (
    "user_id",
    "page_id",
    "ad_id",
    "campaign_id",
    "ad_type",
    "event_type",
    "event_time_ns",
    "window_id",
    "ip_address",
)
CLICKSTREAM_FIELDS = (
    "user_id",
    "item_id",
    "interaction_type",
    "timestamp",
    "experiment_name",
    "experiment_variation",
    "session_id",
    "device_name",
)


def parse_ad_event(raw: bytes | None, limits: Limits) -> dict[str, Any]:
    o = decode_object(raw, limits)
    rec = {
        "kind": choice(o, "event_type", AD_EVENT_KINDS),
        "user_id": req_id(o, "user_id"),
        "campaign_id": req_id(o, "campaign_id"),
        "ad_id": req_id(o, "ad_id"),
        "page_id": opt_str(o, "page_id"),
        "ad_type": opt_str(o, "ad_type"),
        "device_type": "unknown",
        "browser": "unknown",
        "ts": epoch_ns_to_ms(o, "event_time_ns", limits),
        "cost_micros": 0,
    }
    rec["id"] = content_id("ad-events", o, AD_EVENT_FIELDS)
    rec["dedup_key"] = rec["id"]
    return rec


def parse_clickstream(raw: bytes | None, limits: Limits) -> dict[str, Any]:
    o = decode_object(raw, limits)
    rec = {
        "kind": choice(o, "interaction_type", CLICKSTREAM_KINDS),
        "user_id": req_id(o, "user_id"),
        "item_id": req_id(o, "item_id"),
        "experiment_name": opt_str(o, "experiment_name", ""),
        "experiment_variation": opt_str(o, "experiment_variation", ""),
        "session_id": req_id(o, "session_id"),  # required: sessions are a user metric
        "device_type": opt_str(o, "device_name"),
        "ts": ms_or_iso(o, "timestamp", limits),
    }
    rec["id"] = content_id("clickstream", o, CLICKSTREAM_FIELDS)
    rec["dedup_key"] = rec["id"]
    return rec
