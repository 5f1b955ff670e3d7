"""Event-time progress across a stage boundary.

Each stage broadcasts, after each batch, a marker per input partition it owns to every partition of
its output topic: "source S has seen event time up to T". A downstream partition's watermark is the
minimum over all upstream sources it expects (so a fast upstream partition cannot make a slow one's
events look late), ignoring sources that have been silent longer than the idle timeout (so a source
with no traffic cannot hold windows open forever). This is the Flink model, carried over Kafka.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import orjson

NEG_INF = -(2**62)
MARKER_KIND = "wm"


def encode_marker(source: str, event_time_ms: int, of: int) -> bytes:
    return orjson.dumps({"kind": MARKER_KIND, "src": source, "ts": event_time_ms, "of": of})


@dataclass
class SourceProgress:
    event_time_ms: int
    seen_at: float  # wall clock, monotonic seconds


@dataclass
class MultiSourceWatermark:
    """Minimum event-time progress over the upstream sources of one partition. Never goes back."""

    idle_timeout_s: float
    # Set at the first marker: from then on unseen sources are waited for up to the idle timeout.
    started_at: float | None = None
    expected_sources: int = 0
    sources: dict[str, SourceProgress] = field(default_factory=dict)
    value: int = NEG_INF

    def observe(self, source: str, event_time_ms: int, of: int, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        if self.started_at is None:
            self.started_at = now
        self.expected_sources = max(self.expected_sources, of)
        prev = self.sources.get(source)
        if prev is None or event_time_ms >= prev.event_time_ms:
            self.sources[source] = SourceProgress(event_time_ms, now)
        else:
            prev.seen_at = now
        return self.recompute(now)

    def recompute(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        active = [p.event_time_ms for p in self.sources.values() if now - p.seen_at <= self.idle_timeout_s]
        started = self.started_at if self.started_at is not None else now
        waiting_for_unseen = (
            len(self.sources) < self.expected_sources and now - started <= self.idle_timeout_s
        )
        if active and not waiting_for_unseen:
            self.value = max(self.value, min(active))
        return self.value
