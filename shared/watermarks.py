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

import time
from dataclasses import dataclass, field

import orjson

NEG_INF = -(2**62)
MARKER_KIND = "wm"
MARKER_REPEAT_S = 1.0  # how often re-keying stages repeat their latest marker (watermark_relay)
# A source whose latest marker is older than this may have died: downstream does not flush on its
# word (generous, so that a loaded machine's slow marker only delays a flush).
MARKER_FRESH_S = 5 * MARKER_REPEAT_S


def encode_marker(source: str, event_time_ms: int, of: int, idle: bool = False) -> bytes:
    return orjson.dumps({"kind": MARKER_KIND, "src": source, "ts": event_time_ms, "of": of, "idle": idle})


@dataclass
class SourceProgress:
    event_time_ms: int
    idle: bool
    heard_at: float = 0.0  # time.monotonic() of its latest marker


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
        self.sources[source] = SourceProgress(ts, idle, time.monotonic())
        return self.recompute()

    @property
    def all_idle(self) -> bool:
        """Every expected source said it has nothing left to read. Not before all were heard:
        right after a restart the first markers are often from empty topics' partitions (idle at
        once), and a source not yet heard from may be draining a backlog."""
        return len(self.sources) >= max(self.expected_sources, 1) and all(
            p.idle for p in self.sources.values()
        )

    def settled(self, max_age_s: float) -> bool:
        """All sources idle, and each said so recently: a stage that died is no longer heard,
        and what it had read but not yet forwarded would arrive after any flush made now."""
        now = time.monotonic()
        return self.all_idle and all(now - p.heard_at <= max_age_s for p in self.sources.values())

    def describe(self) -> dict[str, object]:
        """For the /watermarks views: what this clock waits for, when a window does not close."""
        now = time.monotonic()
        return {
            "watermark": self.value,
            "expected_sources": self.expected_sources,
            "sources": {
                name: {
                    "event_time_ms": p.event_time_ms,
                    "idle": p.idle,
                    "heard_s_ago": round(now - p.heard_at, 1),
                }
                for name, p in sorted(self.sources.items())
            },
        }

    def recompute(self) -> int:
        if len(self.sources) < self.expected_sources:
            return self.value  # a source we have not heard from yet could hold older events
        active = [p.event_time_ms for p in self.sources.values() if not p.idle]
        if active:
            self.value = max(self.value, min(active))
        return self.value
