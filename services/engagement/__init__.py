"""engagement: device, user, item and experiment metrics in event-time tumbling windows, and
cumulative A/B readouts; `faust -A services.engagement worker`."""

from services.engagement import agents, views  # noqa: F401  (registers the agents, timers and views)
from services.engagement.app import app

__all__ = ["app"]
