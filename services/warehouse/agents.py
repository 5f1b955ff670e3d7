"""warehouse agent: result topics → batched, idempotent inserts into ClickHouse.

Offsets are committed only for batches ClickHouse accepted: a batch is acked when the body returns
(shared/event_batches.py), and the body retries the insert until it succeeds instead of raising.
A retried or replayed batch carries the same dedup token (from its topic-partition-offsets), and
tables are ReplacingMergeTree on their natural key, so nothing is ever counted twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import defaultdict
from typing import Any

from faust.types import EventT

from services.warehouse.app import app, clickhouse, settings
from services.warehouse.sinks import Message, Row, columns_by_table, sinks_for
from shared import metrics
from shared.app import raw_schema
from shared.event_batches import event_batches
from shared.topics import topic_names

log = logging.getLogger(__name__)
topics = topic_names(settings)
SINKS = sinks_for(topics)
COLUMNS = columns_by_table(SINKS)
source_topic = app.topic(*SINKS, schema=raw_schema())

schema_ready = asyncio.Event()
inserted_rows: defaultdict[str, int] = defaultdict(int)
insert_failures: defaultdict[str, int] = defaultdict(int)


async def ensure_schema() -> None:
    if schema_ready.is_set():
        return
    delay = 0.5
    while True:
        try:
            applied = await clickhouse.migrate()
            log.info("schema up to date (%d migrations applied now)", len(applied))
            schema_ready.set()
            return
        except Exception as exc:  # ClickHouse down at start: wait for it, do not crash
            log.warning("ClickHouse not ready (%s); retrying in %.1fs", type(exc).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


def to_message(event: EventT) -> Message:
    m = event.message
    headers = {k: v for k, v in (m.headers or [])} if not isinstance(m.headers, dict) else m.headers
    return Message(
        m.topic,
        m.partition,
        m.offset,
        m.key,
        m.value or b"",
        headers,
        m.timestamp and int(m.timestamp * 1000),
    )


def batch_token(table: str, offsets: dict[tuple[str, int], list[int]]) -> str:
    """Same input messages -> same token, so ClickHouse drops a repeated insert of this batch."""
    spans = ",".join(f"{t}:{p}:{min(o)}-{max(o)}:{len(o)}" for (t, p), o in sorted(offsets.items()))
    return hashlib.sha1(f"{table}|{spans}".encode()).hexdigest()


async def insert_with_retry(table: str, rows: list[Row], columns: list[str], token: str) -> None:
    delay = 0.2
    while True:
        started = time.monotonic()
        try:
            await clickhouse.insert(table, rows, columns, token)
            metrics.clickhouse_insert_seconds.labels(table).observe(time.monotonic() - started)
            inserted_rows[table] += len(rows)
            return
        except Exception as exc:
            insert_failures[table] += 1
            metrics.clickhouse_insert_failures.labels(table).inc()
            log.warning(
                "insert into %s failed (%s: %s); retrying in %.1fs",
                table,
                type(exc).__name__,
                str(exc)[:200],
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


@app.agent(source_topic)
async def persist(stream: Any) -> None:
    await ensure_schema()
    async for events in event_batches(
        stream,
        settings.warehouse_batch_rows,
        settings.warehouse_batch_seconds,
        settings.warehouse_batch_quiet_seconds,
    ):
        rows: dict[str, list[Row]] = defaultdict(list)
        offsets: dict[str, dict[tuple[str, int], list[int]]] = defaultdict(lambda: defaultdict(list))
        for event in events:
            msg = to_message(event)
            sink = SINKS[msg.topic]
            try:
                routed = sink.route(msg)
            except Exception as exc:  # our own topics: a bad record is a bug, keep it visible
                log.error("cannot map %s:%s:%s to a row: %r", msg.topic, msg.partition, msg.offset, exc)
                continue
            if routed is not None:
                table, row = routed
                rows[table].append(row)
                offsets[table][(msg.topic, msg.partition)].append(msg.offset)
        for table, table_rows in rows.items():
            await insert_with_retry(table, table_rows, COLUMNS[table], batch_token(table, offsets[table]))
