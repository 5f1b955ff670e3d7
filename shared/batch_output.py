"""Produce a batch's results and wait for the broker to acknowledge all of them.

faust acks a `take_events()` batch as soon as its body returns, and the offsets it commits next
would then cover input whose output may still sit in the producer's buffer. Awaiting every send
before the body returns keeps the at-least-once promise: a crash can repeat output, never lose it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any

import faust

from shared.metrics import count_out
from shared.watermarks import encode_marker


class BatchOutput:
    def __init__(self, app: faust.App) -> None:
        self._app = app
        self._service = getattr(app, "service", "") or "unknown"
        self._pending: list[Awaitable[Any]] = []
        self._topics: list[str] = []

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        *,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        fut = await self._app.producer.send(
            topic, key, value, partition=partition, timestamp=None, headers=headers
        )
        self._pending.append(fut)
        self._topics.append(topic)

    async def broadcast_marker(
        self, topic: str, partitions: int, source: str, ts_ms: int, of: int, idle: bool = False
    ) -> None:
        """Tell every partition of `topic` how far event time has progressed at `source`."""
        marker = encode_marker(source, ts_ms, of, idle)
        for p in range(partitions):
            await self.send(topic, None, marker, partition=p)

    async def flush(self) -> int:
        """Wait until the broker acknowledged everything sent since the last flush."""
        pending, self._pending = self._pending, []
        topics, self._topics = self._topics, []
        if pending:
            await asyncio.gather(*pending)
            count_out(self._service, topics)
        return len(pending)
