-- Facts of the engagement service (topic engagement-metrics, one table per record "metric").
-- Idempotent like 0001: ReplacingMergeTree(version) on the natural key, the partition key derived
-- from the row, so a replayed or updated window replaces its twin (query with FINAL).

CREATE TABLE IF NOT EXISTS fct_device_engagement
(
    device_type  String,
    window_start DateTime64(3, 'UTC'),
    window_end   DateTime64(3, 'UTC'),
    impressions  UInt64,
    clicks       UInt64,
    ctr          Float64,
    unique_users UInt64,
    conversions  UInt64,
    version      UInt64,
    emitted_at   DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (device_type, window_start)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS fct_user
(
    user_id      String,
    window_start DateTime64(3, 'UTC'),
    window_end   DateTime64(3, 'UTC'),
    views        UInt64,
    clicks       UInt64,
    purchases    UInt64,
    sessions     UInt64,
    first_seen   DateTime64(3, 'UTC'),
    last_seen    DateTime64(3, 'UTC'),
    version      UInt64,
    emitted_at   DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (user_id, window_start)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS fct_item
(
    item_id         String,
    window_start    DateTime64(3, 'UTC'),
    window_end      DateTime64(3, 'UTC'),
    views           UInt64,
    clicks          UInt64,
    add_to_carts    UInt64,
    purchases       UInt64,
    conversion_rate Float64,
    version         UInt64,
    emitted_at      DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (item_id, window_start)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS fct_experiment
(
    experiment      String,
    variation       String,
    window_start    DateTime64(3, 'UTC'),
    window_end      DateTime64(3, 'UTC'),
    users           UInt64,
    conversions     UInt64,
    conversion_rate Float64,
    version         UInt64,
    emitted_at      DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (experiment, variation, window_start)
SETTINGS non_replicated_deduplication_window = 1000;

-- The cumulative readout per experiment and variation: one row each after FINAL, the newest
-- (version = wall-clock microseconds of emission, strictly increasing).
CREATE TABLE IF NOT EXISTS fct_experiment_readout
(
    experiment          String,
    variation           String,
    as_of               DateTime64(3, 'UTC'),
    users               UInt64,
    conversions         UInt64,
    conversion_rate     Float64,
    control_users       UInt64,
    control_conversions UInt64,
    z                   Float64,
    p_value             Float64,
    lift_abs            Float64,
    lift_rel            Nullable(Float64),
    ci_low              Float64,
    ci_high             Float64,
    srm_chi2            Float64,
    srm_p_value         Float64,
    version             UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (experiment, variation)
SETTINGS non_replicated_deduplication_window = 1000;
