"""What the analytics core asks an event engine, and what the engine answers.

The core knows what every number means (``metrics``); an engine only counts.
It is asked for *facts* in neutral terms: per time window and per combination
of a few dimensions, the sums, distinct counts and exact percentiles the
metrics are made of. How it finds them (rollups, raw rows, its SQL dialect)
is its own business. Every time here is a naive UTC ``datetime``; a window
includes both its ends, to the microsecond.

An engine implements :class:`EventEngine`; the DuckDB engine
(``engines.duckdb``) is the embedded default.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

import pyarrow as pa

from kaie_analytics.ingest.validate import FIELD_COLUMNS, ValidEvent

#: What a cell of facts can be broken down by. ``hour`` is the clock hour (in the
#: query's time zone) an execution started in, as the naive UTC time it starts at
#: (a repeated hour when clocks go back is two hours); ``node_id`` breaks down
#: node events.
Dimension = Literal["workflow_id", "channel", "customer_segment", "error_type", "hour", "node_id"]

#: What a cell can hold:
#: ``executions``: counts of executions by outcome and their duration sums;
#: ``messages``: messages sent and received, and the CSAT of feedback;
#: ``customers``: distinct customers of the executions;
#: ``durations``: exact percentiles of the finished executions' durations;
#: ``nodes``: node events (with ``by=("node_id",)``).
Measure = Literal["executions", "messages", "customers", "durations", "nodes"]

#: Export data types an engine streams as rows.
RowKind = Literal["executions", "messages", "feedback", "journeys", "events"]


@dataclass(frozen=True, slots=True)
class Window:
    """A stretch of time, both ends included (naive UTC)."""

    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class Ask:
    """One table of facts: ``measures`` for each of ``windows`` (indexes into the
    query's windows) and each combination of ``by`` that occurs."""

    windows: tuple[int, ...]
    measures: frozenset[Measure]
    by: tuple[Dimension, ...] = ()


@dataclass(frozen=True, slots=True)
class ActivityQuery:
    """Facts about executions, their nodes and the messages of workflows.

    An execution belongs to the window its start is in; a message or feedback
    to the window of its timestamp. ``workflow_ids`` and ``channels`` filter
    (empty: all). A customer's segment is the latest one they were given.
    """

    tenant: str
    windows: tuple[Window, ...]
    asks: tuple[Ask, ...]
    workflow_ids: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    #: The percentiles (fractions, numpy's linear interpolation) of ``durations``.
    quantiles: tuple[float, ...] = ()
    #: The IANA time zone of the ``hour`` dimension.
    timezone: str = "UTC"


@dataclass(slots=True)
class Sums:
    """The facts of one cell. Only the fields of the measures asked for are set."""

    #: executions
    executions: int = 0
    successful: int = 0
    failed: int = 0
    #: Sum and number of the durations (ms) of finished executions that have one.
    duration_sum: int = 0
    durations: int = 0
    #: messages
    sent: int = 0
    received: int = 0
    csat_sum: int = 0
    csat_count: int = 0
    #: customers
    customers: int = 0
    #: durations: one value per quantile asked for (None over no duration)
    quantiles: tuple[float | None, ...] = ()
    #: nodes: the node's latest type, its events, successes, failures, durations
    node_type: str | None = None
    node_events: int = 0
    node_ok: int = 0
    node_errors: int = 0
    node_duration_sum: int = 0
    node_durations: int = 0

    def add(self, other: Sums) -> None:
        """Add the additive facts of ``other`` (not customers, quantiles or node type)."""
        # Written out: this runs for every cell a runner adds up.
        self.executions += other.executions
        self.successful += other.successful
        self.failed += other.failed
        self.duration_sum += other.duration_sum
        self.durations += other.durations
        self.sent += other.sent
        self.received += other.received
        self.csat_sum += other.csat_sum
        self.csat_count += other.csat_count
        self.node_events += other.node_events
        self.node_ok += other.node_ok
        self.node_errors += other.node_errors
        self.node_duration_sum += other.node_duration_sum
        self.node_durations += other.node_durations


#: The fields of ``Sums`` each measure sets, in the order an engine gives them.
MEASURE_FIELDS: dict[Measure, tuple[str, ...]] = {
    "executions": ("executions", "successful", "failed", "duration_sum", "durations"),
    "messages": ("sent", "received", "csat_sum", "csat_count"),
    "customers": ("customers",),
    "durations": ("quantiles",),
    "nodes": ("node_type", "node_events", "node_ok", "node_errors", "node_duration_sum",
              "node_durations"),
}  # fmt: skip

#: Per ask: cells keyed by (window index, *values of ``by``).
Cells = dict[tuple[Any, ...], Sums]


def add_rows(
    cells: Cells,
    rows: Iterable[Sequence[Any]],
    n_keys: int,
    fields: Sequence[str],
    *,
    to_sums: bool = False,
) -> None:
    """Set ``fields`` (in order, after the key) of the cell keyed by each row's first
    ``n_keys`` values; ``quantiles`` is a list (None: no duration). ``to_sums``: add the
    values to the cell's instead (sums read in parts)."""
    for row in rows:
        key = tuple(row[:n_keys])
        cell = cells.get(key)
        if cell is None:
            cell = cells[key] = Sums()
        for name, value in zip(fields, row[n_keys:], strict=True):
            if to_sums:
                value += getattr(cell, name)
            setattr(cell, name, tuple(value or ()) if name == "quantiles" else value)


def fill_quantiles(cells: Cells, quantiles: int) -> None:
    """Give every cell without durations its ``quantiles`` Nones."""
    none = (None,) * quantiles
    for cell in cells.values():
        cell.quantiles = cell.quantiles or none


@dataclass(frozen=True, slots=True)
class CustomerQuery:
    """Facts about the customers of one tenant in some windows, optionally of one
    channel and of one segment (their latest)."""

    tenant: str
    windows: tuple[Window, ...]
    channel: str | None = None
    segment: str | None = None


@dataclass(slots=True)
class ChannelFacts:
    #: Distinct customers who sent a message (``message.received``) in the window.
    active: int = 0
    #: Conversations (sessions) that started in the window, their total length
    #: in microseconds and their total number of messages.
    sessions: int = 0
    session_us: int = 0
    session_messages: int = 0
    #: Feedback in the window: CSAT sum and count; NPS answers, promoters (9-10),
    #: detractors (0-6).
    csat_sum: int = 0
    csat_count: int = 0
    nps_answers: int = 0
    promoters: int = 0
    detractors: int = 0


@dataclass(slots=True)
class CustomerFacts:
    """One window's customer facts, overall and per channel."""

    #: Customers whose first event is at or before the window's end.
    known: int = 0
    #: Customers whose first ``message.received`` is in the window.
    new: int = 0
    total: ChannelFacts = field(default_factory=ChannelFacts)
    by_channel: dict[str, ChannelFacts] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class JourneyQuery:
    """The journeys of one type whose first step is in ``window``."""

    tenant: str
    journey_type: str
    window: Window
    #: Whether to count the drop reasons too.
    reasons: bool = True


@dataclass(frozen=True, slots=True)
class StepFacts:
    step: int
    #: The step's latest name.
    name: str | None
    #: Journeys that reached it; of those, the ones that reached the step before,
    #: and the ones that did not reach the next.
    reached: int
    with_previous: int
    without_next: int
    #: Sum and count of the time (µs) from reaching it to the journey's next event.
    gap_us: int
    gaps: int


@dataclass(frozen=True, slots=True)
class JourneyFacts:
    journeys: int
    completed: int
    #: Sum over completed journeys of first step to completion (µs).
    completed_us: int
    steps: tuple[StepFacts, ...]
    #: (the step after the highest one reached, reason, journeys): drop reasons.
    reasons: tuple[tuple[int, str, int], ...]


#: A conversation (session): a customer's messages on one channel with no gap
#: longer than this between two in a row.
SESSION_GAP_US = 30 * 60 * 1_000_000
#: Realtime windows: executions started this long before ``now`` and not ended are
#: running; the last hour's events and messages; customers in conversation in the
#: last 30 minutes; a reply counts when it comes within 30 minutes.
RUNNING_WITHIN = timedelta(hours=24)
LAST_HOUR = timedelta(hours=1)
IN_CONVERSATION = timedelta(minutes=30)
REPLY_WITHIN_US = 30 * 60 * 1_000_000


@dataclass(frozen=True, slots=True)
class RealtimeQuery:
    tenant: str
    now: datetime
    workflow_id: str | None = None
    channel: str | None = None


@dataclass(frozen=True, slots=True)
class RealtimeFacts:
    """Live facts at ``now``: executions running (started in the last 24 hours),
    the last hour's execution events and messages, the last 30 minutes' customers
    in conversation, and reply gaps (µs from a customer's message to our next
    reply on the same channel within 30 minutes)."""

    running: dict[str, int]
    messages: int
    messages_by_workflow: dict[str, int]
    workflows_with_executions: tuple[str, ...]
    messages_by_channel: dict[str, int]
    conversations_by_channel: dict[str, int]
    reply_us: tuple[int, int]
    reply_us_by_workflow: dict[str, tuple[int, int]]


#: Scopes of the rows an engine gives ``realtime_facts``.
TOTAL, BY_WORKFLOW, BY_CHANNEL = 0, 1, 2


def realtime_facts(
    running: Iterable[Sequence[Any]],
    last_hour: Iterable[Sequence[Any]],
    replies: Iterable[Sequence[Any]],
) -> RealtimeFacts:
    """Realtime facts from an engine's rows: ``running`` (workflow, executions);
    ``last_hour`` (scope, workflow, channel, execution events, messages, customers in
    conversation) and ``replies`` (scope, workflow, gap sum µs, gaps), where scope is
    ``TOTAL``, ``BY_WORKFLOW`` or ``BY_CHANNEL``."""
    messages = 0
    with_executions: list[str] = []
    by_workflow: dict[str, int] = {}
    by_channel: dict[str, int] = {}
    conversations: dict[str, int] = {}
    for scope, wf, ch, exec_events, n_messages, customers in last_hour:
        if scope == TOTAL:
            messages = n_messages
        elif scope == BY_WORKFLOW:
            if wf is not None:
                by_workflow[wf] = n_messages
                if exec_events:
                    with_executions.append(wf)
        elif ch is not None and (n_messages or customers):
            by_channel[ch] = n_messages
            conversations[ch] = customers
    reply_total: tuple[int, int] = (0, 0)
    reply_by_workflow: dict[str, tuple[int, int]] = {}
    for scope, wf, total, count in replies:
        if scope == TOTAL:
            reply_total = (total or 0, count)
        elif wf is not None:
            reply_by_workflow[wf] = (total or 0, count)
    return RealtimeFacts(
        running={wf: n for wf, n in running},
        messages=messages,
        messages_by_workflow=by_workflow,
        workflows_with_executions=tuple(sorted(with_executions)),
        messages_by_channel=by_channel,
        conversations_by_channel=conversations,
        reply_us=reply_total,
        reply_us_by_workflow=reply_by_workflow,
    )


@dataclass(frozen=True, slots=True)
class RowsQuery:
    """Rows of one kind for an export, in [start, end], filtered (empty: all)."""

    tenant: str
    kind: RowKind
    window: Window
    workflow_ids: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()


def _row_schemas() -> dict[RowKind, pa.Schema]:
    text, time = pa.string(), pa.timestamp("us")
    small = {"csat": pa.int8(), "nps": pa.int8(), "step": pa.int8(), "duration_ms": pa.int64()}
    return {
        "executions": pa.schema(
            [("execution_id", text), ("workflow_id", text), ("channel", text),
             ("customer_id", text), ("started_at", time), ("status", text),
             ("duration_ms", pa.int64()), ("error_type", text)]
        ),
        "messages": pa.schema(
            [("event_id", text), ("direction", text), ("timestamp", time),
             ("customer_id", text), ("channel", text), ("workflow_id", text),
             ("execution_id", text), ("message_id", text)]
        ),
        "feedback": pa.schema(
            [("event_id", text), ("timestamp", time), ("customer_id", text),
             ("workflow_id", text), ("execution_id", text), ("channel", text),
             ("csat", pa.int8()), ("nps", pa.int8()), ("comment", text)]
        ),
        "journeys": pa.schema(
            [("journey_id", text), ("journey_type", text), ("customer_id", text),
             ("started_at", time), ("completed_at", time), ("dropped_at", time),
             ("drop_reason", text), ("highest_step", pa.int8()), ("steps_reached", pa.int64())]
        ),
        "events": pa.schema(
            [("id", text), ("id_given", pa.bool_()), ("type", text), ("timestamp", text),
             *((c, small.get(c, text)) for c in FIELD_COLUMNS)]
        ),
    }  # fmt: skip


#: The columns of each kind of export rows, as every engine gives them (times
#: naive UTC; the export writer adds the zone).
ROW_SCHEMAS = _row_schemas()


@dataclass
class AppendResult:
    accepted: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class TenantEvents:
    """How many events a tenant has, and the times of its first and last."""

    tenant: str
    events: int
    first: datetime
    last: datetime


@dataclass(frozen=True)
class Workflow:
    workflow_id: str
    name: str | None
    name_ts: datetime | None
    created_at: datetime


class EventEngine(Protocol):
    """Where events are kept, and the facts the core computes metrics from."""

    def prepare(self, tenant: str, rows: list[ValidEvent]) -> Any:
        """Ready a batch for ``append_prepared`` (any thread or process)."""

    def append_prepared(self, tenant: str, batch: Any) -> concurrent.futures.Future[AppendResult]:
        """Store a prepared batch; the future resolves once it is durable."""

    def append(
        self, tenant: str, rows: list[ValidEvent]
    ) -> concurrent.futures.Future[AppendResult]: ...

    def restore_workflow(self, tenant: str, workflow: Workflow) -> None:
        """Take a workflow's name, its time and its creation time as another store has
        them (copy-events): the later name wins, the earlier creation time stays."""

    def workflows(self, tenant: str) -> list[Workflow]: ...

    def workflow(self, tenant: str, workflow_id: str) -> Workflow | None: ...

    def put_workflow(
        self, tenant: str, workflow_id: str, name: str
    ) -> concurrent.futures.Future[Workflow]: ...

    def data_version(self, tenant: str) -> int:
        """A number that changes with every change to the tenant's data (for caches)."""

    def count_events(
        self, tenant: str | None = None, since: datetime | None = None,
        until: datetime | None = None,
    ) -> int: ...  # fmt: skip

    def event_stats(self) -> list[TenantEvents]:
        """Every tenant with events, in tenant order."""

    def activity(self, q: ActivityQuery) -> list[Cells]:
        """The cells of each of ``q.asks``, in order."""

    def customers(self, q: CustomerQuery) -> list[CustomerFacts]:
        """One per window of ``q``."""

    def journey_types(self, tenant: str) -> list[str]:
        """The journey types that have a journey with a step, sorted."""

    def journeys(self, q: JourneyQuery) -> JourneyFacts: ...

    def realtime(self, q: RealtimeQuery) -> RealtimeFacts: ...

    def rows(self, q: RowsQuery, batch_rows: int) -> pa.RecordBatchReader:
        """The rows of an export as Arrow batches (memory stays flat)."""

    def settle(self) -> None:
        """Wait until everything committed is in every derived structure (tests, demo)."""

    def ping(self) -> bool: ...

    def close(self) -> None: ...
