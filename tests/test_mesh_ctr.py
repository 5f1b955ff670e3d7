"""The skeleton end to end: generator stream → real Kafka → ingest → ctr → warehouse → chDB,
compared message by message with an oracle computed from the input alone (tests/oracle.py)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from services.generator.spec import TrafficSpec
from shared.app import ensure_topics
from shared.settings import Settings
from shared.topics import topic_names
from tests.ctr_checks import FAST, assert_exact, produce, stream_with_tail
from tests.mesh_harness import Mesh
from tests.oracle import Expected, summary

pytestmark = pytest.mark.integration


def run_and_compare(
    mesh: Mesh, spec: TrafficSpec, *, window_ms: int, join_window_ms: int, backlog: bool = False
) -> Expected:
    """backlog: the whole stream waits on the broker before the mesh starts (as after an outage),
    instead of arriving while it runs."""
    messages = stream_with_tail(spec, join_window_ms, 3_000)
    if backlog:
        settings = Settings(kafka_bootstrap_servers=mesh.bootstrap, topic_prefix=mesh.prefix)
        asyncio.run(ensure_topics(settings, topic_names(settings).all()))
        sent = asyncio.run(produce(mesh, messages))
    mesh.start("ingest", "ctr", "warehouse")
    t0 = time.monotonic()
    if not backlog:
        sent = asyncio.run(produce(mesh, messages))
    exp = assert_exact(mesh, sent, spec, window_ms=window_ms, timeout=180)
    print(f"\n{len(sent)} messages accounted for in {time.monotonic() - t0:.1f}s; {dict(summary(exp))}")
    assert mesh.errors_in_logs() == {}
    return exp


def test_exact_ctr_with_every_kind_of_defect(mesh_factory):
    mesh = mesh_factory(**FAST)
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
    exp = run_and_compare(mesh, spec, window_ms=10_000, join_window_ms=20_000)
    # The stream really exercised every path.
    s = summary(exp)
    assert all(s[k] > 0 for k in ("dead", "duplicate", "orphan", "late")), s
    assert len(exp.windows) > 8 * 10


def test_exact_ctr_with_default_settings(mesh_factory):
    """As a backlog: the mesh starts with the whole stream waiting. Its far-too-late events, all in
    the last 20%, were once counted as the watermark was still unknown: the join told ctr of
    progress only at the end of a batch, and its first batch could hold the whole backlog."""
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
    exp = run_and_compare(mesh, spec, window_ms=60_000, join_window_ms=600_000, backlog=True)
    assert Counter(c for c, _ in exp.windows)["cmp-tail"] >= 1
