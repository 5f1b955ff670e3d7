"""shared.message_handoff: faust's per-message handoff without its lock and settings lookup, doing
the same thing (the handler runs; it waits while faust rebuilds the handler map; a full producer
buffer still holds the stream)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import faust
import pytest
from faust.types import TP

import shared.app  # noqa: F401  (installs the patches, as every service does)
from shared.message_handoff import buffered


def make_app() -> faust.App:
    # Never started: the conductor and producer buffer are built without a broker.
    return faust.App("test-message-handoff", broker="kafka://127.0.0.1:1")


def test_a_message_reaches_its_partitions_handler_and_waits_while_the_map_is_rebuilt():
    async def run() -> None:
        conductor = make_app().topics
        tp = TP("raw", 0)
        got: list[int] = []

        async def handler(message: object) -> None:
            got.append(message.offset)  # type: ignore[attr-defined]

        conductor._tp_to_callback[tp] = handler
        await conductor.on_message(SimpleNamespace(tp=tp, offset=1))
        assert got == [1]

        await conductor._tp_to_callback_lock.acquire()  # as _update_indices holds it
        pending = asyncio.ensure_future(conductor.on_message(SimpleNamespace(tp=tp, offset=2)))
        await asyncio.sleep(0.01)
        assert got == [1]  # not while the map may be half rebuilt
        conductor._tp_to_callback_lock.release()
        await pending
        assert got == [1, 2]

        with pytest.raises(KeyError):  # a partition with no handler fails as in faust
            await conductor.on_message(SimpleNamespace(tp=TP("raw", 9), offset=3))

    asyncio.run(run())


@pytest.mark.parametrize("threaded", [False, True])
def test_the_buffer_size_is_fausts_and_a_full_buffer_still_holds_the_stream(threaded, monkeypatch):
    app = make_app()
    app.conf.producer_threaded = threaded
    buffer = app.producer.buffer
    if threaded:
        buffer.queue = asyncio.Queue()
        for i in range(3):
            buffer.queue.put_nowait(i)
    else:
        for i in range(3):
            buffer.pending.put_nowait(i)
    assert buffered(buffer) == buffer.size == 3

    flushed: list[int | None] = []

    async def flush_atmost(n: int | None) -> int:
        flushed.append(n)
        return 0

    monkeypatch.setattr(buffer, "flush_atmost", flush_atmost)
    buffer.max_messages = 3
    asyncio.run(buffer.wait_until_ebb())
    assert flushed == []  # not over the limit
    buffer.max_messages = 2
    asyncio.run(buffer.wait_until_ebb())
    assert flushed == [2]  # faust's own flush ran
