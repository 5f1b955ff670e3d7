"""Upper limits for the mesh on this machine, on the same pre-loaded raw topics:

L1  a raw aiokafka consumer (getmany, no group, no commits) that decodes every value with orjson;
L2  L1 plus the CTR job in plain Python in the same loop: dedup by id, click -> impression join
    (a click waits for its impression), tumbling event-time windows per campaign counting
    impressions, clicks and cost, a watermark = min event time over the input partitions minus the
    watermark delay, and windows emitted (counted, not produced) once the watermark passes their end.

No Kafka output, no state store, no fault tolerance: that is what makes them limits.

    python -m bench.limits l1|l2 --bootstrap H:P --prefix P [--max-seconds S]

Prints one JSON line: events, seconds (first record to last), events_per_s, windows emitted.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

NEG_INF = -(2**62)


def cpu_now() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class CtrJob:
    """The windowed CTR aggregation, plain Python."""

    def __init__(self, window_ms: int, delay_ms: int, partitions: list[TopicPartition]) -> None:
        self.window_ms = window_ms
        self.delay_ms = delay_ms
        self.imps: dict[str, str] = {}  # impression_id -> campaign_id (dedup + join)
        self.clicks: set[str] = set()  # click ids seen (dedup)
        self.pending: dict[str, list[tuple[str, int]]] = {}  # clicks waiting for their impression
        self.windows: dict[tuple[str, int], list[int]] = {}  # (campaign, start) -> [imps, clicks, cost]
        self.progress = dict.fromkeys(partitions, NEG_INF)
        self.watermark = NEG_INF
        self.emitted = 0
        self.duplicates = 0

    def _count(self, campaign: str, ts: int, imp: int, clk: int, cost: int) -> None:
        key = (campaign, ts - ts % self.window_ms)
        w = self.windows.get(key)
        if w is None:
            self.windows[key] = [imp, clk, cost]
        else:
            w[0] += imp
            w[1] += clk
            w[2] += cost

    def event(self, tp: TopicPartition, rec: dict) -> None:
        ts = rec["event_timestamp"]
        if ts > self.progress[tp]:
            self.progress[tp] = ts
        iid = rec["impression_id"]
        if "click_id" in rec:
            cid = rec["click_id"]
            if cid in self.clicks:
                self.duplicates += 1
                return
            self.clicks.add(cid)
            campaign = self.imps.get(iid)
            if campaign is None:
                self.pending.setdefault(iid, []).append((cid, ts))
            else:
                self._count(campaign, ts, 0, 1, 0)
            return
        if iid in self.imps:
            self.duplicates += 1
            return
        campaign = rec["campaign_id"]
        self.imps[iid] = campaign
        self._count(campaign, ts, 1, 0, round(rec.get("cost", 0) * 1_000_000))
        for _, cts in self.pending.pop(iid, ()):
            self._count(campaign, cts, 0, 1, 0)

    def close(self) -> None:
        """Emit every window the watermark has passed (once per batch, as the mesh does)."""
        wm = min(self.progress.values()) - self.delay_ms
        if wm <= self.watermark:
            return
        self.watermark = wm
        done = [k for k in self.windows if k[1] + self.window_ms <= wm]
        for k in done:
            del self.windows[k]
        self.emitted += len(done)


async def run(
    mode: str, bootstrap: str, topics: list[str], max_seconds: float, window_ms: int, delay_ms: int
) -> dict:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1_048_576,
        fetch_max_bytes=32 * 1_048_576,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or [])]
        if not tps:
            await consumer._client.force_metadata_update()
            tps = [
                TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or [])
            ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        total = sum((await consumer.end_offsets(tps)).values())
        job = CtrJob(window_ms, delay_ms, tps) if mode == "l2" else None
        loads = orjson.loads
        n = 0
        t_first = t_last = None
        deadline = None
        cpu_first = 0.0
        while n < total:
            batch = await consumer.getmany(timeout_ms=500, max_records=20_000)
            now = time.perf_counter()
            if batch and t_first is None:
                t_first = now
                deadline = now + max_seconds
                cpu_first = cpu_now()
            for tp, records in batch.items():
                if job is None:
                    for r in records:
                        loads(r.value)
                else:
                    event = job.event
                    for r in records:
                        event(tp, loads(r.value))
                n += len(records)
            if job is not None and batch:
                job.close()
            t_last = time.perf_counter()
            if deadline is not None and t_last > deadline:
                break
    finally:
        await consumer.stop()
    seconds = (t_last or 0) - (t_first or 0)
    cpu = cpu_now() - cpu_first if t_first is not None else 0.0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out = {
        "system": mode.upper(),
        "events": n,
        "total_in_topics": total,
        "complete": n >= total,
        "seconds": round(seconds, 2),
        "events_per_s": round(n / seconds) if seconds > 0 else None,
        "cpu_s": round(cpu, 2),  # from the first record on (start-up and imports excluded)
        "peak_rss_mib": round(ru.ru_maxrss / 1024, 1),
    }
    if job is not None:
        out.update(windows_emitted=job.emitted, windows_open=len(job.windows), duplicates=job.duplicates)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.limits")
    p.add_argument("mode", choices=("l1", "l2"))
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--max-seconds", type=float, default=600.0, help="stop early (rate over what was read)")
    p.add_argument("--window-ms", type=int, default=60_000)
    p.add_argument("--delay-ms", type=int, default=3_000)
    a = p.parse_args(argv)
    topics = [f"{a.prefix}ad-impressions", f"{a.prefix}ad-clicks"]
    out = asyncio.run(run(a.mode, a.bootstrap, topics, a.max_seconds, a.window_ms, a.delay_ms))
    sys.stdout.write(orjson.dumps(out).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
