"""Engagement end to end: generated streams → real Kafka → ingest → engagement → warehouse → chDB,
every fact table (device, user, item, experiment, readout) equal to an independent oracle
(tests/engagement_oracle.py) and the readout to a reference computation written here.

One mesh, four streams sent one after another and far apart in event time, so each is checked on
its own (each format alone, then all three together) while the mesh starts once: impressions +
clicks, ad-events, clickstream, and the joint stream, during which engagement is killed with -9 and
restarted. After each stream the tables must equal the union of the oracles so far.
"""

from __future__ import annotations

import asyncio
import math
import signal
import time
from statistics import NormalDist
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from services.generator.spec import Experiment, TrafficSpec
from services.generator.traffic import TrafficGenerator
from tests.engagement_oracle import Expected, expected, merge
from tests.mesh_harness import Mesh, wait_for
from tests.oracle import Sent

pytestmark = pytest.mark.integration

WINDOW_MS, DELAY_MS, LATENESS_MS = 10_000, 3_000, 30_000
SETTINGS = {
    "WINDOW_SIZE_MS": WINDOW_MS,
    "WATERMARK_DELAY_MS": DELAY_MS,
    "ALLOWED_LATENESS_MS": LATENESS_MS,
    "IDLE_FLUSH_TIMEOUT_MS": 3_000,
    "JOIN_WINDOW_MS": 20_000,
}
TOPIC_OF = {
    "impressions": "ad-impressions",
    "clicks": "ad-clicks",
    "ad_events": "ad-events",
    "clickstream": "clickstream",
}
DEFECTS = {"ooo_fraction": 0.05, "late_fraction": 0.01, "malformed_fraction": 0.02}
AD_DEFECTS = {"dup_fraction": 0.03, "click_first_fraction": 0.1, "orphan_fraction": 0.03}


async def produce(mesh: Mesh, messages: list[tuple[str, bytes, bytes]]) -> list[Sent]:
    producer = AIOKafkaProducer(
        bootstrap_servers=mesh.bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    await producer.start()
    try:
        futures = [await producer.send(mesh.topic(TOPIC_OF[k]), value, key=key) for k, key, value in messages]
        metas = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [
        Sent(kind, value, f"{meta.topic}:{meta.partition}:{meta.offset}")
        for (kind, _, value), meta in zip(messages, metas, strict=True)
    ]


def ms(column: str) -> str:
    return f"toUnixTimestamp64Milli({column})"


def observed(mesh: Mesh) -> dict[str, Any]:
    def rows(sql: str, keys: int) -> dict[tuple[Any, ...], tuple[Any, ...]]:
        return {tuple(r[:keys]): tuple(r[keys:]) for r in mesh.query(sql)}

    return {
        "device": rows(
            f"SELECT device_type, {ms('window_start')}, impressions, clicks, ctr, unique_users, conversions"
            " FROM fct_device_engagement FINAL",
            2,
        ),
        "user": rows(
            f"SELECT user_id, {ms('window_start')}, views, clicks, purchases, sessions, {ms('first_seen')},"
            f" {ms('last_seen')} FROM fct_user FINAL",
            2,
        ),
        "item": rows(
            f"SELECT item_id, {ms('window_start')}, views, clicks, add_to_carts, purchases, conversion_rate"
            " FROM fct_item FINAL",
            2,
        ),
        "experiment": rows(
            f"SELECT experiment, variation, {ms('window_start')}, users, conversions, conversion_rate"
            " FROM fct_experiment FINAL",
            3,
        ),
        "late": {
            r[0] for r in mesh.query("SELECT source FROM fct_late_event FINAL WHERE stage = 'engagement'")
        },
    }


def wanted(exp: Expected) -> dict[str, Any]:
    return {
        "device": exp.device_rows(),
        "user": exp.user_rows(),
        "item": exp.item_rows(),
        "experiment": exp.experiment_rows(),
        "late": exp.late,
    }


def differences(got: dict[str, Any], want: dict[str, Any]) -> dict[str, Any]:
    """Per table: how many rows differ, and a few of them (a readable failure)."""
    out = {}
    for name, w in want.items():
        g = got[name]
        if g == w:
            continue
        if isinstance(w, set):
            out[name] = {"missing": sorted(w - g)[:3], "extra": sorted(g - w)[:3]}
        else:
            keys = sorted(k for k in set(g) | set(w) if g.get(k) != w.get(k))
            out[name] = {"rows": len(keys), "e.g.": [(k, g.get(k), w.get(k)) for k in keys[:3]]}
    return out


# --- the readout, computed here from the arms' counts -------------------------------------------

Z975 = NormalDist().inv_cdf(0.975)


def reference_readout(arms: dict[str, tuple[int, int]]) -> dict[str, dict[str, Any]]:
    """Pooled two-proportion z-test vs "control" with the unpooled Wald 95% interval, and a
    chi-square sample-ratio check against an equal split (two arms: 1 degree of freedom)."""
    assert sorted(arms) == ["control", "treatment"]
    users = [n for n, _ in arms.values()]
    expected_users = sum(users) / 2
    chi2 = sum((n - expected_users) ** 2 / expected_users for n in users)
    n1, x1 = arms["control"]
    out = {}
    for variation, (n2, x2) in arms.items():
        row = {"users": n2, "conversions": x2, "conversion_rate": x2 / n2, "control_users": n1}
        row |= {"control_conversions": x1, "srm_chi2": chi2, "srm_p_value": math.erfc(math.sqrt(chi2 / 2))}
        if variation == "control":
            row |= {
                "z": 0.0,
                "p_value": 1.0,
                "lift_abs": 0.0,
                "lift_rel": None,
                "ci_low": 0.0,
                "ci_high": 0.0,
            }
        else:
            p1, p2 = x1 / n1, x2 / n2
            pooled = (x1 + x2) / (n1 + n2)
            z = (p2 - p1) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
            half = Z975 * math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
            row |= {"z": z, "p_value": math.erfc(abs(z) / math.sqrt(2)), "lift_abs": p2 - p1}
            row |= {"lift_rel": (p2 - p1) / p1, "ci_low": p2 - p1 - half, "ci_high": p2 - p1 + half}
        out[variation] = row
    return out


READOUT_COLUMNS = (
    "users",
    "conversions",
    "conversion_rate",
    "control_users",
    "control_conversions",
    "z",
    "p_value",
    "lift_abs",
    "lift_rel",
    "ci_low",
    "ci_high",
    "srm_chi2",
    "srm_p_value",
)


def check_readouts(mesh: Mesh, exp: Expected) -> None:
    rows = mesh.query(
        f"SELECT experiment, variation, {ms('as_of')}, version, {', '.join(READOUT_COLUMNS)}"
        " FROM fct_experiment_readout FINAL"
    )
    got: dict[str, dict[str, dict[str, Any]]] = {}
    for experiment, variation, as_of, version, *values in rows:
        got.setdefault(experiment, {})[variation] = dict(zip(READOUT_COLUMNS, values, strict=True))
        last_window = max(w for (e, _, w) in exp.experiment if e == experiment and w is not None)
        assert as_of >= last_window + WINDOW_MS and version > 0
    assert sorted(got) == sorted(exp.arms())
    for experiment, arms in exp.arms().items():
        ref = reference_readout(arms)
        assert sorted(got[experiment]) == sorted(ref)
        for variation, want in ref.items():
            have = got[experiment][variation]
            for column, value in want.items():
                close = (
                    have[column] is None if value is None else have[column] == pytest.approx(value, rel=1e-9)
                )
                assert close, (experiment, variation, column, have[column], value)


# --- the test -----------------------------------------------------------------------------------


def stream(start_ms: int, seed: int, **spec: Any) -> tuple[TrafficSpec, list[tuple[str, bytes, bytes]]]:
    s = TrafficSpec(seed=seed, start_ms=start_ms, rate=25.0, users=250, items=60, **DEFECTS, **spec)
    return s, [(m.topic_kind, m.key, m.value) for m in TrafficGenerator(s)]


def send_killing_engagement_midway(mesh: Mesh, spec: TrafficSpec, messages: list[Any]) -> list[Sent]:
    """First half; kill -9 engagement as soon as this stream's first windows reach the warehouse
    (it is then mid-stream); second half; restart it."""
    half = len(messages) // 2
    sent = asyncio.run(produce(mesh, messages[:half]))
    sql = f"SELECT count() FROM fct_user WHERE {ms('window_start')} >= {spec.start_ms}"
    mesh.wait_for(lambda: mesh.scalar(sql) > 0, 60, "the stream's first windows", interval=0.2)
    mesh.stop("engagement", signal.SIGKILL)
    sent += asyncio.run(produce(mesh, messages[half:]))
    mesh.start("engagement")
    return sent


def send_late_part_once_windows_close(mesh: Mesh, spec: TrafficSpec, messages: list[Any]) -> list[Sent]:
    """The mesh's first stream: its first 80%, then, once that part's first windows are in
    ClickHouse (the watermark is known downstream), the rest, which holds the far too late events
    (the generator sends them only in the last 20%). Until every upstream partition has been heard
    the watermark is unknown and an event is counted however late; on a loaded machine ingest
    once read this whole stream in one batch, and told the join of the sources' progress only
    after it: its late events were counted. Later streams meet a watermark already known."""
    cut = len(messages) * 4 // 5
    sent = asyncio.run(produce(mesh, messages[:cut]))
    assert not oracle(sent, spec).late, "the generator put a late event before the cut"
    since = f"{ms('window_start')} >= {spec.start_ms}"
    mesh.wait_for(
        lambda: (
            mesh.scalar(f"SELECT count() FROM fct_user WHERE {since}") > 0
            and mesh.scalar(f"SELECT count() FROM fct_campaign_ctr WHERE {since}") > 0
        ),
        60,
        "the first stream's first windows",
        interval=0.2,
    )
    return sent + asyncio.run(produce(mesh, messages[cut:]))


def oracle(sent: list[Sent], spec: TrafficSpec) -> Expected:
    return expected(
        sent,
        window_ms=WINDOW_MS,
        lateness_ms=LATENESS_MS,
        delay_ms=DELAY_MS,
        stream_start_ms=spec.start_ms,
        now_ms=int(time.time() * 1000),
    )


def wait_for_oracle(mesh: Mesh, total: Expected, what: str) -> None:
    want = wanted(total)
    try:
        wait_for(lambda: observed(mesh) == want, 120, what, interval=1.0)
    except TimeoutError:
        pytest.fail(
            f"{what}: facts differ from the oracle: {differences(observed(mesh), want)}\n{mesh.diagnostics()}"
        )
    # readouts travel with the experiment windows, possibly in a later warehouse batch
    mesh.wait_for(lambda: check_readouts(mesh, total) is None, 30, f"{what}: readouts", interval=0.5)


def test_engagement_facts_equal_the_oracle_per_format_joint_and_across_a_kill_9(mesh_factory):
    mesh = mesh_factory(**SETTINGS)
    t0 = time.monotonic()
    mesh.start("ingest", "ctr", "warehouse", "engagement")
    timings = {"start": round(time.monotonic() - t0, 1)}
    base = (int(time.time()) - 3_600) * 1000  # every stream inside the last hour, 10 min apart
    cs_experiment, joint_experiment = (
        Experiment("exp-clickstream", lift=0.5),
        Experiment("exp-joint", lift=0.3),
    )
    streams = {
        "impressions": stream(
            base, 41, n_events=1_200, formats=("impressions",), click_ratio=0.1, **AD_DEFECTS
        ),
        "ad_events": stream(base + 600_000, 42, n_events=1_200, formats=("ad_events",), click_ratio=0.15),
        "clickstream": stream(
            base + 1_200_000, 43, n_events=1_500, formats=("clickstream",), experiments=(cs_experiment,)
        ),
        "joint (kill -9)": stream(
            base + 1_800_000,
            44,
            n_events=2_400,
            formats=("impressions", "ad_events", "clickstream"),
            click_ratio=0.1,
            experiments=(joint_experiment,),
            **AD_DEFECTS,
        ),
    }
    total = Expected()
    for name, (spec, messages) in streams.items():
        t = time.monotonic()
        if name.startswith("joint"):
            sent = send_killing_engagement_midway(mesh, spec, messages)
        elif not total.counted:
            sent = send_late_part_once_windows_close(mesh, spec, messages)
        else:
            sent = asyncio.run(produce(mesh, messages))
        exp = oracle(sent, spec)
        assert exp.late and exp.counted > len(sent) / 2
        merge(total, exp)
        wait_for_oracle(mesh, total, f"after the {name} stream")
        timings[name] = round(time.monotonic() - t, 1)
        print(f"{name}: {timings[name]}s", flush=True)
    time.sleep(1.0)  # anything beyond the oracle would be a double count: give it a moment to show
    assert differences(observed(mesh), wanted(total)) == {}
    check_readouts(mesh, total)
    status, body = mesh.services["engagement"].get_json("/engagement/experiments")
    served = {e: {v: (r["users"], r["conversions"]) for v, r in arms.items()} for e, arms in body.items()}
    assert status == 200 and served == total.arms()
    print(f"\nseconds: {timings}; {total.counted} events counted")
    # the streams exercised what distinct counts are about
    assert len(total.device_rows()) > 20 and len(total.experiment_rows()) > 20
    assert any(sessions > 1 for *_, sessions, _, _ in total.user_rows().values())
    assert any(users < imp for imp, _, _, users, _ in total.device_rows().values())
    assert mesh.errors_in_logs() == {}
