"""A topic's records read with aiokafka's consumer itself instead of a faust agent, in batches.

Used where one Kafka message is one record and the per-record cost counts: ingest's raw topics (one
message per event) and the warehouse's result topics (one message per row). faust's path for each
message (its consumer thread's method queue, a Message and an Event object, the conductor's handoff,
the stream queue, an ack per message) was ~38% of ingest's CPU in py-spy while it drained a backlog
and ~30% of the warehouse's, against ~5 µs per event for aiokafka's `getmany` and orjson alone (the
benchmark's L1). Re-keyed hops that ship bundles (one message per hundreds of records) stay with
faust, as do tables and everything else.

What the agent gave, kept:
- At least once: the caller commits a batch (`commit`) only after what it made of the batch is
  durable (ingest: its outputs acknowledged by the broker; the warehouse: the rows inserted). A
  batch read again after a crash is recognised downstream (ingest's join by each event's `src`,
  the warehouse's tables by their natural keys and insert tokens).
- A rebalance waits for the batch under way and its commit (`lock`, held by the caller around a
  batch). Records fetched before a rebalance are not handed on: the partitions' next owner (maybe
  this worker again) reads them from the committed offsets.

Its own consumer group (`<app id>-raw` for ingest, `<app id>-direct` for the warehouse): faust's
group runs faust's assignor, which does not know this member's subscription. A partition with no
commit in the new group starts where faust's group had committed it (these topics were read by
faust's group before this reader existed): an upgrade neither reads a backlog again nor skips any.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CommitFailedError, ConsumerStoppedError, IllegalStateError, KafkaError
from aiokafka.structs import ConsumerRecord

from shared.kafka_security import aiokafka_kwargs
from shared.settings import Settings

log = logging.getLogger(__name__)

RESTART_S = 1.0

OnAssigned = Callable[[set[TopicPartition]], Coroutine[Any, Any, None]]


class DirectReader(ConsumerRebalanceListener):
    def __init__(
        self,
        settings: Settings,
        topics: Iterable[str],
        group_id: str,
        legacy_group_id: str | None,
        on_assigned: OnAssigned,
        track_committed: bool = False,
    ) -> None:
        """`track_committed`: look up the committed offsets of partitions when they are assigned
        (`committed_offset`, for ingest's idle check); an admin round trip per rebalance that a
        reader nobody asks spares."""
        self.settings = settings
        self.track_committed = track_committed
        self.topics = sorted(topics)
        self.group_id = group_id
        self.legacy_group_id = legacy_group_id
        self.on_assigned = on_assigned
        self.lock = asyncio.Lock()  # the caller's batch (and its commit) vs. a rebalance
        self.generation = 0  # moved by every revocation: a batch fetched before it is dropped
        self.committed: dict[TopicPartition, int] = {}  # next offset to read, as committed
        # fetched, not handed on yet: partition -> its records in offset order
        self._pending: dict[TopicPartition, list[ConsumerRecord]] = {}
        self.consumer: AIOKafkaConsumer | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        # On a fresh broker the group coordinator may not be up yet (the offsets topic is created
        # on first use): a retriable error here is waited out, not a failure to restart from.
        delay = 0.2
        while True:
            try:
                await self._adopt_legacy_offsets()
                break
            except KafkaError as exc:
                if not exc.retriable:
                    raise
                log.info("%s: group offsets not readable yet (%r); again in %.1fs", self.group_id, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        s = self.settings
        self.consumer = AIOKafkaConsumer(
            group_id=self.group_id,
            client_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # As the faust apps (shared/app.py): a worker killed with -9 leaves the group after 10 s.
            session_timeout_ms=10_000,
            heartbeat_interval_ms=2_000,
            metadata_max_age_ms=30_000,
            fetch_max_wait_ms=s.consumer_fetch_max_wait_ms,
            **aiokafka_kwargs(s),
        )
        self.consumer.subscribe(self.topics, listener=self)
        await self.consumer.start()

    async def run(
        self, body: Callable[[], Awaitable[None]], name: str, should_stop: Callable[[], bool]
    ) -> None:
        """Join, run `body` (the caller's loop over `batches`) for the worker's life. A failure
        restarts the reader after RESTART_S, in this process: the batch that failed was not
        committed and is read again from the commits. Unlike a faust agent (crash-only, see
        MeshApp._on_agent_error), nothing here keeps consuming past the failed batch meanwhile;
        the one thing kept across is ingest's `raw_progress`, which may include that batch's
        events (harmless within the watermark delay plus allowed lateness)."""
        while not should_stop():
            try:
                await self.start()
                await body()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed; restarting its reader in %.0f s", name, RESTART_S)
                await asyncio.sleep(RESTART_S)
            finally:
                await self.stop()

    async def stop(self) -> None:
        """Leave the group. Called by the task that runs the batches, so none is under way; not
        under `lock`: aiokafka's stop waits for its coordinator, which may be waiting for `lock`
        in a rebalance callback."""
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            await consumer.stop()

    # -- rebalance listener (aiokafka calls these from its coordinator) -------------------------
    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self.lock:
            self.generation += 1
            self._pending.clear()  # read again by the partitions' next owner, from the commits
            for tp in revoked:
                self.committed.pop(tp, None)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if self.track_committed:
            try:
                self.committed.update(await self._group_offsets(self.group_id, sorted(assigned)))
            except KafkaError as exc:  # only the idle check reads these, and it waits for reads
                log.warning("direct reader %s: committed offsets not looked up: %r", self.group_id, exc)
        async with self.lock:
            await self.on_assigned(assigned)

    async def _group_offsets(
        self, group_id: str, tps: list[TopicPartition] | None = None
    ) -> dict[TopicPartition, int]:
        """The group's committed offsets (of `tps`, or all it has), leaving out "none"."""
        if tps == []:
            return {}
        admin = AIOKafkaAdminClient(**aiokafka_kwargs(self.settings))
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(group_id, partitions=tps)
        finally:
            await admin.close()
        return {tp: o.offset for tp, o in offsets.items() if o.offset >= 0}

    async def _adopt_legacy_offsets(self) -> None:
        """Before joining: for each partition this group has no commit for, commit faust's
        group's. Done before the consumer starts, since aiokafka fetches from the reset offset as
        soon as a partition is assigned: a seek then came after records of the wrong offsets were
        fetched (found by the test). If the group is already active (another worker started it),
        the broker refuses a commit from outside it, and that worker adopted them already."""
        if not self.legacy_group_id:
            return
        topics = set(self.topics)
        legacy = {
            tp: o for tp, o in (await self._group_offsets(self.legacy_group_id)).items() if tp.topic in topics
        }
        if not legacy:
            return
        own = await self._group_offsets(self.group_id, sorted(legacy))
        adopt = {tp: o for tp, o in legacy.items() if tp not in own}
        if not adopt:
            return
        committer = AIOKafkaConsumer(
            group_id=self.group_id, enable_auto_commit=False, **aiokafka_kwargs(self.settings)
        )
        await committer.start()
        try:
            committer.assign(sorted(adopt))
            await committer.commit(adopt)
            log.info(
                "%s: %d partitions start where %s left them", self.group_id, len(adopt), self.legacy_group_id
            )
        except KafkaError as exc:
            log.info(
                "%s: offsets of %s not adopted (%r): the group has them",
                self.group_id,
                self.legacy_group_id,
                exc,
            )
        finally:
            await committer.stop()

    # -- reading ----------------------------------------------------------------------------
    async def batches(
        self, max_records: int, within_s: float, quiet_s: float | None = None
    ) -> AsyncIterator[DirectBatch]:
        """Up to `max_records` records, in offset order per partition and shared out evenly among
        the partitions that have any (see `_take`): what is fetched first, and what more arrives
        within `within_s` of it; with `quiet_s`, only while something arrived within `quiet_s`
        (a burst goes on when it ends; as shared.event_batches). The caller takes `lock`, skips a
        batch that is `stale` by then, and commits it (`commit`) once what it made is durable."""
        loop = asyncio.get_running_loop()
        while (consumer := self.consumer) is not None:
            generation = self.generation
            try:
                if not self._pending:
                    await self._fetch(consumer, 1.0)
                    if not self._pending:
                        continue
                deadline = loop.time() + within_s
                while self._pending_count() < max_records and (remaining := deadline - loop.time()) > 0:
                    wait = remaining if quiet_s is None else min(remaining, quiet_s)
                    if not await self._fetch(consumer, wait):
                        break
            except ConsumerStoppedError:
                return
            if generation != self.generation:
                continue  # _pending was emptied: a rebalance began meanwhile
            yield DirectBatch(self, generation, self._take(max_records))

    async def _fetch(self, consumer: AIOKafkaConsumer, timeout_s: float) -> bool:
        # Everything aiokafka holds, all partitions at once: `max_records` would drain them one
        # after another (a whole fetch of one partition, ~1 MiB, before the next one).
        fetched = await consumer.getmany(timeout_ms=max(1, int(timeout_s * 1000)))
        for tp, records in fetched.items():
            self._pending.setdefault(tp, []).extend(records)
        return bool(fetched)

    def _take(self, max_records: int) -> list[ConsumerRecord]:
        """Round robin over the partitions, as faust's consumer hands records on: a backlog's
        partitions advance together in event time. Read one after another, ingest's raw partitions
        not reached yet would hold the join's watermark unknown meanwhile, and far too late events
        would be counted (seen in the backlog test)."""
        taken: list[ConsumerRecord] = []
        while self._pending and len(taken) < max_records:
            share = max(1, (max_records - len(taken)) // len(self._pending))
            for tp in list(self._pending):
                records = self._pending[tp]
                chunk = records[:share]
                taken.extend(chunk)
                if len(chunk) == len(records):
                    del self._pending[tp]
                else:
                    self._pending[tp] = records[share:]
                if len(taken) >= max_records:
                    break
        return taken

    def _pending_count(self) -> int:
        return sum(len(records) for records in self._pending.values())  # one list per partition

    async def commit(self, batch: DirectBatch) -> None:
        """Commit past `batch` (call under `lock`, after its outputs are acknowledged)."""
        offsets = batch.next_offsets()
        if self.consumer is None or not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group moved on meanwhile: the partitions' next owner reads these records again.
            log.warning("%s: commit not taken (%r); the records will be read again", self.group_id, exc)
            return
        self.committed.update(offsets)

    # -- what the idle check and /metrics read (the names faust's consumer has) ----------------
    def assignment(self) -> set[TopicPartition]:
        return self.consumer.assignment() if self.consumer is not None else set()

    async def highwaters(self, *tps: TopicPartition) -> dict[TopicPartition, int]:
        if self.consumer is None or not tps:
            return {}
        return await self.consumer.end_offsets(list(tps))

    async def position(self, tp: TopicPartition) -> int | None:
        if self.consumer is None:
            return None
        try:
            return await self.consumer.position(tp)
        except IllegalStateError:  # revoked meanwhile
            return None

    def committed_offset(self, tp: TopicPartition) -> int | None:
        return self.committed.get(tp)


class DirectBatch:
    def __init__(self, reader: DirectReader, generation: int, records: list[ConsumerRecord]) -> None:
        self.reader = reader
        self.generation = generation
        self.records = records
        self._next_offsets: dict[TopicPartition, int] | None = None

    @property
    def stale(self) -> bool:
        """Fetched before a rebalance (or the reader stopped): not to be handed on. Whoever owns
        the partitions now reads the records again from the committed offsets."""
        return self.generation != self.reader.generation or self.reader.consumer is None

    def next_offsets(self) -> dict[TopicPartition, int]:
        """Partition -> the offset after its last record in the batch (what a commit says).
        Worked out once (ingest asks twice), with a TopicPartition per partition, not per record."""
        if self._next_offsets is None:
            last: dict[tuple[str, int], int] = {}
            for r in self.records:
                last[(r.topic, r.partition)] = r.offset
            self._next_offsets = {TopicPartition(t, p): o + 1 for (t, p), o in last.items()}
        return self._next_offsets
