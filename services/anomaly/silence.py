"""Silent campaigns: which windows a campaign skipped, decided from the input order alone.

ctr emits a campaign's window only if the campaign had events in it, so a campaign whose traffic
stops produces nothing for the traffic-drop rule to judge. The anomaly service therefore feeds
the detector a synthetic window {impressions: 0, clicks: 0, version: 0} for every window the
campaign provably had no events in. "Provably" comes from ctr's partitioning:

- ctr-metrics is keyed by campaign like ctr's input, so partition p of ctr-metrics holds exactly
  the campaigns of ctr's partition p, and one watermark closes all their windows.
- A window [s, e) for which some campaign of p produced a result is *live*: p's watermark passed e,
  so every campaign of p without a result for it had no events in it (the same close pass would
  have emitted that result too).
- ctr sends the results of one close pass in window order across campaigns, and a pass closes
  windows that no earlier pass closed. Results can still interleave a little (a late update of an
  older window), so a live window *settles* only once p has produced a result `lag` windows
  later. (Before ctr sorted its passes, a pass that closed more than `lag` windows at once, e.g.
  a backlog drained fast, listed campaign A's windows s .. s + k before B's window s, and B got a
  false synthetic window: seen as false traffic drops once the mesh got faster.)

When a live window settles, every campaign of p that has a traffic baseline and no window at or
after it gets the synthetic window. A campaign's real result first gets the live windows it
skipped that have not settled yet, so the detector always sees a campaign's windows in order.

Deterministic: decisions depend only on the order of records within the partition, never on the
wall clock or on batch boundaries, and this progress is changelogged with the campaign states, so
a replay after a restart decides the same way.

ctr also sends, after the results of every window a partition's watermark passed, a
"window_closed" record for it (services/ctr/metrics.py). It advances the partition's progress like
a result does, so a campaign alone in its partition, or a partition whose campaigns all went quiet
at once, gets synthetic windows too. Only while event time moves on somewhere: with no event in
the whole pipeline the watermark stays where it is, no window closes, and nothing is proven (an
idle or stalled pipeline is not a traffic drop). After a restart, ctr reports from the watermark
it restored, so windows that closed across the restart are reported too (some twice, harmlessly).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Window = tuple[int, int]  # (window_start, window_end), epoch ms


@dataclass
class PartitionProgress:
    """One partition's live windows; stored as a small JSON object (bounded by ~lag entries)."""

    # Newest window_start with a real result in the partition.
    frontier: int | None = None
    # Newest window_start already settled: older live windows are never considered again.
    settled_to: int | None = None
    # Live windows not settled yet: start -> end.
    live: dict[int, int] = field(default_factory=dict)

    @classmethod
    def from_json(cls, value: dict[str, Any] | None) -> PartitionProgress:
        if not value:
            return cls()
        live = {int(s): int(e) for s, e in value.get("live", {}).items()}
        return cls(value.get("frontier"), value.get("settled_to"), live)

    def to_json(self) -> dict[str, Any]:
        live = {str(s): e for s, e in sorted(self.live.items())}
        return {"frontier": self.frontier, "settled_to": self.settled_to, "live": live}

    def skipped(self, last_start: int | None, next_start: int) -> list[Window]:
        """Unsettled live windows strictly between a campaign's last window and its next one."""
        if last_start is None:  # a campaign's first window: it skipped nothing it ever had
            return []
        return sorted((s, e) for s, e in self.live.items() if last_start < s < next_start)

    def advance(self, start: int, end: int, lag: int) -> list[Window]:
        """Record a real result for [start, end); return the windows that settle now, oldest first."""
        if self.settled_to is None or start > self.settled_to:
            self.live[start] = end
        if self.frontier is None or start > self.frontier:
            self.frontier = start
        frontier = self.frontier
        settled = sorted((s, e) for s, e in self.live.items() if s + lag * (e - s) <= frontier)
        for s, _ in settled:
            del self.live[s]
        if settled and (self.settled_to is None or settled[-1][0] > self.settled_to):
            self.settled_to = settled[-1][0]
        return settled
