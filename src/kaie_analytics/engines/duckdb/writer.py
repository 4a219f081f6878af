"""The group-commit writer: one thread that owns every write of events.

It takes every batch waiting in its queue, dedupes them against the stored
ids (``dedupe``), appends them in one transaction and commits once: an
``append`` future resolves only after DuckDB has committed (and so fsynced its
write-ahead log). Many concurrent requests share one commit, so durability
does not cost throughput.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from kaie_analytics.analytics.facts import AppendResult, Workflow
from kaie_analytics.engines.dedupe import IdIndex
from kaie_analytics.engines.duckdb.progress import Progress
from kaie_analytics.engines.duckdb.recent import RecentFeed
from kaie_analytics.engines.duckdb.schema import feed_counts, utcnow
from kaie_analytics.engines.duckdb.workflow_names import WorkflowNames
from kaie_analytics.errors import StoreUnavailable
from kaie_analytics.ingest.columns import PreparedBatch

log = logging.getLogger("kaie_analytics.store")


class Stop:
    """Put on a queue: the thread reading it finishes."""


def fail_waiting(requests: queue.Queue[Any]) -> None:
    """At shutdown: fail the futures of the requests still queued (a future is last)."""
    while True:
        try:
            item = requests.get_nowait()
        except queue.Empty:
            return
        if isinstance(item, tuple):
            item[-1].set_exception(StoreUnavailable("the store is shutting down"))


class Writer:
    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        progress: Progress,
        ids: IdIndex,
        names: WorkflowNames,
        recent: RecentFeed,
        after_commit: Callable[[], None],
    ) -> None:
        self._con = con
        self._recent = recent
        self._progress = progress
        self._ids = ids
        self._names = names
        #: Called after each round of commits (the store wakes the folder if due).
        self._after_commit = after_commit
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="kaie-writer", daemon=True)
        self._thread.start()

    def append(self, tenant: str, batch: PreparedBatch) -> concurrent.futures.Future[AppendResult]:
        fut: concurrent.futures.Future[AppendResult] = concurrent.futures.Future()
        self._queue.put(("append", tenant, batch, fut))
        return fut

    def put_workflow(
        self, tenant: str, workflow_id: str, name: str
    ) -> concurrent.futures.Future[Workflow]:
        fut: concurrent.futures.Future[Workflow] = concurrent.futures.Future()
        self._queue.put(("workflow", tenant, (workflow_id, name), fut))
        return fut

    def restore_workflow(
        self, tenant: str, workflow: Workflow
    ) -> concurrent.futures.Future[Workflow]:
        fut: concurrent.futures.Future[Workflow] = concurrent.futures.Future()
        self._queue.put(("restore", tenant, workflow, fut))
        return fut

    def stop(self) -> None:
        """Finish what is queued, then stop."""
        self._queue.put(Stop())
        self._thread.join()

    def _loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(isinstance(b, Stop) for b in batch)
            work = [b for b in batch if not isinstance(b, Stop)]
            appends = [b for b in work if b[0] == "append"]
            if appends:
                self._commit_appends(appends)
            for kind, tenant, payload, fut in work:
                if kind in ("workflow", "restore"):
                    try:
                        if kind == "workflow":
                            renamed = self._names.rename(self._con, tenant, *payload)
                        else:
                            renamed = self._names.restore(self._con, tenant, payload)
                    except Exception as exc:
                        fut.set_exception(exc)
                        continue
                    with self._progress.lock:
                        self._progress.versions[tenant] += 1
                    fut.set_result(renamed)
            if stop:
                fail_waiting(self._queue)
                return
            self._after_commit()

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
            old_seq = self._progress.seq
            counts = feed_counts(tenants, kept_parts)
            if kept_n:
                kept = pa.concat_tables(kept_parts).append_column(
                    "seq", pa.array(np.arange(old_seq + 1, old_seq + kept_n + 1, dtype=np.int64))
                )
                con.register("kept", kept)
                con.execute("BEGIN")
                try:
                    con.execute(
                        "INSERT INTO events_recent BY NAME SELECT *, $now AS ingested_at FROM kept",
                        {"now": utcnow()},
                    )
                    wf_changes = self._names.changes(con, "kept")
                    for stmt, params in wf_changes:
                        con.execute(stmt, params)
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
                finally:
                    con.unregister("kept")
                self._recent.add(old_seq + kept_n, kept, self._progress.watermarks["executions"])
                self._progress.committed(old_seq, kept_n, counts)
                self._ids.add(kept_hashes)
                self._names.apply(wf_changes)
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
