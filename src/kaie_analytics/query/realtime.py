"""GET /v1/analytics/realtime (spec/METRICS.md), read straight from the events.

Every event whose timestamp is in the last 24 hours was ingested in the last
24 hours and 10 minutes (timestamps may be at most 10 minutes ahead of the
server's clock), so every query first narrows to those rows by ``ingested_at``,
which grows with the table and so prunes by zone maps. Nothing here is cached:
an accepted event is in the next answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psutil

from kaie_analytics.analytics import numbers as num
from kaie_analytics.analytics.periods import iso, parse_bool
from kaie_analytics.engines.duckdb.store import DuckDBEventStore

FUTURE_SLACK = timedelta(minutes=10)
HOUR = timedelta(hours=1)
DAY = timedelta(hours=24)
CONVERSATION = timedelta(minutes=30)
REPLY_WINDOW_US = 30 * 60 * 1_000_000


@dataclass(frozen=True, slots=True)
class RealtimeQuery:
    tenant: str
    workflow_id: str | None
    channel: str | None
    include_system: bool


def parse_realtime_query(tenant: str, params: Mapping[str, Sequence[str]]) -> RealtimeQuery:
    def one(name: str) -> str | None:
        values = params.get(name)
        return values[-1] if values and values[-1] != "" else None

    return RealtimeQuery(
        tenant,
        one("workflow_id"),
        one("channel"),
        parse_bool(one("include_system"), "include_system", False),
    )


def run_realtime(
    store: DuckDBEventStore,
    q: RealtimeQuery,
    *,
    health: str,
    api_response_time_ms: float | None,
    now: datetime | None = None,
) -> dict[str, Any]:
    now = (now or datetime.now(UTC)).astimezone(UTC)
    naive = now.replace(tzinfo=None)
    params: dict[str, Any] = {
        "tenant": q.tenant,
        "now": naive,
        "hour_ago": naive - HOUR,
        "day_ago": naive - DAY,
        "half_hour_ago": naive - CONVERSATION,
        "ingest_lo": naive - DAY - FUTURE_SLACK,
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
    active_by_wf = {wf: n for wf, n in running_rows}
    total_msgs = 0
    active_workflows: list[str] = []
    msgs_by_wf: dict[str, int] = {}
    msgs_by_channel: dict[str, int] = {}
    conv: dict[str, int] = {}
    for grouping, wf, ch, exec_events, n_msgs, conversations in last_hour_rows:
        if grouping == 3:
            total_msgs = n_msgs
        elif grouping == 1:  # per workflow
            if wf is not None:
                msgs_by_wf[wf] = n_msgs
                if exec_events:
                    active_workflows.append(wf)
        elif ch is not None and (n_msgs or conversations):
            msgs_by_channel[ch] = n_msgs
            conv[ch] = conversations
    active_workflows.sort()
    reply_total: tuple[int, int] = (0, 0)
    reply_by_wf: dict[str, tuple[int, int]] = {}
    for grouping, wf, total, count in reply_rows:
        if grouping == 1:
            reply_total = (total or 0, count)
        elif wf is not None:
            reply_by_wf[wf] = (total or 0, count)
    channels = sorted(msgs_by_channel)
    data: dict[str, Any] = {
        "timestamp": iso(now),
        "current_metrics": {
            "active_workflows": len(active_workflows),
            "active_executions": sum(active_by_wf.values()),
            "messages_in_last_hour": total_msgs,
            "average_response_time_ms": _mean_ms(*reply_total),
            "system_health": health,
        },
        "workflow_metrics": [
            {
                "workflow_id": wf,
                "name": getattr(store.workflow(q.tenant, wf), "name", None),
                "active_executions": active_by_wf.get(wf, 0),
                "messages_in_last_hour": msgs_by_wf.get(wf, 0),
                "average_response_time_ms": _mean_ms(*reply_by_wf.get(wf, (0, 0))),
            }
            for wf in active_workflows
        ],
        "channel_metrics": {
            ch: {
                "active_conversations": conv.get(ch, 0),
                "messages_in_last_hour": msgs_by_channel.get(ch, 0),
            }
            for ch in channels
        },
    }
    if q.include_system:
        data["system_metrics"] = {
            "cpu_usage": round(psutil.cpu_percent(interval=None), 1),
            "memory_usage": round(psutil.virtual_memory().percent, 1),
            "api_response_time_ms": None
            if api_response_time_ms is None
            else round(api_response_time_ms, 1),
        }
    return data


def _mean_ms(total_us: int, count: int) -> int | None:
    return num.mean_us_as_ms(total_us, count)
