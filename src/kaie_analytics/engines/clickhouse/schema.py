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
- ``workflows``: every workflow an event named, its latest name and when it
  was first seen, kept by a materialized view as aggregate states (exact
  whatever the merge state) and written directly when a name is set.

Every MergeTree fsyncs its parts and their directory before an insert
returns, so an acknowledged event survives the process being killed.

With ``cluster``, every statement runs ``ON CLUSTER``, the tables are
``Replicated*`` (``{shard}`` and ``{replica}`` macros of each server), and a
``Distributed`` table of the same name over each, sharded by tenant (so one
tenant's events, and the copies of one event, live on one shard).
"""

from __future__ import annotations

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


def _engine(kind: str, table: str, cluster: str | None) -> str:
    if cluster is None:
        return f"{kind}()"
    return f"Replicated{kind}('/clickhouse/tables/{{shard}}/{{database}}/{table}', '{{replica}}')"


def ddl(cluster: str | None = None) -> list[str]:
    """The statements that create every table (idempotent), in order."""
    on = f" ON CLUSTER {_identifier(cluster)}" if cluster else ""
    # On a cluster, data lives in ``*_local`` tables and ``events`` etc. are
    # Distributed tables over them; on one server the names are the tables.
    local = "_local" if cluster else ""
    columns = ",\n    ".join(f"{name} {kind}" for name, kind in COLUMNS)
    out = [
        f"""CREATE TABLE IF NOT EXISTS events{local}{on} (
    {columns}
) ENGINE = {_engine("ReplacingMergeTree", "events", cluster)}
PARTITION BY toYYYYMM(ts)
ORDER BY (tenant, type, ts, event_id)
SETTINGS {_DURABLE}""",
        f"""CREATE TABLE IF NOT EXISTS event_ids{local}{on} (
    tenant LowCardinality(String),
    event_id String
) ENGINE = {_engine("ReplacingMergeTree", "event_ids", cluster)}
ORDER BY (tenant, event_id)
SETTINGS {_DURABLE}""",
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
SETTINGS {_DURABLE}""",
        # The filter is inside FROM: in the SELECT, the alias ``workflow_id`` would
        # stand for assumeNotNull(workflow_id) in WHERE too.
        f"""CREATE MATERIALIZED VIEW IF NOT EXISTS workflows_mv{on} TO workflows{local}
AS SELECT tenant, assumeNotNull(workflow_id) AS workflow_id,
    max(workflow_name IS NOT NULL) AS named,
    argMaxStateIf(assumeNotNull(workflow_name), ts, workflow_name IS NOT NULL) AS name,
    maxIf(ts, workflow_name IS NOT NULL) AS name_ts,
    min(ingested_at) AS created_at
FROM (SELECT * FROM events{local} WHERE workflow_id IS NOT NULL)
GROUP BY tenant, workflow_id""",
    ]
    if cluster:
        for table in ("events", "event_ids", "workflows"):
            out.append(
                f"CREATE TABLE IF NOT EXISTS {table}{on} AS {table}_local"
                f" ENGINE = Distributed({_identifier(cluster)}, currentDatabase(),"
                f" {table}_local, sipHash64(tenant))"
            )
    return out


def _identifier(name: str) -> str:
    """A cluster name as a quoted identifier."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"
