"""Exact distinct counts without ever-growing values: one small table entry per set member.

A distinct count (unique users of a device window, sessions of a user window, users and buyers of
an experiment arm per window and over the experiment's lifetime) is the size of a set. Keeping the
set inside the window state would rewrite the whole, growing list on every change (faust changelog
write amplification). Instead every member is its own table entry, written once when first seen:
    key = orjson([aggregate key, window start or null for lifetime sets, set name, member]) -> b"1"
partitioned like its aggregate key (KeyedTable.partition_by), so the worker owning the key's input
partition restores exactly its members. An in-memory index, rebuilt from the table after start and
after every rebalance, answers membership and sizes.

Exact under crashes and replays: adding is idempotent (a set) and a count is always the size of its
set, never a counter kept beside it. The service writes, per batch:
  1. the members the batch's counted events added, with
  2. the results, and waits until both are on the broker;
  3. the window states with their replay marks (WindowedAggregation.write_states).
So a state saying "event applied" never exists without the members that event added, and a member
whose event's state was lost is found again, not double counted, when the event is replayed.
A window's members are deleted once the window is dropped (past allowed lateness) and the state
that dropped it is on the broker (`expire`, called one flush later), so a restart never finds a
live window without its members. Lifetime sets are never deleted: an exact cumulative distinct
count has to remember every member, and they are bounded by the experiment's users.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from services.engagement.metrics import Record, contribution
from shared.app import table_json
from shared.batch_output import BatchOutput
from shared.bundles import KeyPartitions
from shared.windows import Aggregate, WindowSpec

Merge = Callable[[Aggregate | None], Aggregate]
SetsKey = tuple[str, int | None]  # (aggregate key, window start or None for lifetime sets)


def entry_key(key: str, window: int | None, name: str, member: str) -> bytes:
    return table_json([key, window, name, member])


def aggregate_key_of(entry: bytes) -> bytes:
    """KeyedTable.partition_by: an entry lives in the partition of its aggregate key."""
    return orjson.loads(entry)[0].encode()


class DistinctSets:
    def __init__(self, table: Any, spec: WindowSpec, partitions: int) -> None:
        self.table = table  # MutableMapping[bytes, bytes], keyed_table(..., partition_by=aggregate_key_of)
        self.spec = spec
        self.partition_count = partitions
        self.sets: dict[SetsKey, dict[str, set[str]]] = {}
        # partition -> window start -> aggregate keys holding sets of that window (for expiry)
        self.windows: dict[int, dict[int, set[str]]] = {}
        self._indexed = False
        # entry -> b"1" (added) or None (deleted), not yet sent: members go out in bulk, with
        # the batch's results (faust's per-key table send cost more than the counting)
        self.pending: dict[bytes, bytes | None] = {}
        # entry -> its changelog partition, that of its aggregate key: known here, whereas the
        # table would decode the entry and hash its key again (partition_by)
        self.pending_partitions: dict[bytes, int] = {}
        self._partition_of = KeyPartitions(partitions)  # aggregate key -> partition

    def forget(self) -> None:
        """After a rebalance: rebuild from the recovered table at the next use."""
        self.pending.clear()  # a batch in flight is not acked: its events come again
        self.pending_partitions.clear()
        self.sets.clear()
        self.windows.clear()
        self._indexed = False

    def add(self, key: str, window: int | None, name: str, member: str) -> None:
        self._ensure_indexed()
        if self._remember(key, window, name, member):
            self._pend(entry_key(key, window, name, member), b"1", key)

    def _pend(self, entry: bytes, value: bytes | None, key: str) -> None:
        self.pending[entry] = value
        self.pending_partitions[entry] = self._partition_of.of(key)

    async def write(self, out: BatchOutput) -> None:
        """Send the members added (and deleted) since the last call through `out`, in one Kafka
        batch per partition (the table is a KeyedTable); the caller flushes."""
        pending, self.pending = self.pending, {}
        partitions, self.pending_partitions = self.pending_partitions, {}
        await self.table.write_many(out, pending, partitions)

    def apply_pending(self) -> None:
        """write() for a plain mapping (unit tests)."""
        pending, self.pending = self.pending, {}
        self.pending_partitions.clear()
        for entry, value in pending.items():
            if value is None:
                self.table.pop(entry, None)
            else:
                self.table[entry] = value

    def sizes(self, key: str, window: int | None) -> dict[str, int]:
        self._ensure_indexed()
        return {name: len(members) for name, members in self.sets.get((key, window), {}).items()}

    def expire(self, durably_closed: Mapping[int, int]) -> int:
        """Delete the members of the windows dropped in partitions whose states are on the broker
        up to the given watermark (a window is dropped once end + allowed lateness <= watermark)."""
        self._ensure_indexed()
        deleted = 0
        for p, watermark in durably_closed.items():
            starts = self.windows.get(p, {})
            for start in [s for s in starts if self.spec.end(s) + self.spec.grace_ms <= watermark]:
                for key in starts.pop(start):
                    for name, members in self.sets.pop((key, start), {}).items():
                        for member in members:
                            entry = entry_key(key, start, name, member)
                            if entry in self.table or entry in self.pending:
                                self._pend(entry, None, key)
                                deleted += 1
        return deleted

    def _ensure_indexed(self) -> None:
        if not self._indexed:
            self._indexed = True
            for entry in list(self.table.keys()):
                self._remember(*orjson.loads(entry))

    def _remember(self, key: str, window: int | None, name: str, member: str) -> bool:
        sets = self.sets.get((key, window))
        if sets is None:
            sets = self.sets[(key, window)] = {}
            if window is not None:
                p = self._partition_of.of(key)
                self.windows.setdefault(p, {}).setdefault(window, set()).add(key)
        members = sets.setdefault(name, set())
        if member in members:
            return False
        members.add(member)
        return True


def counting(sets: DistinctSets) -> Callable[[Record], Merge | None]:
    """WindowedAggregation's `contribute`: how an event changes its key's window, adding its
    distinct-set members when the change is applied, i.e. only if the event counts (neither late
    nor a replay of an event the state already holds)."""

    def contribute(rec: Record) -> Merge | None:
        key = rec["key"]
        c = contribution(key, rec)
        if c is None:
            return None
        window = sets.spec.start(rec["ts"])

        def apply(agg: Aggregate | None) -> Aggregate:
            for name, member in c.members:
                sets.add(key, window, name, member)
            for name, member in c.lifetime_members:
                sets.add(key, None, name, member)
            return c.merge(agg)

        return apply

    return contribute
