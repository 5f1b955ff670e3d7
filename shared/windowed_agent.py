"""The event-time window machinery an aggregating service (ctr, engagement) runs per input partition.

Input: a topic of canonical events plus the watermark markers ingest broadcasts on every partition.
State: one changelogged faust table value per key (see shared.windows for its shape), written once
per key per batch. This class keeps the in-memory companions — per-partition watermark, which keys
hold windows — and decides what to emit; the service says how an event contributes and what a
result looks like.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from shared.watermarks import NEG_INF, MultiSourceWatermark
from shared.windows import Emit, KeyState, Placement, WindowSpec, add, close, latest_open_end, new_state

Record = dict[str, Any]


@dataclass
class PartitionClock:
    """Event-time progress of one input partition."""

    progress: MultiSourceWatermark
    floor: int = NEG_INF  # raised by the idle flush
    closed_to: int = NEG_INF  # watermark of the last full close pass
    keys: set[bytes] = field(default_factory=set)  # keys that hold windows


@dataclass
class BatchResult:
    emits: list[Emit] = field(default_factory=list)
    late: list[tuple[Record, int, int]] = field(default_factory=list)  # (event, window start, watermark)
    counted: int = 0


class WindowedAggregation:
    def __init__(self, table: Any, spec: WindowSpec, idle_timeout_s: float) -> None:
        self.table = table  # MutableMapping[bytes, bytes]: key -> orjson(KeyState + {"p": partition})
        self.spec = spec
        self.idle_timeout_s = idle_timeout_s
        self.partitions: dict[int, PartitionClock] = {}
        self.last_input_at = time.monotonic()
        self.lock = asyncio.Lock()  # the batch body and the idle flush must not interleave
        self._indexed = False

    # -- partitions --------------------------------------------------------------------------
    def clock(self, p: int) -> PartitionClock:
        if not self._indexed:
            self._index_restored_state()
        c = self.partitions.get(p)
        if c is None:
            c = self.partitions[p] = PartitionClock(MultiSourceWatermark(self.idle_timeout_s))
        return c

    def _index_restored_state(self) -> None:
        """After table recovery: learn which keys hold windows and how far each partition got."""
        self._indexed = True
        for key, raw in self.table.items():
            state = orjson.loads(raw)
            c = self.clock(state["p"])
            c.keys.add(key)
            c.floor = max(c.floor, state["wm"])

    def watermark(self, c: PartitionClock) -> int:
        return max(self.spec.watermark(c.progress.recompute()), c.floor)

    # -- one batch ---------------------------------------------------------------------------
    def process(
        self,
        events: Iterable[tuple[int, bytes, Record]],
        contribute: Callable[[Record], Callable[[list[Any] | None], list[Any]] | None],
    ) -> BatchResult:
        """events: (partition, key, decoded record). `contribute(rec)` returns how the record
        changes its window's aggregate, or None if this aggregation ignores it."""
        self.last_input_at = time.monotonic()
        result = BatchResult()
        states: dict[bytes, KeyState] = {}
        touched: dict[int, set[bytes]] = {}
        for p, key, rec in events:
            c = self.clock(p)
            if rec.get("kind") == "wm":
                c.progress.observe(rec["src"], rec["ts"], rec["of"])
                touched.setdefault(p, set())
                continue
            fn = contribute(rec)
            if fn is None:
                continue
            state = states.get(key)
            if state is None:
                state = states[key] = self._load(key)
            wm = self.watermark(c)
            if add(state, self.spec, rec["ts"], wm, fn) is Placement.LATE:
                result.late.append((rec, self.spec.start(rec["ts"]), wm))
            else:
                result.counted += 1
                touched.setdefault(p, set()).add(key)
                c.keys.add(key)
                state["p"] = p
        for p, keys in touched.items():
            self._close_partition(p, keys, states, result)
        return result

    def flush_idle(self) -> list[Emit]:
        """With no input for the idle timeout, close every open window as if time had passed."""
        if time.monotonic() - self.last_input_at < self.idle_timeout_s:
            return []
        result = BatchResult()
        states: dict[bytes, KeyState] = {}
        for p, c in self.partitions.items():
            if not c.keys:
                continue
            for key in c.keys:
                states[key] = self._load(key)
            c.floor = max(c.floor, latest_open_end((states[k] for k in c.keys), self.spec))
            self._close_partition(p, set(), states, result)
        return result.emits

    def _close_partition(
        self, p: int, touched: set[bytes], states: dict[bytes, KeyState], result: BatchResult
    ) -> None:
        c = self.partitions[p]
        wm = self.watermark(c)
        # Only a watermark that moved can close windows of keys this batch did not touch.
        keys = set(c.keys) if wm > c.closed_to else touched
        if wm > c.closed_to:
            c.closed_to = wm
        for key in keys:
            state = states.get(key)
            if state is None:
                state = states[key] = self._load(key)
            held = len(state["w"])
            emits = close(key.decode(), state, self.spec, wm)
            result.emits.extend(emits)
            if not state["w"]:
                c.keys.discard(key)
                if key in self.table:
                    del self.table[key]
            elif key in touched or emits or held != len(state["w"]):
                # An untouched, unchanged key is not rewritten: its stored "wm" may lag, which only
                # makes the floor restored after a restart conservative.
                state["p"] = p
                self.table[key] = orjson.dumps(state)

    def _load(self, key: bytes) -> KeyState:
        raw = self.table.get(key)
        return orjson.loads(raw) if raw is not None else new_state()
