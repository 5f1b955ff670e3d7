"""Deterministic traffic: arrivals -> events -> messages in send order, each with a truth label.

How it works: arrivals (impressions, ad-event views, clickstream views) come in event-time order;
the events they cause (clicks, carts, purchases) wait in a heap keyed by event time and are sent
when the stream reaches them. So without defects every message is in event-time order, and the
"stream clock" (max event time sent so far) is what out-of-order and late are measured against.
Defects are then injected around the counted messages, each labelled (see spec.TRUTH_LABELS).

Only one random.Random(spec.seed) is used, always in the same order: same spec -> same bytes.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson

from services.generator import model
from services.generator.malform import malform
from services.generator.spec import (
    CLICK_FIRST,
    DUPLICATE,
    LATE,
    LATE_MIN_AGE_MS,
    MALFORMED,
    ORPHAN,
    OUT_OF_ORDER,
    VALID,
    GeneratedMessage,
    InjectionRecord,
    TopicKind,
    TrafficSpec,
)

NEVER = -(2**62)
AD_EVENT_WINDOW_MS = 60_000  # ad-events carry the id (start ms) of their 1-minute tumbling window
SESSION_POOL = 256  # concurrently open clickstream sessions
NEW_SESSION_P = 0.2  # share of clickstream views that open a session (mean 5 views per session)
LIVE_LATE_WARMUP_MS = 60_000  # live mode: no late events before downstream watermarks have moved
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(slots=True)
class _Rec:
    """An event on its way to becoming a message. `fields` is in output order."""

    kind: TopicKind
    ts: int  # natural event time, ms
    key: bytes
    fields: dict[str, Any]
    after: int = NEVER  # event time of the event it follows: out-of-order must stay after it
    ns: int = 0  # ad-events: sub-millisecond nanoseconds
    tz: int | None = None  # clickstream: None = epoch ms, else ISO-8601 at this UTC offset (min)
    first_of: _Rec | None = None  # a click sent before this (deferred) impression
    deferred: bool = False
    released: bool = False


@dataclass(slots=True)
class _Session:
    user: model.User
    id: str
    experiment: str
    variation: str
    lift: float
    tz: int | None


@dataclass
class _InjectionCounter:
    rec: InjectionRecord
    events: int = 0


@dataclass(order=True)
class _PosTask:
    """Something to send once `due` messages have gone out (duplicates, deferred impressions)."""

    due: int
    prio: int  # deferred impressions (0) before duplicates (1): they have a hard bound
    seq: int
    rec: _Rec | None = field(compare=False, default=None)
    msg: tuple[TopicKind, bytes, bytes] | None = field(compare=False, default=None)


class TrafficGenerator:
    """Iterate it once to get the messages; `injected` then tells what the anomalies hit."""

    def __init__(self, spec: TrafficSpec) -> None:
        self.spec = spec
        self.rng = random.Random(spec.seed)
        self.world = model.World(spec, self.rng)
        self._imp_id = model.IdMint(self.rng)
        self._click_id = model.IdMint(self.rng)
        self._session_id = model.IdMint(self.rng)
        self._seq = itertools.count()
        self._heap: list[tuple[int, int, _Rec]] = []  # follow-up events by event time
        self._pos_tasks: list[_PosTask] = []
        self._armed: list[_Rec] = []  # deferred impressions whose click has been sent
        self._out: list[GeneratedMessage] = []
        self._sent = 0
        self.clock = NEVER
        self._sessions: list[_Session] = []
        self._late_imp: _Rec | None = None
        self._late_rate = 0.0  # expected late messages per counted message, right now
        self._counters = [_InjectionCounter(InjectionRecord(**vars(i), events=0)) for i in spec.injections]
        self._by_target: dict[tuple[str, str], list[_InjectionCounter]] = {}
        for c in self._counters:
            self._by_target.setdefault((c.rec.kind, c.rec.target), []).append(c)

    @property
    def injected(self) -> list[InjectionRecord]:
        return [
            InjectionRecord(**{**vars(c.rec), "events": c.events})  # type: ignore[arg-type]
            for c in self._counters
        ]

    # --- main loop -----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[GeneratedMessage]:
        spec, rng, heap = self.spec, self.rng, self._heap
        formats = spec.formats
        arrive = {"impressions": self._impression, "ad_events": self._ad_view, "clickstream": self._cs_view}
        late_lo, late_hi = self._late_window()
        for i, t in enumerate(model.arrivals(spec, rng)):
            while heap and heap[0][0] <= t:
                self._emit(heapq.heappop(heap)[2])
            if spec.late_fraction:
                self._late_rate = self._late_rate_at(i, late_lo, late_hi)
            fmt = formats[0] if len(formats) == 1 else formats[rng.randrange(len(formats))]
            arrive[fmt](t)
            if self._out:
                yield from self._drain()
        while heap:
            self._emit(heapq.heappop(heap)[2])
        for imp in list(self._armed):
            self._release(imp)
        while self._pos_tasks:  # the duplicates still owed
            self._run_task(heapq.heappop(self._pos_tasks))
        yield from self._drain()

    def _drain(self) -> list[GeneratedMessage]:
        out, self._out = self._out, []
        return out

    def _late_window(self) -> tuple[float, float]:
        """Arrival-index window for late events, late enough that they land in the last 20% of
        messages even counting themselves (they add up to late_fraction x the counted messages)."""
        n = self.spec.n_events or 0
        lo = min(0.95, 0.82 + 0.8 * self.spec.late_fraction)
        return lo * n, 0.99 * n

    def _late_rate_at(self, i: int, lo: float, hi: float) -> float:
        if self.spec.n_events is None:  # live: spread out, once downstream watermarks have moved
            warm = self.clock >= self.spec.start_ms + LIVE_LATE_WARMUP_MS
            return self.spec.late_fraction if warm else 0.0
        return self.spec.late_fraction / ((hi - lo) / self.spec.n_events) if lo <= i < hi else 0.0

    # --- arrivals and the events they cause ------------------------------------------------------

    def _active(self, kind: str, target: str, t: int) -> list[_InjectionCounter]:
        cs = self._by_target.get((kind, target))
        return [c for c in cs if c.rec.start_ms <= t < c.rec.end_ms] if cs else []

    def _campaign_arrival(self, t: int) -> tuple[model.Campaign, float] | None:
        """Pick a campaign; None if a traffic drop thins this arrival away. Returns the CTR in force."""
        c = self.world.campaign()
        ctr = c.ctr
        if self._by_target:
            for inj in self._active("traffic_drop", c.id, t):
                if self.rng.random() >= inj.rec.factor:
                    return None
            for inj in self._active("traffic_drop", c.id, t) + self._active("ctr", c.id, t):
                inj.events += 1
                if inj.rec.kind == "ctr":
                    ctr = min(1.0, ctr * inj.rec.factor)
        return c, ctr

    def _push(self, rec: _Rec) -> None:
        heapq.heappush(self._heap, (rec.ts, next(self._seq), rec))

    def _impression_rec(self, t: int, c: model.Campaign, u: model.User) -> _Rec:
        rng = self.rng
        imp_id = self._imp_id()
        device, browser = self.world.device_browser(u)
        fields = {
            "impression_id": imp_id,
            "user_id": u.id,
            "campaign_id": c.id,
            "ad_id": rng.choice(c.ad_ids),
            "device_type": device,
            "browser": browser,
            "event_timestamp": 0,
            # CPM-priced: cost per impression is cpm/1000, +-30% for auction noise
            "cost": round(c.cpm / 1000.0 * rng.uniform(0.7, 1.3), 6),
        }
        return _Rec("impressions", t, imp_id.encode(), fields)

    def _click_rec(self, imp: _Rec, t: int) -> _Rec:
        f = imp.fields
        fields = {
            "click_id": self._click_id(),
            "impression_id": f["impression_id"],
            "user_id": f["user_id"],
            "event_timestamp": 0,
        }
        return _Rec("clicks", t, imp.key, fields, after=imp.ts)

    def _impression(self, t: int) -> None:
        picked = self._campaign_arrival(t)
        if picked is None:
            return
        c, ctr = picked
        rng, spec = self.rng, self.spec
        imp = self._impression_rec(t, c, self.world.user())
        if rng.random() < ctr:
            if rng.random() < spec.click_first_fraction:
                # A fast click whose message overtakes its impression's. Its delay stays under the
                # out-of-order bound so the impression, sent after it, is still merely out of order.
                b = spec.ooo_bound_ms
                click = self._click_rec(imp, t + rng.randint(max(1, b // 20), max(1, b * 3 // 4)))
                click.first_of, imp.deferred = imp, True
            else:
                click = self._click_rec(imp, t + min(60_000, 200 + int(rng.expovariate(1 / 2500))))
            self._push(click)
        self._emit(imp)

    def _ad_view(self, t: int) -> None:
        picked = self._campaign_arrival(t)
        if picked is None:
            return
        c, ctr = picked
        rng, w = self.rng, self.world
        u = w.user()
        ad = rng.choice(c.ad_ids)
        fields = {
            "user_id": u.id,
            "page_id": w.page(),
            "ad_id": ad,
            "campaign_id": c.id,
            "ad_type": w.ad_type[ad],
            "event_type": "view",
            "event_time_ns": 0,
            "window_id": 0,
            "ip_address": u.ip,
        }
        view = _Rec("ad_events", t, u.id.encode(), fields, ns=rng.randrange(1_000_000))
        self._emit(view)
        if rng.random() < ctr:
            click = self._follow(view, "event_type", "click", 300 + int(rng.expovariate(1 / 2500)))
            if rng.random() < c.purchase_rate:
                self._follow(click, "event_type", "purchase", 1000 + int(rng.expovariate(1 / 30_000)))

    def _follow(self, prev: _Rec, field_name: str, value: str, delay: int) -> _Rec:
        """Schedule the next step of a funnel: a copy of `prev` with one field changed."""
        rec = _Rec(
            prev.kind,
            prev.ts + delay,
            prev.key,
            {**prev.fields, field_name: value},
            after=prev.ts,
            ns=self.rng.randrange(1_000_000) if prev.kind == "ad_events" else 0,
            tz=prev.tz,
        )
        self._push(rec)
        return rec

    def _new_session(self, u: model.User) -> _Session:
        rng, exps = self.rng, self.spec.experiments
        name, variation, lift = "none", "control", 0.0
        if exps:
            e = exps[0] if len(exps) == 1 else exps[rng.randrange(len(exps))]
            name = e.name
            if model.in_treatment(self.spec.seed, e.name, u.id, e.treatment_share):
                variation, lift = e.treatment, e.lift
        return _Session(u, self._session_id(), name, variation, lift, rng.choice(model.TS_STYLES))

    def _session(self) -> _Session:
        pool, rng = self._sessions, self.rng
        if not pool or rng.random() < NEW_SESSION_P:
            s = self._new_session(self.world.user())
            pool.append(s)
            if len(pool) > SESSION_POOL:
                pool.pop(0)  # the oldest session ends
            return s
        return pool[rng.randrange(len(pool))]

    def _cs_rec(self, s: _Session, t: int, item: str, interaction: str) -> _Rec:
        fields = {
            "user_id": s.user.id,
            "item_id": item,
            "interaction_type": interaction,
            "timestamp": 0,
            "experiment_name": s.experiment,
            "experiment_variation": s.variation,
            "session_id": s.id,
            "device_name": s.user.device_name,
        }
        return _Rec("clickstream", t, s.user.id.encode(), fields, tz=s.tz)

    def _cs_view(self, t: int) -> None:
        rng = self.rng
        s = self._session()
        item = self.world.item()
        view = self._cs_rec(s, t, item, "view")
        self._emit(view)
        if rng.random() >= 0.25:
            return
        click = self._follow(view, "interaction_type", "click", 500 + int(rng.expovariate(1 / 2500)))
        if rng.random() >= 0.3:
            return
        cart = self._follow(click, "interaction_type", "add_to_cart", 1000 + int(rng.expovariate(1 / 8000)))
        # The experiment's true lift acts here, so purchases per view differ by exactly (1 + lift).
        if rng.random() < 0.5 * (1 + s.lift):
            self._purchases(cart, 2000 + int(rng.expovariate(1 / 20_000)))

    def _purchases(self, cart: _Rec, delay: int) -> None:
        t, item = cart.ts + delay, cart.fields["item_id"]
        spikes = self._active("sales_spike", item, t) if self._by_target else []
        factor = math.prod(sp.rec.factor for sp in spikes)
        n = int(factor) + (self.rng.random() < factor - int(factor))
        if n:
            self._follow(cart, "interaction_type", "purchase", delay)
        if n > 1:  # the spike's extra sales: other shoppers, each in a new session, inside the span
            end = min(sp.rec.end_ms for sp in spikes)
            for _ in range(n - 1):
                session = self._new_session(self.world.user())
                ts = min(end - 1, t + self.rng.randint(0, 5000))
                self._push(self._cs_rec(session, ts, item, "purchase"))
        for sp in spikes:
            sp.events += n

    # --- sending --------------------------------------------------------------------------------

    def _fill(self, rec: _Rec, ts: int) -> dict[str, Any]:
        """The record's fields with its event time `ts` written in the format's own way."""
        f = rec.fields
        if rec.kind == "ad_events":
            f["event_time_ns"] = ts * 1_000_000 + rec.ns
            f["window_id"] = ts - ts % AD_EVENT_WINDOW_MS
        elif rec.kind == "clickstream":
            f["timestamp"] = ts if rec.tz is None else iso8601(ts, rec.tz)
        else:
            f["event_timestamp"] = ts
        return f

    def _put(self, kind: TopicKind, key: bytes, value: bytes, truth: str) -> None:
        self._sent += 1
        self._out.append(GeneratedMessage(kind, key, value, truth, max(self.clock, self.spec.start_ms)))

    def _emit(self, rec: _Rec) -> None:
        """Send a counted event: in order, or shifted out of order, or deferred after its click."""
        if rec.deferred:
            return  # sent after its click (see _release)
        ts, label = rec.ts, VALID
        for imp in [i for i in self._armed if ts - i.ts >= self.spec.ooo_bound_ms]:
            self._release(imp)  # before the clock gets a full bound past the deferred impression
        if rec.first_of is not None:
            label = CLICK_FIRST
        elif self.spec.ooo_fraction and self.clock != NEVER and self.rng.random() < self.spec.ooo_fraction:
            shifted = self.clock - self.rng.randint(1, self.spec.ooo_bound_ms - 1)
            if shifted > rec.after:
                ts, label = shifted, OUT_OF_ORDER
        self.clock = max(self.clock, ts)
        self._send_counted(rec, ts, label)
        if rec.first_of is not None:
            self._armed.append(rec.first_of)
            self._schedule(
                _PosTask(self._sent + self.rng.randint(1, 40), 0, next(self._seq), rec=rec.first_of)
            )
        self._run_due_tasks()

    def _release(self, imp: _Rec) -> None:
        if imp.released:
            return
        imp.released = True
        self._armed.remove(imp)
        self._send_counted(imp, imp.ts, OUT_OF_ORDER)  # the clock is already at its click's time

    def _send_counted(self, rec: _Rec, ts: int, label: str) -> None:
        spec, rng = self.spec, self.rng
        fields = self._fill(rec, ts)
        value = orjson.dumps(fields)
        self._put(rec.kind, rec.key, value, label)
        if spec.dup_fraction and rec.kind in ("impressions", "clicks") and rng.random() < spec.dup_fraction:
            gap = rng.randint(1, spec.dup_max_gap)
            self._schedule(_PosTask(self._sent + gap, 1, next(self._seq), msg=(rec.kind, rec.key, value)))
        if spec.malformed_fraction and rng.random() < spec.malformed_fraction:
            self._malformed(rec, fields, ts)
        if spec.orphan_fraction and rec.kind == "clicks" and rng.random() < spec.orphan_fraction:
            self._orphan()
        if self._late_rate:
            whole = int(self._late_rate)
            for _ in range(whole + (rng.random() < self._late_rate - whole)):
                self._late(rec.kind)

    def _schedule(self, task: _PosTask) -> None:
        heapq.heappush(self._pos_tasks, task)

    def _run_due_tasks(self) -> None:
        tasks = self._pos_tasks
        while tasks and tasks[0].due <= self._sent:
            self._run_task(heapq.heappop(tasks))

    def _run_task(self, task: _PosTask) -> None:
        if task.rec is not None:
            self._release(task.rec)
        elif task.msg is not None:
            self._put(*task.msg, DUPLICATE)

    # --- defect messages ------------------------------------------------------------------------

    def _malformed(self, rec: _Rec, fields: dict[str, Any], ts: int) -> None:
        """A broken copy with fresh ids, so it never collides with the good message it came from."""
        f = dict(fields)
        key = rec.key
        if rec.kind in ("impressions", "clicks"):
            f["impression_id"] = self._imp_id()
            key = f["impression_id"].encode()
            if rec.kind == "clicks":
                f["click_id"] = self._click_id()
        self._put(rec.kind, key, malform(self.rng, rec.kind, f, ts), MALFORMED)

    def _orphan(self) -> None:
        """An in-order click for an impression_id that is minted but never sent."""
        rec = self._click_rec(self._impression_rec(self.clock, self.world.campaign(), self.world.user()), 0)
        self._put("clicks", rec.key, orjson.dumps(self._fill(rec, self.clock)), ORPHAN)

    def _late(self, kind: TopicKind) -> None:
        """A well-formed event stamped >= 2 h before the stream start (downstream must reject it)."""
        rng, w = self.rng, self.world
        ts = self.spec.start_ms - LATE_MIN_AGE_MS - rng.randint(0, 3_600_000)
        if kind in ("impressions", "clicks"):
            if kind == "clicks" and self._late_imp is not None:  # a late click of a late impression
                rec = self._click_rec(self._late_imp, 0)
                ts = self._late_imp.ts + rng.randint(200, 5000)
            else:
                rec = self._impression_rec(ts, w.campaign(), w.user())
                self._late_imp = rec
        elif kind == "ad_events":
            c, u = w.campaign(), w.user()
            ad = rng.choice(c.ad_ids)
            fields = {
                "user_id": u.id,
                "page_id": w.page(),
                "ad_id": ad,
                "campaign_id": c.id,
                "ad_type": w.ad_type[ad],
                "event_type": "view",
                "event_time_ns": 0,
                "window_id": 0,
                "ip_address": u.ip,
            }
            rec = _Rec("ad_events", ts, u.id.encode(), fields, ns=rng.randrange(1_000_000))
        else:
            rec = self._cs_rec(self._new_session(w.user()), ts, w.item(), "view")
        self._put(rec.kind, rec.key, orjson.dumps(self._fill(rec, ts)), LATE)


_TZ: dict[int, timezone] = {}


def iso8601(ts_ms: int, offset_min: int) -> str:
    """Epoch ms as ISO-8601 with an explicit zone ("Z" for UTC), exact to the millisecond."""
    tz = _TZ.get(offset_min) or _TZ.setdefault(offset_min, timezone(timedelta(minutes=offset_min)))
    s = (_EPOCH + timedelta(milliseconds=ts_ms)).astimezone(tz).isoformat(timespec="milliseconds")
    return s[:-6] + "Z" if offset_min == 0 else s


def generate(spec: TrafficSpec) -> list[GeneratedMessage]:
    """All messages of a bounded spec, in send order."""
    return generate_with_truth(spec)[0]


def generate_with_truth(spec: TrafficSpec) -> tuple[list[GeneratedMessage], list[InjectionRecord]]:
    """All messages of a bounded spec, in send order, and what the injected anomalies hit."""
    if spec.n_events is None:
        raise ValueError("needs a bounded spec (n_events is None): iterate a TrafficGenerator instead")
    gen = TrafficGenerator(spec)
    # Collecting ~10^5 objects makes the cyclic GC rescan them over and over (2x slower); the
    # generator creates no reference cycles, so pausing it is safe.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        messages = list(gen)
    finally:
        if was_enabled:
            gc.enable()
    return messages, gen.injected
