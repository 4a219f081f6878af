"""Realtime facts, read straight from the events.

Every event whose timestamp is in the last 24 hours was ingested in the last
24 hours and 10 minutes (timestamps may be at most 10 minutes ahead of the
server's clock), so every query first narrows to those rows by ``ingested_at``,
which grows with the table and so prunes by zone maps.
"""

from __future__ import annotations

from datetime import timedelta

from kaie_analytics.analytics.facts import (
    BY_CHANNEL,
    BY_WORKFLOW,
    IN_CONVERSATION,
    LAST_HOUR,
    REPLY_WITHIN_US,
    RUNNING_WITHIN,
    TOTAL,
    RealtimeFacts,
    RealtimeQuery,
    realtime_facts,
)
from kaie_analytics.engines.duckdb.store import DuckDBEventStore

FUTURE_SLACK = timedelta(minutes=10)


def realtime(store: DuckDBEventStore, q: RealtimeQuery) -> RealtimeFacts:
    now = q.now
    params = {
        "tenant": q.tenant,
        "now": now,
        "hour_ago": now - LAST_HOUR,
        "day_ago": now - RUNNING_WITHIN,
        "half_hour_ago": now - IN_CONVERSATION,
        "ingest_lo": now - RUNNING_WITHIN - FUTURE_SLACK,
        "workflow": q.workflow_id,
        "channel": q.channel,
    }
    recent = """
        SELECT type, ts, workflow_id, execution_id, customer_id, channel FROM events
        WHERE tenant = $tenant AND ingested_at >= $ingest_lo AND ts <= $now
    """
    filters = "($workflow IS NULL OR workflow_id = $workflow) AND ($channel IS NULL OR channel = $channel)"
    running = f"""SELECT workflow_id, count(*) FROM ({store.executions_sql(q.tenant)})
            WHERE status = 0 AND started_at BETWEEN $day_ago AND $now AND {filters}
            GROUP BY workflow_id"""
    # The scope of each row as ``facts.realtime_facts`` reads it.
    last_hour = f"""SELECT CASE grouping(workflow_id, channel) WHEN 3 THEN {TOTAL}
                    WHEN 1 THEN {BY_WORKFLOW} ELSE {BY_CHANNEL} END,
                workflow_id, channel,
                count(*) FILTER (WHERE type LIKE 'execution.%'),
                count(*) FILTER (WHERE type IN ('message.sent', 'message.received')),
                count(DISTINCT customer_id) FILTER (
                    WHERE type IN ('message.sent', 'message.received') AND ts >= $half_hour_ago)
            FROM ({recent})
            WHERE ts >= $hour_ago AND {filters}
            GROUP BY GROUPING SETS ((), (workflow_id), (channel))"""
    replies = f"""
        WITH received AS (
            SELECT ts, workflow_id, customer_id, channel FROM ({recent})
            WHERE type = 'message.received' AND ts >= $hour_ago AND {filters}
        ),
        sent AS (
            SELECT ts AS sent_ts, customer_id, channel FROM ({recent})
            WHERE type = 'message.sent' AND ts >= $hour_ago
        )
        SELECT CASE grouping(workflow_id) WHEN 1 THEN {TOTAL} ELSE {BY_WORKFLOW} END,
            workflow_id, sum(gap), count(gap) FROM (
            SELECT r.workflow_id, epoch_us(s.sent_ts) - epoch_us(r.ts) AS gap
            FROM received r ASOF JOIN sent s
              ON r.customer_id = s.customer_id AND r.channel = s.channel AND s.sent_ts >= r.ts
        )
        WHERE gap <= {REPLY_WITHIN_US}
        GROUP BY GROUPING SETS ((), (workflow_id))
        """
    # Side by side, each on its own snapshot.
    running_rows, last_hour_rows, reply_rows = store.query_all(
        [(sql, params) for sql in (running, last_hour, replies)]
    )
    return realtime_facts(running_rows, last_hour_rows, reply_rows)
