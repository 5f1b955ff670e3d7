"""The real mesh (faust workers as subprocesses) under a backlog or a paced live load, observed from
outside: consumer-group lag per stage, ingest /stats, what ClickHouse holds, CPU and RSS per process.

Stages and how their progress is read (sampled every `interval` s):
  ingest.validate  committed offsets of the raw topics (= events; exact)
  ingest.join      ingest /stats outcomes (counted + duplicate + orphan + replayed; exact)
  ctr              committed offsets of canonical-events (bundles and markers), scaled by events
                   per message (known at the end), so an estimate
  warehouse        committed offsets of its input topics (result rows, not events) -> lag only
  clickhouse       sum(impressions + clicks) FINAL + dead + late + discarded (exact; the same
                   accounting as tests/ctr_checks.accounted)
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.kafka_probe import OffsetProbe
from bench.procstat import ProcSeries, listening_pid
from tests.mesh_harness import Mesh

ACCOUNTED_SQL = (
    "SELECT (SELECT sum(impressions + clicks) FROM fct_campaign_ctr FINAL)"
    " + (SELECT count() FROM fct_dead_letter FINAL)"
    " + (SELECT count() FROM fct_late_event FINAL WHERE stage = 'ctr')"
    " + (SELECT count() FROM fct_discarded_event FINAL)"
)


def mesh_services(root: Path) -> list[str]:
    names = ["ingest", "ctr", "warehouse"]
    if (root / "services" / "engagement" / "agents.py").exists():
        names.insert(2, "engagement")
    return names


def stages(prefix: str, services: list[str]) -> dict[str, tuple[str, list[str]]]:
    """stage -> (consumer group, input topics). Its lag = end offsets - committed offsets."""
    t = lambda n: f"{prefix}{n}"  # noqa: E731
    g = lambda s: f"{prefix}adclick-{s}"  # noqa: E731
    out = {
        "ingest.validate": (
            g("ingest") + "-raw",  # its own group: shared/direct_reader.py
            [t("ad-impressions"), t("ad-clicks"), t("ad-events"), t("clickstream")],
        ),
        "ingest.join": (g("ingest"), [t("ingest-by-key")]),
        "ctr": (g("ctr"), [t("canonical-events")]),
    }
    if "engagement" in services:
        out["engagement.fan_out"] = (g("engagement"), [t("canonical-events")])
        out["engagement.aggregate"] = (g("engagement"), [t("engagement-by-key")])
    out["warehouse"] = (
        g("warehouse") + "-direct",  # its reader's group: shared/direct_reader.py
        [
            t(n)
            for n in ("ctr-metrics", "dead-letters", "discarded-events", "late-events", "engagement-metrics")
        ],
    )
    return out


@dataclass
class Sample:
    t: float
    validate: int  # raw events committed by ingest
    joined: int  # events through the join (ingest /stats)
    canonical_committed: int  # canonical-events messages committed by ctr (bundles + markers)
    lag: dict[str, int]  # stage -> messages behind
    committed: dict[str, int]  # stage -> input messages committed
    accounted: int | None  # events visible in ClickHouse (polled less often)


@dataclass
class MeshRun:
    bootstrap: str
    prefix: str
    workdir: Path
    overrides: dict[str, str]
    root: Path
    interval: float = 1.0
    mesh: Mesh | None = None
    procs: dict[str, ProcSeries] = field(default_factory=dict)
    # The broker when it runs on this machine: not a mesh process, but it takes its share of the
    # same two cores, and the mesh's events/s depend on what is left (bench/procstat.py)
    broker: ProcSeries | None = None
    samples: list[Sample] = field(default_factory=list)
    extra_services: tuple[str, ...] = ()
    t_ready: float = 0.0
    started_at: float = 0.0
    _stages: dict[str, tuple[str, list[str]]] | None = None

    async def start(self) -> None:
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.workdir.mkdir(parents=True)
        self.mesh = Mesh(self.bootstrap, self.workdir, dict(self.overrides), prefix=self.prefix)
        self.started_at = time.monotonic()
        names = mesh_services(self.root) + list(self.extra_services)
        await asyncio.to_thread(self.mesh.start, *names, wait=False)
        for name, svc in self.mesh.services.items():
            self.procs[name] = ProcSeries(name, svc.proc.pid)
        host, _, port = self.bootstrap.split(",")[0].rpartition(":")
        if host in ("127.0.0.1", "localhost") and port.isdigit():
            pid = listening_pid(int(port))
            self.broker = ProcSeries("broker", pid) if pid is not None else None
        for name in names:
            deadline = time.monotonic() + 180
            while not self.mesh.services[name].ready():
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{name} not ready after 180 s:\n{self.mesh.services[name].log()[-2000:]}"
                    )
                for p in self.procs.values():
                    p.sample(time.monotonic())
                await asyncio.sleep(0.5)
        self.t_ready = time.monotonic()

    async def stop(self) -> None:
        if self.mesh is not None:
            await asyncio.to_thread(self.mesh.stop_all)

    def logs_errors(self) -> dict[str, list[str]]:
        return self.mesh.errors_in_logs() if self.mesh else {}

    async def query(self, sql: str) -> Any:
        return await asyncio.to_thread(self.mesh.query, sql)

    async def accounted(self) -> int | None:
        try:
            return int(await asyncio.to_thread(self.mesh.scalar, ACCOUNTED_SQL) or 0)
        except Exception:
            return None

    async def join_stats(self) -> int:
        try:
            _, body = await asyncio.to_thread(self.mesh.services["ingest"].get_json, "/stats")
            return sum(v for k, v in body["outcomes"].items() if not k.startswith("dead_letter"))
        except Exception:
            return 0

    async def sample(self, probe: OffsetProbe, with_accounted: bool) -> Sample:
        t = time.monotonic()
        for p in self.procs.values():
            p.sample(t)
        if self.broker is not None:
            self.broker.sample(t)
        if self._stages is None:
            existing = set(await probe.admin.list_topics())
            self._stages = {
                name: (group, [x for x in topics if x in existing])
                for name, (group, topics) in stages(self.prefix, list(self.procs)).items()
            }
        all_topics = sorted({x for _, topics in self._stages.values() for x in topics})
        ends = await probe.end_offsets(all_topics)
        lag, committed = {}, {}
        by_group: dict[str, dict[str, int]] = {}
        for name, (group, topics) in self._stages.items():
            if group not in by_group:
                group_topics = sorted({x for g, ts in self._stages.values() if g == group for x in ts})
                by_group[group] = await probe.committed(group, group_topics)
            done = sum(by_group[group][x] for x in topics)
            committed[name] = done
            lag[name] = sum(ends[x] for x in topics) - done
        s = Sample(
            t=t,
            validate=committed["ingest.validate"],
            joined=await self.join_stats(),
            canonical_committed=committed["ctr"],
            lag=lag,
            committed=committed,
            accounted=await self.accounted() if with_accounted else None,
        )
        self.samples.append(s)
        return s

    async def canonical_total(self, probe: OffsetProbe) -> int:
        c = f"{self.prefix}canonical-events"
        return (await probe.end_offsets([c]))[c]


def time_to(samples: list[Sample], value: Any, target: float) -> float | None:
    for s in samples:
        v = value(s)
        if v is not None and v >= target:
            return s.t
    return None


def sustained_rate(
    samples: list[Sample], value: Any, total: float, lo: float = 0.1, hi: float = 0.9
) -> float | None:
    """events/s between the moments a stage reached lo and hi of the total (startup and the tail
    excluded)."""
    t_lo = time_to(samples, value, lo * total)
    t_hi = time_to(samples, value, hi * total)
    if t_lo is None or t_hi is None or t_hi <= t_lo:
        return None
    return (hi - lo) * total / (t_hi - t_lo)


class PySpy:
    """py-spy (from the bench venv) sampling one process without stopping it (--nonblocking)."""

    def __init__(self, exe: Path, out: Path) -> None:
        self.exe = exe
        self.out = out
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def available(self) -> bool:
        return self.exe.exists()

    def start(self, name: str, pid: int, seconds: float, rate: int = 100) -> None:
        path = self.out / f"pyspy-{name}.txt"
        cmd = [
            str(self.exe),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            str(rate),
            "--nonblocking",
            "--format",
            "raw",
            "-o",
            str(path),
        ]
        log = (self.out / f"pyspy-{name}.log").open("wb")
        self.procs.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), path))

    def wait(self) -> dict[str, Path]:
        done = {}
        for name, proc, path in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=60)
            if path.exists():
                done[name] = path
        return done
