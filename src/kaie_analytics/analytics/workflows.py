"""Workflow metrics and performance (spec/METRICS.md), from the engine's facts.

A request becomes a frozen query object (``parse_*``); its runner asks the
engine for the cells it needs (``facts.ActivityQuery``) and shapes the answer,
taking every value from the metric registry.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from kaie_analytics.analytics import metrics as reg
from kaie_analytics.analytics import numbers as num
from kaie_analytics.analytics.facts import (
    ActivityQuery,
    Ask,
    Cells,
    Dimension,
    EventEngine,
    Measure,
    Sums,
)
from kaie_analytics.analytics.periods import (
    Period,
    bucket_label,
    bucket_windows,
    local_times,
    parse_bool,
    parse_granularity,
    parse_list,
    parse_period,
    parse_timezone,
)
from kaie_analytics.analytics.runners import QueryRunner
from kaie_analytics.errors import InvalidMetrics, InvalidParameter, WorkflowNotFound

METRICS = reg.WORKFLOW_METRICS
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


def _ensure_workflow(engine: EventEngine, tenant: str, workflow_id: str) -> None:
    if engine.workflow(tenant, workflow_id) is None:
        raise WorkflowNotFound(f"no workflow {workflow_id!r} for this tenant", field="workflow_id")


def metrics_block(cell: Sums, by_channel: Mapping[Any, Sums] | None) -> dict[str, Any]:
    """Every workflow metric of one cell (``channel_breakdown`` from ``by_channel``)."""
    block = reg.values(cell, (m for m in METRICS if m != "channel_breakdown"))
    block["channel_breakdown"] = reg.channel_breakdown(by_channel) if by_channel else {}
    return block


def _per(cells: Cells, window: int) -> dict[Any, Sums]:
    """The cells of one window, by their one dimension's value."""
    return {key[1]: s for key, s in cells.items() if key[0] == window}


class WorkflowMetricsRunner(QueryRunner[WorkflowMetricsQuery]):
    kind: ClassVar[str] = "workflow_metrics"

    def compute(self) -> dict[str, Any]:
        q, engine = self.query, self.engine
        _ensure_workflow(engine, q.tenant, q.workflow_id)
        period = q.period
        series = bucket_windows(period, q.granularity)
        # Windows: 0 the previous period, 1 the period, then each bucket.
        prev, cur = period.previous().window, period.window
        windows = (prev, cur, *(w for _, w in series))
        in_buckets = tuple(range(2, len(windows)))
        sums: frozenset[Measure] = frozenset({"executions", "messages"})
        customers: frozenset[Measure] = frozenset({"customers"})
        asks = [
            # By channel per bucket: the period's totals add up from these.
            Ask((0, *in_buckets), sums, ("channel",)),
            Ask((1, *in_buckets), customers),
        ]
        if q.group_by:
            # One group per combination of the fields' values; without channel among
            # them, the cells by channel too, for each group's channel breakdown.
            by = cast(tuple[Dimension, ...], q.group_by)
            asks.append(Ask((1,), sums | customers, by))
            if "channel" not in by:
                asks.append(Ask((1,), frozenset({"executions"}), (*by, "channel")))
        cells = engine.activity(
            ActivityQuery(q.tenant, windows, tuple(asks), workflow_ids=(q.workflow_id,))
        )
        by_bucket_channel, distinct = cells[0], cells[1]
        cur_by_channel: dict[Any, Sums] = defaultdict(Sums)
        per_bucket: dict[int, Sums] = defaultdict(Sums)
        for (w, channel), s in by_bucket_channel.items():
            if w >= 2:
                cur_by_channel[channel].add(s)
                per_bucket[w].add(s)
        current = reg.total(cur_by_channel.values())
        current.customers = distinct.get((1,), Sums()).customers
        previous = reg.total(_per(by_bucket_channel, 0).values())
        block = metrics_block(current, cur_by_channel)
        before = metrics_block(previous, None)
        daily = []
        for w, (start, _) in enumerate(series, start=2):
            s = per_bucket[w]
            s.customers = distinct.get((w,), Sums()).customers
            values = reg.values(s, ("total_executions", "success_rate", "average_duration_ms",
                                    "total_messages_sent", "total_messages_received",
                                    "unique_customers"))  # fmt: skip
            daily.append(
                {
                    "date": bucket_label(start, q.granularity, period.tz),
                    "executions": values["total_executions"],
                    "success_rate": values["success_rate"],
                    "average_duration_ms": values["average_duration_ms"],
                    "messages_sent": values["total_messages_sent"],
                    "messages_received": values["total_messages_received"],
                    "unique_customers": values["unique_customers"],
                }
            )
        data: dict[str, Any] = {
            "workflow_id": q.workflow_id,
            "period": period.render(),
            "metrics": {k: block[k] for k in q.metrics},
            "trends": {
                "execution_trend": num.trend(block["total_executions"], before["total_executions"]),
                "success_rate_trend": num.trend(block["success_rate"], before["success_rate"]),
                "duration_trend": num.trend(
                    block["average_duration_ms"], before["average_duration_ms"]
                ),
            },
            "daily_metrics": daily,
        }
        if q.group_by:
            data["groups"] = self._groups(cells[2:])
        return data

    def _groups(self, cells: list[Cells]) -> list[dict[str, Any]]:
        """One group per combination of the ``group_by`` fields' values."""
        q = self.query
        n = len(q.group_by)
        per_group = {key[1:]: s for key, s in cells[0].items()}
        by_channel: dict[tuple[Any, ...], dict[Any, Sums]] = defaultdict(dict)
        if "channel" in q.group_by:
            at = q.group_by.index("channel")
            for key, s in per_group.items():
                by_channel[key][key[at]] = s
        else:
            for key, s in cells[1].items():
                by_channel[key[1 : 1 + n]][key[-1]] = s
        groups = []
        for key in sorted(per_group, key=lambda k: [(v is None, str(v)) for v in k]):
            block = metrics_block(per_group[key], by_channel.get(key, {}))
            groups.append(
                {**dict(zip(q.group_by, key, strict=True)),
                 "metrics": {m: block[m] for m in q.metrics}}
            )  # fmt: skip
        return groups


# ------------------------------------------------------------- performance


class WorkflowPerformanceRunner(QueryRunner[WorkflowPerformanceQuery]):
    kind: ClassVar[str] = "workflow_performance"

    def compute(self) -> dict[str, Any]:
        q, engine = self.query, self.engine
        _ensure_workflow(engine, q.tenant, q.workflow_id)
        period = q.period
        executions: frozenset[Measure] = frozenset({"executions"})
        asks = [
            Ask((0,), executions, ("channel", "error_type")),
            Ask((0,), frozenset({"durations"})),
            Ask((0,), executions, ("hour",)),
        ]
        if q.include_nodes:
            asks.append(Ask((0,), frozenset({"nodes"}), ("node_id",)))
        by_key, durations, per_hour_cells, *nodes = engine.activity(
            ActivityQuery(
                q.tenant,
                (period.window,),
                tuple(asks),
                workflow_ids=(q.workflow_id,),
                quantiles=reg.QUANTILES,
                timezone=period.tz.key,
            )
        )
        by_channel: dict[str, Sums] = defaultdict(Sums)
        failed_by_error: dict[str, int] = defaultdict(int)
        for (_, channel, error_type), s in by_key.items():
            if channel is not None:
                by_channel[channel].add(s)
            if error_type is not None and s.failed:
                failed_by_error[error_type] += s.failed
        overall = reg.total(by_key.values())
        overall.quantiles = durations.get((0,), Sums()).quantiles
        finished = overall.successful + overall.failed
        # Executions per clock hour, and per hour of the day summed over the period.
        per_clock = {key[1]: s.executions for key, s in per_hour_cells.items()}
        per_hour: dict[int, int] = defaultdict(int)
        for start, n in zip(local_times(per_clock, period.tz), per_clock.values(), strict=True):
            per_hour[start.hour] += n
        peak_hour = min(per_hour, key=lambda h: (-per_hour[h], h)) if per_hour else None
        values = reg.values(overall, ("average_duration_ms", "median_duration_ms",
                                      "p95_duration_ms", "p99_duration_ms"))  # fmt: skip
        performance: dict[str, Any] = {
            "execution_time": {
                "average_ms": values["average_duration_ms"],
                "median_ms": values["median_duration_ms"],
                "p95_ms": values["p95_duration_ms"],
                "p99_ms": values["p99_duration_ms"],
            },
            "throughput": {
                "executions_per_hour": num.round_half_up(overall.executions / period.hours, 2)
                if period.hours > 0
                else None,
                "peak_executions_per_hour": max(per_clock.values(), default=0),
                "peak_hour": f"{peak_hour:02d}:00" if peak_hour is not None else None,
            },
            "error_rate": {
                "overall": num.rate(overall.failed, finished),
                "by_error_type": {
                    err: num.rate(n, finished) for err, n in sorted(failed_by_error.items())
                },
            },
        }
        if q.include_nodes:
            ordered = sorted(
                ((key[1], s) for key, s in nodes[0].items()),
                key=lambda kv: (-kv[1].node_events, kv[0] is None, kv[0] or ""),
            )
            performance["node_performance"] = [
                {
                    "node_id": node_id,
                    "type": s.node_type,
                    "execution_count": s.node_events,
                    "success_rate": num.rate(s.node_ok, s.node_events),
                    "average_duration_ms": num.avg_ms(s.node_duration_sum, s.node_durations),
                    "error_count": s.node_errors,
                }
                for node_id, s in ordered
            ]
        if q.include_channels:
            performance["channel_performance"] = {
                ch: {
                    "executions": s.executions,
                    "success_rate": reg.success_rate(s),
                    "average_duration_ms": reg.average_duration_ms(s),
                }
                for ch, s in sorted(by_channel.items())
            }
        return {"workflow_id": q.workflow_id, "period": period.render(), "performance": performance}
