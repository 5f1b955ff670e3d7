-- Facts the skeleton mesh writes. ReplacingMergeTree + ORDER BY the natural key makes every
-- write idempotent: replays and late updates leave one row per key after FINAL / merges.
-- A row's partition key is derived from the row itself, so a replayed row replaces its twin
-- (ReplacingMergeTree only collapses rows within one partition).

CREATE TABLE IF NOT EXISTS fct_campaign_ctr
(
    campaign_id  String,
    window_start DateTime64(3, 'UTC'),
    window_end   DateTime64(3, 'UTC'),
    impressions  UInt64,
    clicks       UInt64,
    ctr          Float64,
    cost         Float64,
    cpc          Float64,
    cpm          Float64,
    version      UInt64,
    emitted_at   DateTime64(3, 'UTC'),
    updated_at   DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (campaign_id, window_start)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS fct_dead_letter
(
    source           String,
    source_topic     LowCardinality(String),
    source_partition UInt32,
    source_offset    UInt64,
    stage            LowCardinality(String),
    reason           LowCardinality(String),
    detail           String,
    message_key      String,
    payload          String,
    dead_lettered_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY source
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS fct_late_event
(
    stage        LowCardinality(String),
    source       String,
    kind         LowCardinality(String),
    event_id     String,
    campaign_id  String,
    event_time   DateTime64(3, 'UTC'),
    window_start DateTime64(3, 'UTC'),
    watermark    DateTime64(3, 'UTC'),
    recorded_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (stage, source)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS fct_discarded_event
(
    reason        LowCardinality(String),
    source        String,
    kind          LowCardinality(String),
    event_id      String,
    impression_id String,
    event_time    DateTime64(3, 'UTC'),
    recorded_at   DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (source, reason)
SETTINGS non_replicated_deduplication_window = 1000;
