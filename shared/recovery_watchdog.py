"""A worker whose table recovery stands still is kicked, then stopped and started again.

faust-streaming 0.15 can leave a worker in table recovery for good after a quick rebalance: it
holds its partitions and processes nothing until another rebalance comes (seen three times in the
ninth session's join/leave tests, once in the eleventh). docs/faust-recovery-stall.md ranks the
likely mechanisms; faust's recovery round is not patched here. Instead, a recovery that applies
no changelog record for `RECOVERY_STALL_TIMEOUT_MS` is logged (what it waits for, per partition)
and the worker stops (crash-only). Compose and deploy/run-local.sh start it again, and it
recovers from the changelogs and reads from the commits, as after kill -9.

Progress is the changelog offsets recovery applied: a long recovery that moves is left alone.

Before stopping, one kick (R1 in docs/faust-recovery-stall.md): after a quarter of the timeout
without progress, the partitions still behind are made active and sought back to the last offset
recovery applied, as faust's own round seeks them. The stall seen in session 11 had changelog
partitions that delivered nothing to recovery while the others were complete, which fits records
fetched and then emptied out of the changelog queue (faust clears it on every flow resume) with
nothing to fetch them again; a seek fetches them again. Records recovery already applied are
skipped by faust (it applies only offsets past the last one seen), so the kick cannot change
state. If the stall has another cause, the stop follows at the timeout, as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CHECK_EVERY_S = 5.0


@dataclass(frozen=True)
class Kick:
    """Read these changelog partitions again from these offsets."""

    offsets: dict[Any, int]
    reason: str


@dataclass(frozen=True)
class Stop:
    reason: str


class RecoveryWatchdog:
    def __init__(
        self, timeout_s: float, clock: Callable[[], float] = time.monotonic, kick_after_s: float | None = None
    ) -> None:
        self.timeout_s = timeout_s
        self.kick_after_s = timeout_s / 4 if kick_after_s is None else kick_after_s
        self.clock = clock
        self._progress: Any = None
        self._since = 0.0
        self._kicked = False

    def check(self, recovery: Any) -> Kick | Stop | None:
        """`recovery`: faust's table Recovery service. None while it moves or is not running;
        once it has stood still for `kick_after_s`, a Kick (once per stall); for the timeout, a
        Stop with what it waits for."""
        if not recovery.in_recovery:
            self._progress = None
            return None
        progress = (recovery._recovery_started_at, tuple(sorted(recovery.active_offsets.items())))
        now = self.clock()
        if progress != self._progress:
            self._progress, self._since, self._kicked = progress, now, False
            return None
        still = now - self._since
        reason = f"table recovery applied nothing for {still:.0f} s; partitions: {waiting(recovery)}"
        if still >= self.timeout_s:
            return Stop(reason)
        if still >= self.kick_after_s and not self._kicked:
            self._kicked = True
            behind = {
                tp: max(recovery.active_offsets.get(tp, -1), 0)  # faust seeks -1 ("none yet") to 0
                for tp, highwater in recovery.active_highwaters.items()
                if recovery.active_offsets.get(tp, -1) < highwater
            }
            if behind:
                return Kick(behind, reason)
        return None


def waiting(recovery: Any) -> dict[str, dict[str, Any]]:
    return {
        f"{tp.topic}:{tp.partition}": {"applied": recovery.active_offsets.get(tp), "highwater": hw}
        for tp, hw in sorted(recovery.active_highwaters.items())
    }
