"""alerting: anomalies → Slack, one message per anomaly; `faust -A services.alerting worker`."""

from services.alerting import agents, views  # noqa: F401  (registers the agent, task, tables and views)
from services.alerting.app import app

__all__ = ["app"]
