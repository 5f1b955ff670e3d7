"""Faults on the real broker and chDB: services killed with -9 mid-stream and restarted, a worker
joining and leaving, the broker restarted, ClickHouse missing for a while. Afterwards the facts must
still equal the oracle exactly (no window missing, none doubled, every message accounted for)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from services.generator.spec import TrafficSpec
from tests.ctr_checks import FAST, assert_exact, produce, produce_in_background, stream_with_tail, thirds
from tests.mesh_harness import WATCHDOG_STOP, Mesh, free_port, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def defective_spec(seed: int, n_events: int, campaigns: int) -> TrafficSpec:
    return TrafficSpec(
        n_events=n_events, seed=seed, start_ms=(int(time.time()) - 1_200) * 1000, rate=60.0, click_ratio=0.08,
        campaigns=campaigns, dup_fraction=0.03, ooo_fraction=0.05, click_first_fraction=0.1,
        orphan_fraction=0.03, late_fraction=0.01, malformed_fraction=0.02,
    )  # fmt: skip


def ctr_mesh(
    mesh_factory: Callable[..., Mesh], seed: int, n_events: int, campaigns: int, **settings: Any
) -> tuple[Mesh, TrafficSpec, list[list[Any]]]:
    """ingest, ctr and the warehouse on the FAST settings, and a defective stream in thirds."""
    mesh = mesh_factory(**FAST, **settings)
    mesh.start("ingest", "ctr", "warehouse")
    spec = defective_spec(seed, n_events, campaigns)
    return mesh, spec, thirds(stream_with_tail(spec, 20_000, 3_000))


def wait_for_first_windows(mesh: Mesh) -> None:
    mesh.wait_for(lambda: mesh.scalar("SELECT count() FROM fct_campaign_ctr") > 0, 60, "first windows")


def test_kill_9_of_each_service_mid_stream_changes_nothing(mesh_factory):
    mesh, spec, (first, second, third) = ctr_mesh(mesh_factory, 23, 9_000, 6)

    sent = asyncio.run(produce(mesh, first))
    wait_for_first_windows(mesh)
    mesh.stop("ctr", signal.SIGKILL)
    mesh.stop("ingest", signal.SIGKILL)
    sent += asyncio.run(produce(mesh, second))
    mesh.start("ingest", "ctr")
    time.sleep(2.0)
    mesh.stop("warehouse", signal.SIGKILL)
    sent += asyncio.run(produce(mesh, third))
    time.sleep(1.0)
    mesh.stop("ingest", signal.SIGKILL)
    mesh.start("warehouse", "ingest")
    assert_exact(mesh, sent, spec)


def test_a_rolling_restart_with_input_flowing_changes_nothing(mesh_factory):
    """Each service stopped the polite way (SIGTERM, as compose and a deploy do) and started
    again while input keeps arriving. faust's stop suspends the flow and commits what is acked
    while the agents still run: a batch taken just before was once acked unprocessed and
    committed, and its events were lost (shared/event_batches.py)."""
    mesh, spec, (first, second, third) = ctr_mesh(mesh_factory, 61, 8_000, 12)

    sent = asyncio.run(produce(mesh, first))
    wait_for_first_windows(mesh)
    flowing = produce_in_background(mesh, second, pause_s=0.25)  # ~15 s: through all three restarts
    for service in ("ingest", "ctr", "warehouse"):
        mesh.stop(service)
        mesh.start(service)
    sent += flowing.result()
    sent += asyncio.run(produce(mesh, third))
    assert_exact(mesh, sent, spec)


def test_a_second_ctr_worker_joins_and_leaves_mid_stream(mesh_factory):
    mesh, spec, (first, second, third) = ctr_mesh(mesh_factory, 31, 8_000, 12)

    sent = asyncio.run(produce(mesh, first))
    mesh.start("ctr", instance="-2")  # joins: partitions and their table state move to it
    flowing = produce_in_background(mesh, second)
    wait_for_first_windows(mesh)
    mesh.stop("ctr-2")  # leaves with input arriving: its partitions come back with the state it wrote
    sent += flowing.result()
    sent += asyncio.run(produce(mesh, third))
    assert_exact(mesh, sent, spec)


def counted(stats: dict) -> int:
    return sum(n for outcome, n in stats["outcomes"].items() if outcome.startswith("counted:"))


def test_a_second_ingest_worker_joins_and_leaves_mid_stream(mesh_factory):
    """Both of ingest's groups rebalance: faust's (the join's partitions and table) and the raw
    reader's (shared/direct_reader.py), whose batches under way when partitions move are
    dropped or committed, never lost, and read twice at most (the join recognises them)."""
    mesh, spec, (first, second, third) = ctr_mesh(mesh_factory, 37, 8_000, 12)

    sent = asyncio.run(produce(mesh, first))
    mesh.start("ingest", instance="-2")  # joins: raw and ingest-by-key partitions move to it
    flowing = produce_in_background(mesh, second)
    # It has validated and joined events of its own before it leaves.
    second_worker = mesh.services["ingest-2"]
    mesh.wait_for(lambda: counted(second_worker.get_json("/stats")[1]) > 0, 60, "ingest-2 counting")
    mesh.stop("ingest-2")  # leaves mid-stream, input arriving: its partitions come back
    sent += flowing.result()
    sent += asyncio.run(produce(mesh, third))
    assert_exact(mesh, sent, spec)


def test_broker_stopped_and_restarted_mid_stream(mesh_factory, kafka_broker):
    if kafka_broker.env is None:
        pytest.skip("the broker is external (TEST_KAFKA_BOOTSTRAP_SERVERS): not ours to stop")
    mesh = mesh_factory(**FAST)
    mesh.start("ingest", "ctr", "warehouse")
    spec = defective_spec(41, 6_000, 6)
    messages = stream_with_tail(spec, 20_000, 3_000)
    half = len(messages) // 2

    sent = asyncio.run(produce(mesh, messages[:half]))
    time.sleep(1.0)
    kafka_broker.stop()  # services lose the broker mid-stream ...
    time.sleep(8.0)
    kafka_broker.start()  # ... and must recover on their own
    sent += asyncio.run(produce(mesh, messages[half:]))
    assert_exact(mesh, sent, spec)
    assert all(svc.proc.poll() is None for svc in mesh.services.values()), "a service died"


def test_clickhouse_unavailable_then_back(mesh_factory):
    """The warehouse starts against a ClickHouse that is not there: it retries, holds its offsets,
    and once pointed at a working ClickHouse catches up with nothing lost and nothing doubled."""
    mesh = mesh_factory(**FAST)
    mesh.overrides["CLICKHOUSE_DSN"] = f"http://default:@127.0.0.1:{free_port()}/default"
    mesh.start("ingest", "ctr", "warehouse")
    spec = defective_spec(43, 3_000, 4)
    sent = asyncio.run(produce(mesh, stream_with_tail(spec, 20_000, 3_000)))
    wait_for(lambda: "ClickHouse not ready" in mesh.services["warehouse"].log(), 60, "warehouse retrying")
    time.sleep(8.0)  # results pile up in Kafka meanwhile
    assert mesh.services["warehouse"].proc.poll() is None, "the warehouse must not crash"
    mesh.stop("warehouse")
    del mesh.overrides["CLICKHOUSE_DSN"]  # back to the mesh's chDB
    mesh.start("warehouse")
    assert_exact(mesh, sent, spec, timeout=120)


async def limit_message_bytes(bootstrap: str, topic: str, limit: int | None) -> None:
    """Set (or with None, clear) the topic's max.message.bytes on the broker."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        configs = {} if limit is None else {"max.message.bytes": str(limit)}
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs=configs)])
    finally:
        await admin.close()


def test_a_batch_that_cannot_be_published_stops_ctr_and_a_restart_changes_nothing(mesh_factory):
    """The broker refuses ctr's results (they outgrow the topic's message size limit): the batch
    fails after its windows were taken out of the in-memory clocks. ctr must stop rather than go
    on in the same process (faust's default restarts the agent there, with that batch never acked,
    so commits stall, and its windows never closed again); a new worker, once the topic takes the
    results again, must deliver exactly what the oracle says."""
    mesh, spec, (first, second, third) = ctr_mesh(mesh_factory, 47, 6_000, 6)
    results = mesh.topic("ctr-metrics")

    sent = asyncio.run(produce(mesh, first))
    wait_for_first_windows(mesh)
    asyncio.run(limit_message_bytes(mesh.bootstrap, results, 64))  # smaller than any result
    try:
        sent += asyncio.run(produce(mesh, second))
        ctr = mesh.services["ctr"]
        wait_for(lambda: ctr.proc.poll() is not None, 90, "ctr to stop after its publish failed")
        assert ctr.proc.returncode != 0
        assert "stopping the worker" in ctr.log()
    finally:
        asyncio.run(limit_message_bytes(mesh.bootstrap, results, None))
    mesh.services.pop("ctr")
    mesh.start("ctr")
    sent += asyncio.run(produce(mesh, third))
    assert_exact(mesh, sent, spec)


def test_a_stalled_table_recovery_is_kicked_back_into_motion(mesh_factory):
    """faust's recovery stall (docs/faust-recovery-stall.md), made on purpose: a restarted ctr
    loses every changelog record of partition 0 on its way to recovery once, as records emptied
    out of faust's changelog queue are. The watchdog must read them again (a quarter of its
    timeout: 5 s here) without stopping the worker, and the counts must stay exact. Without the
    kick the worker stops at the timeout and, restarted, stalls again: the test times out."""
    stall_timeout = {"RECOVERY_STALL_TIMEOUT_MS": 20_000}
    mesh, spec, (first, second, third) = ctr_mesh(mesh_factory, 59, 6_000, 12, **stall_timeout)
    sent = asyncio.run(produce(mesh, first))
    sent += asyncio.run(produce(mesh, second))
    wait_for_first_windows(mesh)
    mesh.stop("ctr")
    mesh.overrides["FAULT_CHANGELOG_LOSE_PARTITION"] = "0"
    mesh.start("ctr", faults=True)  # ready only once its recovery completed: after the kick
    del mesh.overrides["FAULT_CHANGELOG_LOSE_PARTITION"]
    log = mesh.services["ctr"].log()
    assert "reading them again from" in log and "ctr_windows-changelog" in log
    sent += asyncio.run(produce(mesh, third))
    assert_exact(mesh, sent, spec)
    assert mesh.restarted == [] and WATCHDOG_STOP not in mesh.services["ctr"].log()
