import orjson

from services.ctr.metrics import contribution, ctr_result, shift_latest, window_closed
from services.warehouse.sinks import Message, sinks_for
from shared.topics import TopicNames
from shared.windows import Emit


def test_ctr_cpc_cpm_from_counts():
    r = ctr_result(Emit("c1", 0, 60_000, 1, [200, 5, 3_000_000]))
    assert (r["impressions"], r["clicks"], r["ctr"]) == (200, 5, 0.025)
    assert r["cost"] == 3.0 and r["cpc"] == 0.6 and r["cpm"] == 15.0


def test_ctr_is_zero_without_impressions():
    r = ctr_result(Emit("c1", 0, 60_000, 1, [0, 3, 0]))
    assert r["ctr"] == 0.0 and r["cpm"] == 0.0 and r["cpc"] == 0.0


def test_contribution_per_kind():
    assert contribution({"kind": "impression", "cost_micros": 7}) == [1, 0, 7]
    assert contribution({"kind": "click"}) == [0, 1, 0]
    assert contribution({"kind": "purchase"}) is None


def test_latest_and_previous_whatever_the_order():
    def r(start, v=1):
        return {"window_start": start, "version": v}

    s = shift_latest(None, r(60))
    s = shift_latest(s, r(120))
    assert (s["latest"]["window_start"], s["previous"]["window_start"]) == (120, 60)
    s = shift_latest(s, r(60, 2))  # late update of the previous window
    assert s["previous"]["version"] == 2 and s["latest"]["window_start"] == 120
    s = shift_latest(s, r(0))  # older than both: ignored
    assert (s["latest"]["window_start"], s["previous"]["window_start"]) == (120, 60)


def test_the_warehouse_stores_results_and_skips_closed_window_records():
    sink = sinks_for(TopicNames(""))["ctr-metrics"]
    result = ctr_result(Emit("c1", 0, 10_000, 1, [100, 3, 500_000]))
    table, row = sink.route(Message("ctr-metrics", 0, 0, b"c1", orjson.dumps(result), {}, 0))
    assert table == "fct_campaign_ctr" and row[:5] == ["c1", 0, 10_000, 100, 3]
    closed = orjson.dumps(window_closed(0, 0, 10_000))
    assert sink.route(Message("ctr-metrics", 0, 1, b"\x00watermark:0:0", closed, {}, 0)) is None
