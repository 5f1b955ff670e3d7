"""An independent oracle: what the mesh must report, computed from the sent messages alone.

Written from the issue's rules, not from the services' code: validation (what is malformed), dedup
by id (first wins), click→impression join (no impression anywhere = orphan), event-time tumbling
windows, and lateness. Lateness depends on the watermark, which depends on processing order; the
oracle uses bounds that hold for any order instead:
- upper bound: when an event is windowed, the watermark is at most (max event time sent so far,
  up to and including the event, or its impression for a click sent first) - watermark delay;
  so an event whose window end + allowed lateness is above that is certainly counted;
- the test stream's far-too-late events are hours older than everything, so certainly late.
Any event between the two is ambiguous and the oracle refuses it (the stream must not contain any).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson

MIN_TS = 946_684_800_000
FUTURE_SKEW = 3_600_000
MAX_BYTES = 65_536


@dataclass(frozen=True)
class Sent:
    topic_kind: str  # "impressions" | "clicks"
    value: bytes
    src: str  # topic:partition:offset the broker gave it


@dataclass
class Expected:
    windows: dict[tuple[str, int], list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0]))
    dead: set[str] = field(default_factory=set)
    duplicate: set[str] = field(default_factory=set)
    orphan: set[str] = field(default_factory=set)
    late: set[str] = field(default_factory=set)
    counted: int = 0

    def total(self) -> int:
        return self.counted + len(self.dead) + len(self.duplicate) + len(self.orphan) + len(self.late)


def _id(o: dict[str, Any], f: str) -> str | None:
    v = o.get(f)
    if isinstance(v, bool) or not isinstance(v, str | int):
        return None
    s = str(v).strip()
    return s if s and len(s) <= 256 else None


def _valid(raw: bytes, ids: tuple[str, ...], now_ms: int) -> dict[str, Any] | None:
    if len(raw) > MAX_BYTES:
        return None
    try:
        o = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(o, dict) or any(_id(o, f) is None for f in ids):
        return None
    ts = o.get("event_timestamp")
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        return None
    if not MIN_TS <= int(ts) <= now_ms + FUTURE_SKEW:
        return None
    for f in ("device_type", "browser"):
        if o.get(f) is not None and not isinstance(o[f], str):
            return None
    cost = o.get("cost", 0)
    if cost is not None and (
        isinstance(cost, bool)
        or not isinstance(cost, int | float)
        or not math.isfinite(cost)
        or not 0 <= cost <= 1_000_000
    ):
        return None
    return o


def expected(
    sent: list[Sent], *, window_ms: int, lateness_ms: int, delay_ms: int, stream_start_ms: int, now_ms: int
) -> Expected:
    exp = Expected()
    imp_fields = ("impression_id", "user_id", "campaign_id", "ad_id")
    click_fields = ("click_id", "impression_id", "user_id")
    parsed: list[dict[str, Any] | None] = [
        _valid(m.value, imp_fields if m.topic_kind == "impressions" else click_fields, now_ms) for m in sent
    ]
    # Where each impression first appears (position) and its campaign: clicks join to it.
    first_imp: dict[str, tuple[int, dict[str, Any]]] = {}
    for i, (m, o) in enumerate(zip(sent, parsed, strict=True)):
        if o is not None and m.topic_kind == "impressions":
            first_imp.setdefault(str(o["impression_id"]).strip(), (i, o))

    prefix_max: list[int] = []
    top = -(2**62)
    for o in parsed:
        if o is not None and int(o["event_timestamp"]) >= stream_start_ms - 3_600_000:
            top = max(top, int(o["event_timestamp"]))
        prefix_max.append(top)

    seen_imp: set[str] = set()
    seen_click: set[str] = set()
    for i, (m, o) in enumerate(zip(sent, parsed, strict=True)):
        if o is None:
            exp.dead.add(m.src)
            continue
        ts = int(o["event_timestamp"])
        if m.topic_kind == "impressions":
            key = str(o["impression_id"]).strip()
            if key in seen_imp:
                exp.duplicate.add(m.src)
                continue
            seen_imp.add(key)
            campaign, released_at = str(o["campaign_id"]).strip(), i
            values = [1, 0, round(float(o.get("cost") or 0) * 1_000_000)]
        else:
            key = str(o["click_id"]).strip()
            if key in seen_click:
                exp.duplicate.add(m.src)
                continue
            seen_click.add(key)
            imp = first_imp.get(str(o["impression_id"]).strip())
            if imp is None:
                exp.orphan.add(m.src)
                continue
            campaign, released_at = str(imp[1]["campaign_id"]).strip(), max(i, imp[0])
            values = [0, 1, 0]
        start = ts - ts % window_ms
        if ts < stream_start_ms - 3_600_000:
            exp.late.add(m.src)
            continue
        max_watermark = prefix_max[released_at] - delay_ms
        assert start + window_ms + lateness_ms > max_watermark, f"ambiguous lateness for {m.src} at ts={ts}"
        w = exp.windows[(campaign, start)]
        for j, v in enumerate(values):
            w[j] += v
        exp.counted += 1
    return exp


def summary(exp: Expected) -> Counter[str]:
    return Counter(
        counted=exp.counted,
        dead=len(exp.dead),
        duplicate=len(exp.duplicate),
        orphan=len(exp.orphan),
        late=len(exp.late),
    )
