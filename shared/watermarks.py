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
from typing import Any

import orjson

NEG_INF = -(2**62)
MARKER_KIND = "wm"
MARKER_REPEAT_S = 1.0  # how often re-keying stages repeat their latest marker (watermark_relay)
# A source whose latest marker is older than this may have died: downstream does not flush on its
# word (generous, so that a loaded machine's slow marker only delays a flush).
MARKER_FRESH_S = 5 * MARKER_REPEAT_S


def encode_marker(source: str, event_time_ms: int, of: int, idle: bool = False) -> bytes:
    """ "source has seen event time up to ts" (idle: "... and has nothing left to read"), and when
    it said so ("at", wall-clock ms): an idle claim is believed only while it is fresh."""
    return orjson.dumps(
        {
            "kind": MARKER_KIND,
            "src": source,
            "ts": event_time_ms,
            "of": of,
            "idle": idle,
            "at": int(time.time() * 1000),
        }
    )


@dataclass
class SourceProgress:
    event_time_ms: int
    idle: bool
    said_at: float  # wall-clock seconds when the source said so (the marker's "at")


@dataclass
class MultiSourceWatermark:
    """Minimum event-time progress over the active upstream sources of one partition.
    Never goes back.

    "Idle" is a claim about one moment: new input may arrive right after it, or the stage that
    made it may die with input arriving behind it. So an idle claim counts only while it is fresh
    (said within MARKER_FRESH_S; idle stages repeat it every second); a stale one makes the
    source count as active again at its last event time, which holds the watermark there.

    Fresh is judged by the log's clock, not the reader's: "now" is the newest "at" read from this
    partition, plus the time since it was read. A reader that is behind (a backlog, a restart)
    sees each claim as fresh as it was when it was written, next to the events around it, so it
    decides what a reader keeping up decided. Judged by the wall clock, every claim read more
    than MARKER_FRESH_S behind was stale: a join 20 s behind validate held its watermark, and with
    it every window downstream, until the whole backlog was read. Once the reader has caught up,
    the log's clock runs on with the wall clock, so a stage that died stops vouching after
    MARKER_FRESH_S as before."""

    expected_sources: int = 0
    sources: dict[str, SourceProgress] = field(default_factory=dict)
    value: int = NEG_INF
    log_at: float | None = None  # newest "at" read here (upstream wall-clock seconds)
    log_read_at: float = 0.0  # when it was read (this process's wall clock)

    def now(self) -> float:
        """The log's clock: where "now" stands in the stream this partition is reading."""
        t = time.time()
        return t if self.log_at is None else self.log_at + (t - self.log_read_at)

    def observe(
        self, source: str, event_time_ms: int, of: int, idle: bool = False, said_at_ms: int | None = None
    ) -> int:
        self.expected_sources = max(self.expected_sources, of)
        prev = self.sources.get(source)
        ts = event_time_ms if prev is None else max(prev.event_time_ms, event_time_ms)
        said_at = said_at_ms / 1000 if said_at_ms is not None else time.time()
        if self.log_at is None or said_at > self.log_at:
            self.log_at, self.log_read_at = said_at, time.time()
        self.sources[source] = SourceProgress(ts, idle, said_at)
        return self.recompute()

    def observe_marker(self, marker: dict[str, Any]) -> int:
        return self.observe(
            marker["src"], marker["ts"], marker["of"], marker.get("idle", False), marker.get("at")
        )

    @staticmethod
    def _idle(p: SourceProgress, now: float) -> bool:
        return p.idle and now - p.said_at <= MARKER_FRESH_S

    @property
    def all_idle(self) -> bool:
        """Every expected source said recently that it has nothing left to read. Not before all
        were heard: right after a restart the first markers are often from empty topics'
        partitions (idle at once), and a source not yet heard from may be draining a backlog."""
        now = self.now()
        return len(self.sources) >= max(self.expected_sources, 1) and all(
            self._idle(p, now) for p in self.sources.values()
        )

    def describe(self) -> dict[str, object]:
        """For the /watermarks views: what this clock waits for, when a window does not close."""
        now = self.now()
        return {
            "watermark": self.value,
            "expected_sources": self.expected_sources,
            # how far behind the upstream's markers this reader is (freshness is judged there)
            "reading_behind_s": round(time.time() - now, 1),
            "sources": {
                name: {
                    "event_time_ms": p.event_time_ms,
                    "idle": p.idle,
                    "said_s_ago": round(now - p.said_at, 1),
                }
                for name, p in sorted(self.sources.items())
            },
        }

    def recompute(self) -> int:
        if len(self.sources) < self.expected_sources:
            return self.value  # a source we have not heard from yet could hold older events
        now = self.now()
        active = [p.event_time_ms for p in self.sources.values() if not self._idle(p, now)]
        # Every source, idle or not, has sent everything up to its event time, so the minimum over
        # all of them is always safe; leaving the idle ones out only lets it go further. When all
        # are idle that minimum is still progress: without it, a clock whose sources had all gone
        # idle by the time it heard the last of them (a backlog drained in one go) stayed at -inf.
        # (A source that never had an event, an empty topic, says nothing about event time.)
        progress = active or [p.event_time_ms for p in self.sources.values() if p.event_time_ms > NEG_INF]
        if progress:
            self.value = max(self.value, min(progress))
        return self.value
