"""The skeleton end to end: generator stream → real Kafka → ingest → ctr → warehouse → chDB,
compared message by message with an oracle computed from the input alone (tests/oracle.py)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from services.generator.spec import TrafficSpec
from services.generator.traffic import TrafficGenerator
from tests.mesh_harness import Mesh, wait_for
from tests.oracle import Expected, Sent, expected, summary

pytestmark = pytest.mark.integration

TOPIC_OF = {"impressions": "ad-impressions", "clicks": "ad-clicks"}


def tail(after_ms: int, n: int) -> list[tuple[str, bytes, bytes]]:
    """Clean impressions and clicks stamped `after_ms`: they move every source partition's event
    time past the join window, so every click still waiting for its impression meets its fate."""
    out = []
    for i in range(n):
        iid = f"tail-i{i}"
        imp = {
            "impression_id": iid,
            "user_id": f"tail-u{i}",
            "campaign_id": "cmp-tail",
            "ad_id": "ad-tail",
            "device_type": "desktop",
            "browser": "firefox",
            "event_timestamp": after_ms + i,
            "cost": 0.002,
        }
        click = {
            "click_id": f"tail-k{i}",
            "impression_id": iid,
            "user_id": f"tail-u{i}",
            "event_timestamp": after_ms + i + 1,
        }
        out.append(("impressions", iid.encode(), orjson.dumps(imp)))
        out.append(("clicks", iid.encode(), orjson.dumps(click)))
    return out


async def produce(mesh: Mesh, messages: list[tuple[str, bytes, bytes]]) -> list[Sent]:
    producer = AIOKafkaProducer(
        bootstrap_servers=mesh.bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    await producer.start()
    try:
        futures = [
            await producer.send(mesh.topic(TOPIC_OF[kind]), value, key=key) for kind, key, value in messages
        ]
        metas = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [
        Sent(kind, value, f"{meta.topic}:{meta.partition}:{meta.offset}")
        for (kind, _, value), meta in zip(messages, metas, strict=True)
    ]


def observed(mesh: Mesh) -> dict[str, object]:
    windows = {
        (c, ws): [imp, clk, cost]
        for c, ws, imp, clk, cost in mesh.query(
            "SELECT campaign_id, toUnixTimestamp64Milli(window_start), impressions, clicks, "
            "toUInt64(round(cost * 1000000)) FROM fct_campaign_ctr FINAL"
        )
    }
    discarded: dict[str, set[str]] = {"duplicate": set(), "orphan": set()}
    for reason, src in mesh.query("SELECT reason, source FROM fct_discarded_event FINAL"):
        discarded[reason].add(src)
    return {
        "windows": windows,
        "dead": {r[0] for r in mesh.query("SELECT source FROM fct_dead_letter FINAL")},
        "late": {r[0] for r in mesh.query("SELECT source FROM fct_late_event FINAL WHERE stage = 'ctr'")},
        **discarded,
    }


def accounted(mesh: Mesh) -> int:
    return int(
        mesh.scalar(
            "SELECT (SELECT sum(impressions + clicks) FROM fct_campaign_ctr FINAL)"
            " + (SELECT count() FROM fct_dead_letter FINAL)"
            " + (SELECT count() FROM fct_late_event FINAL WHERE stage = 'ctr')"
            " + (SELECT count() FROM fct_discarded_event FINAL)"
        )
    )


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
