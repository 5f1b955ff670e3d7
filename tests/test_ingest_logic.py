"""Validation, dedup and join rules of ingest, without a broker."""

import orjson
import pytest

from services.ingest.formats import (
    Limits,
    Rejected,
    parse_ad_event,
    parse_click,
    parse_clickstream,
    parse_impression,
)
from services.ingest.join import expire, new_entry, on_event
from shared.watermarks import NEG_INF

LIM = Limits(max_bytes=1000, min_ts_ms=946_684_800_000, max_future_skew_ms=3_600_000)
TS = 1_700_000_000_000


def imp(**kw):
    base = {
        "impression_id": "i1",
        "user_id": "u1",
        "campaign_id": "c1",
        "ad_id": "a1",
        "device_type": "mobile",
        "browser": "chrome",
        "event_timestamp": TS,
        "cost": 0.0015,
    }
    base.update(kw)
    return orjson.dumps(base)


def test_valid_impression_is_normalized():
    r = parse_impression(imp(), LIM)
    assert r["kind"] == "impression" and r["campaign_id"] == "c1" and r["ts"] == TS
    assert r["cost_micros"] == 1500


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "invalid_json"),
        (b"[1,2]", "not_an_object"),
        (imp(campaign_id=None), "missing_field"),
        (imp(campaign_id=""), "empty_id"),
        (imp(campaign_id="  "), "empty_id"),
        (imp(campaign_id=["x"]), "wrong_type"),
        (imp(event_timestamp="yesterday"), "wrong_type"),
        (imp(event_timestamp=0), "bad_timestamp"),
        (imp(event_timestamp=-5), "bad_timestamp"),
        (imp(event_timestamp=1_700_000_000), "bad_timestamp"),  # seconds, not ms
        (imp(event_timestamp=4_000_000_000_000), "bad_timestamp"),  # year 2096
        (imp(cost=-1), "bad_value"),
        (b"x" * 2000, "too_large"),
        (None, "empty_payload"),
    ],
)
def test_invalid_impressions_are_rejected_with_a_reason(raw, reason):
    with pytest.raises(Rejected) as e:
        parse_impression(raw, LIM)
    assert e.value.reason == reason


@pytest.mark.parametrize(
    ("fields", "want"),
    [
        ({"campaign_id": " c1\t"}, {"campaign_id": "c1"}),  # stripped
        ({"campaign_id": "\u2003c1"}, {"campaign_id": "c1"}),  # non-ASCII whitespace too
        ({"campaign_id": 42}, {"campaign_id": "42"}),  # integer ids become strings
        ({"campaign_id": "c" * 256}, {"campaign_id": "c" * 256}),  # the longest id
        ({"campaign_id": " " + "c" * 256}, {"campaign_id": "c" * 256}),  # 256 once stripped
        ({"device_type": " tablet "}, {"device_type": "tablet"}),
        ({"device_type": "d" * 300}, {"device_type": "d" * 256}),  # cut, not rejected
        ({"device_type": "  "}, {"device_type": "unknown"}),
        ({"event_timestamp": float(TS) + 0.7}, {"ts": TS}),
        ({"cost": 1}, {"cost_micros": 1_000_000}),
        ({"cost": 1_000_000.0}, {"cost_micros": 1_000_000_000_000}),
    ],
)
def test_values_are_normalized_at_the_edges_of_the_fast_paths(fields, want):
    """formats.py takes a fast path for well-formed values; these sit just beside it."""
    r = parse_impression(imp(**fields), LIM)
    assert {k: r[k] for k in want} == want


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"campaign_id": "c" * 257}, "bad_value"),
        ({"campaign_id": True}, "wrong_type"),
        ({"event_timestamp": True}, "wrong_type"),
        ({"device_type": 7}, "wrong_type"),
        ({"cost": 1_000_000.5}, "bad_value"),
        ({"cost": True}, "wrong_type"),
        ({"impression_id": " "}, "empty_id"),
    ],
)
def test_values_just_outside_the_fast_paths_are_rejected(fields, reason):
    with pytest.raises(Rejected) as e:
        parse_impression(imp(**fields), LIM)
    assert e.value.reason == reason


def test_unknown_extra_fields_are_tolerated():
    assert parse_impression(imp(extra={"x": 1}), LIM)["id"] == "i1"


def click(cid, ts=TS + 1000, iid="i1"):
    return {"kind": "click", "id": cid, "impression_id": iid, "user_id": "u", "ts": ts, "src": f"c:0:{cid}"}


def impression(ts=TS):
    r = parse_impression(imp(event_timestamp=ts), LIM)
    r["src"] = "i:0:0"
    return r


def test_click_before_impression_is_held_then_joined():
    e = new_entry(0)
    assert on_event(e, click("k1"), NEG_INF).emit == []
    out = on_event(e, impression(), NEG_INF)
    assert [r["kind"] for r in out.emit] == ["impression", "click"]
    assert out.emit[1]["campaign_id"] == "c1" and out.emit[1]["ts"] == TS + 1000


def test_duplicates_are_discarded_with_reason():
    e = new_entry(0)
    on_event(e, impression(), NEG_INF)
    assert on_event(e, impression(), NEG_INF).discard[0]["reason"] == "duplicate"
    on_event(e, click("k1"), NEG_INF)
    assert on_event(e, click("k1"), NEG_INF).discard[0]["reason"] == "duplicate"
    e2 = new_entry(0)
    on_event(e2, click("k2"), NEG_INF)
    assert on_event(e2, click("k2"), NEG_INF).discard[0]["reason"] == "duplicate"  # duplicate while pending


def test_click_without_impression_becomes_orphan_after_join_window():
    e = new_entry(0)
    on_event(e, click("k1", ts=TS), NEG_INF)
    forget, out = expire(e, TS + 10_000, join_window_ms=10_000, ttl_ms=60_000)
    assert out.discard == [] and not forget
    forget, out = expire(e, TS + 10_001, join_window_ms=10_000, ttl_ms=60_000)
    assert [d["reason"] for d in out.discard] == ["orphan"]
    assert not forget  # ids still remembered for dedup until the TTL
    forget, _ = expire(e, TS + 60_001, join_window_ms=10_000, ttl_ms=60_000)
    assert forget


def test_click_parse_requires_ids():
    with pytest.raises(Rejected) as e:
        parse_click(orjson.dumps({"click_id": "k", "user_id": "u", "event_timestamp": TS}), LIM)
    assert e.value.reason == "missing_field"


def test_an_old_click_gets_the_full_join_window_from_its_arrival():
    e = new_entry(0)
    wm = TS + 7_200_000  # the click is two hours behind the stream
    on_event(e, click("k1", ts=TS), wm)
    _, out = expire(e, wm + 10_000, join_window_ms=10_000, ttl_ms=60_000)
    assert out.discard == []
    out = on_event(e, impression(), wm)
    assert [r["kind"] for r in out.emit] == ["impression", "click"]
    assert "wait_from" not in out.emit[1]


def ad_event(**kw):
    base = {
        "user_id": "u1",
        "page_id": "p1",
        "ad_id": "a1",
        "campaign_id": "c1",
        "ad_type": "banner",
        "event_type": "view",
        "event_time_ns": TS * 1_000_000 + 123,
        "window_id": "w",
        "ip_address": "10.0.0.1",
    }
    base.update(kw)
    return orjson.dumps(base)


def test_ad_events_map_view_click_purchase_and_nanoseconds():
    assert parse_ad_event(ad_event(), LIM)["kind"] == "impression"
    assert parse_ad_event(ad_event(event_type="click"), LIM)["kind"] == "click"
    r = parse_ad_event(ad_event(event_type="purchase"), LIM)
    assert r["kind"] == "conversion" and r["ts"] == TS and r["campaign_id"] == "c1"


def test_ad_events_without_id_dedup_on_a_stable_content_hash():
    a, b = parse_ad_event(ad_event(), LIM), parse_ad_event(ad_event(), LIM)
    assert a["id"] == b["id"] == a["dedup_key"]
    assert parse_ad_event(ad_event(event_time_ns=TS * 1_000_000 + 124), LIM)["id"] != a["id"]
    e = new_entry(0)
    a["src"], b["src"] = "ad:0:1", "ad:0:2"
    assert len(on_event(e, a, NEG_INF).emit) == 1
    assert on_event(e, b, NEG_INF).discard[0]["reason"] == "duplicate"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (ad_event(event_type="hover"), "bad_value"),
        (ad_event(event_time_ns=float(TS) * 1e6), "wrong_type"),
        (ad_event(event_time_ns=TS), "bad_timestamp"),  # milliseconds sent as nanoseconds
        (ad_event(campaign_id=""), "empty_id"),
    ],
)
def test_bad_ad_events(raw, reason):
    with pytest.raises(Rejected) as e:
        parse_ad_event(raw, LIM)
    assert e.value.reason == reason


def cs(**kw):
    base = {
        "user_id": "u1",
        "item_id": "i1",
        "interaction_type": "add_to_cart",
        "timestamp": TS,
        "experiment_name": "exp",
        "experiment_variation": "control",
        "session_id": "s1",
        "device_name": "ios",
    }
    base.update(kw)
    return orjson.dumps(base)


@pytest.mark.parametrize(
    "ts", [TS, "2023-11-14T22:13:20+00:00", "2023-11-14T22:13:20Z", "2023-11-15T00:13:20+02:00"]
)
def test_clickstream_timestamps_ms_or_iso_with_zone(ts):
    r = parse_clickstream(cs(timestamp=ts), LIM)
    assert r["ts"] == TS and r["kind"] == "add_to_cart" and r["device_type"] == "ios"


@pytest.mark.parametrize("ts", ["2023-11-14T22:13:20", "yesterday", "", None, True, 1_700_000_000])
def test_clickstream_other_timestamps_are_dead_lettered(ts):
    with pytest.raises(Rejected):
        parse_clickstream(cs(timestamp=ts), LIM)


def test_expiry_index_hands_out_only_due_buckets_and_moves_keys():
    from services.ingest.joining import ExpiryIndex

    idx = ExpiryIndex(bucket_ms=1_000)
    idx.track(b"a", 1_500)
    idx.track(b"b", 5_200)
    idx.track(b"a", 2_100)  # moved: only its new bucket holds it
    assert idx.due(1_999) == []
    assert idx.due(2_000) == [b"a"]
    assert idx.due(4_999) == []
    idx.untrack(b"b")
    assert idx.due(10_000) == []


def test_expiry_index_hands_out_buckets_in_time_order_also_when_made_again():
    from services.ingest.joining import ExpiryIndex

    idx = ExpiryIndex(bucket_ms=1_000)
    for i, due_ms in enumerate([9_000, 3_000, 7_000, 1_000, 5_000]):
        idx.track(f"k{i}".encode(), due_ms)
    assert sorted(idx.due(5_000)) == [b"k1", b"k3", b"k4"]
    idx.track(b"late", 2_000)  # a bucket already swept is made again: the next sweep has it
    idx.track(b"k0", 6_000)  # moved earlier, out of the 9 s bucket
    assert sorted(idx.due(6_500)) == [b"k0", b"late"]
    assert idx.due(6_999) == []
    assert idx.due(7_000) == [b"k2"]
    assert idx.due(100_000) == []  # the 9 s bucket was left empty by the move
    assert idx.buckets == {} and idx.bucket_of == {}
