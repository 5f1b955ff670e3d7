"""The traffic generator: determinism, formats, defect placement and labels, anomaly injection.

The checks re-derive every property from the message bytes and order alone (own parsers and
clock), so they do not trust the generator's internals.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import statistics
import uuid
from collections import Counter, defaultdict
from datetime import datetime
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from services.generator import cli
from services.generator.spec import (
    COUNTED_LABELS,
    TRUTH_LABELS,
    Experiment,
    GeneratedMessage,
    Injection,
    TrafficSpec,
)
from services.generator.traffic import TrafficGenerator, generate, generate_with_truth
from shared.kafka_batches import murmur2, murmur2_python
from shared.settings import Settings

START = 1_700_000_000_000
MIN_TS = 946_684_800_000
FIELDS = {
    "impressions": (
        "impression_id",
        "user_id",
        "campaign_id",
        "ad_id",
        "device_type",
        "browser",
        "event_timestamp",
        "cost",
    ),
    "clicks": ("click_id", "impression_id", "user_id", "event_timestamp"),
    "ad_events": (
        "user_id",
        "page_id",
        "ad_id",
        "campaign_id",
        "ad_type",
        "event_type",
        "event_time_ns",
        "window_id",
        "ip_address",
    ),
    "clickstream": (
        "user_id",
        "item_id",
        "interaction_type",
        "timestamp",
        "experiment_name",
        "experiment_variation",
        "session_id",
        "device_name",
    ),
}
ALL_FORMATS = ("impressions", "ad_events", "clickstream")
DEFECTS = {
    "dup_fraction": 0.04,
    "ooo_fraction": 0.05,
    "click_first_fraction": 0.1,
    "orphan_fraction": 0.05,
    "late_fraction": 0.03,
    "malformed_fraction": 0.03,
}


def spec(**kw: Any) -> TrafficSpec:
    base: dict[str, Any] = {"n_events": 20_000, "seed": 42, "start_ms": START, "click_ratio": 0.08}
    return TrafficSpec(**{**base, **kw})


@pytest.fixture(scope="module")
def dirty() -> list[GeneratedMessage]:
    return generate(spec(formats=ALL_FORMATS, **DEFECTS))


# --- an independent strict reader of the four formats ---------------------------------------


def event_ms(kind: str, o: dict[str, Any]) -> int:
    if kind in ("impressions", "clicks"):
        return o["event_timestamp"]
    if kind == "ad_events":
        return o["event_time_ns"] // 1_000_000
    ts = o["timestamp"]
    return ts if isinstance(ts, int) else int(datetime.fromisoformat(ts).timestamp() * 1000 + 0.5)


def strict(kind: str, raw: bytes) -> dict[str, Any] | None:
    """The decoded object if it is a well-formed message of its kind, else None."""
    try:
        o = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(o, dict) or tuple(o) != FIELDS[kind]:
        return None
    for f, v in o.items():
        if f in ("event_timestamp", "event_time_ns", "window_id"):
            if type(v) is not int or v <= 0:
                return None
        elif f == "cost":
            if type(v) is not float or not math.isfinite(v) or v < 0:
                return None
        elif f == "timestamp":
            if type(v) is int:
                if v <= 0:
                    return None
            elif type(v) is not str or datetime.fromisoformat(v).tzinfo is None:
                return None
        elif type(v) is not str or not v.strip():
            return None
    ts = event_ms(kind, o)
    lo = MIN_TS * (1_000_000 if kind == "ad_events" else 1)
    raw_ts = o.get("event_time_ns", ts)
    return o if ts >= MIN_TS and raw_ts >= lo else None


def decoded(msgs: list[GeneratedMessage]) -> list[tuple[GeneratedMessage, dict[str, Any] | None]]:
    return [(m, strict(m.topic_kind, m.value)) for m in msgs]


# --- determinism and formats ------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    s = spec(n_events=3000, formats=ALL_FORMATS, arrival="bursty", **DEFECTS)
    a, b = generate(s), generate(s)
    assert a == b
    assert [m.value for m in generate(spec(n_events=3000, seed=43))] != [m.value for m in a[:3000]]


def test_formats_have_exactly_the_listed_fields(dirty: list[GeneratedMessage]) -> None:
    kinds = Counter()
    for m, o in decoded(dirty):
        if m.truth != "malformed":
            assert o is not None, m
            kinds[m.topic_kind] += 1
            assert (
                m.key
                == (
                    o["impression_id"] if m.topic_kind in ("impressions", "clicks") else o["user_id"]
                ).encode()
            )
    assert set(kinds) == set(FIELDS)


def test_timestamps_ns_for_ad_events_and_mixed_ms_iso_for_clickstream(dirty: list[GeneratedMessage]) -> None:
    styles = Counter()
    for m, o in decoded(dirty):
        if o is None or m.truth == "late":
            continue
        if m.topic_kind == "ad_events":
            assert o["event_time_ns"] >= (START - 2000) * 1_000_000  # out-of-order: up to 2 s back
            assert o["window_id"] == event_ms("ad_events", o) // 60_000 * 60_000
            assert o["event_type"] in ("view", "click", "purchase")
        if m.topic_kind == "clickstream":
            ts = o["timestamp"]
            styles["ms" if isinstance(ts, int) else "Z" if ts.endswith("Z") else "offset"] += 1
            assert o["interaction_type"] in ("view", "click", "add_to_cart", "purchase")
            assert event_ms("clickstream", o) >= START - 2000
    assert min(styles.values()) > 100 and len(styles) == 3, styles


def test_realistic_mixes() -> None:
    msgs = decoded(generate(spec(n_events=30_000, click_ratio=0.045)))
    imps = [o for m, o in msgs if m.topic_kind == "impressions"]
    devices = Counter(o["device_type"] for o in imps)
    browsers = Counter(o["browser"] for o in imps)
    assert set(devices) == {"mobile", "desktop", "tablet", "ctv"} and devices.most_common(1)[0][0] == "mobile"
    assert set(browsers) == {"chrome", "safari", "firefox", "edge", "other"}
    clicked = {o["impression_id"] for m, o in msgs if m.topic_kind == "clicks"}
    by_campaign: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    cpm: dict[str, list[float]] = defaultdict(list)
    for o in imps:
        by_campaign[o["campaign_id"]][0] += 1
        by_campaign[o["campaign_id"]][1] += o["impression_id"] in clicked
        cpm[o["campaign_id"]].append(o["cost"] * 1000)
    ctrs = [c / n for n, c in by_campaign.values()]
    assert min(ctrs) > 0.005 and max(ctrs) < 0.1 and max(ctrs) > 2 * min(ctrs), ctrs
    assert all(0.3 <= statistics.mean(v) <= 5.5 for v in cpm.values())


def test_clickstream_zipf_sessions_and_experiment_lift() -> None:
    exp = Experiment("new-ranking", lift=1.0, treatment_share=0.3)
    msgs = decoded(generate(spec(n_events=60_000, formats=("clickstream",), experiments=(exp,))))
    rows = [o for _, o in msgs]
    views = Counter(o["item_id"] for o in rows if o["interaction_type"] == "view")
    top = [c for _, c in views.most_common()]
    assert top[0] > 10 * top[100]  # Zipf: the head item dwarfs the 100th
    sessions = Counter(o["session_id"] for o in rows)
    assert 3 < statistics.mean(sessions.values()) < 15
    assert len({(o["session_id"], o["user_id"]) for o in rows}) == len(sessions)  # one user per session
    arms: dict[str, Counter] = defaultdict(Counter)
    for o in rows:
        assert o["experiment_name"] == "new-ranking"
        arms[o["experiment_variation"]][o["interaction_type"]] += 1
    assert set(arms) == {"control", "treatment"}
    share = arms["treatment"]["view"] / (arms["treatment"]["view"] + arms["control"]["view"])
    assert 0.25 < share < 0.35
    rate = {v: c["purchase"] / c["view"] for v, c in arms.items()}
    assert 1.6 < rate["treatment"] / rate["control"] < 2.5, rate


@pytest.mark.parametrize("arrival", ["poisson", "bursty"])
def test_arrival_rate_and_burstiness(arrival: str) -> None:
    msgs = generate(spec(n_events=30_000, rate=100.0, click_ratio=0, arrival=arrival))
    secs = Counter((m.at_ms - START) // 1000 for m in msgs)
    counts = [secs.get(s, 0) for s in range(max(secs))]
    mean = statistics.mean(counts)
    assert 85 < mean < 115
    dispersion = statistics.variance(counts) / mean  # 1 for Poisson
    assert (0.8 < dispersion < 1.25) if arrival == "poisson" else dispersion > 5


# --- defects: labels, fractions, placement --------------------------------------------------------


def test_clean_traffic_is_all_valid_and_in_order() -> None:
    msgs = generate(spec(formats=ALL_FORMATS))
    assert {m.truth for m in msgs} == {"valid"}
    times = [event_ms(m.topic_kind, o) for m, o in decoded(msgs)]  # type: ignore[arg-type]
    assert times == sorted(times)


def test_every_label_appears_and_fractions_are_roughly_honoured(dirty: list[GeneratedMessage]) -> None:
    n = Counter(m.truth for m in dirty)
    assert set(n) == set(TRUTH_LABELS)
    counted = sum(n[label] for label in COUNTED_LABELS)
    counted_kind = Counter(m.topic_kind for m in dirty if m.truth in COUNTED_LABELS)
    clicks = counted_kind["clicks"]

    def near(got: float, want: float) -> bool:
        return abs(got - want) <= 0.25 * want

    assert near(n["duplicate"] / (counted_kind["impressions"] + clicks), DEFECTS["dup_fraction"])
    assert near(n["malformed"] / counted, DEFECTS["malformed_fraction"])
    assert near(n["late"] / counted, DEFECTS["late_fraction"])
    assert near(n["click_first"] / clicks, DEFECTS["click_first_fraction"])
    assert near(n["orphan"] / clicks, DEFECTS["orphan_fraction"])
    # the impression sent after its click is out of order too
    assert near((n["out_of_order"] - n["click_first"]) / counted, DEFECTS["ooo_fraction"])


def test_event_time_order_out_of_order_bound_and_late(dirty: list[GeneratedMessage]) -> None:
    clock = -1
    for i, (m, o) in enumerate(decoded(dirty)):
        if m.truth == "malformed":
            assert o is None, m
            continue
        assert o is not None
        ts = event_ms(m.topic_kind, o)
        if m.truth in COUNTED_LABELS:
            if m.truth == "out_of_order":
                assert 0 < clock - ts < 2000
            else:
                assert ts >= clock, m
            clock = max(clock, ts)
            assert m.at_ms == clock
        elif m.truth == "late":
            assert ts <= START - 2 * 3_600_000
            assert i >= 0.8 * len(dirty)
        elif m.truth == "orphan":
            assert ts == clock


def test_duplicates_repeat_earlier_counted_bytes(dirty: list[GeneratedMessage]) -> None:
    seen: set[tuple[str, bytes, bytes]] = set()
    for m in dirty:
        ident = (m.topic_kind, m.key, m.value)
        if m.truth == "duplicate":
            assert ident in seen and m.topic_kind in ("impressions", "clicks")
        elif m.truth in COUNTED_LABELS:
            assert ident not in seen
            seen.add(ident)


def test_clicks_first_orphans_and_joins(dirty: list[GeneratedMessage]) -> None:
    imp_pos: dict[str, int] = {}
    imp_ts: dict[str, int] = {}
    for i, (m, o) in enumerate(decoded(dirty)):
        if m.topic_kind == "impressions" and o is not None:
            imp_pos.setdefault(o["impression_id"], i)
            imp_ts[o["impression_id"]] = o["event_timestamp"]
    firsts = 0
    for i, (m, o) in enumerate(decoded(dirty)):
        if m.topic_kind != "clicks" or o is None:
            continue
        imp = o["impression_id"]
        if m.truth == "orphan":
            assert imp not in imp_pos
        elif m.truth == "click_first":
            firsts += 1
            assert 0 < imp_pos[imp] - i <= 50
            assert o["event_timestamp"] > imp_ts[imp]
        elif m.truth in COUNTED_LABELS:
            assert imp_pos[imp] < i and o["event_timestamp"] > imp_ts[imp]
    assert firsts > 20


def test_malformed_are_malformed_and_varied(dirty: list[GeneratedMessage]) -> None:
    reasons = Counter()
    for m in dirty:
        if m.truth != "malformed":
            continue
        assert strict(m.topic_kind, m.value) is None
        try:
            o = orjson.loads(m.value)
        except orjson.JSONDecodeError:
            reasons["json"] += 1
            continue
        reasons["missing" if tuple(o) != FIELDS[m.topic_kind] else "value"] += 1
    assert min(reasons.values()) > 20, reasons


def test_late_in_live_mode_waits_for_warmup() -> None:
    s = spec(n_events=None, late_fraction=0.05, rate=200.0)
    msgs = list(itertools.islice(TrafficGenerator(s), 40_000))
    late = [m for m in msgs if m.truth == "late"]
    assert late and min(m.at_ms for m in late) >= START + 60_000


def test_invalid_specs_are_refused() -> None:
    with pytest.raises(ValueError):
        spec(late_fraction=0.5)
    with pytest.raises(ValueError):
        spec(formats=("nope",))
    with pytest.raises(ValueError):
        spec(experiments=(Experiment("x", treatment="control"),))


# --- anomaly injection ----------------------------------------------------------------------------


def test_injections_change_what_they_say_and_are_reported() -> None:
    span = (START + 100_000, START + 300_000)
    injections = (
        Injection("ctr", "cmp-0001", *span, 4.0),
        Injection("traffic_drop", "cmp-0002", *span, 0.02),
        Injection("sales_spike", "item-000000", *span, 5.0),
    )
    s = spec(n_events=60_000, rate=100.0, click_ratio=0.04, formats=ALL_FORMATS)
    base = decoded(generate(s))
    hit, injected = generate_with_truth(TrafficSpec(**{**vars(s), "injections": injections}))
    hit_d = decoded(hit)
    assert [(r.kind, r.target, r.start_ms, r.end_ms, r.factor) for r in injected] == [
        (i.kind, i.target, i.start_ms, i.end_ms, i.factor) for i in injections
    ]
    assert all(r.events > 0 for r in injected)

    def stats(msgs: list[tuple[GeneratedMessage, Any]], inside: bool) -> Counter:
        c: Counter = Counter()
        clicked = {o["impression_id"] for m, o in msgs if m.topic_kind == "clicks"}
        for m, o in msgs:
            ts = event_ms(m.topic_kind, o)
            if (span[0] <= ts < span[1]) != inside:
                continue
            if m.topic_kind == "impressions":
                c[o["campaign_id"], "imp"] += 1
                c[o["campaign_id"], "click"] += o["impression_id"] in clicked
            elif m.topic_kind == "ad_events":
                c[o["campaign_id"], o["event_type"]] += 1
            elif m.topic_kind == "clickstream" and o["interaction_type"] == "purchase":
                c[o["item_id"], "purchase"] += 1
        return c

    b, h, h_out = stats(base, True), stats(hit_d, True), stats(hit_d, False)

    def ctr(c: Counter) -> float:
        return (c["cmp-0001", "click"]) / (c["cmp-0001", "imp"] + c["cmp-0001", "view"])

    assert 2.5 < ctr(h) / ctr(b) < 6
    assert h["cmp-0002", "imp"] + h["cmp-0002", "view"] < 0.1 * (b["cmp-0002", "imp"] + b["cmp-0002", "view"])
    assert h_out["cmp-0002", "imp"] > 100  # only inside the span
    assert h["item-000000", "purchase"] > 3 * b["item-000000", "purchase"]
    assert injected[2].events == h["item-000000", "purchase"]


# --- CLI and Kafka --------------------------------------------------------------------------------


def test_cli_spec_from_flags() -> None:
    args = ["--events", "100", "--seed", "3", "--formats", "impressions,clickstream"]
    a = cli.parse_args(
        [*args, "--late-fraction", "0.01", "--inject", "ctr:cmp-0003:60:120:0.25", "--start-ms", str(START)]
    )
    s = cli.build_spec(a, Settings())
    assert (s.n_events, s.seed, s.formats, s.late_fraction) == (100, 3, ("impressions", "clickstream"), 0.01)
    assert s.injections == (Injection("ctr", "cmp-0003", START + 60_000, START + 120_000, 0.25),)
    with pytest.raises(SystemExit):
        cli.parse_injection("ctr:cmp-1:a:b", START)


def test_fast_murmur2_matches_aiokafka() -> None:
    for n in range(40):
        for _ in range(50):
            key = os.urandom(n)
            expected = aiokafka_murmur2(key) & 0x7FFFFFFF
            assert murmur2(key) & 0x7FFFFFFF == expected
            assert murmur2_python(key) & 0x7FFFFFFF == expected


@pytest.mark.integration
def test_bounded_cli_produces_everything_in_order(kafka_bootstrap: str, tmp_path: Any) -> None:
    """Produce via the CLI, read everything back: same messages, per-partition send order kept."""
    from aiokafka import AIOKafkaConsumer

    prefix = f"gen-test-{uuid.uuid4().hex[:8]}-"
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=prefix)
    truth = tmp_path / "truth.jsonl"
    args = ["--events", "3000", "--seed", "5", "--formats", ",".join(ALL_FORMATS), "--dup-fraction", "0.05"]
    args += ["--malformed-fraction", "0.02", "--late-fraction", "0.02", "--truth-out", str(truth)]
    a = cli.parse_args(args)
    summary = asyncio.run(cli.bounded(a, settings))
    rows = [orjson.loads(line) for line in truth.read_bytes().splitlines()]
    assert summary["messages"] == len(rows) > 3000

    async def read_back() -> dict[tuple[str, int], list[bytes]]:
        topics = sorted({r["topic"] for r in rows})
        c = AIOKafkaConsumer(*topics, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
        await c.start()
        got: dict[tuple[str, int], list[bytes]] = defaultdict(list)
        try:
            while sum(map(len, got.values())) < len(rows):
                for tp, recs in (await c.getmany(timeout_ms=2000)).items():
                    got[tp.topic, tp.partition] += [r.value for r in recs]
        finally:
            await c.stop()
        return got

    got = asyncio.run(asyncio.wait_for(read_back(), 60))
    want: dict[tuple[str, int], list[bytes]] = defaultdict(list)
    for r in rows:
        p = (aiokafka_murmur2(r["key"].encode()) & 0x7FFFFFFF) % settings.topic_partitions
        want[r["topic"], p].append(r["value"].encode())
    assert dict(got) == dict(want)
