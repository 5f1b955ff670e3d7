"""shared.event_batches on a fake stream: what a batch holds, what is acked and when."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from mode.utils.queues import FlowControlEvent, ThrowableQueue

from shared.event_batches import event_batches


class FakeMessage:  # hashable, as faust's Message is (the consumer keeps a set of them)
    def __init__(self, topic: str, offset: int, generation_id: int) -> None:
        self.topic, self.offset, self.generation_id, self.tracked = topic, offset, generation_id, False


class FakeEvent:
    def __init__(self, offset: int, generation: int = 1, topic: str = "t") -> None:
        self.message = FakeMessage(topic, offset, generation)
        self.acked = False

    def ack(self) -> bool:
        self.acked = True
        return True


def fake_stream(active: bool = True) -> Any:
    app = SimpleNamespace(
        consumer=SimpleNamespace(unacked=set()),
        topics=SimpleNamespace(acking_topics={"t"}),
        flow_control=SimpleNamespace(is_active=lambda: active),
        consumer_generation_id=1,
    )
    return SimpleNamespace(
        app=app, channel=SimpleNamespace(queue=ThrowableQueue(maxsize=100, flow_control=FlowControlEvent()))
    )


def put(stream: Any, *events: FakeEvent) -> None:
    for e in events:
        stream.channel.queue.put_nowait(e)


def test_a_batch_takes_what_is_queued_up_to_its_maximum():
    async def scenario() -> list[list[int]]:
        stream = fake_stream()
        put(stream, *(FakeEvent(o) for o in range(5)))
        batches = event_batches(stream, 3, 0.01)
        return [[e.message.offset for e in await anext(batches)] for _ in range(2)]

    assert asyncio.run(scenario()) == [[0, 1, 2], [3, 4]]


def test_a_quiet_gap_closes_a_batch_before_its_time_is_up():
    async def scenario(quiet_s: float | None) -> tuple[list[int], float]:
        stream = fake_stream()
        put(stream, FakeEvent(0), FakeEvent(1))
        loop = asyncio.get_running_loop()
        started = loop.time()
        batch = await anext(event_batches(stream, 100, 2.0, quiet_s))
        return [e.message.offset for e in batch], loop.time() - started

    # a burst followed by silence goes on after the quiet gap, not after the 2 s
    offsets, waited = asyncio.run(scenario(0.05))
    assert offsets == [0, 1] and waited < 1.0
    offsets, waited = asyncio.run(scenario(None))
    assert offsets == [0, 1] and waited >= 2.0


def test_events_closer_than_the_quiet_gap_stay_in_one_batch():
    async def scenario() -> list[int]:
        stream = fake_stream()
        put(stream, FakeEvent(0))

        async def trickle() -> None:
            for o in range(1, 4):
                await asyncio.sleep(0.02)
                put(stream, FakeEvent(o))

        feeder = asyncio.create_task(trickle())
        batch = await anext(event_batches(stream, 100, 5.0, quiet_s=0.3))
        await feeder
        return [e.message.offset for e in batch]

    assert asyncio.run(scenario()) == [0, 1, 2, 3]


def test_events_are_acked_after_the_body_not_before():
    async def scenario() -> tuple[list[bool], list[bool], int]:
        stream = fake_stream()
        events = [FakeEvent(0), FakeEvent(1)]
        put(stream, *events)
        batches = event_batches(stream, 10, 0.01)
        await anext(batches)
        during = [e.acked for e in events]
        tracked = len(stream.app.consumer.unacked)
        put(stream, FakeEvent(2))
        await anext(batches)  # asking for the next batch means the body finished
        return during, [e.acked for e in events], tracked

    during, after, tracked = asyncio.run(scenario())
    assert during == [False, False]
    assert after == [True, True]
    assert tracked == 2


def test_a_batch_whose_body_raised_is_not_acked():
    async def scenario() -> list[bool]:
        stream = fake_stream()
        events = [FakeEvent(0), FakeEvent(1)]
        put(stream, *events)
        with pytest.raises(RuntimeError):
            async for _ in event_batches(stream, 10, 0.01):
                raise RuntimeError("the body failed")
        return [e.acked for e in events]

    assert asyncio.run(scenario()) == [False, False]


def test_events_of_another_generation_are_neither_handed_on_nor_acked():
    async def scenario() -> tuple[list[int], bool]:
        stream = fake_stream()
        stale = FakeEvent(0, generation=0)
        put(stream, stale, FakeEvent(1))
        batch = await anext(event_batches(stream, 10, 0.01))
        return [e.message.offset for e in batch], stale.acked

    # acked, the next commit would go past it: read again from the commit instead
    assert asyncio.run(scenario()) == ([1], False)


def test_nothing_is_handed_on_while_the_flow_is_suspended():
    async def scenario() -> bool:
        stream = fake_stream(active=False)
        event = FakeEvent(0)
        put(stream, event)
        batches = event_batches(stream, 10, 0.01)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(batches), 0.1)
        return event.acked

    assert asyncio.run(scenario()) is False


def test_a_batch_taken_as_the_worker_stops_is_not_acked():
    """faust stops a worker by suspending the flow, then commits what is acked while the agents
    still run: a batch taken before that and checked after must stay unacked, or the commit goes
    past events nobody processed (lost: the next owner starts after them)."""

    async def scenario() -> tuple[list[bool], list[list[int]]]:
        active = [True]
        stream = fake_stream()
        stream.app.flow_control.is_active = lambda: active[0]
        events = [FakeEvent(0), FakeEvent(1)]
        put(stream, *events)
        batches = event_batches(stream, 100, 0.2)  # gathers for 0.2 s after the first event

        async def stop_meanwhile() -> None:
            await asyncio.sleep(0.05)
            active[0] = False  # faust's flow_control.suspend() at stop

        stopper = asyncio.create_task(stop_meanwhile())
        handed_on = []
        with pytest.raises(TimeoutError):
            handed_on.append([e.message.offset for e in await asyncio.wait_for(anext(batches), 0.5)])
        await stopper
        return [e.acked for e in events], handed_on

    acked, handed_on = asyncio.run(scenario())
    assert handed_on == []
    assert acked == [False, False]


def test_an_error_thrown_into_the_channel_is_raised():
    async def scenario() -> None:
        stream = fake_stream()
        stream.channel.queue._throw(ValueError("thrown"))
        await anext(event_batches(stream, 10, 0.01))

    with pytest.raises(ValueError, match="thrown"):
        asyncio.run(scenario())


def test_the_channel_ending_ends_the_batches():
    async def scenario() -> list[Any]:
        stream = fake_stream()
        stream.channel.queue._throw(StopAsyncIteration())
        return [batch async for batch in event_batches(stream, 10, 0.01)]

    assert asyncio.run(scenario()) == []
