"""The skeleton end to end: generator stream → real Kafka → ingest → ctr → warehouse → chDB,
compared message by message with an oracle computed from the input alone (tests/oracle.py)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from services.generator.spec import TrafficSpec
from services.generator.traffic import TrafficGenerator
from tests.ctr_checks import accounted, observed, produce, tail
from tests.mesh_harness import Mesh, wait_for
from tests.oracle import Expected, expected, summary

pytestmark = pytest.mark.integration


def run_and_compare(
    mesh: Mesh, spec: TrafficSpec, *, window_ms: int, lateness_ms: int, delay_ms: int, join_window_ms: int
) -> Expected:
    mesh.start("ingest", "ctr", "warehouse")
    generated = [(m.topic_kind, m.key, m.value) for m in TrafficGenerator(spec)]
    last_ts = max(m.at_ms for m in TrafficGenerator(spec))
    messages = generated + tail(last_ts + join_window_ms + delay_ms + 5_000, 100)
    t0 = time.monotonic()
    sent = asyncio.run(produce(mesh, messages))
    exp = expected(
        sent,
        window_ms=window_ms,
        lateness_ms=lateness_ms,
        delay_ms=delay_ms,
        stream_start_ms=spec.start_ms,
        now_ms=int(time.time() * 1000),
    )
    assert exp.total() == len(sent)

    wait_for(lambda: accounted(mesh) >= len(sent), timeout=180, what="every message to be accounted for")
    elapsed = time.monotonic() - t0
    time.sleep(1.0)  # anything beyond the total would be a double count: give it a moment to show
    got = observed(mesh)
    print(f"\n{len(sent)} messages accounted for in {elapsed:.1f}s; expected {dict(summary(exp))}")

    if got["orphan"] != exp.orphan:  # debugging aid: where the oracle put the difference
        by_src = {m.src: m for m in sent}
        for src in sorted(got["orphan"] ^ exp.orphan)[:5]:
            where = [k for k in ("dead", "duplicate", "late") if src in getattr(exp, k)]
            print("orphan mismatch", src, where, by_src[src].value[:200], src in got["duplicate"])
    assert got["windows"] == dict(exp.windows)
    assert got["dead"] == exp.dead
    assert got["duplicate"] == exp.duplicate
    assert got["orphan"] == exp.orphan
    assert got["late"] == exp.late
    assert accounted(mesh) == len(sent)
    assert mesh.errors_in_logs() == {}
    return exp


def test_exact_ctr_with_every_kind_of_defect(mesh_factory):
    settings = {
        "WINDOW_SIZE_MS": 10_000,
        "WATERMARK_DELAY_MS": 3_000,
        "ALLOWED_LATENESS_MS": 30_000,
        "IDLE_FLUSH_TIMEOUT_MS": 3_000,
        "JOIN_WINDOW_MS": 20_000,
    }
    mesh = mesh_factory(**settings)
    spec = TrafficSpec(
        n_events=6_000,
        seed=7,
        start_ms=(int(time.time()) - 900) * 1000,
        rate=60.0,
        click_ratio=0.08,
        campaigns=8,
        dup_fraction=0.03,
        ooo_fraction=0.05,
        click_first_fraction=0.1,
        orphan_fraction=0.05,
        late_fraction=0.01,
        malformed_fraction=0.02,
    )
    exp = run_and_compare(
        mesh, spec, window_ms=10_000, lateness_ms=30_000, delay_ms=3_000, join_window_ms=20_000
    )
    # The stream really exercised every path.
    s = summary(exp)
    assert all(s[k] > 0 for k in ("dead", "duplicate", "orphan", "late")), s
    assert len(exp.windows) > 8 * 10


def test_exact_ctr_with_default_settings(mesh_factory):
    mesh = mesh_factory()  # 60 s windows, 3 s delay, 30 s lateness, 10 s idle flush, 10 min join
    spec = TrafficSpec(
        n_events=4_000,
        seed=11,
        start_ms=(int(time.time()) - 1_800) * 1000,
        rate=20.0,
        click_ratio=0.06,
        dup_fraction=0.02,
        click_first_fraction=0.05,
        orphan_fraction=0.02,
        late_fraction=0.01,
        malformed_fraction=0.01,
        ooo_fraction=0.05,
    )
    exp = run_and_compare(
        mesh, spec, window_ms=60_000, lateness_ms=30_000, delay_ms=3_000, join_window_ms=600_000
    )
    assert Counter(c for c, _ in exp.windows)["cmp-tail"] >= 1
