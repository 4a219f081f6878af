"""The metric registry: each workflow metric of spec/METRICS.md, defined once.

An entry names the facts it is computed from (``facts.Measure``) and how its
value (rounded as the spec says) follows from a cell's :class:`facts.Sums`.
The workflow endpoints, custom reports, the ``workflow_metrics`` export and
the dashboard all read values from here, so a number cannot drift between them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kaie_analytics.analytics import numbers as num
from kaie_analytics.analytics.facts import Measure, Sums

#: The duration percentiles reports and performance ask engines for.
QUANTILES = (0.5, 0.95, 0.99)


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    needs: Measure
    value: Callable[[Sums], Any]
    description: str


def _quantile(q: float) -> Callable[[Sums], Any]:
    at = QUANTILES.index(q)
    return lambda s: num.round_ms(s.quantiles[at]) if s.quantiles else None


def success_rate(s: Sums) -> float | None:
    return num.rate(s.successful, s.successful + s.failed)


def average_duration_ms(s: Sums) -> int | None:
    return num.avg_ms(s.duration_sum, s.durations)


REGISTRY: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("total_executions", "executions", lambda s: s.executions,
               "executions that started in the period"),
        Metric("successful_executions", "executions", lambda s: s.successful,
               "executions with status success"),
        Metric("failed_executions", "executions", lambda s: s.failed,
               "executions with status failed"),
        Metric("success_rate", "executions", success_rate,
               "successful ÷ (successful + failed), 4 decimals"),
        Metric("average_duration_ms", "executions", average_duration_ms,
               "mean duration of finished executions that have one, whole ms"),
        Metric("median_duration_ms", "durations", _quantile(0.5),
               "median duration of finished executions, whole ms"),
        Metric("p95_duration_ms", "durations", _quantile(0.95),
               "95th percentile of their durations, whole ms"),
        Metric("p99_duration_ms", "durations", _quantile(0.99),
               "99th percentile of their durations, whole ms"),
        Metric("total_messages_sent", "messages", lambda s: s.sent,
               "message.sent events of the workflow in the period"),
        Metric("total_messages_received", "messages", lambda s: s.received,
               "message.received events of the workflow in the period"),
        Metric("unique_customers", "customers", lambda s: s.customers,
               "distinct customers of the executions"),
        Metric("customer_satisfaction", "messages",
               lambda s: num.mean(s.csat_sum, s.csat_count, 2),
               "mean CSAT of the workflow's feedback, 2 decimals"),
    )
}  # fmt: skip

#: The metrics of ``GET /v1/analytics/workflows/{id}`` (``channel_breakdown`` is
#: the executions per channel, from cells by channel).
WORKFLOW_METRICS = (
    "total_executions", "successful_executions", "failed_executions", "success_rate",
    "average_duration_ms", "total_messages_sent", "total_messages_received",
    "unique_customers", "customer_satisfaction", "channel_breakdown",
)  # fmt: skip
#: The metrics a custom report can hold.
REPORT_METRICS = (
    "total_executions", "successful_executions", "failed_executions", "success_rate",
    "average_duration_ms", "median_duration_ms", "p95_duration_ms", "total_messages_sent",
    "total_messages_received", "unique_customers", "customer_satisfaction",
)  # fmt: skip


def measures(names: Iterable[str]) -> frozenset[Measure]:
    """The facts the named metrics need (``channel_breakdown`` needs executions)."""
    return frozenset(REGISTRY[n].needs if n in REGISTRY else "executions" for n in names)


def values(sums: Sums, names: Iterable[str]) -> dict[str, Any]:
    """The named metrics (registry names only) of one cell."""
    return {n: REGISTRY[n].value(sums) for n in names}


def channel_breakdown(by_channel: Mapping[Any, Sums]) -> dict[str, int]:
    """``{channel: executions}`` for every channel with at least one, by name."""
    return {
        ch: s.executions
        for ch, s in sorted(by_channel.items(), key=lambda kv: str(kv[0]))
        if ch is not None and s.executions
    }


def total(cells: Iterable[Sums]) -> Sums:
    """The additive facts of several cells, added up."""
    out = Sums()
    for s in cells:
        out.add(s)
    return out
