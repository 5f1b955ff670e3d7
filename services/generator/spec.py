"""What the generator is asked for (TrafficSpec) and what it hands back (GeneratedMessage).

Pure data: no I/O, no randomness. Everything a test needs to build its own oracle is here:
the message order, the exact bytes, and one truth label per message (see TRUTH_LABELS).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

TopicKind = Literal["impressions", "clicks", "ad_events", "clickstream"]
Format = Literal["impressions", "ad_events", "clickstream"]
ArrivalModel = Literal["poisson", "bursty"]
InjectionKind = Literal["ctr", "traffic_drop", "sales_spike"]

FORMATS: tuple[Format, ...] = ("impressions", "ad_events", "clickstream")
INJECTION_KINDS: tuple[InjectionKind, ...] = ("ctr", "traffic_drop", "sales_spike")

# Truth labels. "Counted" labels are real events a correct pipeline counts exactly once;
# the others must not be counted (duplicates, orphans) or must be rejected (late, malformed).
VALID = "valid"  # well-formed, event time >= every earlier counted message's event time
OUT_OF_ORDER = "out_of_order"  # well-formed, event time behind the stream clock by < ooo_bound_ms
CLICK_FIRST = "click_first"  # a click sent before its impression (which follows within 50 messages)
DUPLICATE = "duplicate"  # byte-identical re-send (same key and value) of an earlier counted message
ORPHAN = "orphan"  # a well-formed, in-order click whose impression_id is never sent
LATE = "late"  # well-formed, event time >= 2 h before start_ms, sent in the last 20% of the stream
MALFORMED = "malformed"  # invalid JSON, missing/wrong-typed/empty field, or a bad timestamp
COUNTED_LABELS = frozenset({VALID, OUT_OF_ORDER, CLICK_FIRST})
TRUTH_LABELS = (VALID, OUT_OF_ORDER, CLICK_FIRST, DUPLICATE, ORPHAN, LATE, MALFORMED)

LATE_MIN_AGE_MS = 2 * 3_600_000
# Clicks sent before their impression: the impression follows within this many messages.
CLICK_FIRST_MAX_GAP = 50


def now_rounded_ms() -> int:
    """Wall clock rounded down to the second (only a default: tests always pass start_ms)."""
    return int(time.time()) * 1000


@dataclass(frozen=True)
class Experiment:
    """A two-arm A/B test on the clickstream. Users are assigned stickily by hash.

    `lift` is the true relative lift of purchases per view in the treatment arm (applied to the
    add_to_cart -> purchase step, whose base probability is 0.5, so lift must be <= 1).
    """

    name: str
    lift: float = 0.0
    treatment_share: float = 0.5
    treatment: str = "treatment"


@dataclass(frozen=True)
class Injection:
    """An anomaly to inject. target is a campaign_id (ctr, traffic_drop) or an item_id (sales_spike).

    ctr: click probability x factor for impressions/views of the campaign in [start_ms, end_ms).
    traffic_drop: impressions/views of the campaign kept with probability factor (< 1) in the span.
    sales_spike: purchases of the item in the span x factor (extra purchases by other users; a
    factor < 1 thins them instead).
    """

    kind: InjectionKind
    target: str
    start_ms: int
    end_ms: int
    factor: float


@dataclass(frozen=True)
class InjectionRecord:
    """What was actually injected: the Injection plus how many events fell in its span.

    events: primary events (impressions + ad-event views) of the campaign in the span after any
    drop (ctr, traffic_drop), or purchases of the item in the span (sales_spike).
    """

    kind: InjectionKind
    target: str
    start_ms: int
    end_ms: int
    factor: float
    events: int


@dataclass(frozen=True, slots=True)
class GeneratedMessage:
    """One Kafka message, in send order.

    at_ms is the stream clock when it is sent (the max event time of the counted messages up
    to and including it); live mode sleeps until wall clock reaches it.
    """

    topic_kind: TopicKind
    key: bytes
    value: bytes
    truth: str
    at_ms: int


@dataclass(frozen=True)
class TrafficSpec:
    """Everything the traffic depends on. Same spec (with the same seed) -> same bytes.

    n_events is the number of *arrivals* (impressions, ad-event views and clickstream views;
    each arrival picks one of `formats` uniformly) drawn from the arrival process. None means an
    endless stream (live mode). Clicks, purchases and the like follow from arrivals; defect
    messages come on top; traffic_drop injections thin arrivals away.

    Defect fractions are expected defect messages per counted message of the kinds they apply
    to (all 0 = clean traffic):
      dup_fraction: impression and click messages re-sent byte-identical 1..dup_max_gap later
        (ad-events/clickstream carry no event id, so a re-send there would be a new event).
      ooo_fraction: counted messages stamped 1..ooo_bound_ms-1 ms behind the stream clock.
      click_first_fraction: per click: the click is sent before its impression.
      orphan_fraction: per click: an extra click whose impression never exists.
      late_fraction: messages stamped >= 2 h before start_ms, all in the last 20% of the stream
        (must be <= 0.15 so they fit there).
      malformed_fraction: broken copies (fresh ids) of counted messages, any format.
    """

    n_events: int | None = 10_000
    seed: int = 0
    start_ms: int = field(default_factory=now_rounded_ms)
    rate: float = 50.0  # arrivals per second of event time (mean, also for "bursty")
    click_ratio: float = 0.045  # mean campaign CTR; campaigns spread 0.25x..1.75x around it
    campaigns: int = 10
    ads: int = 50
    users: int = 5_000
    items: int = 1_000
    pages: int = 200
    experiments: tuple[Experiment, ...] = (Experiment("checkout-redesign", lift=0.1),)
    formats: tuple[Format, ...] = ("impressions",)
    arrival: ArrivalModel = "poisson"
    burst_factor: float = 5.0  # bursty: rate in a burst = rate x burst_factor
    burst_share: float = 0.1  # bursty: long-run share of time spent in bursts
    burst_mean_s: float = 10.0  # bursty: mean burst duration (event time)
    dup_fraction: float = 0.0
    dup_max_gap: int = 200
    ooo_fraction: float = 0.0
    ooo_bound_ms: int = 2_000
    click_first_fraction: float = 0.0
    orphan_fraction: float = 0.0
    late_fraction: float = 0.0
    malformed_fraction: float = 0.0
    injections: tuple[Injection, ...] = ()

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ValueError("invalid TrafficSpec: " + "; ".join(problems))


def _problems(s: TrafficSpec) -> list[str]:
    p: list[str] = []
    if s.n_events is not None and s.n_events < 0:
        p.append("n_events < 0")
    if s.rate <= 0:
        p.append("rate <= 0")
    if not 0 <= s.click_ratio <= 0.5:
        p.append("click_ratio must be in [0, 0.5] (x1.75 must stay a probability)")
    if min(s.campaigns, s.users, s.items, s.pages) < 1 or s.ads < s.campaigns:
        p.append("need >= 1 campaign, user, item, page and ads >= campaigns")
    if not s.formats or any(f not in FORMATS for f in s.formats) or len(set(s.formats)) != len(s.formats):
        p.append(f"formats must be a non-empty subset of {FORMATS}")
    if s.arrival not in ("poisson", "bursty"):
        p.append("arrival must be poisson or bursty")
    if s.burst_factor < 1 or not 0 < s.burst_share < 1 or s.burst_factor * s.burst_share >= 1:
        p.append("bursty needs burst_factor >= 1, 0 < burst_share < 1, burst_factor*burst_share < 1")
    for name in ("dup", "ooo", "click_first", "orphan", "malformed"):
        if not 0 <= getattr(s, f"{name}_fraction") <= 1:
            p.append(f"{name}_fraction must be in [0, 1]")
    if not 0 <= s.late_fraction <= 0.15:
        p.append("late_fraction must be in [0, 0.15]")
    if s.ooo_bound_ms < 2 or s.dup_max_gap < 1:
        p.append("ooo_bound_ms >= 2 and dup_max_gap >= 1")
    for e in s.experiments:
        if e.treatment == "control" or not 0 < e.treatment_share < 1 or not -1 < e.lift <= 1:
            p.append(f"experiment {e.name}: treatment != 'control', 0 < share < 1, -1 < lift <= 1")
    for inj in s.injections:
        if inj.kind not in INJECTION_KINDS or inj.end_ms <= inj.start_ms or inj.factor < 0:
            p.append(f"bad injection {inj}")
    return p
