"""ctr: CTR per campaign in event-time tumbling windows; `faust -A services.ctr worker`."""

from services.ctr import agents, views  # noqa: F401  (registers the agents, timers and views)
from services.ctr.app import app

__all__ = ["app"]
