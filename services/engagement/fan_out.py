"""The fan-out's batch work: one copy of each canonical event per dimension key it feeds, and the
input partitions' progress forwarded after them.

Apart from the agent (services.engagement.agents.fan_out) so that it is compiled with the other hot
modules (shared/compiled_modules.py): the batch loop compiled costs ~1 us less per event than in the
agent (bench/engagement_cpu.py, which drives it alone).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from services.engagement.metrics import Record, dimension_records
from shared.batch_output import BatchOutput
from shared.bundles import Bundler, unbundle
from shared.watermark_relay import RelayedWatermark
from shared.watermarks import MARKER_KIND


async def fan_out_batch(
    events: list[Any],
    bundles: Bundler,
    out: BatchOutput,
    relay_of: Callable[[int], RelayedWatermark],
) -> None:
    """One batch of canonical-events messages (faust events): every event's copies into `bundles`,
    and each input partition's progress forwarded after the events before it, then flushed."""
    touched: set[int] = set()
    for event in events:
        m = event.message
        p: int = m.partition
        touched.add(p)
        for j, rec in unbundle(event.value):
            if rec.get("kind") == MARKER_KIND:
                relay = relay_of(p)
                relay.observe(rec)
                if relay.moved():
                    await bundles.send(out)  # the events before it, bundles cut here
                    await relay.forward(out, bundles.topic, bundles.partitions)
                continue
            fan_out_copies(rec, p, m.offset, j, bundles)
    await bundles.send(out)
    # Markers after the batch's events: downstream never sees progress before the events in it.
    for p in touched:
        await relay_of(p).forward(out, bundles.topic, bundles.partitions)
    await out.flush()


def fan_out_copies(rec: Record, partition: int, offset: int, j: int, bundles: Bundler) -> None:
    """Add one canonical event's copy for each of its dimension keys to the batch's bundles."""
    for i, (key, fields) in enumerate(dimension_records(rec)):
        # seq = this stage's position, increasing per canonical partition in every
        # engagement-by-key partition: `aggregate` skips a copy re-sent after a crash (offset,
        # place in the bundle, dimension).
        seq = [partition, offset, j, i]
        bundles.add(key.encode(), orjson.dumps({**fields, "key": key, "seq": seq}))
