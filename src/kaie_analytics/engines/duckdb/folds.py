"""The folder: one thread that folds new events into the derived tables.

Each derived table has a watermark; events past it are folded in a bounded
piece at a time (``fold_piece_events``, halved after an out-of-memory error),
each table's piece in its own transaction on the folder's own connection,
beside the writer's commits: a fold never delays an acknowledgement. Until an
event is folded, queries read it from the events, so answers are always exact
and current. The folder also moves full chunks of recent events into
``events_main`` and checkpoints the write-ahead log when the store is quiet.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from typing import Any

import duckdb

from kaie_analytics.engines.duckdb import active_customers, folded_ids, rollups
from kaie_analytics.engines.duckdb import executions_sql as xsql
from kaie_analytics.engines.duckdb.derived import DERIVED, compact_statements
from kaie_analytics.engines.duckdb.folded_ids import FoldedExecutions
from kaie_analytics.engines.duckdb.progress import Progress
from kaie_analytics.engines.duckdb.rollup_cache import RollupCache
from kaie_analytics.engines.duckdb.schema import FEEDS, WATERMARK_KEYS
from kaie_analytics.engines.duckdb.writer import Stop, fail_waiting

log = logging.getLogger("kaie_analytics.store")

#: A fold takes at most this many events at a time (each piece its own transaction),
#: so a backlog of any size folds within DuckDB's memory limit; halved after an
#: out-of-memory error, grown back after each fold that succeeds.
FOLD_PIECE_EVENTS = 1_000_000
MIN_FOLD_PIECE = 1_000
#: The tables whose folds change what workflow answers read (``rollup_cache``): only
#: their commits make a reader read again.
ROLLUP_FEEDS = frozenset({"executions", "message_slots"})
#: ``executions`` is rewritten in scan order once this share of it arrived unsorted.
RESORT_RATIO = 0.25


def _scalar(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    rows = con.execute(sql).fetchall()
    return int(rows[0][0]) if rows else 0


class Folder:
    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        progress: Progress,
        rollup_cache: RollupCache,
        *,
        compact_after_events: int,
        compact_idle_s: float,
        chunk_rows: int,
        folded: FoldedExecutions,
        fold_piece_events: int = FOLD_PIECE_EVENTS,
    ) -> None:
        self._con = con
        self._folded_ids = folded
        self._progress = progress
        self._rollup_cache = rollup_cache
        self.compact_after_events = compact_after_events
        self.compact_idle_s = compact_idle_s
        self.chunk_rows = chunk_rows
        self._max_piece = max(MIN_FOLD_PIECE, fold_piece_events)
        #: Events per piece now (smaller after an out-of-memory error).
        self.piece = self._max_piece
        #: Set when a reader asked for a fold that has not started yet.
        self.asked = False
        #: Fold requests (``fold_now``); the folder also wakes on its own.
        self._requests: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="kaie-folder", daemon=True)
        self._thread.start()

    def fold_now(self, *, move_events: bool = False) -> concurrent.futures.Future[None]:
        """Fold every event committed so far; with ``move_events``, also move every
        recent event into a sorted chunk."""
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._requests.put((move_events, fut))
        return fut

    def wake(self) -> None:
        """Look at the backlog now (the writer calls this when one may be due)."""
        p = self._progress
        if p.backlog() >= self.compact_after_events or p.recent_rows >= self.chunk_rows:
            self._requests.put(None)

    def stop(self) -> None:
        self._requests.put(Stop())
        self._thread.join()

    def _loop(self) -> None:
        """Fold when asked (``fold_now``); when the backlog reaches
        ``compact_after_events`` (the writer wakes it) or has waited
        ``compact_idle_s``; move recent events once they fill a chunk; once no
        commit has come for ``compact_idle_s``, checkpoint the WAL."""
        last_fold = last_checkpoint = time.monotonic()
        p = self._progress
        while True:
            try:
                item = self._requests.get(timeout=self.compact_idle_s)
            except queue.Empty:
                item = None
            if isinstance(item, Stop):
                fail_waiting(self._requests)
                return
            now = time.monotonic()
            if item is not None:  # fold_now: fold everything, at once
                move, fut = item
                try:
                    self.fold()
                    if move:
                        self.move_events()
                    fut.set_result(None)
                except Exception as exc:
                    fut.set_exception(exc)
                last_fold = now
                continue
            backlog = p.backlog()
            due = backlog >= self.compact_after_events or (
                backlog > 0 and now - last_fold >= self.compact_idle_s
            )
            quiet = now - p.last_commit >= self.compact_idle_s
            checkpoint = quiet and p.last_commit > last_checkpoint
            if due or p.recent_rows >= self.chunk_rows or checkpoint:
                if self._maintain(checkpoint=checkpoint) and checkpoint:
                    last_checkpoint = now
                last_fold = now

    def _maintain(self, *, checkpoint: bool) -> bool:
        """Fold pending events, move a full chunk, and (when quiet) checkpoint the WAL.

        Returns whether all of it was done (so a quiet store is not checkpointed again).
        """
        try:
            self.fold()
            if self._progress.recent_rows >= self.chunk_rows:
                self.move_events()
            if checkpoint:
                # Fails while the writer commits; the next quiet moment retries.
                self._con.execute("CHECKPOINT")
            return True
        except duckdb.TransactionException:
            return False
        except Exception:
            log.exception("maintenance failed; will retry")
            return False

    def fold(self) -> None:
        """Fold the events committed so far, a piece at a time.

        Events committed meanwhile wait for the next fold: under a steady stream
        a fold ends, rather than chasing the newest commit.
        """
        self.asked = False
        p = self._progress
        target = p.seq
        while min(p.watermarks.values()) < target:
            try:
                self.fold_piece_up_to(p.piece_end(target, self.piece))
            except duckdb.OutOfMemoryException:
                if self.piece <= MIN_FOLD_PIECE:
                    raise
                self.piece = max(MIN_FOLD_PIECE, self.piece // 2)
                log.warning(
                    "a fold ran out of memory; folding smaller pieces",
                    extra={"events_per_piece": self.piece},
                )
                continue
            self.piece = min(self._max_piece, self.piece * 2)

    def fold_piece_up_to(self, new_seq: int) -> None:
        """Fold the events up to ``new_seq`` into each derived table, one transaction each.

        Each table has its own watermark, so each commits on its own: a
        transaction holds one table's changes (DuckDB keeps them in memory
        until the commit), and a failure in one leaves the others folded.
        """
        for name in FEEDS:
            if self._progress.watermarks[name] < new_seq:
                self._fold_table(name, new_seq)

    def _fold_into(self, name: str, new_seq: int) -> set[rollups.DayKey]:
        """The statements of one table's fold (inside the caller's transaction).

        Returns the (tenant, workflow, day) whose rollups changed.
        """
        con, lo = self._con, self._progress.watermarks[name]
        if name == "executions":
            return self._fold_executions(new_seq)
        if name == "activity":
            active_customers.fold(con, lo, new_seq)
            return set()
        if name == "message_slots":
            return rollups.fold_messages(con, lo, new_seq)
        d = next(d for d in DERIVED if d.name == name)
        for stmt in compact_statements(d, lo, new_seq):
            con.execute(stmt)
        if d.rollup_key:  # sessions: its rollups, for the keys just rebuilt
            rollups.refresh_sessions(con)
        return set()

    def _fold_table(self, name: str, new_seq: int) -> None:
        con, p = self._con, self._progress
        changed: set[rollups.DayKey] = set()
        con.execute("BEGIN")
        try:
            if any(p.pending[name].values()):  # else only the watermark moves
                changed = self._fold_into(name, new_seq)
            con.execute(
                "UPDATE store_state SET value = ? WHERE key = ?", [new_seq, WATERMARK_KEYS[name]]
            )
            if name in ROLLUP_FEEDS:
                p.rollup_gen += 1  # odd: a fold is committing (see rollup_cache)
            con.execute("COMMIT")
            # Before the generation is even again: a reader of it sees these.
            before_open = (
                p.count_pending(con, above=new_seq, only=name)[name]
                if new_seq < p.opened_seq
                else None
            )
            p.folded(name, new_seq, before_open)
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            if p.rollup_gen % 2:
                self._rollup_cache.changed(p.rollup_gen + 1, changed)
                p.rollup_gen += 1

    def _fold_executions(self, new_seq: int) -> set[rollups.DayKey]:
        """Merge new execution events into ``executions`` (inside the caller's transaction).

        Returns the days whose rollups changed.
        """
        con = self._con
        low = int(self._progress.watermarks["executions"])
        con.execute(
            f"CREATE TEMP TABLE delta AS {xsql.event_states(f'seq > {low} AND seq <= {int(new_seq)}')}"
        )
        # Only executions that may have a row are looked up (most new events start
        # executions that have none): each lookup scans the table otherwise.
        had_row = self._folded_ids.may_have_row(folded_ids.distinct_ids(con, "delta"))
        con.register("had_row", had_row.select(["tenant", "execution_id"]))
        try:
            old_rows = (
                "SELECT tenant, execution_id, s, c, f, nodes AS n FROM executions"
                " WHERE (tenant, execution_id) IN (SELECT tenant, execution_id FROM had_row)"
                " UNION ALL "
                if had_row.num_rows
                else ""
            )
            con.execute(
                "CREATE TEMP TABLE merged AS "
                + xsql.merge_and_finalise(f"{old_rows}SELECT * FROM delta")
            )
            # Every slot an execution leaves or joins: its rollups are rebuilt below.
            slot = rollups.slot_of("started_at")
            left = (
                f"""SELECT DISTINCT tenant, workflow_id, {slot} AS slot FROM executions
                WHERE (tenant, execution_id) IN (SELECT tenant, execution_id FROM had_row)
                  AND workflow_id IS NOT NULL AND started_at IS NOT NULL
                UNION
                """
                if had_row.num_rows
                else ""
            )
            con.execute(
                f"""CREATE TEMP TABLE touched_slots AS {left}
                SELECT DISTINCT tenant, workflow_id, {slot} AS slot FROM merged
                WHERE workflow_id IS NOT NULL AND started_at IS NOT NULL"""
            )
            if had_row.num_rows:
                con.execute(
                    "DELETE FROM executions WHERE (tenant, execution_id) IN"
                    " (SELECT tenant, execution_id FROM had_row)"
                )
        finally:
            con.unregister("had_row")
        # Before the commit: a reader of the new rows finds them in the index.
        self._folded_ids.add(con, "merged")
        active_customers.number_customers(con, "merged")
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
        total = _scalar(con, "SELECT count(*) FROM executions")
        sorted_rows = _scalar(con, "SELECT value FROM store_state WHERE key = 'exec_sorted_rows'")
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

    def move_events(self) -> None:
        """Move the recent events into ``events_main`` as one sorted chunk."""
        if not self._progress.recent_rows:
            return
        con = self._con
        con.execute("BEGIN")
        try:
            # Commits that land meanwhile stay in events_recent for the next move.
            con.execute(
                "INSERT INTO events_main SELECT * FROM events_recent"
                " ORDER BY tenant, type, workflow_id, ts"
            )
            moved = _scalar(con, "SELECT count(*) FROM events_recent")
            con.execute("DELETE FROM events_recent")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        self._progress.moved(moved)


def build_rollups(con: duckdb.DuckDBPyConnection) -> None:
    """Build the execution rollups from ``executions``, and the session rollups.

    For a data directory written before this rollup layout (or a new one).
    """
    con.execute("BEGIN")
    try:
        # Number every execution's customer (data from before customer_num).
        active_customers.number_customers(con, "executions")
        con.execute(
            """UPDATE executions SET customer_num = c.num FROM customer_numbers c
            WHERE c.tenant = executions.tenant AND c.customer_id = executions.customer_id
              AND executions.customer_num IS NULL"""
        )
        rollups.refresh_executions(con, everything=True)
        rollups.rebuild_messages(con)
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


def log_failure(fut: concurrent.futures.Future[None]) -> None:
    """Log a fold that nobody waits for, if it failed (the next one retries)."""
    if fut.exception() is not None:
        log.error("fold failed; will retry", exc_info=fut.exception())
