"""ingest's per-event CPU without Kafka: validate (parse, normalize, bundle by key) and the join
(dedup, click -> impression, canonical events, join state), on the generator's traffic.

As bench/engagement_cpu.py for engagement: the mesh benchmark measures the service with its broker
round trips and faust around it; this isolates the Python ingest runs per event, so a change can be
compared old against new in seconds on a noisy machine. The validate and join code is the agent's
own (`validate_records`, `join_messages`); the table and the producer are plain Python stand-ins.

    python -m bench.ingest_cpu [--events 200000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import orjson

from services.generator.producer import topic_map
from services.generator.spec import TrafficSpec
from services.generator.traffic import TrafficGenerator
from services.ingest import agents
from shared.app import key_partition, tune_garbage_collector
from shared.bundles import Bundler
from shared.watermarks import encode_marker

BATCH = 2_000


@dataclass
class Raw:
    """The fields of a ConsumerRecord that validate reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


def raw_messages(n: int) -> list[Raw]:
    spec = TrafficSpec(
        n_events=n,
        seed=5,
        start_ms=(int(time.time()) - 3_600) * 1000,
        rate=2_000.0,
        click_ratio=0.1,
        dup_fraction=0.01,
    )
    names = topic_map(agents.settings)
    offsets: dict[tuple[str, int], int] = defaultdict(int)
    out = []
    for m in TrafficGenerator(spec):
        topic = names[m.topic_kind]
        p = key_partition(m.key, agents.PARTITIONS) if m.key else len(out) % agents.PARTITIONS
        out.append(Raw(topic, p, offsets[(topic, p)], m.key, m.value))
        offsets[(topic, p)] += 1
    return out


class Out:
    """BatchOutput's interface: keeps what goes to ingest-by-key, per partition, for the join."""

    def __init__(self) -> None:
        self.by_key: dict[int, list[bytes]] = defaultdict(list)
        self.other = 0

    async def send(
        self, topic: str, key: bytes | None, value: bytes, partition: int | None = None, **_: Any
    ) -> None:
        if topic == agents.topics.by_event_key and partition is not None:
            self.by_key[partition].append(value)
        else:
            self.other += 1

    async def broadcast_marker(
        self, topic: str, partitions: int, source: str, ts_ms: int, of: int, idle: bool = False
    ) -> None:
        marker = encode_marker(source, ts_ms, of, idle)
        for p in range(partitions):
            await self.send(topic, None, marker, partition=p)

    async def flush(self) -> int:
        return 0


class Table(dict):
    """The join_state table's interface on a dict."""

    def get_stored(self, key: bytes) -> bytes | None:
        return self.get(key)

    async def write_many(self, out: Any, writes: dict[bytes, bytes | None]) -> None:
        for key, value in writes.items():
            if value is None:
                self.pop(key, None)
            else:
                self[key] = value


async def run(records: list[Raw]) -> dict[str, float]:
    agents.join_state = Table()  # the agent module reads it as a global
    agents.join_partitions.clear()
    agents.raw_progress.clear()
    out = Out()
    by_key = Bundler(agents.topics.by_event_key, agents.PARTITIONS)
    canonical = Bundler(agents.topics.canonical, agents.PARTITIONS)
    offsets = [0] * agents.PARTITIONS
    timings = {"validate": 0.0, "join": 0.0}
    for b in range(0, len(records), BATCH):
        t0 = time.perf_counter()
        touched = await agents.validate_records(records[b : b + BATCH], out, by_key)  # type: ignore[arg-type]
        await by_key.send(out)  # type: ignore[arg-type]
        for source in touched:
            progress = agents.raw_progress[source]
            await out.broadcast_marker(
                agents.topics.by_event_key, agents.PARTITIONS, source, progress, agents.RAW_SOURCE_PARTITIONS
            )
        t1 = time.perf_counter()
        messages = []
        for p, values in sorted(out.by_key.items()):
            for value in values:
                messages.append((p, offsets[p], value))
                offsets[p] += 1
        out.by_key.clear()
        await agents.join_messages(agents.JoinBatch(out, canonical), messages)  # type: ignore[arg-type]
        timings["validate"] += t1 - t0
        timings["join"] += time.perf_counter() - t1
    n = len(records)
    return {
        "messages": n,
        "validate_us": round(timings["validate"] * 1e6 / n, 2),
        "join_us": round(timings["join"] * 1e6 / n, 2),
        "total_us": round(sum(timings.values()) * 1e6 / n, 2),
        "outcomes": sum(agents.outcomes.values()),
        "state": len(agents.join_state),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    records = raw_messages(a.events)
    tune_garbage_collector()  # as the services do once started
    for _ in range(a.repeat):
        agents.outcomes.clear()
        print(orjson.dumps(asyncio.run(run(records))).decode(), flush=True)


if __name__ == "__main__":
    main()
