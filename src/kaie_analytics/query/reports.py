"""Custom reports: the requested metrics over filters, per group and bucket.

A report request is validated into a frozen :class:`ReportRequest` when it is
posted (so a bad request fails at once, not in the worker); the worker runs
:func:`report_rows` and renders the rows in the requested format.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kaie_analytics.analytics import numbers as num
from kaie_analytics.analytics.periods import (
    Period,
    bucket_label,
    buckets,
    parse_granularity,
    parse_period,
    parse_string_list,
    parse_timezone,
)
from kaie_analytics.engines.duckdb.store import DuckDBEventStore
from kaie_analytics.errors import InvalidMetrics, InvalidParameter
from kaie_analytics.query.workflows import SEGMENTS_SQL, metrics_block

REPORT_METRICS = (
    "total_executions", "successful_executions", "failed_executions", "success_rate",
    "average_duration_ms", "median_duration_ms", "p95_duration_ms", "total_messages_sent",
    "total_messages_received", "unique_customers", "customer_satisfaction",
)  # fmt: skip
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
    filters = body.get("filters") or {}
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


_DIMS = {"workflow_id": "workflow_id", "channel": "channel", "customer_segment": "segment"}


def report_rows(store: DuckDBEventStore, tenant: str, req: ReportRequest) -> list[dict[str, Any]]:
    """One row per group combination (and per bucket, with a granularity)."""
    period = req.period
    params: dict[str, Any] = {
        "tenant": tenant,
        "lo": period.start_naive,
        "hi": period.end_naive,
        "workflows": list(req.workflow_ids),
        "channels": list(req.channels),
    }
    dims = [_DIMS[g] for g in req.group_by]
    need_segment = "customer_segment" in req.group_by
    starts = buckets(period, req.granularity) if req.granularity else []
    if starts:
        params["bounds"] = [b.astimezone(UTC).replace(tzinfo=None) for b in starts]

    def source(base: str, time_col: str) -> str:
        sql = base
        if need_segment:
            sql = f"SELECT x.*, seg.segment FROM ({sql}) x LEFT JOIN ({SEGMENTS_SQL}) seg USING (customer_id)"
        if starts:
            sql = (
                f"SELECT x.*, b.lo AS bucket FROM ({sql}) x ASOF JOIN"
                f" (SELECT unnest($bounds::TIMESTAMP[]) AS lo) b ON x.{time_col} >= b.lo"
            )
        return sql

    filters = (
        "(len($workflows) = 0 OR list_contains($workflows, workflow_id))"
        " AND (len($channels) = 0 OR list_contains($channels, channel))"
    )
    keys = ", ".join([*dims, *(["bucket"] if starts else [])]) or "NULL"
    execs = source(
        f"SELECT * FROM ({store.executions_sql(tenant)})"
        f" WHERE started_at BETWEEN $lo AND $hi AND {filters}",
        "started_at",
    )
    exec_rows = store.query(
        f"""SELECT {keys}, count(*), count(*) FILTER (WHERE status = 1),
                count(*) FILTER (WHERE status = 2),
                sum(duration_ms) FILTER (WHERE status > 0), count(duration_ms) FILTER (WHERE status > 0),
                quantile_cont(duration_ms, 0.5) FILTER (WHERE status > 0),
                quantile_cont(duration_ms, 0.95) FILTER (WHERE status > 0),
                count(DISTINCT customer_id)
            FROM ({execs}) GROUP BY ALL""",
        params,
    )
    events = source(
        "SELECT type, ts, workflow_id, channel, customer_id, csat FROM events"
        " WHERE tenant = $tenant AND ts BETWEEN $lo AND $hi"
        " AND type IN ('message.sent', 'message.received', 'feedback.submitted')"
        f" AND {filters}",
        "ts",
    )
    event_rows = store.query(
        f"""SELECT {keys}, count(*) FILTER (WHERE type = 'message.sent'),
                count(*) FILTER (WHERE type = 'message.received'),
                sum(csat) FILTER (WHERE type = 'feedback.submitted'),
                count(csat) FILTER (WHERE type = 'feedback.submitted')
            FROM ({events}) GROUP BY ALL""",
        params,
    )
    n_keys = max(1, len(dims) + (1 if starts else 0))
    raw: dict[tuple[Any, ...], dict[str, Any]] = defaultdict(dict)
    for rec in exec_rows:
        key = tuple(rec[:n_keys])
        fields = ("total", "ok", "failed", "dur_sum", "dur_n", "p50", "p95", "customers")
        raw[key].update(zip(fields, rec[n_keys:], strict=True))
    for rec in event_rows:
        key = tuple(rec[:n_keys])
        raw[key].update(zip(("sent", "received", "csat_sum", "csat_n"), rec[n_keys:], strict=True))
    groups = sorted(
        {k[: len(dims)] for k in raw} if dims else {()},
        key=lambda g: [(v is None, str(v)) for v in g],
    )
    out = []
    for group in groups:
        slots: list[datetime | None] = [*starts] or [None]
        for start in slots:
            key = (*group, start.astimezone(UTC).replace(tzinfo=None)) if start else group
            values = raw.get(key if dims or start else (None,), {})
            row: dict[str, Any] = dict(zip(req.group_by, group, strict=True))
            if start is not None:
                row["date"] = bucket_label(start, req.granularity or "day", period.tz)
            row.update(_metric_values(values, req.metrics))
            out.append(row)
    return out


def _metric_values(v: dict[str, Any], metrics: tuple[str, ...]) -> dict[str, Any]:
    """The workflow metrics of these sums, plus the report's percentiles."""
    all_values = metrics_block(v, None) | {
        "median_duration_ms": num.round_ms(v.get("p50")),
        "p95_duration_ms": num.round_ms(v.get("p95")),
    }
    return {m: all_values[m] for m in metrics}


def chart_series(
    store: DuckDBEventStore, tenant: str, req: ReportRequest
) -> tuple[str, list[dict[str, Any]]]:
    """The report's metrics over time for its charts (its granularity, or daily)."""
    granularity = req.granularity or ("hour" if req.period.hours <= 48 else "day")
    series_req = ReportRequest(**{**_fields(req), "group_by": (), "granularity": granularity})
    return granularity, report_rows(store, tenant, series_req)


def _fields(req: ReportRequest) -> dict[str, Any]:
    return {f: getattr(req, f) for f in ReportRequest.__slots__}
