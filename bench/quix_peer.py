"""The peer: the same windowed CTR job with Quix Streams (runs in the bench venv, bench/.venv).

Same input topics and the same semantics as the mesh's ingest + ctr, written the idiomatic Quix way:
  1. impressions and clicks (both keyed by impression_id) concatenated;
  2. a stateful step per impression_id (RocksDB state, changelogged like the mesh's tables): dedup
     impressions and clicks by id, join a click to its impression's campaign (a click that comes
     first waits in state for its impression);
  3. group_by(campaign_id) (a repartition topic, like the mesh's canonical-events);
  4. tumbling event-time windows per campaign (grace = the mesh's watermark delay) reducing
     [impressions, clicks, cost]; .final() emits a window once stream time passes end + grace.

backlog: read the pre-loaded topics, stop when every event reached the window step (or at
--max-seconds); events/s from the first record to the last.
live: run --seconds against a live topic; window-close latency = wall clock when Quix emits a
window - (window end + grace), event time being the wall clock.

    bench/.venv/bin/python bench/quix_peer.py backlog --bootstrap H:P --prefix P --group G
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import tempfile
import threading
import time


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))
    return xs[k]


def end_offsets(bootstrap: str, topics: list[str]) -> int:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "bench-quix-probe", "enable.auto.commit": False}
    )
    try:
        total = 0
        md = c.list_topics(timeout=10)
        for t in topics:
            for p in md.topics[t].partitions:
                _, hi = c.get_watermark_offsets(TopicPartition(t, p), timeout=10)
                total += hi
        return total
    finally:
        c.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("backlog", "live"))
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--window-ms", type=int, default=60_000)
    p.add_argument("--grace-ms", type=int, default=3_000, help="the mesh's WATERMARK_DELAY_MS")
    p.add_argument("--max-seconds", type=float, default=120.0)
    p.add_argument("--seconds", type=float, default=60.0, help="live: how long to run")
    p.add_argument("--warmup-s", type=float, default=10.0, help="live: windows closing before are ignored")
    a = p.parse_args(argv)

    from quixstreams import Application

    logging.getLogger("quixstreams").setLevel(logging.WARNING)
    topics = [f"{a.prefix}ad-impressions", f"{a.prefix}ad-clicks"]
    expected = end_offsets(a.bootstrap, topics) if a.mode == "backlog" else None
    state_dir = tempfile.mkdtemp(prefix="quix-state-")
    app = Application(
        broker_address=a.bootstrap,
        consumer_group=a.group,
        auto_offset_reset="earliest",
        state_dir=state_dir,
        loglevel="WARNING",
        commit_interval=1.0,
    )

    def ts_of(value, headers, timestamp, timestamp_type) -> int:
        return value["event_timestamp"]

    imps = app.topic(
        topics[0], key_deserializer="bytes", value_deserializer="json", timestamp_extractor=ts_of
    )
    clicks = app.topic(
        topics[1], key_deserializer="bytes", value_deserializer="json", timestamp_extractor=ts_of
    )

    def dedup_join(value: dict, state) -> list[dict]:
        ts = value["event_timestamp"]
        if "click_id" in value:
            seen = state.get("clicks", [])
            if value["click_id"] in seen:
                return []
            seen.append(value["click_id"])
            state.set("clicks", seen)
            campaign = state.get("campaign")
            if campaign is None:
                pending = state.get("pending", [])
                pending.append(ts)
                state.set("pending", pending)
                return []
            return [{"campaign_id": campaign, "ts": ts, "i": 0, "c": 1, "cost": 0}]
        if state.get("campaign") is not None:
            return []
        campaign = value["campaign_id"]
        state.set("campaign", campaign)
        out = [{"campaign_id": campaign, "ts": ts, "i": 1, "c": 0, "cost": round(value.get("cost", 0) * 1e6)}]
        for cts in state.get("pending", []):
            out.append({"campaign_id": campaign, "ts": cts, "i": 0, "c": 1, "cost": 0})
        if state.exists("pending"):
            state.delete("pending")
        return out

    counted = [0]
    cpu_first: list[float] = []
    t_first: list[float] = []
    t_last = [0.0]
    latencies: list[float] = []
    windows = [0]
    late = [0]
    started = time.time()

    def count(value: dict) -> None:
        if not t_first:
            t_first.append(time.perf_counter())
            cpu_first.append(cpu_s())
        counted[0] += 1
        t_last[0] = time.perf_counter()
        if expected is not None and counted[0] >= expected:
            app.stop()

    def on_window(value: dict) -> None:
        windows[0] += 1
        if a.mode == "live":
            due_ms = value["end"] + a.grace_ms
            if due_ms / 1000 >= started + a.warmup_s:
                latencies.append(time.time() * 1000 - due_ms)

    def on_late(*args) -> bool:
        late[0] += 1  # counted, not logged
        return False

    sdf = app.dataframe(imps).concat(app.dataframe(clicks))
    sdf = sdf.apply(dedup_join, stateful=True, expand=True)
    sdf = sdf.group_by("campaign_id")
    sdf = sdf.update(count)
    # event time of the canonical record (a click keeps its own time)
    sdf = sdf.set_timestamp(lambda value, key, timestamp, headers: value["ts"])
    sdf = (
        sdf.tumbling_window(duration_ms=a.window_ms, grace_ms=a.grace_ms, on_late=on_late)
        .reduce(
            reducer=lambda agg, v: [agg[0] + v["i"], agg[1] + v["c"], agg[2] + v["cost"]],
            initializer=lambda v: [v["i"], v["c"], v["cost"]],
        )
        .final()
    )
    sdf = sdf.update(on_window)

    limit = a.max_seconds if a.mode == "backlog" else a.seconds
    timer = threading.Timer(limit, app.stop)
    timer.daemon = True
    timer.start()
    cpu0 = cpu_s()
    app.run()
    timer.cancel()
    # from the first event through the window step on (start-up, topic creation excluded)
    cpu = cpu_s() - (cpu_first[0] if cpu_first else cpu0)
    seconds = (t_last[0] - t_first[0]) if t_first else 0.0
    out: dict = {
        "system": "Quix Streams",
        "mode": a.mode,
        "windows_emitted": windows[0],
        # events dropped as late by the window step: Quix's stream time is the max event time per
        # partition, so draining a backlog unevenly across input partitions makes events "late"
        "late_dropped": late[0],
        "cpu_s": round(cpu, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if a.mode == "backlog":
        out.update(
            events=counted[0],
            total_in_topics=expected,
            complete=counted[0] >= (expected or 0),
            seconds=round(seconds, 2),
            events_per_s=round(counted[0] / seconds) if seconds > 0 else None,
        )
    else:
        out.update(
            events=counted[0],
            latency_samples=len(latencies),
            latency_ms={
                q: round(v, 1) if v is not None else None
                for q in (50, 95, 99)
                for v in [percentile(latencies, q)]
            },
            latency_max_ms=round(max(latencies), 1) if latencies else None,
        )
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    os._exit(0)  # do not wait for librdkafka/RocksDB teardown


if __name__ == "__main__":
    raise SystemExit(main())
