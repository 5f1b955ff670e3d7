"""Faults on the real broker and chDB: services killed with -9 mid-stream and restarted; the facts
must still equal the oracle exactly (no window missing, none doubled, every message accounted)."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from services.generator.spec import TrafficSpec
from services.generator.traffic import TrafficGenerator
from tests.ctr_checks import accounted, observed, produce, tail
from tests.mesh_harness import free_port, wait_for
from tests.oracle import expected

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SETTINGS = {
    "WINDOW_SIZE_MS": 10_000,
    "WATERMARK_DELAY_MS": 3_000,
    "ALLOWED_LATENESS_MS": 30_000,
    "IDLE_FLUSH_TIMEOUT_MS": 3_000,
    "JOIN_WINDOW_MS": 20_000,
}


def test_kill_9_of_each_service_mid_stream_changes_nothing(mesh_factory):
    mesh = mesh_factory(**SETTINGS)
    mesh.start("ingest", "ctr", "warehouse")
    spec = TrafficSpec(
        n_events=9_000,
        seed=23,
        start_ms=(int(time.time()) - 1_200) * 1000,
        rate=60.0,
        click_ratio=0.08,
        campaigns=6,
        dup_fraction=0.03,
        ooo_fraction=0.05,
        click_first_fraction=0.1,
        orphan_fraction=0.03,
        late_fraction=0.01,
        malformed_fraction=0.02,
    )
    generated = [(m.topic_kind, m.key, m.value) for m in TrafficGenerator(spec)]
    last_ts = max(m.at_ms for m in TrafficGenerator(spec))
    messages = generated + tail(last_ts + 20_000 + 3_000 + 5_000, 100)
    thirds = [
        messages[: len(messages) // 3],
        messages[len(messages) // 3 : 2 * len(messages) // 3],
        messages[2 * len(messages) // 3 :],
    ]

    sent = asyncio.run(produce(mesh, thirds[0]))
    wait_for(lambda: mesh.scalar("SELECT count() FROM fct_campaign_ctr") > 0, 60, "first windows")
    mesh.stop("ctr", signal.SIGKILL)
    mesh.stop("ingest", signal.SIGKILL)
    sent += asyncio.run(produce(mesh, thirds[1]))
    mesh.start("ingest", "ctr")
    time.sleep(2.0)
    mesh.stop("warehouse", signal.SIGKILL)
    sent += asyncio.run(produce(mesh, thirds[2]))
    time.sleep(1.0)
    mesh.stop("ingest", signal.SIGKILL)
    mesh.start("warehouse", "ingest")

    exp = expected(
        sent,
        window_ms=10_000,
        lateness_ms=30_000,
        delay_ms=3_000,
        stream_start_ms=spec.start_ms,
        now_ms=int(time.time() * 1000),
    )
    wait_for(lambda: accounted(mesh) >= len(sent), timeout=240, what="every message to be accounted for")
    time.sleep(2.0)
    got = observed(mesh)
    assert got["windows"] == dict(exp.windows)
    assert got["dead"] == exp.dead
    assert got["duplicate"] == exp.duplicate
    assert got["orphan"] == exp.orphan
    assert got["late"] == exp.late
    assert accounted(mesh) == len(sent)


def test_a_second_ctr_worker_joins_and_leaves_mid_stream(mesh_factory):
    mesh = mesh_factory(**SETTINGS)
    mesh.start("ingest", "ctr", "warehouse")
    spec = TrafficSpec(
        n_events=8_000,
        seed=31,
        start_ms=(int(time.time()) - 1_200) * 1000,
        rate=60.0,
        click_ratio=0.08,
        campaigns=12,
        dup_fraction=0.02,
        ooo_fraction=0.05,
        click_first_fraction=0.05,
        late_fraction=0.01,
        malformed_fraction=0.01,
    )
    messages = [(m.topic_kind, m.key, m.value) for m in TrafficGenerator(spec)]
    last_ts = max(m.at_ms for m in TrafficGenerator(spec))
    messages += tail(last_ts + 20_000 + 3_000 + 5_000, 100)
    thirds = [
        messages[: len(messages) // 3],
        messages[len(messages) // 3 : 2 * len(messages) // 3],
        messages[2 * len(messages) // 3 :],
    ]

    sent = asyncio.run(produce(mesh, thirds[0]))
    mesh.start("ctr", instance="-2")  # joins: partitions and their table state move to it
    sent += asyncio.run(produce(mesh, thirds[1]))
    wait_for(lambda: mesh.scalar("SELECT count() FROM fct_campaign_ctr") > 0, 60, "windows")
    mesh.stop("ctr-2")  # leaves: its partitions come back with the state it wrote
    sent += asyncio.run(produce(mesh, thirds[2]))

    exp = expected(
        sent,
        window_ms=10_000,
        lateness_ms=30_000,
        delay_ms=3_000,
        stream_start_ms=spec.start_ms,
        now_ms=int(time.time() * 1000),
    )
    wait_for(lambda: accounted(mesh) >= len(sent), timeout=240, what="every message to be accounted for")
    time.sleep(2.0)
    got = observed(mesh)
    assert got["windows"] == dict(exp.windows)
    assert got["late"] == exp.late
    assert accounted(mesh) == len(sent)


def test_broker_stopped_and_restarted_mid_stream(mesh_factory, kafka_broker):
    if kafka_broker.env is None:
        pytest.skip("the broker is external (TEST_KAFKA_BOOTSTRAP_SERVERS): not ours to stop")
    mesh = mesh_factory(**SETTINGS)
    mesh.start("ingest", "ctr", "warehouse")
    spec = TrafficSpec(
        n_events=6_000,
        seed=41,
        start_ms=(int(time.time()) - 1_200) * 1000,
        rate=60.0,
        click_ratio=0.08,
        campaigns=6,
        dup_fraction=0.02,
        click_first_fraction=0.05,
        late_fraction=0.01,
        malformed_fraction=0.01,
    )
    messages = [(m.topic_kind, m.key, m.value) for m in TrafficGenerator(spec)]
    last_ts = max(m.at_ms for m in TrafficGenerator(spec))
    messages += tail(last_ts + 20_000 + 3_000 + 5_000, 100)
    half = len(messages) // 2

    sent = asyncio.run(produce(mesh, messages[:half]))
    time.sleep(1.0)
    kafka_broker.stop()  # services lose the broker mid-stream ...
    time.sleep(8.0)
    kafka_broker.start()  # ... and must recover on their own
    sent += asyncio.run(produce(mesh, messages[half:]))

    exp = expected(
        sent,
        window_ms=10_000,
        lateness_ms=30_000,
        delay_ms=3_000,
        stream_start_ms=spec.start_ms,
        now_ms=int(time.time() * 1000),
    )
    wait_for(lambda: accounted(mesh) >= len(sent), timeout=240, what="every message to be accounted for")
    time.sleep(2.0)
    got = observed(mesh)
    assert got["windows"] == dict(exp.windows)
    assert got["dead"] == exp.dead and got["late"] == exp.late
    assert accounted(mesh) == len(sent)
    assert all(svc.proc.poll() is None for svc in mesh.services.values()), "a service died"


def test_clickhouse_unavailable_then_back(mesh_factory):
    """The warehouse starts against a ClickHouse that is not there: it retries, holds its offsets,
    and once pointed at a working ClickHouse catches up with nothing lost and nothing doubled."""
    mesh = mesh_factory(**SETTINGS)
    dead_port = free_port()
    mesh.overrides["CLICKHOUSE_DSN"] = f"http://default:@127.0.0.1:{dead_port}/default"
    mesh.start("ingest", "ctr", "warehouse")
    spec = TrafficSpec(
        n_events=3_000,
        seed=43,
        start_ms=(int(time.time()) - 1_200) * 1000,
        rate=60.0,
        click_ratio=0.08,
        campaigns=4,
        dup_fraction=0.02,
        malformed_fraction=0.01,
    )
    sent = asyncio.run(produce(mesh, [(m.topic_kind, m.key, m.value) for m in TrafficGenerator(spec)]))
    wait_for(lambda: "ClickHouse not ready" in mesh.services["warehouse"].log(), 60, "warehouse retrying")
    time.sleep(8.0)  # results pile up in Kafka meanwhile
    assert mesh.services["warehouse"].proc.poll() is None, "the warehouse must not crash"
    mesh.stop("warehouse")
    del mesh.overrides["CLICKHOUSE_DSN"]  # back to the mesh's chDB
    mesh.start("warehouse")

    exp = expected(
        sent,
        window_ms=10_000,
        lateness_ms=30_000,
        delay_ms=3_000,
        stream_start_ms=spec.start_ms,
        now_ms=int(time.time() * 1000),
    )
    wait_for(lambda: accounted(mesh) >= len(sent), timeout=120, what="every message to be accounted for")
    got = observed(mesh)
    assert got["windows"] == dict(exp.windows)
    assert accounted(mesh) == len(sent)
