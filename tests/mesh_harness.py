"""Run real mesh services as subprocesses against the session's real broker, and query their results.

Each test mesh gets its own topic prefix (so its own topics, consumer groups and changelogs), its
own chDB directory and its own web ports; the broker is shared by the whole session.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import urllib3
from aiokafka.admin import AIOKafkaAdminClient

ROOT = Path(__file__).resolve().parents[1]
http = urllib3.PoolManager()


def free_port() -> int:
    """A free port below the kernel's ephemeral range (32768 and up on Linux). A port the kernel
    picks for us comes from that range, and any outgoing connection (a mesh opens dozens) can take
    it between this check and the service's bind: seen once as "address already in use"."""
    for _ in range(500):
        port = random.randint(20_000, 32_000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 32000")


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # a service still starting answers with errors
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


# The line the recovery watchdog logs when it stops a worker (shared/app.py).
WATCHDOG_STOP = "stopping the worker: table recovery"
FAULTY_FAUST = "tests.faults.faust_worker"


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    log_start: int = 0  # earlier runs of the same service are kept above this offset
    service: str = ""  # the service it runs (name = service + instance)
    instance: str = ""
    faults: bool = False  # started through tests/faults/faust_worker.py

    def log(self) -> str:
        """This run's log."""
        with self.log_path.open("rb") as f:
            f.seek(self.log_start)
            return f.read().decode(errors="replace")

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        return "[^Worker]: Ready" in self.log()

    def get_json(self, path: str) -> Any:
        r = http.request("GET", f"http://127.0.0.1:{self.port}{path}", timeout=10)
        try:
            return r.status, orjson.loads(r.data) if r.data else None
        except orjson.JSONDecodeError:
            if r.status == 404:  # a page this service does not have: "404: Not Found", as text
                return r.status, None
            raise


def summarised(body: Any) -> Any:
    """A /watermarks body with each "sources" listing cut to what explains a stall: how many
    sources, how many idle, and the one furthest behind."""
    if isinstance(body, list):
        return [summarised(v) for v in body]
    if not isinstance(body, dict):
        return body
    out = {}
    for k, v in body.items():
        if k == "sources" and isinstance(v, dict) and v and all(isinstance(s, dict) for s in v.values()):
            behind = min(v, key=lambda s: v[s].get("event_time_ms", 0))
            idle = sum(1 for s in v.values() if s.get("idle"))
            out[k] = {"n": len(v), "idle": idle, "behind": {behind: v[behind]}}
        else:
            out[k] = summarised(v)
    return out


@dataclass
class Mesh:
    bootstrap: str
    workdir: Path
    overrides: dict[str, str] = field(default_factory=dict)
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}-")
    services: dict[str, Service] = field(default_factory=dict)
    # names of workers started again after the recovery watchdog stopped them (see `supervise`)
    restarted: list[str] = field(default_factory=list)
    _supervisor: threading.Thread | None = None
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _closed: bool = False

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "CLICKHOUSE_"))}
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=self.bootstrap,
            TOPIC_PREFIX=self.prefix,
            DATA_DIR=str(self.workdir / "data"),
            CLICKHOUSE_DSN=f"chdb://{self.workdir / 'chdb'}",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.overrides)
        return env

    def topic(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def start(self, *names: str, wait: bool = True, instance: str = "", faults: bool = False) -> None:
        """Start services; `instance` runs another worker of the same service (same consumer group)
        under the name f"{name}{instance}", with its own data dir and web port. `faults`: through
        tests/faults/faust_worker.py, which arms the faults the FAULT_* overrides ask for."""
        for service in names:
            name = f"{service}{instance}"
            port = free_port()
            log_path = self.workdir / f"{name}.log"
            env = {**self.env, f"{service.upper()}_WEB_PORT": str(port)}
            if instance:
                env["DATA_DIR"] = str(self.workdir / f"data{instance}")
            entry = FAULTY_FAUST if faults else "faust"
            log_file = log_path.open("ab")  # a restart appends: a post-mortem sees every run
            log_start = log_file.tell()
            proc = subprocess.Popen(
                [sys.executable, "-m", entry, "-A", f"services.{service}", "worker", "-l", "info"],
                cwd=ROOT,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            log_file.close()
            with self._lock:
                svc = Service(name, proc, port, log_path, log_start, service, instance, faults)
                self.services[name] = svc
        if self._supervisor is None:
            self._supervisor = threading.Thread(target=self._supervise_loop, daemon=True)
            self._supervisor.start()
        if wait:
            for service in names:
                name = f"{service}{instance}"
                wait_for(self.services[name].ready, 90, f"{name} to be ready")

    def supervise(self) -> None:
        """What compose's restart policy does for a worker the recovery watchdog stopped
        (shared/recovery_watchdog.py: faust's recovery stall): start it again. Only for that
        reason: any other exit stays an error the test sees."""
        with self._lock:
            for name, svc in list(self.services.items()):
                if svc.proc.poll() not in (None, 0) and WATCHDOG_STOP in svc.log():
                    self.services.pop(name)
                    self.restarted.append(name)
                    self.start(svc.service, wait=False, instance=svc.instance, faults=svc.faults)

    def _supervise_loop(self) -> None:
        while not self._closed:
            try:
                self.supervise()
            except Exception as exc:  # a start that failed: the test's own waits will say so
                warnings.warn(f"restarting a stopped worker failed: {exc!r}", stacklevel=1)
            time.sleep(1.0)

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        with self._lock:
            svc = self.services.pop(name, None)
        if svc is None or svc.proc.poll() is not None:
            return
        os.killpg(svc.proc.pid, sig)
        try:
            svc.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(svc.proc.pid, signal.SIGKILL)
            svc.proc.wait()

    def stop_all(self) -> None:
        self._closed = True
        for name in list(self.services):
            self.stop(name)

    def delete_topics(self) -> None:
        """Delete this mesh's topics (changelogs too: app ids carry the prefix). The session's
        broker otherwise ends the suite holding ~2,300 topics, and a broker that busy with its own
        upkeep made the benchmark 15-20% slower (docs/benchmark.md): later tests would wait too."""

        async def delete() -> None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            await admin.start()
            try:
                names = [t for t in await admin.list_topics() if t.startswith(self.prefix)]
                if names:
                    await admin.delete_topics(names)
            finally:
                await admin.close()

        try:
            asyncio.run(delete())
        except Exception as exc:  # housekeeping: a test's outcome does not depend on it
            warnings.warn(f"topics of {self.prefix!r} not deleted: {exc!r}", stacklevel=1)

    def query(self, sql: str) -> list[list[Any]]:
        """Read-only SQL through the warehouse's /query endpoint (the warehouse owns the chDB files)."""
        svc = self.services["warehouse"]
        r = http.request("POST", f"http://127.0.0.1:{svc.port}/query", body=sql.encode(), timeout=30)
        body = orjson.loads(r.data)
        if r.status != 200:
            raise RuntimeError(f"query failed ({r.status}): {body}")
        return body["rows"]

    def scalar(self, sql: str) -> Any:
        return self.query(sql)[0][0]

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
        """wait_for, and on a timeout say what every service's event time waits for."""
        try:
            return wait_for(predicate, timeout, what, interval)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.diagnostics()}") from None

    def diagnostics(self) -> str:
        """What a stalled mesh waits for: every running service's event-time progress."""
        out = []
        # The counts first: a watermark listing (one line per upstream source and partition) cut
        # off everything after ingest's once, and so what ctr held.
        for path in ("/stats", "/watermarks"):
            for name, svc in self.services.items():
                try:
                    status, body = svc.get_json(path)
                except Exception as exc:  # diagnostics must not hide the failure they explain
                    status, body = "unreachable", repr(exc)
                if status != 404:
                    out.append(f"{name} {path} [{status}]: {orjson.dumps(summarised(body)).decode()[:3000]}")
        return "\n".join(out)

    def errors_in_logs(self) -> dict[str, list[str]]:
        """Crashes and tracebacks. (Not every [ERROR]: aiokafka logs transient metadata misses, e.g.
        for a changelog topic faust has just created, at ERROR level.)"""
        out = {}
        for name, svc in self.services.items():
            bad = [
                line
                for line in svc.log().splitlines()
                if "Traceback" in line or "Crashed" in line or "[CRITICAL]" in line
            ]
            if bad:
                out[name] = bad[:20]
        return out
