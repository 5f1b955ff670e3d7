"""Event-time window rules with explicit timestamps (Quix Streams style), no broker."""

import pytest

from shared.watermarks import NEG_INF, MultiSourceWatermark
from shared.windows import Placement, WindowSpec, add, close, latest_open_end, new_state, sum_into

SPEC = WindowSpec(duration_ms=10_000, grace_ms=5_000, delay_ms=1_000)
ONE = sum_into([1])


def test_window_assignment_is_floor_of_event_time():
    assert SPEC.start(0) == 0
    assert SPEC.start(9_999) == 0
    assert SPEC.start(10_000) == 10_000
    assert SPEC.end(SPEC.start(12_345)) == 20_000


def test_watermark_subtracts_delay_and_keeps_unknown_unknown():
    assert SPEC.watermark(50_000) == 49_000
    assert SPEC.watermark(NEG_INF) == NEG_INF


def test_placement_open_update_late_boundaries():
    # window [0, 10000): emitted once W >= 10000; late once W >= 15000
    for watermark, placement in [(9_999, "open"), (10_000, "update"), (14_999, "update"), (15_000, "late")]:
        state = new_state()
        assert add(state, SPEC, 5_000, watermark, ONE) is Placement(placement)
        assert state["w"] == ({} if placement == "late" else {"0": [0, 1, 1]})


def test_window_emits_once_when_watermark_passes_end_then_updates_within_lateness():
    s = new_state()
    assert add(s, SPEC, 1_000, NEG_INF, ONE) is Placement.OPEN
    assert add(s, SPEC, 9_000, NEG_INF, ONE) is Placement.OPEN
    assert close("c", s, SPEC, 9_999) == []  # not yet
    [e] = close("c", s, SPEC, 10_000)
    assert (e.start_ms, e.end_ms, e.version, e.aggregate) == (0, 10_000, 1, [2])
    assert close("c", s, SPEC, 11_000) == []  # nothing changed: no re-emit
    assert add(s, SPEC, 2_000, 11_000, ONE) is Placement.UPDATE
    [e2] = close("c", s, SPEC, 11_000)
    assert (e2.version, e2.aggregate) == (2, [3])
    # past allowed lateness: state dropped, later events are late and not counted
    assert close("c", s, SPEC, 15_000) == []
    assert s["w"] == {}
    assert add(s, SPEC, 3_000, 15_000, ONE) is Placement.LATE
    assert s["w"] == {}


def test_out_of_order_events_within_delay_and_lateness_are_counted_in_their_own_window():
    s = new_state()
    seen = NEG_INF
    placements = []
    for ts in (9_500, 10_500, 9_900, 19_000, 20_100, 14_000, 21_000):
        placements.append(add(s, SPEC, ts, SPEC.watermark(seen), ONE))
        seen = max(seen, ts)
    # 9_900 arrives after 10_500 but within the 1 s delay; 14_000 arrives at W = 19_100, before its
    # window [10000, 20000) closed: both OPEN, both counted where they belong.
    assert Placement.LATE not in placements
    emits = close("c", s, SPEC, SPEC.watermark(31_000))
    assert [(e.start_ms, e.aggregate) for e in emits] == [(0, [2]), (10_000, [3]), (20_000, [2])]


def test_latest_open_end_for_idle_flush():
    s = new_state()
    add(s, SPEC, 1_000, NEG_INF, ONE)
    add(s, SPEC, 25_000, NEG_INF, ONE)
    assert latest_open_end([s, new_state()], SPEC) == 30_000


def test_multi_source_watermark_is_min_of_sources_and_waits_for_expected_ones():
    wm = MultiSourceWatermark()
    assert wm.observe("a", 100, of=2) == NEG_INF  # b not heard from yet
    assert wm.observe("b", 50, of=2) == 50
    assert wm.observe("a", 300, of=2) == 50  # slow b holds it
    assert wm.observe("b", 200, of=2) == 200
    assert wm.observe("b", 100, of=2) == 200  # never goes back


def test_idle_sources_are_left_out_and_a_backlogged_one_is_not():
    wm = MultiSourceWatermark()
    wm.observe("a", 100, of=2)
    wm.observe("b", 50, of=2)
    assert wm.observe("b", 50, of=2, idle=True) == 100  # b has nothing to read: do not wait for it
    assert not wm.all_idle
    assert wm.observe("b", 60, of=2) == 100  # b active again, behind: the watermark never goes back
    wm.observe("a", 400, of=2, idle=True)
    wm.observe("b", 300, of=2, idle=True)
    # nothing active: every source has sent all it has, so the minimum of them is safe progress
    assert wm.all_idle and wm.value == 300
    # an idle marker for a source never seen still counts as heard from
    wm2 = MultiSourceWatermark()
    wm2.observe("a", 100, of=2)
    assert wm2.observe("b", NEG_INF, of=2, idle=True) == 100


def test_a_clock_that_hears_its_sources_only_once_they_are_idle_still_moves():
    # A backlog drained in one go: by the time the last source is heard, all have gone idle. Each
    # has sent everything up to its event time, so the watermark is their minimum (an empty
    # topic's source, never at an event time, says nothing). Before, it stayed at -inf for good.
    wm = MultiSourceWatermark()
    wm.observe("a", 400, of=3)
    wm.observe("a", 400, of=3, idle=True)
    wm.observe("empty:0", NEG_INF, of=3, idle=True)
    assert wm.value == NEG_INF  # b not heard yet: it could hold anything
    assert wm.observe("b", 300, of=3, idle=True) == 300


def test_not_all_idle_until_every_expected_source_was_heard():
    # After a restart the first markers are often from empty topics (idle at once): the source
    # still draining its backlog has not spoken yet, and must not be skipped.
    wm = MultiSourceWatermark()
    wm.observe("empty-topic:0", NEG_INF, of=3, idle=True)
    wm.observe("empty-topic:1", NEG_INF, of=3, idle=True)
    assert not wm.all_idle
    wm.observe("busy:0", 5_000, of=3, idle=True)
    assert wm.all_idle


def test_an_idle_claim_counts_only_while_it_is_fresh(monkeypatch):
    clock = [1_000.0]
    monkeypatch.setattr("shared.watermarks.time.time", lambda: clock[0])
    wm = MultiSourceWatermark()
    wm.observe("a", 100, of=2, idle=True)
    wm.observe("b", 100, of=2, idle=True)
    assert wm.all_idle
    clock[0] += 4.0
    wm.observe("a", 100, of=2, idle=True)  # a keeps saying it is idle; b has gone quiet (died?)
    clock[0] += 2.0
    assert not wm.all_idle
    wm.observe("b", 100, of=2, idle=True)
    assert wm.all_idle


def test_a_stale_idle_claim_replayed_after_a_restart_holds_the_watermark(monkeypatch):
    # The join restarts and re-reads a marker "impressions:0 is idle" said 30 s ago; since then the
    # partition received events nobody has read yet. The claim is stale: the partition counts as
    # active at its last event time, so the busy partitions cannot move the watermark past it.
    clock = [1_000.0]
    monkeypatch.setattr("shared.watermarks.time.time", lambda: clock[0])
    wm = MultiSourceWatermark()
    wm.observe("impressions:0", 50_000, of=2, idle=True, said_at_ms=970_000)
    assert wm.observe("impressions:1", 90_000, of=2, said_at_ms=1_000_000) == 50_000
    fresh = MultiSourceWatermark()
    fresh.observe("impressions:0", 50_000, of=2, idle=True, said_at_ms=999_000)
    assert fresh.observe("impressions:1", 90_000, of=2, said_at_ms=1_000_000) == 90_000


def test_a_reader_far_behind_judges_idle_claims_by_the_logs_clock(monkeypatch):
    # The join reads 30 s behind validate (a backlog). "clickstream:0 is idle", repeated every
    # second upstream, was fresh when written next to the impressions' markers: it must not hold
    # the watermark. Judged by the reader's wall clock, every claim read was 30 s old.
    clock = [1_000.0]
    monkeypatch.setattr("shared.watermarks.time.time", lambda: clock[0])
    wm = MultiSourceWatermark()
    for i in range(5):
        said = 970_000 + 1_000 * i
        wm.observe("clickstream:0", NEG_INF, of=2, idle=True, said_at_ms=said)
        assert wm.observe("impressions:0", 10_000 * (i + 1), of=2, said_at_ms=said) == 10_000 * (i + 1)
        clock[0] += 0.05  # read quickly, one after another
    assert wm.all_idle is False
    # Caught up, the log's clock runs on with the wall clock: if validate died after its last
    # claim, the claim goes stale MARKER_FRESH_S later, as it would for a reader keeping up.
    wm.observe("impressions:0", 60_000, of=2, idle=True, said_at_ms=974_500)
    assert wm.all_idle
    clock[0] += 6.0
    assert not wm.all_idle


def test_a_relay_withdraws_an_idle_word_that_went_stale_upstream(monkeypatch):
    # engagement's fan-out repeats "join:0 is idle" every second; if ingest dies, the repeats must
    # stop vouching for it, or engagement would flush windows that ingest's backlog still feeds.
    import asyncio

    from shared.watermark_relay import RelayedWatermark

    clock = [1_000.0]
    monkeypatch.setattr("shared.watermarks.time.time", lambda: clock[0])

    class Out:
        def __init__(self):
            self.said = []

        async def broadcast_marker(self, topic, partitions, source, ts, of, idle=False):
            self.said.append((ts, idle))

    relay, out = RelayedWatermark("fan-out:0"), Out()
    relay.observe({"src": "join:0", "ts": 5_000, "of": 1, "idle": True, "at": 1_000_000})
    asyncio.run(relay.forward(out, "t", 1))
    asyncio.run(relay.repeat(out, "t", 1))
    clock[0] += 10  # no word from join:0 since
    asyncio.run(relay.repeat(out, "t", 1))
    # (an idle source's event time is progress too; the withdrawal keeps it)
    assert out.said == [(5_000, True), (5_000, True), (5_000, False)]


def test_a_contribution_of_another_shape_is_refused_not_truncated():
    assert sum_into([1, 0, 7])([10, 3, 5]) == [11, 3, 12]
    with pytest.raises(ValueError):
        sum_into([1, 0, 7])([10, 3])
