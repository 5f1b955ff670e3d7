"""Feeding a test mesh and reading back what it counted (shared by the CTR end-to-end tests)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from services.generator.spec import TrafficSpec
from services.generator.traffic import TrafficGenerator
from tests.mesh_harness import Mesh, wait_for
from tests.oracle import Expected, Sent, expected

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


async def produce(
    mesh: Mesh, messages: list[tuple[str, bytes, bytes]], chunk: int | None = None, pause_s: float = 0.0
) -> list[Sent]:
    """Send the messages and wait for the broker's acks; with `chunk`, that many at a time with a
    pause after each (a stream still flowing while a test moves workers)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=mesh.bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    await producer.start()
    step = chunk or max(len(messages), 1)
    metas = []
    try:
        for i in range(0, len(messages), step):
            futures = [
                await producer.send(mesh.topic(TOPIC_OF[kind]), value, key=key)
                for kind, key, value in messages[i : i + step]
            ]
            metas += await asyncio.gather(*futures)
            if pause_s:
                await asyncio.sleep(pause_s)
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


def accounting(mesh: Mesh) -> str:
    try:
        return "accounted: " + repr(
            mesh.query(
                "SELECT (SELECT sum(impressions + clicks) FROM fct_campaign_ctr FINAL),"
                " (SELECT count() FROM fct_dead_letter FINAL),"
                " (SELECT count() FROM fct_late_event FINAL WHERE stage = 'ctr'),"
                " (SELECT count() FROM fct_discarded_event FINAL)"
            )
        )
    except Exception as exc:
        return f"accounting unavailable: {exc!r}"


def accounted(mesh: Mesh) -> int:
    return int(
        mesh.scalar(
            "SELECT (SELECT sum(impressions + clicks) FROM fct_campaign_ctr FINAL)"
            " + (SELECT count() FROM fct_dead_letter FINAL)"
            " + (SELECT count() FROM fct_late_event FINAL WHERE stage = 'ctr')"
            " + (SELECT count() FROM fct_discarded_event FINAL)"
        )
    )


# Settings the CTR end-to-end tests run the mesh with: 10 s windows for many windows per minute
# of stream, a short idle flush so the end of a stream closes quickly, a 20 s join window.
FAST = {
    "WINDOW_SIZE_MS": 10_000,
    "WATERMARK_DELAY_MS": 3_000,
    "ALLOWED_LATENESS_MS": 30_000,
    "IDLE_FLUSH_TIMEOUT_MS": 3_000,
    "JOIN_WINDOW_MS": 20_000,
}


def stream_with_tail(spec: TrafficSpec, join_window_ms: int, delay_ms: int) -> list[tuple[str, bytes, bytes]]:
    """The generated stream, then a clean tail far enough ahead that every waiting click meets its fate."""
    generated = list(TrafficGenerator(spec))
    last_ts = max(m.at_ms for m in generated)
    return [(m.topic_kind, m.key, m.value) for m in generated] + tail(
        last_ts + join_window_ms + delay_ms + 5_000, 100
    )


def produce_in_background(
    mesh: Mesh, messages: list[tuple[str, bytes, bytes]], pause_s: float = 0.05
) -> Future[list[Sent]]:
    """`produce` trickling (50 messages, then `pause_s`) in a thread: a test stops a worker meanwhile,
    so the worker stops with input arriving, as a rolling restart does. (Stopping it idle hid a
    loss: a batch taken as faust suspends the flow for the stop was acked, unprocessed, and
    committed; shared/event_batches.py.)"""
    pool = ThreadPoolExecutor(1)
    future = pool.submit(asyncio.run, produce(mesh, messages, chunk=50, pause_s=pause_s))
    pool.shutdown(wait=False)
    return future


def thirds(messages: list[Any]) -> list[list[Any]]:
    n = len(messages)
    return [messages[: n // 3], messages[n // 3 : 2 * n // 3], messages[2 * n // 3 :]]


def window_diff(got: dict[Any, Any], want: dict[Any, Any]) -> str:
    """What differs, window by window: the failure message of an inexact run."""
    lines = [f"differ in {sum(got.get(k) != want.get(k) for k in set(got) | set(want))} windows"]
    for key in sorted(set(got) | set(want)):
        if got.get(key) != want.get(key):
            lines.append(f"{key}: got {got.get(key)} want {want.get(key)}")
    return "\n".join(lines[:40])


def assert_exact(
    mesh: Mesh,
    sent: list[Sent],
    spec: TrafficSpec,
    *,
    window_ms: int = 10_000,
    lateness_ms: int = 30_000,
    delay_ms: int = 3_000,
    timeout: float = 240,
) -> Expected:
    """Wait until every message is accounted for, then compare everything with the oracle."""
    exp = expected(
        sent,
        window_ms=window_ms,
        lateness_ms=lateness_ms,
        delay_ms=delay_ms,
        stream_start_ms=spec.start_ms,
        now_ms=int(time.time() * 1000),
    )
    assert exp.total() == len(sent)
    try:
        wait_for(
            lambda: accounted(mesh) >= len(sent), timeout=timeout, what="every message to be accounted for"
        )
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}\n{accounting(mesh)}\n{mesh.diagnostics()}") from None
    time.sleep(1.0)  # anything beyond the total would be a double count: give it a moment to show
    got = observed(mesh)
    assert got["windows"] == dict(exp.windows), window_diff(got["windows"], dict(exp.windows))
    assert got["dead"] == exp.dead
    assert got["duplicate"] == exp.duplicate
    assert got["orphan"] == exp.orphan
    assert got["late"] == exp.late
    assert accounted(mesh) == len(sent)
    return exp
