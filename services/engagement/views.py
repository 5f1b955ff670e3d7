"""HTTP views of the engagement service: the latest cumulative readout of each experiment."""

from __future__ import annotations

from typing import Any

import orjson

from services.engagement.agents import engagement_readouts, fan_out_partitions, windows
from services.engagement.app import app


def all_readouts() -> dict[str, dict[str, Any]]:
    return {k.decode().partition(":")[2]: orjson.loads(v) for k, v in engagement_readouts.items()}


@app.page("/watermarks")
async def watermarks(web: Any, request: Any) -> Any:
    """Event-time progress of both stages (fan-out forwards, aggregate closes windows)."""
    return web.json(
        {
            "fan_out": {p: relay.describe() for p, relay in sorted(fan_out_partitions.items())},
            "windows": windows.describe(),
        }
    )


@app.page("/engagement/experiments")
async def experiments(web: Any, request: Any) -> Any:
    return web.json(all_readouts())


@app.page("/engagement/experiments/{name}")
async def experiment(web: Any, request: Any, name: str) -> Any:
    raw = engagement_readouts.get(f"experiment:{name}".encode())
    if raw is None:
        return web.json({"error": f"unknown experiment {name!r}: no closed window yet"}, status=404)
    return web.json({"experiment": name, "variations": orjson.loads(raw)})
