"""Live terminal view of a running local mesh, refreshed every 2 s (Ctrl-C to quit):
events/s into ingest, the latest closed CTR window per campaign, open anomalies, recent Slack
alerts, and what was dead-lettered, discarded or late.

Reads only the services' own HTTP views (ingest /stats, ctr /ctr/latest, anomaly /anomalies/open,
warehouse /query), so it shows what a user of those endpoints would see."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import urllib3

from services.alerting.settings import get_alerting_settings
from services.anomaly.settings import get_anomaly_settings
from shared.settings import get_settings

settings = get_settings()
http = urllib3.PoolManager(timeout=3.0, retries=False)
BASE = f"http://{settings.web_host}"
BOLD, DIM, RED, GREEN, YELLOW, RESET = "\x1b[1m", "\x1b[2m", "\x1b[31m", "\x1b[32m", "\x1b[33m", "\x1b[0m"


def get(port: int, path: str) -> Any:
    try:
        r = http.request("GET", f"{BASE}:{port}{path}")
        return orjson.loads(r.data) if r.status == 200 else None
    except Exception:
        return None


def sql(query: str) -> list[list[Any]]:
    try:
        r = http.request("POST", f"{BASE}:{settings.warehouse_web_port}/query", body=query.encode())
        return orjson.loads(r.data)["rows"] if r.status == 200 else []
    except Exception:
        return []


def hhmmss(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S")


class Rate:
    """Events/s from a monotonically growing counter sampled at each refresh."""

    def __init__(self) -> None:
        self.last: tuple[float, int] | None = None

    def update(self, total: int) -> float:
        now = time.monotonic()
        rate = 0.0
        if self.last is not None and now > self.last[0]:
            rate = max(total - self.last[1], 0) / (now - self.last[0])
        self.last = (now, total)
        return rate


def ctr_lines() -> list[str]:
    latest = get(settings.ctr_web_port, "/ctr/latest")
    if not latest:
        return [
            f"{DIM}waiting for the first closed window ({settings.window_size_ms // 1000} s windows, "
            f"{settings.watermark_delay_ms // 1000} s watermark delay)…{RESET}"
        ]
    header = f"{'campaign':<14}{'window (UTC)':<20}{'impr':>8}{'clicks':>8}{'CTR':>9}{'CPM':>8}{'v':>3}"
    lines = [f"{BOLD}{header}{RESET}"]
    for c, r in sorted(latest.items()):
        span = f"{hhmmss(r['window_start'])}-{hhmmss(r['window_end'])}"
        lines.append(
            f"{c:<14}{span:<20}{r['impressions']:>8}{r['clicks']:>8}{r['ctr']:>9.2%}"
            f"{r['cpm']:>8.2f}{r['version']:>3}"
        )
    return lines


def anomaly_lines() -> list[str]:
    open_now = get(get_anomaly_settings().anomaly_web_port, "/anomalies/open")
    rows = sql(
        "SELECT a.kind, a.key, a.severity, toUnixTimestamp64Milli(a.window_start), round(a.observed, 4), "
        "round(a.expected, 4), d.status FROM fct_anomaly AS a FINAL LEFT JOIN (SELECT anomaly_id, "
        "argMax(status, attempt) AS status FROM fct_alert FINAL GROUP BY anomaly_id) AS d USING anomaly_id "
        "WHERE a.kind != 'resolved' ORDER BY a.window_start DESC LIMIT 6"
    )
    lines = [
        f"{BOLD}anomalies{RESET} (open now: {len(open_now) if isinstance(open_now, list | dict) else '?'})"
    ]
    for kind, key, severity, start, observed, expected, status in rows:
        colour = RED if severity == "critical" else YELLOW
        slack = f"slack: {status}" if status else "slack: pending"
        lines.append(
            f"  {colour}{kind:<13}{RESET}{key:<14}{hhmmss(start)}  observed {observed} vs "
            f"expected {expected}  {DIM}{slack}{RESET}"
        )
    if not rows:
        lines.append(f"  {GREEN}none{RESET}")
    return lines


def reject_lines() -> list[str]:
    rows = sql(
        "SELECT 'dead letter', reason, count() FROM fct_dead_letter GROUP BY reason UNION ALL "
        "SELECT 'discarded', reason, count() FROM fct_discarded_event GROUP BY reason UNION ALL "
        "SELECT 'late', stage, count() FROM fct_late_event GROUP BY stage"
    )
    if not rows:
        return [f"{BOLD}rejected{RESET}: none"]
    return [f"{BOLD}rejected{RESET}: " + ", ".join(f"{o} {r}={n}" for o, r, n in sorted(rows))]


def render(rate: Rate) -> str:
    stats = get(settings.ingest_web_port, "/stats") or {"outcomes": {}}
    outcomes = stats["outcomes"]
    total = sum(outcomes.values())
    lines = [
        f"{BOLD}ad-click mesh{RESET} — {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC   (Ctrl-C stops everything)",
        f"ingest: {rate.update(total):,.0f} events/s in, {total:,} so far "
        + DIM
        + ", ".join(f"{k}={v}" for k, v in sorted(outcomes.items()))
        + RESET,
        "",
        *ctr_lines(),
        "",
        *anomaly_lines(),
        "",
        *reject_lines(),
    ]
    return "\n".join(lines)


def main() -> None:
    get_alerting_settings()  # fail early on a broken .env, not in the middle of the screen
    rate = Rate()
    try:
        while True:
            sys.stdout.write("\x1b[2J\x1b[H" + render(rate) + "\n")
            sys.stdout.flush()
            time.sleep(2.0)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
