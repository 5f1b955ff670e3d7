"""All configuration, read from the environment and `.env` (every field is documented in .env.example)."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True
    )

    # --- Kafka -----------------------------------------------------------------------------
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    # Prepended to every topic name and app id: lets several meshes (or test runs) share one broker.
    topic_prefix: str = ""
    topic_partitions: int = Field(3, ge=1)
    topic_replication_factor: int = Field(1, ge=1)
    # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: str = "PLAIN"
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str = ""
    kafka_ssl_certfile: str = ""
    kafka_ssl_keyfile: str = ""

    # --- ClickHouse ------------------------------------------------------------------------
    # chdb:///abs/path (embedded, owned by the warehouse service) or http(s)://user:pass@host:8123/db
    clickhouse_dsn: SecretStr = SecretStr("chdb://./data/chdb")
    # For https:// DSNs: CA bundle to verify the server with, and whether to verify at all.
    clickhouse_ca_cert: str = ""
    clickhouse_verify_tls: bool = True
    warehouse_batch_rows: int = Field(5000, ge=1)
    warehouse_batch_seconds: float = Field(0.25, gt=0)
    # ...or as soon as nothing arrived for this long: the results of closing windows come in a
    # burst, and waiting out the 0.25 s after it was the largest part of their latency.
    warehouse_batch_quiet_seconds: float = Field(0.02, gt=0)

    # Local state (faust data dirs, the default chDB path).
    data_dir: str = "./data"
    # A worker whose table recovery applies nothing for this long stops, to be started again
    # (shared/recovery_watchdog.py): faust's recovery can stall after a quick rebalance.
    recovery_stall_timeout_ms: int = Field(120_000, ge=10_000)

    # --- event time ------------------------------------------------------------------------
    window_size_ms: int = Field(60_000, ge=1)
    watermark_delay_ms: int = Field(3_000, ge=0)
    allowed_lateness_ms: int = Field(30_000, ge=0)
    # Wall-clock quiet time after which a partition's open windows are closed anyway.
    idle_flush_timeout_ms: int = Field(10_000, ge=100)
    # A raw partition with nothing left to read for this long no longer holds the watermark back.
    source_idle_timeout_ms: int = Field(10_000, ge=100)
    # How long a click waits (event time) for its impression before it is an orphan.
    join_window_ms: int = Field(600_000, ge=0)
    # How long ids are remembered (event time) for dedup and for joining later clicks.
    dedup_ttl_ms: int = Field(3_600_000, ge=1)
    # Events stamped further ahead of the wall clock than this are rejected as absurd.
    max_future_skew_ms: int = Field(3_600_000, ge=0)
    # Events older than this (epoch ms) are rejected as absurd: 2000-01-01.
    min_event_timestamp_ms: int = 946_684_800_000
    max_event_bytes: int = Field(65_536, ge=256)

    # --- services --------------------------------------------------------------------------
    web_host: str = "127.0.0.1"
    ingest_web_port: int = 6066
    ctr_web_port: int = 6067
    warehouse_web_port: int = 6068
    generator_web_port: int = 6069
    engagement_web_port: int = 6072
    batch_max_events: int = Field(2000, ge=1)
    batch_within_seconds: float = Field(0.02, gt=0)  # see .env.example
    consumer_fetch_max_wait_ms: int = Field(50, ge=1)  # see shared/consumer_fetch.py
    log_level: str = "info"
    # text (human, coloured on a terminal) | json (one object per line, for log shippers)
    log_format: Literal["text", "json"] = "text"

    # --- generator -------------------------------------------------------------------------
    event_rate: float = Field(50.0, gt=0)
    click_ratio: float = Field(0.1, ge=0, le=1)
    generator_campaigns: int = Field(10, ge=1)
    generator_ads: int = Field(50, ge=1)
    generator_users: int = Field(5000, ge=1)
    generator_seed: int | None = None

    # --- read-only query endpoint of the warehouse -------------------------------------------
    query_token: SecretStr | None = None

    def secret_values(self) -> list[str]:
        """Secret strings of these settings, for redaction from logs."""
        secrets = [s.get_secret_value() for s in (self.kafka_sasl_password, self.query_token) if s]
        password = urlsplit(self.clickhouse_dsn.get_secret_value()).password
        if password:
            secrets.append(password)
        return [s for s in secrets if len(s) >= 4]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
