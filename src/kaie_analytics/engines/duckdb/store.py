"""The embedded event store: DuckDB in the data directory.

One process owns the DuckDB file. This class opens it (``schema``), and wires
the group-commit writer (``writer``: every write of events), the folder
(``folds``: new events into the derived tables) and the progress both share
(``progress``); reads use their own cursors, each with a time limit. The
facts the analytics core asks for are read by ``engine`` and its read
modules through the methods here.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import re
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, overload

import duckdb
import numpy as np
import pyarrow as pa

from kaie_analytics.analytics.facts import AppendResult, TenantEvents, Workflow
from kaie_analytics.engines.dedupe import DEDUPE_WINDOW, IdIndex
from kaie_analytics.engines.duckdb import executions_sql as xsql
from kaie_analytics.engines.duckdb import rollups
from kaie_analytics.engines.duckdb.derived import Derived, current_rows
from kaie_analytics.engines.duckdb.folded_ids import FoldedExecutions
from kaie_analytics.engines.duckdb.folds import (
    FOLD_PIECE_EVENTS,
    Folder,
    build_rollups,
    log_failure,
)
from kaie_analytics.engines.duckdb.pending import PendingMerge
from kaie_analytics.engines.duckdb.progress import Progress
from kaie_analytics.engines.duckdb.recent import RecentFeed
from kaie_analytics.engines.duckdb.rollup_cache import RollupCache
from kaie_analytics.engines.duckdb.schema import DDL, utcnow
from kaie_analytics.engines.duckdb.workflow_names import WorkflowNames
from kaie_analytics.engines.duckdb.writer import Writer
from kaie_analytics.errors import QueryTimeout, StoreInUse, StoreUnavailable
from kaie_analytics.ingest import columns
from kaie_analytics.ingest.columns import PreparedBatch
from kaie_analytics.ingest.validate import ValidEvent

#: A workflow answer that finds more execution events than this waiting for its
#: tenant asks for a fold (see ``fold_if_behind``).
FOLD_ON_READ = 50_000
CHECKPOINT_THRESHOLD = "256MB"
_PARAM = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")

#: A result as NumPy columns, by name.
Columns = dict[str, np.ndarray]


def _raise_if_locked(path: Path, exc: duckdb.IOException) -> None:
    """``StoreInUse`` (with the holder's PID, which DuckDB names) for a lock conflict."""
    text = str(exc)
    if "lock" in text.lower():
        pid = re.search(r"PID (\d+)", text)
        raise StoreInUse(
            f"{path} is open in another process", int(pid.group(1)) if pid else None
        ) from exc


def _quiet(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """No progress bar on the server's terminal for long statements (folds, upgrades)."""
    con.execute("SET enable_progress_bar = false")
    return con


class DuckDBEventStore:
    """Events, executions and workflows of every tenant, in one DuckDB file."""

    def __init__(
        self,
        path: Path,
        *,
        memory_limit: str = "2GB",
        threads: int = 2,
        query_timeout_s: float = 10.0,
        compact_after_events: int = 500_000,
        compact_idle_s: float = 2.0,
        chunk_rows: int = 1_000_000,
        rollup_cache_bytes: int = 256 << 20,
        fold_piece_events: int = FOLD_PIECE_EVENTS,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.query_timeout_s = query_timeout_s
        try:
            self._con = duckdb.connect(
                str(path),
                config={
                    "memory_limit": memory_limit,
                    "threads": threads,
                    # Checkpoint in idle time rather than inside a busy stream of commits.
                    "checkpoint_threshold": CHECKPOINT_THRESHOLD,
                },
            )
        except duckdb.IOException as exc:
            _raise_if_locked(path, exc)
            raise
        _quiet(self._con)
        for stmt in DDL:
            self._con.execute(stmt)
        built = self._con.execute(
            "SELECT value FROM store_state WHERE key = ?", [rollups.BUILT]
        ).fetchall()
        if not built or built[0][0] < rollups.LAYOUT:
            build_rollups(self._con)
        self.progress = Progress(self._con)
        hashes = self._con.execute(
            "SELECT id_hash FROM events WHERE ingested_at >= ?", [utcnow() - DEDUPE_WINDOW]
        ).fetchnumpy()["id_hash"]
        self._names = WorkflowNames(self._con)
        self.rollup_cache = RollupCache(self, rollup_cache_bytes)
        self.pending = PendingMerge(self)
        #: The feed events of the latest commits, and which executions have a row.
        self.recent = RecentFeed(self.progress.seq)
        self.folded_ids = FoldedExecutions(self._con)
        self._closed = False
        self._local = threading.local()
        #: Runs the independent statements of one answer side by side (``query_all``).
        self._readers = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="kaie-read")
        # Folds run beside the writer, on their own connection and transactions:
        # a fold never delays an acknowledgement.
        self._fold_con = _quiet(self._con.cursor())
        self.folder = Folder(
            self._fold_con,
            self.progress,
            self.rollup_cache,
            compact_after_events=compact_after_events,
            compact_idle_s=compact_idle_s,
            chunk_rows=chunk_rows,
            folded=self.folded_ids,
            fold_piece_events=fold_piece_events,
        )
        self._writer = Writer(
            self._con, self.progress, IdIndex(hashes), self._names, self.recent, self.folder.wake
        )

    @staticmethod
    def ensure_free(path: Path) -> None:
        """Raise ``StoreInUse`` if another process holds the file (before a server starts)."""
        if not path.exists():
            return
        try:
            duckdb.connect(str(path)).close()
        except duckdb.IOException as exc:
            _raise_if_locked(path, exc)
            raise

    # ----------------------------------------------------------------- writes

    #: Typed Arrow columns and id hashes of a batch (any thread or process).
    prepare = staticmethod(columns.prepare)

    def append(
        self, tenant: str, rows: list[ValidEvent]
    ) -> concurrent.futures.Future[AppendResult]:
        """Queue validated events for the next group commit."""
        return self.append_prepared(tenant, self.prepare(tenant, rows))

    def append_prepared(
        self, tenant: str, batch: PreparedBatch
    ) -> concurrent.futures.Future[AppendResult]:
        """Queue a prepared batch for the next group commit."""
        if self._closed:
            raise StoreUnavailable("the store is shutting down")
        return self._writer.append(tenant, batch)

    def put_workflow(
        self, tenant: str, workflow_id: str, name: str
    ) -> concurrent.futures.Future[Workflow]:
        if self._closed:
            raise StoreUnavailable("the store is shutting down")
        return self._writer.put_workflow(tenant, workflow_id, name)

    def restore_workflow(self, tenant: str, workflow: Workflow) -> None:
        self._writer.restore_workflow(tenant, workflow).result()

    def workflows(self, tenant: str) -> list[Workflow]:
        return self._names.all(tenant)

    def workflow(self, tenant: str, workflow_id: str) -> Workflow | None:
        return self._names.get(tenant, workflow_id)

    def compact_now(self, *, move_events: bool = False) -> concurrent.futures.Future[None]:
        """Fold every event committed so far into the derived tables.

        With ``move_events``, also move every recent event into a sorted chunk.
        """
        return self.folder.fold_now(move_events=move_events)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._writer.stop()
        self.folder.stop()
        self._readers.shutdown(wait=True)
        self._fold_con.close()
        self._con.close()

    # ------------------------------------------------------------- progress

    @property
    def rollup_gen(self) -> int:
        """The fold generation (``rollup_cache``): odd while a fold commits."""
        return self.progress.rollup_gen

    def has_pending(self, tenant: str, table: str = "executions") -> bool:
        """Whether events of ``tenant`` wait to be folded into ``table``."""
        return self.progress.has_pending(tenant, table)

    def fold_if_behind(self, tenant: str) -> None:
        """Ask for a fold soon if ``tenant`` has many execution events waiting.

        A query merges the events waiting for its tenant on the fly, at a cost
        in proportion to them; a reader that finds more than ``FOLD_ON_READ``
        has them folded rather than wait for ``compact_after_events``.
        """
        waiting = self.progress.pending["executions"].get(tenant, 0)
        if waiting > FOLD_ON_READ and not self.folder.asked:
            self.folder.asked = True
            self.compact_now().add_done_callback(log_failure)

    # ------------------------------------------------------------------ reads

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        cur: duckdb.DuckDBPyConnection | None = getattr(self._local, "cur", None)
        if cur is None:
            cur = _quiet(self._con.cursor())
            self._local.cur = cur
        return cur

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Run this thread's queries inside the block on one snapshot of the data."""
        cur = self._cursor()
        cur.execute("BEGIN TRANSACTION")
        try:
            yield
        finally:
            cur.execute("ROLLBACK")

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Run a read query with the store's time limit (blocking; call off the event loop)."""
        rows: list[tuple[Any, ...]] = self._run(sql, params, columns=False)
        return rows

    def query_arrow(
        self,
        sql: str,
        params: dict[str, Any] | None = None,
        tables: dict[str, pa.Table] | None = None,
    ) -> pa.Table:
        """``query`` as an Arrow table; ``tables`` are Arrow tables the SQL reads by name."""
        cur = self._cursor()
        for name, table in (tables or {}).items():
            cur.register(name, table)
        try:
            result: pa.Table = self._run(sql, params, columns="arrow")
            return result
        finally:
            for name in tables or {}:
                cur.unregister(name)

    def query_columns(self, sql: str, params: dict[str, Any] | None = None) -> Columns:
        """``query``, its result as NumPy columns (masked where a value is NULL)."""
        columns: Columns = self._run(sql, params, columns=True)
        return columns

    def _run(self, sql: str, params: dict[str, Any] | None, *, columns: bool | str) -> Any:
        cur = self._cursor()
        used = set(_PARAM.findall(sql))
        bound = {k: v for k, v in (params or {}).items() if k in used}
        timer = threading.Timer(self.query_timeout_s, cur.interrupt)
        timer.start()
        try:
            if columns == "arrow":
                return cur.sql(sql, params=bound).to_arrow_table()
            result = cur.execute(sql, bound)
            return result.fetchnumpy() if columns else result.fetchall()
        except duckdb.InterruptException:
            raise QueryTimeout(f"query exceeded {self.query_timeout_s:g} s") from None
        finally:
            timer.cancel()

    @overload
    def query_all(
        self, statements: Sequence[tuple[str, dict[str, Any]]], *, columns: Literal[False] = False
    ) -> list[list[tuple[Any, ...]]]: ...

    @overload
    def query_all(
        self, statements: Sequence[tuple[str, dict[str, Any]]], *, columns: Literal[True]
    ) -> list[Columns]: ...

    def query_all(
        self, statements: Sequence[tuple[str, dict[str, Any]]], *, columns: bool = False
    ) -> list[Any]:
        """Run independent read statements side by side, each on its own cursor.

        Each statement sees its own snapshot: use it only for statements that are
        each exact on their own (no statement relies on another's snapshot).
        """
        if len(statements) < 2:
            return [self._run(sql, params, columns=columns) for sql, params in statements]
        futures = [
            self._readers.submit(self._run, sql, params, columns=columns)
            for sql, params in statements
        ]
        return [f.result() for f in futures]

    def stream(self, sql: str, params: dict[str, Any], batch_rows: int) -> pa.RecordBatchReader:
        """Rows in Arrow batches, for exports that must not hold the result in memory."""
        cur = self._cursor()
        used = set(_PARAM.findall(sql))
        bound = {k: v for k, v in params.items() if k in used}
        return cur.sql(sql, params=bound).to_arrow_reader(batch_rows)

    def derived_sql(self, table: Derived, tenant: str) -> str:
        """SQL for the current rows of a derived table for ``tenant`` (binds ``$tenant``)."""
        return current_rows(table, self.has_pending(tenant, table.name))

    def executions_sql(self, tenant: str) -> str:
        """SQL for the current executions of ``tenant`` (binds ``$tenant``)."""
        return xsql.tenant_executions(self.has_pending(tenant))

    @property
    def committed_seq(self) -> int:
        """The seq of the last committed event: every event up to it is visible."""
        return self.progress.seq

    def watermark(self, table: str) -> int:
        """The seq up to which ``table`` (a derived table or rollup) has folded the events.

        Read it under one rollup generation (``rollup_cache.read_with_rollups``):
        a fold moves it.
        """
        return self.progress.watermarks[table]

    def count_events(
        self,
        tenant: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> int:
        """Events stored (of ``tenant``; with timestamps in [since, until], naive UTC)."""
        # Only the bounds given are written, so zone maps can skip by tenant and time.
        where = [
            cond
            for cond, value in (
                ("tenant = $tenant", tenant),
                ("ts >= $lo", since),
                ("ts <= $hi", until),
            )
            if value is not None
        ]
        sql = "SELECT count(*) FROM events" + (" WHERE " + " AND ".join(where) if where else "")
        return int(self.query(sql, {"tenant": tenant, "lo": since, "hi": until})[0][0])

    def event_stats(self) -> list[TenantEvents]:
        return [
            TenantEvents(*row)
            for row in self.query(
                "SELECT tenant, count(*), min(ts), max(ts) FROM events GROUP BY tenant ORDER BY 1"
            )
        ]

    def data_version(self, tenant: str) -> int:
        """A number that changes with every commit touching ``tenant`` (for caches)."""
        return self.progress.versions[tenant]

    def ping(self) -> bool:
        try:
            self._cursor().execute("SELECT 1").fetchall()
            return True
        except duckdb.Error:
            return False
