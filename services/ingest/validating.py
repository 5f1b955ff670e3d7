"""validate's per-message work: parse and normalize raw messages, re-key them by dedup key.

Apart from the agent (services.ingest.agents.validate_batches) so that it is compiled with the
other hot modules (shared/compiled_modules.py): ingest gets one Kafka message per raw event, and
this loop around the parsers was a tenth of the process in the profile. bench/ingest_cpu.py drives
it alone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson

from services.ingest.formats import Limits, Rejected
from shared import metrics
from shared.batch_output import BatchOutput
from shared.bundles import Bundler
from shared.topics import TopicNames
from shared.watermarks import NEG_INF

Parser = Callable[[bytes | None, Limits], dict[str, Any]]


class Validation:
    """The parsers per raw topic and what validate reports to: the dead letters, the outcome
    counts, and each raw source's event-time progress (told on as markers)."""

    def __init__(
        self,
        parsers: dict[str, Parser],
        source_names: dict[str, str],
        limits: Limits,
        topics: TopicNames,
        partitions: int,
        outcomes: Counter[str],
    ) -> None:
        self.parsers = parsers
        self.source_names = source_names
        self.limits = limits
        self.topics = topics
        self.partitions = partitions
        self.raw_source_partitions = len(parsers) * partitions
        self.outcomes = outcomes
        self.progress: dict[str, int] = {}  # raw source partition -> max valid event time


def dead_letter_headers(record: Any, err: Rejected) -> list[tuple[str, bytes]]:
    return [
        ("dlq.reason", err.reason.encode()),
        ("dlq.detail", err.detail.encode("utf-8", "replace")[:500]),
        ("dlq.topic", record.topic.encode()),
        ("dlq.partition", str(record.partition).encode()),
        ("dlq.offset", str(record.offset).encode()),
        ("dlq.stage", b"ingest"),
    ]


async def validate_records(v: Validation, records: list[Any], out: BatchOutput, by_key: Bundler) -> None:
    """Parse and normalize raw messages (aiokafka ConsumerRecords) into `by_key`'s bundles (rejects
    to the dead letters), send them, then the progress of the raw sources (topic:partition) they
    came from; the caller flushes `out`."""
    progress = v.progress
    touched: set[str] = set()
    for m in records:
        topic: str = m.topic
        partition: int = m.partition
        try:
            rec = v.parsers[topic](m.value, v.limits)
        except Rejected as err:
            v.outcomes[f"dead_letter:{err.reason}"] += 1
            metrics.dead_lettered.labels("ingest", err.reason).inc()
            headers = dead_letter_headers(m, err)
            await out.send(v.topics.dead_letters, m.key, m.value or b"", headers=headers)
            continue
        source = f"{topic}:{partition}"
        rec["src"] = f"{source}:{m.offset}"
        rec["source"] = v.source_names[topic]
        ts: int = rec["ts"]
        at = progress.get(source, NEG_INF)
        if ts > at:
            at = progress[source] = ts
        # Where the stream stood at this message (markers only come after the batch): the
        # join measures a click's wait and an id's TTL from here.
        rec["at"] = at
        touched.add(source)
        by_key.add(rec["dedup_key"].encode(), orjson.dumps(rec))
    # One message per ingest-by-key partition and batch (shared/bundles.py), then markers.
    await by_key.send(out)
    for source in touched:
        await out.broadcast_marker(
            v.topics.by_event_key, v.partitions, source, progress[source], v.raw_source_partitions
        )
