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

Also: records handed to a stream while a rebalance finishes are no longer emptied out of its queue
by faust's second flow resume (`flow_control_resume`), and a record at exactly the committed
offset is no longer committed over when it was never acknowledged (`new_offset`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from faust.transport import consumer as faust_consumer
from mode.utils.queues import FlowControlEvent

log = logging.getLogger(__name__)


def _fetch_position(self: Any, tp: Any) -> int | None:
    """aiokafka's fetch position of `tp` (the next offset it will fetch), None if it has none."""
    try:
        state = self._thread._ensure_consumer()._subscription.subscription.assignment.state_value(tp)
    except Exception:  # not assigned (any more), no subscription: nothing to restore
        return None
    if state is None or not state.has_valid_position:
        return None
    return state.position


def _rewind_unhanded(self: Any, unhanded: dict[Any, tuple[int, int]], why: str) -> None:
    """Fetched records that no stream or table recovery got: seek each partition back to the first
    of them, unless its position was moved since (a seek by the recovery, or by a rebalance), in
    which case whoever moved it decided what is read next."""
    assigned = self.assignment()
    for tp, (first, last) in unhanded.items():
        if tp not in assigned or _fetch_position(self, tp) != last + 1:
            continue
        log.info("%s:%s: offsets %s..%s fetched %s: fetch again", tp.topic, tp.partition, first, last, why)
        # Synchronously, right after the check (as faust's Consumer.seek does it, without its await):
        # a recovery's seek must not slip in between and be overridden.
        self._thread.seek(tp, first)
        self._read_offset[tp] = first or None


async def getmany(self: Any, timeout: float) -> AsyncIterator[tuple[Any, Any]]:
    records, active_partitions = await self._wait_next_records(timeout)
    generation_id = self.app.consumer_generation_id
    if records is None or self.should_stop:
        return
    if not self.flow_active:
        # Records fetched while the flow is off (a rebalance began while the fetch waited; with every
        # partition paused, aiokafka's fetched_records() gets an empty filter and returns records of
        # *every* partition, table changelogs included). faust seeks the stream partitions back to
        # their committed offsets, but a changelog partition has none: if its table recovery had
        # already sought it, the records it waits for would be gone and the recovery would never
        # finish (in_recovery forever, every stream partition paused: the whole worker stalls).
        _rewind_unhanded(
            self,
            {tp: (rs[0].offset, rs[-1].offset) for tp, rs in records.items() if rs},
            "while the flow was off",
        )
        try:  # as faust does: records fetched while the flow is off are read again from the commit
            await self.perform_seek()
        except Exception as exc:
            log.warning("seek to committed offsets failed while the flow is off: %r", exc)
        return
    dropped: dict[Any, int] = {}  # partition -> first offset not handed on
    last: dict[Any, int] = {tp: rs[-1].offset for tp, rs in records.items() if rs}
    stopped = False
    for tp, record in self.scheduler.iterate(records):
        if tp in dropped:
            continue
        if not self.flow_active or self.app.consumer_generation_id != generation_id:
            # a rebalance: faust seeks every stream partition back to its committed offset, but
            # not the changelog partitions a table recovery reads (see above)
            dropped[tp] = record.offset
            stopped = True
            continue
        if active_partitions is None or tp in active_partitions or tp in self._buffered_partitions:
            self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
            yield tp, self._to_message(tp, record)
        else:
            dropped[tp] = record.offset
    if stopped:
        _rewind_unhanded(self, {tp: (first, last[tp]) for tp, first in dropped.items()}, "across a rebalance")
        return
    assigned = self.assignment()
    for tp, offset in dropped.items():
        if tp in assigned:
            log.info("%s:%s not active yet: fetch again from offset %s", tp.topic, tp.partition, offset)
            await self.seek(tp, offset)


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
                        await self.wait_first(callback(message), self.suspend_flow.wait())
                        if get_read_offset(tp) != r_offset:
                            # The partition was sought meanwhile (the seek to the committed
                            # offsets that ends a rebalance): its read offset is the seek's now,
                            # and the rest of this fetch predates it.
                            rewound.add(tp)
                            continue
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


def flow_control_resume(self: Any) -> None:
    """mode's `FlowControlEvent.resume`, which empties the stream queues only when the flow was
    suspended.

    faust resumes the flow twice after a rebalance: when table recovery starts (to read the
    changelogs), and again at its end, after it resumed the input partitions and sought them to
    their committed offsets. Between the two, the fetcher already hands records of the input
    partitions to the streams, and the second resume emptied their queues: those records were
    counted as read but never processed nor acknowledged, and the commit after the next
    acknowledged record skipped them (see `new_offset`). Seen as exactly one canonical event of a
    partition the worker kept or took over missing from its CTR window after a rebalance.
    Everything queued while the flow is on belongs to the current generation (a revoke suspends
    the flow and empties the queues itself)."""
    was_suspended = not self.is_active()
    self._suspend.clear()
    self._resume.set()
    if was_suspended:
        self.clear()


def new_offset(self: Any, tp: Any) -> Any:
    """faust's `Consumer._new_offset` (faust-streaming 0.15.3, BSD licence): the offset to commit
    for `tp`, the end of the run of acknowledged offsets that starts at the committed offset.

    faust's check for a hole at the head of that run is off by one: the committed offset is the
    next offset to read (Kafka's meaning, as faust commits and seeks it), but faust allowed the
    first acknowledged offset to be one past it, so a record at exactly the committed offset that
    was never acknowledged was committed over. Here the run must start at the committed offset."""
    acked = self._acked[tp]
    if acked:
        max_offset = max(acked)
        gap_for_tp = self._gap[tp]
        if gap_for_tp:
            candidates = gap_for_tp.overlap(0, max_offset)
            sorted_candidates = sorted(candidates, key=lambda x: x.begin)
            if sorted_candidates:
                stuff_to_add: list[int] = []
                for entry in sorted_candidates:
                    stuff_to_add.extend(range(entry.begin, entry.end))
                new_max_offset = max(stuff_to_add[-1], max_offset + 1)
                acked.extend(stuff_to_add)
                gap_for_tp.chop(0, new_max_offset)
        acked.sort()
        committed_offset = self._committed_offset[tp]
        if committed_offset is not None and acked[0] > committed_offset:
            return None  # the record at the committed offset is not acknowledged yet
        batch = next(faust_consumer.consecutive_numbers(acked))
        acked[: len(batch)] = []
        self._acked_index[tp].difference_update(batch)
        return batch[-1] + 1
    return None


def install() -> None:
    faust_consumer.Consumer.getmany = getmany  # type: ignore[method-assign]
    faust_consumer.Consumer._drain_messages = drain_messages  # type: ignore[method-assign]
    faust_consumer.Consumer._new_offset = new_offset  # type: ignore[method-assign]
    FlowControlEvent.resume = flow_control_resume  # type: ignore[method-assign]
