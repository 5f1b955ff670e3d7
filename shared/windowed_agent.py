"""The event-time window machinery an aggregating service (ctr, engagement) runs per input partition.

Input: a topic of canonical events plus the watermark markers ingest broadcasts on every partition.
State: one changelogged faust table value per key (see shared.windows for its shape), written once
per key per batch. This class keeps the in-memory companions — per-partition watermark, which keys
hold windows — and decides what to emit; the service says how an event contributes and what a
result looks like.

Exact under replays (a crash anywhere, at-least-once Kafka): every canonical event carries `seq` =
[upstream partition, upstream offset, index], increasing per upstream partition in the order any key
receives them. A key's state remembers the last seq applied per upstream partition, in the same
changelog value as its counts, so a replayed or re-produced event is recognised and skipped. The
service writes states only after the batch's results are on the broker (`commit_states`), so a
state that says "applied" implies its results were delivered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from shared.app import partition_key, table_json
from shared.batch_output import BatchOutput
from shared.watermarks import NEG_INF, MultiSourceWatermark
from shared.windows import Emit, KeyState, Placement, WindowSpec, add, close, latest_open_end, new_state

Record = dict[str, Any]


@dataclass
class PartitionClock:
    """Event-time progress of one input partition."""

    progress: MultiSourceWatermark
    floor: int = NEG_INF  # raised by the idle flush and by the watermark restored after a restart
    closed_to: int = NEG_INF  # watermark of the last full close pass
    keys: set[bytes] = field(default_factory=set)  # keys that hold windows
    # watermark -> keys with a window whose end (emit) or end + grace (drop) it reaches. When the
    # watermark moves, only these keys can change: scanning every key with windows, as before,
    # made each live batch load and parse thousands of user states (44% of engagement at 3,500/s).
    due: dict[int, set[bytes]] = field(default_factory=dict)
    # keys with no window left, kept (with their replay marks) until the watermark moved on;
    # key -> watermark when retired, in that order (oldest first): expiry reads only the front
    retired: dict[bytes, int] = field(default_factory=dict)
    # events counted while the watermark was still unknown (-inf): nothing can be judged late then
    counted_before_watermark: int = 0


# Decoded states kept between batches, at most this many keys: decoding every touched key's state
# again each batch cost ~12% of engagement's aggregation (bench/engagement_cpu.py; a user's state
# is touched about once per batch). Retired keys (no window left) stay until deleted; beyond the
# cap, states are decoded from the table again, as before.
DECODED_STATES_MAX = 100_000

WATERMARK_KEY_PREFIX = b"\x00watermark:"  # cannot start a real key: they are ids and names


def watermark_key(partition: int, partitions: int) -> bytes:
    """The table key that persists `partition`'s watermark where the worker owning the partition
    restores it (it starts with WATERMARK_KEY_PREFIX)."""
    return partition_key("watermark", partition, partitions)


@dataclass
class BatchResult:
    emits: list[Emit] = field(default_factory=list)
    late: list[tuple[Record, int, int]] = field(default_factory=list)  # (event, window start, watermark)
    counted: int = 0
    replayed: int = 0  # events already applied before a restart: skipped
    # key -> new serialized state, or None to delete; applied by commit_states() after the flush
    writes: dict[bytes, bytes | None] = field(default_factory=dict)
    # key -> the input partition its state belongs to (KeyedTable.write_many need not hash it)
    write_partitions: dict[bytes, int] = field(default_factory=dict)
    # (partition, window start, window end) of every window the partition's watermark passed in
    # this batch, whether or not a key had events in it: proof that the partition's keys without
    # a result for it had none (ctr tells the anomaly service, for campaigns that went silent).
    passed: list[tuple[int, int, int]] = field(default_factory=list)
    # key -> its state as decoded and changed by this batch: kept decoded once `writes` are
    # applied (a batch that fails leaves them out, and they are decoded from the table again)
    loaded: dict[bytes, KeyState] = field(default_factory=dict)


def replay_mark(seq: list[int]) -> tuple[str, list[int]]:
    """seq = [source partition, position...] -> (source, position). A state keeps, under "u", the
    last position applied per source; positions compare as lists (an offset, then the place in a
    bundle and in the record's outputs, as far as the producing stage has them)."""
    return str(seq[0]), seq[1:]


class WindowedAggregation:
    def __init__(
        self,
        table: Any,
        spec: WindowSpec,
        idle_timeout_s: float,
        partitions: int,
        assigned: Callable[[], set[int] | None] = lambda: None,
    ) -> None:
        self.table = table  # MutableMapping[bytes, bytes]: key -> orjson(KeyState + {"p": partition})
        self._get = getattr(table, "get_stored", table.get)  # a KeyedTable's fast path
        self.spec = spec
        self.idle_timeout_s = idle_timeout_s
        self.partition_count = partitions
        # Input partitions this worker owns now (None: unknown, e.g. in unit tests = all). The
        # in-memory table may still hold keys of partitions another worker took over: faust's
        # memory store forgets only keys it restored, not keys written here.
        self.assigned = assigned
        # A replay after a crash reaches back seconds; keep replay marks far longer than that.
        self.retain_ms = 10 * (spec.duration_ms + spec.grace_ms + spec.delay_ms)
        self.partitions: dict[int, PartitionClock] = {}
        # key -> state as written to the table by the last committed batch (see DECODED_STATES_MAX).
        # A batch takes its keys out, so a batch that fails never leaves its changes here.
        self._decoded: dict[bytes, KeyState] = {}
        self.last_input_at = time.monotonic()
        self.lock = asyncio.Lock()  # the batch body and the idle flush must not interleave
        # partition -> (key, stored watermark, holds windows) of the recovered table, not yet
        # taken into a clock; None: not read since the last rebalance.
        self._restored: dict[int, list[tuple[bytes, int, bool]]] | None = None

    # -- partitions --------------------------------------------------------------------------
    def forget_partitions(self) -> None:
        """After a rebalance: the table may now hold other partitions (or newer state written by
        another worker); each partition's clock is rebuilt from it when the partition is next
        used, i.e. after faust finished recovering the tables."""
        self.partitions.clear()
        self._decoded.clear()
        self._restored = None

    def clock(self, p: int) -> PartitionClock:
        c = self.partitions.get(p)
        if c is None:
            c = self.partitions[p] = PartitionClock(MultiSourceWatermark())
            self._restore(p, c)
        return c

    def _restore(self, p: int, c: PartitionClock) -> None:
        """Learn from the recovered table which keys of partition `p` hold windows and how far
        it got. Per partition, when it is first used: a partition is used only while it is ours
        (its events or markers arrive, or it is flushed while assigned), whereas "which partitions
        are ours" is unknown while a rebalance is finishing, when the first batch may already run."""
        if self._restored is None:
            self._restored = {}
            for key, raw in self.table.items():
                state = orjson.loads(raw)
                self._restored.setdefault(state["p"], []).append((key, state["wm"], bool(state["w"])))
        # Oldest first, so that `retired` is in the order its entries expire.
        for key, wm, has_windows in sorted(self._restored.pop(p, []), key=lambda r: r[1]):
            c.floor = max(c.floor, wm)
            if key.startswith(WATERMARK_KEY_PREFIX):
                continue
            if has_windows:
                c.keys.add(key)
                # Their windows' ends are not read yet: visited at the first move, indexed then.
                c.due.setdefault(NEG_INF, set()).add(key)
            else:
                c.retired[key] = wm

    def describe(self) -> dict[int, dict[str, object]]:
        owned = self.assigned()
        no_input_s = round(time.monotonic() - self.last_input_at, 1)
        return {
            p: {
                "watermark": self.watermark(c),
                "floor": c.floor,
                "closed_to": c.closed_to,
                "counted_before_watermark": c.counted_before_watermark,
                "keys_with_open_windows": len(c.keys),
                "all_sources_idle": c.progress.all_idle,
                # what the idle flush also needs: no input for its timeout, and the partition owned
                "no_input_for_s": no_input_s,
                "owned": owned is None or p in owned,
                "upstream": c.progress.describe(),
            }
            for p, c in sorted(self.partitions.items())
        }

    def watermark(self, c: PartitionClock) -> int:
        return max(self.spec.watermark(c.progress.recompute()), c.floor)

    # -- one batch ---------------------------------------------------------------------------
    def process(
        self,
        events: Iterable[tuple[int, Any, Record]],  # key: bytes (None for a marker: not read)
        contribute: Callable[[Record], Callable[[list[Any] | None], list[Any]] | None],
    ) -> BatchResult:
        """events: (partition, key, decoded record). `contribute(rec)` returns how the record
        changes its window's aggregate, or None if this aggregation ignores it."""
        result = BatchResult()
        states = result.loaded
        new_windows: dict[bytes, list[int]] = {}  # key -> starts of the windows this batch opened
        touched: dict[int, set[bytes]] = {}
        # Each partition's watermark, known until its next marker: recomputing it (a minimum over
        # the upstream sources, with their idle clocks) for every record cost more than counting.
        watermarks: dict[int, int] = {}
        spec, start_of = self.spec, self.spec.start
        clocks = self.partitions
        had_input = False
        for p, key, rec in events:
            c = clocks.get(p)
            if c is None:
                c = self.clock(p)
            if rec.get("kind") == "wm":
                # Markers are not input: they keep coming (repeated) when nothing happens.
                c.progress.observe_marker(rec)
                watermarks.pop(p, None)
                touched.setdefault(p, set())
                continue
            had_input = True
            fn = contribute(rec)
            if fn is None:
                continue
            state = states.get(key)
            if state is None:
                state = states[key] = self._load(key)
            seq = rec.get("seq")
            if seq is not None:
                # Inline (per event and key): the mark is computed once for the check and the update.
                source, position = replay_mark(seq)
                marks = state.get("u")
                if marks is None:
                    marks = state["u"] = {}
                last = marks.get(source)
                if last is not None and position <= last:
                    result.replayed += 1
                    continue
            wm = watermarks.get(p)
            if wm is None:
                wm = watermarks[p] = self.watermark(c)
            held = len(state["w"])
            if add(state, spec, rec["ts"], wm, fn) is Placement.LATE:
                result.late.append((rec, start_of(rec["ts"]), wm))
                continue
            if len(state["w"]) > held:
                new_windows.setdefault(key, []).append(start_of(rec["ts"]))
            if wm <= NEG_INF:
                c.counted_before_watermark += 1
            if seq is not None:
                state["u"][source] = position
            result.counted += 1
            keys = touched.get(p)
            if keys is None:
                keys = touched[p] = set()
            keys.add(key)
            c.keys.add(key)
            c.retired.pop(key, None)
            state["p"] = p
        if had_input:
            self.last_input_at = time.monotonic()
        for p, keys in touched.items():
            self._close_partition(p, keys, states, result, new_windows)
        return result

    def flush_idle(self) -> BatchResult:
        """With no input for the idle timeout, close every open window of a partition whose
        upstream sources all say (recently) that they have read everything there is, as if time
        had passed. Not on silence alone: a stage that crashed is silent too, and what it had
        read would arrive after the flush, as late."""
        result = BatchResult()
        if time.monotonic() - self.last_input_at < self.idle_timeout_s:
            return result
        owned = self.assigned()
        if owned is not None and not owned:
            return result  # mid-rebalance, or nothing assigned: nothing here is safely ours
        states = result.loaded
        for p, c in self.partitions.items():
            if not c.keys or (owned is not None and p not in owned):
                continue
            if not c.progress.all_idle:
                continue
            for key in c.keys:
                states[key] = self._load(key)
            c.floor = max(c.floor, latest_open_end((states[k] for k in c.keys), self.spec))
            self._close_partition(p, set(), states, result)
        return result

    def commit_states(self, result: BatchResult) -> None:
        """Write the batch's state changes; call only once its results are on the broker."""
        for key, value in result.writes.items():
            if value is not None:
                self.table[key] = value
            elif key in self.table:
                del self.table[key]
        self._keep_decoded(result)

    async def write_states(self, result: BatchResult, out: BatchOutput) -> None:
        """commit_states for a KeyedTable (the services' case): all changelog records in one
        Kafka batch per partition, acknowledged before this returns."""
        await self.table.write_many(out, result.writes, result.write_partitions)
        await out.flush()
        self._keep_decoded(result)

    def _keep_decoded(self, result: BatchResult) -> None:
        """The batch's states are the table's now: keep them decoded for the next batch."""
        decoded = self._decoded
        room = DECODED_STATES_MAX - len(decoded)
        for key, state in result.loaded.items():
            if result.writes.get(key, b"") is None:
                continue  # deleted
            if room <= 0:
                break
            decoded[key] = state
            room -= 1
        for key, value in result.writes.items():
            if value is None:
                decoded.pop(key, None)

    def _close_partition(
        self,
        p: int,
        touched: set[bytes],
        states: dict[bytes, KeyState],
        result: BatchResult,
        new_windows: dict[bytes, list[int]] | None = None,
    ) -> None:
        c = self.partitions[p]
        wm = self.watermark(c)
        # Only a watermark that moved can close windows of keys this batch did not touch, and only
        # of the keys with a window end (or end + grace) it reached.
        moved = wm > c.closed_to
        due_now: set[bytes] = set()
        restored: set[bytes] = set()  # keys whose windows were never indexed (see _restore)
        if moved:
            for threshold in [t for t in c.due if t <= wm]:
                keys = c.due.pop(threshold)
                if threshold == NEG_INF:
                    restored = keys
                due_now |= keys
        duration, grace = self.spec.duration_ms, self.spec.grace_ms
        due = c.due
        new_windows = new_windows or {}
        for key in touched | due_now:
            state = states.get(key)
            if state is None:
                state = states[key] = self._load(key)
            held = len(state["w"])
            emits = close(key.decode(), state, self.spec, wm)
            result.emits.extend(emits)
            if not state["w"]:
                c.keys.discard(key)
                c.retired.pop(key, None)  # to the back: `retired` stays in watermark order
                c.retired[key] = wm
            else:
                # Indexed: the windows opened in this batch, or all of a restored key's. The other
                # windows' thresholds above the watermark are still indexed: only the pop above
                # removes entries, and what it removed the close pass just handled (emitted, or
                # dropped). Re-indexing every touched key cost 7% of engagement live; re-indexing
                # every window of a key given a new one, or taken out of `due`, ~2% of its
                # aggregation in bench/engagement_cpu.py (a user holds ~7 windows of 5 s there).
                if key in restored:
                    starts = [int(slot) for slot in state["w"]]
                else:
                    starts = [s for s in new_windows.get(key, ()) if str(s) in state["w"]]
                for start in starts:
                    end = start + duration
                    if end > wm:
                        bucket = due.get(end)
                        if bucket is None:
                            bucket = due[end] = set()
                        bucket.add(key)
                    bucket = due.get(end + grace)
                    if bucket is None:
                        bucket = due[end + grace] = set()
                    bucket.add(key)
            if key in touched or emits or held != len(state["w"]):
                # An untouched, unchanged key is not rewritten: its stored "wm" may lag, which only
                # makes the floor restored after a restart conservative.
                state["p"] = p
                result.writes[key] = table_json(state)
                result.write_partitions[key] = p
        if moved:
            # From the last pass, or after a restart from the watermark restored: what the worker
            # before may have reported already is reported again, which proves nothing new.
            before = c.closed_to if c.closed_to > NEG_INF else c.floor
            result.passed.extend((p, start, end) for start, end in self.spec.passed(before, wm))
            c.closed_to = wm
            # Only the front: the watermark only grows, so the oldest retirements expire first.
            # (Scanning all of them cost 0.18 us per retired key on every move: 18 ms with 100k.)
            expired = []
            for key, since in c.retired.items():
                if wm - since <= self.retain_ms:
                    break
                expired.append(key)
            for key in expired:
                result.writes[key] = None
                result.write_partitions[key] = p
                del c.retired[key]
            # Persisted so that after a restart no window that was already closed and dropped can
            # be opened again by an event that is late (the restored watermark is the floor).
            wm_key = watermark_key(p, self.partition_count)
            result.writes[wm_key] = table_json({"p": p, "wm": wm, "w": {}})
            result.write_partitions[wm_key] = p

    def _load(self, key: bytes) -> KeyState:
        state = self._decoded.pop(key, None)
        if state is not None:
            return state
        raw = self._get(key)
        return orjson.loads(raw) if raw is not None else new_state()
