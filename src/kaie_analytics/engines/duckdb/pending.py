"""The executions pending events change, merged once per tenant and extended as events come.

Until a fold, a workflow answer must count each execution that pending
events (committed, not yet folded) change as merged with them, and not as
its folded row. Merging every pending event of the tenant in each answer
cost in proportion to the events waiting, so while a tenant streamed, every
answer paid for the whole backlog. Here the merge is kept per tenant, as of
one fold (its watermark) and up to one committed seq: the next answer merges
only the events committed since, into the executions they change, in one
statement. A fold moves the watermark and the merge starts afresh.

Kept as two Arrow tables of the columns answers read: ``folded``, the
folded rows of the changed executions that had one (where each is counted
now), and ``merged``, every changed execution merged with its events (where
it is to be counted), with its customer's number when the customer has one
and its merged state (``s``, ``c``, ``f``, ``nodes``) for the next merge.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kaie_analytics.engines.duckdb import executions_sql as xsql
from kaie_analytics.engines.duckdb.times import SLOT_US

if TYPE_CHECKING:
    from datetime import datetime

    from kaie_analytics.engines.duckdb.store import Columns, DuckDBEventStore

#: The columns of a folded or merged execution that answers read, then its state.
_ROW = ("execution_id", "workflow_id", "started_at", "channel", "error_type", "status",
        "duration_ms", "num", "customer_id", "nodes")  # fmt: skip
_COLUMNS = ", ".join(_ROW)


def _extend_sql(since_last: str) -> str:
    """One statement: the folded rows newly changed (``new`` false) and the merged rows of
    every execution the events of ``since_last`` change (``new`` true)."""
    merged = xsql.merge_and_finalise(
        "SELECT $tenant AS tenant, execution_id, s, c, f, nodes AS n FROM prev"
        " WHERE execution_id IN (SELECT execution_id FROM delta)"
        " UNION ALL SELECT $tenant, execution_id, s, c, f, nodes FROM fresh"
        " UNION ALL SELECT * FROM delta"
    )
    return f"""
    WITH delta AS ({xsql.event_states(since_last)}),
    fresh AS (
        SELECT execution_id, workflow_id, started_at, channel, error_type, status, duration_ms,
            customer_num AS num, customer_id, nodes, s, c, f
        FROM executions
        WHERE tenant = $tenant AND execution_id IN (SELECT execution_id FROM delta)
          AND execution_id NOT IN (SELECT execution_id FROM prev)
    ),
    merged AS ({merged})
    SELECT false AS new, {_COLUMNS}, s, c, f FROM fresh
    UNION ALL
    SELECT true, m.execution_id, m.workflow_id, m.started_at, m.channel, m.error_type, m.status,
        m.duration_ms, k.num, m.customer_id, m.nodes, m.s, m.c, m.f
    FROM merged m LEFT JOIN (
        SELECT customer_id, num FROM customer_numbers
        WHERE tenant = $tenant AND customer_id IN (SELECT customer_id FROM merged)
    ) k USING (customer_id)
    """


@dataclass(frozen=True)
class Merged:
    """One tenant's pending executions: as of the fold at ``since``, up to seq ``upto``."""

    since: int
    upto: int
    folded: pa.Table
    merged: pa.Table

    def rows(self, workflow_id: str, lo: datetime, hi: datetime) -> Columns:
        """The changed executions of the workflow started in [lo, hi], both versions:
        columns (new, execution_id, slot, t, channel, error_type, status, duration_ms,
        num, customer_id, nodes); ``new`` false for a folded row (where it is counted
        now), true for its merged one (where it is to be counted). A missing
        duration or customer number is -1, other missing values None."""
        parts = []
        bounds = (pa.scalar(lo, pa.timestamp("us")), pa.scalar(hi, pa.timestamp("us")))
        for new, table in ((False, self.folded), (True, self.merged)):
            if table.num_rows:
                keep = pc.and_(
                    pc.equal(table["workflow_id"], workflow_id),
                    pc.and_(
                        pc.greater_equal(table["started_at"], bounds[0]),
                        pc.less_equal(table["started_at"], bounds[1]),
                    ),
                )
                parts.append((new, table.filter(pc.fill_null(keep, False))))
        out: dict[str, list[np.ndarray]] = defaultdict(list)
        for new, table in parts:
            t = pc.cast(table["started_at"], pa.int64()).to_numpy()
            out["new"].append(np.full(len(t), new))
            out["t"].append(t)
            out["slot"].append(t // SLOT_US)
            for name in ("status", "duration_ms", "num"):
                values = pc.cast(table[name], pa.int64())
                out[name].append(pc.fill_null(values, -1).to_numpy())
            for name in ("execution_id", "channel", "error_type", "customer_id", "nodes"):
                out[name].append(_objects(table[name]))
        names = ("new", "slot", "t", *(n for n in _ROW if n not in ("started_at", "workflow_id")))
        return {n: np.concatenate(out[n]) if out[n] else np.empty(0, object) for n in names}


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
        return Merged(since, since, empty.drop_columns(["new"]), empty.drop_columns(["new"]))

    def _extend(self, tenant: str, m: Merged, upto: int) -> Merged:
        """``m`` with the events in (m.upto, upto] merged in."""
        since_last = f"tenant = $tenant AND seq > {int(m.upto)} AND seq <= {int(upto)}"
        got = self._store.query_arrow(
            _extend_sql(since_last), {"tenant": tenant}, {"prev": m.merged}
        )
        if not got.num_rows:
            return Merged(m.since, upto, m.folded, m.merged)
        new = got["new"]
        changed = got.filter(new).drop_columns(["new"])
        unchanged = m.merged.filter(
            pc.invert(pc.is_in(m.merged["execution_id"], changed["execution_id"]))
        )
        return Merged(
            m.since,
            upto,
            pa.concat_tables([m.folded, got.filter(pc.invert(new)).drop_columns(["new"])]),
            pa.concat_tables([unchanged, changed]),
        )
