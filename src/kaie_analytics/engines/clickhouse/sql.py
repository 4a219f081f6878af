"""SQL the ClickHouse engine's reads share: times, filters, executions, segments.

Every read goes through ``events FINAL`` (see ``schema``). Times are bound as
``Int64`` microseconds (``time_param``) and read back as ``DateTime64(6)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from kaie_analytics.analytics.facts import Window

EPOCH = datetime(1970, 1, 1)
EXEC_TYPES = "('execution.started', 'execution.completed', 'execution.failed')"
NODE_TYPES = "('node.completed', 'node.failed')"
MESSAGE_TYPES = "('message.sent', 'message.received')"


_US = datetime(1970, 1, 1, 0, 0, 0, 1) - EPOCH
#: What ``DateTime64(6)`` holds (1900 to 2299); every stored time is inside it, so
#: bounds beyond it are clamped to it without changing any answer.
_MIN_US = (datetime(1900, 1, 1) - EPOCH) // _US
_MAX_US = (datetime(2299, 12, 31) - EPOCH) // _US


def epoch_us(t: datetime) -> int:
    """A naive UTC time as microseconds since the epoch (within ``DateTime64(6)``)."""
    return min(max((t - EPOCH) // _US, _MIN_US), _MAX_US)


def from_epoch_us(us: int) -> datetime:
    return EPOCH + us * _US


def time_param(name: str) -> str:
    """The SQL of a time bound as ``Int64`` microseconds."""
    return f"fromUnixTimestamp64Micro({{{name}:Int64}}, 'UTC')"


def us(column: str) -> str:
    return f"toUnixTimestamp64Micro({column})"


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


#: What an execution's start and terminal events carry, as one tuple shape:
#: (ts, duration_ms, workflow_id, channel, customer_id, error_type).
_STATE = "(ts, duration_ms, workflow_id, channel, customer_id, error_type)"

#: One row per execution of ``{tenant}``, merged from its events at query time
#: (spec/METRICS.md, "Executions"): attributes come from the started event,
#: else from the earlier terminal event that has them; the later terminal event
#: decides the status (on equal timestamps, failed wins); duration is the
#: deciding event's ``duration_ms``, else its timestamp minus the start (never
#: negative); an execution without a start event started at its terminal
#: timestamp minus its duration. ``status``: 0 running, 1 success, 2 failed.
EXECUTIONS = f"""
SELECT execution_id,
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
    if(ended AND NOT c_wins, f.6, NULL) AS error_type
FROM (
    SELECT execution_id, has_s, has_c, has_f, s, c, f,
        has_c AND (NOT has_f OR c.1 > f.1) AS c_wins,
        has_c OR has_f AS ended,
        if(c_wins, c, f) AS w,
        if(has_c AND (NOT has_f OR c.1 <= f.1), c, f) AS t1,
        if(c.1 <= f.1, f, c) AS t2
    FROM (
        SELECT execution_id,
            countIf(type = 'execution.started') > 0 AS has_s,
            countIf(type = 'execution.completed') > 0 AS has_c,
            countIf(type = 'execution.failed') > 0 AS has_f,
            argMinIf({_STATE}, ts, type = 'execution.started') AS s,
            argMaxIf({_STATE}, ts, type = 'execution.completed') AS c,
            argMaxIf({_STATE}, ts, type = 'execution.failed') AS f
        FROM events FINAL
        WHERE tenant = {{tenant:String}} AND type IN {EXEC_TYPES} AND execution_id IS NOT NULL
        GROUP BY execution_id
    )
)
"""

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
