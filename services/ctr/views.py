"""HTTP views of the ctr service: latest and previous closed CTR window per campaign."""

from __future__ import annotations

from typing import Any

import orjson

from services.ctr.agents import ctr_latest, windows
from services.ctr.app import app


def all_latest() -> dict[str, dict[str, Any]]:
    return {k.decode(): orjson.loads(v) for k, v in ctr_latest.items()}


@app.page("/watermarks")
async def watermarks(web: Any, request: Any) -> Any:
    """Per input partition: watermark, what it waits for, how many keys hold open windows."""
    return web.json({"windows": windows.describe()})


@app.page("/ctr/latest")
async def latest(web: Any, request: Any) -> Any:
    return web.json({c: v["latest"] for c, v in all_latest().items()})


@app.page("/ctr/previous")
async def previous(web: Any, request: Any) -> Any:
    return web.json({c: v["previous"] for c, v in all_latest().items() if v["previous"]})


@app.page("/ctr/{campaign_id}")
async def campaign(web: Any, request: Any, campaign_id: str) -> Any:
    raw = ctr_latest.get(campaign_id.encode())
    if raw is None:
        return web.json({"error": f"unknown campaign {campaign_id!r}: no closed window yet"}, status=404)
    v = orjson.loads(raw)
    latest, prev = v["latest"], v["previous"]
    change = None
    if prev is not None:
        change = {
            "ctr": latest["ctr"] - prev["ctr"],
            "ctr_relative": (latest["ctr"] - prev["ctr"]) / prev["ctr"] if prev["ctr"] else None,
            "impressions": latest["impressions"] - prev["impressions"],
            "clicks": latest["clicks"] - prev["clicks"],
        }
    return web.json({"campaign_id": campaign_id, "latest": latest, "previous": prev, "change": change})
