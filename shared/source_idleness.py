"""Which input partitions of a stage have nothing left to read (so downstream need not wait).

A partition is idle when the stage has processed everything the broker holds for it (its end
offset) and has seen nothing new from it for a quiet period. A partition that still has a backlog
is never idle, however long it waits for its turn: that is what keeps a catch-up exact.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from faust.types import TP


class SourceActivity:
    def __init__(self, app: Any, topics: Iterable[str], quiet_s: float = 2.0) -> None:
        self.app = app
        self.topics = set(topics)
        self.quiet_s = quiet_s
        self.next_offset: dict[TP, int] = {}  # offset after the last processed message
        self.active_at: dict[TP, float] = {}
        self.started_at = time.monotonic()

    def processed(self, tp: TP, offset: int) -> None:
        self.next_offset[tp] = offset + 1
        self.active_at[tp] = time.monotonic()

    async def idle_partitions(self) -> list[TP]:
        consumer = self.app.consumer
        tps = [tp for tp in consumer.assignment() if tp.topic in self.topics]
        if not tps:
            return []
        ends = await consumer.highwaters(*tps)
        now = time.monotonic()
        idle = []
        for tp in tps:
            if now - self.active_at.get(tp, self.started_at) < self.quiet_s:
                continue
            done = self.next_offset.get(tp)
            if done is None:  # nothing processed since start: was everything read before?
                done = await consumer.position(tp)
            end = ends.get(tp)
            if end is not None and done is not None and done >= end:
                idle.append(tp)
        return idle
