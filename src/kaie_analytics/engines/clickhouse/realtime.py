"""Realtime facts in ClickHouse SQL, from the last day's events."""

from __future__ import annotations

from typing import Any

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
from kaie_analytics.engines.clickhouse import sql
from kaie_analytics.engines.clickhouse.transport import Transport

_FILTERS = (
    "({workflow:Nullable(String)} IS NULL OR workflow_id = {workflow:Nullable(String)})"
    " AND ({channel:Nullable(String)} IS NULL OR channel = {channel:Nullable(String)})"
)
_NOW, _HOUR_AGO = sql.time_param("now"), sql.time_param("hour_ago")
_LAST_HOUR = sql.tenant_events(
    None,
    "type, ts, workflow_id, customer_id, channel",
    f"ts >= {_HOUR_AGO} AND ts <= {_NOW} AND {_FILTERS}",
)
_SUMS = f"""countIf(type LIKE 'execution.%'), countIf(type IN {sql.MESSAGE_TYPES}),
    uniqExactIf(customer_id, type IN {sql.MESSAGE_TYPES} AND ts >= {sql.time_param("half_hour_ago")})"""
#: Per row its scope (``facts.realtime_facts``): the total, a workflow's, a channel's;
#: one read of the hour, a grouping set per scope (``grouping()``: a bit per column,
#: the first the highest, set when the column is not in the row's set).
LAST_HOUR_SQL = f"""
SELECT multiIf(grouping(workflow_id, channel) = 3, {TOTAL},
               grouping(workflow_id, channel) = 1, {BY_WORKFLOW}, {BY_CHANNEL}),
    workflow_id, channel, {_SUMS}
FROM ({_LAST_HOUR})
GROUP BY GROUPING SETS ((), (workflow_id), (channel))
"""
_LAST_DAY = f"started_at BETWEEN {sql.time_param('day_ago')} AND {_NOW}"
#: Running executions, by whether the tenant has executions waiting for a fold.
RUNNING = {
    pending: f"""
SELECT workflow_id, count() FROM ({sql.executions(_LAST_DAY, pending=pending)})
WHERE status = 0 AND {_LAST_DAY} AND {_FILTERS}
GROUP BY workflow_id
"""
    for pending in (True, False)
}
_RECEIVED = sql.tenant_events(
    "('message.received')",
    "ts, workflow_id, customer_id, channel",
    f"ts >= {_HOUR_AGO} AND ts <= {_NOW} AND {_FILTERS}",
)
_SENT = sql.tenant_events(
    "('message.sent')", "ts, customer_id, channel", f"ts >= {_HOUR_AGO} AND ts <= {_NOW}"
)
#: A customer's message, and our next reply on the same channel.
_GAPS = f"""
SELECT r.workflow_id AS workflow_id, {sql.us("s.ts")} - {sql.us("r.ts")} AS gap
FROM ({_RECEIVED}) r ASOF JOIN ({_SENT}) s
ON r.customer_id = s.customer_id AND r.channel = s.channel AND r.ts <= s.ts
"""
#: Per row its scope: the total, a workflow's (one join, a grouping set each).
REPLIES = f"""
SELECT if(grouping(workflow_id) = 1, {TOTAL}, {BY_WORKFLOW}), workflow_id, sum(gap), count()
FROM ({_GAPS}) WHERE gap <= {REPLY_WITHIN_US}
GROUP BY GROUPING SETS ((), (workflow_id))
"""


def realtime(transport: Transport, q: RealtimeQuery, folded: int, pending: bool) -> RealtimeFacts:
    now = q.now
    params: dict[str, Any] = {
        "tenant": q.tenant,
        "folded": folded,
        "now": sql.epoch_us(now),
        "hour_ago": sql.epoch_us(now - LAST_HOUR),
        "day_ago": sql.epoch_us(now - RUNNING_WITHIN),
        "half_hour_ago": sql.epoch_us(now - IN_CONVERSATION),
        "workflow": q.workflow_id,
        "channel": q.channel,
    }
    # Side by side, each on its own snapshot.
    running_table, last_hour, replies = transport.query_all(
        [(RUNNING[pending], params), (LAST_HOUR_SQL, params), (REPLIES, params)]
    )
    return realtime_facts(sql.rows(running_table), sql.rows(last_hour), sql.rows(replies))
