"""The embedded event store: DuckDB in the data directory.

One process owns the DuckDB file. All writes go through one writer thread that
takes every batch waiting in its queue, appends them in one transaction and
commits once (group commit): an ``append`` future resolves only after DuckDB
has committed (and so fsynced its write-ahead log). Reads use their own
cursors, each with a time limit.

Layout: ``events`` is a view over every accepted event (``seq`` increases with
each commit): commits append to the small ``events_recent``; once it holds
``chunk_rows`` events they move to ``events_main`` as one chunk sorted by
(tenant, type, workflow, time), so zone maps let a tenant's query skip the
other tenants' rows. Derived tables serve the queries: ``executions`` (one
merged row per execution, with its node events, sorted by tenant, workflow and
start; see ``executions_sql``), journeys, sessions and customers (see
``derived``), bitmaps of active customers (see ``activity``) and per-slot
rollups of each workflow (see ``rollups``, read through ``rollup_cache``).
Each has a watermark: events past it are folded in by the folder thread, on
its own connection and in its own transactions beside the writer's commits
(see ``_fold_loop``), a bounded piece at a time; queries read them from the
events until then, so answers are always exact and current.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import logging
import queue
import re
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, overload

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.json as pa_json
from xxhash import xxh3_64_intdigest

from kaie_analytics.analytics.facts import AppendResult, Workflow
from kaie_analytics.engines.duckdb import activity, rollups
from kaie_analytics.engines.duckdb import executions_sql as xsql
from kaie_analytics.engines.duckdb.dedupe import IdIndex
from kaie_analytics.engines.duckdb.derived import DERIVED, Derived, compact_statements, current_rows
from kaie_analytics.engines.duckdb.rollup_cache import RollupCache
from kaie_analytics.errors import QueryTimeout, StoreInUse, StoreUnavailable
from kaie_analytics.ingest.validate import FIELD_COLUMNS, OBJECT_FIELDS, ValidEvent

log = logging.getLogger("kaie_analytics.store")

DEDUPE_WINDOW = timedelta(days=8)
#: A fold takes at most this many events at a time (each piece its own transaction),
#: so a backlog of any size folds within DuckDB's memory limit; halved after an
#: out-of-memory error, grown back after each fold that succeeds.
FOLD_PIECE_EVENTS = 1_000_000
MIN_FOLD_PIECE = 1_000
RESORT_RATIO = 0.25
#: A workflow answer that finds more execution events than this waiting for its
#: tenant asks for a fold (see ``fold_if_behind``).
FOLD_ON_READ = 50_000
CHECKPOINT_THRESHOLD = "256MB"

_FIELD_TYPES = {"duration_ms": "BIGINT", "csat": "TINYINT", "nps": "TINYINT", "step": "TINYINT"}
_ARROW_TYPES = {"duration_ms": pa.int64(), "csat": pa.int8(), "nps": pa.int8(), "step": pa.int8()}
_JSON_READ = pa_json.ReadOptions(use_threads=False, block_size=16 << 20)
_JSON_PARSE = pa_json.ParseOptions(
    explicit_schema=pa.schema(
        [(c, _ARROW_TYPES.get(c, pa.string())) for c in FIELD_COLUMNS if c not in OBJECT_FIELDS]
    ),
    unexpected_field_behavior="ignore",
)

#: Which events feed each derived table, and where its watermark is kept.
_FEEDS = {
    "executions": f"type IN {xsql.FEED_TYPES}",
    **{d.name: d.event_filter for d in DERIVED},
    "activity": activity.FEED,
    "message_slots": rollups.FEED,
}
_WATERMARK_KEYS = {
    "executions": "exec_seq",
    **{d.name: d.watermark for d in DERIVED},
    "activity": activity.WATERMARK,
    "message_slots": rollups.WATERMARK,
}
_PARAM = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
_RENAME = "UPDATE workflows SET name = ?, name_ts = ? WHERE tenant = ? AND workflow_id = ?"
_DDL = [
    *(
        f"CREATE TABLE IF NOT EXISTS {table} (seq BIGINT NOT NULL, tenant VARCHAR NOT NULL,"
        " id_hash UBIGINT NOT NULL, event_id VARCHAR NOT NULL, id_given BOOLEAN NOT NULL,"
        " type VARCHAR NOT NULL, ts TIMESTAMP NOT NULL, ts_text VARCHAR NOT NULL, "
        + ", ".join(f"{c} {_FIELD_TYPES.get(c, 'VARCHAR')}" for c in FIELD_COLUMNS)
        + ", ingested_at TIMESTAMP NOT NULL)"
        for table in ("events_main", "events_recent")
    ),
    "CREATE OR REPLACE VIEW events AS"
    " SELECT * FROM events_main UNION ALL SELECT * FROM events_recent",
    xsql.EXECUTIONS_DDL,
    xsql.EXECUTIONS_MIGRATE,
    "CREATE TABLE IF NOT EXISTS workflows (tenant VARCHAR NOT NULL, workflow_id VARCHAR NOT NULL,"
    " name VARCHAR, name_ts TIMESTAMP, created_at TIMESTAMP NOT NULL)",
    "CREATE TABLE IF NOT EXISTS store_state (key VARCHAR PRIMARY KEY, value BIGINT NOT NULL)",
    "INSERT OR IGNORE INTO store_state VALUES ('exec_seq', 0), ('exec_sorted_rows', 0)",
    *(d.ddl for d in DERIVED),
    *activity.DDL,
    *rollups.DDL,
    *(f"INSERT OR IGNORE INTO store_state VALUES ('{key}', 0)" for key in _WATERMARK_KEYS.values()),
]


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """A validated batch as typed Arrow columns, with its 64-bit id hashes.

    Built off the writer thread (in a request thread or an ingest process).
    """

    table: pa.Table
    hashes: np.ndarray
    event_ids: list[str]


#: The event types feeding each derived table (None: every event with a customer).
_FEED_TYPES: dict[str, frozenset[str] | None] = {
    "executions": xsql.FEED_TYPE_SET,
    **{d.name: d.feed_types for d in DERIVED},
    "activity": activity.FEED_TYPES,
    "message_slots": rollups.MESSAGE_TYPES,
}


def _feed_counts(tenants: list[str], parts: list[pa.Table]) -> list[tuple[Any, ...]]:
    """Per tenant: events kept, then events feeding each derived table (``_FEEDS`` order)."""
    totals: dict[str, list[int]] = {}
    for tenant, part in zip(tenants, parts, strict=True):
        if not part.num_rows:
            continue
        row = totals.setdefault(tenant, [0] * (1 + len(_FEEDS)))
        row[0] += part.num_rows
        by_type = {v["values"]: v["counts"] for v in part["type"].value_counts().to_pylist()}
        for i, name in enumerate(_FEEDS, start=1):
            types = _FEED_TYPES[name]
            if types is None:
                row[i] += part.num_rows - part["customer_id"].null_count
            else:
                row[i] += sum(n for t, n in by_type.items() if t in types)
    return [(tenant, *row) for tenant, row in totals.items()]


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


#: A result as NumPy columns, by name.
Columns = dict[str, np.ndarray]


def _log_failure(fut: concurrent.futures.Future[None]) -> None:
    """Log a fold that nobody waits for, if it failed (the next one retries)."""
    if fut.exception() is not None:
        log.error("fold failed; will retry", exc_info=fut.exception())


def _fail_waiting(requests: queue.Queue[Any]) -> None:
    """At shutdown: fail the futures of the requests still queued (a future is last)."""
    while True:
        try:
            item = requests.get_nowait()
        except queue.Empty:
            return
        if isinstance(item, tuple):
            item[-1].set_exception(StoreUnavailable("the store is shutting down"))


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
        compact_after_events: int = 500_000,
        compact_idle_s: float = 2.0,
        chunk_rows: int = 1_000_000,
        rollup_cache_bytes: int = 256 << 20,
        fold_piece_events: int = FOLD_PIECE_EVENTS,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.query_timeout_s = query_timeout_s
        self.compact_after_events = compact_after_events
        self.compact_idle_s = compact_idle_s
        self.chunk_rows = chunk_rows
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
            if "lock" in str(exc).lower():
                raise StoreInUse(f"{path} is open in another process") from exc
            raise
        for stmt in _DDL:
            self._con.execute(stmt)
        built = self._scalar("SELECT value FROM store_state WHERE key = ?", [rollups.BUILT])
        if built < rollups.LAYOUT:
            self._build_rollups()
        self._seq = self._scalar("SELECT coalesce(max(seq), 0) FROM events")
        self._watermarks = {
            name: self._scalar("SELECT value FROM store_state WHERE key = ?", [key])
            for name, key in _WATERMARK_KEYS.items()
        }
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
        #: Events committed before this process opened the store: what of them is
        #: not folded yet is counted from the table, later ones from ``_commits``.
        self._opened_seq = self._seq
        #: Per commit since: its last seq and, per derived table, events per tenant.
        self._commits: list[tuple[int, list[dict[str, int]]]] = []
        #: Guards what the writer and the folder both change: the pending counts,
        #: the commit log, the seq, the count of recent rows.
        self._state = threading.Lock()
        # Per derived table, per tenant: events past the table's watermark.
        self._pending: dict[str, dict[str, int]] = self._count_pending(self._con)
        self._recent_rows = self._scalar("SELECT count(*) FROM events_recent")
        self._max_fold_piece = max(MIN_FOLD_PIECE, fold_piece_events)
        self._fold_piece = self._max_fold_piece
        #: Bumped on every commit that touches a tenant; caches key on it.
        self.versions: dict[str, int] = defaultdict(int)
        #: Odd while a fold commits, bumped to even after: a reader that sees the
        #: same even value before and after its reads read one fold's rollups.
        self.rollup_gen = 0
        self.rollup_cache = RollupCache(self, rollup_cache_bytes)
        self._fold_asked = False
        self._queue: queue.Queue[Any] = queue.Queue()
        #: Fold requests (``compact_now``); the folder also wakes on its own.
        self._folds: queue.Queue[Any] = queue.Queue()
        self._last_commit = time.monotonic()
        self._closed = False
        self._local = threading.local()
        #: Runs the independent statements of one answer side by side (``query_all``).
        self._readers = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="kaie-read")
        self._writer = threading.Thread(target=self._write_loop, name="kaie-writer", daemon=True)
        # Folds run beside the writer, on their own connection and transactions:
        # a fold never delays an acknowledgement.
        self._fold_con = self._con.cursor()
        self._folder = threading.Thread(target=self._fold_loop, name="kaie-folder", daemon=True)
        self._writer.start()
        self._folder.start()

    # ------------------------------------------------------------------ utils

    def _scalar(
        self,
        sql: str,
        params: Sequence[Any] | None = None,
        con: duckdb.DuckDBPyConnection | None = None,
    ) -> int:
        rows = (con or self._con).execute(sql, params or []).fetchall()
        return int(rows[0][0]) if rows else 0

    def _count_pending(
        self, con: duckdb.DuckDBPyConnection, above: int | None = None, only: str | None = None
    ) -> dict[str, dict[str, int]]:
        """Per derived table, per tenant: events not folded yet, up to the seq at opening.

        Counted from the table, for events committed before this process opened
        the store (``above``: count only those past it, after a fold of a piece;
        ``only``: for that table alone).
        """
        pending: dict[str, dict[str, int]] = {name: defaultdict(int) for name in _FEEDS}
        for name, predicate in _FEEDS.items():
            if only is not None and name != only:
                continue
            lo = self._watermarks[name] if above is None else max(above, self._watermarks[name])
            if lo >= self._opened_seq:
                continue
            for tenant, n in con.execute(
                f"SELECT tenant, count(*) FROM events WHERE seq > ? AND seq <= ? AND {predicate}"
                " GROUP BY tenant",
                [lo, self._opened_seq],
            ).fetchall():
                pending[name][tenant] = n
        return pending

    def has_pending(self, tenant: str, table: str = "executions") -> bool:
        return self._pending[table].get(tenant, 0) > 0

    def fold_if_behind(self, tenant: str) -> None:
        """Ask the writer to fold soon if ``tenant`` has many execution events waiting.

        A query merges the events waiting for its tenant on the fly, at a cost
        in proportion to them; a reader that finds more than ``FOLD_ON_READ``
        has them folded rather than wait for ``compact_after_events``.
        """
        if self._pending["executions"].get(tenant, 0) > FOLD_ON_READ and not self._fold_asked:
            self._fold_asked = True
            self.compact_now().add_done_callback(_log_failure)

    # ----------------------------------------------------------------- writes

    def append(
        self, tenant: str, rows: list[ValidEvent]
    ) -> concurrent.futures.Future[AppendResult]:
        """Queue validated events for the next group commit.

        The Arrow table and id hashes are built here, in the caller's thread, so
        the single writer thread only dedupes, inserts and commits.
        """
        return self.append_prepared(tenant, self.prepare(tenant, rows))

    def append_prepared(
        self, tenant: str, batch: PreparedBatch
    ) -> concurrent.futures.Future[AppendResult]:
        """Queue a prepared batch for the next group commit."""
        fut: concurrent.futures.Future[AppendResult] = concurrent.futures.Future()
        if self._closed:
            raise StoreUnavailable("the store is shutting down")
        self._queue.put(("append", tenant, batch, fut))
        return fut

    @staticmethod
    def prepare(tenant: str, rows: list[ValidEvent]) -> PreparedBatch:
        """Typed Arrow columns and 64-bit id hashes of a batch (caller's thread).

        The field columns are parsed from the (already validated) raw JSON by
        Arrow's JSON reader, in C++ and without the GIL.
        """
        event_ids = [e.event_id for e in rows]
        prefix = tenant + "\x00"
        hashes = np.fromiter(
            (xxh3_64_intdigest((prefix + i).encode()) for i in event_ids),
            dtype=np.uint64,
            count=len(rows),
        )
        columns: dict[str, pa.Array] = {
            "tenant": pa.array([tenant] * len(rows), pa.string()),
            "id_hash": pa.array(hashes),
            "event_id": pa.array(event_ids, pa.string()),
            "id_given": pa.array([e.id_given for e in rows], pa.bool_()),
            "type": pa.array([e.type for e in rows], pa.string()),
            "ts": pa.array([e.ts_us for e in rows], pa.int64()).cast(pa.timestamp("us")),
            "ts_text": pa.array([e.ts_text for e in rows], pa.string()),
        }
        try:
            parsed = pa_json.read_json(
                io.BytesIO(b"\n".join(e.raw for e in rows)),
                read_options=_JSON_READ,
                parse_options=_JSON_PARSE,
            )
        except pa.ArrowInvalid:  # e.g. a repeated key; take the slow path
            parsed = None
        for name in FIELD_COLUMNS:
            if name in OBJECT_FIELDS:
                at = OBJECT_FIELDS.index(name)
                columns[name] = pa.array([e.objects[at] for e in rows], pa.string())
            elif parsed is not None:
                columns[name] = parsed.column(name).combine_chunks()
            else:
                columns[name] = pa.array(
                    [getattr(e.fields, name, None) for e in rows],
                    _ARROW_TYPES.get(name, pa.string()),
                )
        return PreparedBatch(pa.table(columns), hashes, event_ids)

    def put_workflow(
        self, tenant: str, workflow_id: str, name: str
    ) -> concurrent.futures.Future[Workflow]:
        fut: concurrent.futures.Future[Workflow] = concurrent.futures.Future()
        if self._closed:
            raise StoreUnavailable("the store is shutting down")
        self._queue.put(("workflow", tenant, (workflow_id, name), fut))
        return fut

    def compact_now(self, *, move_events: bool = False) -> concurrent.futures.Future[None]:
        """Fold pending execution events into ``executions`` (and re-sort if needed).

        With ``move_events``, also move every recent event into a sorted chunk.
        """
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._folds.put((move_events, fut))
        return fut

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(_Stop())
        self._writer.join()
        self._folds.put(_Stop())
        self._folder.join()
        self._readers.shutdown(wait=True)
        self._fold_con.close()
        self._con.close()

    def _backlog(self) -> int:
        """Events committed but not yet folded into every derived table."""
        return self._seq - min(self._watermarks.values())

    def _write_loop(self) -> None:
        while True:
            batch = [self._queue.get()]
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
            for kind, tenant, payload, fut in work:
                if kind == "workflow":
                    try:
                        fut.set_result(self._set_workflow_name(tenant, *payload))
                    except Exception as exc:
                        fut.set_exception(exc)
            if stop:
                _fail_waiting(self._queue)
                return
            if self._backlog() >= self.compact_after_events or self._recent_rows >= self.chunk_rows:
                self._folds.put(None)  # wake the folder; it decides what to do

    # ------------------------------------------------------------------ folds

    def _fold_loop(self) -> None:
        """The folder: folds the backlog, moves full chunks, checkpoints when quiet.

        It folds when asked (``compact_now``); when the backlog reaches
        ``compact_after_events`` (the writer wakes it) or has waited
        ``compact_idle_s``; and moves recent events once they fill a chunk.
        Once no commit has come for ``compact_idle_s`` it checkpoints the WAL.
        """
        last_fold = last_checkpoint = time.monotonic()
        while True:
            try:
                item = self._folds.get(timeout=self.compact_idle_s)
            except queue.Empty:
                item = None
            if isinstance(item, _Stop):
                _fail_waiting(self._folds)
                return
            now = time.monotonic()
            if item is not None:  # compact_now: fold everything, at once
                move, fut = item
                try:
                    self._compact()
                    if move:
                        self._move_events()
                    fut.set_result(None)
                except Exception as exc:
                    fut.set_exception(exc)
                last_fold = now
                continue
            backlog = self._backlog()
            due = backlog >= self.compact_after_events or (
                backlog > 0 and now - last_fold >= self.compact_idle_s
            )
            quiet = now - self._last_commit >= self.compact_idle_s
            checkpoint = quiet and self._last_commit > last_checkpoint
            if due or self._recent_rows >= self.chunk_rows or checkpoint:
                if self._maintain(checkpoint=checkpoint) and checkpoint:
                    last_checkpoint = now
                last_fold = now

    def _maintain(self, *, checkpoint: bool) -> bool:
        """Fold pending events, move a full chunk, and (when quiet) checkpoint the WAL.

        Returns whether all of it was done (so a quiet store is not checkpointed again).
        """
        try:
            self._compact()
            if self._recent_rows >= self.chunk_rows:
                self._move_events()
            if checkpoint:
                # Fails while the writer commits; the next quiet moment retries.
                self._fold_con.execute("CHECKPOINT")
            return True
        except duckdb.TransactionException:
            return False
        except Exception:
            log.exception("maintenance failed; will retry")
            return False

    def _commit_appends(self, items: list[Any]) -> None:
        """Dedupe, append and commit every queued batch in one transaction."""
        con = self._con
        batches: list[PreparedBatch] = [payload for _, _, payload, _ in items]
        tenants = [tenant for _, tenant, _, _ in items]
        try:
            keeps = self._dedupe(tenants, batches)
            results = []
            for keep in keeps:
                kept_here = int(keep.sum())
                results.append(AppendResult(kept_here, int(keep.size) - kept_here))
            kept_parts = [b.table.filter(pa.array(k)) for b, k in zip(batches, keeps, strict=True)]
            kept_hashes = np.concatenate([b.hashes[k] for b, k in zip(batches, keeps, strict=True)])
            kept_n = int(kept_hashes.size)
            old_seq = self._seq
            counts = _feed_counts(tenants, kept_parts)
            if kept_n:
                kept = pa.concat_tables(kept_parts).append_column(
                    "seq", pa.array(np.arange(old_seq + 1, old_seq + kept_n + 1, dtype=np.int64))
                )
                con.register("kept", kept)
                con.execute("BEGIN")
                try:
                    con.execute(
                        "INSERT INTO events_recent BY NAME SELECT *, $now AS ingested_at FROM kept",
                        {"now": _utcnow()},
                    )
                    wf_changes = self._workflow_changes()
                    for stmt, params in wf_changes:
                        con.execute(stmt, params)
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
                finally:
                    con.unregister("kept")
                per_commit: list[dict[str, int]] = [defaultdict(int) for _ in _FEEDS]
                for tenant, _, *per_table in counts:
                    for i, n in enumerate(per_table):
                        if n:
                            per_commit[i][tenant] += n
                with self._state:
                    # Pending counts first: a reader that sees the new seq sees them too.
                    self._commits.append((old_seq + kept_n, per_commit))
                    for tenant, _, *per_table in counts:
                        self.versions[tenant] += 1
                        for name, n in zip(_FEEDS, per_table, strict=True):
                            if n:
                                self._pending[name][tenant] += n
                    self._seq += kept_n
                    self._recent_rows += kept_n
                self._last_commit = time.monotonic()
                self._ids.add(kept_hashes)
                self._apply_workflow_changes(wf_changes)
        except Exception as exc:
            log.exception("group commit failed")
            for *_, fut in items:
                fut.set_exception(StoreUnavailable(f"commit failed: {exc}"))
            return
        for (*_, fut), res in zip(items, results, strict=True):
            fut.set_result(res)

    def _dedupe(self, tenants: list[str], batches: list[PreparedBatch]) -> list[np.ndarray]:
        """Per batch, a mask of the events to store: new, and first in this group."""
        maybes = [self._ids.candidates(b.hashes) for b in batches]
        stored: set[tuple[str, str]] = set()
        confirm: dict[str, list[int]] = defaultdict(list)
        for tenant, b, maybe in zip(tenants, batches, maybes, strict=True):
            if maybe.any():
                confirm[tenant].extend(b.hashes[maybe].tolist())
        for tenant, hs in confirm.items():
            # A 64-bit hash hit is only a candidate: confirm against the stored ids.
            found = self._con.execute(
                "SELECT event_id FROM events WHERE tenant = ? AND id_hash IN"
                " (SELECT unnest(?::UBIGINT[]))",
                [tenant, hs],
            ).fetchall()
            stored.update((tenant, r[0]) for r in found)
        keeps = []
        seen: dict[str, set[str]] = defaultdict(set)
        for tenant, b in zip(tenants, batches, strict=True):
            mine = seen[tenant]
            ids = b.event_ids
            keep = np.ones(len(ids), dtype=bool)
            if stored or not mine.isdisjoint(ids) or len(set(ids)) != len(ids):
                for i, event_id in enumerate(ids):
                    if event_id in mine or (tenant, event_id) in stored:
                        keep[i] = False
                    else:
                        mine.add(event_id)
            else:  # the common case: all new
                mine.update(ids)
            keeps.append(keep)
        return keeps

    # -------------------------------------------------------------- workflows

    def _workflow_changes(self) -> list[tuple[str, list[Any]]]:
        """Statements that register new workflows and apply newer names (writer thread)."""
        rows = self._con.execute(
            "SELECT tenant, workflow_id,"
            " arg_max(workflow_name, ts) FILTER (WHERE workflow_name IS NOT NULL),"
            " max(ts) FILTER (WHERE workflow_name IS NOT NULL)"
            " FROM kept WHERE workflow_id IS NOT NULL GROUP BY ALL"
        ).fetchall()
        now = _utcnow()
        changes: list[tuple[str, list[Any]]] = []
        for tenant, wf, name, ts in rows:
            known = self._workflows[tenant].get(wf)
            if known is None:
                changes.append(
                    ("INSERT INTO workflows VALUES (?, ?, ?, ?, ?)", [tenant, wf, name, ts, now])
                )
            elif name is not None and (known.name_ts is None or ts >= known.name_ts):
                changes.append((_RENAME, [name, ts, tenant, wf]))
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
            change = (_RENAME, [name, now, tenant, workflow_id])
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
        """Fold the events committed so far, a piece at a time (folder thread).

        Events committed meanwhile wait for the next fold: under a steady stream
        a fold ends, rather than chasing the newest commit.
        """
        self._fold_asked = False
        target = self._seq
        while min(self._watermarks.values()) < target:
            try:
                self._fold_piece_up_to(self._piece_end(target))
            except duckdb.OutOfMemoryException:
                if self._fold_piece <= MIN_FOLD_PIECE:
                    raise
                self._fold_piece = max(MIN_FOLD_PIECE, self._fold_piece // 2)
                log.warning(
                    "a fold ran out of memory; folding smaller pieces",
                    extra={"events_per_piece": self._fold_piece},
                )
                continue
            self._fold_piece = min(self._max_fold_piece, self._fold_piece * 2)

    def _piece_end(self, target: int) -> int:
        """The seq up to which the next piece folds: at most ``_fold_piece`` events on,
        and not past ``target``.

        Events of this process's commits are folded whole commits at a time, so
        that the per-commit counts stay exact.
        """
        low = min(self._watermarks.values())
        limit = min(target, low + self._fold_piece)
        if low < self._opened_seq:
            return min(limit, self._opened_seq)
        with self._state:
            ends = [hi for hi, _ in self._commits if low < hi <= target]
        fitting = [hi for hi in ends if hi <= limit]
        return fitting[-1] if fitting else ends[0] if ends else target

    def _fold_piece_up_to(self, new_seq: int) -> None:
        """Fold the events up to ``new_seq`` into each derived table, one transaction each.

        Each table has its own watermark, so each commits on its own: a
        transaction holds one table's changes (DuckDB keeps them in memory
        until the commit), and a failure in one leaves the others folded.
        """
        for name in _FEEDS:
            if self._watermarks[name] < new_seq:
                self._fold_table(name, new_seq)

    def _fold_into(self, name: str, new_seq: int) -> set[rollups.DayKey]:
        """The statements of one table's fold (inside the caller's transaction)."""
        con, lo = self._fold_con, self._watermarks[name]
        if name == "executions":
            return self._fold_executions(new_seq)
        if name == "activity":
            activity.fold(con, lo, new_seq)
            return set()
        if name == "message_slots":
            return rollups.fold_messages(con, lo, new_seq)
        d = next(d for d in DERIVED if d.name == name)
        for stmt in compact_statements(d, lo, new_seq):
            con.execute(stmt)
        if d.rollup_key:  # sessions: its rollups, for the keys just touched
            rollups.refresh_sessions(con)
        return set()

    def _fold_table(self, name: str, new_seq: int) -> None:
        con = self._fold_con
        changed: set[rollups.DayKey] = set()
        con.execute("BEGIN")
        try:
            if any(self._pending[name].values()):  # else only the watermark moves
                changed = self._fold_into(name, new_seq)
            con.execute(
                "UPDATE store_state SET value = ? WHERE key = ?", [new_seq, _WATERMARK_KEYS[name]]
            )
            self.rollup_gen += 1  # odd: a fold is committing (see rollup_cache)
            con.execute("COMMIT")
            # Before the generation is even again: a reader of it sees these.
            before_open = (
                self._count_pending(con, above=new_seq, only=name)[name]
                if new_seq < self._opened_seq
                else None
            )
            at = list(_FEEDS).index(name)
            with self._state:
                self._watermarks[name] = new_seq
                floor = min(self._watermarks.values())
                self._commits = [c for c in self._commits if c[0] > floor]
                counts = before_open if before_open is not None else defaultdict(int)
                for hi, per_table in self._commits:
                    if hi > new_seq:
                        for tenant, n in per_table[at].items():
                            counts[tenant] += n
                self._pending = {**self._pending, name: counts}
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            if self.rollup_gen % 2:
                self.rollup_cache.changed(self.rollup_gen + 1, changed)
                self.rollup_gen += 1

    def _fold_executions(self, new_seq: int) -> set[rollups.DayKey]:
        """Merge new execution events into ``executions`` (inside the caller's transaction).

        Returns the days whose rollups changed.
        """
        con = self._fold_con
        where = f"seq > {int(self._watermarks['executions'])} AND seq <= {int(new_seq)}"
        con.execute(f"CREATE TEMP TABLE delta AS {xsql.event_states(where)}")
        con.execute(
            "CREATE TEMP TABLE merged AS "
            + xsql.merge_and_finalise(
                "SELECT tenant, execution_id, s, c, f, nodes AS n FROM executions"
                " WHERE (tenant, execution_id) IN (SELECT DISTINCT tenant, execution_id FROM delta)"
                " UNION ALL SELECT * FROM delta"
            )
        )
        # Every slot an execution leaves or joins: its rollups are rebuilt below.
        slot = rollups.slot_of("started_at")
        con.execute(
            f"""CREATE TEMP TABLE touched_slots AS
            SELECT DISTINCT tenant, workflow_id, {slot} AS slot FROM executions
            WHERE (tenant, execution_id) IN (SELECT tenant, execution_id FROM merged)
              AND workflow_id IS NOT NULL AND started_at IS NOT NULL
            UNION
            SELECT DISTINCT tenant, workflow_id, {slot} FROM merged
            WHERE workflow_id IS NOT NULL AND started_at IS NOT NULL"""
        )
        con.execute(
            "DELETE FROM executions WHERE (tenant, execution_id) IN"
            " (SELECT tenant, execution_id FROM merged)"
        )
        activity.number_customers(con, "merged")
        con.execute(
            """INSERT INTO executions
            SELECT m.*, c.num FROM merged m
            LEFT JOIN (SELECT * FROM customer_numbers
                       WHERE tenant IN (SELECT tenant FROM merged)) c
              ON c.tenant = m.tenant AND c.customer_id = m.customer_id
            ORDER BY m.tenant, m.workflow_id, m.started_at"""
        )
        con.execute("DROP TABLE delta")
        con.execute("DROP TABLE merged")
        total = self._scalar("SELECT count(*) FROM executions", con=con)
        sorted_rows = self._scalar(
            "SELECT value FROM store_state WHERE key = 'exec_sorted_rows'", con=con
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
            con.execute("UPDATE store_state SET value = ? WHERE key = 'exec_sorted_rows'", [total])
        return rollups.refresh_executions(con)

    def _build_rollups(self) -> None:
        """Build the execution rollups from ``executions``, and the session rollups.

        For a data directory written before this rollup layout (or a new one).
        """
        con = self._con
        con.execute("BEGIN")
        try:
            # Number every execution's customer (data from before customer_num).
            activity.number_customers(con, "executions")
            con.execute(
                """UPDATE executions SET customer_num = c.num FROM customer_numbers c
                WHERE c.tenant = executions.tenant AND c.customer_id = executions.customer_id
                  AND executions.customer_num IS NULL"""
            )
            rollups.refresh_executions(con, everything=True)
            con.execute(
                "CREATE TEMP TABLE touched_rows AS SELECT DISTINCT tenant, channel,"
                f" {rollups.slot_of('first_ts')} AS slot FROM sessions"
            )
            rollups.refresh_sessions(con)
            # Customer numbers in (tenant, customer) order, so zone maps find a
            # tenant's few customers when a query looks them up.
            con.execute(
                "CREATE TEMP TABLE numbers AS SELECT * FROM customer_numbers"
                " ORDER BY tenant, customer_id"
            )
            con.execute("DELETE FROM customer_numbers")
            con.execute("INSERT INTO customer_numbers SELECT * FROM numbers")
            con.execute("DROP TABLE numbers")
            con.execute(
                "UPDATE store_state SET value = ? WHERE key = ?", [rollups.LAYOUT, rollups.BUILT]
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def _move_events(self) -> None:
        """Move the recent events into ``events_main`` as one sorted chunk."""
        if not self._recent_rows:
            return
        con = self._fold_con
        con.execute("BEGIN")
        try:
            # Commits that land meanwhile stay in events_recent for the next move.
            con.execute(
                "INSERT INTO events_main SELECT * FROM events_recent"
                " ORDER BY tenant, type, workflow_id, ts"
            )
            moved = self._scalar("SELECT count(*) FROM events_recent", con=con)
            con.execute("DELETE FROM events_recent")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        with self._state:
            self._recent_rows -= moved

    # ------------------------------------------------------------------ reads

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        cur: duckdb.DuckDBPyConnection | None = getattr(self._local, "cur", None)
        if cur is None:
            cur = self._con.cursor()
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

    def query_columns(self, sql: str, params: dict[str, Any] | None = None) -> Columns:
        """``query``, its result as NumPy columns (masked where a value is NULL)."""
        columns: Columns = self._run(sql, params, columns=True)
        return columns

    def _run(self, sql: str, params: dict[str, Any] | None, *, columns: bool) -> Any:
        cur = self._cursor()
        used = set(_PARAM.findall(sql))
        bound = {k: v for k, v in (params or {}).items() if k in used}
        timer = threading.Timer(self.query_timeout_s, cur.interrupt)
        timer.start()
        try:
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
        return self._seq

    def watermark(self, table: str) -> int:
        """The seq up to which ``table`` (a derived table or rollup) has folded the events.

        Read it under one rollup generation (``rollup_cache.read_with_rollups``):
        a fold moves it.
        """
        return self._watermarks[table]

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

    def data_version(self, tenant: str) -> int:
        """A number that changes with every commit touching ``tenant`` (for caches)."""
        return self.versions[tenant]

    def ping(self) -> bool:
        try:
            self._cursor().execute("SELECT 1").fetchall()
            return True
        except duckdb.Error:
            return False
