"""Detection quality of services/anomaly/detectors.py on simulated traffic with known ground truth.

    python bench/detection_quality.py [--seed N] [--campaigns 300] [--items 300] [--windows 240]

Simulation (stdlib `random` only):
- campaign: base CTR log-uniform in [0.5%, 8%], mean impressions per window uniform in [1000, 5000];
  per window the true CTR is base * (0.9 + 0.2 * Beta(2, 2)) (overdispersion, within +-10%) and
  the traffic level mean * (0.85 + 0.3 * Beta(2, 2)); impressions ~ Poisson(level) (normal
  approximation, level >= 500: only the click tail matters for the CTR rule) and clicks are an
  exact Binomial(impressions, CTR) draw;
- item: mean purchases per window log-uniform in [1, 80], the same +-10% jitter, exact Poisson;
- injected from window 20 on (warm-up is 10), separated by >= 5 clean windows: CTR x2 or /2 for 3-8 windows,
  traffic at 2% for 2-5 windows, item sales x3 for 1-4 windows;
- 5% of windows are re-emitted as version 2 with ~1% more late events (exercises idempotency).

Scoring is per window and per rule: a true positive is a flagged window inside an injected span of
that rule (CTR: in the matching direction); a false alarm is any anomaly on a clean window. Clean
windows are counted after the warm-up only (nothing can fire before). Recall is also reported by
expected baseline volume per window (clicks for CTR, purchases for sales), since a 2x shift of 10
expected clicks is not detectable in one window at a false-alarm rate below 1/1,000, whatever the
detector; and per injected span (found if any of its windows was flagged).

Targets: precision, recall >= 0.95 for 2x CTR shifts, < 1 false alarm per 1,000 clean windows.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.anomaly.detectors import CtrConfig, SalesConfig, ctr_step, sales_step

WINDOW_MS = 60_000
FIRST_INJECTION = 20
GAP = 5
CLICK_BUCKETS = (0, 5, 10, 25, 50, 100, 200)


# --- samplers -------------------------------------------------------------------------------


def poisson(rng: random.Random, lam: float) -> int:
    """Exact (Knuth, in chunks so exp() cannot underflow) below 500, normal approximation above."""
    if lam >= 500:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    total = 0
    while lam > 0:
        chunk = min(lam, 50.0)
        lam -= chunk
        limit, prod = math.exp(-chunk), rng.random()
        while prod > limit:
            total += 1
            prod *= rng.random()
    return total


def binomial(rng: random.Random, n: int, p: float) -> int:
    """Exact: count geometric gaps between successes; O(n * p), cheap for CTRs."""
    if p <= 0.0 or n <= 0:
        return 0
    log_q = math.log1p(-p)
    count, pos = 0, 0
    while True:
        pos += int(math.log(1.0 - rng.random()) / log_q) + 1
        if pos > n:
            return count
        count += 1


def jitter(rng: random.Random, half_width: float) -> float:
    return 1.0 - half_width + 2.0 * half_width * rng.betavariate(2.0, 2.0)


# --- ground truth ---------------------------------------------------------------------------


def schedule(
    rng: random.Random, windows: int, kinds: list[tuple[str, int, int]], p_start: float
) -> list[str]:
    """Per-window label ("" = clean) with non-overlapping spans separated by >= GAP clean windows."""
    labels = [""] * windows
    w = FIRST_INJECTION
    while w < windows:
        if rng.random() < p_start:
            kind, lo, hi = rng.choice(kinds)
            span = rng.randint(lo, hi)
            for i in range(w, min(windows, w + span)):
                labels[i] = kind
            w += span + GAP
        else:
            w += 1
    return labels


CTR_KINDS = [("ctr_up", 3, 8), ("ctr_down", 3, 8), ("traffic", 2, 5)]
SALES_KINDS = [("sales", 1, 4)]


# --- scoring --------------------------------------------------------------------------------


@dataclass
class Score:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0


@dataclass
class Tally:
    rules: dict[str, Score] = field(default_factory=lambda: {r: Score() for r in ("ctr", "traffic", "sales")})
    clean: Counter[str] = field(default_factory=Counter)  # clean windows after warm-up
    false_alarms: Counter[str] = field(default_factory=Counter)
    by_clicks: dict[tuple[str, int], Score] = field(default_factory=dict)
    events: Counter[str] = field(default_factory=Counter)
    spans: dict[str, Score] = field(default_factory=dict)  # per injected span: any window flagged?


RULE_OF = {"ctr_high": "ctr", "ctr_low": "ctr", "traffic_drop": "traffic", "sales_spike": "sales"}
MATCH = {"ctr_up": "ctr_high", "ctr_down": "ctr_low", "traffic": "traffic_drop", "sales": "sales_spike"}


def score_spans(t: Tally, labels: list[str], hits: list[bool]) -> None:
    """Incident-level recall: a span of one injected anomaly counts as found if any window was."""
    w = 0
    while w < len(labels):
        end = w
        while end < len(labels) and labels[end] == labels[w]:
            end += 1
        if labels[w]:
            s = t.spans.setdefault(labels[w], Score())
            found = any(hits[w:end])
            s.tp += found
            s.fn += not found
        w = end


def score_window(t: Tally, domain: str, label: str, kinds: set[str], warm: bool, bucket: int) -> bool:
    """Scores one window given the set of anomaly kinds emitted for it (duplicates collapsed);
    returns whether it was a hit."""
    if not label:
        if warm:
            t.clean[domain] += 1
            t.false_alarms[domain] += bool(kinds)
        for k in kinds:
            t.rules[RULE_OF[k]].fp += 1
        return False
    want = MATCH[label]
    rule = RULE_OF[want]
    hit = want in kinds
    s = t.rules[rule]
    s.tp += hit
    s.fn += not hit
    for k in kinds - {want}:
        t.rules[RULE_OF[k]].fp += 1
    if rule in ("ctr", "sales"):
        b = t.by_clicks.setdefault((label, bucket), Score())
        b.tp += hit
        b.fn += not hit
    return hit


def bucket_of(expected_clicks: float) -> int:
    return max(b for b in CLICK_BUCKETS if expected_clicks >= b)


def bucket_name(b: int) -> str:
    i = CLICK_BUCKETS.index(b)
    return f"[{b},{CLICK_BUCKETS[i + 1]})" if i + 1 < len(CLICK_BUCKETS) else f"[{b},inf)"


# --- simulation -----------------------------------------------------------------------------


def with_revisions(rng: random.Random, value: dict[str, Any], extra: dict[str, int]) -> list[dict[str, Any]]:
    """The window as first closed, plus (5% of the time) a version 2 with late events added."""
    out = [dict(value, version=1)]
    if rng.random() < 0.05:
        out.append(dict(value, version=2, **{k: value[k] + v for k, v in extra.items()}))
    return out


def run_campaign(rng: random.Random, cid: int, windows: int, cfg: CtrConfig, t: Tally) -> None:
    base_ctr = math.exp(rng.uniform(math.log(0.005), math.log(0.08)))
    mean_imps = rng.uniform(1000, 5000)
    labels = schedule(rng, windows, CTR_KINDS, 0.02)
    state = None
    hits = []
    for w, label in enumerate(labels):
        level = mean_imps * jitter(rng, 0.15) * (0.02 if label == "traffic" else 1.0)
        ctr = base_ctr * jitter(rng, 0.10) * {"ctr_up": 2.0, "ctr_down": 0.5}.get(label, 1.0)
        imps = poisson(rng, level)
        clicks = binomial(rng, imps, ctr)
        start = w * WINDOW_MS
        value = {"campaign_id": f"c{cid}", "window_start": start, "window_end": start + WINDOW_MS}
        value.update(impressions=imps, clicks=clicks)
        late_imps = poisson(rng, imps * 0.01)
        extra = {"impressions": late_imps, "clicks": binomial(rng, late_imps, ctr)}
        kinds: set[str] = set()
        for v in with_revisions(rng, value, extra):
            state, event = ctr_step(state, v, cfg)
            if event is not None:
                t.events[event["kind"]] += 1
                if event["kind"] != "resolved":
                    kinds.add(event["kind"])
        bucket = bucket_of(base_ctr * mean_imps)
        hits.append(score_window(t, "campaign", label, kinds, w >= cfg.warmup_windows, bucket))
    score_spans(t, labels, hits)


def run_item(rng: random.Random, iid: int, windows: int, cfg: SalesConfig, t: Tally) -> None:
    mean = math.exp(rng.uniform(math.log(1.0), math.log(80.0)))
    labels = schedule(rng, windows, SALES_KINDS, 0.02)
    state = None
    hits = []
    for w, label in enumerate(labels):
        lam = mean * jitter(rng, 0.10) * (3.0 if label == "sales" else 1.0)
        start = w * WINDOW_MS
        value = {"item_id": f"i{iid}", "window_start": start, "window_end": start + WINDOW_MS}
        value["purchases"] = poisson(rng, lam)
        kinds: set[str] = set()
        for v in with_revisions(rng, value, {"purchases": poisson(rng, lam * 0.01)}):
            state, event = sales_step(state, v, cfg)
            if event is not None:
                t.events[event["kind"]] += 1
                if event["kind"] != "resolved":
                    kinds.add(event["kind"])
        hits.append(score_window(t, "item", label, kinds, w >= cfg.warmup_windows, bucket_of(mean)))
    score_spans(t, labels, hits)


# --- report ---------------------------------------------------------------------------------


def per_thousand(t: Tally, domain: str) -> float:
    return 1000.0 * t.false_alarms[domain] / max(1, t.clean[domain])


def report(t: Tally, args: argparse.Namespace, elapsed: float) -> dict[str, Any]:
    print(f"seed={args.seed} campaigns={args.campaigns} items={args.items} windows={args.windows}")
    print(f"{'rule':<8} {'precision':>9} {'recall':>7} {'tp':>6} {'fp':>5} {'fn':>5}")
    for name, s in t.rules.items():
        print(f"{name:<8} {s.precision():>9.4f} {s.recall():>7.4f} {s.tp:>6} {s.fp:>5} {s.fn:>5}")
    print(f"false alarms per 1,000 clean campaign-windows: {per_thousand(t, 'campaign'):.3f}")
    print(f"false alarms per 1,000 clean item-windows:     {per_thousand(t, 'item'):.3f}")
    print("recall by expected baseline clicks (CTR x2 up, /2 down) or purchases (sales x3) per window:")
    recall_table: dict[str, dict[str, float]] = {}
    for label in ("ctr_up", "ctr_down", "sales"):
        for b in CLICK_BUCKETS:
            s = t.by_clicks.get((label, b))
            if s is not None:
                recall_table.setdefault(label, {})[bucket_name(b)] = round(s.recall(), 4)
                print(f"  {label:<9} {bucket_name(b):<10} recall={s.recall():.4f}  n={s.tp + s.fn}")
    print("incident (span) recall, found if any window of the span was flagged:")
    for label, s in t.spans.items():
        print(f"  {label:<9} {s.recall():.4f}  spans={s.tp + s.fn}")
    print(f"events: {dict(t.events)}  ({elapsed:.1f}s)")
    return {
        "seed": args.seed,
        **{
            f"{n}_{m}": round(getattr(s, m)(), 4) for n, s in t.rules.items() for m in ("precision", "recall")
        },
        "false_alarms_per_1000_campaign_windows": round(per_thousand(t, "campaign"), 4),
        "false_alarms_per_1000_item_windows": round(per_thousand(t, "item"), 4),
        "recall_by_expected_volume": recall_table,
        "span_recall": {label: round(s.recall(), 4) for label, s in t.spans.items()},
        "seconds": round(elapsed, 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--campaigns", type=int, default=300)
    ap.add_argument("--items", type=int, default=300)
    ap.add_argument("--windows", type=int, default=240)
    ap.add_argument("--ctr-z", type=float, default=CtrConfig.z_threshold, help="tuning: CTR z threshold")
    ap.add_argument(
        "--sales-z", type=float, default=SalesConfig.z_threshold, help="tuning: sales z threshold"
    )
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    t = Tally()
    began = time.monotonic()
    for c in range(args.campaigns):
        run_campaign(rng, c, args.windows, CtrConfig(z_threshold=args.ctr_z), t)
    for i in range(args.items):
        run_item(rng, i, args.windows, SalesConfig(z_threshold=args.sales_z), t)
    print(json.dumps(report(t, args, time.monotonic() - began), sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
