"""Event-time progress forwarded by a stage that re-keys its input (ingest's join, engagement's
fan-out): one upstream-facing clock per input partition, told on to every output partition.

Markers go out after the batch's events (downstream never sees progress before the events in it)
and again every MARKER_REPEAT_S: a downstream worker that restarted or took over a partition has
an empty clock and must hear from every source before it can move, close or flush anything.
Repeating the last marker claims nothing new, but it must not run during a batch: the batch's
events wait in per-partition batches until its flush, and a repeated "idle" sent meanwhile would
reach downstream before them (callers hold one lock for a batch and for the repeats).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from shared.batch_output import BatchOutput
from shared.watermarks import NEG_INF, MultiSourceWatermark


class RelayedWatermark:
    def __init__(self, source: str) -> None:
        self.source = source  # how downstream names this input partition
        self.watermark = MultiSourceWatermark()
        self.sent_watermark = NEG_INF
        self.sent_idle = False
        self.sent = False

    def observe(self, marker: dict[str, Any]) -> None:
        self.watermark.observe_marker(marker)

    def moved(self) -> bool:
        """The watermark went past what downstream was last told: the stage sends the events it
        holds, then forward()s, at once (what is judged late must not depend on batch sizes)."""
        return self.watermark.recompute() > self.sent_watermark

    async def forward(self, out: BatchOutput, topic: str, partitions: int) -> None:
        """After a batch: tell downstream if the watermark moved or idleness changed."""
        wm, idle = self.watermark.recompute(), self.watermark.all_idle
        if wm > self.sent_watermark or idle != self.sent_idle or not self.sent:
            await self._send(out, topic, partitions, wm, idle)

    async def repeat(self, out: BatchOutput, topic: str, partitions: int) -> None:
        """Say the last word again, but withdraw "idle" if an upstream idle claim went stale since
        (its stage died, say): a repeat must not vouch for it as fresh. Nothing new is claimed
        here (it may run between a batch's events): progress and idleness are told by forward()."""
        if self.sent:
            idle = self.sent_idle and self.watermark.all_idle
            await self._send(out, topic, partitions, self.sent_watermark, idle)

    async def _send(self, out: BatchOutput, topic: str, partitions: int, wm: int, idle: bool) -> None:
        await out.broadcast_marker(topic, partitions, self.source, wm, partitions, idle)
        self.sent_watermark, self.sent_idle, self.sent = wm, idle, True

    def describe(self) -> dict[str, object]:
        return {
            "sent_watermark": self.sent_watermark,
            "sent_idle": self.sent_idle,
            "upstream": self.watermark.describe(),
        }


async def repeat_markers(
    out: BatchOutput, relays: Iterable[RelayedWatermark], topic: str, partitions: int
) -> None:
    for relay in relays:
        await relay.repeat(out, topic, partitions)
    await out.flush()
