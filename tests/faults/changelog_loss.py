"""A fault for the mesh tests, armed in a worker started through tests/faults/faust_worker.py.

FAULT_CHANGELOG_LOSE_PARTITION=N: the first time each changelog record of partition N reaches
table recovery's queue, it is dropped. That is what the recovery stall of
docs/faust-recovery-stall.md looks like from inside: records fetched (the consumer's position
and read offset move past them) and emptied out of the changelog queue before recovery took
them, with nothing to fetch them again. Read again (a seek), they pass.
"""

from __future__ import annotations

import os
from typing import Any

_partition = os.environ.get("FAULT_CHANGELOG_LOSE_PARTITION")

if _partition is not None:
    from faust.tables.manager import TableManager

    lose_partition = int(_partition)
    _seen: set[tuple[str, int, int]] = set()
    _queue_of = TableManager.changelog_queue.fget

    def _lose(event: Any) -> bool:
        m = event.message
        if m.partition != lose_partition:
            return False
        key = (m.topic, m.partition, m.offset)
        if key in _seen:
            return False
        _seen.add(key)
        return True

    def _changelog_queue(self: Any) -> Any:
        queue = _queue_of(self)
        if not getattr(queue, "_faulty", False):
            queue._faulty = True
            put_nowait_enhanced, put = queue.put_nowait_enhanced, queue.put

            def lossy_put_nowait_enhanced(value: Any, **kwargs: Any) -> bool:
                return False if _lose(value) else put_nowait_enhanced(value, **kwargs)

            async def lossy_put(value: Any) -> None:
                if not _lose(value):
                    await put(value)

            queue.put_nowait_enhanced, queue.put = lossy_put_nowait_enhanced, lossy_put
        return queue

    TableManager.changelog_queue = property(_changelog_queue)  # type: ignore[method-assign,assignment]
