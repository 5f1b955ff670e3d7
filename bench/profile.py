"""Summaries of py-spy raw (collapsed-stack) output: where a worker's time goes.

Each line of `py-spy record --format raw` is "frame;frame;...;leaf COUNT", a frame being
"function (file:line)". Idle time shows up as stacks ending in the event loop's select()/epoll.

    python -m bench.profile data/pyspy-ingest.txt
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

# Buckets, first match wins, tested against the innermost frames that are not library plumbing.
# (substring of "file:function", bucket)
BUCKETS: list[tuple[str, str]] = [
    ("selectors.py:select", "idle (waiting in epoll)"),
    ("aiokafka/partitioner", "murmur2 (aiokafka partitioner)"),
    ("aiokafka/record/", "Kafka record batches (encode/decode)"),
    ("aiokafka/producer/", "aiokafka producer (send, accumulator)"),
    ("aiokafka/consumer/", "aiokafka consumer (fetcher)"),
    ("aiokafka/", "aiokafka other (conn, protocol)"),
    ("faust/tables/", "faust tables (get/set, changelog send)"),
    ("faust/stores/", "faust tables (get/set, changelog send)"),
    ("faust/transport/", "faust transport (consumer/producer wrappers, acks)"),
    ("faust/streams.py", "faust stream machinery (events, take_events)"),
    ("faust/channels.py", "faust stream machinery (events, take_events)"),
    ("faust/events.py", "faust stream machinery (events, take_events)"),
    ("faust/sensors/", "faust sensors (monitor)"),
    ("faust/", "faust other"),
    ("mode/", "mode (faust's service runtime)"),
    ("asyncio/", "asyncio event loop"),
    ("clickhouse_connect/", "ClickHouse client / chDB"),
    ("chdb", "ClickHouse client / chDB"),
    ("logging/", "logging"),
]


def parse(path: Path) -> list[tuple[list[tuple[str, str, str]], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for f in stack.split(";"):
            m = FRAME.match(f.strip())
            if m:
                frames.append((m["func"], m["file"], m["line"] or ""))
            else:
                frames.append((f.strip(), "", ""))
        stacks.append((frames, int(count)))
    return stacks


def short(file: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def bucket_of(frames: list[tuple[str, str, str]]) -> str:
    """Leaf-first: the first frame that matches a bucket; project code if the leaf is ours."""
    for func, file, _ in reversed(frames):
        where = f"{short(file)}:{func}"
        if where.startswith(("services/", "shared/")):
            return f"project code ({short(file)})"
        for needle, name in BUCKETS:
            if needle in where:
                return name
    return "other"


def is_idle(frames: list[tuple[str, str, str]]) -> bool:
    """The event loop (or a thread's loop) waiting in epoll."""
    return bool(frames) and frames[-1][0].endswith("select") and "selectors" in frames[-1][1]


PLUMBING = ("asyncio/", "mode/services.py", "mode/threads.py", "faust/agents/agent.py", "contextlib")


def task_of(frames: list[tuple[str, str, str]]) -> str:
    """What a sample was working on: the first frame under the event loop's callback runner that is
    not scheduling plumbing (an agent, the fetcher, the producer's sender, a timer...)."""
    if frames and "threading" in frames[0][1]:
        return "other threads (consumer thread / ClickHouse executor)"
    for i, (func, _, _) in enumerate(frames):
        if func == "Handle._run":
            for func2, file2, _ in frames[i + 1 :]:
                f = short(file2)
                if f.startswith(PLUMBING) or func2.startswith("Service."):
                    continue
                return f"{func2} ({f})"
            break
    return "event loop itself (_run_once, select bookkeeping)"


def summarize(path: Path, top: int = 15) -> dict:
    stacks = parse(path)
    total = sum(c for _, c in stacks) or 1
    idle = sum(c for f, c in stacks if is_idle(f))
    busy = total - idle or 1
    tasks: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    buckets: Counter[str] = Counter()
    for frames, c in stacks:
        if is_idle(frames):
            continue
        tasks[task_of(frames)] += c
        func, file, line = frames[-1]
        self_time[f"{func} ({short(file)}:{line})"] += c
        seen = set()
        for func, file, _ in frames:
            key = f"{func} ({short(file)})"
            if key not in seen:
                seen.add(key)
                inclusive[key] += c
        buckets[bucket_of(frames)] += c
    pct = lambda c: round(100 * c / busy, 1)  # noqa: E731
    return {
        "samples": total,
        "idle_pct_of_samples": round(100 * idle / total, 1),
        "busy_by_task_pct": {k: pct(v) for k, v in tasks.most_common(top)},
        "busy_by_innermost_library_pct": {k: pct(v) for k, v in buckets.most_common()},
        "top_self_pct": {k: pct(v) for k, v in self_time.most_common(top)},
        "top_inclusive_pct": {k: pct(v) for k, v in inclusive.most_common(top * 3)},
    }


def main(argv: list[str] | None = None) -> int:
    import orjson

    for p in argv if argv is not None else sys.argv[1:]:
        sys.stdout.write(orjson.dumps({p: summarize(Path(p))}, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
