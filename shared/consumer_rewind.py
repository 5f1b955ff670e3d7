"""A fix for faust-streaming 0.15's consumer losing messages after a start or rebalance.

faust's `Consumer.getmany` drops, without a word, fetched records of partitions that are not
active at that moment (e.g. still paused while tables recover). aiokafka's position has already
moved past them, so the next records of that partition arrive with a jump in offsets, which
faust's drain loop takes for a "gap" (meant for transaction markers and compacted topics) and
counts as acknowledged: the next commit skips the dropped records and nobody ever reads them.
Seen in the kill -9 tests as 100-200 raw events per partition never validated.

Here the records are not dropped silently: the partition is sought back to the first one it
dropped, so they are fetched again once it is active; and a jump in offsets (records fetched
around a seek that never reached a stream) makes the drain loop read them again instead of
counting them as done (see `drain_messages`).

Also: while a rebalance is under way, records of stream partitions are not handed on either (same
seek back): faust makes them active and seeks them to their committed offsets a moment before its
last flow resume, which empties the stream queues; what was handed on in between was lost (see
`getmany`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Generator
from typing import Any

from faust.transport import consumer as faust_consumer

log = logging.getLogger(__name__)


async def getmany(self: Any, timeout: float) -> AsyncIterator[tuple[Any, Any]]:
    """faust's `Consumer.getmany`, changed where records are not handed on (see the module's
    docstring): records of partitions not active yet are fetched again later, not dropped; and
    records of stream partitions wait (are fetched again) until the rebalance is over.

    That wait closes a window at the end of every rebalance: faust's table recovery resumes the
    stream partitions, seeks them to their committed offsets and only then resumes the flow, which
    empties the stream queues (`FlowControlEvent.resume`, meant for records of the previous
    generation). Records fetched and handed on in between were emptied out after the seek, so
    nothing fetched them again; and as the seek had set their read offset to the committed offset
    C (the next one to read, where `drain_messages` takes it for the last one read), the jump to the
    next record fetched read them again from C + 1 only. The record at C was never processed, and
    faust's commit went over it (its hole check lets a first acknowledged offset of C + 1 pass):
    exactly one canonical event missing from a CTR window after a worker joined or left.
    `app.rebalancing` is set when the partitions are revoked and cleared after that last resume;
    changelog partitions are not held (table recovery reads them meanwhile)."""
    records, active_partitions = await self._wait_next_records(timeout)
    generation_id = self.app.consumer_generation_id
    if records is None or self.should_stop:
        return
    if not self.flow_active:
        try:  # as faust does: records fetched while the flow is off are read again from the commit
            await self.perform_seek()
        except Exception as exc:
            log.warning("seek to committed offsets failed while the flow is off: %r", exc)
        return
    dropped: dict[Any, int] = {}  # partition -> first offset not handed on
    held: set[Any] = set()  # of those, stream partitions held back while a rebalance is under way
    for tp, record in self.scheduler.iterate(records):
        if tp in dropped:
            continue
        if not self.flow_active or self.app.consumer_generation_id != generation_id:
            break  # a rebalance: faust seeks every partition back to its committed offset
        if active_partitions is None or tp in active_partitions or tp in self._buffered_partitions:
            if self.app.rebalancing and not self._is_changelog_tp(tp):
                dropped[tp] = record.offset
                held.add(tp)
                continue
            self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
            yield tp, self._to_message(tp, record)
        else:
            dropped[tp] = record.offset
    assigned = self.assignment()
    for tp, offset in dropped.items():
        if tp in assigned:
            why = "the rebalance is not over" if tp in held else "not active yet"
            log.log(
                logging.DEBUG if tp in held else logging.INFO,
                "%s:%s %s: fetch again from offset %s",
                tp.topic,
                tp.partition,
                why,
                offset,
            )
            await self.seek(tp, offset)


class Resumed:
    """Awaitable that finishes a coroutine already run up to its first suspension: it passes on
    what the coroutine yields, and what its driver sends or throws back, as `await coro` would have
    from the start (the same delegation `yield from` does)."""

    __slots__ = ("coro", "first")

    def __init__(self, coro: Any, first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        yielded = self.first
        while True:
            try:
                sent = yield yielded
            except BaseException as exc:  # a cancellation, too, goes into the coroutine
                try:
                    yielded = self.coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    yielded = self.coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def drain_messages(self: Any, fetcher: Any) -> None:  # pragma: no cover (the fetcher loop)
    """faust's `Consumer._drain_messages` (faust-streaming 0.15.3, BSD licence), changed where a
    record arrives with a jump in offsets: faust records a "gap" there (meant for transaction
    markers and compacted topics) that the next commit counts as done, and hands on the record.
    The mesh's topics have no such gaps: a jump means records fetched around a seek (table
    recovery, a rebalance) that never reached a stream. So the partition is sought back to the
    first missing offset and the rest of this fetch for it is left out: nothing is skipped, and
    each partition is still handed on in offset order."""
    callback = self.callback
    getmany = self.getmany
    consumer_should_stop = self._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    commit_every = self._commit_every
    acks_enabled_for = self.app.topics.acks_enabled_for
    num_since_yield = 0
    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            self.diag.set_flag(faust_consumer.CONSUMER_FETCHING)
            ait = getmany(timeout=1.0)
            await self.sleep(0)
            if not self.should_stop:
                rewound: set[Any] = set()
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > 100:
                        await asyncio.sleep(0)
                        num_since_yield = 0
                    if tp in rewound:
                        continue
                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is None or offset >= r_offset:
                        if offset - (r_offset or 0) > 1 and r_offset and acks_enabled_for(message.topic):
                            log.info(
                                "%s:%s: offsets %s..%s were fetched but never handed on: reading them again",
                                tp.topic,
                                tp.partition,
                                r_offset + 1,
                                offset - 1,
                            )
                            await self.seek(tp, r_offset + 1)
                            rewound.add(tp)
                            continue
                        if commit_every is not None and self._n_acked >= commit_every:
                            self._n_acked = 0
                            await self.commit()
                        # faust awaits every delivery inside wait_first (four tasks and an
                        # asyncio.wait per message, ~a third of validate's per-message cost);
                        # most deliveries finish without suspending, so run the first step here
                        # and only a delivery that does suspend goes through wait_first.
                        delivery = callback(message)
                        try:
                            suspended_on = delivery.send(None)
                        except StopIteration:
                            pass
                        else:
                            await self.wait_first(Resumed(delivery, suspended_on), self.suspend_flow.wait())
                        set_read_offset(tp, offset)
                self.diag.unset_flag(faust_consumer.CONSUMER_FETCHING)
    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        self.diag.unset_flag(faust_consumer.CONSUMER_FETCHING)


def install() -> None:
    faust_consumer.Consumer.getmany = getmany  # type: ignore[method-assign]
    faust_consumer.Consumer._drain_messages = drain_messages  # type: ignore[method-assign]
