"""End offsets and consumer-group committed offsets, summed per topic (for lag over time)."""

from __future__ import annotations

import contextlib

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient


class OffsetProbe:
    def __init__(self, bootstrap: str, partitions: int = 3) -> None:
        self.bootstrap = bootstrap
        self.partitions = partitions
        self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)

    async def start(self) -> None:
        await self.admin.start()
        await self.consumer.start()

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.consumer.stop()
        with contextlib.suppress(Exception):
            await self.admin.close()

    def tps(self, topics: list[str]) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t in topics for p in range(self.partitions)]

    async def end_offsets(self, topics: list[str]) -> dict[str, int]:
        ends = await self.consumer.end_offsets(self.tps(topics))
        out = dict.fromkeys(topics, 0)
        for tp, off in ends.items():
            out[tp.topic] += off
        return out

    async def committed(self, group: str, topics: list[str]) -> dict[str, int]:
        out = dict.fromkeys(topics, 0)
        try:
            offsets = await self.admin.list_consumer_group_offsets(group)
        except Exception:  # group not there yet
            return out
        for tp, meta in offsets.items():
            if tp.topic in out and meta.offset >= 0:
                out[tp.topic] += meta.offset
        return out

    async def delete_topics(self, prefix: str) -> list[str]:
        # Quix names its internal topics "repartition__<group>--..." and "changelog__<group>--..."
        names = [t for t in await self.admin.list_topics() if prefix in t]
        if names:
            with contextlib.suppress(Exception):
                await self.admin.delete_topics(names)
        return names
