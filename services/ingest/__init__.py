"""ingest: validates, dedups and joins raw events; `faust -A services.ingest worker`."""

from services.ingest import agents  # noqa: F401  (registers the agents and views)
from services.ingest.app import app

__all__ = ["app"]
