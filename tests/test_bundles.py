"""Bundles: records of a re-keying hop keep their partition (Kafka's default partitioner for their
key), their order, and a bounded message size; plain messages still read as one record."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiokafka.partitioner import DefaultPartitioner

from shared.bundles import BUNDLE_MAX_BYTES, Bundler, unbundle


class RecordingOutput:
    def __init__(self) -> None:
        self.sent: list[tuple[str, int, bytes]] = []

    async def send(self, topic: str, key: Any, value: bytes, *, partition: int) -> None:
        assert key is None
        self.sent.append((topic, partition, value))


def test_records_go_where_the_kafka_partitioner_puts_their_key_in_order() -> None:
    bundler = Bundler("t", 5)
    records = [{"key": f"user:{i % 37}", "n": i} for i in range(1000)]
    for rec in records:
        bundler.add(rec["key"].encode(), orjson.dumps(rec))
    out = RecordingOutput()
    assert asyncio.run(bundler.send(out)) == len(out.sent) <= 5  # type: ignore[arg-type]
    partitioner = DefaultPartitioner()
    got: list[dict[str, Any]] = []
    for topic, p, value in out.sent:
        assert topic == "t"
        for _, rec in unbundle(value):
            assert p == partitioner(rec["key"].encode(), list(range(5)), list(range(5)))
            got.append(rec)
    assert sorted(got, key=lambda r: r["n"]) == records
    for p in range(5):  # per partition, the order of add()
        ns = [r["n"] for r in got if bundler.partition_for(r["key"].encode()) == p]
        assert ns == sorted(ns)
    assert asyncio.run(bundler.send(out)) == 0  # type: ignore[arg-type]


def test_bundles_stay_under_the_size_limit_and_keep_order_across_splits() -> None:
    bundler = Bundler("t", 1)
    payload = "x" * 1000
    for i in range(1000):  # ~1 MB in all: several bundles
        bundler.add(b"k", orjson.dumps({"key": "k", "n": i, "pad": payload}))
    out = RecordingOutput()
    asyncio.run(bundler.send(out))  # type: ignore[arg-type]
    assert len(out.sent) >= 4
    assert all(len(value) <= BUNDLE_MAX_BYTES for _, _, value in out.sent)
    ns = [rec["n"] for _, _, value in out.sent for _, rec in unbundle(value)]
    assert ns == list(range(1000))


def test_a_plain_message_is_one_record_and_positions_count_within_a_bundle() -> None:
    assert list(unbundle(b'{"kind": "wm", "ts": 1}')) == [(0, {"kind": "wm", "ts": 1})]
    assert list(unbundle(b'[{"a": 1}, {"a": 2}]')) == [(0, {"a": 1}), (1, {"a": 2})]
