"""Which input partitions of a stage have nothing left to read (so downstream need not wait).

A partition is idle when the stage has processed everything the broker holds for it (its end
offset) and has seen nothing new from it for a quiet period. A partition that still has a backlog
is never idle, however long it waits for its turn: that is what keeps a catch-up exact.

The quiet period is long for a partition that had traffic since start (a producer may just be
slow) and short for one that had none (typically a source topic nobody writes to): otherwise every
start would hold the watermark back for the full period and, while a backlog is drained in that
time, nothing could be judged late.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from faust.types import TP


class SourceActivity:
    """`consumer`: what reads the topics; it answers `assignment()`, `await highwaters(*tps)` and
    `committed_offset(tp)` (shared.direct_reader.DirectReader)."""

    def __init__(
        self, consumer: Any, topics: Iterable[str], quiet_s: float = 10.0, never_active_quiet_s: float = 1.0
    ) -> None:
        self.consumer = consumer
        self.topics = set(topics)
        self.quiet_s = quiet_s
        self.never_active_quiet_s = min(never_active_quiet_s, quiet_s)
        self.next_offset: dict[TP, int] = {}  # offset after the last processed message
        self.active_at: dict[TP, float] = {}
        self.started_at = time.monotonic()
        # Set by the stage on each assignment: its first batch checks before it goes on.
        self.unchecked = False

    def processed(self, tp: TP, offset: int) -> None:
        self.next_offset[tp] = offset + 1
        self.active_at[tp] = time.monotonic()

    def still_idle(self, candidates: list[tuple[TP, float | None]]) -> list[TP]:
        """Those of `idle_partitions()`'s answer that nothing was read from since it was given."""
        return [tp for tp, active_at in candidates if self.active_at.get(tp) == active_at]

    async def idle_partitions(self) -> list[tuple[TP, float | None]]:
        """(partition, when it was last read from) for each idle one; check `still_idle` before
        acting on the answer if messages may have been processed during the broker round trip."""
        consumer = self.consumer
        tps = [tp for tp in consumer.assignment() if tp.topic in self.topics]
        if not tps:
            return []
        ends = await consumer.highwaters(*tps)
        now = time.monotonic()
        idle = []
        for tp in tps:
            active_at = self.active_at.get(tp)
            quiet = self.quiet_s if active_at is not None else self.never_active_quiet_s
            if now - (active_at if active_at is not None else self.started_at) < quiet:
                continue
            done = self.next_offset.get(tp)
            if done is None:
                # Nothing processed since start: idle only if everything was processed and
                # committed before (not merely fetched: a fetched message may sit in a buffer).
                done = consumer.committed_offset(tp) or 0
            end = ends.get(tp)
            if end is not None and done is not None and done >= end:
                idle.append((tp, active_at))
        return idle
