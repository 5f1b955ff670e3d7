"""warehouse: the one service that writes ClickHouse; `faust -A services.warehouse worker`."""

from services.warehouse import agents, views  # noqa: F401  (registers the agent and views)
from services.warehouse.app import app

__all__ = ["app"]
