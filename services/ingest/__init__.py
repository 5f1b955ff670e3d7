"""ingest: validates, dedups and joins raw events; `faust -A services.ingest worker`."""

from shared.compiled_modules import prefer_compiled

# Before the agents import the hot modules (parsers, join): their mypyc build, if current.
prefer_compiled(__name__, __path__)

from services.ingest import agents  # noqa: E402, F401  (registers the agents and views)
from services.ingest.app import app  # noqa: E402

__all__ = ["app"]
