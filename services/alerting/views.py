"""HTTP views of the alerting service (no secrets: errors in the table are redacted when stored)."""

from __future__ import annotations

import math
from typing import Any

from services.alerting.agents import deliverer, tables_ready
from services.alerting.app import app


@app.page("/alerts/pending")
async def pending_alerts(web: Any, request: Any) -> Any:
    return web.json(deliverer.pending())


@app.page("/alerts/status")
async def delivery_status(web: Any, request: Any) -> Any:
    """Slack mode and backlog (the generic /health and /ready come from shared.app)."""
    pending = deliverer.pending()
    return web.json(
        {
            "status": "ok",
            "slack": deliverer.mode,
            "tables_ready": tables_ready(),
            "pending": len(pending),
            "oldest_pending_ms": pending[0]["created_ms"] if pending else None,
            "in_process_ms": in_process_summary(list(deliverer.in_process_ms)),
            # the same deliveries without the successful Slack call's round trip
            "own_ms": in_process_summary(list(deliverer.own_ms)),
        }
    )


def in_process_summary(values: list[int]) -> dict[str, Any]:
    """Anomaly taken in -> Slack answered OK over the latest deliveries (nearest-rank percentiles)."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def rank(q: float) -> int:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    return {"count": len(ordered), "p50": rank(0.5), "p99": rank(0.99), "max": ordered[-1]}
