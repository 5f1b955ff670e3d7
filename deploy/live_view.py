"""Live terminal view of a running local mesh: latest closed CTR window per campaign, ingest
outcomes and warehouse row counts, refreshed every 2 s. Ctrl-C to quit.

Reads only the services' own HTTP views (ctr /ctr/latest, ingest /stats, warehouse /query)."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import urllib3

from shared.settings import get_settings

settings = get_settings()
http = urllib3.PoolManager(timeout=3.0, retries=False)
BASE = f"http://{settings.web_host}"


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


def render() -> str:
    lines = [f"ad-click mesh — {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC   (Ctrl-C stops everything)", ""]
    latest = get(settings.ctr_web_port, "/ctr/latest")
    if latest:
        lines.append(
            f"{'campaign':<14}{'window (UTC)':<22}{'impr':>8}{'clicks':>8}{'CTR':>9}{'CPM':>8}{'ver':>5}"
        )
        for c, r in sorted(latest.items()):
            span = f"{hhmmss(r['window_start'])}-{hhmmss(r['window_end'])}"
            lines.append(
                f"{c:<14}{span:<22}{r['impressions']:>8}{r['clicks']:>8}{r['ctr']:>9.2%}"
                f"{r['cpm']:>8.2f}{r['version']:>5}"
            )
    else:
        lines.append(
            "waiting for the first closed window (window size "
            f"{settings.window_size_ms // 1000}s + watermark delay {settings.watermark_delay_ms // 1000}s)…"
        )
    stats = get(settings.ingest_web_port, "/stats")
    if stats:
        lines += [
            "",
            "ingest outcomes: " + ", ".join(f"{k}={v}" for k, v in sorted(stats["outcomes"].items())),
        ]
    rows = sql(
        "SELECT 'fct_campaign_ctr', count() FROM fct_campaign_ctr UNION ALL "
        "SELECT 'fct_dead_letter', count() FROM fct_dead_letter UNION ALL "
        "SELECT 'fct_late_event', count() FROM fct_late_event UNION ALL "
        "SELECT 'fct_discarded_event', count() FROM fct_discarded_event"
    )
    if rows:
        lines += ["", "ClickHouse rows: " + ", ".join(f"{t}={n}" for t, n in sorted(rows))]
    return "\n".join(lines)


def main() -> None:
    try:
        while True:
            out = render()
            sys.stdout.write("\x1b[2J\x1b[H" + out + "\n")
            sys.stdout.flush()
            time.sleep(2.0)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
