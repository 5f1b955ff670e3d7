"""ingest's per-event CPU without Kafka: validate (parse, normalize, bundle by key) and the join
(dedup, click -> impression, canonical events, join state), on the generator's traffic.

As bench/engagement_cpu.py for engagement: the mesh benchmark measures the service with its broker
round trips and faust around it; this isolates the Python ingest runs per event, so a change can be
compared old against new in seconds on a noisy machine. The validate and join code is the agent's
own (`validate_records`, `join_messages`); the table and the producer are plain Python stand-ins.

    python -m bench.ingest_cpu [--events 200000] [--repeat 3]
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from bench.in_process import per_item_us, repeat_runs
from services.generator.producer import topic_map
from services.generator.spec import TrafficSpec
from services.generator.traffic import TrafficGenerator
from services.ingest import agents
from services.ingest.joining import JoinBatch, join_messages
from shared.app import key_partition
from shared.batch_output import BatchOutput
from shared.bundles import Bundler

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


class Out(BatchOutput):
    """BatchOutput without a producer: keeps what goes to ingest-by-key, per partition, for the
    join (its broadcast_marker sends through this send)."""

    def __init__(self) -> None:  # no app, no producer
        self.by_key: dict[int, list[bytes]] = defaultdict(list)
        self.other = 0

    async def send(
        self, topic: str, key: bytes | None, value: bytes, *, partition: int | None = None, **_: Any
    ) -> None:
        if topic == agents.topics.by_event_key and partition is not None:
            self.by_key[partition].append(value)
        else:
            self.other += 1

    async def flush(self) -> int:
        return 0


class Table(dict):
    """The join_state table's interface on a dict."""

    def get_stored(self, key: bytes) -> bytes | None:
        return self.get(key)

    async def write_many(
        self, out: Any, writes: dict[bytes, bytes | None], partitions: dict[bytes, int] | None = None
    ) -> None:
        for key, value in writes.items():
            if value is None:
                self.pop(key, None)
            else:
                self[key] = value


async def run(records: list[Raw]) -> dict[str, float]:
    agents.joiner.table = Table()
    agents.outcomes.clear()
    agents.joiner.partitions.clear()
    agents.raw_progress.clear()
    out = Out()
    by_key = agents.by_key_bundler()
    canonical = Bundler(agents.topics.canonical, agents.PARTITIONS)
    offsets = [0] * agents.PARTITIONS
    timings = {"validate": 0.0, "join": 0.0}
    for b in range(0, len(records), BATCH):
        t0 = time.perf_counter()
        await agents.validate_records(records[b : b + BATCH], out, by_key)  # type: ignore[arg-type]
        t1 = time.perf_counter()
        messages = []
        for p, values in sorted(out.by_key.items()):
            for value in values:
                messages.append((p, offsets[p], value))
                offsets[p] += 1
        out.by_key.clear()
        await join_messages(JoinBatch(agents.joiner, out, canonical), messages)
        timings["validate"] += t1 - t0
        timings["join"] += time.perf_counter() - t1
    n = len(records)
    return {
        "messages": n,
        **per_item_us(timings, n),
        "outcomes": sum(agents.outcomes.values()),
        "state": len(agents.joiner.table),
    }


def main() -> None:
    repeat_runs(__doc__, raw_messages, run)


if __name__ == "__main__":
    main()
