"""A worker whose table recovery stands still stops, and is started again (crash-only).

faust-streaming 0.15 can leave a worker in table recovery for good after a quick rebalance: it
holds its partitions and processes nothing until another rebalance comes (seen three times in the
ninth session's join/leave tests, never reproduced since). docs/faust-recovery-stall.md ranks the
likely mechanisms; none could be shown, so faust's recovery round is not patched here. Instead,
a recovery that applies no changelog record for `RECOVERY_STALL_TIMEOUT_MS` is logged (what it
waits for, per partition) and the worker stops. Compose and deploy/run-local.sh start it again,
and it recovers from the changelogs and reads from the commits, as after kill -9.

Progress is the changelog offsets recovery applied: a long recovery that moves is left alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

CHECK_EVERY_S = 5.0


class RecoveryWatchdog:
    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self.clock = clock
        self._progress: Any = None
        self._since = 0.0

    def check(self, recovery: Any) -> str | None:
        """`recovery`: faust's table Recovery service. None while it moves or is not running;
        once it has stood still for the timeout, what it waits for (the reason to stop)."""
        if not recovery.in_recovery:
            self._progress = None
            return None
        progress = (recovery._recovery_started_at, tuple(sorted(recovery.active_offsets.items())))
        now = self.clock()
        if progress != self._progress:
            self._progress, self._since = progress, now
            return None
        if now - self._since < self.timeout_s:
            return None
        waiting = {
            f"{tp.topic}:{tp.partition}": {"applied": recovery.active_offsets.get(tp), "highwater": hw}
            for tp, hw in sorted(recovery.active_highwaters.items())
        }
        return f"table recovery applied nothing for {now - self._since:.0f} s; partitions: {waiting}"
