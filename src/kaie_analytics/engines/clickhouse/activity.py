"""Facts of executions, nodes and messages (``ActivityQuery``) in ClickHouse SQL.

One aggregate over the tenant's executions (merged from their events,
``sql.executions``) for the asks over the same windows (a grouping set each), one
over the node events they carry when nodes are asked, and one over messages and
feedback; each row is put in every window its time is in.
Percentiles follow numpy's linear interpolation to the bit (the sorted
durations of a cell, then numpy's own formula), so they equal the DuckDB
engine's and the spec's reference exactly.

A query about one workflow, once the fold has run, adds up much of this from
the workflow's days held in memory instead (``workflow_days``): sums per slot,
the events of cut slots, and a workflow with few executions its executions
themselves (numpy's ``quantile`` is the percentile there); its statements then
read only the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime
from functools import partial
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
from pyroaring import AbstractBitMap, BitMap

from kaie_analytics.analytics.facts import (
    MEASURE_FIELDS,
    ActivityQuery,
    Ask,
    Cells,
    Dimension,
    Measure,
    add_rows,
    fill_quantiles,
)
from kaie_analytics.engines.clickhouse import sql
from kaie_analytics.engines.clickhouse.schema import (
    EXECUTION_SUMS,
    MESSAGE_ROLLUP_TYPES,
    NODE_SUMS,
    SLOT_US,
    SLOTS_FROM_US,
    execution_sums,
    node_sums,
)
from kaie_analytics.engines.clickhouse.transport import Transport
from kaie_analytics.engines.clickhouse.workflow_days import (
    CUSTOMERS,
    EXECUTIONS,
    MESSAGES,
    NODES,
    Days,
    Executions,
    Table,
)
from kaie_analytics.engines.sums import distinct, group, utc_offsets_us

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
#: ``schema.EXECUTION_SUMS`` over executions, one row each.
_EXEC_SUMS = ", ".join(f"sum({e})" for e in execution_sums("1"))
#: The same over rows of ``_slot_executions`` (each an execution or a slot's sums).
_SLOT_SUMS = ", ".join(f"sum(x.{c})" for c in EXECUTION_SUMS)
#: The dimensions ``execution_slots`` keeps.
_SLOT_DIMS = frozenset({"workflow_id", "channel", "error_type"})
#: The dimensions ``node_slots`` keeps.
_NODE_SLOT_DIMS = frozenset({"workflow_id", "channel", "node_id"})
#: The dimensions ``message_slots`` keeps (messages have no error type: all NULL).
_MESSAGE_SLOT_DIMS = frozenset({"workflow_id", "channel", "error_type"})
#: The measures of executions, in the order of their fields in a cell's row.
_EXEC_MEASURES: tuple[Measure, ...] = ("executions", "customers", "durations")
_HOUR_US = 3_600_000_000
_DAY_US = 24 * _HOUR_US
#: Executions in an answer's span up to which they are worked out from those held in
#: memory. Beyond, ClickHouse's own aggregate (compiled, on every core) is faster than
#: numpy's passes over them here: the busiest workflow's 147k executions of a month
#: took 70–100 ms in numpy against 55–65 ms in ClickHouse (bench/RESULTS.md).
MEMORY_EXECUTIONS = 50_000
#: The dimensions of executions worked out from those held in memory.
_MEMORY_EXEC_DIMS = frozenset({"workflow_id", "channel", "error_type", "hour"})
#: The executions waiting for a fold, as ``workflow_days.Executions``'s columns but the
#: customer's number (its id instead), and whether the execution is one asked about
#: (of the workflow, started in ``{lo}``..``{hi}``). Their folded rows, wherever those
#: were, are left out of those held in memory.
_WAITING = f"""
SELECT {sql.us("started_at")}, ifNull(channel, ''), ifNull(error_type, ''), status,
    ifNull(duration_ms, -1), customer_id, cityHash64(execution_id), execution_id,
    ifNull(started_at BETWEEN {sql.time_param("lo")} AND {sql.time_param("hi")}
           AND {sql.FILTERS}, 0)
FROM ({sql.waiting_executions()})
"""
#: The numbers of customers ``{ids}`` as of the watermark ``{folded}`` (those without
#: one are not there). A statement of its own, after ``_WAITING``: joined to it, the
#: merge of the waiting executions ran twice (once for the ids to look up), twice the
#: cost of the statement.
_NUMBERS = """
SELECT customer_id, num FROM customer_numbers FINAL
WHERE tenant = {tenant:String} AND fold <= {folded:Int64} AND customer_id IN {ids:Array(String)}
"""
_MESSAGE_SUMS = "sum(x.sent), sum(x.received), coalesce(sum(x.csat_sum), 0), sum(x.csat_n)"
_NODE_SUMS = """argMax(x.node_type, x.ts), count(), countIf(x.ok), countIf(NOT x.ok),
    coalesce(sum(x.dur), 0), count(x.dur)"""


def _quantiles(qs: Sequence[float]) -> str:
    """numpy's ``percentile`` (linear) of the finished executions' durations, per cell:
    index h = (n - 1) q, then a + (b - a) g below g = 0.5 and b - (b - a)(1 - g) from it."""
    parts = []
    for i, q in enumerate(qs):
        # Each term is written once and named (ClickHouse aliases, which a statement can
        # use anywhere in it): analysing a statement costs per expression.
        h = f"((length(d) - 1) * {float(q)!r} AS _h{i})"
        g = f"(({h} - floor(_h{i})) AS _g{i})"
        lo = f"(d[(toUInt64(floor(_h{i})) AS _i{i}) + 1] AS _lo{i})"
        hi = f"(d[least(_i{i} + 2, length(d))] AS _hi{i})"
        parts.append(
            f"if(empty(d), nan, if({g} >= 0.5, {hi} - (_hi{i} - {lo}) * (1 - _g{i}),"
            f" _lo{i} + (_hi{i} - _lo{i}) * _g{i}))"
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


@dataclass(frozen=True)
class _Plan:
    """How an ask's rows are put in its windows."""

    #: Layers of disjoint windows in time order, each a read of the rows.
    layers: list[list[int]]
    #: A window whose rows are exactly those of the one layer (a period and buckets
    #: that tile it): its cells are the layer's grand totals, not another read.
    total: int | None = None


def _plan(q: ActivityQuery, ask: Ask) -> _Plan:
    layers = _layers(q, ask)
    if len(layers) == 2:
        for whole, parts in (layers, layers[::-1]):
            if len(whole) == 1 and _tiles(q, parts, whole[0]):
                return _Plan([parts], whole[0])
    return _Plan(layers)


def _tiles(q: ActivityQuery, parts: list[int], whole: int) -> bool:
    """Whether windows ``parts`` (in time order) cover window ``whole`` without gap or
    overlap (both ends of a window are included; times are whole microseconds)."""
    w = [q.windows[i] for i in parts]
    return (
        w[0].start == q.windows[whole].start
        and w[-1].end == q.windows[whole].end
        and all(b.start - a.end == sql.MICROSECOND for a, b in pairwise(w))
    )


def _in_windows(plan: _Plan, source: str, column: str) -> str:
    """``source`` (aliased ``x``) once for every window of ``plan``'s layers its
    ``column`` is in, with the window's index as ``x.window``: a window alone, a filter;
    a layer of several, an as-of join on their starts (a row is in one window of a
    layer at most)."""
    joins = []
    for k, layer in enumerate(plan.layers):
        lo = f"fromUnixTimestamp64Micro({{w_lo_{k}:Array(Int64)}}[1], 'UTC')"
        hi = f"fromUnixTimestamp64Micro({{w_hi_{k}:Array(Int64)}}[1], 'UTC')"
        if len(layer) == 1:
            joins.append(
                f"SELECT x.*, {{w_i_{k}:Array(Int64)}}[1] AS window FROM {source} x"
                f" WHERE x.{column} BETWEEN {lo} AND {hi}"
            )
            continue
        windows = f"""(SELECT 0 AS k, z.1 AS i, fromUnixTimestamp64Micro(z.2, 'UTC') AS lo,
                fromUnixTimestamp64Micro(z.3, 'UTC') AS hi
            FROM (SELECT arrayJoin(arrayZip({{w_i_{k}:Array(Int64)}}, {{w_lo_{k}:Array(Int64)}},
                {{w_hi_{k}:Array(Int64)}})) AS z))"""
        joins.append(
            f"SELECT x.* EXCEPT (k), w.i AS window FROM (SELECT *, 0 AS k FROM {source}) x"
            f" ASOF JOIN {windows} w ON x.k = w.k AND x.{column} >= w.lo"
            f" WHERE x.{column} <= w.hi"
        )
    return f"({' UNION ALL '.join(joins)}) x"


def _window_params(q: ActivityQuery, ask: Ask) -> dict[str, Any]:
    params: dict[str, Any] = {
        "lo": min(sql.epoch_us(q.windows[w].start) for w in ask.windows),
        "hi": max(sql.epoch_us(q.windows[w].end) for w in ask.windows),
    }
    for k, layer in enumerate(_plan(q, ask).layers):
        params[f"w_i_{k}"] = layer
        params[f"w_lo_{k}"] = [sql.epoch_us(q.windows[w].start) for w in layer]
        params[f"w_hi_{k}"] = [sql.epoch_us(q.windows[w].end) for w in layer]
    return params


def _grouped(plan: _Plan, dims: list[str], sets: list[list[int]] | None = None) -> tuple[str, str]:
    """The key columns (``k0`` the window, then ``dims`` as ``k1``...) and the GROUP BY
    of an aggregate over ``_in_windows`` rows. ``sets``: a grouping set each (the
    indexes into ``dims`` of its dimensions), ``grouping()`` of the dimensions in a
    first column ``g``; None: one, of every dimension. A plan's total window is each
    set again without the window."""
    window = "x.window"
    k0 = window if plan.total is None else f"if(grouping({window}) = 1, {plan.total}, {window})"
    named = ", ".join([f"{k0} AS k0", *(f"{d} AS k{i}" for i, d in enumerate(dims, 1))])
    if sets is None:
        if plan.total is None:
            return named, ", ".join(f"k{i}" for i in range(len(dims) + 1))
        sets = [list(range(len(dims)))]
    else:
        named = f"grouping({', '.join(f'k{i}' for i in range(1, len(dims) + 1))}) AS g, {named}"
    listed = []
    for s in sets:
        ks = [f"k{1 + j}" for j in s]
        listed.append(f"({', '.join([window, *ks])})")
        if plan.total is not None:
            listed.append(f"({', '.join(ks)})")
    return named, f"GROUPING SETS ({', '.join(listed)})"


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
    plan = _plan(q, ask)
    rows = _in_windows(plan, _with_segments(source, ask), column)
    named, group = _grouped(plan, [dims[d] for d in ask.by])
    return f"SELECT {named}, {', '.join(values)} FROM {rows} GROUP BY {group}"


@dataclass(frozen=True)
class _Part:
    """Where one ask's cells are in the rows of a statement."""

    ask: int
    #: The fields of its values (``MEASURE_FIELDS``), one column each.
    fields: tuple[str, ...]
    #: Its columns: the key's (the window, then ``by``'s), then its values'.
    columns: tuple[int, ...]
    #: Only the rows whose first column is this (the ``grouping()`` of its set), if set.
    grouping: int | None = None
    #: Rows are per cell and node type (``_slot_nodes``); the statement to read the
    #: cells from instead when a cell has more than one type.
    fallback: str | None = None
    #: The table of sums per slot held in memory whose slots no window edge cuts add
    #: to these cells (the statement reads only the rest).
    memory: Table | None = None
    #: The cells are worked out from the executions held in memory and those waiting
    #: for a fold (``_WAITING``), with no statement of their own.
    executions: bool = False
    #: The cells are added up from memory alone: execution sums per slot, the
    #: executions of the cut slots, the durations (nothing waits for a fold).
    held: bool = False


#: A statement (None: nothing to read beyond the sums in memory), and where the cells
#: of each of its asks are in its rows.
_Statement = tuple[str | None, list[_Part]]
#: The dimensions of executions as columns of their rows (the segment joined in).
_EXEC_ROW_DIMS = {**_EXEC_DIMS, "customer_segment": "x.segment"}


def _plain(
    i: int, ask: Ask, statement: str | None, fields: tuple[str, ...], memory: Table | None = None
) -> _Statement:
    """A statement of one ask's cells alone: its key, then its values."""
    columns = tuple(range(1 + len(ask.by) + len(fields)))
    return statement, [_Part(i, fields, columns, memory=memory)]


def _in_period(rows: str, where: str, pending: bool) -> str:
    """``rows`` from ``sql.executions(where, ...)`` that match ``where``: the folded ones
    all do; those merged at query time (``pending``) are filtered here."""
    return f"SELECT * FROM ({rows}) WHERE {where}" if pending else rows


def _executions(q: ActivityQuery, pending: bool, numbers: bool = False) -> str:
    lo, hi = sql.time_param("lo"), sql.time_param("hi")
    in_period = f"started_at BETWEEN {lo} AND {hi} AND {sql.FILTERS}"
    return _in_period(
        sql.executions(in_period, pending=pending, numbers=numbers), in_period, pending
    )


def _statements(
    q: ActivityQuery,
    pending: bool,
    folded: bool,
    memory: bool = False,
    executions: bool = False,
    hours_on_slots: bool = False,
) -> list[tuple[Ask, _Statement]]:
    """Each statement (with the ask whose windows it binds) and where the cells of
    each ask are in its rows. The asks of executions over the same windows share one
    statement, one grouping set each (each statement costs a read of the executions,
    and statements side by side share the machine's cores), except those counting
    distinct customers: a distinct count per extra set costs as much as its own read.
    ``folded``: whether the fold has run (embedded), which numbers the customers of
    the executions it writes and keeps their sums per slot; asks of execution sums
    alone over their windows read those slots. ``memory``: the query is about one
    workflow, whose folded facts are in memory (``workflow_days``): the sums of the
    slots no window edge cuts are added up there, and executions by dimensions it
    keeps are worked out there if ``executions`` (few enough of them); else, while
    nothing waits for a fold, execution sums and durations are added up there, by
    local hour too if the zone's offset keeps to the slots (``hours_on_slots``)."""
    out: list[tuple[Ask, _Statement]] = []
    shared: dict[tuple[tuple[int, ...], bool], list[list[int]]] = {}
    # Windows whose executions are read one by one anyway (durations, or a dimension the
    # sums per slot do not keep): their other asks are a grouping set more there.
    rows_read = {
        a.windows
        for a in q.asks
        if "durations" in a.measures or ("executions" in a.measures and not set(a.by) <= _SLOT_DIMS)
    }
    for i, ask in enumerate(q.asks):
        m = ask.measures
        if "nodes" in m:
            fields = MEASURE_FIELDS["nodes"]
            if folded and set(ask.by) <= _NODE_SLOT_DIMS and _plan(q, ask).total is None:
                nodes = _slot_nodes(q, ask, pending, memory)
                statement, [part] = _plain(i, ask, nodes, fields, NODES if memory else None)
                fallback = replace(part, fallback=_nodes(q, ask, pending))
                out.append((ask, (statement, [fallback])))
            else:
                out.append((ask, _plain(i, ask, _nodes(q, ask, pending), fields)))
        if "messages" in m:
            message_dims = {**_MESSAGE_DIMS, "customer_segment": "x.segment"}
            rolled = memory and set(ask.by) <= _MESSAGE_SLOT_DIMS
            messages = _messages(q, ask, pending, rolled)
            statement = (
                None
                if messages is None
                else _aggregate(q, ask, messages, "ts", message_dims, [_MESSAGE_SUMS])
            )
            fields = MEASURE_FIELDS["messages"]
            out.append((ask, _plain(i, ask, statement, fields, MESSAGES if rolled else None)))
        if executions and m & set(_EXEC_MEASURES) and set(ask.by) <= _MEMORY_EXEC_DIMS:
            fields = tuple(f for e in _EXEC_MEASURES if e in m for f in MEASURE_FIELDS[e])
            out.append((ask, (None, [_Part(i, fields, (), executions=True)])))
        elif memory and not pending and _held(ask, hours_on_slots, bool(q.channels)):
            fields = tuple(f for e in _EXEC_MEASURES if e in m for f in MEASURE_FIELDS[e])
            out.append((ask, (None, [_Part(i, fields, (), held=True)])))
        elif "customers" in m:
            out.append((ask, _execution_statement(q, [i], pending, folded)))
        elif m & {"executions", "durations"}:
            slots = folded and ask.windows not in rows_read
            groups = shared.setdefault((ask.windows, slots), [])
            # Asks by the same dimensions would share a grouping set: apart.
            for group in groups:
                if all(q.asks[j].by != ask.by for j in group):
                    group.append(i)
                    break
            else:
                groups.append([i])
    for (_, slots), groups in shared.items():
        for group in groups:
            shared_statement = _execution_statement(q, group, pending, folded, slots, memory)
            out.append((q.asks[group[0]], shared_statement))
    return out


def _held(ask: Ask, hours_on_slots: bool, by_channels: bool) -> bool:
    """Whether memory alone answers an ask of executions while nothing waits for a
    fold: sums by what the slots keep (and the local hour on the slots' grid), and
    distinct customers and durations of the whole window (of every channel: not
    ``by_channels``, a query of some channels only)."""
    m = ask.measures & set(_EXEC_MEASURES)
    by = set(ask.by)
    return (
        bool(m)
        and by <= _SLOT_DIMS | ({"hour"} if hours_on_slots else set())
        and (not m & {"customers", "durations"} or (by <= {"workflow_id"} and not by_channels))
    )


def _execution_statement(
    q: ActivityQuery,
    asks: list[int],
    pending: bool,
    folded: bool,
    slots: bool = False,
    memory: bool = False,
) -> _Statement:
    """One statement over the executions for ``asks`` (the same windows); more than one:
    a grouping set each, its rows told apart by ``grouping()`` in the first column.
    ``folded``, ``memory``: as for ``_statements``; ``slots``: from the sums per slot
    (executions only, by dimensions the slots keep)."""
    dims: list[Dimension] = []
    for i in asks:
        dims += [d for d in q.asks[i].by if d not in dims]
    measures = frozenset().union(*(q.asks[i].measures for i in asks))
    values: list[str] = []
    fields: list[str] = []
    if "executions" in measures:
        values.append(_SLOT_SUMS if slots else _EXEC_SUMS)
        fields += MEASURE_FIELDS["executions"]
    if "customers" in measures:
        # Over customer numbers where the fold gave them (nothing folded: the ids).
        values.append(sql.CUSTOMER_COUNT if folded else "uniqExact(x.customer_id)")
        fields += MEASURE_FIELDS["customers"]
    if "durations" in measures:
        values.append(
            "arraySort(groupArrayIf(x.duration_ms, x.status > 0 AND x.duration_ms IS NOT NULL))"
            " AS d"
        )
    first = q.asks[asks[0]]
    union = Ask(first.windows, measures, tuple(dims))
    memory = memory and slots
    source: str | None
    if slots:
        source = _slot_executions(q, union, pending, memory)
    else:
        source = _executions(q, pending, numbers=folded and "customers" in measures)
    plan = _plan(q, union)
    sets = None if len(asks) == 1 else [[dims.index(d) for d in q.asks[i].by] for i in asks]
    named, group = _grouped(plan, [_EXEC_ROW_DIMS[d] for d in dims], sets)
    statement: str | None = None
    if source is not None:
        rows = _in_windows(plan, _with_segments(source, union), "started_at")
        statement = f"SELECT {named}, {', '.join(values)} FROM {rows} GROUP BY {group}"
    if "durations" in measures:  # never from slots: a statement
        # The sorted durations stay in the engine: only their percentiles come back.
        statement = f"SELECT * EXCEPT (d), {_quantiles(q.quantiles or (0.5,))} FROM ({statement})"
        fields += MEASURE_FIELDS["durations"]
    table = EXECUTIONS if memory else None
    if len(asks) == 1:
        return _plain(asks[0], first, statement, tuple(fields), table)
    parts = []
    for i in asks:
        ask = q.asks[i]
        mine = [f for m in ("executions", "durations") if m in ask.measures
                for f in MEASURE_FIELDS[m]]  # fmt: skip
        # grouping(): a bit per dimension, the first the highest, set when not in the set.
        grouping = sum(1 << (len(dims) - 1 - j) for j, d in enumerate(dims) if d not in ask.by)
        columns = (1, *(2 + dims.index(d) for d in ask.by),
                   *(2 + len(dims) + fields.index(f) for f in mine))  # fmt: skip
        parts.append(_Part(i, tuple(mine), columns, grouping, memory=table))
    return statement, parts


def _sums(sign: str) -> str:
    return ", ".join(
        f"{e} AS {c}" for e, c in zip(execution_sums(sign), EXECUTION_SUMS, strict=True)
    )


def _slot_executions(q: ActivityQuery, ask: Ask, pending: bool, memory: bool) -> str | None:
    """The executions of the ask's span as rows of ``schema.EXECUTION_SUMS`` (with
    started_at, workflow_id, channel and error_type), from ``execution_slots``
    (``_from_slots``)."""
    return _from_slots(
        q, ask, pending, memory, "execution_slots",
        f"nullIf(error_type, '') AS error_type, {', '.join(EXECUTION_SUMS)}",
        lambda sign: f"e.error_type AS error_type, {_sums(sign)}",
    )  # fmt: skip


def _from_slots(
    q: ActivityQuery,
    ask: Ask,
    pending: bool,
    memory: bool,
    table: str,
    kept: str,
    of_execution: Callable[[str], str],
    join: str = "",
    cut_held: bool = False,
) -> str | None:
    """The rows of the ask's span (started_at, workflow_id, channel, then ``kept``) from
    sums per slot of the executions' start: the slots no window edge cuts from
    ``table`` (the rows of the folds up to the watermark ``{folded}``); the
    executions of the cut slots, and those with events after the watermark (merged,
    if the tenant has any: ``pending``), as rows of ``of_execution("1")``; and what
    the slots hold of the latter taken away, their rows of ``execution_log`` as
    ``of_execution("-sign")``. ``join``: an ARRAY JOIN of an execution (``e``) into
    rows (its node events). ``memory``: the slots no edge cuts are not read (they are
    added up from memory); ``cut_held``: nor the cut slots' executions while nothing
    waits for a fold (their rows are held in memory too). None if nothing else is to
    be read."""
    lo, hi = sql.time_param("lo"), sql.time_param("hi")
    in_period = f"started_at BETWEEN {lo} AND {hi} AND {sql.FILTERS}"
    cut = sql.cut_slots(q.windows[w] for w in ask.windows)
    whole = sql.whole_slots(*_span(q, ask), cut)
    slot_start = f"fromUnixTimestamp64Micro({SLOTS_FROM_US} + slot * {SLOT_US}, 'UTC')"
    # Each part filters itself: a filter over their union cost more than the parts.
    parts = []
    if not memory:
        parts.append(
            f"""SELECT {slot_start} AS started_at, workflow_id,
                nullIf(channel, '') AS channel, {kept}
            FROM (SELECT * FROM {table}
                  WHERE tenant = {{tenant:String}} AND fold <= {{folded:Int64}}
                    AND {sql.FILTERS} AND {whole})"""
        )
    if pending or (cut and not cut_held):
        rows = sql.executions(
            f"{in_period} AND ({sql.in_slots('started_at', cut)})",
            pending=pending,
            nodes=bool(join),
        )
        parts.append(
            "SELECT e.started_at AS started_at, e.workflow_id AS workflow_id,"
            f" e.channel AS channel, {of_execution('1')}"
            f" FROM ({_in_period(rows, in_period, pending)}) e{join}"
        )
    if pending:
        parts.append(
            f"""SELECT {slot_start} AS started_at, e.workflow_id AS workflow_id,
                e.channel AS channel, {of_execution("-sign")}
            FROM (SELECT *, {sql.slot_of("started_at")} AS slot FROM execution_log
                  WHERE tenant = {{tenant:String}} AND fold <= {{folded:Int64}}
                    AND execution_id IN ({sql.PENDING}) AND {sql.FILTERS}) e{join}
            WHERE {whole}"""
        )
    if not parts:
        return None
    return "(" + " UNION ALL ".join(parts) + ")"


def _nodes(q: ActivityQuery, ask: Ask, pending: bool) -> str:
    """Node events per window and ``ask.by``: each execution carries its node events
    (``schema.NODE``)."""
    lo, hi = sql.time_param("lo"), sql.time_param("hi")
    in_period = f"started_at BETWEEN {lo} AND {hi} AND {sql.FILTERS}"
    with_nodes = sql.executions(in_period, pending=pending, nodes=True)
    nodes = f"""SELECT e.started_at AS started_at, e.channel AS channel,
            e.workflow_id AS workflow_id, e.customer_id AS customer_id,
            e.error_type AS error_type, n.2 AS node_id, n.3 AS node_type,
            n.4 AS ts, n.5 = 1 AS ok, n.6 AS dur
        FROM ({_in_period(with_nodes, in_period, pending)}) e ARRAY JOIN e.nodes AS n"""
    return _aggregate(q, ask, nodes, "started_at", _EXEC_ROW_DIMS, [_NODE_SUMS])


def _slot_nodes(q: ActivityQuery, ask: Ask, pending: bool, memory: bool) -> str | None:
    """Node events per window, ``ask.by`` (dimensions ``node_slots`` keeps) and node
    type, from their sums per slot (``_from_slots``): a row per type, put together
    per cell by ``_node_cells``."""
    parts = _from_slots(
        q, ask, pending, memory, "node_slots", f"node_id, node_type, {', '.join(NODE_SUMS)}",
        lambda sign: f"n.2 AS node_id, n.3 AS node_type, {_node_sums(sign)}",
        " ARRAY JOIN e.nodes AS n", cut_held=memory,
    )  # fmt: skip
    if parts is None:
        return None
    plan = _plan(q, ask)
    rows = _in_windows(plan, parts, "started_at")
    named, group = _grouped(plan, [_EXEC_ROW_DIMS[d] for d in ask.by])
    per_type = ", ".join(f"sum(x.{c})" for c in NODE_SUMS)
    return f"SELECT {named}, x.node_type AS t, {per_type} FROM {rows} GROUP BY {group}, t"


def _node_sums(sign: str) -> str:
    return ", ".join(f"{e} AS {c}" for e, c in zip(node_sums(sign, "n"), NODE_SUMS, strict=True))


def _messages(q: ActivityQuery, ask: Ask, pending: bool, memory: bool = False) -> str | None:
    """The messages and feedback of the ask's span, as rows (ts, workflow_id, channel,
    customer_id, sent, received, csat_sum, csat_n).

    Where the rollups serve the ask (no dimension finer than a slot: not the hour,
    which odd historical offsets put off the slot grid, nor the customer's segment),
    the slots no window edge cuts come from ``message_slots`` (the folds up to the
    watermark ``{folded}``), one row per slot; the events of the cut slots and those
    ingested after the watermark (if the tenant has any: ``pending``) come from the
    events themselves. ``memory``: the slots are added up from memory, not read
    (None: nothing else is to be read).
    """
    lo, hi = sql.time_param("lo"), sql.time_param("hi")
    columns = """ts, workflow_id, channel, customer_id,
        toUInt64(type = 'message.sent') AS sent, toUInt64(type = 'message.received') AS received,
        if(type = 'feedback.submitted', toInt64(csat), NULL) AS csat_sum,
        toUInt64(type = 'feedback.submitted' AND csat IS NOT NULL) AS csat_n"""
    in_span = f"ts BETWEEN {lo} AND {hi} AND {sql.FILTERS}"
    if not set(ask.by) <= _MESSAGE_SLOT_DIMS:
        return f"({sql.tenant_events(MESSAGE_ROLLUP_TYPES, columns, in_span)})"
    cut = sql.cut_slots(q.windows[w] for w in ask.windows)
    in_cut = sql.in_slots("ts", cut)
    not_cut = f"NOT has({sql.ints(cut)}, {sql.slot_of('ts')})"
    after = sql.ingested("{folded:Int64}")
    # The events of the cut slots and those not folded yet, in one read (in memory, the
    # cut slots' events folded up to the watermark are held too).
    raw = [f"({in_cut})"] if cut and not memory else []
    if pending:
        raw.append(f"({after} AND {not_cut})" if raw else f"({after})")
    parts = []
    if raw:
        parts.append(
            sql.tenant_events(MESSAGE_ROLLUP_TYPES, columns, f"{in_span} AND ({' OR '.join(raw)})")
        )
    if memory:
        return "(" + " UNION ALL ".join(parts) + ")" if parts else None
    # The rows of every fold up to the watermark, added up by the aggregate over them
    # (each part filters itself: a filter over their union cost more than the parts).
    parts.append(
        f"""SELECT fromUnixTimestamp64Micro({SLOTS_FROM_US} + slot * {SLOT_US}, 'UTC') AS ts,
            nullIf(workflow_id, '') AS workflow_id, nullIf(channel, '') AS channel,
            CAST(NULL, 'Nullable(String)') AS customer_id, sent, received,
            toNullable(csat_sum) AS csat_sum, csat_n
        FROM (SELECT * FROM message_slots
              WHERE tenant = {{tenant:String}} AND fold <= {{folded:Int64}} AND {sql.FILTERS}
                AND {sql.whole_slots(*_span(q, ask), cut)})"""
    )
    return "(" + " UNION ALL ".join(parts) + ")"


def _span(q: ActivityQuery, ask: Ask) -> tuple[datetime, datetime]:
    return (
        min(q.windows[w].start for w in ask.windows),
        max(q.windows[w].end for w in ask.windows),
    )


#: Reads the folded facts of the one workflow asked about, over slots first..last
#: (whole UTC days), from memory (``workflow_days``).
DayReader = Callable[[int, int], Days]


def _memory_rows(
    q: ActivityQuery, ask: Ask, table: Table, days: Days, cut_held: bool, by_type: bool = False
) -> list[list[Any]]:
    """Rows (window, ``ask.by``'s values, then the table's sums) of the slots of the
    ask's span that no window edge cuts, from memory, and with ``cut_held``, of the
    events of the slots edges cut, held too (the caller's statement reads them
    otherwise); ``by_type``: per node type too, after the key (``_slot_nodes``'s
    rows)."""
    rows = days.rows(table)
    cut = sql.cut_slots(q.windows[w] for w in ask.windows)
    start, end = _span(q, ask)
    first, last = sql.slot_of_us(sql.epoch_us(start)), sql.slot_of_us(sql.epoch_us(end))
    keep = (rows.slot >= first) & (rows.slot <= last) & ~np.isin(rows.slot, cut)
    out = _in_windows_of(
        q, ask, SLOTS_FROM_US + rows.slot[keep] * SLOT_US, rows.keys[keep], rows.sums[keep],
        table.keys, days, by_type,
    )  # fmt: skip
    if cut and cut_held:
        events = days.cut_events(table, cut)
        out += _in_windows_of(
            q, ask, events.ts_us, events.keys, events.sums, table.keys, days, by_type
        )
    return out


def _memberships(q: ActivityQuery, ask: Ask, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (row, window) of the ask whose window the row's time (µs) is in: the rows'
    indexes and the windows', found per layer of disjoint windows by a binary search
    among its starts (as ``_in_windows``'s as-of join)."""
    rows, windows = [], []
    for layer in _layers(q, ask):
        starts = np.array([sql.epoch_us(q.windows[w].start) for w in layer], np.int64)
        ends = np.array([sql.epoch_us(q.windows[w].end) for w in layer], np.int64)
        at = np.searchsorted(starts, times, "right") - 1
        inside = np.flatnonzero(at >= 0)
        inside = inside[times[inside] <= ends[at[inside]]]
        rows.append(inside)
        windows.append(np.asarray(layer, np.int64)[at[inside]])
    return np.concatenate(rows), np.concatenate(windows)


def _cells_of(windows: np.ndarray, keys: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The cell (window, then ``keys``: codes) of each row: a number per row (0, 1, ...
    in the cells' order), and the first row of each cell."""
    if not len(windows):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    keys = [windows, *keys]
    _, cell, first = distinct(np.ravel_multi_index(keys, [int(c.max()) + 1 for c in keys]))
    return cell, first


def _key(q: ActivityQuery, ask: Ask, window: int, value: Callable[[str], Any]) -> list[Any]:
    """A cell's key: its window, then ``ask.by``'s values (``value`` of each but the
    workflow's, which is the query's one)."""
    return [window, *(q.workflow_ids[0] if d == "workflow_id" else value(d) for d in ask.by)]


def _in_windows_of(
    q: ActivityQuery,
    ask: Ask,
    times: np.ndarray,
    keys: np.ndarray,
    sums: np.ndarray,
    names: Sequence[str],
    days: Days,
    by_type: bool = False,
) -> list[list[Any]]:
    """Rows (window, ``ask.by``'s values, then sums) of rows at ``times`` (µs) with
    ``keys`` (codes of the text columns ``names``) and ``sums``, each in every window
    of the ask its time is in (and of the query's channels)."""
    if q.channels:
        mine = np.isin(keys[:, names.index("channel")], days.cache.code(q.channels))
        times, keys, sums = times[mine], keys[mine], sums[mine]
    rows, windows = _memberships(q, ask, times)
    columns: dict[str, np.ndarray] = {c: keys[rows, names.index(c)] for c in ask.by if c in names}
    hours = np.empty(0, np.int64)
    if "hour" in ask.by:  # of a slot's start: every time in it has its hour (on the grid)
        hours, columns["hour"], _ = distinct(_local_hours(times[rows], q.timezone))
    if by_type:
        columns["node_type"] = keys[rows, names.index("node_type")]
    cell, first = _cells_of(windows, [columns[d] for d in (*ask.by, "node_type") if d in columns])
    if not len(cell):
        return []
    _, totals = group([cell], sums[rows])

    def text(d: str, at: int) -> Any:
        if d == "hour":
            return sql.from_epoch_us(int(hours[columns["hour"][at]]))
        if d not in columns:  # a dimension the table does not keep (messages' error type)
            return None
        v = days.values[int(columns[d][at])]
        return v if d == "node_id" or v else None  # '' is NULL but a node id

    out = []
    for c, values in enumerate(totals.tolist()):
        at = int(first[c])
        key = _key(q, ask, int(windows[at]), partial(text, at=at))
        if by_type:
            key.append(days.values[int(columns["node_type"][at])])
        out.append(key + values)
    return out


def _local_hours(starts: np.ndarray, timezone: str) -> np.ndarray:
    """µs of the UTC instant at which each start's clock hour in ``timezone`` began (as
    ``sql.local_hour``)."""
    return starts - (starts + utc_offsets_us(starts, ZoneInfo(timezone))) % _HOUR_US


def _execution_cells(
    q: ActivityQuery, ask: Ask, execs: Executions, ids: list[str | None], days: Days
) -> list[list[Any]]:
    """Rows (window, ``ask.by``'s values, then the fields of its measures in the order of
    ``_EXEC_MEASURES``) over executions: those held in memory (in order of their start),
    then those waiting for a fold, whose customers without a number yet are ``ids``
    (one each)."""
    start, end = (sql.epoch_us(t) for t in _span(q, ask))
    held = len(execs.started_us) - len(ids)
    t = execs.started_us
    first, last = np.searchsorted(t[:held], start), np.searchsorted(t[:held], end, "right")
    waiting = held + np.flatnonzero((t[held:] >= start) & (t[held:] <= end))
    span = np.concatenate([np.arange(first, last), waiting])
    if q.channels:
        span = span[np.isin(execs.channel[span], days.cache.code(q.channels))]
    member, windows = _memberships(q, ask, t[span])
    rows = span[member]  # an execution once per window it is in
    columns: dict[str, np.ndarray] = {
        d: (execs.channel if d == "channel" else execs.error_type)[rows]
        for d in ask.by if d in ("channel", "error_type")
    }  # fmt: skip
    hours = np.empty(0, np.int64)
    if "hour" in ask.by:
        hours, columns["hour"], _ = distinct(_local_hours(t[rows], q.timezone))
    cell, firsts = _cells_of(windows, [columns[d] for d in ask.by if d in columns])
    if not len(cell):
        return []
    status, duration = execs.status[rows], execs.duration_ms[rows]
    timed = (status > 0) & (duration >= 0)
    sums = np.column_stack([
        np.ones(len(rows), np.int64), status == 1, status == 2,
        np.where(status > 0, np.maximum(duration, 0), 0), timed,
    ]).astype(np.int64)  # fmt: skip
    _, totals = group([cell], sums)  # cells 0, 1, ... in order
    n_cells = len(totals)
    customers = np.zeros(n_cells, np.int64)
    if "customers" in ask.measures:
        nums = execs.customer_num[rows]
        numbered = nums > 0
        base = int(nums.max()) + 1
        pairs, _, _ = distinct(cell[numbered] * base + nums[numbered])
        customers += np.bincount(pairs // base, minlength=n_cells)
        by_id: dict[int, set[str]] = {}
        for k in np.flatnonzero(rows >= held).tolist():
            who = ids[int(rows[k]) - held]
            if who is not None:
                by_id.setdefault(int(cell[k]), set()).add(who)
        for c, found in by_id.items():
            customers[c] += len(found)
    quantiles: list[list[float | None]] = []
    if "durations" in ask.measures:
        mine = np.flatnonzero(timed)
        order = mine[np.argsort(cell[mine], kind="stable")]
        bounds = np.searchsorted(cell[order], np.arange(n_cells + 1))
        for c in range(n_cells):
            values = duration[order[bounds[c] : bounds[c + 1]]]
            quantiles.append(
                np.quantile(values, q.quantiles).tolist() if len(values)
                else [None] * len(q.quantiles)
            )  # fmt: skip

    def value(d: str, at: int) -> Any:
        if d == "hour":
            return sql.from_epoch_us(int(hours[columns["hour"][at]]))
        return days.values[int(columns[d][at])] or None

    out: list[list[Any]] = []
    for c in range(n_cells):
        at = int(firsts[c])  # the cell's key, from its first execution
        row = _key(q, ask, int(windows[at]), partial(value, at=at))
        if "executions" in ask.measures:
            row += totals[c].tolist()
        if "customers" in ask.measures:
            row.append(int(customers[c]))
        if "durations" in ask.measures:
            row.append(quantiles[c])
        out.append(row)
    return out


def _on_slot_grid(timezone: str, lo: int, hi: int) -> bool:
    """Whether ``timezone``'s offset stays one multiple of a slot from µs ``lo`` to
    ``hi`` (checked at each UTC day's start and end): every time in a slot then has
    the local hour of the slot's start."""
    days = np.arange(lo // _DAY_US, hi // _DAY_US + 1) * _DAY_US
    offsets = utc_offsets_us(np.concatenate([days, days + _DAY_US - 1]), ZoneInfo(timezone))
    return bool((offsets == offsets[0]).all() and offsets[0] % SLOT_US == 0)


def _add_held(cells: Cells, q: ActivityQuery, ask: Ask, days: Days) -> None:
    """The cells of an ask ``_held`` answers: execution sums per slot and of the cut
    slots' executions, the union of the customers of each window's whole slots and of
    its cut slots' executions, and numpy's percentiles of each window's durations."""
    n_keys = 1 + len(ask.by)
    if "executions" in ask.measures:
        rows = _memory_rows(q, ask, EXECUTIONS, days, cut_held=True)
        add_rows(cells, rows, n_keys, MEASURE_FIELDS["executions"], to_sums=True)
    if "customers" in ask.measures:
        add_rows(cells, _held_customers(q, ask, days), n_keys, MEASURE_FIELDS["customers"])
    if "durations" in ask.measures:
        durations = days.durations()
        rows = []
        for w in ask.windows:
            window = q.windows[w]
            a = np.searchsorted(durations.started_us, sql.epoch_us(window.start))
            b = np.searchsorted(durations.started_us, sql.epoch_us(window.end), "right")
            if a < b:
                quantiles = np.quantile(durations.duration_ms[a:b], q.quantiles).tolist()
                rows.append([*_key(q, ask, w, lambda _: None), quantiles])
        add_rows(cells, rows, n_keys, MEASURE_FIELDS["durations"])


def _held_customers(q: ActivityQuery, ask: Ask, days: Days) -> list[list[Any]]:
    """Per window of the ask: its distinct customers, from the customers of its whole
    slots and those of its cut slots' executions (nothing waits for a fold)."""
    held = days.customer_sets()
    cut = sql.cut_slots(q.windows[w] for w in ask.windows)
    events = days.cut_events(CUSTOMERS, cut) if cut else None
    starts = SLOTS_FROM_US + held.slots * SLOT_US
    out = []
    for w in ask.windows:
        window = q.windows[w]
        lo, hi = sql.epoch_us(window.start), sql.epoch_us(window.end)
        a, b = np.searchsorted(starts, lo), np.searchsorted(starts, hi, "right")
        parts: list[AbstractBitMap] = [
            held.sets[i] for i in range(a, b) if int(held.slots[i]) not in cut
        ]
        if events is not None:
            inside = (events.ts_us >= lo) & (events.ts_us <= hi)
            parts.append(BitMap(events.sums[inside, 0].tolist()))
        out.append([*_key(q, ask, w, lambda _: None), len(BitMap.union(*parts)) if parts else 0])
    return out


def _node_cells(rows: Sequence[Sequence[Any]], n_keys: int) -> list[list[Any]] | None:
    """Cells of node events from rows per cell and type (key, type, ``NODE_SUMS``): a
    cell's type is its node's one type there; None if a node has more than one in a
    cell (its latest is the type of its latest event, which the sums do not keep)."""
    per_cell: dict[tuple[Any, ...], dict[str, list[int]]] = {}
    for row in rows:
        types = per_cell.setdefault(tuple(row[:n_keys]), {})
        total = types.setdefault(row[n_keys], [0] * len(NODE_SUMS))
        for j, v in enumerate(row[n_keys + 1 :]):
            total[j] += v
    out = []
    for key, types in per_cell.items():
        # A type whose events all were taken away is no type of the node's.
        kept = [(t, v) for t, v in types.items() if v[0] != 0]
        if len(kept) > 1:
            return None
        if kept:
            out.append([*key, kept[0][0], *kept[0][1]])
    return out


def activity(
    transport: Transport,
    q: ActivityQuery,
    folded: int,
    pending: bool,
    workflow_days: DayReader | None = None,
) -> list[Cells]:
    """The cells of every ask of ``q`` (``folded``: the fold's watermark; ``pending``:
    whether the tenant has events after it), every statement side by side.
    ``workflow_days``: where the query is about one workflow, its folded facts in
    memory."""
    base = {
        "tenant": q.tenant,
        "tz": q.timezone,
        "folded": folded,
        **sql.filter_params(q.workflow_ids, q.channels),
    }
    memory = workflow_days is not None and folded > 0 and len(q.workflow_ids) == 1
    days: Days | None = None
    few = False
    if memory:
        assert workflow_days is not None
        spans = [_span(q, ask) for ask in q.asks]
        lo, hi = (sql.epoch_us(min(a for a, _ in spans)), sql.epoch_us(max(b for _, b in spans)))
        days = workflow_days(sql.slot_of_us(lo), sql.slot_of_us(hi))
        slots = days.rows(EXECUTIONS)
        inside = (slots.slot >= sql.slot_of_us(lo)) & (slots.slot <= sql.slot_of_us(hi))
        few = int(slots.sums[inside, 0].sum()) <= MEMORY_EXECUTIONS
    by_hour = any("hour" in ask.by for ask in q.asks)
    on_slots = memory and by_hour and _on_slot_grid(q.timezone, lo, hi)
    statements = _statements(
        q, pending, folded=folded > 0, memory=memory, executions=few, hours_on_slots=on_slots
    )
    batch = [(statement, base | _window_params(q, ask)) for ask, (statement, _) in statements
             if statement is not None]  # fmt: skip
    executions_asked = [p.ask for _, (_, parts) in statements for p in parts if p.executions]
    if pending and executions_asked:  # the executions waiting for a fold, once for all
        span = tuple(sorted({w for i in executions_asked for w in q.asks[i].windows}))
        batch.append((_WAITING, base | _window_params(q, Ask(span, frozenset()))))
    tables = iter(transport.query_all(batch))
    out: list[Cells] = [{} for _ in q.asks]
    for bound, (statement, parts) in statements:
        found = sql.rows(next(tables)) if statement is not None else []
        part = parts[0]
        if part.fallback is not None:  # nodes per type
            ask = q.asks[part.ask]
            n_keys = 1 + len(ask.by)
            if part.memory is not None:
                assert days is not None
                held = _memory_rows(q, ask, part.memory, days, not pending, by_type=True)
                found += [tuple(r) for r in held]
            per_cell = _node_cells(found, n_keys)
            if per_cell is not None:
                add_rows(out[part.ask], per_cell, n_keys, part.fields)
                continue
            found = sql.rows(transport.query(part.fallback, base | _window_params(q, bound)))
            parts = [replace(part, memory=None)]
        for part in parts:
            ask = q.asks[part.ask]
            n_keys = 1 + len(ask.by)
            if part.executions:
                continue  # below, with the executions waiting for a fold
            if part.held:
                assert days is not None
                _add_held(out[part.ask], q, ask, days)
                continue
            hours = [1 + j for j, d in enumerate(ask.by) if d == "hour"]
            quantiles = (
                part.fields.index("quantiles") + n_keys if "quantiles" in part.fields else -1
            )
            rows = []
            for row in found:
                if part.grouping is not None and row[0] != part.grouping:
                    continue
                values = [row[c] for c in part.columns]
                for at in hours:  # µs of the hour, as the naive UTC time it starts at
                    values[at] = sql.from_epoch_us(values[at])
                if quantiles >= 0:  # ClickHouse's NaN over no duration is None
                    values[quantiles] = [
                        None if math.isnan(v) else v for v in values[quantiles][: len(q.quantiles)]
                    ]
                rows.append(values)
            add_rows(out[part.ask], rows, n_keys, part.fields)
            if part.memory is not None and part.fallback is None:
                assert days is not None
                # Messages' cut slots are held always; executions', only for ``_held``.
                cut_held = part.memory is MESSAGES
                memory_rows = _memory_rows(q, ask, part.memory, days, cut_held)
                add_rows(out[part.ask], memory_rows, n_keys, part.fields, to_sums=True)
    if executions_asked:
        assert days is not None
        execs, ids = days.executions(), list[str | None]()
        if pending:
            customers = any("customers" in q.asks[i].measures for i in executions_asked)
            numbers = partial(_numbers, transport, base) if customers else None
            execs, ids = _with_waiting(execs, next(tables), days, numbers)
        for i in executions_asked:
            ask = q.asks[i]
            fields = [f for e in _EXEC_MEASURES if e in ask.measures for f in MEASURE_FIELDS[e]]
            add_rows(out[i], _execution_cells(q, ask, execs, ids, days), 1 + len(ask.by), fields)
    for ask, cells in zip(q.asks, out, strict=True):
        if "durations" in ask.measures:
            fill_quantiles(cells, len(q.quantiles))
    return out


def _numbers(transport: Transport, base: dict[str, Any], ids: list[str]) -> dict[str, int]:
    """The numbers of customers ``ids`` as of the watermark (``_NUMBERS``)."""
    if not ids:
        return {}
    found = transport.query(_NUMBERS, base | {"ids": ids})
    return dict(zip(found.column(0).to_pylist(), found.column(1).to_pylist(), strict=True))


def _with_waiting(
    execs: Executions,
    waiting: pa.Table,
    days: Days,
    numbers: Callable[[list[str]], dict[str, int]] | None,
) -> tuple[Executions, list[str | None]]:
    """The executions held in memory less those waiting for a fold (by id: their hash,
    then the id itself), then the latter as merged now where asked about (``_WAITING``'s
    rows), and the ids of their customers without a number yet. ``numbers``: the
    numbers of some customers as of the watermark (None: customers are not asked
    about, and every waiting execution counts as without one)."""
    columns = [waiting.column(i) for i in range(waiting.num_columns)]
    hashes = np.asarray(columns[6], np.uint64)
    held = np.ones(len(execs.started_us), bool)
    candidates = np.flatnonzero(np.isin(execs.id_hash, hashes))
    if len(candidates):
        ids = set(columns[7].to_pylist())
        for i in candidates.tolist():
            held[i] = execs.execution_id[i] not in ids
    asked = pa.array(np.asarray(columns[8], bool))
    mask = np.asarray(asked, bool)
    customers = columns[5].filter(asked).to_pylist()
    found = numbers(sorted({c for c in customers if c is not None})) if numbers else {}
    nums = [found.get(c, 0) if c is not None else 0 for c in customers]
    more = Executions(
        np.asarray(columns[0].filter(asked), np.int64),
        days.cache.code(columns[1].filter(asked).to_pylist()),
        days.cache.code(columns[2].filter(asked).to_pylist()),
        np.asarray(columns[3], np.int64)[mask],
        np.asarray(columns[4], np.int64)[mask],
        np.array(nums, np.int64),
        hashes[mask],
        np.array(columns[7].filter(asked).to_pylist(), object),
    )
    merged = Executions(
        *(np.concatenate([getattr(execs, f.name)[held], getattr(more, f.name)])
          for f in fields(Executions))
    )  # fmt: skip
    no_number = [c if n == 0 else None for c, n in zip(customers, nums, strict=True)]
    return merged, no_number
