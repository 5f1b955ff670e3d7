"""The report's HTML page: the PNG embedded (one self-contained file to mail or archive) and the
numbers behind its annotations as tables."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from html import escape
from pathlib import Path

from services.report.data import ReportData

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
img { max-width: 100%; border: 1px solid #ddd; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
.warn { color: #c62828; }
"""


def _ts(ms: int) -> str:
    return f"{datetime.fromtimestamp(ms / 1000, tz=UTC):%Y-%m-%d %H:%M} UTC"


def _table(headers: list[str], rows: list[list[str]], left: int = 1) -> str:
    def cells(tag: str, values: list[str]) -> str:
        return "".join(
            f"<{tag}{' class=l' if i < left else ''}>{escape(v)}</{tag}>" for i, v in enumerate(values)
        )

    body = "".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    return f"<table><tr>{cells('th', headers)}</tr>{body}</table>"


def render_html(data: ReportData, png: Path, path: Path, title: str) -> Path:
    image = base64.b64encode(png.read_bytes()).decode()
    parts = [
        f"<!doctype html><html><head><meta charset=utf-8><title>{escape(title)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1><p>{_ts(data.since_ms)} to {_ts(data.until_ms)}</p>",
    ]
    if data.errors:
        items = "".join(f"<li>{escape(k)}: {escape(v)}</li>" for k, v in sorted(data.errors.items()))
        parts.append(f"<p class=warn>Sections that could not be loaded:</p><ul class=warn>{items}</ul>")
    parts.append(
        f'<img alt="CTR per campaign, CTR by device, experiment lift" src="data:image/png;base64,{image}">'
    )
    if data.readouts:
        parts.append("<h2>Experiments (latest readout, vs control)</h2>")
        parts.append(
            _table(
                [
                    "experiment",
                    "variation",
                    "users",
                    "control users",
                    "conversion rate",
                    "lift",
                    "relative lift",
                    "95% CI",
                    "p-value",
                    "SRM p-value",
                ],
                [
                    [
                        r.experiment,
                        r.variation,
                        f"{r.users:,}",
                        f"{r.control_users:,}",
                        f"{r.conversion_rate:.2%}",
                        f"{r.lift_abs * 100:+.2f} pp",
                        "-" if r.lift_rel is None else f"{r.lift_rel:+.1%}",
                        f"[{r.ci_low * 100:+.2f}, {r.ci_high * 100:+.2f}] pp",
                        f"{r.p_value:.3g}",
                        f"{r.srm_p_value:.3g}",
                    ]
                    for r in data.readouts
                ],
                left=2,
            )
        )
    if data.anomalies:
        parts.append(f"<h2>Campaign anomalies ({len(data.anomalies)} windows)</h2>")
        parts.append(
            _table(
                ["window", "campaign", "kind", "severity", "score"],
                [
                    [
                        _ts(a.window_ms),
                        a.key,
                        a.kind,
                        a.severity,
                        "-" if a.score is None else f"{a.score:.1f}",
                    ]
                    for a in data.anomalies[-200:]
                ],
                left=4,
            )
        )
    parts.append("</body></html>\n")
    path.write_text("".join(parts), encoding="utf-8")
    return path
