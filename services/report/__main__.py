"""`python -m services.report --out reports/ [--hours N]`: renders the fact tables into a PNG and an
HTML page embedding it (CTR per campaign with anomalies marked, CTR by device, experiment lift with
confidence intervals).

Reads through the running warehouse's read-only /query endpoint (WEB_HOST:WAREHOUSE_WEB_PORT, or
--url; QUERY_TOKEN if set), or straight from ClickHouse with --dsn (a server; or a chDB path when no
warehouse has it open). --sample renders made-up facts from a throwaway chDB: no mesh needed.

Exit status: 0 all sections rendered, 1 some section could not be loaded (the files are still
written, the section says why), 2 no source answered (nothing written).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from services.report.data import ReportData, load
from services.report.page import render_html
from services.report.render import render_png
from services.report.source import ClickHouseSource, Source, SourceUnavailable, WarehouseSource
from shared.settings import get_settings

log = logging.getLogger("services.report")
TITLE = "Ad clicks report"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m services.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("reports"), help="directory for the PNG and HTML")
    p.add_argument("--hours", type=float, default=6.0, help="time range: the last N hours (default 6)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", help="the warehouse's /query URL (default from WEB_HOST/WAREHOUSE_WEB_PORT)")
    where.add_argument(
        "--dsn", help="read ClickHouse directly: http(s)://user:pass@host:8123/db or chdb://path"
    )
    where.add_argument("--sample", action="store_true", help="render sample facts (no mesh needed)")
    a = p.parse_args(argv)
    if a.hours <= 0:
        p.error("--hours must be > 0")
    return a


def write_report(
    source: Source, out: Path, hours: float, now_ms: int | None = None
) -> tuple[ReportData, Path, Path]:
    """Query, render, write. Returns the data and the PNG and HTML paths."""
    until_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    data = load(source, until_ms - int(hours * 3_600_000), until_ms)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"adclick-report-{datetime.fromtimestamp(until_ms / 1000, tz=UTC):%Y%m%dT%H%M%SZ}"
    png = render_png(data, out / f"{stem}.png", TITLE)
    html = render_html(data, png, out / f"{stem}.html", TITLE)
    return data, png, html


def sample_source(workdir: Path, hours: float) -> ClickHouseSource:
    # Imported here: only --sample needs the sample module.
    from services.report.sample import sample_facts, seed
    from shared.clickhouse import migrate

    source = ClickHouseSource(f"chdb://{workdir}")
    migrate(source.client)
    seed(source.client, sample_facts(datetime.now(tz=UTC), hours))
    return source


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    a = parse_args(argv)
    settings = get_settings()
    with tempfile.TemporaryDirectory(prefix="adclick-report-") as tmp:
        try:
            if a.sample:
                source: Source = sample_source(Path(tmp), a.hours)
            elif a.dsn:
                source = ClickHouseSource(a.dsn)
            else:
                url = a.url or f"http://{settings.web_host}:{settings.warehouse_web_port}/query"
                token = settings.query_token.get_secret_value() if settings.query_token else None
                source = WarehouseSource(url, token)
        except SourceUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        try:
            data, png, html = write_report(source, a.out, a.hours)
        except SourceUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        finally:
            source.close()
    print(png)
    print(html)
    return 1 if data.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
