-- Anomalies found by the anomaly service and the alerting service's Slack delivery attempts.
-- Idempotent like 0001: ReplacingMergeTree on the natural key, partition key derived from the row.

-- One row per anomaly event (kind "resolved" included), from the `anomalies` topic. anomaly_id is
-- stable (sha1 of kind, key and window_start), so a redelivered event replaces its twin.
-- Columns an event kind does not have are NULL (numbers) or '' (strings): a "resolved" event has
-- no observed/expected/score/direction/severity; only "resolved" has resolves and reason.
CREATE TABLE IF NOT EXISTS fct_anomaly
(
    anomaly_id   String,
    kind         LowCardinality(String),
    key_type     LowCardinality(String),
    key          String,
    window_start DateTime64(3, 'UTC'),
    window_end   DateTime64(3, 'UTC'),
    observed     Nullable(Float64),
    expected     Nullable(Float64),
    score        Nullable(Float64),
    direction    LowCardinality(String),
    severity     LowCardinality(String),
    incident_id  String,
    supersedes   String,
    resolves     String,
    reason       LowCardinality(String),
    detected_at  DateTime64(3, 'UTC'),
    recorded_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(window_start)
ORDER BY anomaly_id
SETTINGS non_replicated_deduplication_window = 1000;

-- One row per delivery attempt or final status, from the `alert-deliveries` topic (see
-- services/alerting/records.py delivery_record). A record's own time is part of the key: two real
-- attempts never collapse into one, and a replayed record (byte-identical) replaces its twin.
CREATE TABLE IF NOT EXISTS fct_alert
(
    anomaly_id  String,
    attempt     UInt32,
    status      LowCardinality(String),
    http_status Nullable(UInt16),
    error       String,
    slack_ts    String,
    channel     String,
    at          DateTime64(3, 'UTC'),
    recorded_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (anomaly_id, at, attempt, status)
SETTINGS non_replicated_deduplication_window = 1000;
