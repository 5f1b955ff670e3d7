"""Engagement service, pure parts: fan-out keys, per-dimension aggregates and records, exact
distinct sets (replays, crashes, expiry) and the A/B readout against shared/stats."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest

from services.engagement.distinct import DistinctSets, aggregate_key_of, counting, entry_key
from services.engagement.metrics import dimension_keys, dimension_records, lifetime_arms, window_records
from services.engagement.readout import readout_records
from services.warehouse.sinks import Message, columns_by_table, sinks_for
from shared.stats import chi_square_gof, two_proportion_ztest
from shared.topics import TopicNames
from shared.windowed_agent import BatchResult, WindowedAggregation
from shared.windows import Emit, WindowSpec

SPEC = WindowSpec(duration_ms=10_000, grace_ms=5_000, delay_ms=0)


def imp(ts: int, user: str = "u1", device: str = "mobile") -> dict[str, Any]:
    return {"kind": "impression", "user_id": user, "campaign_id": "c1", "device_type": device, "ts": ts}


def cs(
    kind: str, ts: int, user: str = "u1", item: str = "i1", session: str = "s1", **kw: str
) -> dict[str, Any]:
    rec = {
        "kind": kind,
        "user_id": user,
        "item_id": item,
        "session_id": session,
        "device_type": "iPhone 15",
        "experiment_name": "exp",
        "experiment_variation": "control",
        "ts": ts,
    }
    return {**rec, **kw}


# --- fan out --------------------------------------------------------------------------------


def test_each_event_goes_to_every_dimension_it_has():
    assert dimension_keys(imp(1)) == ["device:mobile", "user:u1"]
    assert dimension_keys(cs("item_view", 1)) == ["device:iPhone 15", "user:u1", "item:i1", "experiment:exp"]
    # no experiment without both a name and a variation
    assert dimension_keys(cs("purchase", 1, experiment_variation="")) == [
        "device:iPhone 15",
        "user:u1",
        "item:i1",
    ]
    assert dimension_keys({"kind": "click", "user_id": "u2", "device_type": ""})[0] == "device:unknown"


def test_each_dimension_copy_keeps_what_it_counts_and_what_a_late_report_names():
    event = {**cs("purchase", 7, id="e1", src="clickstream:0:5"), "price": 9.5, "browser": "Safari"}
    copies = dict(dimension_records(event))
    assert list(copies) == dimension_keys(event)
    reported = {"kind": "purchase", "ts": 7, "id": "e1", "src": "clickstream:0:5", "user_id": "u1"}
    assert copies["device:iPhone 15"] == reported == copies["item:i1"]
    assert copies["user:u1"] == {**reported, "session_id": "s1"}
    assert copies["experiment:exp"] == {
        **reported,
        "experiment_name": "exp",
        "experiment_variation": "control",
    }
    # an ad event's campaign travels with it (fct_late_event names it)
    assert (
        dict(dimension_records({**imp(1), "id": "e2", "src": "ad:0:1"}))["device:mobile"]["campaign_id"]
        == "c1"
    )


# --- windows through the shared engine, as the aggregate agent runs them ---------------------


class Aggregator:
    """WindowedAggregation + DistinctSets over plain dicts, committing in the agent's order."""

    def __init__(self, states: dict[bytes, bytes] | None = None, members: dict[bytes, bytes] | None = None):
        self.states = {} if states is None else states
        self.members = {} if members is None else members
        self.windows = WindowedAggregation(self.states, SPEC, idle_timeout_s=60, partitions=1)
        self.sets = DistinctSets(self.members, SPEC, partitions=1)
        self.contribute = counting(self.sets)
        self.closed: dict[int, int] = {}
        self.offset = 0

    def run(self, *events: dict[str, Any], commit: bool = True) -> tuple[BatchResult, list[dict[str, Any]]]:
        batch = []
        for rec in events:
            if rec.get("kind") == "wm":
                batch.append((0, b"", rec))
                continue
            # as the fan-out sends them: each dimension's copy holds only the fields it needs
            for i, (key, fields) in enumerate(dimension_records(rec)):
                batch.append((0, key.encode(), {**fields, "key": key, "seq": [0, self.offset, i]}))
            self.offset += 1
        result = self.windows.process(batch, self.contribute)
        self.sets.apply_pending()  # members go out with the results, before the states
        records = [r for e in result.emits for r in window_records(e, self.sets.sizes(e.key, e.start_ms), 0)]
        if commit:
            self.sets.expire(self.closed)
            self.sets.apply_pending()
            self.windows.commit_states(result)
            self.closed = {p: max(c.closed_to, c.floor) for p, c in self.windows.partitions.items()}
        return result, records


def wm(ts: int) -> dict[str, Any]:
    return {"kind": "wm", "src": "fan-out:0", "ts": ts, "of": 1}


def by_metric(records: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "emitted_at_ms"} for r in records if r["metric"] == metric]


def test_device_user_item_and_experiment_windows():
    agg = Aggregator()
    events = [
        imp(1_000, "u1", "mobile"),
        {**imp(1_500, "u1", "mobile"), "kind": "click"},
        imp(2_000, "u2", "mobile"),
        {"kind": "conversion", "user_id": "u3", "device_type": "mobile", "campaign_id": "c1", "ts": 2_500},
        cs("item_view", 3_000, "u1", session="s1"),
        cs("item_click", 3_100, "u1", session="s1"),
        cs("add_to_cart", 3_200, "u1", session="s2"),
        cs("purchase", 3_300, "u1", session=""),
        cs("item_view", 4_000, "u4", experiment_variation="treatment"),
        cs("item_view", 4_100, "u4", experiment_variation="treatment"),
    ]
    _, records = agg.run(*events, wm(10_000))
    window = {"window_start": 0, "window_end": 10_000, "version": 1}
    assert sorted(by_metric(records, "device"), key=lambda r: r["device_type"]) == [
        {
            "metric": "device",
            "device_type": "iPhone 15",
            **window,
            "impressions": 0,
            "clicks": 0,
            "ctr": 0.0,
            "unique_users": 2,
            "conversions": 1,
        },
        {
            "metric": "device",
            "device_type": "mobile",
            **window,
            "impressions": 2,
            "clicks": 1,
            "ctr": 0.5,
            "unique_users": 3,
            "conversions": 1,
        },
    ]
    users = {r["user_id"]: r for r in by_metric(records, "user")}
    assert users["u1"] == {
        "metric": "user",
        "user_id": "u1",
        **window,
        "views": 2,  # impression + item_view
        "clicks": 2,  # click + item_click
        "purchases": 1,
        "sessions": 2,  # s1, s2; the empty session is none
        "first_seen": 1_000,
        "last_seen": 3_300,
    }
    assert (users["u3"]["purchases"], users["u3"]["sessions"]) == (1, 0)
    assert by_metric(records, "item") == [
        {
            "metric": "item",
            "item_id": "i1",
            **window,
            "views": 3,
            "clicks": 1,
            "add_to_carts": 1,
            "purchases": 1,
            "conversion_rate": 1 / 3,
        }
    ]
    exp = {
        r["variation"]: (r["users"], r["conversions"], r["conversion_rate"])
        for r in by_metric(records, "experiment")
    }
    assert exp == {"control": (1, 1, 1.0), "treatment": (1, 0, 0.0)}


def device_rows(records: list[dict[str, Any]]) -> dict[str, tuple[int, ...]]:
    return {
        r["device_type"]: (r["impressions"], r["unique_users"], r["version"])
        for r in records
        if r["metric"] == "device"
    }


def test_a_watermark_moving_alone_closes_and_drops_untouched_windows_also_after_a_restart():
    # Windows of keys no batch touches any more are found through their ends (the due index),
    # not by scanning every key: each must still be emitted at its end and dropped after grace.
    agg = Aggregator()
    agg.run(imp(1_000, "u1", "mobile"), imp(12_000, "u2", "tablet"), wm(500))
    _, records = agg.run(wm(9_999))
    assert records == []
    _, records = agg.run(wm(10_000))  # the end of [0, 10 s) only
    assert device_rows(records) == {"mobile": (1, 1, 1)}
    _, records = agg.run(wm(14_999))
    assert records == [] and orjson.loads(agg.states[b"device:mobile"])["w"]
    agg.run(wm(15_000))  # end + grace: dropped
    assert orjson.loads(agg.states[b"device:mobile"])["w"] == {}
    assert orjson.loads(agg.states[b"device:tablet"])["w"]
    # restarted from the table: the restored window closes on the watermark alone too
    restarted = Aggregator(dict(agg.states), dict(agg.members))
    _, records = restarted.run(wm(19_999))
    assert records == []
    _, records = restarted.run(wm(20_000))
    assert device_rows(records) == {"tablet": (1, 1, 1)}
    restarted.run(wm(25_000))
    assert orjson.loads(restarted.states[b"device:tablet"])["w"] == {}


def test_late_update_reemits_with_exact_distinct_count_and_a_new_version():
    agg = Aggregator()
    _, first = agg.run(imp(1_000, "u1"), imp(2_000, "u2"), wm(11_000))
    assert device_rows(first) == {"mobile": (2, 2, 1)}
    # within allowed lateness: a returning user adds an impression, a new one a user
    _, again = agg.run(imp(3_000, "u1"), imp(4_000, "u3"), wm(12_000))
    assert device_rows(again) == {"mobile": (4, 3, 2)}
    # past allowed lateness: late, not counted
    result, records = agg.run(wm(15_000), imp(5_000, "u9"))
    assert [r[0]["user_id"] for r in result.late] == ["u9", "u9"] and records == []


def test_replay_after_a_crash_between_members_and_state_counts_each_user_once():
    agg = Aggregator()
    agg.run(imp(1_000, "u1"))
    # crash: this batch's members reached the table, its results and states did not
    agg.run(imp(2_000, "u2"), imp(3_000, "u1"), commit=False)
    restarted = Aggregator(dict(agg.states), dict(agg.members))
    restarted.offset = 0  # the consumer re-reads from the last committed offset: both batches
    result, records = restarted.run(imp(1_000, "u1"), imp(2_000, "u2"), imp(3_000, "u1"), wm(10_000))
    assert result.replayed == 2  # the first batch's event, in its two dimensions
    assert device_rows(records) == {"mobile": (3, 2, 1)}
    assert {r["user_id"]: r["views"] for r in records if r["metric"] == "user"} == {"u1": 2, "u2": 1}


def test_members_are_partitioned_with_their_key_and_deleted_once_the_drop_is_durable():
    agg = Aggregator()
    agg.run(imp(1_000, "u1"), cs("purchase", 2_000, "u2"))
    key = entry_key("device:mobile", 0, "users", "u1")
    assert aggregate_key_of(key) == b"device:mobile"
    assert key in agg.members and entry_key("experiment:exp", None, "buyers:control", "u2") in agg.members
    agg.run(wm(15_000))  # window [0, 10 s) dropped: end + grace <= watermark
    assert key in agg.members  # its state is not known to be on the broker yet
    agg.run(wm(15_001))
    assert key not in agg.members
    # the experiment's lifetime sets stay
    assert sorted(orjson.loads(k)[1:] for k in agg.members) == [
        [None, "buyers:control", "u2"],
        [None, "users:control", "u2"],
    ]


def test_restart_rebuilds_the_sets_from_the_table():
    agg = Aggregator()
    agg.run(imp(1_000, "u1"), imp(2_000, "u2"))
    restarted = Aggregator(dict(agg.states), dict(agg.members))
    restarted.offset = 2
    _, records = restarted.run(imp(3_000, "u2"), imp(3_500, "u3"), wm(10_000))
    assert device_rows(records) == {"mobile": (4, 3, 1)}


# --- readout --------------------------------------------------------------------------------


def test_readout_against_shared_stats():
    arms = {"control": (1_000, 100), "treatment": (980, 125), "b": (1_030, 90)}
    rows = {r["variation"]: r for r in readout_records("exp", arms, None, 42, 7)}
    assert sorted(rows) == ["b", "control", "treatment"]
    srm = chi_square_gof([1_030, 1_000, 980])
    for variation, (users, conversions) in arms.items():
        r = rows[variation]
        assert (r["users"], r["conversions"], r["conversion_rate"]) == (
            users,
            conversions,
            conversions / users,
        )
        assert (r["control_users"], r["control_conversions"]) == (1_000, 100)
        assert (r["srm_chi2"], r["srm_p_value"], r["as_of"], r["version"]) == (
            srm.statistic,
            srm.p_value,
            42,
            7,
        )
        if variation == "control":
            assert (r["z"], r["p_value"], r["lift_abs"], r["lift_rel"], r["ci_low"], r["ci_high"]) == (
                0.0,
                1.0,
                0.0,
                None,
                0.0,
                0.0,
            )
            continue
        t = two_proportion_ztest(100, 1_000, conversions, users)
        assert (r["z"], r["p_value"], r["lift_abs"], r["lift_rel"], r["ci_low"], r["ci_high"]) == (
            t.z,
            t.p_value,
            t.lift,
            t.relative_lift,
            t.ci_low,
            t.ci_high,
        )
    # by hand, for the treatment: pooled z and the unpooled 95 % interval
    p1, p2, pooled = 0.1, 125 / 980, 225 / 1_980
    z = (p2 - p1) / math.sqrt(pooled * (1 - pooled) * (1 / 1_000 + 1 / 980))
    half = 1.959963984540054 * math.sqrt(p1 * (1 - p1) / 1_000 + p2 * (1 - p2) / 980)
    t = rows["treatment"]
    assert t["z"] == pytest.approx(z, rel=1e-12)
    assert t["p_value"] == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), rel=1e-9)
    assert (t["ci_low"], t["ci_high"]) == pytest.approx((p2 - p1 - half, p2 - p1 + half), rel=1e-9)
    assert t["lift_rel"] == pytest.approx((p2 - p1) / p1)


def test_readout_with_configured_split_missing_control_and_unplanned_arm():
    rows = {r["variation"]: r for r in readout_records("exp", {"treatment": (10, 1)}, None, 0, 1)}
    assert rows["treatment"]["control_users"] == 0 and rows["treatment"]["p_value"] == 1.0  # no control
    assert rows["treatment"]["srm_p_value"] == 1.0  # one arm: nothing to compare
    split = {"control": 0.8, "treatment": 0.2}
    rows = {
        r["variation"]: r
        for r in readout_records("exp", {"control": (800, 8), "treatment": (200, 2)}, split, 0, 1)
    }
    assert rows["control"]["srm_chi2"] == pytest.approx(0.0) and rows["control"][
        "srm_p_value"
    ] == pytest.approx(1.0)
    rows = {r["variation"]: r for r in readout_records("exp", {"control": (5, 0)}, split, 0, 1)}
    assert rows["treatment"]["users"] == 0  # planned but unseen: reported, and a mismatch
    assert rows["control"]["srm_chi2"] == chi_square_gof([5, 0], [0.8, 0.2]).statistic
    rows = {r["variation"]: r for r in readout_records("exp", {"control": (5, 0), "x": (1, 0)}, split, 0, 1)}
    assert math.isinf(rows["x"]["srm_chi2"]) and rows["x"]["srm_p_value"] == 0.0


def test_lifetime_arms_from_set_sizes():
    sizes = {"users:control": 10, "buyers:control": 2, "users:a:b": 3}
    assert lifetime_arms(sizes) == {"control": (10, 2), "a:b": (3, 0)}


# --- warehouse rows -------------------------------------------------------------------------


def test_engagement_metrics_route_to_their_tables():
    sink = sinks_for(TopicNames(""))["engagement-metrics"]
    columns = columns_by_table({"engagement-metrics": sink})
    emit = Emit("item:i1", 0, 10_000, 3, [4, 2, 1, 1])
    record = window_records(emit, {}, 99)[0]
    table, row = sink.route(Message("engagement-metrics", 0, 0, b"i1", orjson.dumps(record), {}, 0))
    assert table == "fct_item"
    assert dict(zip(columns[table], row, strict=True)) == {
        "item_id": "i1",
        "window_start": 0,
        "window_end": 10_000,
        "views": 4,
        "clicks": 2,
        "add_to_carts": 1,
        "purchases": 1,
        "conversion_rate": 0.25,
        "version": 3,
        "emitted_at": 99,
    }
    readout = readout_records("exp", {"control": (5, 0), "x": (1, 0)}, {"control": 1.0}, 5, 6)[1]
    table, row = sink.route(Message("engagement-metrics", 0, 1, b"exp", orjson.dumps(readout), {}, 0))
    assert table == "fct_experiment_readout" and math.isinf(row[columns[table].index("srm_chi2")])
    marker = orjson.dumps({"kind": "wm", "src": "x", "ts": 1, "of": 1})
    assert sink.route(Message("engagement-metrics", 0, 2, None, marker, {}, 0)) is None
