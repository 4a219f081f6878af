"""The tables of the ClickHouse engine, on one server or on a cluster.

- ``events``: every accepted event, in a ``ReplacingMergeTree`` partitioned by
  month and ordered by tenant first (then type and time), so a tenant's query
  reads only its own granules. An event id is checked against ``event_ids``
  before it is written; two copies racing from two processes may both be
  written, and they share the whole sorting key (the event id is its last
  part), so every query reads ``events FINAL``: a copy counts once whatever
  the merge state of the table.
- ``event_ids``: (tenant, event id), kept by a materialized view, so the
  dedupe lookup is a primary-key read.
- ``message_slots``: messages and feedback per workflow, channel and 15-minute
  slot, added up by the fold (``folds``).
- ``execution_log`` and ``execution_slots``: executions as of each fold, as
  signed rows like ``sessions`` below, and their counts, successes, failures
  and durations added up per workflow, channel, error type and 15-minute
  slot of their start by a view.
- ``sessions``: conversations (sessions) as of each fold, as signed rows: a
  fold adds the sessions it makes (+1) and takes away those they replace (-1),
  so the sessions as of a fold are the rows up to it that add up to +1.
  Views copy them ordered by time (``session_starts``) and add them up per
  channel and 15-minute slot of their first message (``session_slots``).
- ``journeys_state`` and ``journeys``: every journey event, kept as a set per
  journey by a view (so a copy changes nothing), and each journey as of the
  last fold that changed it, its facts worked out (type, first step,
  completion, highest step, drop reasons, steps reached), ordered by type and
  first step (``journey_keys`` keeps each journey's key, as
  ``execution_keys`` does for executions). ``journey_slots``: per type and
  15-minute slot of their first step, the journeys added up (totals, per step,
  drop reasons), made again from ``journeys`` by each fold that changes them.
- ``customer_firsts``: each customer's first event and first message
  received, per channel and overall (''), as of each fold, as signed rows
  like ``sessions``; a view copies them ordered by time (``first_times``), so
  the customers first seen up to a time are a sum of signs over a range.
- ``customer_numbers`` and ``active_customers``: every customer that sent a
  message or had an execution gets a number (dense per tenant, in order of the
  fold that first saw it); per channel and 15-minute slot, the numbers of the
  customers that sent a message in it, so that the customers active in a period
  are a bitmap of small integers instead of a distinct count of the texts of
  messages. A folded execution carries its customer's number too.
- ``workflows``: every workflow an event named, its latest name and when it
  was first seen, as aggregate states (exact whatever the merge state),
  written by the writer just before the events that name a new workflow or
  a name, and when a name is set.

The tables the fold tags rows of (``FOLD_TAGGED``) are partitioned by month,
so that compaction (``compaction``) can rewrite one partition at a time.

Every MergeTree fsyncs its parts and their directory before an insert
returns, so an acknowledged event survives the process being killed.

With ``cluster``, every statement runs ``ON CLUSTER``, the tables are
``Replicated*`` (``{shard}`` and ``{replica}`` macros of each server), and a
``Distributed`` table of the same name over each, sharded by tenant (so one
tenant's events, and the copies of one event, live on one shard).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kaie_analytics.ingest.validate import FIELD_COLUMNS

TIME = "DateTime64(6, 'UTC')"
_FIELD_TYPES = {"duration_ms": "Int64", "csat": "Int8", "nps": "Int8", "step": "Int8"}
COLUMNS: tuple[tuple[str, str], ...] = (
    ("tenant", "LowCardinality(String)"),
    ("event_id", "String"),
    ("id_given", "Bool"),
    ("type", "LowCardinality(String)"),
    ("ts", TIME),
    ("ts_text", "String"),
    *((c, f"Nullable({_FIELD_TYPES.get(c, 'String')})") for c in FIELD_COLUMNS),
    ("ingested_at", TIME),
)
_DURABLE = "fsync_after_insert = 1, fsync_part_directory = 1"
#: Merges of parts of about one size wait for ten of them rather than five (the simple
#: merge selector's base, 5 by default), so each row is rewritten about half as often:
#: with a part per table for every group commit, merges took two thirds of the CPU of
#: ingestion (75 µs an event, against 40 with this), for about as many parts to read
#: (bench/RESULTS.md, session 19).
_MERGES = "merge_selector_base = 10"
#: The settings every table has (the partitioned ones also ``MERGED_WHEN_COLD``).
_KEPT = f"{_DURABLE}, {_MERGES}"
#: A month partition becomes one part an hour after its last insert: every read plans
#: over each part of the partitions it touches (a few ms for every 10 parts), and
#: ClickHouse's own merges leave a month of events in 6 to 10.
MERGED_WHEN_COLD = (
    "min_age_to_force_merge_seconds = 3600, min_age_to_force_merge_on_partition_only = 1"
)
#: What an execution's start and terminal events carry, as one tuple shape:
#: (ts, duration_ms, workflow_id, channel, customer_id, error_type).
STATE = f"Tuple({TIME}, Nullable(Int64), Nullable(String), Nullable(String), Nullable(String), Nullable(String))"
EXEC_TYPES = "('execution.started', 'execution.completed', 'execution.failed')"
NODE_TYPES = "('node.completed', 'node.failed')"
#: The events an execution's row is made of: its own and its nodes'.
FEED_TYPES = EXEC_TYPES[:-1] + ", " + NODE_TYPES[1:]
#: A node event as its execution keeps it: (event_id, node_id, node_type, ts, ok,
#: duration_ms); the event id makes a copy of the event the same element.
NODE = f"Tuple(String, String, String, {TIME}, UInt8, Nullable(Int64))"
#: Messages and feedback: what ``message_slots`` adds up.
MESSAGE_ROLLUP_TYPES = "('message.sent', 'message.received', 'feedback.submitted')"
#: 15-minute slots (every bucket edge in every time zone is on their grid), numbered
#: from a time on the grid before any stored time (1900-01-01, as DateTime64(6) begins).
SLOT_US = 15 * 60 * 1_000_000
SLOTS_FROM_US = -2_208_988_800_000_000
#: Slots per UTC day (``SLOTS_FROM_US`` is a midnight, so a day's slots are slot // this).
SLOTS_PER_DAY = 24 * 3600 * 1_000_000 // SLOT_US
#: The month of column ``slot`` (the partition of the tables kept per slot).
SLOT_MONTH = f"toYYYYMM(fromUnixTimestamp64Micro({SLOTS_FROM_US} + slot * {SLOT_US}, 'UTC'))"
#: The slot of an execution's start, for the views over ``execution_log``.
_START_SLOT = f"intDiv(toUnixTimestamp64Micro(started_at) - ({SLOTS_FROM_US}), {SLOT_US}) AS slot"
#: The layout the tables below have; a store of an older one is brought up to it.
LAYOUT = 16


@dataclass(frozen=True)
class Tagged:
    """A table the fold writes rows tagged with its watermark (``fold``) to. The rows of
    a fold cut off before it wrote its watermark are taken away (``folds``), and the
    rows of many folds are added up into one per ``keys`` (``compaction``)."""

    table: str
    #: The columns that rows are added up by.
    keys: tuple[str, ...]
    #: The columns added up.
    sums: tuple[str, ...]
    #: A log of +1 and -1 rows (a -1 takes back a +1 of an earlier fold), rather than
    #: sums per slot.
    signed: bool = False


#: What ``execution_slots`` adds up per slot: executions, successful, failed, the total
#: duration (ms) of the finished ones with one, and how many those are.
EXECUTION_SUMS = ("executions", "successful", "failed", "duration_sum", "durations")


#: What ``node_slots`` adds up per slot of their executions' start: node events,
#: completed, failed, the total duration (ms) of those with one, and how many those are.
NODE_SUMS = ("events", "ok", "failed", "dur_sum", "durs")


def node_sums(sign: str, node: str) -> list[str]:
    """``NODE_SUMS`` of node event ``node`` (SQL of a ``NODE``), times ``sign``."""
    s = f"toInt64({sign})"
    return [
        s,
        f"{s} * {node}.5",
        f"{s} * (1 - {node}.5)",
        f"if({node}.6 IS NULL, 0, {s} * {node}.6)",
        f"if({node}.6 IS NULL, 0, {s})",
    ]


def execution_sums(sign: str) -> list[str]:
    """``EXECUTION_SUMS`` of a row of ``executions`` or ``execution_log``, times ``sign``
    (SQL: ``sign`` for a row of the log, 1 for an execution)."""
    return [
        f"toInt64({sign})",
        f"toInt64({sign}) * (status = 1)",
        f"toInt64({sign}) * (status = 2)",
        f"if(status > 0, toInt64({sign}) * ifNull(duration_ms, 0), 0)",
        f"if(status > 0 AND duration_ms IS NOT NULL, toInt64({sign}), 0)",
    ]


_SESSION_KEYS = ("tenant", "customer_id", "channel", "first_ts", "last_ts", "size")
FOLD_TAGGED = (
    Tagged("message_slots", ("tenant", "workflow_id", "slot", "channel"),
           ("sent", "received", "csat_sum", "csat_n")),
    Tagged("sessions", _SESSION_KEYS, ("sign",), signed=True),
    Tagged("session_starts", _SESSION_KEYS, ("sign",), signed=True),
    Tagged("session_slots", ("tenant", "slot", "channel"), ("sessions", "duration_us", "messages")),
    Tagged("customer_firsts", ("tenant", "customer_id", "channel", "first_event", "first_received"),
           ("sign",), signed=True),
    Tagged("first_times", ("tenant", "channel", "kind", "t"), ("sign",), signed=True),
    Tagged("execution_log", ("tenant", "execution_id", "workflow_id", "started_at", "channel",
                             "error_type", "status", "duration_ms", "nodes"), ("sign",),
           signed=True),
    Tagged("execution_slots", ("tenant", "workflow_id", "slot", "channel", "error_type"),
           EXECUTION_SUMS),
    Tagged("node_slots", ("tenant", "workflow_id", "slot", "channel", "node_id", "node_type"),
           NODE_SUMS),
)  # fmt: skip


def _engine(kind: str, table: str, cluster: str | None, args: str = "") -> str:
    if cluster is None:
        return f"{kind}({args})"
    path = f"'/clickhouse/tables/{{shard}}/{{database}}/{table}', '{{replica}}'"
    return f"Replicated{kind}({path}{', ' + args if args else ''})"


#: The aggregate states of the execution events of ``{source}`` (a table or query).
EXECUTION_STATES = f"""SELECT tenant, assumeNotNull(execution_id) AS execution_id,
    max(type = 'execution.started') AS has_s,
    max(type = 'execution.completed') AS has_c,
    max(type = 'execution.failed') AS has_f,
    argMinStateIf(_state, ts, type = 'execution.started') AS s,
    argMaxStateIf(_state, ts, type = 'execution.completed') AS c,
    argMaxStateIf(_state, ts, type = 'execution.failed') AS f,
    groupUniqArrayStateIf(_node, type IN {NODE_TYPES}) AS nodes
FROM (
    SELECT *, CAST((ts, duration_ms, workflow_id, channel, customer_id, error_type) AS {STATE})
        AS _state,
        CAST((event_id, ifNull(node_id, ''), ifNull(node_type, ''), ts,
              type = 'node.completed', duration_ms) AS {NODE}) AS _node
    FROM {{source}} WHERE type IN {FEED_TYPES} AND execution_id IS NOT NULL
)
GROUP BY tenant, execution_id"""


JOURNEY_TYPES = "('journey.step', 'journey.completed', 'journey.dropped')"
#: A journey event as its journey keeps it: (event_id, ts, type, journey_type, step,
#: step_name, reason).
JOURNEY_EVENT = (
    f"Tuple(String, {TIME}, String, Nullable(String), Nullable(Int8), Nullable(String),"
    " Nullable(String))"
)
#: What a type's journeys that began in a slot add up to per step (``journey_slots``):
#: the step, its latest name and that name's time, the journeys that reached it, those
#: that also reached the step before, those that did not reach the next, and the sum
#: (µs) and count of the times to the next event.
JOURNEY_STEP_SUMS = f"Tuple(Int8, Nullable(String), {TIME}, Int64, Int64, Int64, Int64, Int64)"
#: The journey states of the journey events of ``{source}`` (a table or query).
JOURNEY_STATES = f"""SELECT tenant, assumeNotNull(journey_id) AS journey_id,
    groupUniqArrayState(CAST((event_id, ts, type, journey_type, step, step_name, reason)
        AS {JOURNEY_EVENT})) AS evs
FROM {{source}} WHERE type IN {JOURNEY_TYPES} AND journey_id IS NOT NULL
GROUP BY tenant, journey_id"""


#: The first-seen states of the customers of ``{source}`` (a table or query).
CUSTOMER_STATES = """SELECT tenant, customer_id, ch AS channel, min(ts) AS first_event,
    minOrNullIf(ts, type = 'message.received') AS first_received
FROM (
    SELECT tenant, assumeNotNull(customer_id) AS customer_id, ts, type,
        if(channel IS NULL, [''], [assumeNotNull(channel), '']) AS chs
    FROM {source} WHERE customer_id IS NOT NULL
)
ARRAY JOIN chs AS ch
GROUP BY tenant, customer_id, ch"""


def executions_state_view(cluster: str | None) -> str:
    """The statement that creates the view keeping ``executions_state``."""
    on, local = (f" ON CLUSTER {identifier(cluster)}", "_local") if cluster else ("", "")
    return f"""CREATE MATERIALIZED VIEW IF NOT EXISTS executions_state_mv{on} TO executions_state{local}
AS {EXECUTION_STATES.format(source=f"events{local}")}"""


#: The times of a row of ``customer_firsts`` as (kind, time): 0 its first event, 1 its
#: first message received (when it has one).
FIRST_TIMES = (
    "arrayFilter(x -> x.2 IS NOT NULL,"
    " [(toUInt8(0), toNullable(first_event)), (toUInt8(1), first_received)])"
)
#: A session's row: its conversation (customer, channel), first and last message
#: times, and number of messages; the fold that wrote it, and +1 or -1.
_SESSION_COLUMNS = f"""tenant LowCardinality(String),
    customer_id String,
    channel LowCardinality(String),
    first_ts {TIME},
    last_ts {TIME},
    size UInt64,
    fold Int64,
    sign Int8"""


def ddl(cluster: str | None = None) -> list[str]:
    """The statements that create every table (idempotent), in order."""
    on = f" ON CLUSTER {identifier(cluster)}" if cluster else ""
    # On a cluster, data lives in ``*_local`` tables and ``events`` etc. are
    # Distributed tables over them; on one server the names are the tables.
    local = "_local" if cluster else ""
    columns = ",\n    ".join(f"{name} {kind}" for name, kind in COLUMNS)
    out = [
        f"""CREATE TABLE IF NOT EXISTS events{local}{on} (
    {columns},
    -- Queries and folds look for what was ingested after the fold's watermark: old
    -- parts are skipped whole.
    INDEX ingested ingested_at TYPE minmax GRANULARITY 1
) ENGINE = {_engine("ReplacingMergeTree", "events", cluster)}
PARTITION BY toYYYYMM(ts)
ORDER BY (tenant, type, ts, event_id)
SETTINGS {_KEPT}, {MERGED_WHEN_COLD}""",
        f"ALTER TABLE events{local}{on} ADD INDEX IF NOT EXISTS ingested ingested_at"
        " TYPE minmax GRANULARITY 1",
        f"""CREATE TABLE IF NOT EXISTS event_ids{local}{on} (
    tenant LowCardinality(String),
    event_id String
) ENGINE = {_engine("ReplacingMergeTree", "event_ids", cluster)}
ORDER BY (tenant, event_id)
SETTINGS {_KEPT}""",
        f"""CREATE MATERIALIZED VIEW IF NOT EXISTS event_ids_mv{on} TO event_ids{local}
AS SELECT tenant, event_id FROM events{local}""",
        f"""CREATE TABLE IF NOT EXISTS workflows{local}{on} (
    tenant LowCardinality(String),
    workflow_id String,
    named SimpleAggregateFunction(max, UInt8),
    name AggregateFunction(argMax, String, {TIME}),
    name_ts SimpleAggregateFunction(max, {TIME}),
    created_at SimpleAggregateFunction(min, {TIME})
) ENGINE = {_engine("AggregatingMergeTree", "workflows", cluster)}
ORDER BY (tenant, workflow_id)
SETTINGS {_KEPT}""",
        # The writer registers workflows itself (a view here cost more than the rest of
        # an insert); stores of an older layout drop theirs.
        f"DROP VIEW IF EXISTS workflows_mv{on}",
        # Executions: every event merged into aggregate states per execution (idempotent:
        # a copy of an event changes nothing), so a query merges one row per execution.
        f"""CREATE TABLE IF NOT EXISTS executions_state{local}{on} (
    tenant LowCardinality(String),
    execution_id String,
    has_s SimpleAggregateFunction(max, UInt8),
    has_c SimpleAggregateFunction(max, UInt8),
    has_f SimpleAggregateFunction(max, UInt8),
    s AggregateFunction(argMin, {STATE}, {TIME}),
    c AggregateFunction(argMax, {STATE}, {TIME}),
    f AggregateFunction(argMax, {STATE}, {TIME}),
    nodes AggregateFunction(groupUniqArray, {NODE})
) ENGINE = {_engine("AggregatingMergeTree", "executions_state", cluster)}
ORDER BY (tenant, execution_id)
SETTINGS {_KEPT}""",
        f"ALTER TABLE executions_state{local}{on} ADD COLUMN IF NOT EXISTS"
        f" nodes AggregateFunction(groupUniqArray, {NODE})",
        executions_state_view(cluster),
        # Per customer and channel (and '' for all channels): when first seen, and
        # when first heard from (``message.received``).
        f"""CREATE TABLE IF NOT EXISTS customers_state{local}{on} (
    tenant LowCardinality(String),
    customer_id String,
    channel String,
    first_event SimpleAggregateFunction(min, {TIME}),
    first_received SimpleAggregateFunction(min, Nullable({TIME}))
) ENGINE = {_engine("AggregatingMergeTree", "customers_state", cluster)}
ORDER BY (tenant, customer_id, channel)
SETTINGS {_KEPT}""",
        f"""CREATE MATERIALIZED VIEW IF NOT EXISTS customers_state_mv{on} TO customers_state{local}
AS {CUSTOMER_STATES.format(source=f"events{local}")}""",
        # Executions as of the last fold, one row each, ordered so that a workflow's
        # executions of a period are one range; an execution whose key changed has a
        # deleted row at its old key. ``execution_keys`` finds the current key by id.
        f"""CREATE TABLE IF NOT EXISTS executions{local}{on} (
    tenant LowCardinality(String),
    workflow_id String,
    started_at {TIME},
    execution_id String,
    channel Nullable(String),
    customer_id Nullable(String),
    status UInt8,
    duration_ms Nullable(Int64),
    error_type Nullable(String),
    version UInt64,
    deleted UInt8,
    nodes Array({NODE}),
    customer_num UInt32
) ENGINE = {_engine("ReplacingMergeTree", "executions", cluster, "version, deleted")}
PARTITION BY toYYYYMM(started_at)
ORDER BY (tenant, workflow_id, started_at, execution_id)
SETTINGS {_KEPT}, {MERGED_WHEN_COLD}""",
        f"ALTER TABLE executions{local}{on} ADD COLUMN IF NOT EXISTS nodes Array({NODE})",
        # Its customer's number (``customer_numbers``; 0: no customer), so that distinct
        # customers are counted over integers.
        f"ALTER TABLE executions{local}{on} ADD COLUMN IF NOT EXISTS customer_num UInt32",
        f"""CREATE TABLE IF NOT EXISTS execution_keys{local}{on} (
    tenant LowCardinality(String),
    execution_id String,
    workflow_id String,
    started_at {TIME},
    version UInt64
) ENGINE = {_engine("ReplacingMergeTree", "execution_keys", cluster, "version")}
ORDER BY (tenant, execution_id)
SETTINGS {_KEPT}""",
        # Messages and feedback per workflow, channel and 15-minute slot, as of the fold
        # that added them (``fold``: its watermark); '' for no workflow or channel.
        # Written by the fold only (embedded): a query adds up the rows of folds up to
        # the watermark it reads with, and reads the rest from the events.
        f"""CREATE TABLE IF NOT EXISTS message_slots{local}{on} (
    tenant LowCardinality(String),
    workflow_id String,
    slot Int64,
    channel String,
    fold Int64,
    sent UInt64,
    received UInt64,
    csat_sum Int64,
    csat_n UInt64
) ENGINE = {_engine("SummingMergeTree", "message_slots", cluster)}
PARTITION BY {SLOT_MONTH}
ORDER BY (tenant, workflow_id, slot, channel, fold)
SETTINGS {_KEPT}, {MERGED_WHEN_COLD}""",
        # Executions as of each fold, as signed rows like ``sessions``: a fold adds the
        # rows of the executions it merges (+1) and takes away their rows before (-1).
        # Ordered by execution, so that the fold finds the rows of those it merges.
        f"""CREATE TABLE IF NOT EXISTS execution_log{local}{on} (
    tenant LowCardinality(String),
    execution_id String,
    workflow_id String,
    started_at {TIME},
    channel Nullable(String),
    error_type Nullable(String),
    status UInt8,
    duration_ms Nullable(Int64),
    fold Int64,
    sign Int8,
    nodes Array({NODE})
) ENGINE = {_engine("MergeTree", "execution_log", cluster)}
PARTITION BY toYYYYMM(started_at)
ORDER BY (tenant, execution_id, fold)
SETTINGS {_KEPT}, {MERGED_WHEN_COLD}""",
        # Its node events, sorted (so that a -1 row and the +1 row of an execution that
        # did not change cancel out when compacted).
        f"ALTER TABLE execution_log{local}{on} ADD COLUMN IF NOT EXISTS nodes Array({NODE})",
        # The rows of one fold, found without reading the parts of the folds before (a
        # store of an older layout: its parts get the index as they are merged).
        f"ALTER TABLE execution_log{local}{on} ADD INDEX IF NOT EXISTS folded fold"
        " TYPE minmax GRANULARITY 1",
        f"ALTER TABLE execution_keys{local}{on} ADD INDEX IF NOT EXISTS folded version"
        " TYPE minmax GRANULARITY 1",
        # Per workflow, channel, error type ('' for none) and slot of their start, as of
        # each fold: what ``EXECUTION_SUMS`` names.
        f"""CREATE TABLE IF NOT EXISTS execution_slots{local}{on} (
    tenant LowCardinality(String),
    workflow_id String,
    slot Int64,
    channel String,
    error_type String,
    fold Int64,
    {", ".join(f"{c} Int64" for c in EXECUTION_SUMS)}
) ENGINE = {_engine("SummingMergeTree", "execution_slots", cluster)}
PARTITION BY {SLOT_MONTH}
ORDER BY (tenant, workflow_id, slot, channel, error_type, fold)
SETTINGS {_KEPT}, {MERGED_WHEN_COLD}""",
        f"""CREATE MATERIALIZED VIEW IF NOT EXISTS execution_slots_mv{on} TO execution_slots{local}
AS SELECT tenant, workflow_id,
    {_START_SLOT},
    ifNull(channel, '') AS channel, ifNull(error_type, '') AS error_type, fold,
    {", ".join(f"sum({e}) AS {c}" for e, c in zip(execution_sums("sign"), EXECUTION_SUMS, strict=True))}
FROM execution_log{local} GROUP BY tenant, workflow_id, slot, channel, error_type, fold""",
        # Their node events per workflow, channel, node and type, and slot of the start of
        # their execution, as of each fold: what ``NODE_SUMS`` names.
        f"""CREATE TABLE IF NOT EXISTS node_slots{local}{on} (
    tenant LowCardinality(String),
    workflow_id String,
    slot Int64,
    channel String,
    node_id String,
    node_type LowCardinality(String),
    fold Int64,
    {", ".join(f"{c} Int64" for c in NODE_SUMS)}
) ENGINE = {_engine("SummingMergeTree", "node_slots", cluster)}
PARTITION BY {SLOT_MONTH}
ORDER BY (tenant, workflow_id, slot, channel, node_id, node_type, fold)
SETTINGS {_KEPT}, {MERGED_WHEN_COLD}""",
        f"""CREATE MATERIALIZED VIEW IF NOT EXISTS node_slots_mv{on} TO node_slots{local}
AS SELECT tenant, workflow_id,
    {_START_SLOT},
    ifNull(channel, '') AS channel, n.2 AS node_id, n.3 AS node_type, fold,
    {", ".join(f"sum({e}) AS {c}" for e, c in zip(node_sums("sign", "n"), NODE_SUMS, strict=True))}
FROM execution_log{local} ARRAY JOIN nodes AS n
GROUP BY tenant, workflow_id, slot, channel, node_id, node_type, fold""",
        # Sessions, written by the fold only; ordered by conversation, so that the fold
        # finds the sessions of the conversations new messages touch.
        f"""CREATE TABLE IF NOT EXISTS sessions{local}{on} (
    {_SESSION_COLUMNS}
) ENGINE = {_engine("MergeTree", "sessions", cluster)}
PARTITION BY toYYYYMM(first_ts)
ORDER BY (tenant, customer_id, channel, first_ts, fold)
SETTINGS {_KEPT}, {MERGED_WHEN_COLD}""",
        # The same rows ordered by time, for the sessions that start in part of a slot.
        f"""CREATE TABLE IF NOT EXISTS session_starts{local}{on} (
    {_SESSION_COLUMNS}
) ENGINE = {_engine("MergeTree", "session_starts", cluster)}
PARTITION BY toYYYYMM(first_ts)
ORDER BY (tenant, first_ts, channel, fold)
SETTINGS {_KEPT}, {MERGED_WHEN_COLD}""",
        f"""CREATE MATERIALIZED VIEW IF NOT EXISTS session_starts_mv{on} TO session_starts{local}
AS SELECT * FROM sessions{local}""",
        # Per channel and slot of their first message, as of each fold: sessions, their
        # total duration (µs) and messages.
        f"""CREATE TABLE IF NOT EXISTS session_slots{local}{on} (
    tenant LowCardinality(String),
    slot Int64,
    channel LowCardinality(String),
    fold Int64,
    sessions Int64,
    duration_us Int64,
    messages Int64
) ENGINE = {_engine("SummingMergeTree", "session_slots", cluster)}
PARTITION BY {SLOT_MONTH}
ORDER BY (tenant, slot, channel, fold)
SETTINGS {_KEPT}, {MERGED_WHEN_COLD}""",
        f"""CREATE MATERIALIZED VIEW IF NOT EXISTS session_slots_mv{on} TO session_slots{local}
AS SELECT tenant, intDiv(toUnixTimestamp64Micro(first_ts) - ({SLOTS_FROM_US}), {SLOT_US}) AS slot,
    channel, fold, sum(sign) AS sessions,
    sum(sign * (toUnixTimestamp64Micro(last_ts) - toUnixTimestamp64Micro(first_ts))) AS duration_us,
    sum(sign * toInt64(size)) AS messages
FROM sessions{local} GROUP BY tenant, slot, channel, fold""",
        f"""CREATE TABLE IF NOT EXISTS journeys_state{local}{on} (
    tenant LowCardinality(String),
    journey_id String,
    evs AggregateFunction(groupUniqArray, {JOURNEY_EVENT})
) ENGINE = {_engine("AggregatingMergeTree", "journeys_state", cluster)}
ORDER BY (tenant, journey_id)
SETTINGS {_KEPT}""",
        f"""CREATE MATERIALIZED VIEW IF NOT EXISTS journeys_state_mv{on} TO journeys_state{local}
AS {JOURNEY_STATES.format(source=f"events{local}")}""",
        # Journeys as of the last fold that changed them (``version``: its watermark),
        # ordered so that the journeys of a type that began in a period are one range; a
        # journey whose type or first step changed has a deleted row at its old key.
        # ``journey_keys`` finds the current key by id.
        f"""CREATE TABLE IF NOT EXISTS journeys{local}{on} (
    tenant LowCardinality(String),
    journey_id String,
    journey_type Nullable(String),
    first_step Nullable({TIME}),
    completed Nullable({TIME}),
    top_step Nullable(Int8),
    reasons Array(String),
    steps Array(Tuple(Int8, {TIME}, Nullable(Int64), Nullable(String), {TIME}, UInt8, UInt8)),
    version UInt64,
    deleted UInt8
) ENGINE = {_engine("ReplacingMergeTree", "journeys", cluster, "version, deleted")}
ORDER BY (tenant, journey_type, first_step, journey_id)
SETTINGS allow_nullable_key = 1, {_KEPT}""",
        # Per journey type and 15-minute slot of their first step, the journeys that
        # began in it added up (``customers.add_up_journeys``), as of the last fold that
        # changed any of them (``fold``: its watermark). Written by the fold only.
        f"""CREATE TABLE IF NOT EXISTS journey_slots{local}{on} (
    tenant LowCardinality(String),
    journey_type String,
    slot Int64,
    fold Int64,
    journeys Int64,
    completions Int64,
    completion_us Int64,
    steps Array({JOURNEY_STEP_SUMS}),
    reasons Array(Tuple(Nullable(Int64), String, Int64))
) ENGINE = {_engine("ReplacingMergeTree", "journey_slots", cluster, "fold")}
PARTITION BY {SLOT_MONTH}
ORDER BY (tenant, journey_type, slot)
SETTINGS {_KEPT}, {MERGED_WHEN_COLD}""",
        # The rows of one fold, found without reading the rest (``folds``).
        f"ALTER TABLE journeys{local}{on} ADD INDEX IF NOT EXISTS folded version"
        " TYPE minmax GRANULARITY 1",
        f"""CREATE TABLE IF NOT EXISTS journey_keys{local}{on} (
    tenant LowCardinality(String),
    journey_id String,
    journey_type Nullable(String),
    first_step Nullable({TIME}),
    version UInt64
) ENGINE = {_engine("ReplacingMergeTree", "journey_keys", cluster, "version")}
ORDER BY (tenant, journey_id)
SETTINGS {_KEPT}""",
        # Written by the fold only; ordered by customer, so that the fold finds the rows
        # of the customers new events touch.
        f"""CREATE TABLE IF NOT EXISTS customer_firsts{local}{on} (
    tenant LowCardinality(String),
    customer_id String,
    channel LowCardinality(String),
    first_event {TIME},
    first_received Nullable({TIME}),
    fold Int64,
    sign Int8
) ENGINE = {_engine("MergeTree", "customer_firsts", cluster)}
PARTITION BY toYYYYMM(first_event)
ORDER BY (tenant, customer_id, channel, fold)
SETTINGS {_KEPT}, {MERGED_WHEN_COLD}""",
        # Each of those times as a row of its kind (0: first event, 1: first message
        # received), ordered by time.
        f"""CREATE TABLE IF NOT EXISTS first_times{local}{on} (
    tenant LowCardinality(String),
    channel LowCardinality(String),
    kind UInt8,
    t {TIME},
    fold Int64,
    sign Int8
) ENGINE = {_engine("MergeTree", "first_times", cluster)}
PARTITION BY toYYYYMM(t)
ORDER BY (tenant, channel, kind, t)
SETTINGS {_KEPT}, {MERGED_WHEN_COLD}""",
        f"""CREATE MATERIALIZED VIEW IF NOT EXISTS first_times_mv{on} TO first_times{local}
AS SELECT tenant, channel, x.1 AS kind, assumeNotNull(x.2) AS t, fold, sign
FROM customer_firsts{local} ARRAY JOIN {FIRST_TIMES} AS x""",
        # Written by the fold only: a customer's number, and the fold that gave it.
        f"""CREATE TABLE IF NOT EXISTS customer_numbers{local}{on} (
    tenant LowCardinality(String),
    customer_id String,
    num UInt32,
    fold Int64
) ENGINE = {_engine("ReplacingMergeTree", "customer_numbers", cluster)}
ORDER BY (tenant, customer_id)
SETTINGS {_KEPT}""",
        # A slot only ever gains customers: adding a fold's messages is a union, whatever
        # their order and however often (a copy of a row changes no count).
        f"""CREATE TABLE IF NOT EXISTS active_customers{local}{on} (
    tenant LowCardinality(String),
    slot Int64,
    channel LowCardinality(String),
    num UInt32
) ENGINE = {_engine("ReplacingMergeTree", "active_customers", cluster)}
ORDER BY (tenant, slot, channel, num)
SETTINGS {_KEPT}""",
        # Per key, the latest value: the fold's watermark, the layout.
        f"""CREATE TABLE IF NOT EXISTS engine_state{local}{on} (
    key String,
    value Int64,
    version UInt64
) ENGINE = {_engine("ReplacingMergeTree", "engine_state", cluster, "version")}
ORDER BY key
SETTINGS {_KEPT}""",
    ]
    # Stores made before a table had its merge settings get them.
    for statement in list(out):
        made = re.match(r"CREATE TABLE IF NOT EXISTS (\w+)", statement)
        if made:
            settings = f"{MERGED_WHEN_COLD}, {_MERGES}" if "PARTITION BY" in statement else _MERGES
            out.append(f"ALTER TABLE {made.group(1)}{on} MODIFY SETTING {settings}")
    if cluster:
        for table in (
            "events", "event_ids", "workflows", "executions_state", "customers_state",
            "executions", "execution_keys", "engine_state", "message_slots", "sessions",
            "session_starts", "session_slots", "customer_numbers", "active_customers",
            "customer_firsts", "first_times", "journeys_state", "journeys", "journey_keys",
            "journey_slots", "execution_log", "execution_slots", "node_slots",
        ):  # fmt: skip
            out.append(
                f"CREATE TABLE IF NOT EXISTS {table}{on} AS {table}_local"
                f" ENGINE = Distributed({identifier(cluster)}, currentDatabase(),"
                f" {table}_local, sipHash64(tenant))"
            )
        # Distributed tables of an older layout: the columns added since.
        out += [
            f"ALTER TABLE executions_state{on} ADD COLUMN IF NOT EXISTS"
            f" nodes AggregateFunction(groupUniqArray, {NODE})",
            f"ALTER TABLE executions{on} ADD COLUMN IF NOT EXISTS nodes Array({NODE})",
            f"ALTER TABLE executions{on} ADD COLUMN IF NOT EXISTS customer_num UInt32",
            f"ALTER TABLE execution_log{on} ADD COLUMN IF NOT EXISTS nodes Array({NODE})",
        ]
    return out


def identifier(name: str) -> str:
    """A cluster name as a quoted identifier."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"
