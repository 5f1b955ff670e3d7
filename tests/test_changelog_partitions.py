"""The changelog partition a stage passes to KeyedTable.write_many is the one the table itself would
compute (murmur2 of the key, or of its aggregate key for a distinct-set member).

The stages pass it because they know it: a key's state lives in the input partition its events
come from. If the two ever disagreed, a worker would restore another partition's state after a
restart. Driven by the real pieces (validate, the join, the window engine, the distinct sets) on
3 partitions, each event in the partition its key hashes to, as the producers put it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import orjson

from services.engagement.distinct import DistinctSets, aggregate_key_of, counting
from services.engagement.metrics import dimension_records
from services.generator.producer import topic_map
from services.generator.spec import TrafficSpec
from services.generator.traffic import TrafficGenerator
from services.ingest import agents
from services.ingest.joining import Join, JoinBatch, join_messages
from shared.app import key_partition
from shared.batch_output import BatchOutput
from shared.bundles import Bundler
from shared.windowed_agent import WindowedAggregation
from shared.windows import WindowSpec

PARTITIONS = 3
SPEC = WindowSpec(duration_ms=5_000, grace_ms=2_000, delay_ms=0)


class Table(dict):
    """A KeyedTable's interface on a dict, keeping the partitions it was told."""

    def __init__(self) -> None:
        super().__init__()
        self.told: dict[bytes, int] = {}

    def get_stored(self, key: bytes) -> bytes | None:
        return self.get(key)

    async def write_many(
        self, out: Any, writes: dict[bytes, bytes | None], partitions: dict[bytes, int]
    ) -> None:
        for key, value in writes.items():
            self.told[key] = partitions[key]  # every write comes with its partition
            if value is None:
                self.pop(key, None)
            else:
                self[key] = value


class Out(BatchOutput):
    """BatchOutput without a producer: keeps what goes to ingest-by-key, per partition."""

    def __init__(self) -> None:
        self.by_key: dict[int, list[bytes]] = defaultdict(list)

    async def send(
        self, topic: str, key: bytes | None, value: bytes, *, partition: int | None = None, **_: Any
    ) -> None:
        if topic == agents.topics.by_event_key and partition is not None:
            self.by_key[partition].append(value)

    async def flush(self) -> int:
        return 0


async def test_the_join_writes_each_entry_to_its_keys_partition() -> None:
    spec = TrafficSpec(n_events=3_000, seed=11, start_ms=1_700_000_000_000, rate=500.0, dup_fraction=0.05)
    names = topic_map(agents.settings)
    offsets: dict[tuple[str, int], int] = defaultdict(int)
    raws = []
    for m in TrafficGenerator(spec):
        topic = names[m.topic_kind]
        p = key_partition(m.key, PARTITIONS) if m.key else len(raws) % PARTITIONS
        raws.append(_Raw(topic, p, offsets[(topic, p)], m.key, m.value))
        offsets[(topic, p)] += 1
    out, table = Out(), Table()
    join = Join(table, agents.topics, PARTITIONS, 2_000, 60_000, agents.outcomes)
    by_key = Bundler(agents.topics.by_event_key, PARTITIONS)
    canonical = Bundler(agents.topics.canonical, PARTITIONS)
    await agents.validate_records(raws, out, by_key)  # type: ignore[arg-type]
    messages = [(p, i, v) for p, values in sorted(out.by_key.items()) for i, v in enumerate(values)]
    await join_messages(JoinBatch(join, out, canonical), messages)
    assert len(table.told) > 1_000  # impressions and clicks, minus duplicates, in three partitions
    assert {p for p in table.told.values()} == {0, 1, 2}
    assert {k: key_partition(k, PARTITIONS) for k in table.told} == table.told


class _Raw:
    def __init__(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes) -> None:
        self.topic, self.partition, self.offset, self.key, self.value = topic, partition, offset, key, value


def test_window_states_and_distinct_members_go_to_their_aggregate_keys_partition() -> None:
    windows = WindowedAggregation({}, SPEC, 60.0, PARTITIONS)
    sets = DistinctSets({}, SPEC, PARTITIONS)
    contribute = counting(sets)
    events: list[tuple[int, Any, dict[str, Any]]] = []
    for i in range(600):
        rec = {
            "kind": "impression" if i % 5 else "click",
            "ts": 1_000 + i * 20,
            "id": f"e{i}",
            "src": f"raw:0:{i}",
            "user_id": f"u{i % 97}",
            "campaign_id": f"c{i % 7}",
            "device_type": ("mobile", "desktop", "tablet")[i % 3],
        }
        for j, (key, fields) in enumerate(dimension_records(rec)):
            p = key_partition(key.encode(), PARTITIONS)
            events.append((p, key.encode(), {**fields, "key": key, "seq": [0, i, j]}))
    marker = {"kind": "wm", "src": "fan-out:0", "ts": 30_000, "of": 1}
    events += [(p, b"", marker) for p in range(PARTITIONS)]  # closes and drops every window
    result = windows.process(events, contribute)
    assert result.emits and result.writes
    assert result.writes.keys() == result.write_partitions.keys()
    for key, p in result.write_partitions.items():
        assert key_partition(key, PARTITIONS) == p, key
    members = sets.pending_partitions
    assert len(members) > 100 and members.keys() == sets.pending.keys()
    for entry, p in members.items():
        assert key_partition(aggregate_key_of(entry), PARTITIONS) == p, orjson.loads(entry)
    # and the deletions once the windows' drop is durable
    sets.apply_pending()
    assert sets.expire({p: 30_000 for p in range(PARTITIONS)}) > 0
    for entry, p in sets.pending_partitions.items():
        assert sets.pending[entry] is None
        assert key_partition(aggregate_key_of(entry), PARTITIONS) == p
