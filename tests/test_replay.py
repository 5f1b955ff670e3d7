"""Replays after a crash must not count twice: the window state remembers what it applied."""

import orjson

from services.ctr.agents import contribute
from shared.windowed_agent import WindowedAggregation
from shared.windows import WindowSpec

SPEC = WindowSpec(duration_ms=10_000, grace_ms=5_000, delay_ms=0)


def marker(ts):
    return {"kind": "wm", "src": "join:0", "ts": ts, "of": 1}


def imp(ts, off, idx=0):
    return {"kind": "impression", "campaign_id": "c1", "ts": ts, "cost_micros": 0, "seq": [0, off, idx]}


def batch(*recs):
    return [(0, b"c1", r) for r in recs]


def test_a_batch_applied_twice_counts_once_and_reemits_the_same_version():
    table: dict[bytes, bytes] = {}
    w = WindowedAggregation(table, SPEC, idle_timeout_s=60, partitions=1)
    b1 = batch(imp(1_000, 1), imp(2_000, 2), marker(2_000))
    r1 = w.process(b1, contribute)
    w.commit_states(r1)
    # crash after the results were produced but before the state was written: replay from scratch
    b2 = batch(imp(3_000, 3), marker(12_000))
    lost = w.process(b2, contribute)
    assert [(e.version, e.aggregate[0]) for e in lost.emits] == [(1, 3)]
    w2 = WindowedAggregation(dict(table), SPEC, idle_timeout_s=60, partitions=1)
    again = w2.process(b1 + b2, contribute)  # the consumer re-reads both batches
    assert again.replayed == 2
    assert [(e.version, e.aggregate[0]) for e in again.emits] == [(1, 3)]  # same row, same version


def test_restored_watermark_keeps_a_closed_window_closed():
    table: dict[bytes, bytes] = {}
    w = WindowedAggregation(table, SPEC, idle_timeout_s=60, partitions=1)
    w.commit_states(w.process(batch(imp(1_000, 1), marker(40_000)), contribute))
    assert b"c1" in table and not orjson.loads(table[b"c1"])["w"]  # window emitted and dropped
    restarted = WindowedAggregation(dict(table), SPEC, idle_timeout_s=60, partitions=1)
    r = restarted.process(batch(imp(1_500, 2)), contribute)  # no marker seen yet since restart
    assert r.emits == [] and len(r.late) == 1


def idle_marker(ts, src="join:0"):
    return {"kind": "wm", "src": src, "ts": ts, "of": 1, "idle": True}


def test_idle_flush_waits_for_upstream_to_say_it_has_read_everything(monkeypatch):
    clock = [1_000.0]
    monkeypatch.setattr("shared.windowed_agent.time.monotonic", lambda: clock[0])
    monkeypatch.setattr("shared.watermarks.time.time", lambda: clock[0])
    w = WindowedAggregation({}, SPEC, idle_timeout_s=3, partitions=1)
    w.commit_states(w.process(batch(imp(1_000, 1), marker(2_000)), contribute))
    clock[0] += 60  # silence alone: upstream may have crashed with events read but not forwarded
    assert w.flush_idle().emits == []
    w.commit_states(w.process(batch(idle_marker(2_000)), contribute))  # upstream: nothing left to read
    clock[0] += 3
    assert [(e.start_ms, e.aggregate[0]) for e in w.flush_idle().emits] == [(0, 1)]


def test_idle_flush_does_not_trust_an_idle_word_that_went_stale(monkeypatch):
    clock = [1_000.0]
    monkeypatch.setattr("shared.windowed_agent.time.monotonic", lambda: clock[0])
    monkeypatch.setattr("shared.watermarks.time.time", lambda: clock[0])
    w = WindowedAggregation({}, SPEC, idle_timeout_s=3, partitions=1)
    w.commit_states(w.process(batch(imp(1_000, 1), idle_marker(2_000)), contribute))
    clock[0] += 60  # it said idle once, a minute ago, and then nothing: it may be gone
    assert w.flush_idle().emits == []


def test_restored_windows_close_even_if_the_first_batch_runs_while_the_rebalance_is_finishing():
    # faust resumes the streams a moment before it clears `rebalancing`: the first batch after a
    # restart can run while this worker does not yet know which partitions are its own.
    table: dict[bytes, bytes] = {}
    w = WindowedAggregation(table, SPEC, idle_timeout_s=60, partitions=1)
    w.commit_states(w.process(batch(imp(1_000, 1), marker(2_000)), contribute))  # open window
    owned: set[int] = set()
    restarted = WindowedAggregation(
        dict(table), SPEC, idle_timeout_s=60, partitions=1, assigned=lambda: owned
    )
    restarted.forget_partitions()  # the rebalance signal
    first = restarted.process(batch(marker(3_000)), contribute)  # still "rebalancing"
    owned.add(0)
    later = restarted.process(batch(marker(30_000)), contribute)
    assert first.emits == [] and [(e.start_ms, e.aggregate[0]) for e in later.emits] == [(0, 1)]


def test_every_window_the_watermark_passes_is_reported_with_or_without_events():
    # The anomaly service learns from these that a partition's silent campaigns had no events.
    w = WindowedAggregation({}, SPEC, idle_timeout_s=60, partitions=1)
    first = w.process(batch(imp(1_000, 1), marker(2_000)), contribute)
    assert first.passed == []  # the watermark was unknown before: nothing proven yet
    w.commit_states(first)
    r = w.process(batch(marker(35_000)), contribute)  # no event: windows 0, 10 and 20 s closed
    assert [(e.start_ms, e.aggregate[0]) for e in r.emits] == [(0, 1)]
    assert r.passed == [(0, 0, 10_000), (0, 10_000, 20_000), (0, 20_000, 30_000)]
    assert w.process(batch(marker(39_999)), contribute).passed == []  # no end passed
    assert w.process(batch(marker(40_000)), contribute).passed == [(0, 30_000, 40_000)]


def test_after_a_restart_windows_are_reported_from_the_restored_watermark():
    table: dict[bytes, bytes] = {}
    w = WindowedAggregation(table, SPEC, idle_timeout_s=60, partitions=1)
    w.commit_states(w.process(batch(imp(1_000, 1), marker(2_000)), contribute))
    w.commit_states(w.process(batch(marker(25_000)), contribute))  # closed up to 20 s, then a crash
    restarted = WindowedAggregation(dict(table), SPEC, idle_timeout_s=60, partitions=1)
    r = restarted.process(batch(marker(2_000), marker(41_000)), contribute)
    assert r.passed == [(0, 20_000, 30_000), (0, 30_000, 40_000)]


def test_a_batch_whose_results_were_not_delivered_leaves_no_trace_in_memory():
    # States stay decoded between batches; a batch that failed before its states were written
    # (its publish raised) must not leave its changes there: its events come again.
    table: dict[bytes, bytes] = {}
    w = WindowedAggregation(table, SPEC, idle_timeout_s=60, partitions=1)
    w.commit_states(w.process(batch(imp(1_000, 1), marker(2_000)), contribute))
    failed = w.process(batch(imp(1_500, 2)), contribute)  # never committed
    assert failed.counted == 1
    again = w.process(batch(imp(1_500, 2), marker(12_000)), contribute)
    assert (again.counted, again.replayed) == (1, 0)
    assert [(e.version, e.aggregate[0]) for e in again.emits] == [(1, 2)]


def test_after_a_rebalance_states_are_read_from_the_recovered_table():
    table: dict[bytes, bytes] = {}
    w = WindowedAggregation(table, SPEC, idle_timeout_s=60, partitions=1)
    w.commit_states(w.process(batch(imp(1_000, 1), marker(2_000)), contribute))
    # Another worker owned the partition meanwhile and counted an event: its state is recovered.
    other = WindowedAggregation(dict(table), SPEC, idle_timeout_s=60, partitions=1)
    other.commit_states(other.process(batch(imp(2_000, 2)), contribute))
    table.update(other.table)
    w.forget_partitions()
    r = w.process(batch(imp(3_000, 3), marker(12_000)), contribute)
    assert [(e.version, e.aggregate[0]) for e in r.emits] == [(1, 3)]


def test_a_deleted_state_is_not_kept_decoded():
    table: dict[bytes, bytes] = {}
    w = WindowedAggregation(table, SPEC, idle_timeout_s=60, partitions=1)
    w.commit_states(w.process(batch(imp(1_000, 1), marker(2_000)), contribute))
    # The key's window is dropped; long after, its replay marks are deleted too.
    w.commit_states(w.process(batch(marker(40_000)), contribute))
    w.commit_states(w.process(batch(marker(40_000 + w.retain_ms + 1)), contribute))
    assert b"c1" not in table and b"c1" not in w._decoded


def test_every_window_of_a_key_closes_and_drops_on_time_across_batches():
    # A key's windows are indexed once, when opened; the thresholds a watermark move removes are
    # handled by that very pass. Each later move must still find every window it reaches.
    table: dict[bytes, bytes] = {}
    w = WindowedAggregation(table, SPEC, idle_timeout_s=60, partitions=1)
    r = w.process(batch(imp(1_000, 1), imp(11_000, 2), marker(12_000)), contribute)
    w.commit_states(r)
    assert [(e.start_ms, e.aggregate[0]) for e in r.emits] == [(0, 1)]
    r = w.process(batch(imp(21_000, 3), marker(14_000)), contribute)  # a third window, no end passed
    w.commit_states(r)
    assert r.emits == [] and sorted(orjson.loads(table[b"c1"])["w"]) == ["0", "10000", "20000"]
    r = w.process(batch(marker(16_000)), contribute)  # 0 + 10 s + 5 s grace: dropped
    w.commit_states(r)
    assert r.emits == [] and sorted(orjson.loads(table[b"c1"])["w"]) == ["10000", "20000"]
    r = w.process(batch(marker(20_000)), contribute)
    w.commit_states(r)
    assert [(e.start_ms, e.aggregate[0]) for e in r.emits] == [(10_000, 1)]
    r = w.process(batch(marker(30_000)), contribute)
    w.commit_states(r)
    assert [(e.start_ms, e.aggregate[0]) for e in r.emits] == [(20_000, 1)]
    assert sorted(orjson.loads(table[b"c1"])["w"]) == ["20000"]  # dropped at 35 s


def key_imp(key, ts, off):
    return (
        0,
        key,
        {"kind": "impression", "campaign_id": key.decode(), "ts": ts, "cost_micros": 0, "seq": [0, off, 0]},
    )


def test_replay_marks_of_keys_without_windows_are_deleted_in_the_order_they_retired():
    """Expiry reads only the front of the retired keys: they must be in retirement order, also
    when a key retires a second time and when they come from a recovered table."""
    table: dict[bytes, bytes] = {}
    w = WindowedAggregation(table, SPEC, idle_timeout_s=60, partitions=1)
    w.commit_states(
        w.process([key_imp(b"a", 1_000, 1), key_imp(b"b", 1_000, 2), (0, b"", marker(2_000))], contribute)
    )
    w.commit_states(w.process([(0, b"", marker(20_000))], contribute))  # a, b retire at 20 s
    w.commit_states(w.process([key_imp(b"a", 21_000, 3), (0, b"", marker(22_000))], contribute))
    w.commit_states(w.process([(0, b"", marker(40_000))], contribute))  # a retires again at 40 s
    # A restart: the recovered table lists a (retired at 40 s) before b (at 20 s).
    recovered = {k: table[k] for k in sorted(table)}
    for restarted in (w, WindowedAggregation(recovered, SPEC, idle_timeout_s=60, partitions=1)):
        r = restarted.process([(0, b"", marker(20_000 + w.retain_ms + 1))], contribute)
        assert {k for k, v in r.writes.items() if v is None} == {b"b"}
        r = restarted.process([(0, b"", marker(40_000 + w.retain_ms + 1))], contribute)
        assert {k for k, v in r.writes.items() if v is None} == {b"a"}
