"""The mesh against its limits and its peer, in one run on the real local broker.

    bash bench/run.sh [--quick] [--bootstrap 127.0.0.1:9092] [--events N] [--soak-minutes M] ...
    (or: python -m bench.mesh_bench ..., with the project venv; the peer needs bench/.venv)

Phases (every figure lands in bench/out/mesh_bench-<stamp>.json, a chart next to it):
  preload   N impressions + clicks into a fresh topic prefix (plus smaller prefixes for the mesh,
            the scaling runs), before anything is measured;
  limits    L1 raw aiokafka + orjson, L2 = L1 + the CTR job in plain Python (bench/limits.py);
  peer      the same job with Quix Streams (bench/quix_peer.py, in bench/.venv);
  mesh      ingest, ctr, engagement (if present) and warehouse as faust workers on a pre-loaded
            backlog until every event is accounted for in ClickHouse: per-stage rates, lag over
            time, CPU and peak RSS per process;
  scaling   short mesh runs at 1x, 4x, 16x campaigns/ads/users: CPU cost per event (py-spy
            profiles the 1x run);
  live      the mesh under a paced live load (5 s windows) for --soak-minutes: window latency
            from "watermark passed the window end" to "row readable in ClickHouse", memory over
            time; then the peer's window-close latency under the same load.

All systems run one after the other in the same invocation, so their ratios hold even on a noisy
machine; CPU seconds per event (from /proc or getrusage) are reported next to every rate because
they depend far less on what else runs on the machine than events/s do.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from aiokafka.admin import AIOKafkaAdminClient

from bench import traffic
from bench.kafka_probe import OffsetProbe
from bench.mesh import MeshRun, PySpy, Sample, sustained_rate, time_to
from bench.procstat import ProcSeries
from bench.profile import summarize
from shared import compiled_modules

# A drained stage still shows a few messages of lag now and then: idle stages repeat their watermark
# markers every second (one per partition and source) and commit once a second, so "lag 0" may
# never be sampled. Backlogs here are thousands of messages; a few dozen are markers.
MARKER_LAG_SLACK = 64
ROOT = Path(__file__).resolve().parents[1]
BENCH_VENV = ROOT / "bench" / ".venv"
PCTS = (50, 95, 99)
WARMUP_SHARE = 0.2  # of a live run, before its memory is judged flat (2 min of a 10-min soak)
ANOMALY_WARMUP_WINDOWS = 6


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))
    return round(xs[k], 1)


def loadavg() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(hostport: str) -> bool:
    host, port = hostport.rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, int(port))) == 0


def git_info() -> dict:
    def git(*args: str) -> str:
        r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    dirty = [
        line[3:] for line in git("status", "--porcelain").splitlines() if not line[3:].startswith("bench/")
    ]
    commit = git("rev-parse", "--short", "HEAD") or os.environ.get("BENCH_GIT_COMMIT", "")
    return {"commit": commit, "dirty_files_outside_bench": dirty[:30]}


def machine() -> dict:
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "cpu": cpu,
        "python": platform.python_version(),
        "loadavg_at_start": loadavg(),
    }


# A broker holding this many topics from earlier runs (every test makes its own) slows the run.
CROWDED_BROKER_TOPICS = 500


async def broker_load(bootstrap: str) -> dict[str, int]:
    """Topics and partitions the broker holds at the start. One left with 2,296 topics (6,840
    partitions) by a run of the test suite made every system here 15-20% slower (L2 11.9 against
    10.0 µs per event, the mesh 233 against 193), through the broker's own upkeep of them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = await admin.list_topics()
        described = await admin.describe_topics(topics) if topics else []
    finally:
        await admin.close()
    return {"topics": len(topics), "partitions": sum(len(t.get("partitions", ())) for t in described)}


class Broker:
    """The given broker, or our own via deploy/kafka.sh on free ports (stopped at the end)."""

    def __init__(self, bootstrap: str | None, workdir: Path) -> None:
        self.bootstrap = bootstrap
        self.env: dict[str, str] | None = None
        self.workdir = workdir

    def start(self) -> str:
        if self.bootstrap:
            if not port_open(self.bootstrap):
                raise SystemExit(f"no broker answers at {self.bootstrap}")
            return self.bootstrap
        state = self.workdir / "kafka"
        self.env = {
            **os.environ,
            "KAFKA_PORT": str(free_port()),
            "KAFKA_CONTROLLER_PORT": str(free_port()),
            "KAFKA_STATE_DIR": str(state),
        }
        log(f"starting a broker on 127.0.0.1:{self.env['KAFKA_PORT']} (deploy/kafka.sh)")
        subprocess.run(["bash", str(ROOT / "deploy" / "kafka.sh"), "start"], env=self.env, check=True)
        self.bootstrap = f"127.0.0.1:{self.env['KAFKA_PORT']}"
        return self.bootstrap

    def stop(self) -> None:
        if self.env is not None:
            subprocess.run(["bash", str(ROOT / "deploy" / "kafka.sh"), "stop"], env=self.env, check=False)
            # the broker's log dirs hold every pre-loaded event (~1 GB for 5M)
            shutil.rmtree(self.env["KAFKA_STATE_DIR"], ignore_errors=True)


async def run_json(
    cmd: list[str], timeout: float, name: str, workdir: Path
) -> tuple[dict | None, ProcSeries]:
    """Run a subprocess that prints one JSON line; sample its CPU/RSS from /proc meanwhile."""
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        series = ProcSeries(name, proc.pid)
        out = b""

        async def read() -> bytes:
            return await proc.stdout.read()

        reader = asyncio.create_task(read())
        deadline = time.monotonic() + timeout
        while not reader.done():
            series.sample(time.monotonic())
            if time.monotonic() > deadline:
                proc.kill()
                break
            await asyncio.sleep(0.5)
        out = await reader
        await proc.wait()
    lines = [x for x in out.decode(errors="replace").splitlines() if x.startswith("{")]
    if not lines:
        log(f"{name}: no result (see {log_path})")
        return None, series
    return json.loads(lines[-1]), series


def rate_fields(res: dict) -> dict:
    """events/s and CPU per event of a limit/peer result."""
    if res.get("events") and res.get("cpu_s"):
        res["cpu_us_per_event"] = round(1e6 * res["cpu_s"] / res["events"], 1)
    return res


# --------------------------------------------------------------------------------------------
# mesh phases


async def mesh_backlog(
    a: argparse.Namespace,
    bootstrap: str,
    probe: OffsetProbe,
    prefix: str,
    events: int,
    name: str,
    overrides: dict[str, str],
    max_seconds: float,
    spy: PySpy | None = None,
) -> tuple[dict, MeshRun]:
    run = MeshRun(bootstrap, prefix, a.workdir / name, overrides, ROOT)
    result: dict[str, Any] = {"events": events, "services": []}
    try:
        await run.start()
        result["services"] = list(run.procs)
        result["startup_s"] = round(run.t_ready - run.started_at, 1)
        log(f"{name}: {', '.join(run.procs)} ready after {result['startup_s']} s; draining {events:,} events")
        spied = False
        i = last_accounted = 0
        drained_at = None
        done_at = None
        while True:
            s = await run.sample(probe, with_accounted=(i % 2 == 0))
            i += 1
            if s.accounted is not None:
                last_accounted = s.accounted
            if spy is not None and not spied and s.validate >= 0.05 * events:
                for pname in ("ingest", "ctr", "engagement", "warehouse"):
                    if pname in run.procs:
                        spy.start(pname, run.procs[pname].pid, a.profile_seconds)
                spied = True
            if i % 10 == 0:
                log(
                    f"{name}: t={s.t - run.t_ready:5.0f}s validate={s.validate:,} joined={s.joined:,} "
                    f"accounted={last_accounted:,} lag={s.lag}"
                )
            if done_at is None and s.accounted is not None and s.accounted >= events:
                done_at = s.t
            # CTR is accounted for; the other consumers of canonical-events (engagement) may still
            # be behind: wait until every stage has drained, within the cap
            if done_at is not None and all(v <= MARKER_LAG_SLACK for v in s.lag.values()):
                drained_at = s.t
                break
            if s.t - run.t_ready > max_seconds:
                log(f"{name}: not all drained after {max_seconds:.0f} s: stopping (partial figures)")
                break
            await asyncio.sleep(a.interval)
        canonical_total = await run.canonical_total(probe)
        result.update(analyse_backlog(run, events, canonical_total, done_at, drained_at))
        t_first = time_to(run.samples, lambda s: s.validate, 1)
        result["seconds_first_event_to_all_stages_drained"] = (
            round(drained_at - t_first, 1) if drained_at and t_first else None
        )
        result["errors_in_logs"] = run.logs_errors()
    finally:
        await run.stop()
    return result, run


def analyse_backlog(
    run: MeshRun, events: int, canonical_total: int, done_at: float | None, drained_at: float | None = None
) -> dict:
    smp = run.samples
    # canonical-events holds bundles and markers: its offsets count messages, not events
    per_message = events / canonical_total if canonical_total else 1.0
    est = lambda s: s.committed["ctr"] * per_message  # noqa: E731
    stage_rates = {
        "ingest.validate": sustained_rate(smp, lambda s: s.validate, events),
        "ingest.join": sustained_rate(smp, lambda s: s.joined, events),
        "ctr (estimated)": sustained_rate(smp, est, events),
        "clickhouse (accounted)": sustained_rate(smp, lambda s: s.accounted, events),
    }
    if "engagement.fan_out" in smp[-1].committed:
        est_e = lambda s: s.committed["engagement.fan_out"] * per_message  # noqa: E731
        stage_rates["engagement.fan_out (estimated)"] = sustained_rate(smp, est_e, events)
    t_first = time_to(smp, lambda s: s.validate, 1)
    end = done_at or smp[-1].t
    accounted = next((s.accounted for s in reversed(smp) if s.accounted is not None), 0) or 0
    # CPU until every stage drained (engagement may finish after CTR is accounted for)
    cpu_end = drained_at or smp[-1].t
    cpu = {name: p.summary(t_first or run.t_ready, cpu_end) for name, p in run.procs.items()}
    total_cpu = sum(c["cpu_s"] or 0 for c in cpu.values())
    e2e = accounted / (end - t_first) if t_first and end > t_first else None
    broker = run.broker.summary(t_first or run.t_ready, cpu_end) if run.broker is not None else None
    broker_cpu = broker["cpu_s"] if broker else None
    broker_us = round(1e6 * broker_cpu / accounted, 1) if accounted and broker_cpu else None
    return {
        "complete": done_at is not None,
        "accounted": accounted,
        "seconds_first_event_to_all_accounted": round(end - t_first, 1) if t_first else None,
        "end_to_end_events_per_s": round(e2e) if e2e else None,
        "sustained_events_per_s": {k: round(v) if v else None for k, v in stage_rates.items()},
        "canonical_events_per_message": round(per_message, 1),
        "processes": cpu,
        "cpu_s_total": round(total_cpu, 1),
        "cpu_us_per_event": round(1e6 * total_cpu / accounted, 1) if accounted else None,
        # The local broker over the same span (None when it is elsewhere or not visible): on a
        # broker started just before, its JIT compiler alone took ~7 s of a 45 s drain, so compare
        # this only between runs on a broker that has served the earlier phases (the default run).
        "broker_process": broker,
        "broker_cpu_us_per_event": broker_us,
        "peak_rss_mib_total": round(sum(c["peak_rss_mib"] or 0 for c in cpu.values()), 1),
        "lag_over_time": lag_series(run, smp),
        "loadavg_at_end": loadavg(),
    }


def lag_series(run: MeshRun, smp: list[Sample]) -> dict:
    return {
        "t_s": [round(s.t - run.t_ready, 1) for s in smp],
        "lag": {k: [s.lag.get(k) for s in smp] for k in smp[0].lag} if smp else {},
        "accounted": [s.accounted for s in smp],
    }


async def mesh_live(
    a: argparse.Namespace, bootstrap: str, probe: OffsetProbe, prefix: str, rate: float
) -> dict:
    """Paced live traffic for the soak duration: latency per closed window and memory over time."""
    window_ms, delay_ms = a.latency_window_ms, 3_000
    overrides = {
        "WINDOW_SIZE_MS": str(window_ms),
        "WATERMARK_DELAY_MS": str(delay_ms),
        "IDLE_FLUSH_TIMEOUT_MS": "10000",
    }
    seconds = a.soak_minutes * 60
    # anomaly -> Slack: a CTR anomaly injected after the detectors' warm-up, alerts to a fake Slack
    slack = None
    extra: tuple[str, ...] = ()
    inject_after_s = 10 + ANOMALY_WARMUP_WINDOWS * window_ms / 1000 + 15
    if "anomaly" not in a.skip and anomaly_slack_available() and seconds >= inject_after_s + 30:
        from tests.fake_slack import CHANNEL_ID, TEST_TOKEN, FakeSlack

        slack = await FakeSlack().start()
        extra = ("anomaly", "alerting")
        overrides.update(
            ANOMALY_WARMUP_WINDOWS=str(ANOMALY_WARMUP_WINDOWS),
            # live rates here are low: judge windows from 30 impressions on
            ANOMALY_MIN_IMPRESSIONS="30",
            SLACK_BOT_TOKEN=TEST_TOKEN,
            SLACK_CHANNEL=CHANNEL_ID,
            SLACK_BASE_URL=slack.base_url,
            ALERT_DELIVERY_POLL_SECONDS="0.5",
        )
    run = MeshRun(bootstrap, prefix, a.workdir / "mesh-live", overrides, ROOT, extra_services=extra)
    result: dict[str, Any] = {
        "offered_events_per_s": rate,
        "seconds": seconds,
        "window_ms": window_ms,
        "watermark_delay_ms": delay_ms,
    }
    seen: dict[tuple[str, int], float] = {}  # (campaign, window_start) -> wall ms first readable
    try:
        # topics first, so the mesh subscribes to existing topics
        await traffic.create_topics(bootstrap, prefix)
        await run.start()
        log(
            f"live: {', '.join(run.procs)} ready after {run.t_ready - run.started_at:.1f} s; "
            f"{rate:,.0f} events/s for {seconds:.0f} s"
        )
        inject_args: list[str] = []
        if slack is not None:
            lo = (int(time.time() * 1000 + inject_after_s * 1000) // window_ms + 1) * window_ms
            hi = lo + 3 * window_ms
            campaign = traffic.busiest_campaign(traffic.Shape())
            inject_args = ["--inject", f"{campaign}:{lo}:{hi}:0.3"]
            result["anomaly_injection"] = {
                "campaign": campaign,
                "from_ms": lo,
                "to_ms": hi,
                "extra_click_probability": 0.3,
            }
        producer = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.traffic",
            "live",
            "--bootstrap",
            bootstrap,
            "--prefix",
            prefix,
            "--rate",
            str(rate),
            "--seconds",
            str(seconds),
            *inject_args,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        gen = ProcSeries("live-producer", producer.pid)
        t_live0 = time.time() * 1000
        stop = asyncio.Event()

        async def poll() -> None:
            since = int(t_live0) - 2 * window_ms
            sql = (
                "SELECT campaign_id, toUnixTimestamp64Milli(window_start) FROM fct_campaign_ctr "
                f"WHERE window_start >= fromUnixTimestamp64Milli({since})"
            )
            while not stop.is_set():
                with contextlib.suppress(Exception):
                    rows = await run.query(sql)
                    now = time.time() * 1000
                    for c, ws in rows:
                        seen.setdefault((c, int(ws)), now)
                await asyncio.sleep(a.poll_interval)

        poller = asyncio.create_task(poll())
        i = 0
        while producer.returncode is None:
            s = await run.sample(probe, with_accounted=False)
            gen.sample(s.t)
            i += 1
            if i % 15 == 0:
                rss = {n: round(p.samples[-1][2]) for n, p in run.procs.items() if p.samples}
                log(f"live: t={s.t - run.t_ready:5.0f}s lag={s.lag} rss_mib={rss} windows_seen={len(seen)}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(producer.wait(), timeout=a.interval)
        out = await producer.stdout.read()
        result["producer"] = json.loads(out.decode().strip().splitlines()[-1]) if out.strip() else None
        t_live1 = time.time() * 1000
        # let the last windows close (watermark delay + pipeline), then read first-emit times
        await asyncio.sleep(delay_ms / 1000 + 5)
        stop.set()
        await poller
        rows = await run.query(
            "SELECT campaign_id, toUnixTimestamp64Milli(window_start), "
            "toUnixTimestamp64Milli(min(emitted_at)), "
            "toUnixTimestamp64Milli(min(updated_at)) FROM fct_campaign_ctr GROUP BY 1, 2"
        )
        readable, inserted, emitted = [], [], []
        warm = t_live0 + a.latency_warmup_s * 1000
        for c, ws, em, up in rows:
            due = int(ws) + window_ms + delay_ms  # watermark passes the window end (event time = wall clock)
            if due < warm or due > t_live1:
                continue
            emitted.append(int(em) - due)
            inserted.append(int(up) - due)
            if (c, int(ws)) in seen:
                readable.append(seen[(c, int(ws))] - due)
        result["latency_ms"] = {
            "samples": len(readable),
            "readable_in_clickhouse": {f"p{q}": percentile(readable, q) for q in PCTS},
            "inserted_in_clickhouse": {f"p{q}": percentile(inserted, q) for q in PCTS},
            "emitted_by_ctr": {f"p{q}": percentile(emitted, q) for q in PCTS},
            "readable_max": round(max(readable), 1) if readable else None,
            "poll_interval_ms": a.poll_interval * 1000,
        }
        t_end = run.samples[-1].t
        t0 = run.t_ready
        result["processes"] = {n: p.summary(t0, t_end) for n, p in run.procs.items()}
        result["producer_process"] = gen.summary()
        if run.broker is not None:
            result["broker_process"] = run.broker.summary(t0, t_end)
        result["memory_over_time"] = {
            n: [[x[0], x[2]] for x in p.series(t0, every=max(1, int(5 / a.interval)))]
            for n, p in run.procs.items()
        }
        result["rss_growth_mib"] = {
            n: round(p.samples[-1][2] - next(x[2] for x in p.samples if x[0] >= t0), 1)
            for n, p in run.procs.items()
            if p.samples
        }
        # The memory target: flat within 10% after warm-up. Warm-up: the run's first 20%
        # (2 minutes of a 10-minute soak); with the default 1 h dedup TTL a short run is all warm-up.
        warm = t0 + WARMUP_SHARE * (t_end - t0)
        result["rss_spread_after_warmup_pct"] = {
            n: spread_pct([x[2] for x in p.samples if x[0] >= warm])
            for n, p in run.procs.items()
            if p.samples
        }
        result["lag_over_time"] = lag_series(run, run.samples)
        result["max_lag"] = {k: max((s.lag.get(k) or 0) for s in run.samples) for k in run.samples[0].lag}
        # The "consumer lag p99 < 2 s at that rate": messages behind the end offsets
        # (committed offsets, so commit cadence included), p99 over the samples after warm-up.
        lagged = [s for s in run.samples if s.t >= t0 + a.latency_warmup_s] or run.samples
        result["lag_p99"] = {
            k: percentile([s.lag.get(k) or 0 for s in lagged], 99) for k in run.samples[0].lag
        }
        result["errors_in_logs"] = run.logs_errors()
        result["loadavg_at_end"] = loadavg()
        if slack is not None:
            result["anomaly_to_slack"] = await anomaly_latency(run, slack, delay_ms)
    finally:
        await run.stop()
        if slack is not None:
            await slack.stop()
    return result


async def anomaly_latency(run: MeshRun, slack: Any, delay_ms: int) -> dict:
    """Per anomaly: first accepted chat.postMessage carrying its anomaly_id (message metadata) minus
    the moment the watermark passed its window's end."""
    mono_to_wall = time.time() - time.monotonic()
    first_post: dict[str, float] = {}
    for r in list(slack.requests):
        if r.api != "chat.postMessage" or r.status != 200:
            continue
        meta = r.body.get("metadata")
        if isinstance(meta, str):
            with contextlib.suppress(ValueError):
                meta = json.loads(meta)
        aid = ((meta or {}).get("event_payload") or {}).get("anomaly_id")
        if aid and aid not in first_post:
            first_post[aid] = (r.at + mono_to_wall) * 1000
    try:
        rows = await run.query(
            "SELECT anomaly_id, kind, key, toUnixTimestamp64Milli(window_end), "
            "toUnixTimestamp64Milli(detected_at) FROM fct_anomaly FINAL"
        )
    except Exception as exc:
        return {"measured": False, "why": f"fct_anomaly not readable: {exc}", "slack_posts": len(first_post)}
    samples: list[dict] = []
    for aid, kind, key, wend, det in rows:
        if aid in first_post and kind != "resolved":
            due = int(wend) + delay_ms
            samples.append(
                {
                    "kind": kind,
                    "key": key,
                    "slack_ms": round(first_post[aid] - due),
                    "detected_ms": int(det) - due,
                }
            )
    lat = [s["slack_ms"] for s in samples]
    # What alerting itself adds (anomaly taken in -> Slack's OK), as alerting measured it.
    # Its own share: the same without the Slack call's round trip (the fake Slack answers from this
    # orchestrator's event loop, busy sampling and polling ClickHouse; a real Slack takes longer).
    in_process: dict | None = None
    own: dict | None = None
    with contextlib.suppress(Exception):  # an older alerting has no such figure
        status, body = await asyncio.to_thread(run.mesh.services["alerting"].get_json, "/alerts/status")
        if status == 200:
            in_process, own = body.get("in_process_ms"), body.get("own_ms")
    return {
        "in_process_ms": in_process,
        "own_ms": own,
        "measured": bool(samples),
        "why": None if samples else "no anomaly reached the fake Slack",
        "anomalies": len(rows),
        "slack_posts": len(first_post),
        "latency_ms": {f"p{q}": percentile(lat, q) for q in PCTS} | {"max": max(lat) if lat else None},
        "samples": samples[:20],
    }


def anomaly_slack_available() -> bool:
    return all(
        (ROOT / p).exists()
        for p in ("services/anomaly/agents.py", "services/alerting/agents.py", "tests/fake_slack.py")
    )


async def quix_live(a: argparse.Namespace, bootstrap: str, prefix: str, rate: float) -> dict:
    await traffic.create_topics(bootstrap, prefix)
    secs = a.quix_live_seconds
    quix = asyncio.create_task(
        run_json(
            [
                str(BENCH_VENV / "bin" / "python"),
                str(ROOT / "bench" / "quix_peer.py"),
                "live",
                "--bootstrap",
                bootstrap,
                "--prefix",
                prefix,
                "--group",
                f"{prefix}quix",
                "--window-ms",
                str(a.latency_window_ms),
                "--grace-ms",
                "3000",
                "--seconds",
                str(secs + 12),
                "--warmup-s",
                str(min(15, secs / 3)),
            ],
            secs + 90,
            "quix-live",
            a.workdir,
        )
    )
    await asyncio.sleep(8)  # consumer up before the traffic starts
    gen, _ = await run_json(
        [
            sys.executable,
            "-m",
            "bench.traffic",
            "live",
            "--bootstrap",
            bootstrap,
            "--prefix",
            prefix,
            "--rate",
            str(rate),
            "--seconds",
            str(secs),
        ],
        secs + 60,
        "quix-live-producer",
        a.workdir,
    )
    res, series = await quix
    if res is None:
        return {"error": "quix live run failed (see quix-live.log)"}
    res["producer"] = gen
    res["offered_events_per_s"] = rate
    res["process"] = series.summary()
    return res


# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/run.sh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="smoke run: ~300k events, short phases (~5 min)")
    p.add_argument(
        "--bootstrap",
        default=os.environ.get("BENCH_KAFKA_BOOTSTRAP_SERVERS"),
        help="broker to use (default: start one with deploy/kafka.sh on free ports)",
    )
    p.add_argument(
        "--events", type=int, help="events pre-loaded for the limits and the peer (default 5,000,000)"
    )
    p.add_argument(
        "--rate", type=float, default=1_000.0, help="event-time rate of the pre-loaded traffic (events/s)"
    )
    p.add_argument(
        "--backlog-window-ms",
        type=int,
        default=10_000,
        help="window size of the backlog runs (L2, peer, mesh)",
    )
    p.add_argument(
        "--limit-max-seconds", type=float, help="cap per limit run (default 30; rate over what was read)"
    )
    p.add_argument("--peer-max-seconds", type=float, help="cap for the Quix backlog run (default 45)")
    p.add_argument(
        "--mesh-events", type=int, help="events the mesh drains until all are accounted (default 200,000)"
    )
    p.add_argument("--mesh-max-seconds", type=float, help="safety cap for the mesh backlog run (default 240)")
    p.add_argument("--scales", default="1,4,16", help="cardinality multipliers for the scaling runs")
    p.add_argument("--scale-events", type=int, help="events per scaling run (default 20,000)")
    p.add_argument("--scale-max-seconds", type=float, help="cap per scaling run (default 60)")
    p.add_argument(
        "--latency-rate",
        default="auto",
        help="offered live events/s; auto = half the rate at which the mesh drained its backlog through "
        "every stage, at most 10,000",
    )
    p.add_argument("--latency-window-ms", type=int, default=5_000)
    p.add_argument("--latency-warmup-s", type=float, default=15.0)
    p.add_argument(
        "--soak-minutes", type=float, help="live run length: latency + memory over time (default 2)"
    )
    p.add_argument("--quix-live-seconds", type=float, help="the peer's live latency run (default 40)")
    p.add_argument("--poll-interval", type=float, default=0.1, help="ClickHouse polling for readability (s)")
    p.add_argument("--interval", type=float, default=1.0, help="lag/CPU/RSS sampling interval (s)")
    p.add_argument("--no-profile", dest="profile", action="store_false", help="skip py-spy")
    p.add_argument("--profile-seconds", type=float, default=25.0)
    p.add_argument(
        "--skip", default="", help="comma-separated phases to skip: limits,peer,mesh,scaling,live,quix-live"
    )
    p.add_argument("--out", default=str(ROOT / "bench" / "out"))
    p.add_argument("--keep-topics", action="store_true")
    a = p.parse_args(argv)
    q = a.quick
    defaults = {
        "events": 300_000 if q else 5_000_000,
        "limit_max_seconds": 20 if q else 30,
        "peer_max_seconds": 30 if q else 45,
        "mesh_events": 20_000 if q else 200_000,
        "mesh_max_seconds": 120 if q else 240,
        "scale_events": 8_000 if q else 20_000,
        "scale_max_seconds": 45 if q else 60,
        "soak_minutes": 1.5 if q else 2.0,
        "quix_live_seconds": 30 if q else 40,
    }
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.skip = {x.strip() for x in a.skip.split(",") if x.strip()}
    return a


async def main_async(a: argparse.Namespace) -> dict:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    a.out = Path(a.out)
    a.out.mkdir(parents=True, exist_ok=True)
    a.workdir = a.out / f"work-{stamp}"
    a.workdir.mkdir(parents=True)
    run_id = f"bench{stamp[-6:]}{os.getpid() % 1000:03d}"
    prefix = lambda name: f"{run_id}-{name}-"  # noqa: E731
    results: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "git": git_info(),
        # what the services run: the hot modules compiled with mypyc, or pure Python (and why)
        "hot_modules": dict(zip(("compiled", "why"), compiled_modules.decision(), strict=True)),
        "args": {
            k: (sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path) else v)
            for k, v in vars(a).items()
        },
        "phase_seconds": {},
    }
    t_run = time.monotonic()
    broker = Broker(a.bootstrap, a.workdir)
    bootstrap = broker.start()
    results["broker"] = bootstrap
    results["machine"]["broker_at_start"] = held = await broker_load(bootstrap)
    if held["topics"] > CROWDED_BROKER_TOPICS:
        log(
            f"the broker holds {held['topics']:,} topics ({held['partitions']:,} partitions) from "
            "earlier runs: every figure will be lower (docs/benchmark.md); a fresh broker is "
            "`bash deploy/kafka.sh stop; rm -rf data/kafka; bash deploy/kafka.sh start`"
        )
    probe = OffsetProbe(bootstrap)
    await probe.start()
    scales = [int(x) for x in a.scales.split(",") if x.strip()]
    have_quix = (BENCH_VENV / "bin" / "python").exists() and subprocess.run(
        [str(BENCH_VENV / "bin" / "python"), "-c", "import quixstreams"], capture_output=True
    ).returncode == 0

    def phase(name: str, t0: float) -> None:
        results["phase_seconds"][name] = round(time.monotonic() - t0, 1)

    def failed(name: str, exc: BaseException) -> None:
        log(f"phase {name} failed: {type(exc).__name__}: {str(exc)[-1500:]}")
        results.setdefault("errors", {})[name] = f"{type(exc).__name__}: {str(exc)[-3000:]}"

    try:
        # -- preload ------------------------------------------------------------------------
        t0 = time.monotonic()
        pre: dict[str, Any] = {}
        if not {"limits", "peer"} <= a.skip:
            log(f"preload: {a.events:,} events into {prefix('raw')}*")
            pre["limits"] = await traffic.preload(bootstrap, prefix("raw"), a.events, traffic.Shape(), a.rate)
            log(
                f"preload: {pre['limits']['send_events_per_s']:,} events/s, "
                f"mean {pre['limits']['mean_value_bytes']} B"
            )
        if "mesh" not in a.skip:
            pre["mesh"] = await traffic.preload(
                bootstrap, prefix("mesh"), a.mesh_events, traffic.Shape(), a.rate
            )
        if "scaling" not in a.skip:
            for k in scales:
                pre[f"scale{k}"] = await traffic.preload(
                    bootstrap, prefix(f"s{k}"), a.scale_events, traffic.Shape(scale=k), a.rate
                )
        results["preload"] = pre
        phase("preload", t0)

        # -- limits ---------------------------------------------------------------------------
        systems: dict[str, Any] = {}
        results["systems"] = systems
        # A finite backlog ends: its sources go quiet for good, and the last windows close when the
        # idle timeouts say so. 2 s each (not the 10 s defaults, which a live stream wants) keep
        # that fixed tail from weighing on the end-to-end rate of a short backlog.
        backlog_overrides = {
            "IDLE_FLUSH_TIMEOUT_MS": "2000",
            "SOURCE_IDLE_TIMEOUT_MS": "2000",
            "WINDOW_SIZE_MS": str(a.backlog_window_ms),
        }
        mesh_rate = None
        try:
            if "limits" not in a.skip:
                t0 = time.monotonic()
                for mode in ("l1", "l2"):
                    log(f"limit {mode.upper()}: up to {a.limit_max_seconds:.0f} s")
                    res, _ = await run_json(
                        [
                            sys.executable,
                            "-m",
                            "bench.limits",
                            mode,
                            "--bootstrap",
                            bootstrap,
                            "--prefix",
                            prefix("raw"),
                            "--window-ms",
                            str(a.backlog_window_ms),
                            "--max-seconds",
                            str(a.limit_max_seconds),
                        ],
                        a.limit_max_seconds + 120,
                        mode,
                        a.workdir,
                    )
                    if res:
                        res["loadavg"] = loadavg()
                        systems[mode.upper()] = rate_fields(res)
                        log(
                            f"limit {mode.upper()}: {res['events_per_s']:,} events/s, "
                            f"{res.get('cpu_us_per_event')} CPU-us/event"
                        )
                phase("limits", t0)
        except Exception as exc:  # one failed phase must not lose the others
            failed("limits", exc)

        # -- peer -----------------------------------------------------------------------------
        try:
            if "peer" not in a.skip:
                t0 = time.monotonic()
                if have_quix:
                    log(f"peer Quix Streams: up to {a.peer_max_seconds:.0f} s")
                    res, _ = await run_json(
                        [
                            str(BENCH_VENV / "bin" / "python"),
                            str(ROOT / "bench" / "quix_peer.py"),
                            "backlog",
                            "--bootstrap",
                            bootstrap,
                            "--prefix",
                            prefix("raw"),
                            "--group",
                            f"{prefix('raw')}quix",
                            "--window-ms",
                            str(a.backlog_window_ms),
                            "--max-seconds",
                            str(a.peer_max_seconds),
                        ],
                        a.peer_max_seconds + 120,
                        "quix",
                        a.workdir,
                    )
                    if res:
                        res["loadavg"] = loadavg()
                        systems["Quix Streams"] = rate_fields(res)
                        log(
                            f"peer: {res['events_per_s']:,} events/s, "
                            f"{res.get('cpu_us_per_event')} CPU-us/event, "
                            f"{res['late_dropped']:,} dropped as late"
                        )
                else:
                    systems["Quix Streams"] = {"error": "bench/.venv has no quixstreams (run bench/run.sh)"}
                phase("peer", t0)
        except Exception as exc:  # one failed phase must not lose the others
            failed("peer", exc)

        # -- mesh backlog ---------------------------------------------------------------------
        try:
            if "mesh" not in a.skip:
                t0 = time.monotonic()
                res, _ = await mesh_backlog(
                    a,
                    bootstrap,
                    probe,
                    prefix("mesh"),
                    a.mesh_events,
                    "mesh-backlog",
                    backlog_overrides,
                    a.mesh_max_seconds,
                )
                res["loadavg"] = loadavg()
                systems["mesh"] = res
                drained_s = res.get("seconds_first_event_to_all_stages_drained")
                # every stage, engagement included, must keep up with the live rate
                res["all_stages_events_per_s"] = round(a.mesh_events / drained_s) if drained_s else None
                mesh_rate = (
                    res["all_stages_events_per_s"]
                    or res.get("end_to_end_events_per_s")
                    or res["sustained_events_per_s"].get("ingest.validate")
                )
                log(
                    f"mesh: end-to-end {res.get('end_to_end_events_per_s')} events/s, per stage "
                    f"{res['sustained_events_per_s']}, {res.get('cpu_us_per_event')} CPU-us/event "
                    f"(the local broker {res.get('broker_cpu_us_per_event')} more)"
                )
                if res.get("errors_in_logs"):
                    # A crashed service costs no CPU: its figures would flatter the mesh (seen once:
                    # engagement died at its first batch and the run still read "all accounted").
                    log(f"mesh: ERRORS in the logs of {', '.join(res['errors_in_logs'])}: figures invalid")
                phase("mesh", t0)
            results["systems"] = systems
        except Exception as exc:  # one failed phase must not lose the others
            failed("mesh", exc)

        # -- scaling --------------------------------------------------------------------------
        try:
            if "scaling" not in a.skip:
                t0 = time.monotonic()
                spy = PySpy(BENCH_VENV / "bin" / "py-spy", a.workdir) if a.profile else None
                if spy is not None and not spy.available():
                    spy = None
                scaling = {}
                for k in scales:
                    res, _ = await mesh_backlog(
                        a,
                        bootstrap,
                        probe,
                        prefix(f"s{k}"),
                        a.scale_events,
                        f"mesh-scale{k}",
                        backlog_overrides,
                        a.scale_max_seconds,
                        spy if k == scales[0] else None,
                    )
                    res.pop("lag_over_time", None)
                    res["campaigns"] = pre[f"scale{k}"]["campaigns"]
                    res["users"] = pre[f"scale{k}"]["users"]
                    scaling[f"{k}x"] = res
                    log(
                        f"scale {k}x: {res.get('cpu_us_per_event')} CPU-us/event, "
                        f"{res.get('end_to_end_events_per_s')} events/s end to end"
                    )
                results["scaling"] = scaling
                if spy is not None:
                    results["profile"] = {
                        "note": f"py-spy --nonblocking 100 Hz for {a.profile_seconds:.0f} s "
                        f"during the {scales[0]}x run",
                        **{name: summarize(path) for name, path in spy.wait().items()},
                    }
                phase("scaling", t0)
        except Exception as exc:  # one failed phase must not lose the others
            failed("scaling", exc)

        # -- live: latency + soak -------------------------------------------------------------
        rate = None
        if a.latency_rate != "auto":
            rate = float(a.latency_rate)
        elif mesh_rate:
            rate = float(max(100, min(10_000, round(mesh_rate / 2, -2))))
        else:
            rate = 1_000.0
        results["latency_rate_choice"] = {
            "mode": a.latency_rate,
            "events_per_s": rate,
            "mesh_end_to_end_events_per_s": mesh_rate,
        }
        try:
            if "live" not in a.skip:
                t0 = time.monotonic()
                results["live"] = await mesh_live(a, bootstrap, probe, prefix("live"), rate)
                lat = results["live"]["latency_ms"]
                log(
                    f"live: readable in ClickHouse {lat['readable_in_clickhouse']} ms "
                    f"({lat['samples']} windows); "
                    f"RSS growth {results['live']['rss_growth_mib']} MiB"
                )
                phase("live", t0)
        except Exception as exc:  # one failed phase must not lose the others
            failed("live", exc)
        try:
            if "quix-live" not in a.skip and have_quix:
                t0 = time.monotonic()
                results["quix_live"] = await quix_live(a, bootstrap, prefix("qlive"), rate)
                log(f"quix live: window close latency {results['quix_live'].get('latency_ms')} ms")
                phase("quix-live", t0)
        except Exception as exc:  # one failed phase must not lose the others
            failed("quix-live", exc)
        results["anomaly_to_slack"] = results.get("live", {}).get("anomaly_to_slack") or {
            "measured": False,
            "why": "services/anomaly, services/alerting or tests/fake_slack.py missing, the live run "
            "too short for the detectors' warm-up, or skipped",
        }
    finally:
        if not a.keep_topics:
            deleted = await probe.delete_topics(f"{run_id}-")
            results["topics_deleted"] = len(deleted)
        await probe.stop()
        broker.stop()
        results["phase_seconds"]["total"] = round(time.monotonic() - t_run, 1)
        results["run_id"] = run_id
    return results


def summary_markdown(r: dict) -> str:
    m = r["machine"]
    held_topics = f"{m['broker_at_start']['topics']:,}" if "broker_at_start" in m else "?"
    lines = [
        f"Run {r['date']} on {m['cores']} cores / {m['memory_gib']} GiB ({m['cpu']}), Python {m['python']} "
        f"({'hot modules compiled' if r.get('hot_modules', {}).get('compiled') else 'pure Python'}), "
        f"load average at start {m['loadavg_at_start']}; broker holding {held_topics} topics at start; "
        f"{r['phase_seconds'].get('total')} s in all; "
        f"commit {r.get('git', {}).get('commit')}.",
        "",
        "| system | events | events/s (wall) | CPU us/event | peak RSS MiB | notes |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, s in r.get("systems", {}).items():
        if "error" in s:
            lines.append(f"| {name} | | | | | {s['error']} |")
            continue
        if name == "mesh":
            rates = ", ".join(f"{k} {v:,}" for k, v in s["sustained_events_per_s"].items() if v)
            if s.get("errors_in_logs"):
                rates += f"; ERRORS in the logs of {', '.join(s['errors_in_logs'])}"
            lines.append(
                f"| mesh ({' + '.join(s['services'])}) | {s['accounted']:,} "
                f"| {s.get('end_to_end_events_per_s') or 0:,} "
                f"| {s.get('cpu_us_per_event')} | {s['peak_rss_mib_total']} (sum) "
                f"| end to end into ClickHouse; every stage drained at {s.get('all_stages_events_per_s')}/s; "
                f"the local broker {s.get('broker_cpu_us_per_event')} CPU us/event more; "
                f"{'all accounted' if s['complete'] else 'NOT complete'}; sustained per stage: {rates} |"
            )
        else:
            note = "first record to last"
            if "late_dropped" in s:
                note += f"; {s['late_dropped']:,} events dropped as late by its windows"
            lines.append(
                f"| {name} | {s['events']:,} | {s['events_per_s']:,} | {s.get('cpu_us_per_event')} "
                f"| {s.get('peak_rss_mib')} | {note} |"
            )
    if r.get("scaling"):
        lines += [
            "",
            "| scale | campaigns | users | CPU us/event (mesh) | events/s end to end |",
            "|---|---:|---:|---:|---:|",
        ]
        for k, s in r["scaling"].items():
            lines.append(
                f"| {k} | {s['campaigns']} | {s['users']} | {s.get('cpu_us_per_event')} "
                f"| {s.get('end_to_end_events_per_s')} |"
            )
    if r.get("live"):
        lv = r["live"]
        lat = lv["latency_ms"]
        lines += [
            "",
            f"Live {lv['offered_events_per_s']:,.0f} events/s for {lv['seconds']:.0f} s, "
            f"{lv['window_ms'] // 1000} s windows, "
            f"{lv['watermark_delay_ms'] // 1000} s watermark delay ({lat['samples']} windows):",
            "",
            "| latency after the watermark passed the window end | p50 ms | p95 ms | p99 ms |",
            "|---|---:|---:|---:|",
        ]
        for k, label in (
            ("emitted_by_ctr", "mesh: emitted by ctr"),
            ("inserted_in_clickhouse", "mesh: inserted in ClickHouse"),
            (
                "readable_in_clickhouse",
                f"mesh: readable in ClickHouse (polled every {lat['poll_interval_ms']:.0f} ms)",
            ),
        ):
            v = lat[k]
            lines.append(f"| {label} | {v['p50']} | {v['p95']} | {v['p99']} |")
        q = r.get("quix_live", {})
        if q.get("latency_ms"):
            v = q["latency_ms"]
            lines.append(
                f"| Quix Streams: window emitted (final) | {v.get('50')} | {v.get('95')} | {v.get('99')} |"
            )
        an = r.get("anomaly_to_slack") or {}
        if an.get("measured"):
            v = an["latency_ms"]
            lines.append(
                f"| anomaly -> Slack (fake): first post per anomaly ({len(an['samples'])} anomalies) "
                f"| {v['p50']} | {v['p95']} | {v['p99']} |"
            )
            ip = an.get("in_process_ms") or {}
            if ip.get("count"):
                lines.append(
                    f"| of which inside alerting: taken in -> Slack's OK ({ip['count']} deliveries, max "
                    f"{ip['max']}) | {ip['p50']} | | {ip['p99']} |"
                )
            own = an.get("own_ms") or {}
            if own.get("count"):
                lines.append(
                    f"| of that, alerting's own: without the Slack call's round trip (max {own['max']}) "
                    f"| {own['p50']} | | {own['p99']} |"
                )
        else:
            lines.append(f"| anomaly -> Slack | not measured: {an.get('why')} | | |")
        cpu = {n: p.get("cpu_pct_mean") for n, p in lv.get("processes", {}).items()}
        cpu["load producer"] = (lv.get("producer_process") or {}).get("cpu_pct_mean")
        if lv.get("broker_process"):
            cpu["local broker"] = lv["broker_process"].get("cpu_pct_mean")
        cores = r.get("machine", {}).get("cores")
        lines += [
            "",
            f"CPU over the live run (% of one core; the machine has {cores}): "
            + ", ".join(f"{k} {v}" for k, v in cpu.items() if v is not None),
            "",
            lag_line(lv),
            "",
            "RSS growth over the live run (MiB): "
            + ", ".join(f"{k} {v:+}" for k, v in lv["rss_growth_mib"].items()),
            "",
            f"RSS spread after the first {WARMUP_SHARE:.0%} of the live run (target: within 10%): "
            + ", ".join(f"{k} {v}%" for k, v in lv.get("rss_spread_after_warmup_pct", {}).items()),
        ]
    return "\n".join(lines)


def lag_line(lv: dict[str, Any]) -> str:
    """Consumer lag p99 per stage; validate's in seconds too, as it reads one message per event
    (the other stages read bundles, and the warehouse result rows)."""
    lag = lv.get("lag_p99") or {}
    if not lag:
        return "Consumer lag over the live run: not sampled"
    rate = lv.get("offered_events_per_s") or 0
    text = ", ".join(f"{k} {v:,.0f}" for k, v in lag.items())
    validate = lag.get("ingest.validate")
    if validate is not None and rate:
        text += f"; ingest.validate {validate / rate:.2f} s behind at {rate:,.0f} events/s"
    return f"Consumer lag over the live run after warm-up, p99 (messages behind the end offsets): {text}"


def spread_pct(values: list[float]) -> float | None:
    """(max - min) / min, in percent."""
    return round(100 * (max(values) - min(values)) / min(values), 1) if values and min(values) > 0 else None


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    results = asyncio.run(main_async(a))
    stamp = results["date"].replace(":", "").replace("-", "")
    path = Path(a.out) / f"mesh_bench-{stamp}.json"
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    shutil.copyfile(path, Path(a.out) / "mesh_bench-latest.json")
    md = summary_markdown(results)
    (Path(a.out) / "mesh_bench-latest.md").write_text(md + "\n")
    chart = Path(a.out) / f"mesh_bench-{stamp}.png"
    py = BENCH_VENV / "bin" / "python"
    if py.exists():
        r = subprocess.run(
            [str(py), str(ROOT / "bench" / "chart.py"), str(path), str(chart)], capture_output=True, text=True
        )
        if r.returncode == 0:
            shutil.copyfile(chart, Path(a.out) / "mesh_bench-latest.png")
            log(f"chart: {chart}")
        else:
            log(f"chart failed: {r.stderr[-500:]}")
    print()
    print(md)
    log(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
