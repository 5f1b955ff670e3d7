"""Event-time progress across a stage boundary.

Each stage broadcasts, after each batch, a marker per input partition it owns to every partition of
its output topic: "source S has seen event time up to T". A downstream partition's watermark is the
minimum over all upstream sources it expects, so a fast upstream partition cannot make a slow one's
events look late — even while a backlog is drained in any interleaving.

A source with nothing to read is not waited for: its stage marks it idle (its consumer has read
everything there is, see shared.source_idleness), and idle sources are left out of the minimum
(the Flink model). A source that is merely behind is never idle, so catching up stays exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

NEG_INF = -(2**62)
MARKER_KIND = "wm"


def encode_marker(source: str, event_time_ms: int, of: int, idle: bool = False) -> bytes:
    return orjson.dumps({"kind": MARKER_KIND, "src": source, "ts": event_time_ms, "of": of, "idle": idle})


@dataclass
class SourceProgress:
    event_time_ms: int
    idle: bool


@dataclass
class MultiSourceWatermark:
    """Minimum event-time progress over the active upstream sources of one partition.
    Never goes back."""

    expected_sources: int = 0
    sources: dict[str, SourceProgress] = field(default_factory=dict)
    value: int = NEG_INF

    def observe(self, source: str, event_time_ms: int, of: int, idle: bool = False) -> int:
        self.expected_sources = max(self.expected_sources, of)
        prev = self.sources.get(source)
        ts = event_time_ms if prev is None else max(prev.event_time_ms, event_time_ms)
        self.sources[source] = SourceProgress(ts, idle)
        return self.recompute()

    @property
    def all_idle(self) -> bool:
        return bool(self.sources) and all(p.idle for p in self.sources.values())

    def recompute(self) -> int:
        if len(self.sources) < self.expected_sources:
            return self.value  # a source we have not heard from yet could hold older events
        active = [p.event_time_ms for p in self.sources.values() if not p.idle]
        if active:
            self.value = max(self.value, min(active))
        return self.value
