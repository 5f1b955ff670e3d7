"""engagement's per-event CPU without Kafka: the fan-out's encoding, the aggregate's decoding,
windows, distinct sets and the records and state writes a batch produces, on plain dicts.

The mesh benchmark measures the service with its broker round trips and faust around it; this one
isolates the Python the service runs per event, so a change to that code can be compared in
seconds, back to back, on a noisy machine. Traffic: the benchmark's impressions + clicks (clicks
carry their impression's fields, as ingest's join emits them), 3 partitions, 5 s windows.

    python -m bench.engagement_cpu [--events 200000] [--repeat 3]
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from bench.in_process import per_item_us, repeat_runs
from bench.traffic import Shape, make_template
from services.engagement.distinct import DistinctSets, counting
from services.engagement.fan_out import fan_out_batch
from services.engagement.metrics import split_key, window_records
from shared.batch_output import BatchOutput
from shared.bundles import Bundler, unbundle
from shared.watermark_relay import RelayedWatermark
from shared.windowed_agent import WindowedAggregation
from shared.windows import WindowSpec

PARTITIONS = 3
BATCH = 2_000
SPEC = WindowSpec(duration_ms=5_000, grace_ms=30_000, delay_ms=3_000)


def canonical_events(n: int) -> list[dict[str, Any]]:
    t = make_template(Shape(), min(n, 50_000), 1_000.0)
    imps: dict[str, dict[str, Any]] = {}
    out: list[dict[str, Any]] = []
    size = len(t.records)
    for j in range(n):
        k, i = divmod(j, size)
        r = t.records[i]
        ts = 1_700_000_000_000 + k * t.span_ms + t.offsets_ms[i]
        iid = f"{k & 0xFFFF:04x}" + r["impression_id"][4:]
        src = f"raw:{j % PARTITIONS}:{j // PARTITIONS}"
        if t.kinds[i] == "impressions":
            rec = {
                "kind": "impression",
                "id": iid,
                "impression_id": iid,
                "user_id": r["user_id"],
                "campaign_id": r["campaign_id"],
                "ad_id": r["ad_id"],
                "device_type": r.get("device_type") or "unknown",
                "browser": r.get("browser") or "unknown",
                "ts": ts,
                "cost_micros": 1000,
                "src": src,
            }
            imps[iid] = rec
        else:
            imp = imps.get(iid)
            if imp is None:
                continue
            rec = {"kind": "click", "id": f"{k & 0xFFFF:04x}" + r["click_id"][4:], "impression_id": iid}
            rec |= {"user_id": r["user_id"], "ts": ts, "src": src}
            rec |= {f: imp[f] for f in ("campaign_id", "ad_id", "device_type", "browser")}
        rec["seq"] = [j % PARTITIONS, j // PARTITIONS, 0]
        out.append(rec)
    return out


class Out(BatchOutput):
    """BatchOutput without a producer, keeping what would be sent."""

    def __init__(self) -> None:  # no app, no producer
        self.sent: list[tuple[str, bytes | None, bytes, int | None]] = []

    async def send(
        self, topic: str, key: bytes | None, value: bytes, *, partition: int | None = None, **_: Any
    ) -> None:
        self.sent.append((topic, key, value, partition))

    async def flush(self) -> int:
        return 0


@dataclass
class Message:
    partition: int
    offset: int


@dataclass
class Event:
    """The fields of a faust event the agents read."""

    message: Message
    value: bytes


def marker(ts: int) -> dict[str, Any]:
    return {"kind": "wm", "src": "join:0", "ts": ts, "of": 1}


async def run(events: list[dict[str, Any]]) -> dict[str, float]:
    table: dict[bytes, bytes] = {}
    windows = WindowedAggregation(table, SPEC, 10.0, PARTITIONS)
    sets = DistinctSets({}, SPEC, PARTITIONS)
    contribute = counting(sets)
    bundles = Bundler("engagement-by-key", PARTITIONS)
    relays: dict[int, RelayedWatermark] = {}

    def relay_of(p: int) -> RelayedWatermark:
        if p not in relays:
            relays[p] = RelayedWatermark(f"canonical:{p}")
        return relays[p]

    out = Out()
    rows = 0
    timings = {"fan_out": 0.0, "aggregate": 0.0}
    for n, b in enumerate(range(0, len(events), BATCH)):
        batch = events[b : b + BATCH]
        by_partition: dict[int, list[dict[str, Any]]] = {}
        for rec in batch:
            by_partition.setdefault(rec["seq"][0], []).append(rec)
        for p in range(PARTITIONS):  # the join's progress ends every partition's bundle
            by_partition.setdefault(p, []).append(marker(batch[-1]["ts"]))
        # the canonical records arrive bundled: one message per partition and batch, as the join
        # sends them (the seq a record carries is not what the fan-out reads)
        t0 = time.perf_counter()
        canonical = [Event(Message(p, n), orjson.dumps(recs)) for p, recs in sorted(by_partition.items())]
        await fan_out_batch(canonical, bundles, out, relay_of)
        copies = [(p, v) for _, _, v, p in out.sent]
        out.sent.clear()
        t1 = time.perf_counter()
        decoded = [(p, rec.get("key", "").encode(), rec) for p, v in copies for _, rec in unbundle(v)]
        result = windows.process(decoded, contribute)
        for emit in result.emits:
            out_key = split_key(emit.key)[1].encode()
            for record in window_records(emit, sets.sizes(emit.key, emit.start_ms), 0):
                await out.send("engagement-metrics", out_key, orjson.dumps(record))
                rows += 1
        sets.apply_pending()
        windows.commit_states(result)
        out.sent.clear()
        timings["aggregate"] += time.perf_counter() - t1
        timings["fan_out"] += t1 - t0
    n = len(events)
    return {"events": n, **per_item_us(timings, n), "rows": rows}


def main() -> None:
    repeat_runs(__doc__, canonical_events, run)


if __name__ == "__main__":
    main()
