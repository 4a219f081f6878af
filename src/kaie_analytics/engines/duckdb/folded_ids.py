"""Which executions already have a folded row, known without reading ``executions``.

Merging new execution events (a fold, or an answer merging what is not folded
yet) must find the folded rows of the executions they change. ``executions``
is ordered by workflow and start, not by id, so finding a few ids there scans
the tenant's whole table, although a stream's events mostly start executions
that have no row yet. This index keeps DuckDB's 64-bit ``hash(tenant,
execution_id)`` of every folded execution (8 bytes each, loaded when the store
opens): only ids whose hash it holds are looked up. A hash is added before the
fold that writes its row commits, so the index always holds at least the
executions of any snapshot a reader sees; a hash collision only costs a lookup.
"""

from __future__ import annotations

import threading

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kaie_analytics.engines.dedupe import IdIndex

#: SQL of the hash the index holds (on a table with tenant and execution_id).
HASH = "hash(tenant, execution_id)"


class FoldedExecutions:
    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        hashes = con.execute(f"SELECT {HASH} AS h FROM executions").fetchnumpy()["h"]
        self._index = IdIndex(np.asarray(hashes, np.uint64))
        #: The folder adds, readers ask: adding replaces what readers read.
        self._lock = threading.Lock()

    def may_have_row(self, ids: pa.Table) -> pa.Table:
        """The rows of ``ids`` (columns tenant, execution_id, h = ``HASH``) whose
        execution may have a folded row."""
        if not ids.num_rows:
            return ids
        with self._lock:
            found = self._index.candidates(ids["h"].to_numpy())
        return ids.filter(pa.array(found))

    def add(self, con: duckdb.DuckDBPyConnection, table: str) -> None:
        """Add the executions of ``table`` (about to be written to ``executions``)."""
        hashes = con.execute(f"SELECT {HASH} AS h FROM {table}").fetchnumpy()["h"]
        with self._lock:
            self._index.add(np.asarray(hashes, np.uint64))


def distinct_ids(con: duckdb.DuckDBPyConnection, table: str) -> pa.Table:
    """The distinct (tenant, execution_id) of ``table``, with their ``HASH`` as h."""
    got: pa.Table = con.sql(
        f"SELECT DISTINCT tenant, execution_id, {HASH} AS h FROM {table}"
    ).to_arrow_table()
    return got


def without(ids: pa.Table, execution_ids: pa.ChunkedArray | pa.Array) -> pa.Table:
    """The rows of ``ids`` whose execution_id is not among ``execution_ids``."""
    if not ids.num_rows or not len(execution_ids):
        return ids
    return ids.filter(pc.invert(pc.is_in(ids["execution_id"], execution_ids)))
