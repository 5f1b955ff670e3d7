"""services/anomaly/detectors.py on explicit window sequences."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import orjson
import pytest

from services.anomaly.detectors import (
    CtrConfig,
    SalesConfig,
    State,
    anomaly_id,
    ctr_step,
    sales_step,
)

W = 60_000
CTR = 0.05
DEFAULT_CTR = CtrConfig()
DEFAULT_SALES = SalesConfig()


def window(i: int, impressions: int, clicks: int, version: int | None = None) -> dict[str, Any]:
    v: dict[str, Any] = {"campaign_id": "c1", "window_start": i * W, "window_end": (i + 1) * W}
    v.update(impressions=impressions, clicks=clicks)
    if version is not None:
        v["version"] = version
    return v


def sales_window(i: int, purchases: int, version: int | None = None) -> dict[str, Any]:
    v: dict[str, Any] = {"item_id": "sku-9", "window_start": i * W, "window_end": (i + 1) * W}
    v["purchases"] = purchases
    if version is not None:
        v["version"] = version
    return v


def clean_windows(count: int, start: int = 0, seed: int = 7, imps: int = 2000) -> list[dict[str, Any]]:
    """Realistic clean traffic: binomial clicks at 5% (100 expected) with the true rate jittering."""
    rng = random.Random(seed)
    out = []
    for i in range(start, start + count):
        n = imps + rng.randint(-150, 150)
        p = CTR * rng.uniform(0.93, 1.07)
        out.append(window(i, n, sum(rng.random() < p for _ in range(n))))
    return out


def run(
    state: State | None, values: list[dict[str, Any]], cfg: CtrConfig = DEFAULT_CTR
) -> tuple[State, list]:
    events = []
    for v in values:
        state, event = ctr_step(state, v, cfg)
        if event is not None:
            events.append(event)
    assert state is not None
    return state, events


def warmed(count: int = 20) -> State:
    state, events = run(None, clean_windows(count))
    assert events == []
    return state


# --- CTR rule -------------------------------------------------------------------------------


def test_warmup_suppresses_alerts() -> None:
    state, _ = run(None, clean_windows(5))
    state, event = ctr_step(state, window(5, 2000, 400))  # 4x CTR, but only 5 windows learnt
    assert event is None
    assert state["b"]["n"] == 6  # and, not judged, it was learnt like any warm-up window


def test_doubled_ctr_at_volume_is_flagged_and_well_formed() -> None:
    state = warmed()
    _, event = ctr_step(state, window(20, 2000, 200))
    assert event is not None
    assert event["kind"] == "ctr_high" and event["direction"] == "up"
    assert event["key_type"] == "campaign" and event["key"] == "c1"
    assert (event["window_start"], event["window_end"]) == (20 * W, 21 * W)
    assert event["observed"] == pytest.approx(0.1)
    assert event["expected"] == pytest.approx(CTR, rel=0.05)
    assert event["score"] > CtrConfig().z_threshold
    assert event["severity"] == ("critical" if event["score"] >= 2 * CtrConfig().z_threshold else "warning")
    digest = hashlib.sha1(f"ctr_high|c1|{20 * W}".encode()).hexdigest()[:16]
    assert event["anomaly_id"] == digest == anomaly_id("ctr_high", "c1", 20 * W)
    assert event["incident_id"] == event["anomaly_id"]
    _, tripled = ctr_step(state, window(20, 2000, 300))
    assert tripled is not None and tripled["severity"] == "critical"  # |z| >= 2 x threshold


def test_halved_ctr_at_volume_is_flagged() -> None:
    _, event = ctr_step(warmed(), window(20, 2000, 50))
    assert event is not None
    assert (event["kind"], event["direction"], event["severity"]) == ("ctr_low", "down", "warning")
    assert event["score"] < -CtrConfig().z_threshold


def test_clean_windows_do_not_alarm() -> None:
    _, events = run(None, clean_windows(300, seed=11))
    assert events == []


def test_low_volume_is_not_flagged() -> None:
    state, events = run(None, clean_windows(20, imps=300))  # ~15 clicks a window
    assert events == []
    # Below the minimum of 200 impressions: not judged, however extreme (and 50% is no drop).
    assert ctr_step(state, window(20, 150, 60))[1] is None
    # 300 impressions at 2x CTR: 30 clicks instead of 15 is not significant at 3.5 sigma.
    assert ctr_step(state, window(20, 300, 30))[1] is None
    # The same 2x at 2000 impressions on a 2000-impression campaign is.
    assert ctr_step(warmed(), window(20, 2000, 200))[1] is not None


def test_min_expected_clicks_guard() -> None:
    # 0.2% CTR: 400 impressions expect 0.8 clicks; 6 clicks is wild but there is too little to judge.
    rng = random.Random(3)
    values = [window(i, 3000, sum(rng.random() < 0.002 for _ in range(3000))) for i in range(20)]
    state, events = run(None, values)
    assert events == []
    assert ctr_step(state, window(20, 400, 6))[1] is None


def test_overdispersion_widens_the_band() -> None:
    """A campaign whose CTR wanders +-25% between windows must not alarm on a +30% window that
    would be 4 binomial sigmas for a campaign with a steady CTR."""
    rng = random.Random(5)
    wobbly = []
    for i in range(60):
        p = CTR * (0.75 if i % 2 else 1.25)
        wobbly.append(window(i, 2000, sum(rng.random() < p for _ in range(2000))))
    state, events = run(None, wobbly)
    assert events == []
    assert state["b"]["tau2"] > 0.0
    assert ctr_step(state, window(60, 2000, 130))[1] is None
    assert ctr_step(warmed(60), window(60, 2000, 145))[1] is not None  # steady campaign: flagged


def test_anomaly_does_not_drag_the_baseline_until_rebaselined() -> None:
    """A persistent 2x shift keeps being flagged with the baseline frozen; after `rebaseline_after`
    consecutive flagged windows it is accepted as the new normal and the incident is resolved."""
    cfg = CtrConfig(rebaseline_after=8)
    state = warmed()
    frozen = dict(state["b"])
    shifted = [window(i, 2000, 200 + i % 3) for i in range(20, 27)]
    state, events = run(state, shifted, cfg)
    assert [e["kind"] for e in events] == ["ctr_high"] * 7
    assert {e["incident_id"] for e in events} == {events[0]["anomaly_id"]}
    assert len({e["anomaly_id"] for e in events}) == 7
    assert (
        state["b"]["c"] == frozen["c"] and state["b"]["i"] == frozen["i"] and state["b"]["n"] == frozen["n"]
    )
    # The 8th flagged window in a row: re-baselined, the incident is resolved.
    state, event = ctr_step(state, window(27, 2000, 201), cfg)
    assert event is not None and event["kind"] == "resolved" and event["reason"] == "rebaselined"
    assert event["resolves"] == events[0]["anomaly_id"]
    assert state["b"]["c"] / state["b"]["i"] == pytest.approx(0.1, rel=0.02)
    # The new level is normal now.
    state, events = run(state, [window(i, 2000, 200 + i % 5) for i in range(28, 40)], cfg)
    assert events == []


def test_resolved_after_the_first_clean_window() -> None:
    state = warmed()
    state, first = ctr_step(state, window(20, 2000, 200))
    state, second = ctr_step(state, window(21, 2000, 210))
    assert first is not None and second is not None
    assert second["incident_id"] == first["anomaly_id"] != second["anomaly_id"]
    state, resolved = ctr_step(state, window(22, 2000, 101))
    assert resolved == {
        "anomaly_id": anomaly_id("resolved", "c1", 22 * W),
        "kind": "resolved",
        "resolves": first["anomaly_id"],
        "reason": "normal",
        "key_type": "campaign",
        "key": "c1",
        "window_start": 22 * W,
        "window_end": 23 * W,
    }
    assert state["open"] is None
    assert ctr_step(state, window(23, 2000, 99))[1] is None


def test_a_new_kind_supersedes_the_open_incident() -> None:
    state = warmed()
    state, high = ctr_step(state, window(20, 2000, 200))
    state, drop = ctr_step(state, window(21, 20, 1))
    assert high is not None and drop is not None
    assert drop["kind"] == "traffic_drop" and drop["supersedes"] == high["anomaly_id"]
    assert state["open"] == {"id": drop["anomaly_id"], "kind": "traffic_drop"}


# --- traffic rule ---------------------------------------------------------------------------


def test_traffic_drop() -> None:
    state = warmed()
    _, event = ctr_step(state, window(20, 40, 2))  # 2% of ~2000
    assert event is not None
    assert (event["kind"], event["direction"], event["severity"]) == ("traffic_drop", "down", "critical")
    assert event["observed"] == 40
    assert event["expected"] == pytest.approx(2000, rel=0.05)
    assert event["score"] == pytest.approx(0.02, rel=0.05)
    _, event = ctr_step(state, window(20, 160, 8))  # 8%: below 10%, above 5%
    assert event is not None and event["severity"] == "warning"
    _, event = ctr_step(state, window(20, 0, 0))  # silence, fed by the service as a zero window
    assert event is not None and event["severity"] == "critical"
    assert ctr_step(state, window(20, 400, 20))[1] is None  # 20%: a dip, not a drop


def test_traffic_drop_needs_typical_volume() -> None:
    state, events = run(None, clean_windows(20, imps=150))  # typical < 200 impressions
    assert events == []
    assert ctr_step(state, window(20, 0, 0))[1] is None


def test_traffic_drop_does_not_drag_typical_volume() -> None:
    state = warmed()
    typical = state["b"]["i"]
    state, events = run(state, [window(i, 30, 1) for i in range(20, 25)])
    assert [e["kind"] for e in events] == ["traffic_drop"] * 5
    assert state["b"]["i"] == typical


# --- re-emission and ordering ---------------------------------------------------------------


def test_reemitted_window_is_idempotent() -> None:
    state = warmed()
    state, first = ctr_step(state, window(20, 2000, 200, version=1))
    assert first is not None
    after_first = orjson.loads(orjson.dumps(state))
    # A late update of the same window, and a plain redelivery of it: no duplicate anomaly ...
    state, again = ctr_step(state, window(20, 2040, 204, version=2))
    assert again is None
    state, again = ctr_step(state, window(20, 2040, 204, version=2))
    assert again is None
    # ... and nothing counted twice: the flagged window stays out of the baseline, and its
    # contribution to the flagged-run totals (for re-baselining) was replaced, not added.
    assert {k: state["b"][k] for k in ("n", "c", "i", "tau2", "run")} == {
        k: after_first["b"][k] for k in ("n", "c", "i", "tau2", "run")
    }
    assert (state["b"]["run"], state["b"]["rc"], state["b"]["ri"]) == (1, 204, 2040)
    # A stale older version is ignored altogether.
    stale_state, stale = ctr_step(state, window(20, 2000, 200, version=1))
    assert stale is None and stale_state == state


def test_reemitted_clean_window_replaces_its_contribution() -> None:
    values = clean_windows(21)
    revised = dict(values[-1], impressions=values[-1]["impressions"] + 50, version=2)
    via_revision, _ = run(None, [*values, revised])
    direct, _ = run(None, [*values[:-1], revised])
    assert via_revision["b"] == direct["b"]
    assert via_revision["b"]["n"] == 21


def test_revision_that_clears_the_window_resolves_its_incident() -> None:
    state = warmed()
    state, first = ctr_step(state, window(20, 2000, 200, version=1))
    assert first is not None
    # Late impressions arrive for the window: the click rate was normal after all.
    state, event = ctr_step(state, window(20, 4000, 205, version=2))
    assert event is not None and event["kind"] == "resolved" and event["resolves"] == first["anomaly_id"]
    assert state["open"] is None and state["b"]["n"] == 21


def test_revision_changing_kind_emits_the_new_kind_once() -> None:
    state = warmed()
    state, high = ctr_step(state, window(20, 2000, 200, version=1))
    state, low = ctr_step(state, window(20, 4000, 100, version=2))
    assert high is not None and low is not None
    assert low["kind"] == "ctr_low" and low["supersedes"] == high["anomaly_id"]
    assert ctr_step(state, window(20, 4000, 100, version=3))[1] is None


def test_out_of_order_window_is_judged_but_not_learnt() -> None:
    state = warmed(30)
    before = orjson.loads(orjson.dumps(state))
    state, event = ctr_step(state, window(12, 2000, 200))  # older than the newest (29)
    assert event is not None and event["kind"] == "ctr_high" and event["window_start"] == 12 * W
    assert state == before
    state, event = ctr_step(state, window(13, 2000, 100))
    assert event is None and state == before


# --- state persistence ----------------------------------------------------------------------


def test_state_survives_an_orjson_round_trip() -> None:
    """The service stores the state as orjson bytes in a changelogged table between windows."""
    values = clean_windows(40, seed=2)
    values[25] = window(25, 2000, 220)
    values[26] = window(26, 30, 1)
    values[31] = dict(values[30], clicks=values[30]["clicks"] + 3, version=2)
    plain, plain_events = run(None, values)
    stored: State | None = None
    stored_events = []
    for v in values:
        stored, event = ctr_step(stored, v)
        stored = orjson.loads(orjson.dumps(stored))
        if event is not None:
            stored_events.append(event)
    assert stored == plain
    assert stored_events == plain_events
    assert [e["kind"] for e in plain_events] == ["ctr_high", "traffic_drop", "resolved"]


# --- sales rule -----------------------------------------------------------------------------


def poisson(rng: random.Random, mean: float) -> int:
    count, t = 0, rng.expovariate(1.0)
    while t < mean:
        count, t = count + 1, t + rng.expovariate(1.0)
    return count


def sales_run(
    state: State | None, values: list[dict[str, Any]], cfg: SalesConfig = DEFAULT_SALES
) -> tuple[State | None, list]:
    events = []
    for v in values:
        state, event = sales_step(state, v, cfg)
        if event is not None:
            events.append(event)
    return state, events


def test_sales_spike() -> None:
    rng = random.Random(9)
    state, events = sales_run(None, [sales_window(i, poisson(rng, 20.0)) for i in range(30)])
    assert events == []
    assert sales_step(state, sales_window(30, 28))[1] is None  # +40%: under the 1.5x factor
    state, event = sales_step(state, sales_window(30, 60))
    assert event is not None
    assert (event["kind"], event["key_type"], event["key"]) == ("sales_spike", "item", "sku-9")
    assert event["direction"] == "up" and event["observed"] == 60
    assert event["expected"] == pytest.approx(20.0, rel=0.2)
    assert event["score"] == pytest.approx(60 / event["expected"])
    assert event["severity"] == ("critical" if event["score"] >= 3.0 else "warning")
    assert event["anomaly_id"] == anomaly_id("sales_spike", "sku-9", 30 * W)
    state, event = sales_step(state, sales_window(31, 20))
    assert event is not None and event["kind"] == "resolved"


def test_sales_guards() -> None:
    rng = random.Random(4)
    # Warm-up: a spike in the 5th window is not judged.
    _, events = sales_run(
        None, [sales_window(i, poisson(rng, 20.0)) for i in range(4)] + [sales_window(4, 90)]
    )
    assert events == []
    # Low volume: 2 purchases a window on average; 8 is 4x but not evidence of anything.
    state, events = sales_run(None, [sales_window(i, poisson(rng, 2.0)) for i in range(30)])
    assert events == []
    assert sales_step(state, sales_window(30, 8))[1] is None
    # 1.5x but noise-level at 10 a window: 16 purchases is not significant.
    state, _ = sales_run(None, [sales_window(i, poisson(rng, 10.0)) for i in range(30)])
    assert sales_step(state, sales_window(30, 16))[1] is None


def test_sales_baseline_excludes_flagged_windows_and_reemission_is_idempotent() -> None:
    rng = random.Random(1)
    state, _ = sales_run(None, [sales_window(i, poisson(rng, 30.0)) for i in range(30)])
    assert state is not None
    mean = state["b"]["m"]
    state, events = sales_run(state, [sales_window(30, 100, version=1), sales_window(30, 104, version=2)])
    assert [e["kind"] for e in events] == ["sales_spike"]
    assert state["b"]["m"] == mean and state["b"]["n"] == 30
    assert orjson.loads(orjson.dumps(state)) == state


def test_custom_config_is_respected() -> None:
    state = warmed()
    strict = CtrConfig(z_threshold=20.0)
    assert ctr_step(state, window(20, 2000, 200), strict)[1] is None
    loose = CtrConfig(traffic_drop_fraction=0.5)
    _, event = ctr_step(state, window(20, 800, 40), loose)
    assert event is not None and event["kind"] == "traffic_drop"
