"""The recovery watchdog (shared/recovery_watchdog.py) on a stand-in for faust's Recovery."""

from types import SimpleNamespace

from faust.types import TP

from shared.recovery_watchdog import RecoveryWatchdog

TP0, TP1 = TP("c-changelog", 0), TP("c-changelog", 1)


def recovery(offsets, started_at=1.0, highwaters=None, running=True):
    return SimpleNamespace(
        in_recovery=running,
        _recovery_started_at=started_at,
        active_offsets=dict(offsets),
        active_highwaters=dict(highwaters or {TP0: 100, TP1: 50}),
    )


def test_a_recovery_that_stands_still_for_the_timeout_is_reported_with_what_it_waits_for():
    now = [0.0]
    watchdog = RecoveryWatchdog(60, clock=lambda: now[0])
    assert watchdog.check(recovery({TP0: 10, TP1: 50})) is None
    now[0] = 59.0
    assert watchdog.check(recovery({TP0: 10, TP1: 50})) is None
    now[0] = 60.0
    reason = watchdog.check(recovery({TP0: 10, TP1: 50}))
    assert reason is not None and "60 s" in reason
    assert "'c-changelog:0': {'applied': 10, 'highwater': 100}" in reason


def test_a_slow_recovery_that_moves_is_left_alone():
    now = [0.0]
    watchdog = RecoveryWatchdog(60, clock=lambda: now[0])
    for step in range(10):
        now[0] = step * 50.0  # 450 s in all, but never 60 s without an applied record
        assert watchdog.check(recovery({TP0: 10 + step, TP1: 50})) is None


def test_a_new_recovery_or_none_starts_the_clock_again():
    now = [0.0]
    watchdog = RecoveryWatchdog(60, clock=lambda: now[0])
    watchdog.check(recovery({TP0: 10}))
    now[0] = 50.0
    assert watchdog.check(recovery({TP0: 10}, started_at=2.0)) is None  # a rebalance began another
    now[0] = 100.0
    assert watchdog.check(recovery({TP0: 10}, started_at=2.0)) is None  # 50 s since that one
    assert watchdog.check(recovery({}, running=False)) is None  # over
    now[0] = 200.0
    assert watchdog.check(recovery({TP0: 10}, started_at=2.0)) is None  # seen anew after a gap
