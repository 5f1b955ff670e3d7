"""Produce a batch's results and wait for the broker to acknowledge all of them.

A batch is acked as soon as its body returns (shared/event_batches.py), and the offsets committed next
would then cover input whose output may still sit in the producer's buffer. Awaiting every send
before the body returns keeps the at-least-once promise: a crash can repeat output, never lose it.
"""

from __future__ import annotations

from collections.abc import Sequence

import faust

from shared.kafka_batches import BatchSender, Deliveries
from shared.metrics import count_out
from shared.watermarks import encode_marker


class BatchOutput:
    """Per-partition batches on the app's aiokafka producer (shared.kafka_batches), shipped and
    awaited in `flush()`. Messages to one partition keep the order of the `send` calls, so a
    marker sent after a batch's events reaches every partition after them."""

    def __init__(self, app: faust.App) -> None:
        self._app = app
        self._service = getattr(app, "service", "") or "unknown"
        self._deliveries = Deliveries()
        self._sender: BatchSender | None = None
        self._topics: list[str] = []

    def _batches(self) -> BatchSender:
        if self._sender is None:
            # faust's producer wraps aiokafka's; changelog writes keep going through faust.
            self._sender = BatchSender(self._app.producer._ensure_producer(), self._deliveries)
        return self._sender

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        *,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        await self._batches().send(topic, key, value, partition=partition, headers=headers)
        self._topics.append(topic)

    async def broadcast_marker(
        self, topic: str, partitions: int, source: str, ts_ms: int, of: int, idle: bool = False
    ) -> None:
        """Tell every partition of `topic` how far event time has progressed at `source`."""
        marker = encode_marker(source, ts_ms, of, idle)
        for p in range(partitions):
            await self.send(topic, None, marker, partition=p)

    async def flush(self) -> int:
        """Ship the open batches and wait until the broker acknowledged everything sent since the
        last flush; returns how many messages that was."""
        topics, self._topics = self._topics, []
        if self._sender is not None:
            await self._sender.flush()
        await self._deliveries.wait_all()
        if topics:
            count_out(self._service, topics)
        return len(topics)
