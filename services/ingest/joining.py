"""The join's batch work: dedup, join and expiry of a batch of ingest-by-key messages.

Apart from the agent (services.ingest.agents.join) so that it is compiled with the other hot
modules (shared/compiled_modules.py); bench/ingest_cpu.py drives it alone, with a dict for the
table. The per-event rules themselves are in services.ingest.join.
"""

from __future__ import annotations

import heapq
from collections import Counter
from typing import Any

import orjson

from services.ingest.join import Outcome, Record, apply_once, expire, new_entry, on_event
from shared import metrics
from shared.app import table_json
from shared.batch_output import BatchOutput
from shared.bundles import Bundler, unbundle
from shared.topics import TopicNames, canonical_key
from shared.watermark_relay import RelayedWatermark
from shared.watermarks import MARKER_KIND, NEG_INF


class ExpiryIndex:
    """Keys bucketed by when they fall due (event time), so a sweep visits only the due buckets
    instead of every key held: each key is looked at about once per change, not once per sweep.
    The buckets' numbers are in a heap, so a sweep reads only the due ones: scanning them all
    was 7% of ingest draining a 5M-event backlog, whose held ids span hours of event time."""

    def __init__(self, bucket_ms: int) -> None:
        self.bucket_ms = bucket_ms
        self.buckets: dict[int, set[bytes]] = {}
        self.bucket_of: dict[bytes, int] = {}
        self._order: list[int] = []  # heap of the numbers of `buckets`

    def track(self, key: bytes, due_ms: int) -> None:
        b = due_ms // self.bucket_ms
        old = self.bucket_of.get(key)
        if old == b:
            return
        if old is not None:
            self.buckets[old].discard(key)
        keys = self.buckets.get(b)
        if keys is None:
            keys = self.buckets[b] = set()
            heapq.heappush(self._order, b)
        keys.add(key)
        self.bucket_of[key] = b

    def untrack(self, key: bytes) -> None:
        old = self.bucket_of.pop(key, None)
        if old is not None:
            self.buckets[old].discard(key)

    def due(self, now_ms: int) -> list[bytes]:
        """Keys whose bucket has started by now (a survivor is re-tracked by the caller)."""
        keys: list[bytes] = []
        order = self._order
        while order and order[0] * self.bucket_ms <= now_ms:
            for key in self.buckets.pop(heapq.heappop(order)):
                del self.bucket_of[key]
                keys.append(key)
        return keys


class JoinPartition:
    """In-memory companions of one partition's join state: its watermark and what to expire."""

    def __init__(self, p: int, join_window_ms: int, dedup_ttl_ms: int, sweep_every_ms: int) -> None:
        self.relay = RelayedWatermark(f"join:{p}")
        self.join_window_ms, self.dedup_ttl_ms = join_window_ms, dedup_ttl_ms
        self.forget_at = ExpiryIndex(sweep_every_ms)  # key -> when its dedup TTL runs out
        self.orphan_at = ExpiryIndex(1_000)  # key -> when its first waiting click is an orphan
        self.swept_at = NEG_INF

    def track(self, key: bytes, entry: Record) -> None:
        self.forget_at.track(key, entry["t"] + self.dedup_ttl_ms)
        if entry["pending"]:
            first = min(c["wait_from"] for c in entry["pending"])
            self.orphan_at.track(key, first + self.join_window_ms)
        else:
            self.orphan_at.untrack(key)

    def untrack(self, key: bytes) -> None:
        self.forget_at.untrack(key)
        self.orphan_at.untrack(key)


class Join:
    """The join state's table, its in-memory companions per partition, and the outcome counts."""

    def __init__(
        self,
        table: Any,  # the join state's KeyedTable: get_stored, write_many, items
        topics: TopicNames,
        partitions: int,
        join_window_ms: int,
        dedup_ttl_ms: int,
        outcomes: Counter[str],
    ) -> None:
        self.table = table
        self.topics = topics
        self.partition_count = partitions
        self.join_window_ms, self.dedup_ttl_ms = join_window_ms, dedup_ttl_ms
        self.sweep_every_ms = max(1_000, min(join_window_ms, dedup_ttl_ms) // 10)
        self.outcomes = outcomes  # what happened to every input message (/stats, accounting tests)
        self.partitions: dict[int, JoinPartition] = {}

    def new_partition(self, p: int) -> JoinPartition:
        return JoinPartition(p, self.join_window_ms, self.dedup_ttl_ms, self.sweep_every_ms)

    def partition_state(self, p: int) -> JoinPartition:
        partitions = self.partitions
        if not partitions:
            # First batch since start: index what table recovery restored.
            for key, raw in self.table.items():
                entry = orjson.loads(raw)
                partitions.setdefault(entry["p"], self.new_partition(entry["p"])).track(key, entry)
        part = partitions.get(p)
        if part is None:
            part = partitions[p] = self.new_partition(p)
        return part


class JoinBatch:
    """One batch's view of the join state: entries are read once, changed in memory, and written
    back only after the batch's outputs are on the broker (so "applied" implies "delivered")."""

    def __init__(self, join: Join, out: BatchOutput, canonical: Bundler) -> None:
        self.join = join
        self.out = out
        self.canonical = canonical  # ctr and engagement pay per Kafka message: bundles
        self.entries: dict[bytes, Record] = {}
        self.writes: dict[bytes, bytes | None] = {}
        self.write_partitions: dict[bytes, int] = {}  # the entry's partition: no hashing again

    def entry(self, key: bytes, p: int) -> Record:
        e = self.entries.get(key)
        if e is None:
            raw = self.join.table.get_stored(key)
            e = self.entries[key] = orjson.loads(raw) if raw is not None else new_entry(p)
        return e

    async def emit(self, outcome: Outcome, seq_base: list[int] | None) -> None:
        outcomes = self.join.outcomes
        for i, rec in enumerate(outcome.emit):
            outcomes[f"counted:{rec['kind']}"] += 1
            # seq lets ctr/engagement recognise a canonical event produced again after a crash.
            # (Set in place: the join makes each emitted record afresh, see join.canonical.)
            if seq_base is not None:
                rec["seq"] = [*seq_base, i]
            self.canonical.add(canonical_key(rec), orjson.dumps(rec))
        for rec in outcome.discard:
            outcomes[rec["reason"]] += 1
            metrics.discarded.labels("ingest", rec["reason"]).inc()
            await self.out.send(self.join.topics.discarded, rec["src"].encode(), orjson.dumps(rec))

    def changed(self, key: bytes, entry: Record, forget: bool = False) -> None:
        self.writes[key] = None if forget else table_json(entry)
        self.write_partitions[key] = entry["p"]

    async def send_events(self) -> None:
        """The events so far, ahead of a marker (or of the batch's end)."""
        await self.canonical.send(self.out)

    async def commit(self) -> None:
        await self.send_events()
        await self.out.flush()
        await self.join.table.write_many(self.out, self.writes, self.write_partitions)
        await self.out.flush()


async def sweep(batch: JoinBatch, part: JoinPartition, p: int, wm: int) -> None:
    """Orphan clicks past the join window; forget entries past the dedup TTL. Visits only the keys
    the expiry indexes say are due."""
    keys = set(part.orphan_at.due(wm))
    if wm - part.forget_at.bucket_ms >= part.swept_at:
        keys.update(part.forget_at.due(wm))
        part.swept_at = wm
    for key in keys:
        if key not in batch.entries and batch.join.table.get_stored(key) is None:
            part.untrack(key)
            continue
        entry = batch.entry(key, p)
        forget, outcome = expire(entry, wm, part.join_window_ms, part.dedup_ttl_ms)
        await batch.emit(outcome, None)
        if forget:
            batch.changed(key, entry, forget=True)
            part.untrack(key)
        else:
            if outcome.discard:
                batch.changed(key, entry)
            part.track(key, entry)  # not due yet (or still waiting): back in its bucket


async def forward(batch: JoinBatch, part: JoinPartition) -> None:
    """The partition's progress to every partition of canonical-events (ctr, engagement)."""
    await part.relay.forward(batch.out, batch.join.topics.canonical, batch.join.partition_count)


async def advance(batch: JoinBatch, part: JoinPartition, p: int) -> None:
    """If the partition's watermark moved: expire what it passed, then tell ctr and engagement."""
    if part.relay.moved():
        await sweep(batch, part, p, part.relay.watermark.value)
        await batch.send_events()
        await forward(batch, part)


async def join_messages(batch: JoinBatch, messages: list[tuple[int, int, bytes]]) -> None:
    """One batch of ingest-by-key messages (partition, offset, value): dedup and join them, and
    send their canonical events, markers and join state (bench/ingest_cpu.py drives it alone)."""
    touched: set[int] = set()
    for p, offset, value in messages:
        part = batch.join.partition_state(p)
        touched.add(p)
        for j, rec in unbundle(value):
            if rec.get("kind") == MARKER_KIND:
                part.relay.observe(rec)
                # Progress goes on at once, in order with the events around it: what
                # ctr may judge late must not depend on how many bundles a batch took
                # (a first batch holding a whole backlog left ctr blind all through it).
                await advance(batch, part, p)
                continue
            key = rec["dedup_key"].encode()
            entry = batch.entry(key, p)
            if not apply_once(entry, rec["src"]):
                batch.join.outcomes["replayed"] += 1
                continue
            outcome = on_event(entry, rec, max(rec["at"], part.relay.watermark.value))
            batch.changed(key, entry)
            part.track(key, entry)
            await batch.emit(outcome, [p, offset, j])
    for p in touched:
        part = batch.join.partitions[p]
        await advance(batch, part, p)
        await batch.send_events()
        await forward(batch, part)  # idleness, first word
    await batch.commit()
