CREATE TABLE IF NOT EXISTS events_local ON CLUSTER `analytics` (
    tenant LowCardinality(String),
    event_id String,
    id_given Bool,
    type LowCardinality(String),
    ts DateTime64(6, 'UTC'),
    ts_text String,
    workflow_id Nullable(String),
    execution_id Nullable(String),
    customer_id Nullable(String),
    journey_id Nullable(String),
    node_id Nullable(String),
    channel Nullable(String),
    workflow_name Nullable(String),
    duration_ms Nullable(Int64),
    error_type Nullable(String),
    error_message Nullable(String),
    node_type Nullable(String),
    message_id Nullable(String),
    csat Nullable(Int8),
    nps Nullable(Int8),
    comment Nullable(String),
    segment Nullable(String),
    traits Nullable(String),
    journey_type Nullable(String),
    step Nullable(Int8),
    step_name Nullable(String),
    reason Nullable(String),
    properties Nullable(String),
    ingested_at DateTime64(6, 'UTC'),
    -- Queries and folds look for what was ingested after the fold's watermark: old
    -- parts are skipped whole.
    INDEX ingested ingested_at TYPE minmax GRANULARITY 1
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/events', '{replica}')
PARTITION BY toYYYYMM(ts)
ORDER BY (tenant, type, ts, event_id)
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1, merge_selector_base = 10, min_age_to_force_merge_seconds = 3600, min_age_to_force_merge_on_partition_only = 1;

ALTER TABLE events_local ON CLUSTER `analytics` ADD INDEX IF NOT EXISTS ingested ingested_at TYPE minmax GRANULARITY 1;

CREATE TABLE IF NOT EXISTS event_ids_local ON CLUSTER `analytics` (
    tenant LowCardinality(String),
    event_id String
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/event_ids', '{replica}')
ORDER BY (tenant, event_id)
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1, merge_selector_base = 10;

CREATE MATERIALIZED VIEW IF NOT EXISTS event_ids_mv ON CLUSTER `analytics` TO event_ids_local
AS SELECT tenant, event_id FROM events_local;

CREATE TABLE IF NOT EXISTS workflows_local ON CLUSTER `analytics` (
    tenant LowCardinality(String),
    workflow_id String,
    named SimpleAggregateFunction(max, UInt8),
    name AggregateFunction(argMax, String, DateTime64(6, 'UTC')),
    name_ts SimpleAggregateFunction(max, DateTime64(6, 'UTC')),
    created_at SimpleAggregateFunction(min, DateTime64(6, 'UTC'))
) ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/{database}/workflows', '{replica}')
ORDER BY (tenant, workflow_id)
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1, merge_selector_base = 10;

DROP VIEW IF EXISTS workflows_mv ON CLUSTER `analytics`;

CREATE TABLE IF NOT EXISTS executions_state_local ON CLUSTER `analytics` (
    tenant LowCardinality(String),
    execution_id String,
    has_s SimpleAggregateFunction(max, UInt8),
    has_c SimpleAggregateFunction(max, UInt8),
    has_f SimpleAggregateFunction(max, UInt8),
    s AggregateFunction(argMin, Tuple(DateTime64(6, 'UTC'), Nullable(Int64), Nullable(String), Nullable(String), Nullable(String), Nullable(String)), DateTime64(6, 'UTC')),
    c AggregateFunction(argMax, Tuple(DateTime64(6, 'UTC'), Nullable(Int64), Nullable(String), Nullable(String), Nullable(String), Nullable(String)), DateTime64(6, 'UTC')),
    f AggregateFunction(argMax, Tuple(DateTime64(6, 'UTC'), Nullable(Int64), Nullable(String), Nullable(String), Nullable(String), Nullable(String)), DateTime64(6, 'UTC')),
    nodes AggregateFunction(groupUniqArray, Tuple(String, String, String, DateTime64(6, 'UTC'), UInt8, Nullable(Int64)))
) ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/{database}/executions_state', '{replica}')
ORDER BY (tenant, execution_id)
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1, merge_selector_base = 10;

ALTER TABLE executions_state_local ON CLUSTER `analytics` ADD COLUMN IF NOT EXISTS nodes AggregateFunction(groupUniqArray, Tuple(String, String, String, DateTime64(6, 'UTC'), UInt8, Nullable(Int64)));

CREATE MATERIALIZED VIEW IF NOT EXISTS executions_state_mv ON CLUSTER `analytics` TO executions_state_local
AS SELECT tenant, assumeNotNull(execution_id) AS execution_id,
    max(type = 'execution.started') AS has_s,
    max(type = 'execution.completed') AS has_c,
    max(type = 'execution.failed') AS has_f,
    argMinStateIf(_state, ts, type = 'execution.started') AS s,
    argMaxStateIf(_state, ts, type = 'execution.completed') AS c,
    argMaxStateIf(_state, ts, type = 'execution.failed') AS f,
    groupUniqArrayStateIf(_node, type IN ('node.completed', 'node.failed')) AS nodes
FROM (
    SELECT *, CAST((ts, duration_ms, workflow_id, channel, customer_id, error_type) AS Tuple(DateTime64(6, 'UTC'), Nullable(Int64), Nullable(String), Nullable(String), Nullable(String), Nullable(String)))
        AS _state,
        CAST((event_id, ifNull(node_id, ''), ifNull(node_type, ''), ts,
              type = 'node.completed', duration_ms) AS Tuple(String, String, String, DateTime64(6, 'UTC'), UInt8, Nullable(Int64))) AS _node
    FROM events_local WHERE type IN ('execution.started', 'execution.completed', 'execution.failed', 'node.completed', 'node.failed') AND execution_id IS NOT NULL
)
GROUP BY tenant, execution_id;

CREATE TABLE IF NOT EXISTS customers_state_local ON CLUSTER `analytics` (
    tenant LowCardinality(String),
    customer_id String,
    channel String,
    first_event SimpleAggregateFunction(min, DateTime64(6, 'UTC')),
    first_received SimpleAggregateFunction(min, Nullable(DateTime64(6, 'UTC')))
) ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/{database}/customers_state', '{replica}')
ORDER BY (tenant, customer_id, channel)
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1, merge_selector_base = 10;

CREATE MATERIALIZED VIEW IF NOT EXISTS customers_state_mv ON CLUSTER `analytics` TO customers_state_local
AS SELECT tenant, customer_id, ch AS channel, min(ts) AS first_event,
    minOrNullIf(ts, type = 'message.received') AS first_received
FROM (
    SELECT tenant, assumeNotNull(customer_id) AS customer_id, ts, type,
        if(channel IS NULL, [''], [assumeNotNull(channel), '']) AS chs
    FROM events_local WHERE customer_id IS NOT NULL
)
ARRAY JOIN chs AS ch
GROUP BY tenant, customer_id, ch;

CREATE TABLE IF NOT EXISTS executions_local ON CLUSTER `analytics` (
    tenant LowCardinality(String),
    workflow_id String,
    started_at DateTime64(6, 'UTC'),
    execution_id String,
    channel Nullable(String),
    customer_id Nullable(String),
    status UInt8,
    duration_ms Nullable(Int64),
    error_type Nullable(String),
    version UInt64,
    deleted UInt8,
    nodes Array(Tuple(String, String, String, DateTime64(6, 'UTC'), UInt8, Nullable(Int64))),
    customer_num UInt32
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/executions', '{replica}', version, deleted)
PARTITION BY toYYYYMM(started_at)
ORDER BY (tenant, workflow_id, started_at, execution_id)
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1, merge_selector_base = 10, min_age_to_force_merge_seconds = 3600, min_age_to_force_merge_on_partition_only = 1;

ALTER TABLE executions_local ON CLUSTER `analytics` ADD COLUMN IF NOT EXISTS nodes Array(Tuple(String, String, String, DateTime64(6, 'UTC'), UInt8, Nullable(Int64)));

ALTER TABLE executions_local ON CLUSTER `analytics` ADD COLUMN IF NOT EXISTS customer_num UInt32;

CREATE TABLE IF NOT EXISTS execution_keys_local ON CLUSTER `analytics` (
    tenant LowCardinality(String),
    execution_id String,
    workflow_id String,
    started_at DateTime64(6, 'UTC'),
    version UInt64
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/execution_keys', '{replica}', version)
ORDER BY (tenant, execution_id)
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1, merge_selector_base = 10;

CREATE TABLE IF NOT EXISTS message_slots_local ON CLUSTER `analytics` (
    tenant LowCardinality(String),
    workflow_id String,
    slot Int64,
    channel String,
    fold Int64,
    sent UInt64,
    received UInt64,
    csat_sum Int64,
    csat_n UInt64
) ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/{database}/message_slots', '{replica}')
PARTITION BY toYYYYMM(fromUnixTimestamp64Micro(-2208988800000000 + slot * 900000000, 'UTC'))
ORDER BY (tenant, workflow_id, slot, channel, fold)
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1, merge_selector_base = 10, min_age_to_force_merge_seconds = 3600, min_age_to_force_merge_on_partition_only = 1;

CREATE TABLE IF NOT EXISTS execution_log_local ON CLUSTER `analytics` (
    tenant LowCardinality(String),
    execution_id String,
    workflow_id String,
    started_at DateTime64(6, 'UTC'),
    channel Nullable(String),
    error_type Nullable(String),
    status UInt8,
    duration_ms Nullable(Int64),
    fold Int64,
    sign Int8,
    nodes Array(Tuple(String, String, String, DateTime64(6, 'UTC'), UInt8, Nullable(Int64)))
) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/execution_log', '{replica}')
PARTITION BY toYYYYMM(started_at)
ORDER BY (tenant, execution_id, fold)
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1, merge_selector_base = 10, min_age_to_force_merge_seconds = 3600, min_age_to_force_merge_on_partition_only = 1;

ALTER TABLE execution_log_local ON CLUSTER `analytics` ADD COLUMN IF NOT EXISTS nodes Array(Tuple(String, String, String, DateTime64(6, 'UTC'), UInt8, Nullable(Int64)));

ALTER TABLE execution_log_local ON CLUSTER `analytics` ADD INDEX IF NOT EXISTS folded fold TYPE minmax GRANULARITY 1;

ALTER TABLE execution_keys_local ON CLUSTER `analytics` ADD INDEX IF NOT EXISTS folded version TYPE minmax GRANULARITY 1;

CREATE TABLE IF NOT EXISTS execution_slots_local ON CLUSTER `analytics` (
    tenant LowCardinality(String),
    workflow_id String,
    slot Int64,
    channel String,
    error_type String,
    fold Int64,
    executions Int64, successful Int64, failed Int64, duration_sum Int64, durations Int64
) ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/{database}/execution_slots', '{replica}')
PARTITION BY toYYYYMM(fromUnixTimestamp64Micro(-2208988800000000 + slot * 900000000, 'UTC'))
ORDER BY (tenant, workflow_id, slot, channel, error_type, fold)
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1, merge_selector_base = 10, min_age_to_force_merge_seconds = 3600, min_age_to_force_merge_on_partition_only = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS execution_slots_mv ON CLUSTER `analytics` TO execution_slots_local
AS SELECT tenant, workflow_id,
    intDiv(toUnixTimestamp64Micro(started_at) - (-2208988800000000), 900000000) AS slot,
    ifNull(channel, '') AS channel, ifNull(error_type, '') AS error_type, fold,
    sum(toInt64(sign)) AS executions, sum(toInt64(sign) * (status = 1)) AS successful, sum(toInt64(sign) * (status = 2)) AS failed, sum(if(status > 0, toInt64(sign) * ifNull(duration_ms, 0), 0)) AS duration_sum, sum(if(status > 0 AND duration_ms IS NOT NULL, toInt64(sign), 0)) AS durations
FROM execution_log_local GROUP BY tenant, workflow_id, slot, channel, error_type, fold;

CREATE TABLE IF NOT EXISTS node_slots_local ON CLUSTER `analytics` (
    tenant LowCardinality(String),
    workflow_id String,
    slot Int64,
    channel String,
    node_id String,
    node_type LowCardinality(String),
    fold Int64,
    events Int64, ok Int64, failed Int64, dur_sum Int64, durs Int64
) ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/{database}/node_slots', '{replica}')
PARTITION BY toYYYYMM(fromUnixTimestamp64Micro(-2208988800000000 + slot * 900000000, 'UTC'))
ORDER BY (tenant, workflow_id, slot, channel, node_id, node_type, fold)
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1, merge_selector_base = 10, min_age_to_force_merge_seconds = 3600, min_age_to_force_merge_on_partition_only = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS node_slots_mv ON CLUSTER `analytics` TO node_slots_local
AS SELECT tenant, workflow_id,
    intDiv(toUnixTimestamp64Micro(started_at) - (-2208988800000000), 900000000) AS slot,
    ifNull(channel, '') AS channel, n.2 AS node_id, n.3 AS node_type, fold,
    sum(toInt64(sign)) AS events, sum(toInt64(sign) * n.5) AS ok, sum(toInt64(sign) * (1 - n.5)) AS failed, sum(if(n.6 IS NULL, 0, toInt64(sign) * n.6)) AS dur_sum, sum(if(n.6 IS NULL, 0, toInt64(sign))) AS durs
FROM execution_log_local ARRAY JOIN nodes AS n
GROUP BY tenant, workflow_id, slot, channel, node_id, node_type, fold;

CREATE TABLE IF NOT EXISTS sessions_local ON CLUSTER `analytics` (
    tenant LowCardinality(String),
    customer_id String,
    channel LowCardinality(String),
    first_ts DateTime64(6, 'UTC'),
    last_ts DateTime64(6, 'UTC'),
    size UInt64,
    fold Int64,
    sign Int8
) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/sessions', '{replica}')
PARTITION BY toYYYYMM(first_ts)
ORDER BY (tenant, customer_id, channel, first_ts, fold)
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1, merge_selector_base = 10, min_age_to_force_merge_seconds = 3600, min_age_to_force_merge_on_partition_only = 1;

CREATE TABLE IF NOT EXISTS session_starts_local ON CLUSTER `analytics` (
    tenant LowCardinality(String),
    customer_id String,
    channel LowCardinality(String),
    first_ts DateTime64(6, 'UTC'),
    last_ts DateTime64(6, 'UTC'),
    size UInt64,
    fold Int64,
    sign Int8
) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/session_starts', '{replica}')
PARTITION BY toYYYYMM(first_ts)
ORDER BY (tenant, first_ts, channel, fold)
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1, merge_selector_base = 10, min_age_to_force_merge_seconds = 3600, min_age_to_force_merge_on_partition_only = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS session_starts_mv ON CLUSTER `analytics` TO session_starts_local
AS SELECT * FROM sessions_local;

CREATE TABLE IF NOT EXISTS session_slots_local ON CLUSTER `analytics` (
    tenant LowCardinality(String),
    slot Int64,
    channel LowCardinality(String),
    fold Int64,
    sessions Int64,
    duration_us Int64,
    messages Int64
) ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/{database}/session_slots', '{replica}')
PARTITION BY toYYYYMM(fromUnixTimestamp64Micro(-2208988800000000 + slot * 900000000, 'UTC'))
ORDER BY (tenant, slot, channel, fold)
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1, merge_selector_base = 10, min_age_to_force_merge_seconds = 3600, min_age_to_force_merge_on_partition_only = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS session_slots_mv ON CLUSTER `analytics` TO session_slots_local
AS SELECT tenant, intDiv(toUnixTimestamp64Micro(first_ts) - (-2208988800000000), 900000000) AS slot,
    channel, fold, sum(sign) AS sessions,
    sum(sign * (toUnixTimestamp64Micro(last_ts) - toUnixTimestamp64Micro(first_ts))) AS duration_us,
    sum(sign * toInt64(size)) AS messages
FROM sessions_local GROUP BY tenant, slot, channel, fold;

CREATE TABLE IF NOT EXISTS journeys_state_local ON CLUSTER `analytics` (
    tenant LowCardinality(String),
    journey_id String,
    evs AggregateFunction(groupUniqArray, Tuple(String, DateTime64(6, 'UTC'), String, Nullable(String), Nullable(Int8), Nullable(String), Nullable(String)))
) ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/{database}/journeys_state', '{replica}')
ORDER BY (tenant, journey_id)
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1, merge_selector_base = 10;

CREATE MATERIALIZED VIEW IF NOT EXISTS journeys_state_mv ON CLUSTER `analytics` TO journeys_state_local
AS SELECT tenant, assumeNotNull(journey_id) AS journey_id,
    groupUniqArrayState(CAST((event_id, ts, type, journey_type, step, step_name, reason)
        AS Tuple(String, DateTime64(6, 'UTC'), String, Nullable(String), Nullable(Int8), Nullable(String), Nullable(String)))) AS evs
FROM events_local WHERE type IN ('journey.step', 'journey.completed', 'journey.dropped') AND journey_id IS NOT NULL
GROUP BY tenant, journey_id;

CREATE TABLE IF NOT EXISTS journeys_local ON CLUSTER `analytics` (
    tenant LowCardinality(String),
    journey_id String,
    journey_type Nullable(String),
    first_step Nullable(DateTime64(6, 'UTC')),
    completed Nullable(DateTime64(6, 'UTC')),
    top_step Nullable(Int8),
    reasons Array(String),
    steps Array(Tuple(Int8, DateTime64(6, 'UTC'), Nullable(Int64), Nullable(String), DateTime64(6, 'UTC'), UInt8, UInt8)),
    version UInt64,
    deleted UInt8
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/journeys', '{replica}', version, deleted)
ORDER BY (tenant, journey_type, first_step, journey_id)
SETTINGS allow_nullable_key = 1, fsync_after_insert = 1, fsync_part_directory = 1, merge_selector_base = 10;

CREATE TABLE IF NOT EXISTS journey_slots_local ON CLUSTER `analytics` (
    tenant LowCardinality(String),
    journey_type String,
    slot Int64,
    fold Int64,
    journeys Int64,
    completions Int64,
    completion_us Int64,
    steps Array(Tuple(Int8, Nullable(String), DateTime64(6, 'UTC'), Int64, Int64, Int64, Int64, Int64)),
    reasons Array(Tuple(Nullable(Int64), String, Int64))
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/journey_slots', '{replica}', fold)
PARTITION BY toYYYYMM(fromUnixTimestamp64Micro(-2208988800000000 + slot * 900000000, 'UTC'))
ORDER BY (tenant, journey_type, slot)
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1, merge_selector_base = 10, min_age_to_force_merge_seconds = 3600, min_age_to_force_merge_on_partition_only = 1;

ALTER TABLE journeys_local ON CLUSTER `analytics` ADD INDEX IF NOT EXISTS folded version TYPE minmax GRANULARITY 1;

CREATE TABLE IF NOT EXISTS journey_keys_local ON CLUSTER `analytics` (
    tenant LowCardinality(String),
    journey_id String,
    journey_type Nullable(String),
    first_step Nullable(DateTime64(6, 'UTC')),
    version UInt64
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/journey_keys', '{replica}', version)
ORDER BY (tenant, journey_id)
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1, merge_selector_base = 10;

CREATE TABLE IF NOT EXISTS customer_firsts_local ON CLUSTER `analytics` (
    tenant LowCardinality(String),
    customer_id String,
    channel LowCardinality(String),
    first_event DateTime64(6, 'UTC'),
    first_received Nullable(DateTime64(6, 'UTC')),
    fold Int64,
    sign Int8
) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/customer_firsts', '{replica}')
PARTITION BY toYYYYMM(first_event)
ORDER BY (tenant, customer_id, channel, fold)
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1, merge_selector_base = 10, min_age_to_force_merge_seconds = 3600, min_age_to_force_merge_on_partition_only = 1;

CREATE TABLE IF NOT EXISTS first_times_local ON CLUSTER `analytics` (
    tenant LowCardinality(String),
    channel LowCardinality(String),
    kind UInt8,
    t DateTime64(6, 'UTC'),
    fold Int64,
    sign Int8
) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/first_times', '{replica}')
PARTITION BY toYYYYMM(t)
ORDER BY (tenant, channel, kind, t)
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1, merge_selector_base = 10, min_age_to_force_merge_seconds = 3600, min_age_to_force_merge_on_partition_only = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS first_times_mv ON CLUSTER `analytics` TO first_times_local
AS SELECT tenant, channel, x.1 AS kind, assumeNotNull(x.2) AS t, fold, sign
FROM customer_firsts_local ARRAY JOIN arrayFilter(x -> x.2 IS NOT NULL, [(toUInt8(0), toNullable(first_event)), (toUInt8(1), first_received)]) AS x;

CREATE TABLE IF NOT EXISTS customer_numbers_local ON CLUSTER `analytics` (
    tenant LowCardinality(String),
    customer_id String,
    num UInt32,
    fold Int64
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/customer_numbers', '{replica}')
ORDER BY (tenant, customer_id)
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1, merge_selector_base = 10;

CREATE TABLE IF NOT EXISTS active_customers_local ON CLUSTER `analytics` (
    tenant LowCardinality(String),
    slot Int64,
    channel LowCardinality(String),
    num UInt32
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/active_customers', '{replica}')
ORDER BY (tenant, slot, channel, num)
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1, merge_selector_base = 10;

CREATE TABLE IF NOT EXISTS engine_state_local ON CLUSTER `analytics` (
    key String,
    value Int64,
    version UInt64
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/engine_state', '{replica}', version)
ORDER BY key
SETTINGS fsync_after_insert = 1, fsync_part_directory = 1, merge_selector_base = 10;

ALTER TABLE events_local ON CLUSTER `analytics` MODIFY SETTING min_age_to_force_merge_seconds = 3600, min_age_to_force_merge_on_partition_only = 1, merge_selector_base = 10;

ALTER TABLE event_ids_local ON CLUSTER `analytics` MODIFY SETTING merge_selector_base = 10;

ALTER TABLE workflows_local ON CLUSTER `analytics` MODIFY SETTING merge_selector_base = 10;

ALTER TABLE executions_state_local ON CLUSTER `analytics` MODIFY SETTING merge_selector_base = 10;

ALTER TABLE customers_state_local ON CLUSTER `analytics` MODIFY SETTING merge_selector_base = 10;

ALTER TABLE executions_local ON CLUSTER `analytics` MODIFY SETTING min_age_to_force_merge_seconds = 3600, min_age_to_force_merge_on_partition_only = 1, merge_selector_base = 10;

ALTER TABLE execution_keys_local ON CLUSTER `analytics` MODIFY SETTING merge_selector_base = 10;

ALTER TABLE message_slots_local ON CLUSTER `analytics` MODIFY SETTING min_age_to_force_merge_seconds = 3600, min_age_to_force_merge_on_partition_only = 1, merge_selector_base = 10;

ALTER TABLE execution_log_local ON CLUSTER `analytics` MODIFY SETTING min_age_to_force_merge_seconds = 3600, min_age_to_force_merge_on_partition_only = 1, merge_selector_base = 10;

ALTER TABLE execution_slots_local ON CLUSTER `analytics` MODIFY SETTING min_age_to_force_merge_seconds = 3600, min_age_to_force_merge_on_partition_only = 1, merge_selector_base = 10;

ALTER TABLE node_slots_local ON CLUSTER `analytics` MODIFY SETTING min_age_to_force_merge_seconds = 3600, min_age_to_force_merge_on_partition_only = 1, merge_selector_base = 10;

ALTER TABLE sessions_local ON CLUSTER `analytics` MODIFY SETTING min_age_to_force_merge_seconds = 3600, min_age_to_force_merge_on_partition_only = 1, merge_selector_base = 10;

ALTER TABLE session_starts_local ON CLUSTER `analytics` MODIFY SETTING min_age_to_force_merge_seconds = 3600, min_age_to_force_merge_on_partition_only = 1, merge_selector_base = 10;

ALTER TABLE session_slots_local ON CLUSTER `analytics` MODIFY SETTING min_age_to_force_merge_seconds = 3600, min_age_to_force_merge_on_partition_only = 1, merge_selector_base = 10;

ALTER TABLE journeys_state_local ON CLUSTER `analytics` MODIFY SETTING merge_selector_base = 10;

ALTER TABLE journeys_local ON CLUSTER `analytics` MODIFY SETTING merge_selector_base = 10;

ALTER TABLE journey_slots_local ON CLUSTER `analytics` MODIFY SETTING min_age_to_force_merge_seconds = 3600, min_age_to_force_merge_on_partition_only = 1, merge_selector_base = 10;

ALTER TABLE journey_keys_local ON CLUSTER `analytics` MODIFY SETTING merge_selector_base = 10;

ALTER TABLE customer_firsts_local ON CLUSTER `analytics` MODIFY SETTING min_age_to_force_merge_seconds = 3600, min_age_to_force_merge_on_partition_only = 1, merge_selector_base = 10;

ALTER TABLE first_times_local ON CLUSTER `analytics` MODIFY SETTING min_age_to_force_merge_seconds = 3600, min_age_to_force_merge_on_partition_only = 1, merge_selector_base = 10;

ALTER TABLE customer_numbers_local ON CLUSTER `analytics` MODIFY SETTING merge_selector_base = 10;

ALTER TABLE active_customers_local ON CLUSTER `analytics` MODIFY SETTING merge_selector_base = 10;

ALTER TABLE engine_state_local ON CLUSTER `analytics` MODIFY SETTING merge_selector_base = 10;

CREATE TABLE IF NOT EXISTS events ON CLUSTER `analytics` AS events_local ENGINE = Distributed(`analytics`, currentDatabase(), events_local, sipHash64(tenant));

CREATE TABLE IF NOT EXISTS event_ids ON CLUSTER `analytics` AS event_ids_local ENGINE = Distributed(`analytics`, currentDatabase(), event_ids_local, sipHash64(tenant));

CREATE TABLE IF NOT EXISTS workflows ON CLUSTER `analytics` AS workflows_local ENGINE = Distributed(`analytics`, currentDatabase(), workflows_local, sipHash64(tenant));

CREATE TABLE IF NOT EXISTS executions_state ON CLUSTER `analytics` AS executions_state_local ENGINE = Distributed(`analytics`, currentDatabase(), executions_state_local, sipHash64(tenant));

CREATE TABLE IF NOT EXISTS customers_state ON CLUSTER `analytics` AS customers_state_local ENGINE = Distributed(`analytics`, currentDatabase(), customers_state_local, sipHash64(tenant));

CREATE TABLE IF NOT EXISTS executions ON CLUSTER `analytics` AS executions_local ENGINE = Distributed(`analytics`, currentDatabase(), executions_local, sipHash64(tenant));

CREATE TABLE IF NOT EXISTS execution_keys ON CLUSTER `analytics` AS execution_keys_local ENGINE = Distributed(`analytics`, currentDatabase(), execution_keys_local, sipHash64(tenant));

CREATE TABLE IF NOT EXISTS engine_state ON CLUSTER `analytics` AS engine_state_local ENGINE = Distributed(`analytics`, currentDatabase(), engine_state_local, sipHash64(tenant));

CREATE TABLE IF NOT EXISTS message_slots ON CLUSTER `analytics` AS message_slots_local ENGINE = Distributed(`analytics`, currentDatabase(), message_slots_local, sipHash64(tenant));

CREATE TABLE IF NOT EXISTS sessions ON CLUSTER `analytics` AS sessions_local ENGINE = Distributed(`analytics`, currentDatabase(), sessions_local, sipHash64(tenant));

CREATE TABLE IF NOT EXISTS session_starts ON CLUSTER `analytics` AS session_starts_local ENGINE = Distributed(`analytics`, currentDatabase(), session_starts_local, sipHash64(tenant));

CREATE TABLE IF NOT EXISTS session_slots ON CLUSTER `analytics` AS session_slots_local ENGINE = Distributed(`analytics`, currentDatabase(), session_slots_local, sipHash64(tenant));

CREATE TABLE IF NOT EXISTS customer_numbers ON CLUSTER `analytics` AS customer_numbers_local ENGINE = Distributed(`analytics`, currentDatabase(), customer_numbers_local, sipHash64(tenant));

CREATE TABLE IF NOT EXISTS active_customers ON CLUSTER `analytics` AS active_customers_local ENGINE = Distributed(`analytics`, currentDatabase(), active_customers_local, sipHash64(tenant));

CREATE TABLE IF NOT EXISTS customer_firsts ON CLUSTER `analytics` AS customer_firsts_local ENGINE = Distributed(`analytics`, currentDatabase(), customer_firsts_local, sipHash64(tenant));

CREATE TABLE IF NOT EXISTS first_times ON CLUSTER `analytics` AS first_times_local ENGINE = Distributed(`analytics`, currentDatabase(), first_times_local, sipHash64(tenant));

CREATE TABLE IF NOT EXISTS journeys_state ON CLUSTER `analytics` AS journeys_state_local ENGINE = Distributed(`analytics`, currentDatabase(), journeys_state_local, sipHash64(tenant));

CREATE TABLE IF NOT EXISTS journeys ON CLUSTER `analytics` AS journeys_local ENGINE = Distributed(`analytics`, currentDatabase(), journeys_local, sipHash64(tenant));

CREATE TABLE IF NOT EXISTS journey_keys ON CLUSTER `analytics` AS journey_keys_local ENGINE = Distributed(`analytics`, currentDatabase(), journey_keys_local, sipHash64(tenant));

CREATE TABLE IF NOT EXISTS journey_slots ON CLUSTER `analytics` AS journey_slots_local ENGINE = Distributed(`analytics`, currentDatabase(), journey_slots_local, sipHash64(tenant));

CREATE TABLE IF NOT EXISTS execution_log ON CLUSTER `analytics` AS execution_log_local ENGINE = Distributed(`analytics`, currentDatabase(), execution_log_local, sipHash64(tenant));

CREATE TABLE IF NOT EXISTS execution_slots ON CLUSTER `analytics` AS execution_slots_local ENGINE = Distributed(`analytics`, currentDatabase(), execution_slots_local, sipHash64(tenant));

CREATE TABLE IF NOT EXISTS node_slots ON CLUSTER `analytics` AS node_slots_local ENGINE = Distributed(`analytics`, currentDatabase(), node_slots_local, sipHash64(tenant));

ALTER TABLE executions_state ON CLUSTER `analytics` ADD COLUMN IF NOT EXISTS nodes AggregateFunction(groupUniqArray, Tuple(String, String, String, DateTime64(6, 'UTC'), UInt8, Nullable(Int64)));

ALTER TABLE executions ON CLUSTER `analytics` ADD COLUMN IF NOT EXISTS nodes Array(Tuple(String, String, String, DateTime64(6, 'UTC'), UInt8, Nullable(Int64)));

ALTER TABLE executions ON CLUSTER `analytics` ADD COLUMN IF NOT EXISTS customer_num UInt32;

ALTER TABLE execution_log ON CLUSTER `analytics` ADD COLUMN IF NOT EXISTS nodes Array(Tuple(String, String, String, DateTime64(6, 'UTC'), UInt8, Nullable(Int64)));
