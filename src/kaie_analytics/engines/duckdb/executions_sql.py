"""SQL that turns execution events into one row per execution (spec/METRICS.md).

An execution's events are first mapped to *state rows* (one struct per kind of
event), states are merged with associative aggregates, and the merged state is
finalised into the columns that queries read. The same SQL serves compaction
(folding new events into the ``executions`` table) and queries (merging the
events not yet folded in), so both always agree.
"""

from __future__ import annotations

EXEC_TYPES = "('execution.started', 'execution.completed', 'execution.failed')"
#: Node events ride along with their execution, so node metrics need no join.
FEED_TYPE_SET = frozenset(
    ("execution.started", "execution.completed", "execution.failed", "node.completed",
     "node.failed")
)  # fmt: skip
FEED_TYPES = "(" + ", ".join(f"'{t}'" for t in sorted(FEED_TYPE_SET)) + ")"
#: The columns of ``events`` that ``event_states`` reads.
STATE_COLUMNS = (
    "tenant", "execution_id", "type", "ts", "workflow_id", "channel", "customer_id",
    "duration_ms", "error_type", "node_id", "node_type",
)  # fmt: skip
NODE_STRUCT = "STRUCT(node_id VARCHAR, node_type VARCHAR, ts TIMESTAMP, ok BOOLEAN, dur BIGINT)"

TERMINAL_STRUCT = (
    "STRUCT(ts TIMESTAMP, dur BIGINT, wf VARCHAR, ch VARCHAR, cust VARCHAR, err VARCHAR)"
)
START_STRUCT = "STRUCT(ts TIMESTAMP, wf VARCHAR, ch VARCHAR, cust VARCHAR)"

EXECUTIONS_DDL = f"""
CREATE TABLE IF NOT EXISTS executions (
    tenant VARCHAR NOT NULL,
    execution_id VARCHAR NOT NULL,
    workflow_id VARCHAR,
    channel VARCHAR,
    customer_id VARCHAR,
    started_at TIMESTAMP,
    status TINYINT NOT NULL,           -- 0 running, 1 success, 2 failed
    duration_ms BIGINT,
    error_type VARCHAR,
    s {START_STRUCT},
    c {TERMINAL_STRUCT},
    f {TERMINAL_STRUCT},
    nodes {NODE_STRUCT}[],
    customer_num UINTEGER              -- the customer's number (active_customers), once folded
)
"""
#: For data directories from before ``customer_num``.
EXECUTIONS_MIGRATE = "ALTER TABLE executions ADD COLUMN IF NOT EXISTS customer_num UINTEGER"

FINAL_COLUMNS = (
    "tenant, execution_id, workflow_id, channel, customer_id, started_at, status,"
    " duration_ms, error_type, nodes"
)


def event_states(where: str, source: str = "events") -> str:
    """State rows of the execution events of ``source`` (``events``, or a table of its
    ``STATE_COLUMNS``) matching ``where``."""
    return f"""
    SELECT tenant, execution_id,
        CASE WHEN type = 'execution.started' THEN
            {{'ts': ts, 'wf': workflow_id, 'ch': channel, 'cust': customer_id}}::{START_STRUCT}
        END AS s,
        CASE WHEN type = 'execution.completed' THEN
            {{'ts': ts, 'dur': duration_ms, 'wf': workflow_id, 'ch': channel,
              'cust': customer_id, 'err': NULL}}::{TERMINAL_STRUCT}
        END AS c,
        CASE WHEN type = 'execution.failed' THEN
            {{'ts': ts, 'dur': duration_ms, 'wf': workflow_id, 'ch': channel,
              'cust': customer_id, 'err': error_type}}::{TERMINAL_STRUCT}
        END AS f,
        CASE WHEN type IN ('node.completed', 'node.failed') THEN
            [{{'node_id': node_id, 'node_type': node_type, 'ts': ts,
               'ok': type = 'node.completed', 'dur': duration_ms}}::{NODE_STRUCT}]
        END AS n
    FROM {source}
    WHERE type IN {FEED_TYPES} AND {where}
    """


def merge_states(states: str) -> str:
    """Merge state rows (tenant, execution_id, s, c, f, n) into one per execution.

    Associative: merged states merge again with later ones to the same result.
    """
    return f"""
    SELECT tenant, execution_id,
        arg_min(s, s.ts) AS s, arg_max(c, c.ts) AS c, arg_max(f, f.ts) AS f,
        flatten(coalesce(list(n) FILTER (WHERE n IS NOT NULL), [])) AS n
    FROM ({states})
    GROUP BY tenant, execution_id
    """


def finalise(merged: str) -> str:
    """The columns of ``executions`` from merged states (one row per execution).

    Rules (spec/METRICS.md, "Executions"): attributes come from the started
    event, else from the earlier terminal event that has them; the later
    terminal event decides the status (on equal timestamps, failed wins);
    duration is the deciding event's ``duration_ms``, else its timestamp minus
    the start (never negative); an execution without a start event started at
    its terminal timestamp minus its duration.
    """
    return f"""
    SELECT tenant, execution_id,
        coalesce(s.wf, t1.wf, t2.wf) AS workflow_id,
        coalesce(s.ch, t1.ch, t2.ch) AS channel,
        coalesce(s.cust, t1.cust, t2.cust) AS customer_id,
        coalesce(s.ts, w.ts - to_microseconds(coalesce(w.dur, 0) * 1000)) AS started_at,
        CASE WHEN w IS NULL THEN 0 WHEN c_wins THEN 1 ELSE 2 END::TINYINT AS status,
        CASE WHEN w IS NULL THEN NULL
             WHEN w.dur IS NOT NULL THEN w.dur
             WHEN s IS NOT NULL THEN greatest(0, (epoch_us(w.ts) - epoch_us(s.ts)) // 1000)
        END AS duration_ms,
        CASE WHEN w IS NOT NULL AND NOT c_wins THEN f.err END AS error_type,
        s, c, f, n AS nodes
    FROM (
        SELECT *,
            CASE WHEN c_wins THEN c ELSE f END AS w,
            CASE WHEN c IS NULL THEN f WHEN f IS NULL THEN c
                 WHEN c.ts <= f.ts THEN c ELSE f END AS t1,
            CASE WHEN c IS NULL OR f IS NULL THEN NULL
                 WHEN c.ts <= f.ts THEN f ELSE c END AS t2
        FROM (
            SELECT *, (c IS NOT NULL AND (f IS NULL OR c.ts > f.ts)) AS c_wins
            FROM ({merged})
        )
    )
    """


def merge_and_finalise(states: str) -> str:
    """Merge state rows per execution and compute the columns of ``executions``."""
    return finalise(merge_states(states))


def _pending() -> str:
    """The states of the events of ``$tenant`` past the watermark (read in the query, so
    table and watermark are of one snapshot)."""
    return event_states(
        "tenant = $tenant AND seq > (SELECT value FROM store_state WHERE key = 'exec_seq')"
    )


_MERGED_TOUCHED = merge_and_finalise(
    "SELECT tenant, execution_id, s, c, f, nodes AS n FROM executions"
    " WHERE tenant = $tenant AND execution_id IN (SELECT execution_id FROM touched)"
    " UNION ALL SELECT * FROM delta"
)


def tenant_executions(has_pending: bool) -> str:
    """A query of the current executions of tenant ``$tenant`` (final columns).

    Without pending events it reads the compacted table alone; with them it
    merges the events past the watermark into the rows they touch. It is one
    statement, so it sees one consistent snapshot of table and watermark.
    """
    if not has_pending:
        return f"SELECT {FINAL_COLUMNS} FROM executions WHERE tenant = $tenant"
    return f"""
    SELECT {FINAL_COLUMNS} FROM (
        WITH delta AS ({_pending()}),
             touched AS (SELECT DISTINCT execution_id FROM delta)
        SELECT {FINAL_COLUMNS} FROM executions
        WHERE tenant = $tenant AND execution_id NOT IN (SELECT execution_id FROM touched)
        UNION ALL
        SELECT {FINAL_COLUMNS} FROM ({_MERGED_TOUCHED})
    )
    """
