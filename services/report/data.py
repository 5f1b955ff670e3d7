"""The report's queries and what they load into. Window facts are ReplacingMergeTree(version):
every query reads them with FINAL, so a re-emitted window counts once, at its latest version."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from services.report.source import QueryError, Source

log = logging.getLogger(__name__)


# Per-minute CTR of a campaign is noise around its level (a few clicks a window): the lines show
# sum(clicks) / sum(impressions) over buckets of several windows instead, at most ~72 per range.
# Bucket sizes divide a day, so buckets align to whole hours whatever the range.
BUCKET_MINUTES = (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440)
MAX_POINTS = 72


def bucket_ms(span_ms: int) -> int:
    for minutes in BUCKET_MINUTES:
        if span_ms / (minutes * 60_000) <= MAX_POINTS:
            return minutes * 60_000
    return BUCKET_MINUTES[-1] * 60_000


@dataclass(frozen=True)
class Series:
    """One line: x = bucket starts (epoch ms), y = values."""

    name: str
    t_ms: list[int]
    values: list[float]
    weight: float = 0.0  # impressions in range: picks which campaigns get a line


@dataclass(frozen=True)
class Anomaly:
    kind: str
    key: str
    t_ms: int  # the bucket its window falls in: where the chart marks it
    window_ms: int  # the window itself
    severity: str
    score: float | None


@dataclass(frozen=True)
class Readout:
    experiment: str
    variation: str
    users: int
    control_users: int
    conversion_rate: float
    lift_abs: float
    lift_rel: float | None
    ci_low: float
    ci_high: float
    p_value: float
    srm_p_value: float


@dataclass
class ReportData:
    since_ms: int
    until_ms: int
    bucket_ms: int
    campaign_ctr: list[Series] = field(default_factory=list)
    anomalies: list[Anomaly] = field(default_factory=list)
    device_ctr: list[Series] = field(default_factory=list)
    readouts: list[Readout] = field(default_factory=list)
    # section -> why it could not be loaded (shown in its place, and the exit status says so)
    errors: dict[str, str] = field(default_factory=dict)


def _since(since_ms: int) -> str:
    return f"fromUnixTimestamp64Milli(toInt64({int(since_ms)}))"


# An alias in ClickHouse names its expression everywhere in the query: `ctr` reuses `impressions`
# (the sum) rather than summing again, which would nest one aggregate in another.
# {bucket} = the bucket start of a window, in epoch ms (plain arithmetic: Python computes the same).
BUCKET = "intDiv(toUnixTimestamp64Milli(window_start), {ms}) * {ms}"

CAMPAIGN_SQL = """
SELECT campaign_id, {bucket} AS t, sum(impressions) AS impressions,
       if(impressions = 0, 0, sum(clicks) / impressions) AS ctr
FROM fct_campaign_ctr FINAL
WHERE window_start >= {since}
GROUP BY campaign_id, t
ORDER BY campaign_id, t
"""

ANOMALY_SQL = """
SELECT kind, key, {bucket} AS t, toUnixTimestamp64Milli(window_start) AS w, severity, score
FROM fct_anomaly FINAL
WHERE key_type = 'campaign' AND kind != 'resolved' AND window_start >= {since}
ORDER BY w, key
"""

DEVICE_SQL = """
SELECT device_type, {bucket} AS t, sum(impressions) AS impressions,
       if(impressions = 0, 0, sum(clicks) / impressions) AS ctr
FROM fct_device_engagement FINAL
WHERE window_start >= {since}
GROUP BY device_type, t
ORDER BY device_type, t
"""

# The newest readout of each treatment arm (control is the baseline every lift is measured from).
READOUT_SQL = """
SELECT experiment, variation, users, control_users, conversion_rate, lift_abs, lift_rel,
       ci_low, ci_high, p_value, srm_p_value
FROM fct_experiment_readout FINAL
WHERE variation != 'control'
ORDER BY experiment, variation, as_of DESC
LIMIT 1 BY experiment, variation
"""


def _series(rows: list[list[Any]]) -> list[Series]:
    """(key, t, impressions, ctr) rows, ordered by key then t -> one Series per key."""
    by_key: dict[str, tuple[list[int], list[float], list[float]]] = defaultdict(lambda: ([], [], []))
    for key, t, impressions, ctr in rows:
        ts, vs, ws = by_key[str(key)]
        ts.append(int(t))
        vs.append(float(ctr))
        ws.append(float(impressions))
    return [Series(k, ts, vs, sum(ws)) for k, (ts, vs, ws) in sorted(by_key.items())]


def _optional_float(v: Any) -> float | None:
    return None if v is None else float(v)


def load(source: Source, since_ms: int, until_ms: int) -> ReportData:
    """Run every section's query. A failing query (say, a table a newer migration adds) costs that
    section only; SourceUnavailable (nothing answers) propagates."""
    data = ReportData(since_ms, until_ms, bucket_ms(until_ms - since_ms))
    since = _since(since_ms)
    bucket = BUCKET.format(ms=data.bucket_ms)

    def run(section: str, sql: str) -> list[list[Any]] | None:
        try:
            return source.query(sql.format(since=since, bucket=bucket)).rows
        except QueryError as exc:
            log.warning("%s: %s", section, exc)
            # ClickHouse repeats the whole query after " In scope": the reason is enough here
            data.errors[section] = str(exc).split(". In scope ")[0]
            return None

    if (rows := run("campaigns", CAMPAIGN_SQL)) is not None:
        data.campaign_ctr = _series(rows)
    if (rows := run("anomalies", ANOMALY_SQL)) is not None:
        data.anomalies = [
            Anomaly(str(kind), str(key), int(t), int(w), str(sev or ""), _optional_float(score))
            for kind, key, t, w, sev, score in rows
        ]
    if (rows := run("devices", DEVICE_SQL)) is not None:
        data.device_ctr = _series(rows)
    if (rows := run("experiments", READOUT_SQL)) is not None:
        data.readouts = [
            Readout(
                experiment=str(r[0]),
                variation=str(r[1]),
                users=int(r[2]),
                control_users=int(r[3]),
                conversion_rate=float(r[4]),
                lift_abs=float(r[5]),
                lift_rel=_optional_float(r[6]),
                ci_low=float(r[7]),
                ci_high=float(r[8]),
                p_value=float(r[9]),
                srm_p_value=float(r[10]),
            )
            for r in rows
        ]
    return data
