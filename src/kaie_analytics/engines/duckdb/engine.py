"""The DuckDB engine: the store (``store``) and the facts read from it.

``DuckDBEventStore`` owns the file, the group-commit writer and the folds;
this class adds the facts of ``analytics.facts.EventEngine``, each from its
own read module.
"""

from __future__ import annotations

import pyarrow as pa

from kaie_analytics.analytics.facts import (
    ActivityQuery,
    Cells,
    CustomerFacts,
    CustomerQuery,
    JourneyFacts,
    JourneyQuery,
    RealtimeFacts,
    RealtimeQuery,
    RowsQuery,
)
from kaie_analytics.engines.duckdb import (
    customer_reads,
    export_reads,
    realtime_reads,
    sql_reads,
    workflow_reads,
)
from kaie_analytics.engines.duckdb.store import DuckDBEventStore


class DuckDBEngine(DuckDBEventStore):
    """Events in one DuckDB file, and the facts the analytics core asks for."""

    def activity(self, q: ActivityQuery) -> list[Cells]:
        """Each ask from the rollups when they serve it, else in SQL."""
        fast = [i for i, ask in enumerate(q.asks) if workflow_reads.serves(q, ask)]
        out: list[Cells | None] = [None] * len(q.asks)
        if fast:
            cells = workflow_reads.activity(self, q, [q.asks[i] for i in fast])
            if cells is not None:
                for i, c in zip(fast, cells, strict=True):
                    out[i] = c
        rest = [i for i, c in enumerate(out) if c is None]
        if rest:
            for i, c in zip(
                rest, sql_reads.activity(self, q, [q.asks[i] for i in rest]), strict=True
            ):
                out[i] = c
        return [c if c is not None else {} for c in out]

    def customers(self, q: CustomerQuery) -> list[CustomerFacts]:
        return customer_reads.customers(self, q)

    def journey_types(self, tenant: str) -> list[str]:
        return customer_reads.journey_types(self, tenant)

    def journeys(self, q: JourneyQuery) -> JourneyFacts:
        return customer_reads.journeys(self, q)

    def realtime(self, q: RealtimeQuery) -> RealtimeFacts:
        return realtime_reads.realtime(self, q)

    def rows(self, q: RowsQuery, batch_rows: int) -> pa.RecordBatchReader:
        return export_reads.rows(self, q, batch_rows)

    def settle(self) -> None:
        """Fold everything committed so far into every derived table and rollup."""
        self.compact_now(move_events=True).result()
