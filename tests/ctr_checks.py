"""Feeding a test mesh and reading back what it counted (shared by the CTR end-to-end tests)."""

from __future__ import annotations

import asyncio

import orjson
from aiokafka import AIOKafkaProducer

from tests.mesh_harness import Mesh
from tests.oracle import Sent

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
