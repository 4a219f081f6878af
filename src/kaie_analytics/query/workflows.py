"""Workflow metrics and performance (spec/METRICS.md), compiled to DuckDB SQL.

A request becomes a frozen query object first (``parse_*``); ``run_*`` compiles
it to a few parameterised statements over the tenant's executions and events,
and assembles the response. Tenant, workflow, period and bucket bounds are
always bound parameters; only names from closed registries reach SQL text.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kaie_analytics.errors import InvalidMetrics, InvalidParameter, WorkflowNotFound
from kaie_analytics.query import numbers as num
from kaie_analytics.query.params import (
    Period,
    bucket_label,
    buckets,
    parse_bool,
    parse_granularity,
    parse_list,
    parse_period,
    parse_timezone,
)
from kaie_analytics.store.duckdb_store import DuckDBEventStore

METRICS = (
    "total_executions",
    "successful_executions",
    "failed_executions",
    "success_rate",
    "average_duration_ms",
    "total_messages_sent",
    "total_messages_received",
    "unique_customers",
    "customer_satisfaction",
    "channel_breakdown",
)
GROUP_BY = ("channel", "customer_segment")


@dataclass(frozen=True, slots=True)
class WorkflowMetricsQuery:
    tenant: str
    workflow_id: str
    period: Period
    granularity: str
    metrics: tuple[str, ...]
    group_by: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class WorkflowPerformanceQuery:
    tenant: str
    workflow_id: str
    period: Period
    include_nodes: bool
    include_channels: bool


def _one(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = params.get(name)
    return values[-1] if values else None


def parse_metrics_query(
    tenant: str, workflow_id: str, params: Mapping[str, Sequence[str]]
) -> WorkflowMetricsQuery:
    tz = parse_timezone(_one(params, "timezone"))
    period = parse_period(_one(params, "start_date"), _one(params, "end_date"), tz)
    granularity = parse_granularity(_one(params, "granularity"))
    metrics = parse_list(params, "metrics")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise InvalidMetrics(
            f"unknown metric(s) {', '.join(unknown)}; valid metrics: {', '.join(METRICS)}",
            field="metrics",
        )
    group_by = parse_list(params, "group_by")
    bad = [g for g in group_by if g not in GROUP_BY]
    if bad:
        raise InvalidParameter(
            f"cannot group by {', '.join(bad)}; valid fields: {', '.join(GROUP_BY)}",
            field="group_by",
        )
    return WorkflowMetricsQuery(
        tenant, workflow_id, period, granularity, metrics or METRICS, group_by
    )


def parse_performance_query(
    tenant: str, workflow_id: str, params: Mapping[str, Sequence[str]]
) -> WorkflowPerformanceQuery:
    tz = parse_timezone(_one(params, "timezone"))
    period = parse_period(_one(params, "start_date"), _one(params, "end_date"), tz)
    return WorkflowPerformanceQuery(
        tenant,
        workflow_id,
        period,
        parse_bool(_one(params, "include_nodes"), "include_nodes", True),
        parse_bool(_one(params, "include_channels"), "include_channels", True),
    )


# --------------------------------------------------------------------- SQL

SEGMENTS_SQL = """
    SELECT customer_id, arg_max(segment, ts) AS segment
    FROM events
    WHERE tenant = $tenant AND type = 'customer.updated' AND segment IS NOT NULL
    GROUP BY customer_id
"""


def _exec_cte(store: DuckDBEventStore, tenant: str, with_segment: bool) -> str:
    """The workflow's executions started in [$lo, $hi], with ``t`` = start."""
    base = f"""
        SELECT *, started_at AS t FROM ({store.executions_sql(tenant)})
        WHERE workflow_id = $workflow AND started_at BETWEEN $lo AND $hi
    """
    if not with_segment:
        return base
    return f"SELECT x.*, seg.segment FROM ({base}) x LEFT JOIN ({SEGMENTS_SQL}) seg USING (customer_id)"


def _event_cte(with_segment: bool) -> str:
    """The workflow's messages and feedback in [$lo, $hi], with ``t`` = timestamp."""
    base = """
        SELECT type, ts AS t, channel, customer_id, csat FROM events
        WHERE tenant = $tenant AND workflow_id = $workflow
          AND type IN ('message.sent', 'message.received', 'feedback.submitted')
          AND ts BETWEEN $lo AND $hi
    """
    if not with_segment:
        return base
    return f"SELECT x.*, seg.segment FROM ({base}) x LEFT JOIN ({SEGMENTS_SQL}) seg USING (customer_id)"


_EXEC_AGG = """
    count(*) AS total,
    count(*) FILTER (WHERE status = 1) AS ok,
    count(*) FILTER (WHERE status = 2) AS failed,
    sum(duration_ms) FILTER (WHERE status > 0) AS dur_sum,
    count(duration_ms) FILTER (WHERE status > 0) AS dur_n
"""
_EXEC_FIELDS = ("total", "ok", "failed", "dur_sum", "dur_n")
#: Distinct customers: not additive, and the costliest aggregate; asked for only where needed.
_CUSTOMERS_AGG = ", count(DISTINCT customer_id) AS customers"

_EVENT_AGG = """
    count(*) FILTER (WHERE type = 'message.sent') AS sent,
    count(*) FILTER (WHERE type = 'message.received') AS received,
    sum(csat) FILTER (WHERE type = 'feedback.submitted') AS csat_sum,
    count(csat) FILTER (WHERE type = 'feedback.submitted') AS csat_n
"""
_EVENT_FIELDS = ("sent", "received", "csat_sum", "csat_n")


def _params(q: WorkflowMetricsQuery | WorkflowPerformanceQuery, period: Period) -> dict[str, Any]:
    return {
        "tenant": q.tenant,
        "workflow": q.workflow_id,
        "lo": period.start_naive,
        "hi": period.end_naive,
    }


def _ensure_workflow(store: DuckDBEventStore, tenant: str, workflow_id: str) -> None:
    if store.workflow(tenant, workflow_id) is None:
        raise WorkflowNotFound(f"no workflow {workflow_id!r} for this tenant", field="workflow_id")


def _sums(
    store: DuckDBEventStore,
    q: WorkflowMetricsQuery,
    params: dict[str, Any],
    keys: str,
    group: str,
    *,
    join: str = "",
    segment: bool = False,
    parts: tuple[str, ...] = ("executions", "events"),
    distinct_customers: bool = True,
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Raw sums of executions and of messages/feedback, per group key.

    ``keys`` selects the key columns (registry expressions only), ``group`` is
    the GROUP BY clause, ``join`` an optional bucket join on ``x.t``.
    """
    n_keys = keys.count(" AS ")
    out: dict[tuple[Any, ...], dict[str, Any]] = defaultdict(dict)
    exec_agg, exec_fields = (
        (_EXEC_AGG + _CUSTOMERS_AGG, (*_EXEC_FIELDS, "customers"))
        if distinct_customers
        else (_EXEC_AGG, _EXEC_FIELDS)
    )
    sources = {
        "executions": (_exec_cte(store, q.tenant, segment), exec_agg, exec_fields),
        "events": (_event_cte(segment), _EVENT_AGG, _EVENT_FIELDS),
    }
    for cte, agg, fields in (sources[p] for p in parts):
        sql = f"SELECT {keys}, {agg} FROM ({cte}) x {join} GROUP BY {group}"
        for row in store.query(sql, params):
            out[tuple(row[:n_keys])].update(zip(fields, row[n_keys:], strict=True))
    return out


def metrics_block(raw: Mapping[str, Any], channels: dict[str, int] | None) -> dict[str, Any]:
    """The metrics of spec/METRICS.md from raw sums (shared with custom reports)."""
    total, ok, failed = raw.get("total") or 0, raw.get("ok") or 0, raw.get("failed") or 0
    return {
        "total_executions": total,
        "successful_executions": ok,
        "failed_executions": failed,
        "success_rate": num.rate(ok, ok + failed),
        "average_duration_ms": num.avg_ms(raw.get("dur_sum"), raw.get("dur_n") or 0),
        "total_messages_sent": raw.get("sent") or 0,
        "total_messages_received": raw.get("received") or 0,
        "unique_customers": raw.get("customers") or 0,
        "customer_satisfaction": num.mean(raw.get("csat_sum"), raw.get("csat_n") or 0, 2),
        "channel_breakdown": channels if channels is not None else {},
    }


def run_workflow_metrics(store: DuckDBEventStore, q: WorkflowMetricsQuery) -> dict[str, Any]:
    _ensure_workflow(store, q.tenant, q.workflow_id)
    period = q.period
    previous = period.previous()
    # One pass over the current and previous periods: totals of each, and per channel.
    # Distinct customers (the costly part) come from the series pass below, unless
    # the channel groups need them too.
    totals = _sums(
        store,
        q,
        {**_params(q, period), "lo": previous.start_naive, "cur_lo": period.start_naive},
        "x.t >= $cur_lo AS cur, grouping(channel) AS g, channel AS channel",
        "GROUPING SETS ((cur), (cur, channel))",
        distinct_customers="channel" in q.group_by,
    )
    # Per channel, with None for what has no channel (a group of its own in group_by).
    by_channel = {ch: raw for (cur, g, ch), raw in totals.items() if cur and not g}
    channels = {
        ch: v["total"]
        for ch, v in sorted(by_channel.items(), key=lambda kv: str(kv[0]))
        if ch is not None and v.get("total")
    }
    starts = [b.astimezone(UTC).replace(tzinfo=None) for b in buckets(period, q.granularity)]
    slots, owners = _slots(starts, period.end_naive)
    # Executions: distinct customers per bucket are not additive, so each row joins
    # its bucket through its 15-minute slot (every bucket edge, in any time zone, is
    # on a slot edge). Messages are additive: sum slots into buckets here.
    series = _sums(
        store,
        q,
        {**_params(q, period), "slots": slots, "owners": owners},
        "grouping(m.owner) AS g, m.owner AS k",
        "GROUPING SETS ((), (m.owner))",
        join="JOIN (SELECT unnest($slots::TIMESTAMP[]) AS slot, unnest($owners::TIMESTAMP[]) AS owner) m"
        " ON time_bucket(INTERVAL 15 MINUTE, x.t) = m.slot",
        parts=("executions",),
    )
    slot_owner = dict(zip(slots, owners, strict=True))
    # Messages and feedback are additive: sum 15-minute slots into buckets here.
    per_slot = _sums(
        store,
        q,
        _params(q, period),
        "time_bucket(INTERVAL 15 MINUTE, x.t) AS k",
        "1",
        parts=("events",),
    )
    current_raw = dict(totals.get((True, 1, None), {}))
    current_raw["customers"] = series.get((1, None), {}).get("customers") or 0
    current = metrics_block(current_raw, channels)
    prev = metrics_block(totals.get((False, 1, None), {}), None)
    for (slot,), sums in per_slot.items():
        bucket = series[(0, slot_owner[slot])]
        for field, value in sums.items():
            bucket[field] = (bucket.get(field) or 0) + (value or 0)
    daily = []
    for start in starts:
        block = metrics_block(series.get((0, start), {}), None)
        daily.append(
            {
                "date": bucket_label(start.replace(tzinfo=UTC), q.granularity, period.tz),
                "executions": block["total_executions"],
                "success_rate": block["success_rate"],
                "average_duration_ms": block["average_duration_ms"],
                "messages_sent": block["total_messages_sent"],
                "messages_received": block["total_messages_received"],
                "unique_customers": block["unique_customers"],
            }
        )
    data: dict[str, Any] = {
        "workflow_id": q.workflow_id,
        "period": period.render(),
        "metrics": {k: current[k] for k in q.metrics},
        "trends": {
            "execution_trend": num.trend(current["total_executions"], prev["total_executions"]),
            "success_rate_trend": num.trend(current["success_rate"], prev["success_rate"]),
            "duration_trend": num.trend(
                current["average_duration_ms"], prev["average_duration_ms"]
            ),
        },
        "daily_metrics": daily,
    }
    if q.group_by:
        data["groups"] = _groups(store, q, by_channel)
    return data


SLOT = timedelta(minutes=15)  # every UTC offset in use is a multiple of 15 minutes


def _slots(starts: list[datetime], end: datetime) -> tuple[list[datetime], list[datetime]]:
    """Every 15-minute UTC slot from the first bucket to ``end``, and its bucket."""
    slots, owners = [], []
    for i, start in enumerate(starts):
        stop = starts[i + 1] if i + 1 < len(starts) else end + SLOT
        slot = start
        while slot < stop:
            slots.append(slot)
            owners.append(start)
            slot += SLOT
    return slots, owners


def _groups(
    store: DuckDBEventStore, q: WorkflowMetricsQuery, by_channel: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    groups = []
    for field in q.group_by:
        blocks: dict[Any, dict[str, Any]] = {}
        if field == "channel":
            for ch, v in by_channel.items():
                blocks[ch] = metrics_block(
                    v, {ch: v["total"]} if ch is not None and v.get("total") else {}
                )
        else:
            per = _sums(
                store,
                q,
                _params(q, q.period),
                "segment AS segment, grouping(channel) AS g, channel AS channel",
                "GROUPING SETS ((segment), (segment, channel))",
                segment=True,
            )
            for (seg, g, _), v in per.items():
                if g:
                    chans = {
                        ch: w["total"]
                        for (s2, g2, ch), w in sorted(per.items(), key=lambda kv: str(kv[0][2]))
                        if s2 == seg and not g2 and ch is not None and w.get("total")
                    }
                    blocks[seg] = metrics_block(v, chans)
        for key in sorted(blocks, key=lambda k: (k is None, str(k))):
            groups.append({field: key, "metrics": {m: blocks[key][m] for m in q.metrics}})
    return groups


# ------------------------------------------------------------- performance


def run_workflow_performance(
    store: DuckDBEventStore, q: WorkflowPerformanceQuery
) -> dict[str, Any]:
    _ensure_workflow(store, q.tenant, q.workflow_id)
    period = q.period
    params = _params(q, period)
    execs = _exec_cte(store, q.tenant, False)
    (total, ok, failed, dsum, dn, p50, p95, p99) = store.query(
        f"""
        SELECT count(*), count(*) FILTER (WHERE status = 1), count(*) FILTER (WHERE status = 2),
            sum(duration_ms) FILTER (WHERE status > 0),
            count(duration_ms) FILTER (WHERE status > 0),
            quantile_cont(duration_ms, 0.5) FILTER (WHERE status > 0),
            quantile_cont(duration_ms, 0.95) FILTER (WHERE status > 0),
            quantile_cont(duration_ms, 0.99) FILTER (WHERE status > 0)
        FROM ({execs})
        """,
        params,
    )[0]
    finished = ok + failed
    by_error = store.query(
        f"""SELECT error_type, count(*) FROM ({execs})
            WHERE status = 2 AND error_type IS NOT NULL GROUP BY ALL ORDER BY 1""",
        params,
    )
    slots = store.query(
        f"SELECT time_bucket(INTERVAL 15 MINUTE, started_at) AS s, count(*) FROM ({execs}) GROUP BY ALL",
        params,
    )
    per_clock_hour: dict[datetime, int] = defaultdict(int)
    per_hour_of_day: dict[int, int] = defaultdict(int)
    for slot, n in slots:
        local = slot.replace(tzinfo=UTC).astimezone(period.tz)
        per_clock_hour[local.replace(minute=0).astimezone(UTC)] += n
        per_hour_of_day[local.hour] += n
    peak_hour = (
        min(per_hour_of_day, key=lambda h: (-per_hour_of_day[h], h)) if per_hour_of_day else None
    )
    hours = period.hours
    performance: dict[str, Any] = {
        "execution_time": {
            "average_ms": num.avg_ms(dsum, dn),
            "median_ms": num.round_ms(p50),
            "p95_ms": num.round_ms(p95),
            "p99_ms": num.round_ms(p99),
        },
        "throughput": {
            "executions_per_hour": num.round_half_up(total / hours, 2) if hours > 0 else None,
            "peak_executions_per_hour": max(per_clock_hour.values(), default=0),
            "peak_hour": f"{peak_hour:02d}:00" if peak_hour is not None else None,
        },
        "error_rate": {
            "overall": num.rate(failed, finished),
            "by_error_type": {err: num.rate(n, finished) for err, n in by_error},
        },
    }
    if q.include_nodes:
        nodes = store.query(
            f"""
            SELECT n.node_id, arg_max(n.node_type, n.ts), count(*),
                count(*) FILTER (WHERE n.ok), sum(n.dur), count(n.dur),
                count(*) FILTER (WHERE NOT n.ok)
            FROM (SELECT unnest(nodes) AS n FROM ({execs}))
            GROUP BY n.node_id
            ORDER BY count(*) DESC, n.node_id
            """,
            params,
        )
        performance["node_performance"] = [
            {
                "node_id": node_id,
                "type": node_type,
                "execution_count": count,
                "success_rate": num.rate(done, count),
                "average_duration_ms": num.avg_ms(dsum_n, dcount),
                "error_count": errors,
            }
            for node_id, node_type, count, done, dsum_n, dcount, errors in nodes
        ]
    if q.include_channels:
        rows = store.query(
            f"""SELECT channel, count(*), count(*) FILTER (WHERE status = 1), count(*) FILTER (WHERE status = 2),
                    sum(duration_ms) FILTER (WHERE status > 0),
                    count(duration_ms) FILTER (WHERE status > 0)
                FROM ({execs}) WHERE channel IS NOT NULL GROUP BY ALL ORDER BY 1""",
            params,
        )
        performance["channel_performance"] = {
            ch: {
                "executions": n,
                "success_rate": num.rate(c_ok, c_ok + c_failed),
                "average_duration_ms": num.avg_ms(c_dsum, c_dn),
            }
            for ch, n, c_ok, c_failed, c_dsum, c_dn in rows
        }
    return {"workflow_id": q.workflow_id, "period": period.render(), "performance": performance}
