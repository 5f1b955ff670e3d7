"""GET /ctr/latest, /ctr/previous, /ctr/{campaign}: right after windows close, and the same after
the ctr service is killed and restarted (the table is rebuilt from its changelog)."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from services.generator.spec import TrafficSpec
from services.generator.traffic import TrafficGenerator
from tests.ctr_checks import produce
from tests.mesh_harness import wait_for
from tests.oracle import expected

pytestmark = pytest.mark.integration


def oracle_latest_previous(
    windows: dict[tuple[str, int], list[int]],
) -> dict[str, list[tuple[int, int, int]]]:
    by_campaign: dict[str, list[tuple[int, int, int]]] = {}
    for (campaign, start), (imp, clk, _) in sorted(windows.items()):
        by_campaign.setdefault(campaign, []).append((start, imp, clk))
    return {c: ws[-2:] for c, ws in by_campaign.items()}


def served(ctr) -> dict[str, list[tuple[int, int, int]]]:
    status, latest = ctr.get_json("/ctr/latest")
    assert status == 200
    out = {}
    for campaign in latest:
        status, body = ctr.get_json(f"/ctr/{campaign}")
        assert status == 200
        pair = [body["previous"], body["latest"]]
        out[campaign] = [(w["window_start"], w["impressions"], w["clicks"]) for w in pair if w]
        assert body["latest"] == latest[campaign]
        if body["previous"]:
            assert body["change"]["clicks"] == body["latest"]["clicks"] - body["previous"]["clicks"]
    return out


def test_latest_and_previous_ctr_before_and_after_a_restart(mesh_factory):
    mesh = mesh_factory(WINDOW_SIZE_MS=10_000, IDLE_FLUSH_TIMEOUT_MS=3_000)
    mesh.start("ingest", "ctr")
    spec = TrafficSpec(
        n_events=3_000,
        seed=5,
        start_ms=(int(time.time()) - 600) * 1000,
        rate=50.0,
        click_ratio=0.08,
        campaigns=4,
    )
    sent = asyncio.run(produce(mesh, [(m.topic_kind, m.key, m.value) for m in TrafficGenerator(spec)]))
    exp = expected(
        sent,
        window_ms=10_000,
        lateness_ms=30_000,
        delay_ms=3_000,
        stream_start_ms=spec.start_ms,
        now_ms=int(time.time() * 1000),
    )
    want = oracle_latest_previous(exp.windows)
    ctr = mesh.services["ctr"]
    wait_for(lambda: served(ctr) == want, 90, "latest/previous windows of every campaign")

    status, body = ctr.get_json("/ctr/no-such-campaign")
    assert status == 404 and "unknown campaign" in body["error"]
    status, previous = ctr.get_json("/ctr/previous")
    assert status == 200 and {c: (p["window_start"], p["impressions"]) for c, p in previous.items()} == {
        c: ws[0][:2] for c, ws in want.items() if len(ws) == 2
    }

    mesh.stop("ctr", signal.SIGKILL)
    mesh.start("ctr")
    assert served(mesh.services["ctr"]) == want
