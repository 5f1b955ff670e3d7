"""engagement: device, user, item and experiment metrics in event-time tumbling windows, and
cumulative A/B readouts; `faust -A services.engagement worker`."""

from shared.compiled_modules import prefer_compiled

# Before the agents import the hot modules (metrics, distinct sets): their mypyc build, if current.
prefer_compiled(__name__, __path__)

from services.engagement import agents, views  # noqa: E402, F401  (registers the agents, timers and views)
from services.engagement.app import app  # noqa: E402

__all__ = ["app"]
