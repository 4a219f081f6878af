"""The executions pending events change, merged once per tenant and extended as events come.

Until a fold, a workflow answer must count each execution that pending
events (committed, not yet folded) change as merged with them, and not as
its folded row. Merging every pending event of the tenant in each answer
costs in proportion to the events waiting, so while a tenant streams every
answer paid for the whole backlog. Here the merge is kept per tenant, as of
one fold (its watermark) and up to one committed seq: the next answer merges
only the events committed since, into the states of the executions they
change. A fold moves the watermark and the merge starts afresh.

Kept as Arrow tables: ``states`` (tenant, execution_id, s, c, f, n), one merged
state per changed execution; ``folded``, the folded rows of those of them
that had one (where each is counted now); ``final``, the executions' columns
from their states, with the customer's number where the customer has one.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kaie_analytics.engines.duckdb import executions_sql as xsql
from kaie_analytics.engines.duckdb.times import SLOT_US

if TYPE_CHECKING:
    from datetime import datetime

    from kaie_analytics.engines.duckdb.store import Columns, DuckDBEventStore

#: The columns of a folded or merged execution that answers read.
_ROW = ("execution_id", "workflow_id", "started_at", "channel", "error_type", "status",
        "duration_ms", "num", "customer_id", "nodes")  # fmt: skip
_FRESH_FOLDED = """
    SELECT execution_id, workflow_id, started_at, channel, error_type, status, duration_ms,
        customer_num AS num, customer_id, nodes, s, c, f
    FROM executions
    WHERE tenant = $tenant AND execution_id IN (SELECT execution_id FROM delta)
      AND execution_id NOT IN (SELECT execution_id FROM prev_states)
"""
_STATES = f"""
    SELECT * FROM prev_states WHERE execution_id NOT IN (SELECT execution_id FROM delta)
    UNION ALL
    {
    xsql.merge_states(
        "SELECT * FROM prev_states WHERE execution_id IN (SELECT execution_id FROM delta)"
        " UNION ALL SELECT $tenant, execution_id, s, c, f, nodes FROM fresh"
        " UNION ALL SELECT * FROM delta"
    )
}
"""
#: The final rows of the states that ``delta`` changed, with customer numbers.
_FINAL = f"""
    SELECT m.execution_id, m.workflow_id, m.started_at, m.channel, m.error_type, m.status,
        m.duration_ms, k.num, m.customer_id, m.nodes
    FROM ({
    xsql.finalise("SELECT * FROM states WHERE execution_id IN (SELECT execution_id FROM delta)")
}) m
    LEFT JOIN (SELECT customer_id, num FROM customer_numbers WHERE tenant = $tenant
               AND customer_id IN (SELECT cust FROM delta_customers)) k
      ON k.customer_id = m.customer_id
"""


@dataclass(frozen=True)
class Merged:
    """One tenant's pending executions, merged: as of fold ``since``, up to seq ``upto``."""

    since: int
    upto: int
    states: pa.Table
    folded: pa.Table
    final: pa.Table

    def rows(self, workflow_id: str, lo: datetime, hi: datetime) -> Columns:
        """The changed executions of the workflow started in [lo, hi], both versions:
        columns (new, execution_id, slot, t, channel, error_type, status, duration_ms,
        num, customer_id, nodes); ``new`` false for a folded row (where it is counted
        now), true for its merged one (where it is to be counted)."""
        parts = []
        for new, table in ((False, self.folded), (True, self.final)):
            if not table.num_rows:
                continue
            keep = pc.and_(
                pc.equal(table["workflow_id"], workflow_id),
                pc.and_(
                    pc.greater_equal(table["started_at"], pa.scalar(lo, pa.timestamp("us"))),
                    pc.less_equal(table["started_at"], pa.scalar(hi, pa.timestamp("us"))),
                ),
            )
            parts.append((new, table.filter(pc.fill_null(keep, False))))
        out: dict[str, list[Any]] = {name: [] for name in ("new", "slot", "t", *_ROW)}
        for new, table in parts:
            n = table.num_rows
            t = pc.cast(table["started_at"], pa.int64()).to_numpy(zero_copy_only=False)
            out["new"].append(np.full(n, new))
            out["t"].append(t)
            out["slot"].append(t // SLOT_US)
            for name in _ROW:
                if name != "started_at":
                    values = table[name].to_pylist()  # None where NULL
                    out[name].append(np.fromiter(values, dtype=object, count=n))
        return {
            name: (np.concatenate(chunks) if chunks else np.empty(0, object))
            for name, chunks in out.items()
            if name != "started_at"
        }


class PendingMerge:
    def __init__(self, store: DuckDBEventStore) -> None:
        self._store = store
        self._locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._merged: dict[str, Merged] = {}

    def merged(self, tenant: str, since: int, upto: int) -> Merged:
        """The tenant's pending executions as of the fold at watermark ``since``, with
        every event up to seq ``upto`` at least (later ones when another answer has
        merged them already: all committed)."""
        with self._locks[tenant]:
            m = self._merged.get(tenant)
            if m is None or m.since != since:
                m = self._start(tenant, since)
                # The other tenants' merges of an earlier fold are of no more use.
                self._merged = {t: v for t, v in self._merged.items() if v.since == since}
            if m.upto < upto:
                m = self._extend(tenant, m, upto)
            self._merged[tenant] = m
            return m

    def _start(self, tenant: str, since: int) -> Merged:
        empty = self._store.query_arrow(f"SELECT * FROM ({xsql.event_states('false')}) LIMIT 0", {})
        folded = self._store.query_arrow(
            "SELECT execution_id, workflow_id, started_at, channel, error_type, status,"
            " duration_ms, customer_num AS num, customer_id, nodes FROM executions LIMIT 0",
            {},
        )
        final = folded
        return Merged(since, since, empty, folded, final)

    def _extend(self, tenant: str, m: Merged, upto: int) -> Merged:
        """``m`` with the events in (m.upto, upto] merged in."""
        store = self._store
        params = {"tenant": tenant}
        since_last = f"tenant = $tenant AND seq > {int(m.upto)} AND seq <= {int(upto)}"
        delta = store.query_arrow(f"SELECT * FROM ({xsql.event_states(since_last)})", params)
        if not delta.num_rows:
            return Merged(m.since, upto, m.states, m.folded, m.final)
        tables = {"delta": delta, "prev_states": m.states}
        fresh = store.query_arrow(_FRESH_FOLDED, params, tables)
        states = store.query_arrow(_STATES, params, tables | {"fresh": fresh})
        changed = store.query_arrow(
            _FINAL,
            params,
            {"delta": delta, "states": states, "delta_customers": _customers(states, delta)},
        )
        ids = pc.unique(delta["execution_id"])
        final = pa.concat_tables(
            [m.final.filter(pc.invert(pc.is_in(m.final["execution_id"], ids))), changed]
        )
        folded = pa.concat_tables([m.folded, fresh.select(list(m.folded.column_names))])
        return Merged(m.since, upto, states, folded, final)


def _customers(states: pa.Table, delta: pa.Table) -> pa.Table:
    """The customers the changed executions may have (from any of their states)."""
    changed = states.filter(pc.is_in(states["execution_id"], pc.unique(delta["execution_id"])))
    chunks = [
        chunk for name in ("s", "c", "f") for chunk in pc.struct_field(changed[name], "cust").chunks
    ]
    everyone = pa.chunked_array(chunks, pa.string())
    return pa.table({"cust": pc.unique(pc.drop_null(everyone))})
