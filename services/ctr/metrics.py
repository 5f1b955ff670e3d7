"""What one campaign-window result is: counts in, CTR / CPC / CPM out (pure)."""

from __future__ import annotations

import time
from typing import Any

from shared.topics import WINDOW_CLOSED
from shared.windows import Emit

IMPRESSIONS, CLICKS, COST_MICROS = 0, 1, 2


def contribution(rec: dict[str, Any]) -> list[int] | None:
    """[impressions, clicks, cost in micro-units] one canonical event adds to its campaign window."""
    kind = rec["kind"]
    if kind == "impression":
        return [1, 0, rec.get("cost_micros", 0)]
    if kind == "click":
        return [0, 1, 0]
    return None


def ctr_result(emit: Emit) -> dict[str, Any]:
    impressions, clicks, cost_micros = emit.aggregate
    cost = cost_micros / 1_000_000
    return {
        "campaign_id": emit.key,
        "window_start": emit.start_ms,
        "window_end": emit.end_ms,
        "impressions": impressions,
        "clicks": clicks,
        # ctr = 0 for a window with clicks but no impressions (its impressions fell in another window)
        "ctr": clicks / impressions if impressions else 0.0,
        "cost": cost,
        "cpc": cost / clicks if clicks else 0.0,
        "cpm": cost * 1000 / impressions if impressions else 0.0,
        "version": emit.version,
        "emitted_at_ms": int(time.time() * 1000),
    }


def window_closed(partition: int, start_ms: int, end_ms: int) -> dict[str, Any]:
    """ctr-metrics' other record: ctr's partition `partition` closed window [start, end), so its
    campaigns without a result for that window had no events in it. Sent after the window's
    results, to the same ctr-metrics partition; the anomaly service turns it into zero-traffic
    windows for campaigns that went silent (services/anomaly/silence.py), the warehouse skips it."""
    return {"kind": WINDOW_CLOSED, "partition": partition, "window_start": start_ms, "window_end": end_ms}


def shift_latest(current: dict[str, Any] | None, result: dict[str, Any]) -> dict[str, Any]:
    """Keep a campaign's latest closed window and the one before it, whatever order results come in."""
    latest = (current or {}).get("latest")
    previous = (current or {}).get("previous")
    start = result["window_start"]
    if latest is None or start > latest["window_start"]:
        previous, latest = latest, result
    elif start == latest["window_start"]:
        latest = result
    elif previous is None or start > previous["window_start"] or start == previous["window_start"]:
        previous = result
    return {"latest": latest, "previous": previous}
