"""Benchmark traffic: the project's generator, replicated fast (pre-load) or paced (live).

`TrafficGenerator` makes ~15-30k messages/s, too slow to pre-load millions within the run's time
budget (and it would eat a core during a paced live run). So it makes one *template* block of
realistic impressions + clicks, and the template is replicated with fresh ids and shifted event
times: copy k rewrites the first 4 hex digits of every impression/click id to k (ids stay unique
and 16 hex chars, so the bytes keep the generator's size) and shifts event time by k x the block's
span, so event time keeps increasing across copies. Clicks keep their impression's id as their
key, so they stay co-partitioned with their impression, exactly as the generator sends them.

    python -m bench.traffic preload --bootstrap H:P --prefix P --events N
    python -m bench.traffic live --bootstrap H:P --prefix P --rate 10000 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import orjson

from services.generator.producer import make_producer
from services.generator.spec import TrafficSpec
from services.generator.traffic import TrafficGenerator
from shared.app import ensure_topics
from shared.kafka_batches import BatchSender, Deliveries
from shared.settings import Settings
from shared.topics import topic_names

CLICK_RATIO = 0.1  # mean campaign CTR of the generated traffic (the mesh's CLICK_RATIO default)


@dataclass(frozen=True)
class Shape:
    """Traffic cardinality: `scale` multiplies campaigns, ads and users (the scaling runs)."""

    scale: int = 1
    campaigns: int = 10
    ads: int = 50
    users: int = 5_000

    def spec(self, n_arrivals: int, rate: float, seed: int, start_ms: int) -> TrafficSpec:
        return TrafficSpec(
            n_events=n_arrivals,
            seed=seed,
            start_ms=start_ms,
            rate=rate,
            click_ratio=CLICK_RATIO,
            campaigns=self.campaigns * self.scale,
            ads=self.ads * self.scale,
            users=self.users * self.scale,
        )


@dataclass
class Template:
    kinds: list[str]  # "impressions" | "clicks"
    records: list[dict]  # decoded values
    offsets_ms: list[int]  # event time - block start
    span_ms: int  # a copy shifted by span_ms starts after the previous copy's last event

    @property
    def events_per_s(self) -> float:
        return len(self.records) * 1000 / self.span_ms


def make_template(shape: Shape, messages: int, rate: float, seed: int = 42) -> Template:
    """`messages` impressions + clicks from the generator; `rate` = events/s of event time."""
    arrivals_rate = rate / (1 + CLICK_RATIO)
    # more arrivals than needed, cut at `messages`: the generator's end (clicks still due after
    # the last arrival) would leave a sparse tail in event time
    n_arrivals = int(messages * 1.5) + 10
    start = 1_700_000_000_000
    kinds, records, offsets = [], [], []
    seen: set[str] = set()
    for m in TrafficGenerator(shape.spec(n_arrivals, arrivals_rate, seed, start)):
        rec = orjson.loads(m.value)
        rid = rec.get("click_id") or rec["impression_id"]
        if rid[4:] in seen:  # would collide once the first 4 digits are rewritten: skip it
            continue
        seen.add(rid[4:])
        kinds.append(m.topic_kind)
        records.append(rec)
        offsets.append(rec["event_timestamp"] - start)
        if len(records) >= messages:
            break
    # The generator's arrival rate comes out below `rate` (its arrival process and click model
    # shape it): stretch or squeeze event time so that the template has exactly `rate` events/s.
    actual = len(records) * 1000 / (max(offsets) + 1)
    offsets = [int(o * actual / rate) for o in offsets]
    return Template(kinds, records, offsets, max(offsets) + 1)


def busiest_campaign(shape: Shape) -> str:
    """The campaign with the most impressions (the generator weights campaigns; same seed, same
    weights whatever the rate or size of the template)."""
    tpl = make_template(shape, 5_000, 1_000.0)
    counts: dict[str, int] = {}
    for kind, rec in zip(tpl.kinds, tpl.records, strict=True):
        if kind == "impressions":
            counts[rec["campaign_id"]] = counts.get(rec["campaign_id"], 0) + 1
    return max(counts, key=counts.__getitem__)


def copy_message(t: Template, i: int, k: int, ts_ms: int) -> tuple[str, bytes, bytes]:
    """Message i of copy k, stamped ts_ms."""
    rec = dict(t.records[i])
    pre = f"{k & 0xFFFF:04x}"
    iid = pre + rec["impression_id"][4:]
    rec["impression_id"] = iid
    if "click_id" in rec:
        rec["click_id"] = pre + rec["click_id"][4:]
    rec["event_timestamp"] = ts_ms
    return t.kinds[i], iid.encode(), orjson.dumps(rec)


def stream(t: Template, n: int, base_ms: int) -> Iterator[tuple[str, bytes, bytes]]:
    size = len(t.records)
    for j in range(n):
        k, i = divmod(j, size)
        yield copy_message(t, i, k, base_ms + k * t.span_ms + t.offsets_ms[i])


@dataclass(frozen=True)
class Injection:
    campaign: str
    from_ms: float  # wall clock = event time
    to_ms: float
    extra_click_p: float

    @classmethod
    def parse(cls, text: str) -> Injection:
        campaign, lo, hi, p = text.split(":")
        return cls(campaign, float(lo), float(hi), float(p))


def settings_for(bootstrap: str, prefix: str, partitions: int) -> Settings:
    return Settings(kafka_bootstrap_servers=bootstrap, topic_prefix=prefix, topic_partitions=partitions)


async def create_topics(bootstrap: str, prefix: str, partitions: int = 3) -> None:
    """Every mesh topic under the prefix (as the services would create them)."""
    s = settings_for(bootstrap, prefix, partitions)
    await ensure_topics(s, topic_names(s).all())


async def preload(
    bootstrap: str,
    prefix: str,
    n: int,
    shape: Shape,
    rate: float,
    partitions: int = 3,
    template_size: int = 100_000,
) -> dict:
    """Send n messages as fast as possible; event time ends about now. Returns counts and timing."""
    s = settings_for(bootstrap, prefix, partitions)
    names = topic_names(s)
    topic = {"impressions": names.impressions, "clicks": names.clicks}
    t0 = time.perf_counter()
    tpl = make_template(shape, min(n, template_size), rate)
    gen_s = time.perf_counter() - t0
    copies = -(-n // len(tpl.records))
    base_ms = int(time.time() * 1000) - copies * tpl.span_ms - 5_000  # ends ~5 s ago
    await ensure_topics(s, names.all())
    producer = make_producer(s)
    await producer.start()
    by_kind = {"impressions": 0, "clicks": 0}
    nbytes = 0
    try:
        t1 = time.perf_counter()
        deliveries = Deliveries()
        sender = BatchSender(producer, deliveries)
        for kind, key, value in stream(tpl, n, base_ms):
            await sender.send(topic[kind], key, value)
            by_kind[kind] += 1
            nbytes += len(value)
        await sender.flush()
        await producer.flush()
        await deliveries.wait_all()
        send_s = time.perf_counter() - t1
    finally:
        await producer.stop()
    return {
        "prefix": prefix,
        "events": n,
        "by_kind": by_kind,
        "mean_value_bytes": round(nbytes / max(n, 1), 1),
        "template_messages": len(tpl.records),
        "template_generate_s": round(gen_s, 2),
        "send_s": round(send_s, 2),
        "send_events_per_s": round(n / send_s),
        "event_time_span_s": round(copies * tpl.span_ms / 1000, 1),
        "event_time_start_ms": base_ms,
        "campaigns": shape.campaigns * shape.scale,
        "users": shape.users * shape.scale,
    }


async def live(
    bootstrap: str,
    prefix: str,
    rate: float,
    seconds: float,
    shape: Shape,
    partitions: int = 3,
    tick_s: float = 0.02,
    inject: Injection | None = None,
) -> dict:
    """Send `rate` events/s for `seconds`, each stamped with the wall clock at which it is sent
    (within one tick), as the generator's --live mode does, but cheap per message.
    `inject`: extra clicks for one campaign's impressions in a wall-clock span (a CTR anomaly)."""
    s = settings_for(bootstrap, prefix, partitions)
    names = topic_names(s)
    topic = {"impressions": names.impressions, "clicks": names.clicks}
    tpl = make_template(shape, max(20_000, min(200_000, int(rate * 20))), rate)
    await ensure_topics(s, names.all())
    producer = make_producer(s)
    await producer.start()
    size = len(tpl.records)
    scale = tpl.events_per_s / rate  # template ms per wall ms (~1: the template is made at `rate`)
    sent = extra = 0
    lag_max = 0.0
    rng = random.Random(7)
    try:
        deliveries = Deliveries()
        sender = BatchSender(producer, deliveries)
        wall0_ms = time.time() * 1000
        end_ms = wall0_ms + seconds * 1000
        j = 0
        while True:
            now_ms = time.time() * 1000
            if now_ms >= end_ms:
                break
            # send everything due by now: message j is due at wall0 + its template time / scale
            while True:
                k, i = divmod(j, size)
                due_ms = wall0_ms + (k * tpl.span_ms + tpl.offsets_ms[i]) * scale
                if due_ms > now_ms:
                    break
                kind, key, value = copy_message(tpl, i, k, int(due_ms))
                await sender.send(topic[kind], key, value)
                if (
                    inject is not None
                    and kind == "impressions"
                    and inject.from_ms <= due_ms < inject.to_ms
                    and tpl.records[i]["campaign_id"] == inject.campaign
                    and rng.random() < inject.extra_click_p
                ):
                    click = {
                        "click_id": f"{rng.getrandbits(64):016x}",
                        "impression_id": key.decode(),
                        "user_id": tpl.records[i]["user_id"],
                        "event_timestamp": int(due_ms),
                    }
                    await sender.send(topic["clicks"], key, orjson.dumps(click))
                    extra += 1
                lag_max = max(lag_max, now_ms - due_ms)
                j += 1
            await sender.flush()
            sent = j
            await asyncio.sleep(max(0.0, tick_s - (time.time() * 1000 - now_ms) / 1000))
        await sender.flush()
        await producer.flush()
        await deliveries.wait_all()
    finally:
        await producer.stop()
    return {
        "sent": sent,
        "seconds": seconds,
        "offered_rate": rate,
        "achieved_rate": round(sent / seconds),
        "max_send_delay_ms": round(lag_max, 1),
        "injected_clicks": extra,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.traffic")
    p.add_argument("mode", choices=("preload", "live"))
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--rate", type=float, default=2_000.0, help="events/s (event time; live: wall clock)")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--scale", type=int, default=1)
    p.add_argument("--inject", help="live: CAMPAIGN:FROM_MS:TO_MS:P extra clicks (epoch ms, probability)")
    p.add_argument("--partitions", type=int, default=int(os.environ.get("TOPIC_PARTITIONS", "3")))
    a = p.parse_args(argv)
    shape = Shape(scale=a.scale)
    if a.mode == "preload":
        out = asyncio.run(preload(a.bootstrap, a.prefix, a.events, shape, a.rate, a.partitions))
    else:
        inject = Injection.parse(a.inject) if a.inject else None
        out = asyncio.run(live(a.bootstrap, a.prefix, a.rate, a.seconds, shape, a.partitions, inject=inject))
    sys.stdout.write(orjson.dumps(out).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
