"""Settings of the alerting service only (Slack delivery); documented in .env.example."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SQL_TEMPLATE = (
    "SELECT * FROM fct_anomaly WHERE key_type = '{key_type}' AND key = '{key}' "
    "AND window_start >= fromUnixTimestamp64Milli({from_ms}) ORDER BY window_start"
)


class AlertingSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True
    )

    # --- where alerts go ----------------------------------------------------------------------
    # Bot token (chat.postMessage + chat.update + threads) wins over the webhook when both are set.
    slack_bot_token: SecretStr | None = None
    # Incoming webhook: one message per alert, no threads or updates (Slack returns no ts).
    slack_webhook_url: SecretStr | None = None
    slack_channel: str = "#ad-alerts"
    slack_base_url: str = "https://slack.com/api/"
    # Per HTTP call; a call that takes longer counts as a failed attempt with unknown outcome.
    slack_timeout_seconds: float = Field(10.0, gt=0)

    # --- folding and dedup --------------------------------------------------------------------
    # A new anomaly for a key within this long (event time, from the key's last top-level
    # message) is a thread reply to that message instead of a new message.
    alert_cooldown_ms: int = Field(900_000, ge=0)
    # Delivered alerts are remembered (dedup by anomaly_id) this long (wall clock), then dropped.
    alert_retention_ms: int = Field(7 * 86_400_000, ge=60_000)

    # --- retries ------------------------------------------------------------------------------
    # Delay before retry n (n = 1, 2, ...) is base * 2**(n-1), capped, +- jitter; 429 uses Retry-After.
    alert_retry_base_seconds: float = Field(1.0, gt=0)
    alert_retry_max_seconds: float = Field(300.0, gt=0)
    alert_retry_jitter: float = Field(0.1, ge=0, le=1)
    # Retry-After values above this are capped (a broken proxy must not park alerts for days).
    alert_retry_after_max_seconds: float = Field(3600.0, gt=0)
    # A transiently failing alert is given up (failed_permanent) this long after it arrived;
    # 0 = retry until delivered, however long Slack is down.
    alert_give_up_after_ms: int = Field(86_400_000, ge=0)
    # The background delivery loop wakes at least this often (new anomalies wake it at once).
    alert_delivery_poll_seconds: float = Field(2.0, gt=0)

    # --- message content ----------------------------------------------------------------------
    # SQL shown in the message; placeholders: {anomaly_id} {kind} {key_type} {key} {window_start}
    # {window_end} {from_ms} (window_start - 1 h) {to_ms}; values are quoted for SQL strings.
    alert_sql_template: str = DEFAULT_SQL_TEMPLATE
    # If set, messages link to it with ?sql=<the query> (e.g. the warehouse's GET /query).
    alert_query_url: str | None = None

    alerting_web_port: int = 6071

    def secret_values(self) -> list[str]:
        """The secret strings (and the webhook's path, the secret part of its URL), for redaction."""
        secrets: list[str] = []
        if self.slack_bot_token is not None:
            secrets.append(self.slack_bot_token.get_secret_value())
        if self.slack_webhook_url is not None:
            url = self.slack_webhook_url.get_secret_value()
            secrets.append(url)
            path = url.split("://", 1)[-1].partition("/")[2]
            if path:
                secrets.append("/" + path)
        return [s for s in secrets if len(s) >= 4]


@lru_cache(maxsize=1)
def get_alerting_settings() -> AlertingSettings:
    return AlertingSettings()
