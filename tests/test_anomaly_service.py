"""The anomaly service's own logic, without Kafka: staged state, first windows, silent campaigns."""

from __future__ import annotations

from typing import Any

import orjson

from services.anomaly.detectors import CtrConfig, SalesConfig
from services.anomaly.monitor import CtrMonitor, SalesMonitor, open_incidents
from services.anomaly.silence import PartitionProgress
from shared.app import key_partition, partition_key

W = 10_000
T0 = 1_700_000_000_000
CFG = CtrConfig(warmup_windows=5)


def window(campaign: str, i: int, impressions: int = 1000, clicks: int | None = None, version: int = 1):
    # A little deterministic wobble so the learnt spread is not exactly zero.
    clicks = 50 + (i * 7) % 5 - 2 if clicks is None else clicks
    return {
        "campaign_id": campaign,
        "window_start": T0 + i * W,
        "window_end": T0 + (i + 1) * W,
        "impressions": impressions,
        "clicks": clicks,
        "version": version,
    }


def monitor(tables: dict[str, dict[bytes, bytes]] | None = None, lag: int = 2) -> CtrMonitor:
    tables = tables if tables is not None else {"campaigns": {}, "progress": {}}
    return CtrMonitor(tables["campaigns"], tables["progress"], CFG, lag, 3)


def observe_all(m: CtrMonitor, records: list[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    events = []
    for partition, rec in records:
        events += m.observe(partition, rec)
        m.commit()
    return events


def rounds(campaigns: list[str], first: int, last: int, **overrides: Any) -> list[tuple[int, dict[str, Any]]]:
    """Windows first..last of each campaign, in ctr's order (window by window), all in partition 0."""
    return [(0, window(c, i, **overrides)) for i in range(first, last + 1) for c in campaigns]


# --- partition progress ------------------------------------------------------------------------


def test_a_live_window_settles_lag_windows_later() -> None:
    p = PartitionProgress()
    assert p.advance(T0, T0 + W, lag=2) == []
    assert p.advance(T0 + W, T0 + 2 * W, lag=2) == []
    assert p.advance(T0 + 2 * W, T0 + 3 * W, lag=2) == [(T0, T0 + W)]
    assert p.skipped(T0, T0 + 3 * W) == [(T0 + W, T0 + 2 * W), (T0 + 2 * W, T0 + 3 * W)]
    assert p.skipped(None, T0 + 3 * W) == []
    # A result for an already settled window does not make it live again.
    assert p.advance(T0, T0 + W, lag=2) == []
    assert T0 not in p.live
    assert PartitionProgress.from_json(orjson.loads(orjson.dumps(p.to_json()))) == p


def test_partition_key_lands_in_its_partition() -> None:
    for p in range(3):
        assert key_partition(partition_key("anomaly-progress", p, 3), 3) == p


# --- campaigns ---------------------------------------------------------------------------------


def test_first_window_is_neither_judged_nor_learnt() -> None:
    tables: dict[str, dict[bytes, bytes]] = {"campaigns": {}, "progress": {}}
    m = monitor(tables)
    assert m.observe(0, window("a", 0, clicks=5)) == []
    m.commit()
    assert orjson.loads(tables["campaigns"][b"a"])["d"] is None
    m.observe(0, window("a", 0, clicks=6, version=2))  # a late update of the first window: still skipped
    m.observe(0, window("a", 1))
    m.commit()
    assert orjson.loads(tables["campaigns"][b"a"])["d"]["b"]["n"] == 1


def test_states_reach_the_table_only_on_commit() -> None:
    tables: dict[str, dict[bytes, bytes]] = {"campaigns": {}, "progress": {}}
    m = monitor(tables)
    m.observe(0, window("a", 0))
    m.observe(0, window("a", 1))
    assert tables["campaigns"] == {} and tables["progress"] == {}
    m.discard()  # the batch failed: its input comes again
    assert tables["campaigns"] == {}
    m.observe(0, window("a", 0))
    m.commit()
    assert set(tables["campaigns"]) == {b"a"}


def test_silent_campaign_gets_zero_windows_while_its_peers_advance() -> None:
    m = monitor()
    events = observe_all(m, rounds(["a", "b"], 0, 8))
    assert events == []
    # "b" stops; "a" goes on: window 9 of "b" settles once "a" reaches window 11.
    events = observe_all(m, rounds(["a"], 9, 10))
    assert events == []
    events = observe_all(m, rounds(["a"], 11, 12))
    assert [(e["key"], e["kind"], e["window_start"], e["observed"]) for e in events] == [
        ("b", "traffic_drop", T0 + 9 * W, 0),
        ("b", "traffic_drop", T0 + 10 * W, 0),
    ]
    assert events[0]["severity"] == "critical"
    assert events[1]["incident_id"] == events[0]["anomaly_id"]
    # "b" is back at window 13: window 11 and 12, live but not settled, are filled first.
    events = observe_all(m, [(0, window("b", 13))])
    assert [(e["kind"], e["window_start"]) for e in events] == [
        ("traffic_drop", T0 + 11 * W),
        ("traffic_drop", T0 + 12 * W),
        ("resolved", T0 + 13 * W),
    ]
    assert events[-1]["resolves"] == events[0]["incident_id"]


def test_without_closed_windows_a_campaign_alone_in_its_partition_gets_no_zero_windows() -> None:
    # Another partition's windows prove nothing about partition 0.
    m = monitor()
    records = rounds(["a"], 0, 8) + [(1, window("c", i)) for i in range(0, 20)]
    assert observe_all(m, records) == []


def closed(partition: int, i: int) -> tuple[int, dict[str, Any]]:
    """ctr's record that its partition closed window i (after the window's results)."""
    start = T0 + i * W
    rec = {"kind": "window_closed", "partition": partition, "window_start": start, "window_end": start + W}
    return partition, rec


def test_a_campaign_alone_in_its_partition_that_goes_silent_gets_zero_windows() -> None:
    # ctr reports every window its partition closed, so silence is proven with no peer around.
    m = monitor()
    records = [r for i in range(0, 9) for r in (*rounds(["a"], i, i), closed(0, i))]
    assert observe_all(m, records) == []
    events = observe_all(m, [closed(0, i) for i in range(9, 13)])  # "a" stopped; time goes on
    assert [(e["key"], e["kind"], e["window_start"], e["observed"]) for e in events] == [
        ("a", "traffic_drop", T0 + 9 * W, 0),
        ("a", "traffic_drop", T0 + 10 * W, 0),
    ]
    # Back at window 13: the closed, unsettled windows 11 and 12 are filled first.
    events = observe_all(m, rounds(["a"], 13, 13))
    assert [(e["kind"], e["window_start"]) for e in events] == [
        ("traffic_drop", T0 + 11 * W),
        ("traffic_drop", T0 + 12 * W),
        ("resolved", T0 + 13 * W),
    ]


def test_closed_windows_of_a_partition_with_steady_campaigns_raise_nothing() -> None:
    m = monitor()
    records = [r for i in range(0, 30) for r in (*rounds(["a", "b"], i, i), closed(0, i))]
    assert observe_all(m, records) == []


def test_no_zero_windows_without_a_traffic_baseline() -> None:
    m = monitor()
    small = rounds(["a"], 0, 8) + [(0, window("b", i, impressions=50, clicks=3)) for i in range(0, 8)]
    assert observe_all(m, small + rounds(["a"], 9, 20)) == []


def test_a_real_result_after_its_zero_window_revises_it() -> None:
    # ctr closed several windows in one pass: "b"'s window 9 comes after "a"'s window 11.
    m = monitor()
    observe_all(m, rounds(["a", "b"], 0, 8))
    events = observe_all(m, rounds(["a"], 9, 11))
    assert [(e["kind"], e["window_start"]) for e in events] == [("traffic_drop", T0 + 9 * W)]
    events = observe_all(m, [(0, window("b", 9)), (0, window("b", 10)), (0, window("b", 11))])
    assert [(e["kind"], e["window_start"]) for e in events] == [("resolved", T0 + 9 * W)]


def test_decisions_do_not_depend_on_batch_boundaries_or_restarts() -> None:
    records = rounds(["a", "b", "c"], 0, 8) + rounds(["a", "c"], 9, 14) + rounds(["a", "b", "c"], 15, 16)
    one_by_one = observe_all(monitor(), records)

    tables: dict[str, dict[bytes, bytes]] = {"campaigns": {}, "progress": {}}
    first = monitor(tables)
    batched = []
    for partition, rec in records[:20]:
        batched += first.observe(partition, rec)
    first.commit()
    restarted = monitor(tables)  # a new process: members come back from the table
    for partition, rec in records[20:]:
        batched += restarted.observe(partition, rec)
    restarted.commit()
    assert batched == one_by_one
    assert {e["kind"] for e in batched} == {"traffic_drop", "resolved"}


def test_open_incidents_view() -> None:
    tables: dict[str, dict[bytes, bytes]] = {"campaigns": {}, "progress": {}}
    m = monitor(tables)
    observe_all(m, rounds(["a", "b"], 0, 8))
    (event,) = observe_all(m, [(0, window("a", 9, clicks=150))])
    assert event["kind"] == "ctr_high"
    assert open_incidents(tables["campaigns"], "campaign") == [
        {
            "key_type": "campaign",
            "key": "a",
            "incident_id": event["anomaly_id"],
            "kind": "ctr_high",
            "latest": event,
        }
    ]


# --- items -------------------------------------------------------------------------------------


def item_window(i: int, purchases: int) -> dict[str, Any]:
    return {
        "metric": "item",
        "item_id": "item-1",
        "window_start": T0 + i * W,
        "window_end": T0 + (i + 1) * W,
        "views": 1000,
        "clicks": 100,
        "add_to_carts": 40,
        "purchases": purchases,
        "version": 1,
    }


def test_sales_spike_per_item() -> None:
    items: dict[bytes, bytes] = {}
    m = SalesMonitor(items, SalesConfig(warmup_windows=5))
    events = []
    for i in range(12):
        events += m.observe(item_window(i, 20 + i % 3))
    m.commit()
    assert events == []
    (spike,) = m.observe(item_window(12, 60))
    m.commit()
    assert (spike["kind"], spike["key_type"], spike["key"]) == ("sales_spike", "item", "item-1")
    assert open_incidents(items, "item")[0]["incident_id"] == spike["anomaly_id"]
