"""Custom reports: the requested metrics over filters, per group and bucket.

A report request is validated into a frozen :class:`ReportRequest` when it is
posted (so a bad request fails at once, not in the worker); the worker runs
:func:`report_rows` and renders the rows in the requested format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, cast

from kaie_analytics.analytics import metrics as reg
from kaie_analytics.analytics.facts import ActivityQuery, Ask, Dimension, EventEngine, Sums
from kaie_analytics.analytics.periods import (
    Period,
    bucket_label,
    bucket_windows,
    buckets,
    parse_granularity,
    parse_period,
    parse_string_list,
    parse_timezone,
)
from kaie_analytics.analytics.runners import QueryRunner
from kaie_analytics.errors import InvalidMetrics, InvalidParameter

REPORT_METRICS = reg.REPORT_METRICS
REPORT_GROUP_BY = ("workflow_id", "channel", "customer_segment")
REPORT_FORMATS = ("json", "csv", "pdf")


@dataclass(frozen=True, slots=True)
class ReportRequest:
    name: str
    description: str | None
    metrics: tuple[str, ...]
    period: Period
    workflow_ids: tuple[str, ...]
    channels: tuple[str, ...]
    group_by: tuple[str, ...]
    granularity: str | None
    format: str

    def as_params(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "metrics": list(self.metrics),
            "filters": {
                "start_date": self.period.start.isoformat(),
                "end_date": self.period.end.isoformat(),
                "timezone": self.period.tz.key,
                "workflow_ids": list(self.workflow_ids),
                "channels": list(self.channels),
            },
            "group_by": list(self.group_by),
            "granularity": self.granularity,
            "format": self.format,
        }


def _text(body: dict[str, Any], field: str, max_len: int, required: bool) -> str | None:
    value = body.get(field)
    if value is None:
        if required:
            raise InvalidParameter(f"{field} is required", field=field)
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= max_len:
        raise InvalidParameter(
            f"{field} must be a string of 1 to {max_len} characters", field=field
        )
    return value


def parse_report_request(body: Any) -> ReportRequest:
    if not isinstance(body, dict):
        raise InvalidParameter("the body must be a JSON object", field="body")
    known = {"name", "description", "metrics", "filters", "group_by", "granularity", "format"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise InvalidParameter(f"unknown field {unknown[0]!r}", field=unknown[0])
    name = _text(body, "name", 200, True)
    description = _text(body, "description", 2000, False)
    metrics = parse_string_list(body.get("metrics"), "metrics")
    if not metrics:
        raise InvalidMetrics(
            f"metrics is required; valid metrics: {', '.join(REPORT_METRICS)}", field="metrics"
        )
    bad = [m for m in metrics if m not in REPORT_METRICS]
    if bad:
        raise InvalidMetrics(
            f"unknown metric(s) {', '.join(bad)}; valid metrics: {', '.join(REPORT_METRICS)}",
            field="metrics",
        )
    filters = {} if body.get("filters") is None else body["filters"]
    if not isinstance(filters, dict):
        raise InvalidParameter("filters must be an object", field="filters")
    extra = sorted(
        set(filters) - {"start_date", "end_date", "timezone", "workflow_ids", "channels"}
    )
    if extra:
        raise InvalidParameter(f"unknown filter {extra[0]!r}", field=f"filters.{extra[0]}")
    tz = parse_timezone(filters.get("timezone"), "filters.timezone")
    period = parse_period(
        filters.get("start_date"),
        filters.get("end_date"),
        tz,
        fields=("filters.start_date", "filters.end_date"),
    )
    group_by = parse_string_list(body.get("group_by"), "group_by")
    bad = [g for g in group_by if g not in REPORT_GROUP_BY]
    if bad:
        raise InvalidParameter(
            f"cannot group by {', '.join(bad)}; valid fields: {', '.join(REPORT_GROUP_BY)}",
            field="group_by",
        )
    granularity = body.get("granularity")
    if granularity is not None:
        granularity = parse_granularity(granularity if isinstance(granularity, str) else "?")
        buckets(period, granularity)  # enforces the bucket limit now
    fmt = body.get("format", "json")
    if fmt not in REPORT_FORMATS:
        raise InvalidParameter(
            f"format must be one of: {', '.join(REPORT_FORMATS)}", field="format"
        )
    return ReportRequest(
        name=name or "",
        description=description,
        metrics=metrics,
        period=period,
        workflow_ids=parse_string_list(filters.get("workflow_ids"), "filters.workflow_ids"),
        channels=parse_string_list(filters.get("channels"), "filters.channels"),
        group_by=group_by,
        granularity=granularity,
        format=fmt,
    )


@dataclass(frozen=True, slots=True)
class ReportQuery:
    tenant: str
    request: ReportRequest


class ReportRowsRunner(QueryRunner[ReportQuery]):
    """One row per group combination (and per bucket, with a granularity)."""

    kind: ClassVar[str] = "report_rows"

    def compute_rows(self) -> list[dict[str, Any]]:
        tenant, req = self.query.tenant, self.query.request
        period = req.period
        series = bucket_windows(period, req.granularity) if req.granularity else []
        windows = tuple(w for _, w in series) or (period.window,)
        by = cast(tuple[Dimension, ...], req.group_by)
        needs = reg.measures(req.metrics)
        (cells,) = self.engine.activity(
            ActivityQuery(
                tenant,
                windows,
                (Ask(tuple(range(len(windows))), needs, by),),
                workflow_ids=req.workflow_ids,
                channels=req.channels,
                quantiles=reg.QUANTILES,
            )
        )
        groups = sorted(
            {key[1:] for key in cells} if by else {()},
            key=lambda g: [(v is None, str(v)) for v in g],
        )
        empty = Sums(quantiles=tuple(None for _ in reg.QUANTILES))
        out = []
        for group in groups:
            for w in range(len(windows)):
                row: dict[str, Any] = dict(zip(req.group_by, group, strict=True))
                if series:
                    row["date"] = bucket_label(series[w][0], req.granularity or "day", period.tz)
                row.update(reg.values(cells.get((w, *group), empty), req.metrics))
                out.append(row)
        return out

    def compute(self) -> dict[str, Any]:
        return {"rows": self.compute_rows()}


def report_rows(engine: EventEngine, tenant: str, req: ReportRequest) -> list[dict[str, Any]]:
    return ReportRowsRunner(engine, ReportQuery(tenant, req)).compute_rows()


#: The figures on a PDF's first page, each beside the previous period's.
SUMMARY_METRICS = ("total_executions", "success_rate", "average_duration_ms", "p95_duration_ms",
                   "customer_satisfaction")  # fmt: skip
#: A chart draws at most this many groups by name; the rest are "other".
TOP_GROUPS = 5
#: Metrics whose value for several groups together is the sum of theirs.
_ADDITIVE = frozenset({"total_executions", "successful_executions", "failed_executions",
                       "total_messages_sent", "total_messages_received"})  # fmt: skip


@dataclass(frozen=True, slots=True)
class ChartData:
    """What a report's charts draw: per metric, named lines over the same buckets.

    With ``group_by``, the top groups by executions each get a line, and the
    others together one more: "other" where it follows exactly from the groups'
    counts (counts, and the success rate from successful and failed ones), else
    the line of all groups together (an average or percentile of the rest
    cannot be had from the groups' own).
    """

    granularity: str
    labels: list[str]
    lines: dict[str, list[tuple[str, list[Any]]]]


def report_summary(engine: EventEngine, tenant: str, req: ReportRequest) -> dict[str, Any]:
    """``SUMMARY_METRICS`` for the report's period and for the one before it."""
    out = {}
    for name, period in (("current", req.period), ("previous", req.period.previous())):
        summary_req = ReportRequest(**{**_fields(req), "metrics": SUMMARY_METRICS, "group_by": (),
                                       "granularity": None, "period": period})  # fmt: skip
        out[name] = report_rows(engine, tenant, summary_req)[0]
    return out


def chart_data(engine: EventEngine, tenant: str, req: ReportRequest) -> ChartData:
    """The report's metrics over time (its granularity, or hours up to 48 h, else days)."""
    granularity = req.granularity or ("hour" if req.period.hours <= 48 else "day")
    counts = ("total_executions", "successful_executions", "failed_executions")
    metrics = tuple(dict.fromkeys((*req.metrics, *counts)))
    base = {**_fields(req), "metrics": metrics, "granularity": granularity}
    everything = report_rows(engine, tenant, ReportRequest(**{**base, "group_by": ()}))
    labels = [row["date"] for row in everything]
    if not req.group_by:
        return ChartData(granularity, labels,
                         {m: [("all", [r[m] for r in everything])] for m in req.metrics})  # fmt: skip
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in report_rows(engine, tenant, ReportRequest(**base)):
        name = " · ".join("(none)" if row[g] is None else str(row[g]) for g in req.group_by)
        grouped.setdefault(name, []).append(row)
    ranked = sorted(grouped, key=lambda n: -sum(r["total_executions"] for r in grouped[n]))
    top, rest = ranked[:TOP_GROUPS], ranked[TOP_GROUPS:]
    lines: dict[str, list[tuple[str, list[Any]]]] = {}
    for metric in req.metrics:
        drawn = [(name, [r[metric] for r in grouped[name]]) for name in top]
        if rest:
            drawn.append(_others(metric, everything, [grouped[n] for n in top]))
        lines[metric] = drawn
    return ChartData(granularity, labels, lines)


def _others(metric: str, everything: list[dict[str, Any]],
            top: list[list[dict[str, Any]]]) -> tuple[str, list[Any]]:  # fmt: skip
    def rest(field: str, i: int) -> int:
        return int(everything[i][field] - sum(g[i][field] for g in top))

    n = len(everything)
    if metric in _ADDITIVE:
        return "other", [rest(metric, i) for i in range(n)]
    if metric == "success_rate":
        values = []
        for i in range(n):
            ok, failed = rest("successful_executions", i), rest("failed_executions", i)
            values.append(reg.success_rate(Sums(successful=ok, failed=failed)))
        return "other", values
    return "all groups", [row[metric] for row in everything]


def _fields(req: ReportRequest) -> dict[str, Any]:
    return {f: getattr(req, f) for f in ReportRequest.__slots__}
