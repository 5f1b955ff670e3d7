"""CPU time and memory of a process from /proc (Linux; no psutil needed in the project venv)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """user + system CPU seconds of the process (its threads included)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # the command name may contain spaces: fields start after the last ')'
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def memory_mib(pid: int) -> tuple[float, float] | None:
    """(current RSS, peak RSS) in MiB: VmRSS and VmHWM."""
    try:
        with open(f"/proc/{pid}/status") as f:
            vals = {}
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    k, v = line.split(":", 1)
                    vals[k] = int(v.split()[0]) / 1024
        return vals.get("VmRSS", 0.0), vals.get("VmHWM", 0.0)
    except (FileNotFoundError, ProcessLookupError):
        return None


@dataclass
class ProcSeries:
    """Samples of one process: (t, cpu seconds, rss MiB). Peak from VmHWM (exact, not sampled)."""

    name: str
    pid: int
    samples: list[tuple[float, float, float]] = field(default_factory=list)
    peak_rss_mib: float = 0.0

    def sample(self, t: float) -> None:
        cpu = cpu_seconds(self.pid)
        mem = memory_mib(self.pid)
        if cpu is None or mem is None:
            return
        self.samples.append((t, cpu, mem[0]))
        self.peak_rss_mib = max(self.peak_rss_mib, mem[1])

    def cpu_between(self, t0: float, t1: float) -> float:
        """CPU seconds used between the samples nearest t0 and t1."""
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2:
            return 0.0
        return inside[-1][1] - inside[0][1]

    def summary(self, t0: float | None = None, t1: float | None = None) -> dict:
        if not self.samples:
            return {"pid": self.pid, "cpu_s": None, "peak_rss_mib": None}
        t0 = self.samples[0][0] if t0 is None else t0
        t1 = self.samples[-1][0] if t1 is None else t1
        cpu = self.cpu_between(t0, t1)
        span = max(t1 - t0, 1e-9)
        return {
            "pid": self.pid,
            "cpu_s": round(cpu, 2),
            "cpu_pct_mean": round(100 * cpu / span, 1),
            "peak_rss_mib": round(self.peak_rss_mib, 1),
            "last_rss_mib": round(self.samples[-1][2], 1),
        }

    def series(self, t_ref: float, every: int = 1) -> list[list[float]]:
        """[[t - t_ref, cpu % over the previous interval, rss MiB], ...] for the JSON and the chart."""
        out = []
        prev = None
        for s in self.samples[::every]:
            if prev is not None and s[0] > prev[0]:
                pct = 100 * (s[1] - prev[1]) / (s[0] - prev[0])
                out.append([round(s[0] - t_ref, 2), round(pct, 1), round(s[2], 1)])
            prev = s
        return out


def listening_pid(port: int) -> int | None:
    """The process listening on a local TCP port (the broker, when it runs on this machine), from
    /proc/net/tcp{,6} and the processes' socket descriptors; None if not found or not visible."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                        inodes.add(f"socket:[{cols[9]}]")
        except (FileNotFoundError, StopIteration):
            continue
    if not inodes:
        return None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return int(pid)
        except (FileNotFoundError, PermissionError, ProcessLookupError, NotADirectoryError):
            continue
    return None
