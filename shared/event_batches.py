"""Batches of events straight from an agent's channel queue: faust's `stream.take_events`, without
its per-event machinery, and acked only when the body finished.

Why: `take_events` moves every event through the stream's iterator (a processor coroutine, sensor
calls, the current-event context variable) and a background drainer task, then acks the batch in a
`finally`, so also when the body raised. For ingest's validate, which gets one Kafka message per
raw event, that machinery was a quarter of the process's CPU in the profile.

Kept from faust, as its stream iterator does them:
- events fetched before a rebalance (another generation, or while the flow is suspended) are not
  handed on (faust seeks the partitions back to their commits and they are read again);
- every event of an acking topic is tracked as unacknowledged until it is acked, so the offsets
  committed never pass an event not yet processed;
- errors thrown into the channel are raised here.

Changed: events not handed on are not acked either. faust's stream acks them, and a batch is taken
over up to `within_s`, so the check comes that much after the take: a worker stopped meanwhile
(SIGTERM: faust suspends the flow, then commits what is acked while its agents still run) acked a
batch it never processed, its last commit went past it, and the partitions' next owner began
after it: lost. Unacked, they are read again by whoever owns the partitions next (after a
rebalance, this worker: faust seeks to the commits). They were never tracked, so nothing waits
for them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

log = logging.getLogger(__name__)


async def event_batches(
    stream: Any, max_events: int, within_s: float, quiet_s: float | None = None
) -> AsyncIterator[list[Any]]:
    """Lists of up to `max_events` events: the first that arrives, and whatever follows within
    `within_s` of it (at once, if the queue holds enough already). With `quiet_s`, a batch also
    closes as soon as nothing arrived for that long: a burst (the results of closing windows) goes
    on when it ends instead of waiting out `within_s`, while a steady flow still fills batches."""
    app = stream.app
    queue = stream.channel.queue
    consumer = app.consumer
    unacked = consumer.unacked
    acking_topics = app.topics.acking_topics
    flow_active = app.flow_control.is_active
    loop = asyncio.get_running_loop()
    while True:
        try:
            taken = [await queue.get()]
            deadline = loop.time() + within_s
            while len(taken) < max_events:
                if not queue.empty():
                    taken.append(queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                wait = remaining if quiet_s is None else min(remaining, quiet_s)
                try:
                    taken.append(await asyncio.wait_for(queue.get(), wait))
                except TimeoutError:
                    break
        except StopAsyncIteration:
            # faust ends a channel by throwing this into its queue (the worker is stopping). Raised
            # inside an async generator it would turn into a RuntimeError, the agent would crash
            # and be restarted mid-shutdown, and the worker would take ~30 s longer to stop.
            return
        generation = app.consumer_generation_id
        active = flow_active()
        events = []
        for event in taken:
            message = event.message
            if not active or message.generation_id != generation:
                continue  # not acked: read again from the committed offset (see above)
            if message.topic in acking_topics and not message.tracked:
                message.tracked = True
                unacked.add(message)
            events.append(event)
        if len(events) < len(taken):
            log.info(
                "%d events taken as the flow stopped (a rebalance or a stop): left unacked, to be "
                "read again from the commits",
                len(taken) - len(events),
            )
        if not events:
            continue
        yield events
        # Reached only when the body finished: a batch whose body raised is never acked.
        for event in events:
            event.ack()
