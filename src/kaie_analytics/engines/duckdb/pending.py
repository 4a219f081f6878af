"""The executions pending events change, merged once per tenant and extended as events come.

Until a fold, a workflow answer must count each execution that pending
events (committed, not yet folded) change as merged with them, and not as
its folded row. Merging every pending event of the tenant in each answer
cost in proportion to the events waiting, so while a tenant streamed, every
answer paid for the whole backlog. Here the merge is kept per tenant, as of
one fold (its watermark) and up to one committed seq: the next answer merges
only the events committed since, into the executions they change, in one
statement. Those events come from memory when the writer still has them
(``recent``), and the folded rows of the executions they change are looked
up only for executions that have one (``folded_ids``): a stream of new
executions costs no scan of the tenant's events or executions. A fold moves
the watermark and the merge starts afresh.

Kept as two Arrow tables of the columns answers read: ``folded``, the
folded rows of the changed executions that had one (where each is counted
now), and ``merged``, every changed execution merged with its events (where
it is to be counted), with its customer's number when the customer has one
and its merged state (``s``, ``c``, ``f``, ``nodes``) for the next merge.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kaie_analytics.engines.duckdb import executions_sql as xsql
from kaie_analytics.engines.duckdb import folded_ids
from kaie_analytics.engines.duckdb.times import SLOT_US, epoch_us

if TYPE_CHECKING:
    from datetime import datetime

    from kaie_analytics.engines.duckdb.store import Columns, DuckDBEventStore

#: The columns of a folded or merged execution that answers read, then its state.
_ROW = ("execution_id", "workflow_id", "started_at", "channel", "error_type", "status",
        "duration_ms", "num", "customer_id", "nodes")  # fmt: skip
_COLUMNS = ", ".join(_ROW)


_STATE = "$tenant AS tenant, execution_id, s, c, f, nodes AS n"


def _extend_sql(*, prev: bool, look_up: bool, states: str | None) -> str:
    """One statement: the folded rows of the executions in ``look_up`` (``new`` false),
    and the merged rows of every execution ``delta`` changes (``new`` true), from
    their states in ``prev``, those folded rows and ``delta`` (the state rows of the
    new events: a table, or the query ``states``)."""
    fresh = """SELECT execution_id, workflow_id, started_at, channel, error_type, status,
            duration_ms, customer_num AS num, customer_id, nodes, s, c, f
        FROM executions
        WHERE tenant = $tenant AND execution_id IN (SELECT execution_id FROM look_up)"""
    merged = xsql.merge_and_finalise(
        " UNION ALL ".join(
            [
                # Each branch named: whichever comes first names the columns.
                *([f"SELECT {_STATE} FROM prev"] if prev else []),
                *([f"SELECT {_STATE} FROM fresh"] if look_up else []),
                "SELECT tenant, execution_id, s, c, f, n FROM delta",
            ]
        )
    )
    return f"""
    WITH {f"delta AS ({states})," if states else ""}
    {f"fresh AS ({fresh})," if look_up else ""}
    merged AS ({merged})
    {f"SELECT false AS new, {_COLUMNS}, s, c, f FROM fresh UNION ALL" if look_up else ""}
    SELECT true AS new, m.execution_id, m.workflow_id, m.started_at, m.channel, m.error_type,
        m.status, m.duration_ms, k.num, m.customer_id, m.nodes, m.s, m.c, m.f
    FROM merged m LEFT JOIN (
        SELECT customer_id, num FROM customer_numbers
        WHERE tenant = $tenant AND customer_id IN (SELECT customer_id FROM merged)
    ) k USING (customer_id)
    """


@dataclass(frozen=True)
class Merged:
    """One tenant's pending executions: as of the fold at ``since``, up to seq ``upto``.

    ``merged`` holds the merged states for the next merge; the columns answers read
    are kept converted (``_columns``), each extension converting only its own rows.
    """

    since: int
    upto: int
    merged: pa.Table
    folded_columns: Columns
    merged_columns: Columns

    def rows(self, workflow_id: str, lo: datetime, hi: datetime) -> Columns:
        """The changed executions of the workflow started in [lo, hi], both versions:
        columns (new, execution_id, slot, t, channel, error_type, status, duration_ms,
        num, customer_id, nodes); ``new`` false for a folded row (where it is counted
        now), true for its merged one (where it is to be counted). A missing
        duration or customer number is -1, other missing values None."""
        lo_us, hi_us = epoch_us(lo), epoch_us(hi)
        parts = []
        for new, columns in ((False, self.folded_columns), (True, self.merged_columns)):
            t = columns["t"]
            keep = (columns["workflow_id"] == workflow_id) & (t >= lo_us) & (t <= hi_us)
            part = {name: values[keep] for name, values in columns.items() if name != "workflow_id"}
            part["new"] = np.full(int(keep.sum()), new)
            parts.append(part)
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _columns(table: pa.Table) -> Columns:
    """The columns of rows of ``_ROW`` that ``Merged.rows`` reads, as NumPy arrays:
    ``t`` (the start, µs since the epoch; a NULL start never matches) and ``slot``
    for ``started_at``, -1 for a missing number, None for other missing values."""
    t = pc.fill_null(pc.cast(table["started_at"], pa.int64()), _NO_START).to_numpy()
    out: Columns = {"t": t, "slot": t // SLOT_US}
    for name in ("status", "duration_ms", "num"):
        out[name] = pc.fill_null(pc.cast(table[name], pa.int64()), -1).to_numpy()
    for name in ("workflow_id", "execution_id", "channel", "error_type", "customer_id", "nodes"):
        out[name] = _objects(table[name])
    return out


def _take(columns: Columns, keep: np.ndarray) -> Columns:
    return {name: values[keep] for name, values in columns.items()}


def _concat(a: Columns, b: Columns) -> Columns:
    return {name: np.concatenate([a[name], b[name]]) for name in a}


#: The start of an execution with none (no start and no terminal time): outside any period.
_NO_START = np.iinfo(np.int64).min


def _objects(column: pa.ChunkedArray) -> np.ndarray:
    """A column as a NumPy object array, None where NULL."""
    if pa.types.is_nested(column.type) or column.null_count:
        values = column.to_pylist()
        return np.fromiter(values, dtype=object, count=len(values))
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=object)


class PendingMerge:
    def __init__(self, store: DuckDBEventStore) -> None:
        self._store = store
        #: One lock per tenant: answers of a tenant extend its merge one at a time.
        self._locks: dict[str, threading.Lock] = {}
        self._merged: dict[str, Merged] = {}

    def merged(self, tenant: str, since: int, upto: int) -> Merged:
        """The tenant's pending executions as of the fold at watermark ``since``, with
        every event up to seq ``upto`` at least (and later ones another answer merged
        already: all of them committed)."""
        with self._locks.setdefault(tenant, threading.Lock()):
            m = self._merged.get(tenant)
            if m is None or m.since != since:
                m = self._start(since)
                # Merges as of an earlier fold are of no more use, for any tenant.
                self._merged = {t: v for t, v in self._merged.items() if v.since == since}
            if m.upto < upto:
                m = self._extend(tenant, m, upto)
            self._merged[tenant] = m
            return m

    def _start(self, since: int) -> Merged:
        empty = self._store.query_arrow(
            f"SELECT false AS new, {_COLUMNS}, s, c, f FROM"
            " (SELECT *, customer_num AS num FROM executions LIMIT 0)"
        )
        columns = _columns(empty)
        return Merged(since, since, empty.drop_columns(["new"]), columns, columns)

    def _extend(self, tenant: str, m: Merged, upto: int) -> Merged:
        """``m`` with the events in (m.upto, upto] merged in."""
        store, params = self._store, {"tenant": tenant}
        feed = store.recent.between(tenant, m.upto, upto)
        states: str | None
        if feed is None:  # not all of them in memory: read them from the table
            since_last = f"tenant = $tenant AND seq > {int(m.upto)} AND seq <= {int(upto)}"
            delta = store.query_arrow(
                f"SELECT *, {folded_ids.HASH} AS h FROM ({xsql.event_states(since_last)})",
                params,
            )
            ids = delta.select(["tenant", "execution_id", "h"])
            tables, states = {"delta": delta.drop_columns(["h"])}, None
        else:
            ids = store.query_arrow(
                f"SELECT DISTINCT tenant, execution_id, {folded_ids.HASH} AS h FROM feed",
                None,
                {"feed": feed},
            )
            tables, states = {"feed": feed}, xsql.event_states("true", source="feed")
        if not ids.num_rows:
            return Merged(m.since, upto, m.merged, m.folded_columns, m.merged_columns)
        # The folded rows to look up: of executions new to this merge that have one.
        look_up = folded_ids.without(store.folded_ids.may_have_row(ids), m.merged["execution_id"])
        prev = m.merged.filter(pc.is_in(m.merged["execution_id"], ids["execution_id"]))
        if prev.num_rows:
            tables["prev"] = prev
        if look_up.num_rows:
            tables["look_up"] = look_up
        got = store.query_arrow(
            _extend_sql(prev="prev" in tables, look_up="look_up" in tables, states=states),
            params,
            tables,
        )
        new = got["new"]
        changed = got.filter(new).drop_columns(["new"])
        fresh = got.filter(pc.invert(new)).drop_columns(["new"])
        kept = pc.invert(pc.is_in(m.merged["execution_id"], changed["execution_id"])).to_numpy(
            zero_copy_only=False
        )
        return Merged(
            m.since,
            upto,
            pa.concat_tables([m.merged.filter(kept), changed]),
            _concat(m.folded_columns, _columns(fresh)),
            _concat(_take(m.merged_columns, kept), _columns(changed)),
        )
