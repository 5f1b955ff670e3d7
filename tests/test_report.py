"""`python -m services.report`: renders a readable PNG and an HTML page from the fact tables, through
a direct DSN or the warehouse's /query endpoint, and says which sections it could not load."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest
from PIL import Image, ImageStat

from services.report.__main__ import main, write_report
from services.report.data import bucket_ms
from services.report.sample import sample_facts, seed
from services.report.source import ClickHouseSource, QueryError, SourceUnavailable, WarehouseSource
from shared.clickhouse import migrate, migrations, read_only_sql

END = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
NOW_MS = int(END.timestamp() * 1000)
ENGAGEMENT_MIGRATED = 2 in {v for v, _n, _s in migrations()}


@pytest.fixture(scope="module")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("chdb")
    client = clickhouse_connect.get_client(dsn=f"chdb://{path}")
    migrate(client)
    seed(client, sample_facts(END, hours=6))
    yield path
    client.close()


def assert_readable_png(path: Path) -> None:
    with Image.open(path) as img:
        img.verify()  # a complete, uncorrupted PNG
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert 1200 <= img.width <= 3000 and 900 <= img.height <= 3000, img.size
        # not a blank canvas: lines, text and markers make the pixels vary
        assert max(ImageStat.Stat(img.convert("L")).stddev) > 20


def test_report_from_a_dsn(chdb_path: Path, tmp_path: Path) -> None:
    source = ClickHouseSource(f"chdb://{chdb_path}")
    try:
        data, png, html = write_report(source, tmp_path / "out", hours=6, now_ms=NOW_MS)
    finally:
        source.close()
    assert_readable_png(png)
    page = html.read_text()
    assert "data:image/png;base64," in page and "Campaign anomalies" in page

    assert [s.name for s in data.campaign_ctr] == ["c-01", "c-02", "c-03", "c-04", "c-05"]
    # FINAL: the version-1 rows of the sample have no clicks, so a CTR of 0 would betray them
    assert all(v > 0 for s in data.campaign_ctr for v in s.values)
    assert {(a.key, a.kind) for a in data.anomalies} == {("c-03", "ctr_high"), ("c-05", "traffic_drop")}
    assert data.bucket_ms == 5 * 60_000
    if ENGAGEMENT_MIGRATED:
        assert data.errors == {}
        assert [s.name for s in data.device_ctr] == ["desktop", "mobile", "tablet"]
        readouts = {(r.experiment, r.variation) for r in data.readouts}
        assert readouts == {("checkout-redesign", "treatment"), ("new-ranking", "variant-b")}
        assert all(r.ci_low <= r.lift_abs <= r.ci_high for r in data.readouts)
    else:
        assert set(data.errors) == {"devices", "experiments"}


def test_a_missing_table_costs_its_section_only(
    chdb_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # One chDB path per process (chDB's rule): hide the table in the module's database for a moment.
    client = clickhouse_connect.get_client(dsn=f"chdb://{chdb_path}")
    client.command("RENAME TABLE fct_anomaly TO hidden_anomaly")
    try:
        status = main(["--dsn", f"chdb://{chdb_path}", "--out", str(tmp_path), "--hours", "1"])
    finally:
        client.command("RENAME TABLE hidden_anomaly TO fct_anomaly")
        client.close()
    assert status == 1
    png, html = (Path(p) for p in capsys.readouterr().out.split())
    assert_readable_png(png)
    assert "fct_anomaly" in html.read_text()  # the page says what is missing


def test_no_source_no_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["--url", "http://127.0.0.1:9/query", "--out", str(tmp_path / "out")])
    assert status == 2
    assert "cannot reach the warehouse" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


class FakeWarehouse(BaseHTTPRequestHandler):
    """POST /query like services/warehouse/views.py: read-only SQL, JSON out, 400 on bad SQL,
    401 without the bearer token."""

    client: Any = None
    token = "s3cret"

    def do_POST(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            return self.reply(401, {"error": "missing or wrong bearer token"})
        sql = self.rfile.read(int(self.headers["Content-Length"])).decode()
        try:
            r = self.client.query(read_only_sql(sql))
        except Exception as exc:
            return self.reply(400, {"error": str(exc).splitlines()[0]})
        # like faust's view.json: datetimes become strings
        self.reply(200, {"columns": list(r.column_names), "rows": [list(row) for row in r.result_rows]})

    def reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def warehouse_url(chdb_path: Path) -> Iterator[str]:
    FakeWarehouse.client = clickhouse_connect.get_client(dsn=f"chdb://{chdb_path}")
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeWarehouse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/query"
    server.shutdown()
    server.server_close()
    FakeWarehouse.client.close()


def test_report_through_the_warehouse_query_endpoint(warehouse_url: str, tmp_path: Path) -> None:
    source = WarehouseSource(warehouse_url, token="s3cret")
    data, png, _html = write_report(source, tmp_path, hours=6, now_ms=NOW_MS)
    source.close()
    assert_readable_png(png)
    assert len(data.campaign_ctr) == 5 and data.anomalies
    with pytest.raises(QueryError, match="fct_nope"):
        source.query("SELECT * FROM fct_nope")
    with pytest.raises(SourceUnavailable, match="QUERY_TOKEN"):
        WarehouseSource(warehouse_url, token="wrong").query("SELECT 1")


@pytest.mark.parametrize(("hours", "minutes"), [(0.5, 1), (1, 1), (3, 5), (6, 5), (24, 30), (24 * 7, 180)])
def test_buckets_keep_lines_readable(hours: float, minutes: int) -> None:
    assert bucket_ms(int(hours * 3_600_000)) == minutes * 60_000
