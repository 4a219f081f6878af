"""The embedded event store: DuckDB in the data directory.

One process owns the DuckDB file. All writes go through one writer thread that
takes every batch waiting in its queue, appends them in one transaction and
commits once (group commit): an ``append`` future resolves only after DuckDB
has committed (and so fsynced its write-ahead log). Reads use their own
cursors, each with a time limit.

Layout: ``events`` holds every accepted event (append-only, ``seq`` increases
with each commit). ``executions`` holds one merged row per execution, kept
sorted by (tenant, workflow, start) for fast scans; events past the watermark
``exec_seq`` are folded into it in the background and merged on the fly by
queries until then (see ``executions_sql``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from kaie_analytics.errors import QueryTimeout, StoreUnavailable
from kaie_analytics.ingest.validate import COLUMN_INDEX, COLUMNS
from kaie_analytics.store import executions_sql as xsql
from kaie_analytics.store.dedupe import IdIndex, id_hash

log = logging.getLogger("kaie_analytics.store")

DEDUPE_WINDOW = timedelta(days=8)
RESORT_RATIO = 0.25

_STRING_COLUMNS = {
    "event_id", "type", "workflow_id", "execution_id", "customer_id", "journey_id",
    "node_id", "channel", "workflow_name", "error_type", "error_message", "node_type",
    "message_id", "comment", "segment", "traits", "journey_type", "step_name", "reason",
    "properties", "raw",
}  # fmt: skip
_ARROW_TYPES: dict[str, pa.DataType] = {
    "ts": pa.timestamp("us"),
    "duration_ms": pa.int64(),
    "csat": pa.int8(),
    "nps": pa.int8(),
    "step": pa.int8(),
}
_SQL_TYPES = {"ts": "TIMESTAMP", "duration_ms": "BIGINT", "csat": "TINYINT", "nps": "TINYINT",
              "step": "TINYINT"}  # fmt: skip

EVENT_SCHEMA = pa.schema(
    [("seq", pa.int64()), ("tenant", pa.string()), ("id_hash", pa.int64())]
    + [(c, _ARROW_TYPES.get(c, pa.string())) for c in COLUMNS]
    + [("ingested_at", pa.timestamp("us"))]
)

_DDL = [
    "CREATE TABLE IF NOT EXISTS events (seq BIGINT NOT NULL, tenant VARCHAR NOT NULL,"
    " id_hash BIGINT NOT NULL, "
    + ", ".join(f"{c} {_SQL_TYPES.get(c, 'VARCHAR')}" for c in COLUMNS)
    + ", ingested_at TIMESTAMP NOT NULL)",
    xsql.EXECUTIONS_DDL,
    "CREATE TABLE IF NOT EXISTS workflows (tenant VARCHAR NOT NULL, workflow_id VARCHAR NOT NULL,"
    " name VARCHAR, name_ts TIMESTAMP, created_at TIMESTAMP NOT NULL)",
    "CREATE TABLE IF NOT EXISTS store_state (key VARCHAR PRIMARY KEY, value BIGINT NOT NULL)",
    "INSERT OR IGNORE INTO store_state VALUES ('exec_seq', 0), ('exec_sorted_rows', 0)",
]


@dataclass
class AppendResult:
    accepted: int
    duplicates: int
    duplicate_indexes: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Workflow:
    workflow_id: str
    name: str | None
    name_ts: datetime | None
    created_at: datetime


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class _Stop:
    pass


class DuckDBEventStore:
    """Events, executions and workflows of every tenant, in one DuckDB file."""

    def __init__(
        self,
        path: Path,
        *,
        memory_limit: str = "2GB",
        threads: int = 2,
        query_timeout_s: float = 10.0,
        compact_after_events: int = 200_000,
        compact_idle_s: float = 2.0,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.query_timeout_s = query_timeout_s
        self.compact_after_events = compact_after_events
        self.compact_idle_s = compact_idle_s
        self._con = duckdb.connect(
            str(path), config={"memory_limit": memory_limit, "threads": threads}
        )
        for stmt in _DDL:
            self._con.execute(stmt)
        self._seq = self._scalar("SELECT coalesce(max(seq), 0) FROM events")
        self._exec_seq = self._scalar("SELECT value FROM store_state WHERE key = 'exec_seq'")
        since = _utcnow() - DEDUPE_WINDOW
        hashes = self._con.execute(
            "SELECT id_hash FROM events WHERE ingested_at >= ?", [since]
        ).fetchnumpy()["id_hash"]
        self._ids = IdIndex(hashes)
        self._workflows: dict[str, dict[str, Workflow]] = defaultdict(dict)
        for tenant, wf, name, name_ts, created in self._con.execute(
            "SELECT tenant, workflow_id, name, name_ts, created_at FROM workflows"
        ).fetchall():
            self._workflows[tenant][wf] = Workflow(wf, name, name_ts, created)
        self._pending: dict[str, int] = defaultdict(int)
        for tenant, n in self._con.execute(
            f"SELECT tenant, count(*) FROM events WHERE seq > ? AND type IN {xsql.EXEC_TYPES}"
            " GROUP BY tenant",
            [self._exec_seq],
        ).fetchall():
            self._pending[tenant] = n
        self._pending_total = sum(self._pending.values())
        #: Bumped on every commit that touches a tenant; caches key on it.
        self.versions: dict[str, int] = defaultdict(int)
        self._listeners: list[Callable[[dict[str, int]], None]] = []
        self._queue: queue.Queue[Any] = queue.Queue()
        self._closed = False
        self._local = threading.local()
        self._writer = threading.Thread(target=self._write_loop, name="kaie-writer", daemon=True)
        self._writer.start()

    # ------------------------------------------------------------------ utils

    def _scalar(self, sql: str, params: Sequence[Any] | None = None) -> int:
        row = self._con.execute(sql, params or []).fetchone()
        return int(row[0]) if row else 0

    def on_commit(self, listener: Callable[[dict[str, int]], None]) -> None:
        """Call ``listener({tenant: events accepted})`` after each commit (writer thread)."""
        self._listeners.append(listener)

    def has_pending(self, tenant: str) -> bool:
        return self._pending.get(tenant, 0) > 0

    # ----------------------------------------------------------------- writes

    def append(self, tenant: str, rows: list[list[Any]]) -> concurrent.futures.Future[AppendResult]:
        """Queue validated rows (``COLUMNS`` order) for the next group commit."""
        fut: concurrent.futures.Future[AppendResult] = concurrent.futures.Future()
        if self._closed:
            raise StoreUnavailable("the store is shutting down")
        self._queue.put(("append", tenant, rows, fut))
        return fut

    def put_workflow(
        self, tenant: str, workflow_id: str, name: str
    ) -> concurrent.futures.Future[Workflow]:
        fut: concurrent.futures.Future[Workflow] = concurrent.futures.Future()
        if self._closed:
            raise StoreUnavailable("the store is shutting down")
        self._queue.put(("workflow", tenant, (workflow_id, name), fut))
        return fut

    def compact_now(self) -> concurrent.futures.Future[None]:
        """Fold pending execution events into ``executions`` (and re-sort if needed)."""
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._queue.put(("compact", "", None, fut))
        return fut

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(_Stop())
        self._writer.join()
        self._con.close()

    def _write_loop(self) -> None:
        last_write = time.monotonic()
        while True:
            timeout = self.compact_idle_s if self._pending_total else None
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                self._safe_compact()
                continue
            batch = [item]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(isinstance(b, _Stop) for b in batch)
            work = [b for b in batch if not isinstance(b, _Stop)]
            appends = [b for b in work if b[0] == "append"]
            if appends:
                self._commit_appends(appends)
                last_write = time.monotonic()
            for kind, tenant, payload, fut in work:
                if kind == "workflow":
                    try:
                        fut.set_result(self._set_workflow_name(tenant, *payload))
                    except Exception as exc:
                        fut.set_exception(exc)
                elif kind == "compact":
                    try:
                        self._compact()
                        fut.set_result(None)
                    except Exception as exc:
                        fut.set_exception(exc)
            if stop:
                self._fail_queued()
                return
            if self._pending_total >= self.compact_after_events or (
                self._pending_total and time.monotonic() - last_write > self.compact_idle_s
            ):
                self._safe_compact()

    def _fail_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if not isinstance(item, _Stop):
                item[3].set_exception(StoreUnavailable("the store is shutting down"))

    def _safe_compact(self) -> None:
        try:
            self._compact()
        except Exception:
            log.exception("compaction failed; will retry")

    def _commit_appends(self, items: list[Any]) -> None:
        """Dedupe, append and commit every queued batch in one transaction."""
        now = _utcnow()
        seen: set[tuple[str, str]] = set()
        results: list[AppendResult] = []
        keep_rows: list[tuple[str, int, list[Any]]] = []
        # First pass: hash candidates against the id index.
        hashed = [[id_hash(tenant, row[0]) for row in rows] for _, tenant, rows, _ in items]
        maybe = [self._ids.candidates(h) for h in hashed]
        # Confirm candidates against stored ids (a 64-bit hash is not proof).
        confirm: dict[str, list[int]] = defaultdict(list)
        for (_, tenant, _, _), hs, ms in zip(items, hashed, maybe, strict=True):
            confirm[tenant].extend(h for h, m in zip(hs, ms, strict=True) if m)
        stored: set[tuple[str, str]] = set()
        for tenant, hs in confirm.items():
            if hs:
                found = self._con.execute(
                    "SELECT event_id FROM events WHERE tenant = ? AND id_hash IN"
                    " (SELECT unnest(?::BIGINT[]))",
                    [tenant, hs],
                ).fetchall()
                stored.update((tenant, r[0]) for r in found)
        for (_, tenant, rows, _), hs in zip(items, hashed, strict=True):
            res = AppendResult(0, 0)
            for i, (row, h) in enumerate(zip(rows, hs, strict=True)):
                key = (tenant, row[0])
                if key in seen or key in stored:
                    res.duplicates += 1
                    res.duplicate_indexes.append(i)
                    continue
                seen.add(key)
                keep_rows.append((tenant, h, row))
                res.accepted += 1
            results.append(res)

        touched: dict[str, int] = defaultdict(int)
        exec_events: dict[str, int] = defaultdict(int)
        try:
            if keep_rows:
                table = self._arrow_table(keep_rows, now)
                self._con.execute("BEGIN")
                self._con.register("incoming", table)
                self._con.execute("INSERT INTO events SELECT * FROM incoming")
                self._con.unregister("incoming")
                wf_changes = self._workflow_changes(keep_rows, now)
                for stmt, params in wf_changes:
                    self._con.execute(stmt, params)
                self._con.execute("COMMIT")
                self._seq += len(keep_rows)
                self._apply_workflow_changes(wf_changes)
                self._ids.add([h for _, h, _ in keep_rows])
                type_i = COLUMN_INDEX["type"]
                for tenant, _, row in keep_rows:
                    touched[tenant] += 1
                    if row[type_i].startswith("execution."):
                        exec_events[tenant] += 1
                for tenant, n in exec_events.items():
                    self._pending[tenant] += n
                    self._pending_total += n
                for tenant in touched:
                    self.versions[tenant] += 1
        except Exception as exc:
            with contextlib.suppress(duckdb.Error):
                self._con.execute("ROLLBACK")
            log.exception("group commit failed")
            for *_, fut in items:
                fut.set_exception(StoreUnavailable(f"commit failed: {exc}"))
            return
        for listener in self._listeners:
            try:
                listener(dict(touched))
            except Exception:
                log.exception("commit listener failed")
        for (*_, fut), res in zip(items, results, strict=True):
            fut.set_result(res)

    def _arrow_table(self, rows: list[tuple[str, int, list[Any]]], now: datetime) -> pa.Table:
        n = len(rows)
        columns: list[Any] = [
            pa.array(range(self._seq + 1, self._seq + n + 1), pa.int64()),
            pa.array([r[0] for r in rows], pa.string()),
            pa.array([r[1] for r in rows], pa.int64()),
        ]
        for i, name in enumerate(COLUMNS):
            columns.append(pa.array([r[2][i] for r in rows], _ARROW_TYPES.get(name, pa.string())))
        columns.append(pa.array([now] * n, pa.timestamp("us")))
        return pa.Table.from_arrays(columns, schema=EVENT_SCHEMA)

    # -------------------------------------------------------------- workflows

    def _workflow_changes(
        self, rows: list[tuple[str, int, list[Any]]], now: datetime
    ) -> list[tuple[str, list[Any]]]:
        wf_i, name_i, ts_i = (
            COLUMN_INDEX["workflow_id"],
            COLUMN_INDEX["workflow_name"],
            COLUMN_INDEX["ts"],
        )
        latest: dict[tuple[str, str], tuple[str | None, int | None]] = {}
        for tenant, _, row in rows:
            wf = row[wf_i]
            if wf is None:
                continue
            key = (tenant, wf)
            name = row[name_i]
            cur = latest.get(key)
            if name is not None and (cur is None or cur[1] is None or row[ts_i] >= cur[1]):
                latest[key] = (name, row[ts_i])
            elif cur is None:
                latest[key] = (None, None)
        changes = []
        for (tenant, wf), (name, ts_us) in latest.items():
            known = self._workflows[tenant].get(wf)
            ts = datetime(1970, 1, 1) + timedelta(microseconds=ts_us) if ts_us is not None else None
            if known is None:
                changes.append(
                    ("INSERT INTO workflows VALUES (?, ?, ?, ?, ?)", [tenant, wf, name, ts, now])
                )
            elif name is not None and (known.name_ts is None or ts >= known.name_ts):  # type: ignore[operator]
                changes.append(
                    (
                        "UPDATE workflows SET name = ?, name_ts = ? WHERE tenant = ? AND workflow_id = ?",
                        [name, ts, tenant, wf],
                    )
                )
        return changes

    def _apply_workflow_changes(self, changes: list[tuple[str, list[Any]]]) -> None:
        for stmt, params in changes:
            if stmt.startswith("INSERT"):
                tenant, wf, name, ts, created = params
                self._workflows[tenant][wf] = Workflow(wf, name, ts, created)
            else:
                name, ts, tenant, wf = params
                old = self._workflows[tenant][wf]
                self._workflows[tenant][wf] = Workflow(wf, name, ts, old.created_at)

    def _set_workflow_name(self, tenant: str, workflow_id: str, name: str) -> Workflow:
        now = _utcnow()
        known = self._workflows[tenant].get(workflow_id)
        if known is None:
            change = (
                "INSERT INTO workflows VALUES (?, ?, ?, ?, ?)",
                [tenant, workflow_id, name, now, now],
            )
        else:
            change = (
                "UPDATE workflows SET name = ?, name_ts = ? WHERE tenant = ? AND workflow_id = ?",
                [name, now, tenant, workflow_id],
            )
        self._con.execute(*change)
        self._apply_workflow_changes([change])
        self.versions[tenant] += 1
        return self._workflows[tenant][workflow_id]

    def workflows(self, tenant: str) -> list[Workflow]:
        return sorted(self._workflows.get(tenant, {}).values(), key=lambda w: w.workflow_id)

    def workflow(self, tenant: str, workflow_id: str) -> Workflow | None:
        return self._workflows.get(tenant, {}).get(workflow_id)

    # ------------------------------------------------------------- compaction

    def _compact(self) -> None:
        """Fold execution events past the watermark into ``executions``."""
        if not self._pending_total:
            return
        new_seq = self._seq
        con = self._con
        con.execute("BEGIN")
        try:
            where = f"seq > {int(self._exec_seq)} AND seq <= {int(new_seq)}"
            con.execute(f"CREATE TEMP TABLE delta AS {xsql.event_states(where)}")
            con.execute(
                "CREATE TEMP TABLE merged AS "
                + xsql.merge_and_finalise(
                    "SELECT tenant, execution_id, s, c, f FROM executions"
                    " WHERE (tenant, execution_id) IN (SELECT DISTINCT tenant, execution_id FROM delta)"
                    " UNION ALL SELECT * FROM delta"
                )
            )
            con.execute(
                "DELETE FROM executions WHERE (tenant, execution_id) IN"
                " (SELECT tenant, execution_id FROM merged)"
            )
            con.execute(
                "INSERT INTO executions SELECT * FROM merged ORDER BY tenant, workflow_id, started_at"
            )
            con.execute("UPDATE store_state SET value = ? WHERE key = 'exec_seq'", [new_seq])
            con.execute("DROP TABLE delta")
            con.execute("DROP TABLE merged")
            total = self._scalar("SELECT count(*) FROM executions")
            sorted_rows = self._scalar(
                "SELECT value FROM store_state WHERE key = 'exec_sorted_rows'"
            )
            if total - sorted_rows > RESORT_RATIO * max(sorted_rows, 1) and total > 50_000:
                # Most rows arrived since the last sort: rewrite the table in scan order.
                con.execute(
                    "CREATE TEMP TABLE resorted AS SELECT * FROM executions"
                    " ORDER BY tenant, workflow_id, started_at"
                )
                con.execute("DELETE FROM executions")
                con.execute("INSERT INTO executions SELECT * FROM resorted")
                con.execute("DROP TABLE resorted")
                con.execute(
                    "UPDATE store_state SET value = ? WHERE key = 'exec_sorted_rows'", [total]
                )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        self._exec_seq = new_seq
        self._pending.clear()
        self._pending_total = 0

    # ------------------------------------------------------------------ reads

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        cur: duckdb.DuckDBPyConnection | None = getattr(self._local, "cur", None)
        if cur is None:
            cur = self._con.cursor()
            self._local.cur = cur
        return cur

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Run a read query with the store's time limit (blocking; call off the event loop)."""
        cur = self._cursor()
        timer = threading.Timer(self.query_timeout_s, cur.interrupt)
        timer.start()
        try:
            return cur.execute(sql, params or {}).fetchall()
        except duckdb.InterruptException:
            raise QueryTimeout(f"query exceeded {self.query_timeout_s:g} s") from None
        finally:
            timer.cancel()

    def executions_sql(self, tenant: str) -> str:
        """SQL for the current executions of ``tenant`` (binds ``$tenant``)."""
        return xsql.tenant_executions(self.has_pending(tenant))

    def count_events(self, tenant: str | None = None) -> int:
        sql = "SELECT count(*) FROM events WHERE $tenant IS NULL OR tenant = $tenant"
        return int(self.query(sql, {"tenant": tenant})[0][0])

    def ping(self) -> bool:
        try:
            self._cursor().execute("SELECT 1").fetchall()
            return True
        except duckdb.Error:
            return False
