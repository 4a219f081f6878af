"""Appends to ClickHouse, in group commits: one insert per group.

One thread takes every batch waiting, drops the ids already stored (looked up
in ``event_ids``), in an insert still running, or repeated in the group (the
first copy wins), and hands the rest to an insert of its own. Embedded, this
process is the only writer, so it keeps the hashes of the ids ingested in the
dedupe window in memory (``engines.dedupe``) and looks up only the ids that
may be stored: a lookup in ``event_ids`` reads most of it whatever the number
of ids (they are spread over every granule), so looking up every id made
ingestion slower as the store grew. On a server, other processes write too,
and every id is looked up. Many concurrent requests share one insert (and
one part per month they touch), which ClickHouse wants: a part per request
would be too many parts.

On a server, each ``append`` future resolves once its group's insert has
returned, and so once its parts are fsynced; while one insert runs, the next
group is inserted beside it (``IN_FLIGHT``). Embedded, it resolves once its
group is in the write-ahead log (``wal``), and a thread of its own inserts what
the log holds, several groups at a time (``_load``); every read waits first for
its tenant's groups acknowledged before it (``flush``), so an answer always
counts what was acknowledged.

Until an insert returns, its events may be visible in ``events`` and not yet
in what the views derive from them (ClickHouse commits each table's part on
its own), so the fold takes up only events ingested before the oldest insert
still running or still in the log (``oldest_in_flight``).
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kaie_analytics.analytics.facts import AppendResult
from kaie_analytics.engines.clickhouse.folds import repair
from kaie_analytics.engines.clickhouse.schema import COLUMNS
from kaie_analytics.engines.clickhouse.sql import epoch_us, id_hash, utcnow
from kaie_analytics.engines.clickhouse.transport import Transport
from kaie_analytics.engines.clickhouse.wal import WriteAheadLog
from kaie_analytics.engines.dedupe import DEDUPE_WINDOW, IdIndex
from kaie_analytics.errors import StoreUnavailable
from kaie_analytics.ingest.columns import PreparedBatch

log = logging.getLogger("kaie_analytics.store")

#: At most this many events per insert (bigger groups wait for the next one).
GROUP_EVENTS = 100_000
#: While requests come in side by side, a group waits up to this long for more,
#: until it has ``GATHER_EVENTS``: an insert costs ClickHouse some 40 ms whatever
#: its size (parts, materialized views), so ten requests in one insert cost
#: about what one does. A lone client never waits (see ``_run``).
GATHER_S = 0.02
GATHER_EVENTS = 20_000
#: Inserts that may run at once. On a server (cores of its own), the next group is
#: inserted beside one running instead of waiting; embedded, ClickHouse works on this
#: machine's cores, and two at a time cost more than the wait (measured on 2 cores:
#: 9k against 11k events/s, 130 against 86 µs of CPU per event, from smaller groups
#: and so more parts to write and merge).
IN_FLIGHT = {"embedded": 1, "server": 2}
#: Embedded: events acknowledged and not yet inserted up to which new groups wait (the
#: inserts cannot keep up), so that the log, the memory it takes and how long a read
#: may wait for it stay bounded.
UNLOADED_EVENTS = 200_000
#: Seconds a read waits for the log to be inserted (an insert that failed is tried
#: again meanwhile) before it fails.
FLUSH_TIMEOUT_S = 30.0

Request = tuple[str, PreparedBatch, concurrent.futures.Future[AppendResult]]


@dataclass
class _Insert:
    """A group's rows on their way into ClickHouse."""

    group: list[Request]
    results: list[AppendResult]
    #: The rows to insert (None: every event of the group was stored already).
    table: pa.Table | None
    #: µs of the rows' ``ingested_at``; later than every insert's before it.
    ingested_us: int
    #: The ids being inserted, per tenant.
    ids: dict[str, set[str]]
    #: Embedded: its file in the write-ahead log, once written.
    file: Path | None = None


class Writer:
    def __init__(
        self,
        transport: Transport,
        after_commit: Callable[[set[str], int], None],
        wal: WriteAheadLog | None = None,
    ) -> None:
        self._transport = transport
        self._after_commit = after_commit
        self._wal = wal
        self._last_us = 0
        #: (tenant, workflow) this process has registered, so a batch writes only new ones.
        known = transport.query("SELECT DISTINCT tenant, workflow_id FROM workflows")
        self._workflows: set[tuple[str, str]] = set(
            zip(known.column(0).to_pylist(), known.column(1).to_pylist(), strict=True)
        )
        if wal is not None:
            self._replay(wal)
        #: Embedded only: the hashes of the ids ingested in the dedupe window.
        self._ids = self._load_ids() if transport.embedded else None
        self._requests: queue.Queue[Request | None] = queue.Queue()
        #: The inserts running or, embedded, in the log and not yet inserted, by their
        #: ``ingested_at``.
        self._in_flight: dict[int, _Insert] = {}
        self._in_flight_lock = threading.Lock()
        #: Requests answered since the last group started (see ``_run``).
        self._answered = 0
        in_flight = IN_FLIGHT["embedded" if transport.embedded else "server"]
        self._free = threading.Semaphore(in_flight)
        self._inserts = concurrent.futures.ThreadPoolExecutor(
            in_flight, thread_name_prefix="kaie-ch-insert"
        )
        #: Embedded: the groups in the log, oldest first, and what ``_load`` has done.
        self._logged: deque[_Insert] = deque()
        self._logged_events = 0
        self._logged_lock = threading.Condition()
        self._acknowledged_us = 0  # the latest group acknowledged
        self._acknowledged_by_tenant: dict[str, int] = {}  # the latest with its events
        self._loaded_us = 0  # the latest group inserted
        self._load_error: Exception | None = None
        self._stopping = False
        self._loader: threading.Thread | None = None
        if wal is not None:
            self._loader = threading.Thread(target=self._load, name="kaie-ch-load", daemon=True)
            self._loader.start()
        self._thread = threading.Thread(target=self._run, name="kaie-ch-writer", daemon=True)
        self._thread.start()

    def _load_ids(self) -> IdIndex:
        with self._transport.unlimited():  # millions of rows in a large store
            hashes = self._transport.query(
                f"SELECT {id_hash('event_id')} AS h FROM events"
                " WHERE ingested_at >= now64(6) - toIntervalSecond({window:UInt32})",
                {"window": int(DEDUPE_WINDOW.total_seconds())},
            )
        return IdIndex(hashes.column("h").to_numpy())

    def oldest_in_flight(self) -> int | None:
        """µs of ``ingested_at`` of the oldest insert still running (None: none is)."""
        with self._in_flight_lock:
            return min(self._in_flight, default=None)

    def append(self, tenant: str, batch: PreparedBatch) -> concurrent.futures.Future[AppendResult]:
        future: concurrent.futures.Future[AppendResult] = concurrent.futures.Future()
        self._requests.put((tenant, batch, future))
        return future

    def close(self) -> None:
        self._requests.put(None)
        self._thread.join()
        self._inserts.shutdown(wait=True)
        if self._loader is not None:  # insert what the log holds (or leave it for the next start)
            with self._logged_lock:
                self._stopping = True
                self._logged_lock.notify_all()
            self._loader.join()
        while True:  # whatever came after the stop
            try:
                item = self._requests.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item[2].set_exception(StoreUnavailable("the store is shutting down"))

    def flush(self, tenant: str | None = None) -> None:
        """Wait until every group acknowledged so far (with events of ``tenant``; None:
        of any) is in ClickHouse (embedded; a read calls this first, so that it counts
        them, and a tenant's reads do not wait for another's ingestion)."""
        if self._wal is None:
            return
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        with self._logged_lock:
            if tenant is None:
                target = self._acknowledged_us
            else:
                target = self._acknowledged_by_tenant.get(tenant, 0)
            while self._loaded_us < target:
                left = deadline - time.monotonic()
                if left <= 0 or self._stopping:
                    error = StoreUnavailable("the event store could not store the events")
                    error.__cause__ = self._load_error
                    raise error
                self._logged_lock.wait(min(left, 1.0))

    def _run(self) -> None:
        while True:
            # A group starts once an insert may: until then, requests wait together.
            self._free.acquire()
            with self._logged_lock:  # and, embedded, once the log is not too far ahead
                while self._logged_events > UNLOADED_EVENTS and not self._stopping:
                    self._logged_lock.wait(1.0)
            # How many requests to wait for (up to GATHER_S): those waiting now, and as
            # many as were answered since the last group, whose clients are likely to
            # send again. (Counted from the queue, a group could settle on part of the
            # clients, the rest arriving while it is inserted, in groups half as large.)
            with self._in_flight_lock:
                expected, self._answered = self._requests.qsize() + self._answered, 0
            first = self._requests.get()
            if first is None:
                self._free.release()
                return
            group, size, stop = [first], first[1].table.num_rows, False
            gather_until = time.monotonic() + GATHER_S
            while size < GROUP_EVENTS:
                gathering = len(group) < expected and size < GATHER_EVENTS
                wait = gather_until - time.monotonic() if gathering else 0.0
                try:
                    item = (
                        self._requests.get(timeout=wait)
                        if wait > 0
                        else self._requests.get_nowait()
                    )
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                group.append(item)
                size += item[1].table.num_rows
            try:
                insert = self._prepare(group)
            except Exception as exc:
                self._release(len(group))
                self._fail(group, exc)
            else:
                self._inserts.submit(self._commit, insert)
            if stop:
                return

    def _prepare(self, group: list[Request]) -> _Insert:
        """What of the group to insert, and when (in this thread, one group at a time)."""
        results, parts, ids = self._dedupe(group)
        if self._ids is not None and parts:
            # Now, not once the insert returns: the next group must find them, and if
            # the insert fails they are confirmed against ``event_ids`` like any other.
            self._ids.add(np.concatenate([p["id_hash"].to_numpy() for p in parts]))
        parts = [p.drop_columns(["id_hash"]) for p in parts]
        # Each insert later than the one before, whatever the clock does (the fold's
        # watermark relies on it).
        self._last_us = max(epoch_us(utcnow()), self._last_us + 1)
        table = None
        if parts:
            table = pa.concat_tables(parts)
            now = pa.array(np.full(table.num_rows, self._last_us), pa.timestamp("us"))
            table = table.append_column("ingested_at", now)
        insert = _Insert(group, results, table, self._last_us, ids)
        with self._in_flight_lock:
            self._in_flight[insert.ingested_us] = insert
        return insert

    def _commit(self, insert: _Insert) -> None:
        try:
            if insert.table is not None:
                if self._wal is not None:
                    insert.file = self._wal.write(insert.ingested_us, insert.table)
                else:
                    self._insert([insert])
        except Exception as exc:
            log.exception("an insert of %d batches failed", len(insert.group))
            if self._wal is None:
                self._repair_after_failure(insert.ingested_us)
            self._done(insert)
            self._fail(insert.group, exc)
            return
        if insert.file is not None:  # in flight until ``_load`` has inserted it
            # Before the data versions move: an answer that finds the new version waits
            # for this group.
            with self._logged_lock:
                self._logged.append(insert)
                self._logged_events += insert.table.num_rows if insert.table is not None else 0
                self._acknowledged_us = insert.ingested_us
                for tenant in insert.ids:
                    self._acknowledged_by_tenant[tenant] = insert.ingested_us
                self._logged_lock.notify_all()
        if insert.ids:
            self._after_commit(set(insert.ids), insert.ingested_us)
        if insert.file is not None:
            self._release(len(insert.group))
        else:
            self._done(insert)
        for (_, _, future), result in zip(insert.group, insert.results, strict=True):
            future.set_result(result)

    def _insert(self, inserts: list[_Insert]) -> None:
        """The groups' rows into ClickHouse, in one insert; the workflows first: a crash
        between the two leaves a workflow with no events, never events of a workflow
        that does not exist."""
        tables = []
        # Without the time limit: writes are never stopped half way (``Transport.insert``).
        with self._transport.unlimited():
            for insert in inserts:
                assert insert.table is not None
                self._register_workflows(insert.table, insert.ingested_us)
                tables.append(insert.table.select([n for n, _ in COLUMNS]))
            self._transport.insert("events", pa.concat_tables(tables))

    def _load(self) -> None:
        """Embedded: insert what the log holds, as many groups at a time as are there
        (up to ``GROUP_EVENTS``), until the writer stops and the log is empty."""
        while True:
            with self._logged_lock:
                while not self._logged and not self._stopping:
                    self._logged_lock.wait()
                if not self._logged:
                    return
                batch: list[_Insert] = []
                size = 0
                for insert in self._logged:
                    if batch and size + insert.table.num_rows > GROUP_EVENTS:  # type: ignore[union-attr]
                        break
                    batch.append(insert)
                    size += insert.table.num_rows  # type: ignore[union-attr]
            try:
                self._insert(batch)
            except Exception as exc:
                log.exception("inserting %d groups from the log failed", len(batch))
                self._repair_after_failure(batch[0].ingested_us)
                with self._logged_lock:
                    self._load_error = exc
                    self._logged_lock.notify_all()
                    if self._stopping:  # the log stays for the next start
                        return
                time.sleep(0.5)
                continue
            with self._logged_lock:
                for _ in batch:
                    self._logged.popleft()
                self._logged_events -= size
                self._loaded_us = batch[-1].ingested_us
                self._load_error = None
                self._logged_lock.notify_all()
            with self._in_flight_lock:
                for insert in batch:
                    del self._in_flight[insert.ingested_us]
            assert self._wal is not None
            self._wal.remove(i.file for i in batch if i.file is not None)

    def _replay(self, wal: WriteAheadLog) -> None:
        """Insert the groups a crash (or a failed last insert) left in the log."""
        files = wal.files()
        for file in files:
            rows = WriteAheadLog.read(file)
            ingested_us = int(file.name.split(".")[0])
            self._insert([_Insert([], [], rows, ingested_us, {})])
            self._last_us = max(self._last_us, ingested_us)  # later groups come after
        if files:
            log.info("inserted %d groups left in the write-ahead log", len(files))
            wal.remove(files)

    def _done(self, insert: _Insert) -> None:
        with self._in_flight_lock:
            del self._in_flight[insert.ingested_us]
        self._release(len(insert.group))

    def _release(self, answered: int) -> None:
        """An insert's slot is free; its ``answered`` requests are about to be."""
        with self._in_flight_lock:
            self._answered += answered
        self._free.release()

    @staticmethod
    def _fail(group: list[Request], exc: Exception) -> None:
        error = StoreUnavailable("the event store could not store the events")
        error.__cause__ = exc
        for _, _, future in group:
            future.set_exception(error)

    def _repair_after_failure(self, ingested_us: int) -> None:
        """The failed insert may have written its events and not all that views keep
        of them: add that, so a retry finds the events stored (``folds.repair``; what
        it adds again of other inserts' events changes nothing)."""
        try:
            with self._transport.unlimited():
                repair(self._transport, ingested_us - 1)
        except Exception:  # the store is down: the next start repairs (embedded)
            log.exception("repairing after a failed insert failed")

    def _register_workflows(self, table: pa.Table, created: int) -> None:
        """Write the batch's workflows this process has not seen yet, and its names."""
        rows = table.select(["tenant", "workflow_id", "workflow_name", "ts", "ingested_at"])
        rows = rows.filter(pc.is_valid(rows["workflow_id"]))
        named = rows.filter(pc.is_valid(rows["workflow_name"])).sort_by("ts")
        names = {
            (t, w): (n, ts)
            for t, w, n, ts in zip(
                *(named[c].to_pylist() for c in ("tenant", "workflow_id", "workflow_name", "ts")),
                strict=True,
            )
        }  # the latest name of each (sorted by time)
        seen = set(zip(rows["tenant"].to_pylist(), rows["workflow_id"].to_pylist(), strict=True))
        new = [key for key in seen if key not in self._workflows or key in names]
        if not new:
            return
        self._transport.command(
            "INSERT INTO workflows SELECT r.1, r.2, r.3, argMaxState(r.4, r.5), max(r.5), min(r.6)"
            " FROM (SELECT arrayJoin(arrayZip({tenants:Array(String)}, {workflows:Array(String)},"
            " {named:Array(UInt8)}, {names:Array(String)},"
            " arrayMap(x -> fromUnixTimestamp64Micro(x, 'UTC'), {name_us:Array(Int64)}),"
            " arrayMap(x -> fromUnixTimestamp64Micro(x, 'UTC'), {created_us:Array(Int64)}))) AS r)"
            " GROUP BY r.1, r.2, r.3",
            {
                "tenants": [t for t, _ in new],
                "workflows": [w for _, w in new],
                "named": [int(key in names) for key in new],
                "names": [names[key][0] if key in names else "" for key in new],
                # Without a name, its time is the epoch: max() keeps any later one.
                "name_us": [epoch_us(names[key][1]) if key in names else 0 for key in new],
                "created_us": [created] * len(new),
            },
        )
        self._workflows.update(new)  # two inserts may both write one: it is the same row

    def _dedupe(
        self, group: list[Request]
    ) -> tuple[list[AppendResult], list[pa.Table], dict[str, set[str]]]:
        """Per request: what it adds; the rows to insert (with ``id_hash``); their
        ids per tenant."""
        # The ids to look up: all, or embedded only those that may be stored (the
        # ids of inserts running are in the index too).
        by_tenant: dict[str, list[str]] = defaultdict(list)
        for tenant, batch, _ in group:
            if self._ids is None:
                by_tenant[tenant].extend(batch.event_ids)
                continue
            maybe = self._ids.candidates(batch.hashes)
            if maybe.any():
                by_tenant[tenant].extend(np.asarray(batch.event_ids, object)[maybe].tolist())
        # The ids of inserts running, taken before the lookup: one that returns after
        # it is in this copy, one that returned before it is in ``event_ids``.
        with self._in_flight_lock:
            running = [insert.ids for insert in self._in_flight.values()]
        stored = {
            tenant: self._stored(tenant, ids).union(
                *(set(ids).intersection(r.get(tenant, ())) for r in running)
            )
            for tenant, ids in by_tenant.items()
        }
        results: list[AppendResult] = []
        parts: list[pa.Table] = []
        kept: dict[str, set[str]] = defaultdict(set)
        for tenant, batch, _ in group:
            seen = stored.setdefault(tenant, set())
            keep: list[bool] = []
            for event_id in batch.event_ids:
                keep.append(event_id not in seen)
                seen.add(event_id)
            accepted = sum(keep)
            results.append(AppendResult(accepted, len(keep) - accepted))
            if accepted:
                kept[tenant].update(i for i, k in zip(batch.event_ids, keep, strict=True) if k)
                part = batch.table if accepted == len(keep) else batch.table.filter(pa.array(keep))
                parts.append(part)
        return results, parts, dict(kept)

    def _stored(self, tenant: str, ids: list[str]) -> set[str]:
        found = self._transport.query(
            "SELECT event_id FROM event_ids"
            " WHERE tenant = {tenant:String} AND event_id IN {ids:Array(String)}",
            {"tenant": tenant, "ids": sorted(set(ids))},
        )
        return set(found.column("event_id").to_pylist())
