"""Chart of a bench/mesh_bench.py result (run with bench/.venv, which has matplotlib):

bench/.venv/bin/python bench/chart.py bench/out/mesh_bench-latest.json out.png
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main(src: str, dst: str) -> int:
    with open(src) as f:
        r = json.load(f)
    fig, axes = plt.subplots(2, 3, figsize=(18, 10))
    fig.suptitle(
        f"ad-click mesh benchmark, {r['date']}, "
        f"{r['machine']['cores']} cores / {r['machine']['memory_gib']} GiB, "
        f"load avg at start {r['machine']['loadavg_at_start'][0]}"
    )

    # 1. throughput per system
    ax = axes[0][0]
    names, rates, costs = [], [], []
    for name, s in r.get("systems", {}).items():
        rate = s.get("end_to_end_events_per_s") if name == "mesh" else s.get("events_per_s")
        if rate:
            names.append(name)
            rates.append(rate)
            costs.append(s.get("cpu_us_per_event"))
    bars = ax.bar(names, rates, color=["#4c72b0", "#55a868", "#c44e52", "#8172b2"][: len(names)])
    for b, c in zip(bars, costs, strict=True):
        ax.annotate(
            f"{b.get_height():,.0f}/s\n{c} CPU-us/ev",
            (b.get_x() + b.get_width() / 2, b.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_yscale("log")
    ax.set_ylabel("events/s (wall clock, log)")
    ax.set_title("throughput on the same pre-loaded topics")

    # 2. CPU cost per event
    ax = axes[0][1]
    ax.bar(names, costs, color="#dd8452")
    ax.set_yscale("log")
    ax.set_ylabel("CPU microseconds per event (log)")
    ax.set_title("cost per event (all processes of the system)")
    for i, c in enumerate(costs):
        if c:
            ax.annotate(f"{c:,.0f}", (i, c), ha="center", va="bottom", fontsize=8)

    # 3. latency percentiles
    ax = axes[0][2]
    live = r.get("live", {})
    series = []
    if live.get("latency_ms"):
        lat = live["latency_ms"]
        for key, label in (
            ("emitted_by_ctr", "mesh: ctr emits"),
            ("inserted_in_clickhouse", "mesh: CH insert"),
            ("readable_in_clickhouse", "mesh: CH readable"),
        ):
            series.append((label, [lat[key].get(f"p{q}") for q in (50, 95, 99)]))
    q = r.get("quix_live", {}).get("latency_ms")
    if q:
        series.append(("Quix: window final", [q.get(str(p)) for p in (50, 95, 99)]))
    width = 0.8 / max(1, len(series))
    for i, (label, vals) in enumerate(series):
        xs = [j + i * width for j in range(3)]
        ax.bar(xs, [v or 0 for v in vals], width=width, label=label)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(3)], ["p50", "p95", "p99"])
    ax.set_ylabel("ms after the watermark passed the window end")
    ax.set_title(f"window latency at {live.get('offered_events_per_s', 0):,.0f} events/s live")
    ax.legend(fontsize=8)

    # 4. lag over time (mesh backlog)
    ax = axes[1][0]
    lot = r.get("systems", {}).get("mesh", {}).get("lag_over_time")
    if lot:
        for stage, vals in lot["lag"].items():
            ax.plot(lot["t_s"], vals, label=stage)
        ax.set_xlabel("s since the mesh was ready")
        ax.set_ylabel("messages behind (consumer-group lag)")
        ax.set_title("mesh draining the backlog: lag per stage")
        ax.legend(fontsize=8)

    # 5. memory over the live run
    ax = axes[1][1]
    for name, pts in live.get("memory_over_time", {}).items():
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name)
    ax.set_xlabel("s since the mesh was ready")
    ax.set_ylabel("RSS MiB")
    ax.set_title(f"memory under live load ({live.get('seconds', 0) / 60:.1f} min)")
    ax.legend(fontsize=8)

    # 6. scaling
    ax = axes[1][2]
    sc = r.get("scaling", {})
    if sc:
        ks = list(sc)
        ax.bar(ks, [sc[k].get("cpu_us_per_event") or 0 for k in ks], color="#937860")
        for i, k in enumerate(ks):
            ax.annotate(
                f"{sc[k]['campaigns']} campaigns\n{sc[k]['users']:,} users",
                (i, sc[k].get("cpu_us_per_event") or 0),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_ylabel("mesh CPU microseconds per event")
        ax.set_title("cost per event vs cardinality")

    for row in axes:
        for ax in row:
            if not ax.has_data():
                ax.set_yscale("linear")
                ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes, color="grey")
                ax.set_xticks([])
                ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(dst, dpi=90)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
