"""SQL the ClickHouse engine's reads share: times, filters, executions, segments.

Every read of events goes through ``events FINAL`` (see ``schema``). Times are
bound as ``Int64`` microseconds (``time_param``) and read back as
``DateTime64(6)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from kaie_analytics.analytics.facts import Window
from kaie_analytics.engines.clickhouse.schema import FEED_TYPES, SLOT_US, SLOTS_FROM_US

EPOCH = datetime(1970, 1, 1)
MESSAGE_TYPES = "('message.sent', 'message.received')"


#: One microsecond, the resolution of every stored time.
MICROSECOND = timedelta(microseconds=1)
#: What ``DateTime64(6)`` holds (1900 to 2299); every stored time is inside it, so
#: bounds beyond it are clamped to it without changing any answer.
_MIN_US = (datetime(1900, 1, 1) - EPOCH) // MICROSECOND
_MAX_US = (datetime(2299, 12, 31) - EPOCH) // MICROSECOND


def epoch_us(t: datetime) -> int:
    """A naive UTC time as microseconds since the epoch (within ``DateTime64(6)``)."""
    return min(max((t - EPOCH) // MICROSECOND, _MIN_US), _MAX_US)


def from_epoch_us(us: int) -> datetime:
    return EPOCH + us * MICROSECOND


def time_param(name: str) -> str:
    """The SQL of a time bound as ``Int64`` microseconds."""
    return f"fromUnixTimestamp64Micro({{{name}:Int64}}, 'UTC')"


def us(column: str) -> str:
    return f"toUnixTimestamp64Micro({column})"


def slot_of(column: str) -> str:
    """The 15-minute slot (``schema.SLOT_US``) of a time column."""
    return f"intDiv({us(column)} - ({SLOTS_FROM_US}), {SLOT_US})"


def slot_of_us(t: int) -> int:
    """The slot of a time in µs (as ``slot_of`` in SQL)."""
    return (t - SLOTS_FROM_US) // SLOT_US


def cut_slots(windows: Iterable[Window]) -> list[int]:
    """The slots a window edge falls inside (not on their start): the slots a window
    covers only in part."""
    edges = set()
    for w in windows:
        edges.add(epoch_us(w.start))
        edges.add(epoch_us(w.end) + 1)
    return sorted({slot_of_us(e) for e in edges if (e - SLOTS_FROM_US) % SLOT_US})


def in_slots(column: str, slots: Sequence[int]) -> str:
    """Whether time ``column`` is in one of ``slots``, as literal ranges (integers
    computed here), so the primary key skips the rest."""
    return (
        " OR ".join(
            f"({column} >= fromUnixTimestamp64Micro({SLOTS_FROM_US + s * SLOT_US}, 'UTC')"
            f" AND {column} < fromUnixTimestamp64Micro({SLOTS_FROM_US + (s + 1) * SLOT_US}, 'UTC'))"
            for s in slots
        )
        or "0"
    )


def ints(values: Sequence[int]) -> str:
    """A literal array of integers computed here (never input)."""
    return "CAST([" + ", ".join(str(int(v)) for v in values) + "], 'Array(Int64)')"


def whole_slots(start: datetime, end: datetime, cut: Sequence[int]) -> str:
    """Whether column ``slot`` is one of the slots from ``start`` to ``end`` that no edge
    cuts (``cut``, from ``cut_slots``): the slots a rollup serves whole."""
    lo, hi = slot_of_us(epoch_us(start)), slot_of_us(epoch_us(end))
    return f"slot BETWEEN {lo} AND {hi} AND NOT has({ints(cut)}, slot)"


def ingested(after: str | None, upto: str | None = None) -> str:
    """Whether an event was ingested after ``after`` and up to ``upto`` (SQL of µs, such
    as ``{folded:Int64}``; None: no bound on that side)."""
    bounds = [f"ingested_at > fromUnixTimestamp64Micro({after}, 'UTC')"] if after else []
    if upto:
        bounds.append(f"ingested_at <= fromUnixTimestamp64Micro({upto}, 'UTC')")
    return " AND ".join(bounds) or "1"


def id_hash(column: str) -> str:
    """The 64-bit hash of ``tenant NUL column`` (an id), as ``ingest.columns`` computes
    for event ids (xxh3)."""
    return f"xxh3(concat(tenant, char(0), {column}))"


def pending_ids(types: str, column: str) -> str:
    """The ``column`` ids (executions, journeys) of ``{tenant}`` with events of ``types``
    ingested after the fold's watermark ``{folded}``: their folded rows are stale."""
    return (
        f"SELECT {column} FROM events WHERE tenant = {{tenant:String}}"
        f" AND {ingested('{folded:Int64}')} AND type IN {types} AND {column} IS NOT NULL"
    )


def window_params(window: Window) -> dict[str, int]:
    return {"lo": epoch_us(window.start), "hi": epoch_us(window.end)}


#: Workflow and channel filters (an empty list: all).
FILTERS = (
    "(empty({workflows:Array(String)}) OR has({workflows:Array(String)}, workflow_id))"
    " AND (empty({channels:Array(String)}) OR has({channels:Array(String)}, channel))"
)


def filter_params(workflow_ids: Sequence[str], channels: Sequence[str]) -> dict[str, list[str]]:
    return {"workflows": list(workflow_ids), "channels": list(channels)}


def tenant_events(types: str | None, columns: str = "*", where: str = "") -> str:
    """The tenant's (``{tenant}``) events of ``types`` (None: all), each once."""
    conditions = ["tenant = {tenant:String}"]
    if types is not None:
        conditions.append(f"type IN {types}")
    if where:
        conditions.append(where)
    return f"SELECT {columns} FROM events FINAL WHERE {' AND '.join(conditions)}"


def merged_executions(
    where: str, *, with_tenant: bool = False, states: str = "executions_state"
) -> str:
    """One row per execution whose states match ``where`` (on ``states``: the table
    ``executions_state`` or a query of rows like it), merged and finalised
    (spec/METRICS.md, "Executions"): attributes come from the started event,
    else from the earlier terminal event that has them; the later terminal event
    decides the status (on equal timestamps, failed wins); duration
    is the deciding event's ``duration_ms``, else its timestamp minus the start
    (never negative); an execution without a start event started at its terminal
    timestamp minus its duration. ``status``: 0 running, 1 success, 2 failed;
    ``nodes``: its node events (``schema.NODE``), each once."""
    tenant = "tenant, " if with_tenant else ""
    return f"""
SELECT {tenant}execution_id,
    coalesce(if(has_s, s.3, NULL), if(ended, t1.3, NULL), if(has_c AND has_f, t2.3, NULL))
        AS workflow_id,
    coalesce(if(has_s, s.4, NULL), if(ended, t1.4, NULL), if(has_c AND has_f, t2.4, NULL))
        AS channel,
    coalesce(if(has_s, s.5, NULL), if(ended, t1.5, NULL), if(has_c AND has_f, t2.5, NULL))
        AS customer_id,
    if(has_s, toNullable(s.1),
       if(ended, fromUnixTimestamp64Micro({us("w.1")} - coalesce(w.2, 0) * 1000, 'UTC'), NULL))
        AS started_at,
    toUInt8(multiIf(NOT ended, 0, c_wins, 1, 2)) AS status,
    multiIf(NOT ended, NULL, w.2 IS NOT NULL, w.2,
            has_s, toNullable(greatest(0, intDiv({us("w.1")} - {us("s.1")}, 1000))), NULL)
        AS duration_ms,
    if(ended AND NOT c_wins, f.6, NULL) AS error_type,
    nodes
FROM (
    SELECT {tenant}execution_id, has_s, has_c, has_f, s, c, f, nodes,
        has_c AND (NOT has_f OR c.1 > f.1) AS c_wins,
        has_c OR has_f AS ended,
        if(c_wins, c, f) AS w,
        if(has_c AND (NOT has_f OR c.1 <= f.1), c, f) AS t1,
        if(c.1 <= f.1, f, c) AS t2
    FROM (
        SELECT tenant, execution_id, max(has_s) = 1 AS has_s, max(has_c) = 1 AS has_c,
            max(has_f) = 1 AS has_f, argMinMerge(s) AS s, argMaxMerge(c) AS c,
            argMaxMerge(f) AS f, groupUniqArrayMerge(nodes) AS nodes
        FROM {states} WHERE {where}
        GROUP BY tenant, execution_id
    )
)
"""


#: The columns an execution has, as queries read them.
EXECUTION_COLUMNS = (
    "execution_id, workflow_id, channel, customer_id, started_at, status, duration_ms, error_type"
)
#: The executions with events (their own or their nodes') after the watermark.
PENDING = pending_ids(FEED_TYPES, "execution_id")


def executions(
    where: str = "1", *, pending: bool = True, nodes: bool = False, numbers: bool = False
) -> str:
    """The current executions of ``{tenant}``: the folded ones (``executions``, those
    matching ``where`` there), except the ones with events after the watermark
    ``{folded}``, which are merged from their states instead (all of them: ``where``
    is on the folded row, so the caller filters these). Without
    ``pending`` (the tenant has no events after the watermark), the folded ones. With
    ``nodes``, also the node events each carries (a column only read when needed); with
    ``numbers``, also ``customer_num``, its customer's number as of the watermark (0:
    none yet, or no customer; see ``CUSTOMER_COUNT``)."""
    columns = EXECUTION_COLUMNS + (", nodes" if nodes else "")
    folded = columns + (", customer_num" if numbers else "")
    if not pending:
        return f"SELECT {folded} FROM executions FINAL WHERE tenant = {{tenant:String}} AND {where}"
    return f"""
SELECT {folded} FROM executions FINAL
WHERE tenant = {{tenant:String}} AND {where} AND execution_id NOT IN ({PENDING})
UNION ALL
{waiting_executions(columns, numbers)}
"""


def waiting_executions(columns: str = EXECUTION_COLUMNS, numbers: bool = False) -> str:
    """The executions of ``{tenant}`` with events after the watermark ``{folded}``,
    merged from their states (``columns`` of them); with ``numbers``, also
    ``customer_num`` (as for ``executions``)."""
    merged = f"""SELECT {columns} FROM ({
        merged_executions("tenant = {tenant:String} AND execution_id IN (" + PENDING + ")")
    })"""
    if not numbers:
        return merged
    return f"""SELECT m.*, ifNull(n.num, 0) AS customer_num FROM ({merged}) m
        LEFT JOIN (SELECT customer_id, num FROM customer_numbers FINAL
                   WHERE tenant = {{tenant:String}} AND fold <= {{folded:Int64}}
                     AND customer_id IN (SELECT customer_id FROM ({merged}))) n
          ON m.customer_id = n.customer_id"""


#: The distinct customers of rows from ``executions(numbers=True)``: a folded execution
#: carries its customer's number, given no later than the fold that wrote it, and one
#: merged at query time the number its customer has as of the watermark; a customer
#: without one as of the watermark has none on any row, so the two sets never meet.
#: Integers are cheaper to count than the ids' text.
CUSTOMER_COUNT = (
    "uniqExactIf(x.customer_num, x.customer_num > 0)"
    " + uniqExactIf(x.customer_id, x.customer_num = 0)"
)


#: Each customer's latest segment.
SEGMENTS = f"""
SELECT customer_id, argMax(segment, ts) AS segment
FROM ({tenant_events("('customer.updated')", "customer_id, segment, ts", "segment IS NOT NULL")})
GROUP BY customer_id
"""


def local_hour(column: str) -> str:
    """Microseconds of the UTC instant at which ``column``'s clock hour in ``{tz}``
    began (a repeated hour when clocks go back is two hours)."""
    offset = f"timeZoneOffset(toTimeZone({column}, {{tz:String}}))"
    return f"({us(column)} - ({us(column)} + {offset} * 1000000) % 3600000000)"


def naive(table: pa.Table) -> pa.Table:
    """The table with every time column as naive UTC (how the core reads times)."""
    fields = []
    for f in table.schema:
        if pa.types.is_timestamp(f.type) and f.type.tz is not None:
            f = f.with_type(pa.timestamp("us"))
        fields.append(f)
    return table.cast(pa.schema(fields))


def rows(table: pa.Table) -> list[tuple[Any, ...]]:
    """A result as Python tuples, times naive UTC."""
    columns = [c.to_pylist() for c in naive(table).columns]  # names may repeat
    return list(zip(*columns, strict=True))


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
