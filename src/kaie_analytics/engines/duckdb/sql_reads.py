"""Facts of executions and messages in SQL, for any filter and breakdown.

The general path of ``ActivityQuery`` (reports, segments, distinct customers
per channel, several workflows): one aggregate over the tenant's current
executions (``executions_sql``, pending events merged) and one over its
messages and feedback, per ask, each row put in every window its time is in.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
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
from kaie_analytics.engines.duckdb.store import DuckDBEventStore

#: Each customer's latest segment.
SEGMENTS_SQL = """
    SELECT customer_id, arg_max(segment, ts) AS segment
    FROM events
    WHERE tenant = $tenant AND type = 'customer.updated' AND segment IS NOT NULL
    GROUP BY customer_id
"""
_FILTERS = (
    "(len($workflows) = 0 OR list_contains($workflows, workflow_id))"
    " AND (len($channels) = 0 OR list_contains($channels, channel))"
)
_EXEC_DIMS: dict[Dimension, str] = {
    "workflow_id": "x.workflow_id",
    "channel": "x.channel",
    "customer_segment": "seg.segment",
    "error_type": "x.error_type",
    # The UTC start of the local clock hour: the time less its minutes into that hour.
    "hour": "make_timestamp(epoch_us(x.started_at)"
    " - epoch_us(timezone($tz, timezone('UTC', x.started_at))) % 3600000000)",
    "node_id": "x.node_id",
}
_MESSAGE_DIMS: dict[Dimension, str] = {
    **_EXEC_DIMS,
    "error_type": "NULL",
    "hour": "make_timestamp(epoch_us(x.ts)"
    " - epoch_us(timezone($tz, timezone('UTC', x.ts))) % 3600000000)",
}
_EXEC_SUMS = """count(*), count(*) FILTER (WHERE x.status = 1), count(*) FILTER (WHERE x.status = 2),
    coalesce(sum(x.duration_ms) FILTER (WHERE x.status > 0), 0)::BIGINT,
    count(x.duration_ms) FILTER (WHERE x.status > 0)"""
_MESSAGE_SUMS = """count(*) FILTER (WHERE x.type = 'message.sent'),
    count(*) FILTER (WHERE x.type = 'message.received'),
    coalesce(sum(x.csat) FILTER (WHERE x.type = 'feedback.submitted'), 0)::BIGINT,
    count(x.csat) FILTER (WHERE x.type = 'feedback.submitted')"""
_NODE_SUMS = """arg_max(x.node_type, x.ts), count(*), count(*) FILTER (WHERE x.ok),
    count(*) FILTER (WHERE NOT x.ok), coalesce(sum(x.dur), 0)::BIGINT, count(x.dur)"""


def _disjoint(q: ActivityQuery, windows: Sequence[int]) -> bool:
    spans = sorted((q.windows[w].start, q.windows[w].end) for w in windows)
    return all(a[1] < b[0] for a, b in itertools.pairwise(spans))


def _in_windows(q: ActivityQuery, ask: Ask, column: str) -> str:
    """A join that gives each row of ``x`` the index ``w.i`` of every window it is in."""
    windows = "(SELECT unnest($w_i) AS i, unnest($w_lo) AS lo, unnest($w_hi) AS hi)"
    if _disjoint(q, ask.windows):
        # One window at most per row: an as-of join, linear in the rows.
        return f"ASOF JOIN {windows} w ON x.{column} >= w.lo WHERE x.{column} <= w.hi"
    return f"JOIN {windows} w ON x.{column} BETWEEN w.lo AND w.hi"


def _window_params(q: ActivityQuery, ask: Ask) -> dict[str, Any]:
    order = sorted(ask.windows, key=lambda w: q.windows[w].start)
    return {
        "w_i": order,
        "w_lo": [q.windows[w].start for w in order],
        "w_hi": [q.windows[w].end for w in order],
        "lo": min(q.windows[w].start for w in order),
        "hi": max(q.windows[w].end for w in order),
    }


def _source(base: str, ask: Ask) -> str:
    if "customer_segment" not in ask.by:
        return f"({base}) x"
    return f"({base}) x LEFT JOIN ({SEGMENTS_SQL}) seg USING (customer_id)"


def _statements(
    store: DuckDBEventStore, q: ActivityQuery, ask: Ask
) -> list[tuple[str, tuple[str, ...]]]:
    """(SQL, the fields of its values after the key columns) for one ask."""
    out: list[tuple[str, tuple[str, ...]]] = []
    exec_dims = ", ".join(["w.i", *(_EXEC_DIMS[d] for d in ask.by)])
    executions = (
        f"SELECT * FROM ({store.executions_sql(q.tenant)})"
        f" WHERE started_at BETWEEN $lo AND $hi AND {_FILTERS}"
    )
    m = ask.measures
    if "nodes" in m:
        nodes = f"""SELECT x.started_at, x.channel, x.workflow_id, x.customer_id, n.node_id,
                n.node_type, n.ts, n.ok, n.dur
            FROM (SELECT *, unnest(nodes) AS n FROM ({executions})) x"""
        out.append(
            (
                f"SELECT {exec_dims}, {_NODE_SUMS} FROM {_source(nodes, ask)}"
                f" {_in_windows(q, ask, 'started_at')} GROUP BY ALL",
                MEASURE_FIELDS["nodes"],
            )
        )  # fmt: skip
    values: list[str] = []
    fields: list[str] = []
    if "executions" in m:
        values.append(_EXEC_SUMS)
        fields += MEASURE_FIELDS["executions"]
    if "customers" in m:
        values.append("count(DISTINCT x.customer_id)")
        fields += MEASURE_FIELDS["customers"]
    if "durations" in m:
        qs = ", ".join(repr(float(v)) for v in q.quantiles) or "0.5"
        values.append(f"quantile_cont(x.duration_ms, [{qs}]) FILTER (WHERE x.status > 0)")
        fields += MEASURE_FIELDS["durations"]
    if values:
        out.append(
            (
                f"SELECT {exec_dims}, {', '.join(values)} FROM {_source(executions, ask)}"
                f" {_in_windows(q, ask, 'started_at')} GROUP BY ALL",
                tuple(fields),
            )
        )
    if "messages" in m:
        message_dims = ", ".join(["w.i", *(_MESSAGE_DIMS[d] for d in ask.by)])
        events = f"""SELECT type, ts, workflow_id, channel, customer_id, csat FROM events
            WHERE tenant = $tenant AND ts BETWEEN $lo AND $hi
              AND type IN ('message.sent', 'message.received', 'feedback.submitted')
              AND {_FILTERS}"""
        out.append(
            (
                f"SELECT {message_dims}, {_MESSAGE_SUMS} FROM {_source(events, ask)}"
                f" {_in_windows(q, ask, 'ts')} GROUP BY ALL",
                MEASURE_FIELDS["messages"],
            )
        )
    return out


def activity(store: DuckDBEventStore, q: ActivityQuery, asks: Sequence[Ask]) -> list[Cells]:
    """The cells of ``asks``, every statement side by side."""
    base = {
        "tenant": q.tenant,
        "workflows": list(q.workflow_ids),
        "channels": list(q.channels),
        "tz": q.timezone,
    }
    shapes: list[tuple[int, tuple[str, ...]]] = []
    statements = []
    for i, ask in enumerate(asks):
        params = base | _window_params(q, ask)
        for sql, fields in _statements(store, q, ask):
            shapes.append((i, fields))
            statements.append((sql, params))
    out: list[Cells] = [{} for _ in asks]
    for (i, fields), rows in zip(shapes, store.query_all(statements), strict=True):
        add_rows(out[i], rows, 1 + len(asks[i].by), fields)
    for ask, cells in zip(asks, out, strict=True):
        if "durations" in ask.measures:
            fill_quantiles(cells, len(q.quantiles))
    return out
