"""The recovery watchdog (shared/recovery_watchdog.py) on a stand-in for faust's Recovery."""

from types import SimpleNamespace

from faust.types import TP

from shared.recovery_watchdog import Kick, RecoveryWatchdog, Stop

TP0, TP1 = TP("c-changelog", 0), TP("c-changelog", 1)
NEVER = float("inf")  # no kick: the tests of the stop alone


def recovery(offsets, started_at=1.0, highwaters=None, running=True):
    return SimpleNamespace(
        in_recovery=running,
        _recovery_started_at=started_at,
        active_offsets=dict(offsets),
        active_highwaters=dict(highwaters or {TP0: 100, TP1: 50}),
    )


def test_a_recovery_that_stands_still_for_the_timeout_is_reported_with_what_it_waits_for():
    now = [0.0]
    watchdog = RecoveryWatchdog(60, clock=lambda: now[0], kick_after_s=NEVER)
    assert watchdog.check(recovery({TP0: 10, TP1: 50})) is None
    now[0] = 59.0
    assert watchdog.check(recovery({TP0: 10, TP1: 50})) is None
    now[0] = 60.0
    action = watchdog.check(recovery({TP0: 10, TP1: 50}))
    assert isinstance(action, Stop) and "60 s" in action.reason
    assert "'c-changelog:0': {'applied': 10, 'highwater': 100}" in action.reason


def test_a_quarter_of_the_timeout_still_reads_the_partitions_behind_again_once():
    now = [0.0]
    watchdog = RecoveryWatchdog(60, clock=lambda: now[0])
    stalled = recovery({TP1: 50})  # TP0: nothing applied yet (the stall seen in session 11)
    assert watchdog.check(stalled) is None
    now[0] = 14.0
    assert watchdog.check(stalled) is None
    now[0] = 15.0
    action = watchdog.check(stalled)
    # only the partition behind, from where faust's own round seeks one with nothing applied
    assert isinstance(action, Kick) and action.offsets == {TP0: 0}
    now[0] = 30.0
    assert watchdog.check(stalled) is None  # once per stall
    now[0] = 60.0
    assert isinstance(watchdog.check(stalled), Stop)


def test_a_kick_that_helps_starts_the_clock_again():
    now = [0.0]
    watchdog = RecoveryWatchdog(60, clock=lambda: now[0])
    watchdog.check(recovery({TP0: 10, TP1: 50}))
    now[0] = 15.0
    action = watchdog.check(recovery({TP0: 10, TP1: 50}))
    assert isinstance(action, Kick) and action.offsets == {TP0: 10}  # faust skips offsets seen
    now[0] = 20.0
    assert watchdog.check(recovery({TP0: 40, TP1: 50})) is None  # moving again
    now[0] = 70.0
    action = watchdog.check(recovery({TP0: 40, TP1: 50}))  # a new stall gets its own kick
    assert isinstance(action, Kick) and action.offsets == {TP0: 40}
    now[0] = 80.0
    assert isinstance(watchdog.check(recovery({TP0: 40, TP1: 50})), Stop)  # 60 s since it moved


def test_a_slow_recovery_that_moves_is_left_alone():
    now = [0.0]
    watchdog = RecoveryWatchdog(60, clock=lambda: now[0])
    for step in range(10):
        now[0] = step * 50.0  # 450 s in all, but never 60 s without an applied record
        assert watchdog.check(recovery({TP0: 10 + step, TP1: 50})) is None


def test_a_new_recovery_or_none_starts_the_clock_again():
    now = [0.0]
    watchdog = RecoveryWatchdog(60, clock=lambda: now[0], kick_after_s=NEVER)
    watchdog.check(recovery({TP0: 10}))
    now[0] = 50.0
    assert watchdog.check(recovery({TP0: 10}, started_at=2.0)) is None  # a rebalance began another
    now[0] = 100.0
    assert watchdog.check(recovery({TP0: 10}, started_at=2.0)) is None  # 50 s since that one
    assert watchdog.check(recovery({}, running=False)) is None  # over
    now[0] = 200.0
    assert watchdog.check(recovery({TP0: 10}, started_at=2.0)) is None  # seen anew after a gap
