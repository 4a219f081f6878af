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

from kaie_analytics.query import numbers as num
from kaie_analytics.query.params import iso, parse_bool
from kaie_analytics.store.duckdb_store import DuckDBEventStore

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
    running = store.query(
        """
        SELECT wf, count(*) FROM (
            SELECT execution_id,
                arg_min(workflow_id, ts) FILTER (WHERE type = 'execution.started') AS wf,
                arg_min(channel, ts) FILTER (WHERE type = 'execution.started') AS ch,
                bool_or(type = 'execution.started' AND ts >= $day_ago) AS recent_start,
                bool_or(type <> 'execution.started') AS finished
            FROM events
            WHERE tenant = $tenant AND ingested_at >= $ingest_lo
              AND type IN ('execution.started', 'execution.completed', 'execution.failed')
            GROUP BY execution_id
        )
        WHERE recent_start AND NOT finished
          AND ($workflow IS NULL OR wf = $workflow) AND ($channel IS NULL OR ch = $channel)
        GROUP BY wf
        """,
        params,
    )
    active_by_wf = {wf: n for wf, n in running}
    filters = "($workflow IS NULL OR workflow_id = $workflow) AND ($channel IS NULL OR channel = $channel)"
    active_workflows = [
        r[0]
        for r in store.query(
            f"""SELECT DISTINCT workflow_id FROM ({recent})
                WHERE type LIKE 'execution.%' AND ts >= $hour_ago AND {filters}
                ORDER BY 1""",
            params,
        )
    ]
    messages = store.query(
        f"""SELECT grouping(workflow_id, channel), workflow_id, channel, count(*)
            FROM ({recent})
            WHERE type IN ('message.sent', 'message.received') AND ts >= $hour_ago AND {filters}
            GROUP BY GROUPING SETS ((), (workflow_id), (channel))""",
        params,
    )
    conversations = store.query(
        f"""SELECT channel, count(DISTINCT customer_id) FROM ({recent})
            WHERE type IN ('message.sent', 'message.received') AND ts >= $half_hour_ago
              AND {filters}
            GROUP BY channel""",
        params,
    )
    replies = store.query(
        f"""
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
        """,
        params,
    )
    total_msgs = 0
    msgs_by_wf: dict[str, int] = {}
    msgs_by_channel: dict[str, int] = {}
    for grouping, wf, ch, n in messages:
        if grouping == 3:
            total_msgs = n
        elif grouping == 1:  # grouped by workflow
            if wf is not None:
                msgs_by_wf[wf] = n
        elif ch is not None:
            msgs_by_channel[ch] = n
    reply_total: tuple[int, int] = (0, 0)
    reply_by_wf: dict[str, tuple[int, int]] = {}
    for grouping, wf, total, count in replies:
        if grouping == 1:
            reply_total = (total or 0, count)
        elif wf is not None:
            reply_by_wf[wf] = (total or 0, count)
    conv = {ch: n for ch, n in conversations if ch is not None}
    channels = sorted(set(msgs_by_channel) | set(conv))
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
