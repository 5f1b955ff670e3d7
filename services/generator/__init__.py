"""Deterministic ad traffic with ground truth (traffic.py), a bounded/live CLI (cli.py) and a
faust worker (`faust -A services.generator worker`) that produces live traffic at EVENT_RATE.

`app` is built on first access, so the CLI and the pure generator never import faust.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app":
        from services.generator.worker import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
