"""An independent oracle for the engagement facts, computed from the sent messages alone.

Written from the issue's rules, not from the services' code:
- validation of the four raw formats (what is dead-lettered), normalization (ids stripped, optional
  strings defaulted, ad-event nanoseconds and clickstream ISO-8601 turned into epoch ms);
- dedup: impressions by impression_id and clicks by click_id (first wins), ad-events and
  clickstream events (no id) by identical content; clicks join the first impression with their
  impression_id (device from the impression, user from the click), clicks without one are orphans;
- event-time tumbling windows and lateness with the bounds of tests/oracle.py: an event far older
  than the stream start is late, any other must be certainly counted (the oracle refuses a stream
  where that is ambiguous);
- the metrics: device (impressions, clicks, ctr, distinct users, conversions = ad conversions +
  purchases), user (views = impressions + item views, clicks, purchases, distinct non-empty sessions,
  first/last seen), item (views, clicks, carts, purchases, purchases/views), experiment arms per
  window (distinct users, distinct buyers) and over the whole stream (the readout's input).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from tests.oracle import FUTURE_SKEW, MAX_BYTES, MIN_TS, Sent, _valid

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
AD_EVENT_KINDS = {"view": "impression", "click": "click", "purchase": "conversion"}
CLICKSTREAM_KINDS = {
    "view": "item_view",
    "click": "item_click",
    "add_to_cart": "add_to_cart",
    "purchase": "purchase",
}
# The fields that make an id-less event what it is: the same values twice = the same event.
AD_EVENT_FIELDS = ("user_id", "page_id", "ad_id", "campaign_id", "ad_type", "event_type", "event_time_ns")
AD_EVENT_FIELDS += ("window_id", "ip_address")
CLICKSTREAM_FIELDS = ("user_id", "item_id", "interaction_type", "timestamp", "experiment_name")
CLICKSTREAM_FIELDS += ("experiment_variation", "session_id", "device_name")


class Invalid(Exception):
    pass


def _obj(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_BYTES:
        raise Invalid
    try:
        o = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Invalid from None
    if not isinstance(o, dict):
        raise Invalid
    return o


def _id(o: dict[str, Any], f: str) -> str:
    v = o.get(f)
    if isinstance(v, bool) or not isinstance(v, str | int):
        raise Invalid
    s = str(v).strip()
    if not s or len(s) > 256:
        raise Invalid
    return s


def _opt(o: dict[str, Any], f: str, default: str) -> str:
    v = o.get(f)
    if v is None:
        return default
    if not isinstance(v, str):
        raise Invalid
    return v.strip()[:256] or default


def _in_range(ts: int, now_ms: int) -> int:
    if not MIN_TS <= ts <= now_ms + FUTURE_SKEW:
        raise Invalid
    return ts


def _clickstream_ms(v: Any, now_ms: int) -> int:
    if isinstance(v, str):
        try:
            dt = datetime.fromisoformat(v.strip())
        except ValueError:
            raise Invalid from None
        if dt.tzinfo is None:
            raise Invalid
        return _in_range((dt - EPOCH) // timedelta(milliseconds=1), now_ms)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise Invalid
    return _in_range(int(v), now_ms)


@dataclass(frozen=True)
class Event:
    """A valid raw message, normalized; `dedup` says which other messages are the same event."""

    kind: str
    user: str
    ts: int
    device: str = "unknown"
    item: str = ""
    session: str = ""
    experiment: str = ""
    variation: str = ""
    dedup: tuple[str, ...] = ()
    impression_id: str = ""


def parse(m: Sent, now_ms: int) -> Event | None:
    try:
        if m.topic_kind in ("impressions", "clicks"):
            return _parse_ad_log(m, now_ms)
        o = _obj(m.value)
        if m.topic_kind == "ad_events":
            kind = AD_EVENT_KINDS[o["event_type"]] if isinstance(o.get("event_type"), str) else None
            ns = o.get("event_time_ns")
            if kind is None or isinstance(ns, bool) or not isinstance(ns, int):
                return None
            for f in ("campaign_id", "ad_id"):
                _id(o, f)
            for f in ("page_id", "ad_type"):
                _opt(o, f, "unknown")
            dedup = ("ad_events", *(orjson.dumps(o.get(f)).decode() for f in AD_EVENT_FIELDS))
            return Event(kind, _id(o, "user_id"), _in_range(ns // 1_000_000, now_ms), dedup=dedup)
        kind = (
            CLICKSTREAM_KINDS[o["interaction_type"]] if isinstance(o.get("interaction_type"), str) else None
        )
        if kind is None:
            return None
        dedup = ("clickstream", *(orjson.dumps(o.get(f)).decode() for f in CLICKSTREAM_FIELDS))
        return Event(
            kind,
            _id(o, "user_id"),
            _clickstream_ms(o.get("timestamp"), now_ms),
            device=_opt(o, "device_name", "unknown"),
            item=_id(o, "item_id"),
            session=_id(o, "session_id"),  # required: sessions are a user metric
            experiment=_opt(o, "experiment_name", ""),
            variation=_opt(o, "experiment_variation", ""),
            dedup=dedup,
        )
    except (Invalid, KeyError):
        return None


def _parse_ad_log(m: Sent, now_ms: int) -> Event | None:
    imp = m.topic_kind == "impressions"
    fields = (
        ("impression_id", "user_id", "campaign_id", "ad_id")
        if imp
        else ("click_id", "impression_id", "user_id")
    )
    o = _valid(m.value, fields, now_ms)  # tests/oracle.py: the impressions/clicks rules
    if o is None:
        return None
    device = _opt(o, "device_type", "unknown") if imp else ""
    key = ("impression", _id(o, "impression_id")) if imp else ("click", _id(o, "click_id"))
    user, ts = _id(o, "user_id"), int(o["event_timestamp"])
    return Event(key[0], user, ts, device=device, dedup=key, impression_id=_id(o, "impression_id"))


@dataclass
class Expected:
    # (device, window start) -> [impressions, clicks, {users}, conversions]
    device: dict[tuple[str, int], list[Any]] = field(
        default_factory=lambda: defaultdict(lambda: [0, 0, set(), 0])
    )
    # (user, window start) -> [views, clicks, purchases, {sessions}, first seen, last seen]
    user: dict[tuple[str, int], list[Any]] = field(
        default_factory=lambda: defaultdict(lambda: [0, 0, 0, set(), math.inf, -math.inf])
    )
    # (item, window start) -> [views, clicks, add to carts, purchases]
    item: dict[tuple[str, int], list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0, 0]))
    # (experiment, variation, window start or None for the whole stream) -> [{users}, {buyers}]
    experiment: dict[tuple[str, str, int | None], list[set[str]]] = field(
        default_factory=lambda: defaultdict(lambda: [set(), set()])
    )
    late: set[str] = field(default_factory=set)
    counted: int = 0

    def add(self, e: Event, start: int) -> None:
        self.counted += 1
        d = self.device[(e.device, start)]
        d[0] += e.kind == "impression"
        d[1] += e.kind == "click"
        d[2].add(e.user)
        d[3] += e.kind in ("conversion", "purchase")
        u = self.user[(e.user, start)]
        u[0] += e.kind in ("impression", "item_view")
        u[1] += e.kind in ("click", "item_click")
        u[2] += e.kind in ("conversion", "purchase")
        if e.session:
            u[3].add(e.session)
        u[4], u[5] = min(u[4], e.ts), max(u[5], e.ts)
        if e.item:
            i = self.item[(e.item, start)]
            for j, kind in enumerate(("item_view", "item_click", "add_to_cart", "purchase")):
                i[j] += e.kind == kind
        if e.experiment and e.variation:
            for window in (start, None):
                arm = self.experiment[(e.experiment, e.variation, window)]
                arm[0].add(e.user)
                if e.kind == "purchase":
                    arm[1].add(e.user)

    # --- the fact tables' expected rows (the columns the test reads back) ---------------------
    def device_rows(self) -> dict[tuple[str, int], tuple[Any, ...]]:
        return {
            k: (imp, clk, clk / imp if imp else 0.0, len(us), conv)
            for k, (imp, clk, us, conv) in self.device.items()
        }

    def user_rows(self) -> dict[tuple[str, int], tuple[Any, ...]]:
        return {k: (v, c, p, len(s), first, last) for k, (v, c, p, s, first, last) in self.user.items()}

    def item_rows(self) -> dict[tuple[str, int], tuple[Any, ...]]:
        return {k: (v, c, a, p, p / v if v else 0.0) for k, (v, c, a, p) in self.item.items()}

    def experiment_rows(self) -> dict[tuple[str, str, int], tuple[Any, ...]]:
        return {
            (name, var, w): (len(us), len(bs), len(bs) / len(us))
            for (name, var, w), (us, bs) in self.experiment.items()
            if w is not None
        }

    def arms(self) -> dict[str, dict[str, tuple[int, int]]]:
        """experiment -> variation -> (users, buyers) over the whole stream."""
        out: dict[str, dict[str, tuple[int, int]]] = defaultdict(dict)
        for (name, var, w), (us, bs) in self.experiment.items():
            if w is None:
                out[name][var] = (len(us), len(bs))
        return dict(out)


def expected(
    sent: list[Sent], *, window_ms: int, lateness_ms: int, delay_ms: int, stream_start_ms: int, now_ms: int
) -> Expected:
    exp = Expected()
    events = [parse(m, now_ms) for m in sent]
    first_imp: dict[str, tuple[int, Event]] = {}
    for i, e in enumerate(events):
        if e is not None and e.kind == "impression" and e.impression_id:
            first_imp.setdefault(e.impression_id, (i, e))
    old = stream_start_ms - 3_600_000
    prefix_max, top = [], -(2**62)
    for e in events:
        if e is not None and e.ts >= old:
            top = max(top, e.ts)
        prefix_max.append(top)

    seen: set[tuple[str, ...]] = set()
    for i, (m, e) in enumerate(zip(sent, events, strict=True)):
        if e is None or e.dedup in seen:
            continue
        seen.add(e.dedup)
        released_at = i
        if m.topic_kind == "clicks":
            joined = first_imp.get(e.impression_id)
            if joined is None:
                continue  # orphan
            released_at = max(i, joined[0])
            e = Event("click", e.user, e.ts, device=joined[1].device)
        if e.ts < old:
            exp.late.add(m.src)
            continue
        start = e.ts - e.ts % window_ms
        max_watermark = prefix_max[released_at] - delay_ms
        assert start + window_ms + lateness_ms > max_watermark, f"ambiguous lateness for {m.src} at ts={e.ts}"
        exp.add(e, start)
    return exp


def merge(into: Expected, other: Expected) -> None:
    """Streams sent one after another, far apart in event time, into one mesh: their windows are
    disjoint; the experiments must be too (each stream names its own)."""
    assert not set(into.arms()) & set(other.arms()), "streams must not share an experiment"
    for name in ("device", "user", "item", "experiment"):
        mine, theirs = getattr(into, name), getattr(other, name)
        assert not set(mine) & set(theirs), f"streams overlap in {name} windows"
        mine.update(theirs)
    into.late |= other.late
    into.counted += other.counted
