"""Secrets never reach logs; the query endpoint wants its token; no service accepts writes over HTTP."""

from __future__ import annotations

import orjson
import pytest

from tests.mesh_harness import http, wait_for

pytestmark = pytest.mark.integration

QUERY_TOKEN = "qt-0123456789abcdef-secret"
SLACK_TOKEN = "xoxb-000000000000-secret-token-for-tests"
WEBHOOK = "http://127.0.0.1:9/services/T000/B000/secret-webhook-path"


def test_tokens_required_never_logged_json_logs_and_no_http_writes(mesh_factory):
    mesh = mesh_factory(
        QUERY_TOKEN=QUERY_TOKEN,
        SLACK_BOT_TOKEN=SLACK_TOKEN,
        SLACK_WEBHOOK_URL=WEBHOOK,
        SLACK_BASE_URL="http://127.0.0.1:9/api/",
        LOG_LEVEL="debug",
        LOG_FORMAT="json",
    )
    mesh.start("ctr", "warehouse", "alerting")
    wh = mesh.services["warehouse"]
    url = f"http://127.0.0.1:{wh.port}/query"

    assert http.request("POST", url, body=b"SELECT 1").status == 401
    bad = http.request("POST", url, body=b"SELECT 1", headers={"Authorization": "Bearer wrong"})
    assert bad.status == 401
    ok = wait_for(
        lambda: http.request(
            "POST", url, body=b"SELECT 1", headers={"Authorization": f"Bearer {QUERY_TOKEN}"}
        ),
        30,
        "query with the token",
    )
    assert ok.status == 200
    # read-only even with the token
    write = http.request(
        "POST", url, body=b"DROP TABLE fct_campaign_ctr", headers={"Authorization": f"Bearer {QUERY_TOKEN}"}
    )
    assert write.status == 400

    for svc, path in [
        ("ctr", "/ctr/latest"),
        ("ctr", "/health"),
        ("warehouse", "/stats"),
        ("alerting", "/alerts/pending"),
    ]:
        port = mesh.services[svc].port
        assert http.request("GET", f"http://127.0.0.1:{port}{path}").status == 200
        for method in ("PUT", "DELETE", "PATCH", "POST"):
            assert http.request(method, f"http://127.0.0.1:{port}{path}").status in (404, 405), (
                svc,
                path,
                method,
            )

    metrics = http.request("GET", f"http://127.0.0.1:{wh.port}/metrics")
    assert metrics.status == 200 and b"mesh_consumer_lag_messages" in metrics.data
    assert b"mesh_events_in_total" in metrics.data

    for name, svc in mesh.services.items():
        log = svc.log()
        for secret in (QUERY_TOKEN, SLACK_TOKEN, "secret-webhook-path"):
            assert secret not in log, f"{secret[:8]}… found in the {name} log"
        # LOG_FORMAT=json: every log line is one JSON object naming its service; the rest is
        # faust's start-up banner (a box drawn on stdout; the log lines go to stderr)
        lines = [line for line in log.splitlines() if line.strip()]
        records = [orjson.loads(line) for line in lines if line.startswith("{")]
        assert {r["service"] for r in records} == {name} and len(records) > 20
        assert all(line[0] in "+|" for line in lines if not line.startswith("{")), name
