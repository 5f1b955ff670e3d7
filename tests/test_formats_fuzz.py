"""Bad input never crashes ingest: every message is either accepted (and well-formed) or rejected
with a machine-readable reason. Property-based (hypothesis) over every source parser."""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.ingest.formats import (
    Limits,
    Rejected,
    parse_ad_event,
    parse_click,
    parse_clickstream,
    parse_impression,
)

LIM = Limits(max_bytes=65_536, min_ts_ms=946_684_800_000, max_future_skew_ms=3_600_000)
PARSERS = [parse_impression, parse_click, parse_ad_event, parse_clickstream]
REASONS = {
    "invalid_json",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "empty_id",
    "bad_value",
    "bad_timestamp",
    "too_large",
    "empty_payload",
}
NOW = 1_790_000_000_000

weird_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=80) | st.sampled_from(
    ["'; DROP TABLE fct_campaign_ctr; --", "$(rm -rf /)", "`id`", "\u202e\u0000", "🙂" * 30, "a" * 300, " "]
)
timestamps = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [NOW, NOW // 1000, NOW * 1_000_000, "2026-11-23T10:00:00Z", "2026-11-23T10:00:00", "now"]
    ),
    weird_text,
    st.none(),
    st.booleans(),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | weird_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(weird_text, inner, max_size=4),
    max_leaves=20,
)
FIELDS = [
    "impression_id",
    "click_id",
    "user_id",
    "campaign_id",
    "ad_id",
    "device_type",
    "browser",
    "cost",
    "page_id",
    "ad_type",
    "event_type",
    "window_id",
    "ip_address",
    "item_id",
    "interaction_type",
    "experiment_name",
    "experiment_variation",
    "session_id",
    "device_name",
]
TS_FIELDS = ["event_timestamp", "event_time_ns", "timestamp"]
objects = st.fixed_dictionaries(
    {},
    optional={
        **{
            f: st.one_of(
                weird_text, json_values, st.sampled_from(["view", "click", "purchase", "add_to_cart"])
            )
            for f in FIELDS
        },
        **{f: timestamps for f in TS_FIELDS},
    },
)


def check(parse, raw: bytes | None) -> None:
    try:
        rec = parse(raw, LIM)
    except Rejected as err:
        assert err.reason in REASONS
        return
    # accepted: well-formed by construction
    assert isinstance(rec["id"], str) and rec["id"]
    assert isinstance(rec["user_id"], str) and rec["user_id"].strip() == rec["user_id"]
    assert isinstance(rec["ts"], int) and LIM.min_ts_ms <= rec["ts"]
    orjson.dumps(rec)  # always re-serialisable


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(raw=st.binary(max_size=300))
def test_random_bytes(raw):
    for parse in PARSERS:
        check(parse, raw)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(obj=objects)
def test_random_objects_with_the_right_field_names(obj):
    raw = orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS) if _json_safe(obj) else b"{}"
    for parse in PARSERS:
        check(parse, raw)
        check(parse, raw[: len(raw) // 2])  # truncated


def _json_safe(obj) -> bool:
    try:
        orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)
        return True
    except (TypeError, orjson.JSONEncodeError):
        return False


def test_nan_infinity_huge_and_deep_payloads():
    for parse in PARSERS:
        check(parse, b'{"event_timestamp": NaN}')
        check(parse, b'{"event_timestamp": Infinity, "event_time_ns": -Infinity}')
        check(parse, b"[" * 100_000 + b"]" * 100_000)  # too large and too deep
        check(parse, b"[" * 2_000 + b"]" * 2_000)  # deep but small
        check(parse, b'{"user_id": "' + b"x" * 70_000 + b'"}')
        check(parse, None)
        check(parse, b"")
        check(parse, '{"user_id": "\ud800"}'.encode("utf-8", "surrogatepass"))
    big = {"impression_id": "i", "user_id": "u", "campaign_id": "c", "ad_id": "a", "event_timestamp": 1.5e300}
    try:
        parse_impression(orjson.dumps(big), LIM)
        raise AssertionError("absurd timestamp accepted")
    except Rejected as err:
        assert err.reason == "bad_timestamp"
