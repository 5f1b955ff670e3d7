"""The fan-out's per-event work: one copy of a canonical event per dimension key it feeds.

Apart from the agent (services.engagement.agents.fan_out) so that it is compiled with the other hot
modules (shared/compiled_modules.py); bench/engagement_cpu.py drives it alone.
"""

from __future__ import annotations

import orjson

from services.engagement.metrics import Record, dimension_records
from shared.bundles import Bundler


def fan_out_copies(rec: Record, partition: int, offset: int, j: int, bundles: Bundler) -> None:
    """Add one canonical event's copy for each of its dimension keys to the batch's bundles."""
    for i, (key, fields) in enumerate(dimension_records(rec)):
        # seq = this stage's position, increasing per canonical partition in every
        # engagement-by-key partition: `aggregate` skips a copy re-sent after a crash (offset,
        # place in the bundle, dimension).
        seq = [partition, offset, j, i]
        bundles.add(key.encode(), orjson.dumps({**fields, "key": key, "seq": seq}))
