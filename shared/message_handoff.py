"""Two costs faust pays for every fetched message on its way to an agent's queue, removed without
changing what it does. They matter where one Kafka message is one event: ingest's validate reads
raw topics, and py-spy put the handoff (`Conductor.on_message`) at ~10% of ingest while it drained
a backlog, more than validate's own loop.

- The conductor takes an asyncio.Lock for every message to look up the partition's handler: the
  lock only guards the handler map while faust rebuilds it (`_update_indices`, which awaits
  inside). Here the map is read directly when the lock is free (no await between the check and
  the read, so nothing can rebuild it in between) and through the lock as before when it is held.
- Before each message, faust checks that its producer buffer is not full
  (`ProducerBuffer.wait_until_ebb`); the size it compares reads `app.conf.producer_threaded`,
  a settings lookup (~1 µs, through faust's settings registry) per message. Here the setting is
  read once per buffer: it cannot change while the app runs.
"""

from __future__ import annotations

from typing import Any

from faust.transport.conductor import Conductor
from faust.transport.producer import ProducerBuffer

_compile_message_handler = Conductor._compile_message_handler
_wait_until_ebb = ProducerBuffer.wait_until_ebb


def compile_message_handler(self: Any) -> Any:
    if self.app.client_only:
        return _compile_message_handler(self)
    get_callback_for_tp = self._tp_to_callback.__getitem__
    lock = self._tp_to_callback_lock

    async def on_message(message: Any) -> Any:
        if lock.locked():
            async with lock:
                callback = get_callback_for_tp(message.tp)
        else:
            callback = get_callback_for_tp(message.tp)
        return await callback(message)

    return on_message


def buffered(buffer: Any) -> int:
    """`ProducerBuffer.size`, with `producer_threaded` read once."""
    threaded = buffer.__dict__.get("_threaded")
    if threaded is None:
        threaded = buffer.__dict__["_threaded"] = bool(buffer.app.conf.producer_threaded)
    if threaded:
        return len(buffer.queue._queue) if buffer.queue else 0
    return len(buffer.pending._queue)


async def wait_until_ebb(self: Any) -> None:
    if buffered(self) > self.max_messages:
        await _wait_until_ebb(self)  # faust's own: warns, flushes, logs how long it took


def install() -> None:
    Conductor._compile_message_handler = compile_message_handler  # type: ignore[method-assign]
    ProducerBuffer.wait_until_ebb = wait_until_ebb  # type: ignore[method-assign]
