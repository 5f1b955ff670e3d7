"""Re-keying hops ship their records in bundles: one Kafka message per destination partition and
batch, holding a JSON array of records, instead of one message per record.

Why: the profile shows that a stage's cost is per Kafka message, not per record. faust's consumer
dispatch, its stream queue and the event loop spend ~100 us on every message they deliver, while
the analytics cost a few microseconds. A re-keying hop, ingest's validate -> join or engagement's
fan-out -> aggregate, is consumed only by the same service. There the framing is free to choose, and
a bundle of a few hundred records costs one delivery instead of hundreds.

What does not change: each record keeps its own key (a field), its own `seq` (replays are still
recognised per record) and its place in the partition's order, so markers sent after a batch still
arrive after its records. A plain (non-array) value is still read as one record, so topics written
before bundles existed stay readable.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from shared.app import key_partition
from shared.batch_output import BatchOutput

# Well under the broker's default message.max.bytes (1 MiB) and the producer's batch size.
BUNDLE_MAX_BYTES = 256 * 1024
_KEY_CACHE_MAX = 100_000


class KeyPartitions:
    """The partition Kafka's default partitioner gives a key (shared.app.key_partition), remembered
    for keys that come again (campaigns, users, dimension keys): up to _KEY_CACHE_MAX of them, then
    forgotten all at once. `remember=False` for keys that are nearly all new (validate's dedup
    keys): there the cache only filled up and emptied, a sawtooth of ~11 MiB in ingest's memory."""

    def __init__(self, partitions: int, remember: bool = True) -> None:
        self.partitions = partitions
        self.remember = remember
        self._known: dict[str | bytes, int] = {}

    def of(self, key: str | bytes) -> int:
        p = self._known.get(key) if self.remember else None
        if p is None:
            p = key_partition(key.encode() if isinstance(key, str) else key, self.partitions)
            if self.remember:
                if len(self._known) >= _KEY_CACHE_MAX:
                    self._known.clear()
                self._known[key] = p
        return p


class Bundler:
    """Collects one batch's encoded records per destination partition (the partition Kafka's
    default partitioner gives their key), then sends them as bundles."""

    def __init__(self, topic: str, partitions: int, remember_partitions: bool = True) -> None:
        self.topic = topic
        self.partitions = partitions
        self._partition_of = KeyPartitions(partitions, remember_partitions)
        self._open: dict[int, list[bytes]] = {}
        self._open_bytes: dict[int, int] = {}
        self._ready: list[tuple[int, bytes]] = []

    def partition_for(self, key: bytes) -> int:
        return self._partition_of.of(key)

    def add(self, key: bytes, value: bytes) -> None:
        """`value`: one JSON-encoded record that carries its own key."""
        p = self.partition_for(key)
        records = self._open.setdefault(p, [])
        size = self._open_bytes.get(p, 0) + len(value) + 1
        if records and size > BUNDLE_MAX_BYTES:
            self._close(p)
            records = self._open[p] = []
            size = len(value) + 1
        records.append(value)
        self._open_bytes[p] = size

    def _close(self, p: int) -> None:
        self._ready.append((p, b"[" + b",".join(self._open.pop(p)) + b"]"))
        self._open_bytes.pop(p, None)

    async def send(self, out: BatchOutput) -> int:
        """Send everything added since the last call, in order per partition; returns the number
        of bundles. The caller flushes `out` (after its markers, if any)."""
        for p in list(self._open):
            self._close(p)
        ready, self._ready = self._ready, []
        for p, bundle in ready:
            await out.send(self.topic, None, bundle, partition=p)
        return len(ready)


def unbundle(value: bytes) -> Iterator[tuple[int, Any]]:
    """(position in the bundle, record) for each record of a message; a plain record is at 0."""
    decoded = orjson.loads(value)
    if isinstance(decoded, list):
        yield from enumerate(decoded)
    else:
        yield 0, decoded
