"""The report's figure: CTR per campaign with anomalies marked, CTR by device, experiment lift with
95% confidence intervals. matplotlib's object API (a Figure, no pyplot): no display and no global
state are needed (servers, CI, containers)."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path

import matplotlib.dates as mdates
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import PercentFormatter

from services.report.data import Anomaly, Readout, ReportData, Series

# More lines than this stop being readable: the campaigns with the most impressions get one.
MAX_CAMPAIGN_LINES = 8
SIGNIFICANCE = 0.05
SRM_ALARM = 0.001  # the usual threshold: below it, the split itself is broken
GREEN, RED, GREY = "#2e7d32", "#c62828", "#757575"


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _bucket(data: ReportData) -> str:
    minutes = data.bucket_ms // 60_000
    return f"{minutes}-min" if minutes < 60 else f"{minutes // 60}-hour"


def _time_axis(ax: Axes, data: ReportData) -> None:
    ax.set_xlim(_dt(data.since_ms), _dt(data.until_ms))
    span_h = (data.until_ms - data.since_ms) / 3_600_000
    fmt = "%H:%M" if span_h <= 36 else "%m-%d %H:%M"
    ax.xaxis.set_major_formatter(mdates.DateFormatter(fmt, tz=UTC))
    ax.set_xlabel("event time (UTC)")
    ax.grid(alpha=0.3)


def _placeholder(ax: Axes, text: str) -> None:
    ax.text(
        0.5,
        0.5,
        "\n".join(textwrap.wrap(text, 70)),
        ha="center",
        va="center",
        transform=ax.transAxes,
        color=GREY,
        fontsize=11,
    )
    ax.set_xticks([])
    ax.set_yticks([])


def _percent(ax: Axes) -> None:
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=1))


def _campaigns(ax: Axes, data: ReportData) -> None:
    ax.set_title(
        f"CTR per campaign ({_bucket(data)} buckets of event-time windows); markers: anomalies", loc="left"
    )
    if "campaigns" in data.errors:
        return _placeholder(ax, f"unavailable: {data.errors['campaigns']}")
    if not data.campaign_ctr:
        return _placeholder(ax, "no campaign windows in this time range")
    shown = sorted(data.campaign_ctr, key=lambda s: -s.weight)[:MAX_CAMPAIGN_LINES]
    colors: dict[str, str] = {}
    for s in sorted(shown, key=lambda s: s.name):
        (line,) = ax.plot([_dt(t) for t in s.t_ms], s.values, lw=1.2, label=s.name)
        colors[s.name] = line.get_color()
    hidden = len(data.campaign_ctr) - len(shown)
    _mark_anomalies(ax, data.anomalies, {s.name: s for s in shown}, colors)
    handles, _ = ax.get_legend_handles_labels()
    handles += [
        Line2D([], [], ls="", marker="^", mec=RED, mfc="white", mew=2, ms=8, label="anomaly: CTR high"),
        Line2D([], [], ls="", marker="v", mec=RED, mfc="white", mew=2, ms=8, label="anomaly: CTR low / drop"),
    ]
    ax.legend(handles=handles, fontsize=8, ncol=2, loc="upper left", framealpha=0.85)
    if hidden:
        ax.text(
            1.0,
            1.01,
            f"{hidden} smaller campaigns not drawn",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=8,
            color=GREY,
        )
    _percent(ax)
    _time_axis(ax, data)


def _mark_anomalies(
    ax: Axes, anomalies: list[Anomaly], shown: dict[str, Series], colors: dict[str, str]
) -> None:
    """A marker on the campaign's own line at each anomalous bucket. One label per campaign and
    kind, at its most extreme marker, so an incident reads as one event, not a row of captions."""
    extreme: dict[tuple[str, str], tuple[int, float]] = {}
    for a in anomalies:
        s = shown.get(a.key)
        if s is None or a.t_ms not in s.t_ms:
            continue  # a campaign without a line: listed in the HTML page
        y = s.values[s.t_ms.index(a.t_ms)]
        high = a.kind == "ctr_high"
        ax.plot(
            [_dt(a.t_ms)],
            [y],
            ls="",
            marker="^" if high else "v",
            ms=9 if a.severity == "critical" else 7,
            mfc="white",
            mec=RED,
            mew=2,
            zorder=5,
        )
        best = extreme.get((a.key, a.kind))
        if best is None or (y > best[1] if high else y < best[1]):
            extreme[(a.key, a.kind)] = (a.t_ms, y)
    for (key, kind), (t_ms, y) in extreme.items():
        ax.annotate(
            f"{key}: {kind}",
            (_dt(t_ms), y),
            xytext=(8, 6 if kind == "ctr_high" else -14),
            textcoords="offset points",
            fontsize=8,
            color=colors.get(key, RED),
            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": RED, "lw": 0.6},
        )


def _devices(ax: Axes, data: ReportData) -> None:
    ax.set_title(f"CTR by device ({_bucket(data)} buckets)", loc="left")
    if "devices" in data.errors:
        return _placeholder(ax, f"unavailable: {data.errors['devices']}")
    if not data.device_ctr:
        return _placeholder(ax, "no device windows in this time range")
    for s in data.device_ctr:
        ax.plot([_dt(t) for t in s.t_ms], s.values, lw=1.2, label=f"{s.name} ({s.weight:,.0f} impr.)")
    ax.legend(fontsize=8, loc="upper left", framealpha=0.85)
    _percent(ax)
    _time_axis(ax, data)


def _lift_label(r: Readout) -> str:
    rel = "" if r.lift_rel is None else f" ({r.lift_rel:+.1%})"
    return f"{r.lift_abs * 100:+.2f} pp{rel}, p={r.p_value:.3g}"


def _experiments(ax: Axes, data: ReportData) -> None:
    ax.set_title("Experiment lift vs control (conversion rate), 95% CI", loc="left")
    if "experiments" in data.errors:
        return _placeholder(ax, f"unavailable: {data.errors['experiments']}")
    if not data.readouts:
        return _placeholder(ax, "no experiment readouts yet")
    rows = list(reversed(data.readouts))  # first readout at the top
    for i, r in enumerate(rows):
        if r.ci_low > 0 and r.p_value < SIGNIFICANCE:
            color = GREEN
        elif r.ci_high < 0 and r.p_value < SIGNIFICANCE:
            color = RED
        else:
            color = GREY
        x = r.lift_abs * 100
        ax.errorbar(
            [x],
            [i],
            xerr=[[x - r.ci_low * 100], [r.ci_high * 100 - x]],
            fmt="o",
            color=color,
            capsize=5,
            lw=2,
            ms=7,
        )
        ax.annotate(
            _lift_label(r),
            (r.ci_high * 100, i),
            xytext=(8, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
            color=color,
        )
        if r.srm_p_value < SRM_ALARM:
            ax.annotate(
                f"sample ratio mismatch (p={r.srm_p_value:.2g}): lift not trustworthy",
                (r.lift_abs * 100, i),
                xytext=(0, -14),
                textcoords="offset points",
                ha="center",
                fontsize=8,
                color=RED,
            )
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(
        range(len(rows)),
        [f"{r.experiment}\n{r.variation} (n={r.users:,} vs {r.control_users:,})" for r in rows],
        fontsize=8,
    )
    ax.set_ylim(-0.8, len(rows) - 0.2)
    lo = min(r.ci_low for r in rows) * 100
    hi = max(r.ci_high for r in rows) * 100
    pad = max(hi - lo, 0.1) * 0.6  # room on the right for the labels
    ax.set_xlim(min(lo, 0) - pad * 0.3, max(hi, 0) + pad)
    ax.set_xlabel("absolute lift of the conversion rate (percentage points)")
    ax.grid(axis="x", alpha=0.3)


def render_png(data: ReportData, path: Path, title: str) -> Path:
    fig = Figure(figsize=(15, 11), dpi=100, layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=[1.15, 1])
    _campaigns(fig.add_subplot(grid[0, :]), data)
    _devices(fig.add_subplot(grid[1, 0]), data)
    _experiments(fig.add_subplot(grid[1, 1]), data)
    span = f"{_dt(data.since_ms):%Y-%m-%d %H:%M} to {_dt(data.until_ms):%Y-%m-%d %H:%M} UTC"
    fig.suptitle(f"{title}\n{span}", fontsize=13)
    fig.savefig(path, format="png")
    return path
