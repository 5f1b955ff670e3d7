"""HTTP views of the anomaly service: the incidents open right now, and how far it has judged."""

from __future__ import annotations

from typing import Any

import orjson

from services.anomaly.agents import campaign_states, item_states, items_judged_to, partition_progress
from services.anomaly.app import app
from services.anomaly.monitor import open_incidents


@app.page("/anomalies/open")
async def open_anomalies(web: Any, request: Any) -> Any:
    """Campaigns and items whose detector has an open incident (this worker's partitions)."""
    incidents = open_incidents(campaign_states, "campaign") + open_incidents(item_states, "item")
    return web.json({"count": len(incidents), "incidents": incidents})


@app.page("/anomalies/progress")
async def progress(web: Any, request: Any) -> Any:
    """Per ctr-metrics partition: the newest window judged ("frontier") and the live windows not yet
    settled for silence detection (see services/anomaly/silence.py); per engagement-metrics
    partition: the newest item window judged for sales spikes since this worker started."""
    by_partition = {}
    for key, raw in list(partition_progress.items()):
        p = int(key.decode().split(":")[1])  # "\x00anomaly-progress:<partition>:<n>"
        by_partition[p] = orjson.loads(raw)
    items = {str(p): ws for p, ws in sorted(items_judged_to.items())}
    return web.json({"partitions": by_partition, "campaigns": len(campaign_states), "items": items})
