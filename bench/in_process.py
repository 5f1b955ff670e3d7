"""The command line the in-process benchmarks share (bench/engagement_cpu.py, bench/ingest_cpu.py):
build the input once, then run the measurement `--repeat` times, one JSON line each."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from shared.app import tune_garbage_collector


def repeat_runs(
    doc: str | None, make_input: Callable[[int], Any], run: Callable[[Any], Awaitable[dict]]
) -> None:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    data = make_input(a.events)
    tune_garbage_collector()  # as the services do once started
    for _ in range(a.repeat):
        print(orjson.dumps(asyncio.run(run(data))).decode(), flush=True)


def per_item_us(timings: dict[str, float], n: int) -> dict[str, float]:
    """{"<step>_us": microseconds per item, ..., "total_us": their sum} from seconds per step."""
    out = {f"{step}_us": round(seconds * 1e6 / n, 2) for step, seconds in timings.items()}
    out["total_us"] = round(sum(timings.values()) * 1e6 / n, 2)
    return out
