"""A small, deterministic set of facts in every fact table: for `python -m services.report --sample`
(see the report without a running mesh) and for the tests of the report and of the Grafana
dashboard's SQL.

Rows are dicts; `insert_rows` fills the columns a row leaves out with a neutral value of the
column's type, read from the table itself, so a column added by a later migration does not break
the sample. Windows of fct_campaign_ctr are also written once at an older version (fewer clicks,
as a window emitted before late clicks arrived): a query that forgets FINAL counts them twice.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from clickhouse_connect.driver.client import Client

from shared.stats import srm_p_value, two_proportion_ztest

Row = dict[str, Any]
WINDOW = timedelta(minutes=1)
CAMPAIGNS = {"c-01": 0.050, "c-02": 0.035, "c-03": 0.028, "c-04": 0.042, "c-05": 0.020}
DEVICES = {"mobile": (0.60, 0.030), "desktop": (0.30, 0.045), "tablet": (0.10, 0.025)}
EXPERIMENTS = {
    "checkout-redesign": {"control": 0.050, "treatment": 0.058},
    "new-ranking": {"control": 0.050, "variant-b": 0.049},
}


def _neutral(ch_type: str, now: datetime) -> Any:
    t = ch_type.removeprefix("LowCardinality(")  # LowCardinality(Nullable(String)) is still nullable
    if t.startswith("Nullable("):
        return None
    if t.startswith("Array("):
        return []
    if t.startswith(("DateTime", "Date")):
        return now if t.startswith("DateTime") else now.date()
    if t.startswith(("Int", "UInt")):
        return 0
    if t.startswith(("Float", "Decimal")):
        return 0.0
    if t == "Bool":
        return False
    return ""


def insert_rows(client: Client, table: str, rows: list[Row]) -> None:
    """Insert `rows` into `table`; columns missing from a row get a neutral value of their type.
    Columns with a DEFAULT (like recorded_at) are left to ClickHouse unless the row sets them."""
    if not rows:
        return
    described = list(client.query(f"DESCRIBE TABLE {table}").named_results())
    given = set().union(*(r.keys() for r in rows))
    unknown = given - {c["name"] for c in described}
    if unknown:
        raise ValueError(f"{table} has no column(s) {sorted(unknown)}")
    now = datetime.now(tz=UTC)
    columns = [c for c in described if c["name"] in given or c["default_type"] == ""]
    names = [c["name"] for c in columns]
    neutral = {c["name"]: _neutral(c["type"], now) for c in columns}
    client.insert(table, [[r.get(n, neutral[n]) for n in names] for r in rows], column_names=names)


def _windows(end: datetime, hours: float) -> list[datetime]:
    last = end.replace(second=0, microsecond=0) - WINDOW
    n = max(int(hours * 60), 1)
    return [last - WINDOW * i for i in range(n - 1, -1, -1)]


def _binomial(rng: random.Random, n: int, p: float) -> int:
    # normal approximation: enough for sample data, and cheap
    mean, sd = n * p, math.sqrt(max(n * p * (1 - p), 1e-9))
    return max(0, min(n, round(rng.gauss(mean, sd))))


def campaign_facts(windows: list[datetime], rng: random.Random) -> tuple[list[Row], list[Row]]:
    """fct_campaign_ctr rows (each window at version 1 and 2) and the fct_anomaly rows of a CTR spike
    of c-03 and a traffic drop of c-05, two thirds into the range."""
    ctr_rows: list[Row] = []
    anomalies: list[Row] = []
    n = len(windows)
    spike = range(int(n * 0.62), int(n * 0.62) + max(3, n // 30))
    drop = range(int(n * 0.8), int(n * 0.8) + max(3, n // 40))
    for campaign, base in CAMPAIGNS.items():
        for i, ws in enumerate(windows):
            shape = 1 + 0.25 * math.sin(2 * math.pi * i / max(n, 2))
            impressions = max(1, round(rng.gauss(300 * shape, 20)))
            p = base
            if campaign == "c-03" and i in spike:
                p = base * 3
            if campaign == "c-05" and i in drop:
                impressions = max(1, impressions // 10)
            clicks = max(1, _binomial(rng, impressions, p))
            cost = round(clicks * 0.4, 2)
            final = {
                "campaign_id": campaign,
                "window_start": ws,
                "window_end": ws + WINDOW,
                "impressions": impressions,
                "clicks": clicks,
                "ctr": clicks / impressions,
                "cost": cost,
                "cpc": cost / clicks,
                "cpm": cost * 1000 / impressions,
                "version": 2,
                "emitted_at": ws + WINDOW * 2,
            }
            early = final | {
                "clicks": 0,
                "ctr": 0.0,
                "cost": 0.0,
                "cpc": 0.0,
                "cpm": 0.0,
                "version": 1,
                "emitted_at": ws + WINDOW,
            }
            ctr_rows += [early, final]
            kind = "ctr_high" if campaign == "c-03" and i in spike else None
            kind = "traffic_drop" if campaign == "c-05" and i in drop else kind
            if kind:
                anomalies.append(
                    {
                        "anomaly_id": f"{campaign}-{kind}-{i}",
                        "kind": kind,
                        "key_type": "campaign",
                        "key": campaign,
                        "window_start": ws,
                        "window_end": ws + WINDOW,
                        "observed": final["ctr"] if kind == "ctr_high" else float(impressions),
                        "expected": base if kind == "ctr_high" else 300.0,
                        "score": 6.5 if kind == "ctr_high" else 5.0,
                        "direction": "up" if kind == "ctr_high" else "down",
                        "severity": "critical" if kind == "ctr_high" else "warning",
                        "incident_id": f"{campaign}-{kind}-{(spike if kind == 'ctr_high' else drop)[0]}",
                        "detected_at": ws + WINDOW * 2,
                    }
                )
    after_spike = windows[spike.stop] if spike.stop < n else windows[-1]
    anomalies.append(
        {
            "anomaly_id": "c-03-resolved",
            "kind": "resolved",
            "key_type": "campaign",
            "key": "c-03",
            "window_start": after_spike,
            "window_end": after_spike + WINDOW,
            "incident_id": "",
            "resolves": f"c-03-ctr_high-{spike[0]}",
            "reason": "normal",
            "detected_at": after_spike + WINDOW * 2,
        }
    )
    return ctr_rows, anomalies


def alert_facts(anomalies: list[Row]) -> list[Row]:
    """fct_alert: the first anomaly of each incident posted (one after a 429 retry), the rest folded."""
    rows: list[Row] = []
    for a in anomalies:
        if a["kind"] == "resolved":
            continue
        at = a["detected_at"] + timedelta(seconds=2)
        first = a["anomaly_id"] == a["incident_id"]
        if first and a["key"] == "c-05":
            rows.append(
                {
                    "anomaly_id": a["anomaly_id"],
                    "attempt": 1,
                    "status": "retry",
                    "http_status": 429,
                    "error": "rate_limited",
                    "channel": "C0ALERTS",
                    "at": at,
                }
            )
            at += timedelta(seconds=30)
        rows.append(
            {
                "anomaly_id": a["anomaly_id"],
                "attempt": 2 if first and a["key"] == "c-05" else 1,
                "status": "sent" if first else "folded",
                "http_status": 200,
                "slack_ts": f"{at.timestamp():.6f}",
                "channel": "C0ALERTS",
                "at": at,
            }
        )
    return rows


def quality_facts(windows: list[datetime], rng: random.Random) -> dict[str, list[Row]]:
    dead, late, discarded = [], [], []
    for i, ws in enumerate(windows):
        if i % 7 == 0:
            dead.append(
                {
                    "source": f"ad-impressions:0:{i}",
                    "source_topic": "ad-impressions",
                    "source_partition": 0,
                    "source_offset": i,
                    "stage": "ingest",
                    "reason": rng.choice(["unparseable", "invalid"]),
                    "detail": "sample",
                    "payload": "{",
                    "dead_lettered_at": ws + timedelta(seconds=5),
                }
            )
        if i % 5 == 0:
            late.append(
                {
                    "stage": "ctr",
                    "source": f"canonical-events:1:{i}",
                    "kind": "click",
                    "event_id": f"e{i}",
                    "campaign_id": "c-01",
                    "event_time": ws,
                    "window_start": ws,
                    "watermark": ws + WINDOW * 2,
                }
            )
        if i % 3 == 0:
            discarded.append(
                {
                    "reason": rng.choice(["duplicate", "orphan_click"]),
                    "source": f"ingest-by-key:2:{i}",
                    "kind": "click",
                    "event_id": f"d{i}",
                    "event_time": ws,
                }
            )
    return {"fct_dead_letter": dead, "fct_late_event": late, "fct_discarded_event": discarded}


def engagement_facts(windows: list[datetime], rng: random.Random) -> dict[str, list[Row]]:
    """fct_device_engagement, fct_user, fct_item, fct_experiment and fct_experiment_readout (the
    readout every 10 windows, cumulative, computed with the same statistics the mesh uses)."""
    devices, users, items, exps, readouts = [], [], [], [], []
    totals: dict[tuple[str, str], list[int]] = {}
    for i, ws in enumerate(windows):
        we = ws + WINDOW
        for device, (share, ctr) in DEVICES.items():
            impressions = round(1500 * share * rng.uniform(0.9, 1.1))
            clicks = _binomial(rng, impressions, ctr)
            devices.append(
                {
                    "device_type": device,
                    "window_start": ws,
                    "window_end": we,
                    "impressions": impressions,
                    "clicks": clicks,
                    "ctr": clicks / impressions if impressions else 0.0,
                    "unique_users": round(impressions * 0.7),
                    "conversions": _binomial(rng, clicks, 0.1),
                    "version": 1,
                    "emitted_at": we,
                }
            )
        for u in range(3):
            users.append(
                {
                    "user_id": f"u-{(i + u) % 40:03d}",
                    "window_start": ws,
                    "window_end": we,
                    "views": 3 + u,
                    "clicks": 1,
                    "purchases": u % 2,
                    "sessions": 1,
                    "first_seen": ws,
                    "last_seen": we,
                    "version": 1,
                    "emitted_at": we,
                }
            )
        for it in range(12):
            views = rng.randint(5, 40) * (3 if it == 4 else 1)
            purchases = _binomial(rng, views, 0.08)
            items.append(
                {
                    "item_id": f"i-{it:03d}",
                    "window_start": ws,
                    "window_end": we,
                    "views": views,
                    "clicks": views // 3,
                    "add_to_carts": views // 6,
                    "purchases": purchases,
                    "conversion_rate": purchases / views,
                    "version": 1,
                    "emitted_at": we,
                }
            )
        for exp, arms in EXPERIMENTS.items():
            for arm, rate in arms.items():
                n = rng.randint(90, 110)
                conv = _binomial(rng, n, rate)
                acc = totals.setdefault((exp, arm), [0, 0])
                acc[0] += n
                acc[1] += conv
                exps.append(
                    {
                        "experiment": exp,
                        "variation": arm,
                        "window_start": ws,
                        "window_end": we,
                        "users": n,
                        "conversions": conv,
                        "conversion_rate": conv / n,
                        "version": 1,
                        "emitted_at": we,
                    }
                )
            if i % 10 == 9 or i == len(windows) - 1:
                readouts += _readouts(exp, arms, totals, we)
    return {
        "fct_device_engagement": devices,
        "fct_user": users,
        "fct_item": items,
        "fct_experiment": exps,
        "fct_experiment_readout": readouts,
    }


def _readouts(
    exp: str, arms: dict[str, float], totals: dict[tuple[str, str], list[int]], as_of: datetime
) -> list[Row]:
    cn, cc = totals[(exp, "control")]
    srm = srm_p_value([totals[(exp, a)][0] for a in arms])
    rows = []
    for arm in arms:
        n, c = totals[(exp, arm)]
        t = two_proportion_ztest(cc, cn, c, n)
        rows.append(
            {
                "experiment": exp,
                "variation": arm,
                "as_of": as_of,
                "users": n,
                "conversions": c,
                "conversion_rate": c / n,
                "control_users": cn,
                "control_conversions": cc,
                "z": t.z,
                "p_value": t.p_value,
                "lift_abs": t.lift,
                "lift_rel": t.relative_lift,
                "ci_low": t.ci_low,
                "ci_high": t.ci_high,
                "srm_chi2": 0.0,
                "srm_p_value": srm,
                "version": int(as_of.timestamp()),
            }
        )
    return rows


def sample_facts(end: datetime, hours: float = 3.0, seed: int = 7) -> dict[str, list[Row]]:
    """Facts for every table, for the `hours` of one-minute windows before `end`."""
    rng = random.Random(seed)
    windows = _windows(end, hours)
    ctr_rows, anomalies = campaign_facts(windows, rng)
    return {
        "fct_campaign_ctr": ctr_rows,
        "fct_anomaly": anomalies,
        "fct_alert": alert_facts(anomalies),
        **quality_facts(windows, rng),
        **engagement_facts(windows, rng),
    }


def existing_tables(client: Client) -> set[str]:
    return {
        r[0]
        for r in client.query("SELECT name FROM system.tables WHERE database = currentDatabase()").result_rows
    }


def seed(client: Client, facts: dict[str, list[Row]], only: Iterable[str] | None = None) -> list[str]:
    """Insert the facts of every table that exists (or of `only`). Returns the tables left out
    because they do not exist (a migration not written yet)."""
    tables = existing_tables(client)
    wanted = set(only) if only is not None else set(facts)
    missing = sorted(t for t in wanted if t not in tables)
    for table in sorted(wanted - set(missing)):
        insert_rows(client, table, facts[table])
    return missing
