"""shared.consumer_rewind.getmany on a fake consumer: which fetched records are handed on, and
where a partition is sought back to for the ones that are not."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from shared import consumer_rewind

STREAM = TP("canonical-events", 0)
OTHER = TP("canonical-events", 1)
CHANGELOG = TP("adclick-ctr-ctr_windows-changelog", 0)


def in_order(records: dict[TP, list[Any]]) -> list[tuple[TP, Any]]:
    return [(tp, r) for tp, rs in records.items() for r in rs]


class FakeConsumer:
    def __init__(self, records: dict[TP, list[int]], *, rebalancing: bool, active: set[TP] | None = None):
        self.records = {tp: [SimpleNamespace(offset=o) for o in offsets] for tp, offsets in records.items()}
        self.active = set(records) if active is None else active
        self.app = SimpleNamespace(
            consumer_generation_id=7,
            rebalancing=rebalancing,
            monitor=SimpleNamespace(track_tp_end_offset=lambda tp, highwater: None),
        )
        self.flow_active = True
        self.should_stop = False
        self._buffered_partitions: set[TP] = set()
        self.scheduler = SimpleNamespace(iterate=in_order)
        self.sought: list[tuple[TP, int]] = []

    async def _wait_next_records(self, timeout: float) -> tuple[Any, Any]:
        return self.records, self.active

    def _is_changelog_tp(self, tp: TP) -> bool:
        return tp.topic.endswith("-changelog")

    def _to_message(self, tp: TP, record: Any) -> tuple[TP, int]:
        return tp, record.offset

    def highwater(self, tp: TP) -> int:
        return 1_000

    def assignment(self) -> set[TP]:
        return {STREAM, OTHER, CHANGELOG}

    async def seek(self, tp: TP, offset: int) -> None:
        self.sought.append((tp, offset))


def handed(consumer: FakeConsumer) -> list[tuple[TP, int]]:
    async def run() -> list[tuple[TP, int]]:
        return [msg async for _, msg in consumer_rewind.getmany(consumer, timeout=1.0)]

    return asyncio.run(run())


def test_stream_records_wait_while_a_rebalance_is_under_way():
    """faust resumes and seeks the stream partitions a moment before its last flow resume empties
    the stream queues: what is handed on in between is lost. Held back and fetched again instead;
    table recovery still reads its changelogs."""
    c = FakeConsumer({STREAM: [500, 501, 502], CHANGELOG: [40, 41], OTHER: [90]}, rebalancing=True)
    assert handed(c) == [(CHANGELOG, 40), (CHANGELOG, 41)]
    assert sorted(c.sought) == [(STREAM, 500), (OTHER, 90)]


def test_stream_records_are_handed_on_once_the_rebalance_is_over():
    c = FakeConsumer({STREAM: [500, 501], CHANGELOG: [40]}, rebalancing=False)
    assert handed(c) == [(STREAM, 500), (STREAM, 501), (CHANGELOG, 40)]
    assert c.sought == []


def test_records_of_a_partition_not_active_yet_are_fetched_again_from_the_first():
    c = FakeConsumer({STREAM: [500, 501], OTHER: [90, 91]}, rebalancing=False, active={OTHER})
    assert handed(c) == [(OTHER, 90), (OTHER, 91)]
    assert c.sought == [(STREAM, 500)]


async def deliver(log: list[str], gate: asyncio.Future | None) -> str:
    log.append("started")
    if gate is not None:
        log.append(f"got {await gate}")
    log.append("finished")
    return "result"


def test_a_delivery_that_does_not_suspend_finishes_in_its_first_step():
    log: list[str] = []
    with_no_wait = deliver(log, None)
    try:
        with_no_wait.send(None)
    except StopIteration as stop:
        assert stop.value == "result"
    else:
        raise AssertionError("the delivery suspended")
    assert log == ["started", "finished"]


def test_a_suspended_delivery_is_finished_by_resumed_as_if_awaited_whole():
    async def scenario() -> tuple[str, list[str]]:
        log: list[str] = []
        gate = asyncio.get_running_loop().create_future()
        delivery = deliver(log, gate)
        suspended_on = delivery.send(None)
        assert log == ["started"]
        asyncio.get_running_loop().call_later(0.01, gate.set_result, "value")
        return await consumer_rewind.Resumed(delivery, suspended_on), log

    result, log = asyncio.run(scenario())
    assert (result, log) == ("result", ["started", "got value", "finished"])


def test_cancelling_a_resumed_delivery_cancels_the_delivery():
    async def scenario() -> list[str]:
        log: list[str] = []
        gate = asyncio.get_running_loop().create_future()
        delivery = deliver(log, gate)
        task = asyncio.ensure_future(consumer_rewind.Resumed(delivery, delivery.send(None)))
        await asyncio.sleep(0.01)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            log.append("cancelled")
        return log

    log = asyncio.run(scenario())
    assert log == ["started", "cancelled"]
