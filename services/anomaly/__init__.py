"""anomaly: CTR / traffic anomalies per campaign and sales spikes per item, from closed windows, onto
the `anomalies` topic (which alerting turns into Slack messages); `faust -A services.anomaly worker`."""

from services.anomaly import agents, views  # noqa: F401  (registers the agents, tables and views)
from services.anomaly.app import app

__all__ = ["app"]
