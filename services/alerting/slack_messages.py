"""Slack message content (Block Kit inside a coloured attachment) for alerts, repeats and resolutions."""

from __future__ import annotations

import string
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from services.alerting.records import Anomaly

# The attachment's colour bar is the only way Slack colours a message.
SEVERITY_COLORS = {"critical": "#E01E5A", "warning": "#ECB22E", "resolved": "#2EB67D"}
KIND_TITLES = {
    "ctr_high": "CTR above expected",
    "ctr_low": "CTR below expected",
    "traffic_drop": "Traffic drop",
    "sales_spike": "Sales spike",
    "resolved": "Resolved",
}
# Message metadata carries the anomaly_id so a restart can find a message it is unsure it posted.
METADATA_EVENT_TYPE = "adclick_anomaly_alert"
SQL_LOOKBACK_MS = 3_600_000


@dataclass(frozen=True)
class SlackMessage:
    text: str  # notification / fallback text; webhooks and screen readers show only this
    attachments: list[dict[str, Any]]
    metadata: dict[str, Any]


def escape_mrkdwn(text: str) -> str:
    """Slack's required escaping; keeps a key like `<!channel>` from pinging anyone."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def format_value(kind: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    if kind.startswith("ctr"):
        return f"{value:.3%}"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.4g}"


def format_window(anomaly: Anomaly) -> str:
    if anomaly.window_start is None or anomaly.window_end is None:
        return "n/a"
    start = datetime.fromtimestamp(anomaly.window_start / 1000, UTC)
    end = datetime.fromtimestamp(anomaly.window_end / 1000, UTC)
    return f"{start:%Y-%m-%d %H:%M:%S} to {end:%H:%M:%S} UTC"


def _sql_literal(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("'", "\\'")


def anomaly_sql(anomaly: Anomaly, template: str) -> str:
    """The query that shows the anomaly's data; unknown placeholders are left as written."""
    start = anomaly.window_start or 0
    values = {
        "anomaly_id": anomaly.anomaly_id,
        "kind": anomaly.kind,
        "key_type": anomaly.key_type,
        "key": anomaly.key,
        "window_start": start,
        "window_end": anomaly.window_end or 0,
        "from_ms": max(0, start - SQL_LOOKBACK_MS),
        "to_ms": anomaly.window_end or 0,
    }
    safe = {k: _sql_literal(v) for k, v in values.items()}
    return string.Formatter().vformat(template, (), _KeepUnknown(safe))


class _KeepUnknown(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _where(anomaly: Anomaly) -> str:
    return f"{anomaly.key_type} `{escape_mrkdwn(anomaly.key)}`"


def _title(anomaly: Anomaly) -> str:
    return KIND_TITLES.get(anomaly.kind, anomaly.kind)


def _metadata(anomaly: Anomaly) -> dict[str, Any]:
    return {"event_type": METADATA_EVENT_TYPE, "event_payload": {"anomaly_id": anomaly.anomaly_id}}


def _sql_block(anomaly: Anomaly, sql_template: str, query_url: str | None) -> dict[str, Any]:
    sql = anomaly_sql(anomaly, sql_template)
    text = f"*See it:*\n```{escape_mrkdwn(sql)}```"
    if query_url:
        text += f"\n<{query_url}?{urlencode({'sql': sql})}|Run this query>"
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def alert_message(
    anomaly: Anomaly, sql_template: str, query_url: str | None, *, resolved_by: Anomaly | None = None
) -> SlackMessage:
    """The top-level message of an alert; with `resolved_by`, the same message marked resolved."""
    severity = anomaly.severity or "warning"
    observed = format_value(anomaly.kind, anomaly.observed)
    expected = format_value(anomaly.kind, anomaly.expected)
    state = "RESOLVED" if resolved_by else severity.upper()
    headline = f"{state}: {_title(anomaly)} on {anomaly.key_type} {anomaly.key}"
    text = f"{headline}: observed {observed} vs expected {expected}"
    score = f"{anomaly.score:.2f}" if anomaly.score is not None else "n/a"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": headline[:150]}},
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": f"*What:*\n{_title(anomaly)} ({anomaly.direction or 'n/a'})"},
                {"type": "mrkdwn", "text": f"*Where:*\n{_where(anomaly)}"},
                {"type": "mrkdwn", "text": f"*Observed:*\n{observed}"},
                {"type": "mrkdwn", "text": f"*Expected:*\n{expected}"},
                {"type": "mrkdwn", "text": f"*Severity:*\n{severity} (score {score})"},
                {"type": "mrkdwn", "text": f"*Window:*\n{format_window(anomaly)}"},
            ],
        },
        _sql_block(anomaly, sql_template, query_url),
    ]
    context = f"anomaly_id `{escape_mrkdwn(anomaly.anomaly_id)}`"
    if resolved_by is not None:
        context += f" · resolved by `{escape_mrkdwn(resolved_by.anomaly_id)}`"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    color = SEVERITY_COLORS["resolved" if resolved_by else severity]
    return SlackMessage(text, [{"color": color, "fallback": text, "blocks": blocks}], _metadata(anomaly))


def repeat_message(anomaly: Anomaly, *, reopened: bool) -> SlackMessage:
    """A thread reply: the same key fired again within the cooldown."""
    lead = "Fired again after being resolved" if reopened else "Still firing"
    text = (
        f"{lead}: {_title(anomaly)} on {anomaly.key_type} {anomaly.key}: observed "
        f"{format_value(anomaly.kind, anomaly.observed)} vs expected "
        f"{format_value(anomaly.kind, anomaly.expected)} ({anomaly.severity}, {format_window(anomaly)})"
    )
    mrkdwn = (
        f"*{lead}:* {_title(anomaly)} on {_where(anomaly)}: observed "
        f"*{format_value(anomaly.kind, anomaly.observed)}* vs expected "
        f"{format_value(anomaly.kind, anomaly.expected)} · {anomaly.severity} · {format_window(anomaly)}"
        f" · `{escape_mrkdwn(anomaly.anomaly_id)}`"
    )
    color = SEVERITY_COLORS.get(anomaly.severity or "warning", SEVERITY_COLORS["warning"])
    block = {"type": "section", "text": {"type": "mrkdwn", "text": mrkdwn}}
    return SlackMessage(text, [{"color": color, "fallback": text, "blocks": [block]}], _metadata(anomaly))


def resolved_message(resolution: Anomaly, resolved: Anomaly | None) -> SlackMessage:
    """A thread reply or (webhook, or no message to update) a standalone message."""
    what = f"{_title(resolved)} on " if resolved else ""
    text = f"RESOLVED: {what}{resolution.key_type} {resolution.key}"
    mrkdwn = (
        f"*Resolved:* {what}{_where(resolution)} · alert `{escape_mrkdwn(resolution.resolves or '')}`"
        f" · {format_window(resolution)}"
    )
    block = {"type": "section", "text": {"type": "mrkdwn", "text": mrkdwn}}
    attachment = {"color": SEVERITY_COLORS["resolved"], "fallback": text, "blocks": [block]}
    return SlackMessage(text, [attachment], _metadata(resolution))
