"""shared.direct_reader: ingest (raw topics) and the warehouse (result topics) read with aiokafka's
consumer directly, each in its own consumer group. On the real broker: where it starts (faust's
group's commits on a first start, its own after), what it commits; and, pure, how a batch is
shared out among partitions, closed by a quiet period, and how a start waits for the coordinator."""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupCoordinatorNotAvailableError
from aiokafka.structs import ConsumerRecord

import shared.direct_reader as direct_reader
from shared.app import ensure_topics
from shared.direct_reader import DirectBatch, DirectReader
from shared.settings import Settings


async def read_all(reader: DirectReader, expected: int, timeout_s: float = 30.0) -> list[ConsumerRecord]:
    """Batches until `expected` records came, each committed as ingest does (under the lock)."""
    got: list[ConsumerRecord] = []

    async def run() -> None:
        async for batch in reader.batches(max_records=4, within_s=0.05):
            async with reader.lock:
                if batch.stale:
                    continue
                got.extend(batch.records)
                await reader.commit(batch)
            if len(got) >= expected:
                return

    await asyncio.wait_for(run(), timeout_s)
    return got


def test_starts_where_faust_left_off_then_from_its_own_commits(kafka_bootstrap):
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, topic_partitions=2)
    topic = f"t{uuid.uuid4().hex[:8]}-raw"
    legacy, group = f"{topic}-faust", f"{topic}-faust-raw"
    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)

    async def produce(n_per_partition: int) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for i in range(n_per_partition):
                for p in (0, 1):
                    await producer.send_and_wait(topic, f"{p}-{i}".encode(), partition=p)
        finally:
            await producer.stop()

    async def committed(group_id: str) -> dict[TopicPartition, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(group_id, partitions=[p0, p1])
            return {tp: o.offset for tp, o in offsets.items()}
        finally:
            await admin.close()

    async def scenario() -> None:
        await ensure_topics(settings, [topic])
        await produce(10)
        # faust's group had read partition 0 up to offset 4 and partition 1 up to 7
        old = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=legacy, enable_auto_commit=False)
        await old.start()
        old.assign([p0, p1])
        await old.commit({p0: 4, p1: 7})
        await old.stop()

        assigned: list[set[TopicPartition]] = []

        async def on_assigned(tps: set[TopicPartition]) -> None:
            assigned.append(set(tps))

        reader = DirectReader(settings, [topic], group, legacy, on_assigned)
        await reader.start()
        try:
            first = await read_all(reader, expected=6 + 3)
        finally:
            await reader.stop()
        assert assigned and assigned[-1] == {p0, p1}
        assert sorted(r.offset for r in first if r.partition == 0) == list(range(4, 10))
        assert sorted(r.offset for r in first if r.partition == 1) == list(range(7, 10))
        assert await committed(group) == {p0: 10, p1: 10}

        # Started again: its own commits, not faust's group's (still at 4 and 7), say where.
        await produce(1)
        reader = DirectReader(settings, [topic], group, legacy, on_assigned)
        await reader.start()
        try:
            again = await read_all(reader, expected=2)
        finally:
            await reader.stop()
        assert sorted((r.partition, r.offset) for r in again) == [(0, 10), (1, 10)]
        assert await committed(legacy) == {p0: 4, p1: 7}

    asyncio.run(scenario())


def record(p: int, offset: int) -> ConsumerRecord:
    return ConsumerRecord("raw", p, offset, 0, 0, None, b"", None, 0, 1, [])


def test_a_batch_is_shared_out_among_the_partitions_in_offset_order():
    reader = DirectReader(Settings(), ["raw"], "g", None, on_assigned=lambda tps: asyncio.sleep(0))
    for p, n in ((0, 10), (1, 3), (2, 10)):
        reader._pending[TopicPartition("raw", p)] = [record(p, o) for o in range(n)]

    first = reader._take(9)
    # 3 from each: partition 0 does not go first with 9 of its own (the join's watermark would
    # wait for partitions 1 and 2 meanwhile)
    assert [(r.partition, r.offset) for r in first] == [(p, o) for p in (0, 1, 2) for o in range(3)]
    second = reader._take(9)
    assert [(r.partition, r.offset) for r in second] == [(0, o) for o in range(3, 7)] + [
        (2, o) for o in range(3, 7)
    ] + [(0, 7)]
    rest = reader._take(100)
    assert [(r.partition, r.offset) for r in rest] == [(0, 8), (0, 9)] + [(2, o) for o in range(7, 10)]
    assert reader._pending == {} and reader._pending_count() == 0


def test_a_batch_commits_past_its_last_record_of_each_partition():
    reader = DirectReader(Settings(), ["raw"], "g", None, on_assigned=lambda tps: asyncio.sleep(0))
    records = [record(0, 3), record(0, 4), record(1, 9), record(0, 5), record(2, 0)]
    batch = DirectBatch(reader, reader.generation, records)
    want = {TopicPartition("raw", 0): 6, TopicPartition("raw", 1): 10, TopicPartition("raw", 2): 1}
    assert batch.next_offsets() == want
    assert batch.next_offsets() == want  # asked again (ingest does): the same


def test_a_batch_fetched_before_a_rebalance_is_not_handed_on():
    reader = DirectReader(Settings(), ["raw"], "g", None, on_assigned=lambda tps: asyncio.sleep(0))
    reader.consumer = object()  # started, as far as the batch can tell
    tp = TopicPartition("raw", 0)
    reader._pending[tp] = [record(0, 5)]
    batch = DirectBatch(reader, reader.generation, [record(0, 4)])
    assert not batch.stale
    asyncio.run(reader.on_partitions_revoked({tp}))
    # the partitions' next owner reads both again from the committed offset
    assert batch.stale
    assert reader._pending == {} and reader._pending_count() == 0


class ScriptedConsumer:
    """getmany answers from a script; records the wait it was given each time."""

    def __init__(self, answers: list[dict]) -> None:
        self.answers = answers
        self.waits_ms: list[int] = []

    async def getmany(self, timeout_ms: int) -> dict:
        self.waits_ms.append(timeout_ms)
        return self.answers.pop(0) if self.answers else {}


def first_batch(quiet_s: float | None) -> tuple[list[tuple[int, int]], list[int]]:
    reader = DirectReader(Settings(), ["raw"], "g", None, on_assigned=lambda tps: asyncio.sleep(0))
    tp = TopicPartition("raw", 0)
    consumer = reader.consumer = ScriptedConsumer([{tp: [record(0, 0)]}, {tp: [record(0, 1)]}])

    async def scenario() -> list[tuple[int, int]]:
        async for batch in reader.batches(100, within_s=5.0, quiet_s=quiet_s):
            return [(r.partition, r.offset) for r in batch.records]
        return []

    return asyncio.run(scenario()), consumer.waits_ms


def test_a_quiet_period_closes_a_batch_early():
    # The warehouse: a burst of results goes on once nothing more arrived for quiet_s, while a
    # steady flow still fills the batch; without quiet_s the batch waits out within_s.
    records, waits = first_batch(quiet_s=0.05)
    assert records == [(0, 0), (0, 1)]
    assert waits[1:] == [50, 50]  # after the first fetch: at most the quiet period each
    _, waits = first_batch(quiet_s=None)
    assert all(w > 4_000 for w in waits[1:3])  # the rest of within_s


def test_a_coordinator_not_up_yet_is_waited_for_not_a_failure(monkeypatch):
    # A fresh broker creates its offsets topic on first use: until then the group coordinator is
    # "not available", a retriable error. The reader waits for it instead of failing its start
    # (which logged a traceback and restarted the warehouse's reader in the anomaly test).

    attempts = []

    async def adopt() -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise GroupCoordinatorNotAvailableError("not yet")

    class Consumer:
        def __init__(self, **kwargs: object) -> None:
            self.started = False

        def subscribe(self, topics: list[str], listener: object) -> None:
            pass

        async def start(self) -> None:
            self.started = True

    monkeypatch.setattr(direct_reader, "AIOKafkaConsumer", Consumer)
    reader = DirectReader(Settings(), ["raw"], "g", "legacy", on_assigned=lambda tps: asyncio.sleep(0))
    monkeypatch.setattr(reader, "_adopt_legacy_offsets", adopt)
    asyncio.run(reader.start())
    assert len(attempts) == 3 and reader.consumer.started
