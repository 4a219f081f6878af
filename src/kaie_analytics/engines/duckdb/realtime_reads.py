"""Realtime facts, read straight from the events.

Every event whose timestamp is in the last 24 hours was ingested in the last
24 hours and 10 minutes (timestamps may be at most 10 minutes ahead of the
server's clock), so every query first narrows to those rows by ``ingested_at``,
which grows with the table and so prunes by zone maps.
"""

from __future__ import annotations

from datetime import timedelta

from kaie_analytics.analytics.facts import RealtimeFacts, RealtimeQuery
from kaie_analytics.engines.duckdb.store import DuckDBEventStore

FUTURE_SLACK = timedelta(minutes=10)
HOUR = timedelta(hours=1)
DAY = timedelta(hours=24)
CONVERSATION = timedelta(minutes=30)
REPLY_WINDOW_US = 30 * 60 * 1_000_000


def realtime(store: DuckDBEventStore, q: RealtimeQuery) -> RealtimeFacts:
    now = q.now
    params = {
        "tenant": q.tenant,
        "now": now,
        "hour_ago": now - HOUR,
        "day_ago": now - DAY,
        "half_hour_ago": now - CONVERSATION,
        "ingest_lo": now - DAY - FUTURE_SLACK,
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
    last_hour = f"""SELECT grouping(workflow_id, channel), workflow_id, channel,
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
        SELECT grouping(workflow_id), workflow_id, sum(gap), count(gap) FROM (
            SELECT r.workflow_id, epoch_us(s.sent_ts) - epoch_us(r.ts) AS gap
            FROM received r ASOF JOIN sent s
              ON r.customer_id = s.customer_id AND r.channel = s.channel AND s.sent_ts >= r.ts
        )
        WHERE gap <= {REPLY_WINDOW_US}
        GROUP BY GROUPING SETS ((), (workflow_id))
        """
    # Side by side, each on its own snapshot.
    running_rows, last_hour_rows, reply_rows = store.query_all(
        [(sql, params) for sql in (running, last_hour, replies)]
    )
    messages = 0
    with_executions: list[str] = []
    by_workflow: dict[str, int] = {}
    by_channel: dict[str, int] = {}
    conversations: dict[str, int] = {}
    for grouping, wf, ch, exec_events, n_messages, customers in last_hour_rows:
        if grouping == 3:
            messages = n_messages
        elif grouping == 1:  # per workflow
            if wf is not None:
                by_workflow[wf] = n_messages
                if exec_events:
                    with_executions.append(wf)
        elif ch is not None and (n_messages or customers):
            by_channel[ch] = n_messages
            conversations[ch] = customers
    reply_total: tuple[int, int] = (0, 0)
    reply_by_workflow: dict[str, tuple[int, int]] = {}
    for grouping, wf, total, count in reply_rows:
        if grouping == 1:
            reply_total = (total or 0, count)
        elif wf is not None:
            reply_by_workflow[wf] = (total or 0, count)
    return RealtimeFacts(
        running={wf: n for wf, n in running_rows},
        messages=messages,
        messages_by_workflow=by_workflow,
        workflows_with_executions=tuple(sorted(with_executions)),
        messages_by_channel=by_channel,
        conversations_by_channel=conversations,
        reply_us=reply_total,
        reply_us_by_workflow=reply_by_workflow,
    )
