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
