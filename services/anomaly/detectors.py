"""Pure per-key anomaly detectors: `step(state, value) -> (state, emit)`, no Kafka, no faust.

State is a small JSON-able dict (the anomaly service keeps it in a changelogged table as orjson
bytes); `emit` is None or one event dict. Both detectors share the same skeleton:

- Baseline. Exponentially weighted (EW) estimates with decay `alpha` per window; for the first
  1/alpha windows the weight is 1/count instead, so early estimates are plain means rather than
  being dominated by the first window. Only windows that raised no finding update the baseline, so
  an anomaly cannot drag the baseline towards itself and silence its own alarm.
- Guards. No finding before `warmup_windows` windows have been learnt, nor on low volume.
- Long anomalies. A shift that persists for `rebaseline_after` consecutive flagged windows is
  taken to be the new normal (a new creative, a price change, a paused campaign): the level is
  re-seeded from the run's mean (spread and window count are kept), and instead of an anomaly that
  window emits "resolved" with reason "rebaselined". Until then every flagged window is reported.
- Incidents. Consecutive findings of one kind form an incident whose id is the anomaly_id of its
  first window; each anomaly carries it as `incident_id`. The first clean window after an incident
  emits {"kind": "resolved", "resolves": <incident_id>}. A finding of another kind while an incident
  is open starts a new incident and carries `"supersedes": <old incident_id>` (the old one is over).
- Re-emitted windows. A window with the same window_start as the newest one learnt (a late update,
  higher "version") is re-evaluated against the baseline as it was *before* that window, and
  replaces its contribution: it is never counted twice. An event id already emitted for that window
  is not emitted again. A lower version than the one learnt is ignored (stale redelivery).
- Out-of-order windows (older than the newest learnt) are evaluated and may emit an anomaly, but
  touch neither the baseline nor the incident: re-deliveries of them are deduplicated only by the
  stable anomaly_id, downstream.

anomaly_id = first 16 hex digits of sha1(f"{kind}|{key}|{window_start}"), also for "resolved"
(window_start of the clean window that resolved it), so any redelivery is harmless downstream.

A key that goes completely silent produces no windows at all; to catch that, the service may feed a
synthetic window with zero impressions for a key whose windows stopped arriving: the traffic rule
then reports a critical drop.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.stats import arcsine_proportion_z, poisson_z

State = dict[str, Any]
Event = dict[str, Any]
Baseline = dict[str, float]
Assess = Callable[[Baseline, dict[str, Any]], "Finding | None"]
Learn = Callable[[Baseline, dict[str, Any], "Finding | None"], tuple[Baseline, bool]]

SCHEMA = 1


def anomaly_id(kind: str, key: str, window_start: int) -> str:
    return hashlib.sha1(f"{kind}|{key}|{window_start}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Finding:
    """What a rule concluded about one window, before incident bookkeeping."""

    kind: str
    observed: float
    expected: float
    score: float
    direction: str
    severity: str


# --- configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class CtrConfig:
    # |z| above which a window's click rate is anomalous (arcsine z, binomial + overdispersion
    # variance). 3.5 rather than 3.0: the z is calibrated, so 3.0 means the nominal 2.7 false alarms
    # per 1,000 clean windows (bench/detection_quality.py measured 2.4-2.7); 3.5 gives 0.4-0.7.
    z_threshold: float = 3.5
    # CTR is only judged on windows with this many impressions and this many expected clicks.
    min_impressions: int = 200
    min_expected_clicks: float = 5.0
    # Traffic rule: impressions < fraction * typical, judged only when typical >= min_typical.
    traffic_drop_fraction: float = 0.1
    min_typical_impressions: float = 200.0
    warmup_windows: int = 10
    alpha: float = 0.05
    # The overdispersion estimate gets a longer memory than the rate: a noisy variance gives z
    # heavier tails (t-like), which shows on high-volume campaigns, where tau2 dominates. Worth
    # ~10% fewer false alarms in the bench; a level changes faster than a spread does.
    variance_alpha: float = 0.02
    rebaseline_after: int = 30


@dataclass(frozen=True)
class SalesConfig:
    # A spike is purchases > factor * baseline mean ...
    factor: float = 1.5
    # ... that is also significant: one-sided Anscombe z, scaled down by the learnt overdispersion.
    # Without it a 1.5x rule fires on Poisson noise alone (P(Poisson(5) >= 8) = 13%).
    z_threshold: float = 3.0
    min_expected: float = 5.0
    warmup_windows: int = 10
    alpha: float = 0.05
    rebaseline_after: int = 30


# --- shared skeleton ------------------------------------------------------------------------


def new_state(baseline: Baseline) -> State:
    """last: newest window_start learnt; ver: its version; b: baseline after it, pb: before it;
    open: the open incident {"id", "kind"} or None; sent: event ids already emitted for `last`."""
    return {
        "v": SCHEMA,
        "last": None,
        "ver": 0,
        "b": dict(baseline),
        "pb": dict(baseline),
        "open": None,
        "sent": [],
    }


def _weight(count: float, alpha: float) -> float:
    """EW weight of the next observation: a plain mean until 1/alpha observations, then alpha."""
    return max(alpha, 1.0 / (count + 1.0))


def _effective_n(count: float, alpha: float) -> float:
    """Number of independent windows an EW estimate is worth (for the uncertainty of the baseline)."""
    return max(1.0, min(count, 2.0 / alpha - 1.0))


def _anomaly(f: Finding, key_type: str, key: str, value: dict[str, Any]) -> Event:
    ws = int(value["window_start"])
    return {
        "anomaly_id": anomaly_id(f.kind, key, ws),
        "kind": f.kind,
        "key_type": key_type,
        "key": key,
        "window_start": ws,
        "window_end": int(value["window_end"]),
        "observed": f.observed,
        "expected": f.expected,
        "score": f.score,
        "direction": f.direction,
        "severity": f.severity,
    }


def _resolved(incident_id: str, reason: str, key_type: str, key: str, value: dict[str, Any]) -> Event:
    ws = int(value["window_start"])
    return {
        "anomaly_id": anomaly_id("resolved", key, ws),
        "kind": "resolved",
        "resolves": incident_id,
        "reason": reason,
        "key_type": key_type,
        "key": key,
        "window_start": ws,
        "window_end": int(value["window_end"]),
    }


def _incident(
    state: State, finding: Finding | None, reason: str, key_type: str, key: str, value: dict[str, Any]
) -> tuple[dict[str, str] | None, Event | None]:
    """Incident transition for an in-order window: returns (open incident after it, event)."""
    open_ = state["open"]
    if finding is None:
        if open_ is None:
            return None, None
        return None, _resolved(open_["id"], reason, key_type, key, value)
    event = _anomaly(finding, key_type, key, value)
    if open_ is not None and open_["kind"] == finding.kind:
        event["incident_id"] = open_["id"]
        return open_, event
    event["incident_id"] = event["anomaly_id"]
    if open_ is not None:
        event["supersedes"] = open_["id"]
    return {"id": event["anomaly_id"], "kind": finding.kind}, event


def _run(
    state: State | None,
    value: dict[str, Any],
    fresh: Baseline,
    assess: Assess,
    learn: Learn,
    key_type: str,
    key: str,
) -> tuple[State, Event | None]:
    """Routes a window (new, re-emitted, stale or out of order) through assess/learn/incident."""
    st = state if state is not None else new_state(fresh)
    ws, version = int(value["window_start"]), int(value.get("version", 0))
    last = st["last"]
    if last is not None and ws < last:  # out of order: judge it, learn nothing
        finding = assess(st["b"], value)
        event = None if finding is None else _anomaly(finding, key_type, key, value)
        if event is not None:
            event["incident_id"] = event["anomaly_id"]
        return st, event
    revising = last is not None and ws == last
    if revising and version < st["ver"]:  # stale redelivery of an older version
        return st, None
    before = st["pb"] if revising else st["b"]
    finding = assess(before, value)
    after, rebaselined = learn(before, value, finding)
    if rebaselined:
        finding = None
    open_, event = _incident(st, finding, "rebaselined" if rebaselined else "normal", key_type, key, value)
    sent = list(st["sent"]) if revising else []
    if event is not None:
        if event["anomaly_id"] in sent:
            event = None
        else:
            sent.append(event["anomaly_id"])
    new = {"v": SCHEMA, "last": ws, "ver": version, "b": after, "pb": before, "open": open_, "sent": sent}
    return new, event


# --- CTR and traffic per campaign -----------------------------------------------------------

# Baseline fields: n windows learnt; c, i: EW clicks and impressions per window (rate = c / i);
# tau2: EW between-window variance of the true rate beyond binomial noise (overdispersion);
# run, rc, ri: consecutive flagged windows and their clicks and impressions (for re-baselining).
_CTR_FRESH = {"n": 0, "c": 0.0, "i": 0.0, "tau2": 0.0, "run": 0, "rc": 0.0, "ri": 0.0}


def _rate_uncertainty(b: Baseline, rate: float, cfg: CtrConfig) -> float:
    """Variance of the baseline rate itself: a window's variance over ~n_eff windows."""
    typical = max(b["i"], 1.0)
    return (rate * (1.0 - rate) / typical + max(0.0, b["tau2"])) / _effective_n(b["n"], cfg.alpha)


def _ctr_variance(b: Baseline, rate: float, cfg: CtrConfig) -> float:
    """Extra variance of a window's proportion on top of its own binomial term.

    Overdispersion tau2 (real CTRs wander between windows) plus the uncertainty of the baseline rate
    itself, so that a baseline learnt from few windows makes the detector more careful, not less.
    """
    return max(0.0, b["tau2"]) + _rate_uncertainty(b, rate, cfg)


def _traffic_finding(b: Baseline, impressions: int, cfg: CtrConfig) -> Finding | None:
    typical = b["i"]
    if typical < cfg.min_typical_impressions or impressions >= cfg.traffic_drop_fraction * typical:
        return None
    ratio = impressions / typical
    critical = impressions == 0 or ratio <= cfg.traffic_drop_fraction / 2.0
    return Finding("traffic_drop", impressions, typical, ratio, "down", "critical" if critical else "warning")


def _ctr_finding(b: Baseline, clicks: int, impressions: int, cfg: CtrConfig) -> Finding | None:
    rate = b["c"] / b["i"] if b["i"] > 0 else 0.0
    if impressions < cfg.min_impressions or impressions * rate < cfg.min_expected_clicks:
        return None
    extra = _ctr_variance(b, rate, cfg)
    z = arcsine_proportion_z(clicks, impressions, rate, extra_variance=extra)
    if abs(z) < cfg.z_threshold:
        return None
    up = z > 0
    severity = "critical" if abs(z) >= 2.0 * cfg.z_threshold else "warning"
    return Finding(
        "ctr_high" if up else "ctr_low", clicks / impressions, rate, z, "up" if up else "down", severity
    )


def ctr_assess(b: Baseline, value: dict[str, Any], cfg: CtrConfig) -> Finding | None:
    """The rules for one window against a baseline. A traffic drop pre-empts the CTR rule: on a
    broken traffic stream the click rate is not meaningful, and one window gets one finding."""
    if b["n"] < cfg.warmup_windows:
        return None
    impressions, clicks = int(value["impressions"]), int(value["clicks"])
    clicks = min(clicks, impressions)  # clicks may outrun impressions in a window; rate <= 1
    return _traffic_finding(b, impressions, cfg) or _ctr_finding(b, clicks, impressions, cfg)


def _ctr_learn_clean(b: Baseline, clicks: int, impressions: int, cfg: CtrConfig) -> Baseline:
    w = _weight(b["n"], cfg.alpha)
    out = dict(b, n=b["n"] + 1, run=0, rc=0.0, ri=0.0)
    out["c"] = (1.0 - w) * b["c"] + w * clicks
    out["i"] = (1.0 - w) * b["i"] + w * impressions
    # tau2: method of moments. (p - rate)^2, against the rate *before* this window, has expectation
    # tau2 + binomial variance + the rate's own uncertainty; subtracting the last two leaves an
    # unbiased sample (without the last, the first windows overstate tau2 by ~20%). Only windows
    # with enough impressions: tiny windows would make the estimate mostly noise.
    if b["n"] > 0 and b["i"] > 0 and impressions >= cfg.min_impressions:
        rate = b["c"] / b["i"]
        p = clicks / impressions
        sample = (p - rate) ** 2 - rate * (1.0 - rate) / impressions - _rate_uncertainty(b, rate, cfg)
        tw = _weight(b["n"] - 1, cfg.variance_alpha)
        out["tau2"] = (1.0 - tw) * b["tau2"] + tw * sample
    return out


def ctr_learn(
    b: Baseline, value: dict[str, Any], finding: Finding | None, cfg: CtrConfig
) -> tuple[Baseline, bool]:
    """Baseline after a window, and whether the window ended a long run by re-baselining."""
    impressions, clicks = int(value["impressions"]), int(value["clicks"])
    clicks = min(clicks, impressions)
    if finding is None:
        return _ctr_learn_clean(b, clicks, impressions, cfg), False
    run = dict(b, run=b["run"] + 1, rc=b["rc"] + clicks, ri=b["ri"] + impressions)
    if run["run"] < cfg.rebaseline_after:
        return run, False
    # The shift has lasted long enough to be the new normal: restart from the run's level.
    k = run["run"]
    return dict(run, c=run["rc"] / k, i=run["ri"] / k, run=0, rc=0.0, ri=0.0), True


def ctr_step(
    state: State | None, value: dict[str, Any], cfg: CtrConfig = CtrConfig()
) -> tuple[State, Event | None]:
    """One closed window {"campaign_id", "window_start", "window_end", "impressions", "clicks",
    optional "version"} of one campaign -> (new state, None or an event)."""
    return _run(
        state,
        value,
        _CTR_FRESH,
        lambda b, v: ctr_assess(b, v, cfg),
        lambda b, v, f: ctr_learn(b, v, f, cfg),
        "campaign",
        str(value["campaign_id"]),
    )


# --- sales per item -------------------------------------------------------------------------

# Baseline fields: n windows learnt; m: EW purchases per window; d: EW dispersion index
# (squared deviation over mean; 1 for Poisson); run, rs: flagged run length and its purchases.
_SALES_FRESH = {"n": 0, "m": 0.0, "d": 1.0, "run": 0, "rs": 0.0}


def sales_assess(b: Baseline, value: dict[str, Any], cfg: SalesConfig) -> Finding | None:
    mean = b["m"]
    if b["n"] < cfg.warmup_windows or mean < cfg.min_expected:
        return None
    purchases = int(value["purchases"])
    if purchases <= cfg.factor * mean:
        return None
    # Scale the Poisson z by the learnt overdispersion and by the uncertainty of the mean.
    inflation = max(1.0, b["d"]) * (1.0 + 1.0 / _effective_n(b["n"], cfg.alpha))
    z = poisson_z(purchases, mean) / math.sqrt(inflation)
    if z < cfg.z_threshold:
        return None
    ratio = purchases / mean
    severity = "critical" if ratio >= 2.0 * cfg.factor else "warning"
    return Finding("sales_spike", purchases, mean, ratio, "up", severity)


def sales_learn(
    b: Baseline, value: dict[str, Any], finding: Finding | None, cfg: SalesConfig
) -> tuple[Baseline, bool]:
    purchases = int(value["purchases"])
    if finding is None:
        w = _weight(b["n"], cfg.alpha)
        out = dict(b, n=b["n"] + 1, run=0, rs=0.0, m=(1.0 - w) * b["m"] + w * purchases)
        if b["n"] > 0 and b["m"] > 0:
            tw = _weight(b["n"] - 1, cfg.alpha)
            out["d"] = (1.0 - tw) * b["d"] + tw * (purchases - b["m"]) ** 2 / b["m"]
        return out, False
    run = dict(b, run=b["run"] + 1, rs=b["rs"] + purchases)
    if run["run"] < cfg.rebaseline_after:
        return run, False
    return dict(run, m=run["rs"] / run["run"], run=0, rs=0.0), True


def sales_step(
    state: State | None, value: dict[str, Any], cfg: SalesConfig = SalesConfig()
) -> tuple[State, Event | None]:
    """One closed window {"item_id", "window_start", "window_end", "purchases", optional "version"}
    of one item -> (new state, None or an event)."""
    return _run(
        state,
        value,
        _SALES_FRESH,
        lambda b, v: sales_assess(b, v, cfg),
        lambda b, v, f: sales_learn(b, v, f, cfg),
        "item",
        str(value["item_id"]),
    )
