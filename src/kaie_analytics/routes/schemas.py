"""The API's request and answer shapes, for its OpenAPI description.

Requests are parsed and validated by the analytics modules (with the seed's
error shape and the field named); these models describe the same shapes for
people and for client generators, and the test of the schema
(``tests/test_openapi.py``) checks every answer against them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field

from kaie_analytics.analytics.metrics import REPORT_METRICS
from kaie_analytics.analytics.periods import GRANULARITIES, zone_names
from kaie_analytics.analytics.reports import REPORT_FORMATS, REPORT_GROUP_BY
from kaie_analytics.jobs.exports import DATA_TYPES, FORMATS

Trend = Literal["increasing", "decreasing", "stable"]

#: A period's bound as the parsers take it: a date (in the period's time zone) or an
#: RFC 3339 time, between 1900-01-01 and 2999-12-31.
DATE: dict[str, Any] = {
    "type": "string",
    "anyOf": [
        {"format": "date", "pattern": "^(19|2[0-9])[0-9]{2}-"},
        {"format": "date-time", "pattern": "^(19|2[0-9])[0-9]{2}-"},
        {"maxLength": 0, "description": "empty: the default"},
    ],
    "examples": ["2024-01-31"],
}


def _schema(schema: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    """A field's whole JSON schema, in place of the one pydantic derives from its type."""

    def replace(derived: dict[str, Any]) -> None:
        derived.clear()
        derived.update(schema)

    return replace


def listing(values: tuple[str, ...] | None = None, *, at_least: int = 0) -> Any:
    """A list as the parsers take it (``periods.parse_string_list``): a JSON list of
    strings, or one comma-separated string; ``values`` are the allowed ones."""
    item: dict[str, Any] = {"type": "string", "minLength": 1}
    text: dict[str, Any] = {"type": "string"}
    if values is not None:
        item = {"type": "string", "enum": list(values)}
        one = "(" + "|".join(values) + ")"
        text = {"type": "string", "pattern": f"^({one}(,{one})*)?$"}  # empty: none
    array = {"type": "array", "items": item, "minItems": at_least, "maxItems": 1000}
    if at_least:
        return _schema(array)
    return _schema({"anyOf": [array, text, {"type": "null"}]})  # null: none given


def optional(schema: dict[str, Any]) -> Any:
    """``schema``, or null (which the parsers take as not given)."""
    return _schema({"anyOf": [schema, {"type": "null"}]})


#: A time zone: the IANA names of the server's tz database.
TIMEZONE: dict[str, Any] = {
    "type": "string",
    "enum": [*zone_names(), ""],
    "examples": ["Europe/Paris"],
}
#: An identifier (workflow, execution, customer...): 1 to 256 characters, no control ones.
WorkflowId = Annotated[
    str,
    Path(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f-\x9f]*$",
         description="The workflow's id: 1 to 256 characters, no control characters"),
]  # fmt: skip


class Shape(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ----------------------------------------------------------------- errors


class ErrorDetail(Shape):
    code: str = Field(examples=["INVALID_DATE_RANGE"])
    message: str
    details: Any = None
    field: str | None = Field(default=None, examples=["end_date"])


class ErrorBody(Shape):
    error: ErrorDetail


# ----------------------------------------------------------------- events


class EventError(Shape):
    index: int = Field(description="The event's position in the batch (from 0)")
    code: Literal["INVALID_EVENT"]
    field: str | None
    message: str


class IngestResult(Shape):
    accepted: int
    duplicates: int
    rejected: int
    errors: list[EventError]


class IngestAnswer(Shape):
    data: IngestResult


EVENT_EXAMPLE = {
    "id": "evt-1",
    "type": "execution.started",
    "timestamp": "2024-01-15T10:30:00Z",
    "workflow_id": "support-bot",
    "execution_id": "exec-1",
    "customer_id": "cust-1",
    "channel": "whatsapp",
}


class EventsBody(Shape):
    """Up to 1,000 events (spec/EVENTS.md). Each is validated on its own: one that is
    not a valid event (or not an object at all) is listed in ``errors`` with its
    index, and the others are stored."""

    events: list[Any] = Field(min_length=1, max_length=1000, examples=[[EVENT_EXAMPLE]])


# ----------------------------------------------------------------- workflows


class Workflow(Shape):
    workflow_id: str
    name: str | None
    created_at: str


class WorkflowsAnswer(Shape):
    data: list[Workflow]


class WorkflowAnswer(Shape):
    data: Workflow


class WorkflowBody(Shape):
    name: str = Field(min_length=1, max_length=200, examples=["Support bot"])


# ----------------------------------------------------------------- analytics


class PeriodOut(Shape):
    start_date: str
    end_date: str


class WorkflowMetricValues(Shape):
    """The metrics asked for (all by default)."""

    total_executions: int | None = None
    successful_executions: int | None = None
    failed_executions: int | None = None
    success_rate: float | None = None
    average_duration_ms: int | None = None
    total_messages_sent: int | None = None
    total_messages_received: int | None = None
    unique_customers: int | None = None
    customer_satisfaction: float | None = None
    channel_breakdown: dict[str, int] | None = None


class WorkflowTrends(Shape):
    execution_trend: Trend
    success_rate_trend: Trend
    duration_trend: Trend


class Bucket(Shape):
    date: str = Field(description="The bucket's start: a date, or a local time for hours")
    executions: int
    success_rate: float | None
    average_duration_ms: int | None
    messages_sent: int
    messages_received: int
    unique_customers: int


class WorkflowGroup(BaseModel):
    """One combination of the ``group_by`` fields (each a key), with its metrics."""

    model_config = ConfigDict(extra="allow")
    metrics: WorkflowMetricValues


class WorkflowMetrics(Shape):
    workflow_id: str
    period: PeriodOut
    metrics: WorkflowMetricValues
    trends: WorkflowTrends
    daily_metrics: list[Bucket]
    groups: list[WorkflowGroup] | None = None


class WorkflowMetricsAnswer(Shape):
    data: WorkflowMetrics


class ExecutionTime(Shape):
    average_ms: int | None
    median_ms: int | None
    p95_ms: int | None
    p99_ms: int | None


class Throughput(Shape):
    executions_per_hour: float | None
    peak_executions_per_hour: int
    peak_hour: str | None


class ErrorRate(Shape):
    overall: float | None
    by_error_type: dict[str, float]


class NodePerformance(Shape):
    node_id: str
    type: str | None
    execution_count: int
    success_rate: float | None
    average_duration_ms: int | None
    error_count: int


class ChannelPerformance(Shape):
    executions: int
    success_rate: float | None
    average_duration_ms: int | None


class Performance(Shape):
    execution_time: ExecutionTime
    throughput: Throughput
    error_rate: ErrorRate
    node_performance: list[NodePerformance] | None = None
    channel_performance: dict[str, ChannelPerformance] | None = None


class WorkflowPerformance(Shape):
    workflow_id: str
    period: PeriodOut
    performance: Performance


class WorkflowPerformanceAnswer(Shape):
    data: WorkflowPerformance


class ChannelEngagement(Shape):
    customers: int
    average_session_duration: float | None
    satisfaction: float | None


class Engagement(Shape):
    total_customers: int
    active_customers: int
    new_customers: int
    returning_customers: int
    average_session_duration: float | None
    average_messages_per_session: float | None
    customer_satisfaction: float | None
    net_promoter_score: float | None
    engagement_by_channel: dict[str, ChannelEngagement]


class EngagementTrends(Shape):
    customer_growth: Trend
    engagement_trend: Trend
    satisfaction_trend: Trend


class EngagementData(Shape):
    period: PeriodOut
    engagement: Engagement
    trends: EngagementTrends


class EngagementAnswer(Shape):
    data: EngagementData


class JourneyStep(Shape):
    step: int
    name: str | None
    customers: int
    completion_rate: float | None
    average_duration_ms: int | None


class DropOff(Shape):
    step: int
    name: str | None
    drop_off_count: int
    drop_off_rate: float | None
    common_reasons: list[str]


class Journey(Shape):
    journey_type: str | None
    total_journeys: int
    completed_journeys: int
    completion_rate: float | None
    average_journey_duration: float | None
    journey_steps: list[JourneyStep]
    drop_off_points: list[DropOff] | None = None


class JourneyData(Shape):
    period: PeriodOut
    journey: Journey


class JourneyAnswer(Shape):
    data: JourneyData


class CurrentMetrics(Shape):
    active_workflows: int
    active_executions: int
    messages_in_last_hour: int
    average_response_time_ms: int | None
    system_health: Literal["healthy", "degraded", "unhealthy"]


class RealtimeWorkflow(Shape):
    workflow_id: str
    name: str | None
    active_executions: int
    messages_in_last_hour: int
    average_response_time_ms: int | None


class RealtimeChannel(Shape):
    active_conversations: int
    messages_in_last_hour: int


class SystemMetrics(Shape):
    cpu_usage: float
    memory_usage: float
    api_response_time_ms: float | None


class Realtime(Shape):
    timestamp: str
    current_metrics: CurrentMetrics
    workflow_metrics: list[RealtimeWorkflow]
    channel_metrics: dict[str, RealtimeChannel]
    system_metrics: SystemMetrics | None = Field(default=None, description="With include_system")


class RealtimeAnswer(Shape):
    data: Realtime


# ----------------------------------------------------------------- reports and exports


class ReportFilters(Shape):
    start_date: str | None = Field(default=None, json_schema_extra=optional(DATE))
    end_date: str | None = Field(default=None, json_schema_extra=optional(DATE))
    timezone: str | None = Field(default=None, json_schema_extra=optional(TIMEZONE))
    workflow_ids: list[str] | str | None = Field(default=None, json_schema_extra=listing())
    channels: list[str] | str | None = Field(default=None, json_schema_extra=listing())


class ReportBody(Shape):
    name: str = Field(min_length=1, max_length=200, examples=["January report"])
    description: str | None = Field(default=None, min_length=1, max_length=2000)
    metrics: list[str] | str = Field(json_schema_extra=listing(REPORT_METRICS, at_least=1),
                                     examples=[["total_executions"]])  # fmt: skip
    filters: ReportFilters | None = None
    group_by: list[str] | str | None = Field(
        default=None, json_schema_extra=listing(REPORT_GROUP_BY)
    )
    granularity: Literal[GRANULARITIES] | None = None  # type: ignore[valid-type]
    format: Literal[REPORT_FORMATS] = "json"  # type: ignore[valid-type]


class ExportFilters(Shape):
    workflow_ids: list[str] | str | None = Field(default=None, json_schema_extra=listing())
    channels: list[str] | str | None = Field(default=None, json_schema_extra=listing())


class ExportBody(Shape):
    data_type: Literal[DATA_TYPES] = Field(examples=["executions"])  # type: ignore[valid-type]
    format: Literal[FORMATS] = "csv"  # type: ignore[valid-type]
    start_date: str | None = Field(default=None, json_schema_extra=optional(DATE))
    end_date: str | None = Field(default=None, json_schema_extra=optional(DATE))
    timezone: str | None = Field(default=None, json_schema_extra=optional(TIMEZONE))
    filters: ExportFilters | None = None
    include_metadata: bool = False


class JobError(Shape):
    code: str
    message: str
    details: Any = None
    field: str | None = None


class JobStatus(Shape):
    """A report (``report_id``, ``name``) or an export (``export_id``, ``data_type``)."""

    report_id: str | None = None
    export_id: str | None = None
    name: str | None = None
    data_type: str | None = None
    status: Literal["generating", "processing", "completed", "failed"]
    format: str | None
    created_at: str
    estimated_completion: str | None = None
    completed_at: str | None = None
    rows: int | None = None
    error: JobError | None = None
    metadata: dict[str, Any] | None = Field(
        default=None, description="A finished export asked with include_metadata: what it is of"
    )
    download_url: str | None = None
    expires_at: str | None = None


class JobAnswer(Shape):
    data: JobStatus


class JobsAnswer(Shape):
    data: list[JobStatus]
