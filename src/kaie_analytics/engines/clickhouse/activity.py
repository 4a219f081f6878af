"""Facts of executions, nodes and messages (``ActivityQuery``) in ClickHouse SQL.

Per ask, one aggregate over the tenant's executions (merged from their events,
``sql.executions``), one over the node events they carry when nodes are asked, and one
over messages and feedback; each row is put in every window its time is in.
Percentiles follow numpy's linear interpolation to the bit (the sorted
durations of a cell, then numpy's own formula), so they equal the DuckDB
engine's and the spec's reference exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from kaie_analytics.analytics.facts import (
    MEASURE_FIELDS,
    ActivityQuery,
    Ask,
    Cells,
    Dimension,
    add_rows,
    fill_quantiles,
)
from kaie_analytics.engines.clickhouse import sql
from kaie_analytics.engines.clickhouse.schema import MESSAGE_ROLLUP_TYPES, SLOT_US, SLOTS_FROM_US
from kaie_analytics.engines.clickhouse.transport import Transport

_EXEC_DIMS: dict[Dimension, str] = {
    "workflow_id": "x.workflow_id",
    "channel": "x.channel",
    "customer_segment": "seg.segment",
    "error_type": "x.error_type",
    "hour": sql.local_hour("x.started_at"),
    "node_id": "x.node_id",
}
_MESSAGE_DIMS: dict[Dimension, str] = {
    **_EXEC_DIMS,
    "error_type": "CAST(NULL, 'Nullable(String)')",
    "hour": sql.local_hour("x.ts"),
}
_EXEC_SUMS = """count(), countIf(x.status = 1), countIf(x.status = 2),
    coalesce(sumIf(x.duration_ms, x.status > 0), 0), countIf(x.duration_ms IS NOT NULL AND x.status > 0)"""
_MESSAGE_SUMS = "sum(x.sent), sum(x.received), coalesce(sum(x.csat_sum), 0), sum(x.csat_n)"
_NODE_SUMS = """argMax(x.node_type, x.ts), count(), countIf(x.ok), countIf(NOT x.ok),
    coalesce(sum(x.dur), 0), count(x.dur)"""


def _quantiles(qs: Sequence[float]) -> str:
    """numpy's ``percentile`` (linear) of the finished executions' durations, per cell:
    index h = (n - 1) q, then a + (b - a) g below g = 0.5 and b - (b - a)(1 - g) from it."""
    parts = []
    for q in qs:
        h = f"(length(d) - 1) * {float(q)!r}"
        lo = f"d[toUInt64(floor({h})) + 1]"
        hi = f"d[least(toUInt64(floor({h})) + 2, length(d))]"
        g = f"({h} - floor({h}))"
        parts.append(
            f"if(empty(d), nan, if({g} >= 0.5, {hi} - ({hi} - {lo}) * (1 - {g}),"
            f" {lo} + ({hi} - {lo}) * {g}))"
        )
    return "[" + ", ".join(parts) + "]"


def _layers(q: ActivityQuery, ask: Ask) -> list[list[int]]:
    """The ask's windows in as few layers as can be, each of disjoint windows in time
    order (a whole period and its buckets: two layers)."""
    layers: list[list[int]] = []
    for w in sorted(ask.windows, key=lambda w: (q.windows[w].start, q.windows[w].end)):
        for layer in layers:
            if q.windows[layer[-1]].end < q.windows[w].start:
                layer.append(w)
                break
        else:
            layers.append([w])
    return layers


def _in_windows(q: ActivityQuery, ask: Ask, source: str, column: str) -> tuple[str, str]:
    """``source`` (aliased ``x``) once for every window its ``column`` is in, and the SQL
    of the window's index: per layer of disjoint windows, an as-of join on their starts
    (a row is in one window of a layer at most)."""
    joins = []
    for k in range(len(_layers(q, ask))):
        windows = f"""(SELECT 0 AS k, z.1 AS i, fromUnixTimestamp64Micro(z.2, 'UTC') AS lo,
                fromUnixTimestamp64Micro(z.3, 'UTC') AS hi
            FROM (SELECT arrayJoin(arrayZip({{w_i_{k}:Array(Int64)}}, {{w_lo_{k}:Array(Int64)}},
                {{w_hi_{k}:Array(Int64)}})) AS z))"""
        joins.append(
            f"SELECT x.*, w.i AS window FROM (SELECT *, 0 AS k FROM {source}) x"
            f" ASOF JOIN {windows} w ON x.k = w.k AND x.{column} >= w.lo"
            f" WHERE x.{column} <= w.hi"
        )
    return f"({' UNION ALL '.join(joins)}) x", "x.window"


def _window_params(q: ActivityQuery, ask: Ask) -> dict[str, Any]:
    params: dict[str, Any] = {
        "lo": min(sql.epoch_us(q.windows[w].start) for w in ask.windows),
        "hi": max(sql.epoch_us(q.windows[w].end) for w in ask.windows),
    }
    for k, layer in enumerate(_layers(q, ask)):
        params[f"w_i_{k}"] = layer
        params[f"w_lo_{k}"] = [sql.epoch_us(q.windows[w].start) for w in layer]
        params[f"w_hi_{k}"] = [sql.epoch_us(q.windows[w].end) for w in layer]
    return params


def _with_segments(base: str, ask: Ask) -> str:
    """``base`` as a source, with each row's customer segment when the ask needs it."""
    if "customer_segment" not in ask.by:
        return f"({base})"
    return (
        f"(SELECT b.*, seg.segment AS segment FROM ({base}) b"
        f" LEFT JOIN ({sql.SEGMENTS}) seg ON b.customer_id = seg.customer_id)"
    )


def _aggregate(
    q: ActivityQuery,
    ask: Ask,
    source: str,
    column: str,
    dims: dict[Dimension, str],
    values: list[str],
) -> str:
    """Per window and combination of ``ask.by``: ``values`` over ``source``'s rows."""
    rows, window = _in_windows(q, ask, _with_segments(source, ask), column)
    keys = [window, *(dims[d] for d in ask.by)]
    named = ", ".join(f"{k} AS k{i}" for i, k in enumerate(keys))
    group = ", ".join(f"k{i}" for i in range(len(keys)))
    return f"SELECT {named}, {', '.join(values)} FROM {rows} GROUP BY {group}"


def _statements(q: ActivityQuery, ask: Ask, pending: bool) -> list[tuple[str, tuple[str, ...]]]:
    """(SQL, the fields of its values after the key columns) for one ask."""
    out: list[tuple[str, tuple[str, ...]]] = []
    exec_dims = {**_EXEC_DIMS, "customer_segment": "x.segment"}
    lo, hi = sql.time_param("lo"), sql.time_param("hi")
    in_period = f"started_at BETWEEN {lo} AND {hi} AND {sql.FILTERS}"
    executions = f"SELECT * FROM ({sql.executions(in_period, pending=pending)}) WHERE {in_period}"
    m = ask.measures
    if "nodes" in m:
        # Each execution carries its node events (``schema.NODE``).
        with_nodes = sql.executions(in_period, pending=pending, nodes=True)
        nodes = f"""SELECT e.started_at AS started_at, e.channel AS channel,
                e.workflow_id AS workflow_id, e.customer_id AS customer_id,
                e.error_type AS error_type, n.2 AS node_id, n.3 AS node_type,
                n.4 AS ts, n.5 = 1 AS ok, n.6 AS dur
            FROM (SELECT * FROM ({with_nodes}) WHERE {in_period}) e ARRAY JOIN e.nodes AS n"""
        out.append(
            (
                _aggregate(q, ask, nodes, "started_at", exec_dims, [_NODE_SUMS]),
                MEASURE_FIELDS["nodes"],
            )
        )  # fmt: skip
    values: list[str] = []
    fields: list[str] = []
    if "executions" in m:
        values.append(_EXEC_SUMS)
        fields += MEASURE_FIELDS["executions"]
    if "customers" in m:
        values.append("uniqExact(x.customer_id)")
        fields += MEASURE_FIELDS["customers"]
    if "durations" in m:
        values.append(
            "arraySort(groupArrayIf(x.duration_ms, x.status > 0 AND x.duration_ms IS NOT NULL))"
            " AS d"
        )
    if values:
        statement = _aggregate(q, ask, executions, "started_at", exec_dims, values)
        if "durations" in m:
            # The sorted durations stay in the engine: only their percentiles come back.
            statement = (
                f"SELECT * EXCEPT (d), {_quantiles(q.quantiles or (0.5,))} FROM ({statement})"
            )
            fields += MEASURE_FIELDS["durations"]
        out.append((statement, tuple(fields)))
    if "messages" in m:
        message_dims = {**_MESSAGE_DIMS, "customer_segment": "x.segment"}
        out.append(
            (
                _aggregate(q, ask, _messages(q, ask, pending), "ts", message_dims, [_MESSAGE_SUMS]),
                MEASURE_FIELDS["messages"],
            )
        )
    return out


def _messages(q: ActivityQuery, ask: Ask, pending: bool) -> str:
    """The messages and feedback of the ask's span, as rows (ts, workflow_id, channel,
    customer_id, sent, received, csat_sum, csat_n).

    Where the rollups serve the ask (no dimension finer than a slot: not the hour,
    which odd historical offsets put off the slot grid, nor the customer's segment),
    the slots no window edge cuts come from ``message_slots`` (the folds up to the
    watermark ``{folded}``), one row per slot; the events of the cut slots and those
    ingested after the watermark (if the tenant has any: ``pending``) come from the
    events themselves.
    """
    lo, hi = sql.time_param("lo"), sql.time_param("hi")
    columns = """ts, workflow_id, channel, customer_id,
        toUInt64(type = 'message.sent') AS sent, toUInt64(type = 'message.received') AS received,
        if(type = 'feedback.submitted', toInt64(csat), NULL) AS csat_sum,
        toUInt64(type = 'feedback.submitted' AND csat IS NOT NULL) AS csat_n"""
    in_span = f"ts BETWEEN {lo} AND {hi} AND {sql.FILTERS}"
    if not set(ask.by) <= {"channel", "workflow_id", "error_type"}:
        return f"({sql.tenant_events(MESSAGE_ROLLUP_TYPES, columns, in_span)})"
    cut = sql.cut_slots(q.windows[w] for w in ask.windows)
    in_cut = sql.in_slots("ts", cut)
    not_cut = f"NOT has({sql.ints(cut)}, {sql.slot_of('ts')})"
    after = sql.ingested("{folded:Int64}")
    parts = []
    if pending:
        parts.append(
            sql.tenant_events(MESSAGE_ROLLUP_TYPES, columns, f"{in_span} AND {after} AND {not_cut}")
        )
    if cut:
        parts.append(sql.tenant_events(MESSAGE_ROLLUP_TYPES, columns, f"{in_span} AND ({in_cut})"))
    parts.append(
        f"""SELECT ts, workflow_id, channel, customer_id, sent, received, csat_sum, csat_n
        FROM (
            SELECT fromUnixTimestamp64Micro({SLOTS_FROM_US} + slot * {SLOT_US}, 'UTC')
                    AS ts,
                nullIf(workflow_id, '') AS workflow_id, nullIf(channel, '') AS channel,
                CAST(NULL, 'Nullable(String)') AS customer_id,
                sum(sent) AS sent, sum(received) AS received,
                toNullable(sum(csat_sum)) AS csat_sum, sum(csat_n) AS csat_n
            FROM message_slots
            WHERE tenant = {{tenant:String}} AND fold <= {{folded:Int64}}
              AND (empty({{workflows:Array(String)}})
                   OR workflow_id IN {{workflows:Array(String)}})
              AND {sql.whole_slots(*_span(q, ask), cut)}
            GROUP BY slot, workflow_id, channel
        )
        WHERE {in_span}"""
    )
    return "(" + " UNION ALL ".join(parts) + ")"


def _span(q: ActivityQuery, ask: Ask) -> tuple[datetime, datetime]:
    return (
        min(q.windows[w].start for w in ask.windows),
        max(q.windows[w].end for w in ask.windows),
    )


def activity(transport: Transport, q: ActivityQuery, folded: int, pending: bool) -> list[Cells]:
    """The cells of every ask of ``q`` (``folded``: the fold's watermark; ``pending``:
    whether the tenant has events after it), every statement side by side."""
    base = {
        "tenant": q.tenant,
        "tz": q.timezone,
        "folded": folded,
        **sql.filter_params(q.workflow_ids, q.channels),
    }
    shapes: list[tuple[int, tuple[str, ...]]] = []
    statements = []
    for i, ask in enumerate(q.asks):
        params = base | _window_params(q, ask)
        for statement, fields in _statements(q, ask, pending):
            shapes.append((i, fields))
            statements.append((statement, params))
    out: list[Cells] = [{} for _ in q.asks]
    for (i, fields), table in zip(shapes, transport.query_all(statements), strict=True):
        ask = q.asks[i]
        hours = [1 + j for j, d in enumerate(ask.by) if d == "hour"]
        quantiles = fields.index("quantiles") + 1 + len(ask.by) if "quantiles" in fields else -1
        rows = []
        for row in sql.rows(table):
            values = list(row)
            for at in hours:  # µs of the hour, as the naive UTC time it starts at
                values[at] = sql.from_epoch_us(values[at])
            if quantiles >= 0:  # ClickHouse's NaN over no duration is None
                values[quantiles] = [
                    None if math.isnan(v) else v for v in values[quantiles][: len(q.quantiles)]
                ]
            rows.append(values)
        add_rows(out[i], rows, 1 + len(ask.by), fields)
    for ask, cells in zip(q.asks, out, strict=True):
        if "durations" in ask.measures:
            fill_quantiles(cells, len(q.quantiles))
    return out
