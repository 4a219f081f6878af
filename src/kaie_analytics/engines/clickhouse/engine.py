"""The ClickHouse engine: events in ClickHouse, and the facts the core asks for.

``KAIE_EVENTS_BACKEND=chdb`` embeds ClickHouse in the process (its data in
``KAIE_DATA_DIR/clickhouse``); ``clickhouse://USER:PASSWORD@HOST:8123/DB``
uses a server or cluster. Both run the same DDL (``schema``) and SQL; only
the transport differs.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import pyarrow as pa

from kaie_analytics.analytics.facts import (
    ROW_SCHEMAS,
    ActivityQuery,
    AppendResult,
    Cells,
    CustomerFacts,
    CustomerQuery,
    JourneyFacts,
    JourneyQuery,
    RealtimeFacts,
    RealtimeQuery,
    RowsQuery,
    TenantEvents,
    Workflow,
)
from kaie_analytics.engines.clickhouse import activity, customers, exports, folds, realtime, sql
from kaie_analytics.engines.clickhouse.schema import ddl
from kaie_analytics.engines.clickhouse.transport import ChdbTransport, Transport, open_transport
from kaie_analytics.engines.clickhouse.wal import WriteAheadLog
from kaie_analytics.engines.clickhouse.workflow_days import Days, WorkflowDays
from kaie_analytics.engines.clickhouse.writer import Writer
from kaie_analytics.errors import StoreUnavailable
from kaie_analytics.ingest import columns
from kaie_analytics.ingest.columns import PreparedBatch
from kaie_analytics.ingest.validate import ValidEvent

_T = TypeVar("_T")
#: The write-ahead log's directory, in embedded ClickHouse's own (it goes with the store).
WAL_DIRECTORY = "kaie-log"

_WORKFLOWS = """
SELECT workflow_id, max(named), argMaxMerge(name), max(name_ts), min(created_at)
FROM workflows WHERE tenant = {tenant:String}{only}
GROUP BY workflow_id ORDER BY workflow_id
"""


class ClickHouseEngine:
    """Events of every tenant in ClickHouse (see ``schema``)."""

    prepare = staticmethod(columns.prepare)

    def __init__(
        self,
        transport: Transport,
        *,
        cluster: str | None = None,
        fold_idle_s: float = 2.0,
        rollup_cache_bytes: int = 256 << 20,
    ) -> None:
        self.transport = transport
        for statement in ddl(cluster):
            transport.command(statement)
        # Inserts that were cut off (embedded, this process is the only writer) all
        # came after the fold's watermark: what views keep of them is made whole.
        cut_off_after = folds.watermark(transport)
        with transport.unlimited():
            folds.upgrade(transport, cluster)
            if transport.embedded:
                folds.repair(transport, cut_off_after)
        # Data versions (for caches) count this process's commits; with several
        # processes, the shared version in Redis covers the others' (``cache``).
        self._versions: dict[str, int] = defaultdict(int)
        self._versions_lock = threading.Lock()
        #: Per (kind, tenant), embedded only: a data version and what ``_kept`` kept.
        self._kept_answers: dict[tuple[str, str], tuple[int, object]] = {}
        # Embedded, batches are acknowledged once in a log of the store's own (``wal``);
        # what a crash left there is inserted now, before anything is read.
        wal = (
            WriteAheadLog(transport.path / WAL_DIRECTORY)
            if transport.embedded and isinstance(transport, ChdbTransport)
            else None
        )
        #: Per tenant, µs of its last ingestion (embedded: this process is the only
        #: writer), so an answer knows whether any of its executions wait for a fold.
        self._ingested: dict[str, int] = {}
        self._writer = Writer(transport, self._bump, wal)
        if transport.embedded:
            for tenant, last in sql.rows(
                transport.query(
                    "SELECT tenant, max(toUnixTimestamp64Micro(ingested_at)) FROM events"
                    " GROUP BY tenant"
                )
            ):
                self._ingested[tenant] = int(last)
        #: Workflows' folded facts in memory, kept current by the fold (embedded only).
        self.workflow_days = (
            WorkflowDays(transport, rollup_cache_bytes) if transport.embedded else None
        )
        # Only the embedded engine folds (see ``folds``); on a server, every answer
        # merges the executions from their states.
        self.folder = (
            folds.Folder(
                transport,
                fold_idle_s,
                self._writer.oldest_in_flight,
                self.workflow_days.changed if self.workflow_days else None,
            )
            if transport.embedded
            else None
        )
        self._closed = False

    @classmethod
    def open(
        cls, backend: str, data_dir: Path, *, cluster: str | None = None,
        query_timeout_s: float = 10.0, fold_idle_s: float = 2.0,
        rollup_cache_bytes: int = 256 << 20,
    ) -> ClickHouseEngine:  # fmt: skip
        transport = open_transport(
            backend, data_dir, query_timeout_s=query_timeout_s, cluster=cluster
        )
        return cls(
            transport,
            cluster=cluster,
            fold_idle_s=fold_idle_s,
            rollup_cache_bytes=rollup_cache_bytes,
        )

    @contextlib.contextmanager
    def _folded(self, tenant: str) -> Iterator[int]:
        """The fold's watermark to answer with (0: nothing folded, on a server), held
        until the answer is read (compaction keeps to it). Every batch of the tenant
        acknowledged before is in the answer."""
        self._writer.flush(tenant)
        if self.folder is None:
            yield 0
            return
        with self.folder.reading() as mark:
            yield mark

    def _bump(self, tenants: set[str], ingested_us: int | None = None) -> None:
        with self._versions_lock:
            for tenant in tenants:
                self._versions[tenant] += 1
                if ingested_us is not None:  # inserts side by side may return out of order
                    self._ingested[tenant] = max(self._ingested.get(tenant, 0), ingested_us)

    def _pending(self, tenant: str, folded: int) -> bool:
        """Whether some of the tenant's events may not be folded as of watermark
        ``folded`` (always, on a server)."""
        if self.folder is None:
            return True
        return self._ingested.get(tenant, 0) > folded

    # ------------------------------------------------------------ writes

    def append(
        self, tenant: str, rows: list[ValidEvent]
    ) -> concurrent.futures.Future[AppendResult]:
        return self.append_prepared(tenant, self.prepare(tenant, rows))

    def append_prepared(
        self, tenant: str, batch: PreparedBatch
    ) -> concurrent.futures.Future[AppendResult]:
        if self._closed:
            raise StoreUnavailable("the store is shutting down")
        return self._writer.append(tenant, batch)

    def put_workflow(
        self, tenant: str, workflow_id: str, name: str
    ) -> concurrent.futures.Future[Workflow]:
        future: concurrent.futures.Future[Workflow] = concurrent.futures.Future()
        try:
            with self.transport.unlimited():  # writes are never stopped half way
                self.transport.command(
                    "INSERT INTO workflows SELECT {tenant:String}, {workflow:String}, 1,"
                    " argMaxState({name:String}, now64(6, 'UTC')), now64(6, 'UTC'),"
                    " now64(6, 'UTC')",
                    {"tenant": tenant, "workflow": workflow_id, "name": name},
                )
            self._bump({tenant})
            found = self.workflow(tenant, workflow_id)
            assert found is not None
            future.set_result(found)
        except Exception as exc:
            future.set_exception(exc)
        return future

    def restore_workflow(self, tenant: str, workflow: Workflow) -> None:
        named = workflow.name is not None and workflow.name_ts is not None
        with self.transport.unlimited():  # writes are never stopped half way
            self.transport.command(
                "INSERT INTO workflows SELECT {tenant:String}, {workflow:String}, {named:UInt8},"
                f" argMaxState({{name:String}}, {sql.time_param('name_ts')}),"
                f" {sql.time_param('name_ts')}, {sql.time_param('created')}",
                {
                    "tenant": tenant,
                    "workflow": workflow.workflow_id,
                    "named": int(named),
                    "name": workflow.name or "",
                    # Without a name, its time is the epoch: max() keeps any later one.
                    "name_ts": sql.epoch_us(workflow.name_ts) if named else 0,  # type: ignore[arg-type]
                    "created": sql.epoch_us(workflow.created_at),
                },
            )
        self._bump({tenant})

    # ------------------------------------------------------------ reads

    def _workflows(self, tenant: str, workflow_id: str | None) -> list[Workflow]:
        only = " AND workflow_id = {workflow:String}" if workflow_id is not None else ""
        self._writer.flush(tenant)
        table = self.transport.query(
            _WORKFLOWS.replace("{only}", only), {"tenant": tenant, "workflow": workflow_id}
        )
        return [
            Workflow(wf, name if named else None, name_ts if named else None, created)
            for wf, named, name, name_ts, created in sql.rows(table)
        ]

    def _kept(self, kind: str, tenant: str, compute: Callable[[], _T]) -> _T:
        """``compute()`` for the tenant, kept per data version (embedded: this process
        writes every event and bumps the version after, so a version's answer stays
        right; what answers look up first, on every request)."""
        version = self._versions[tenant]  # before the read: a later write bumps it
        cached = self._kept_answers.get((kind, tenant))
        if cached is not None and cached[0] == version:
            return cast(_T, cached[1])
        value = compute()
        self._kept_answers[(kind, tenant)] = (version, value)
        return value

    def _known_workflows(self, tenant: str) -> dict[str, Workflow]:
        return self._kept(
            "workflows",
            tenant,
            lambda: {w.workflow_id: w for w in self._workflows(tenant, None)},
        )

    def workflows(self, tenant: str) -> list[Workflow]:
        if self.transport.embedded:
            return list(self._known_workflows(tenant).values())
        return self._workflows(tenant, None)

    def workflow(self, tenant: str, workflow_id: str) -> Workflow | None:
        # Every answer about a workflow checks that it exists first: from memory here.
        if self.transport.embedded:
            return self._known_workflows(tenant).get(workflow_id)
        found = self._workflows(tenant, workflow_id)
        return found[0] if found else None

    def data_version(self, tenant: str) -> int:
        return self._versions[tenant]

    def count_events(
        self, tenant: str | None = None, since: datetime | None = None,
        until: datetime | None = None,
    ) -> int:  # fmt: skip
        where = [
            cond
            for cond, value in (
                ("tenant = {tenant:String}", tenant),
                (f"ts >= {sql.time_param('lo')}", since),
                (f"ts <= {sql.time_param('hi')}", until),
            )
            if value is not None
        ]
        params = {
            "tenant": tenant,
            "lo": sql.epoch_us(since) if since else None,
            "hi": sql.epoch_us(until) if until else None,
        }
        self._writer.flush(tenant)
        statement = "SELECT count() FROM events FINAL" + (
            " WHERE " + " AND ".join(where) if where else ""
        )
        return int(self.transport.query(statement, params).column(0)[0].as_py())

    def event_stats(self) -> list[TenantEvents]:
        self._writer.flush()
        table = self.transport.query(
            "SELECT tenant, count(), min(ts), max(ts) FROM events FINAL"
            " GROUP BY tenant ORDER BY tenant"
        )
        return [TenantEvents(*row) for row in sql.rows(table)]

    def activity(self, q: ActivityQuery) -> list[Cells]:
        with self._folded(q.tenant) as folded:
            cache = self.workflow_days
            days = None
            if cache is not None and len(q.workflow_ids) == 1:
                workflow_id = q.workflow_ids[0]

                def days(first: int, last: int) -> Days:
                    assert cache is not None
                    return cache.days(q.tenant, workflow_id, first, last, folded)

            pending = self._pending(q.tenant, folded)
            return activity.activity(self.transport, q, folded, pending, days)

    def customers(self, q: CustomerQuery) -> list[CustomerFacts]:
        with self._folded(q.tenant) as folded:
            return customers.customers(self.transport, q, folded, self._pending(q.tenant, folded))

    def journey_types(self, tenant: str) -> list[str]:
        def compute() -> list[str]:
            with self._folded(tenant) as folded:
                return customers.journey_types(
                    self.transport, tenant, folded, self._pending(tenant, folded)
                )

        # A journey answer without a type looks up the tenant's first one.
        if self.transport.embedded:
            return list(self._kept("journey types", tenant, compute))
        return compute()

    def journeys(self, q: JourneyQuery) -> JourneyFacts:
        with self._folded(q.tenant) as folded:
            return customers.journeys(self.transport, q, folded, self._pending(q.tenant, folded))

    def realtime(self, q: RealtimeQuery) -> RealtimeFacts:
        with self._folded(q.tenant) as folded:
            return realtime.realtime(self.transport, q, folded, self._pending(q.tenant, folded))

    def rows(self, q: RowsQuery, batch_rows: int) -> pa.RecordBatchReader:
        schema = ROW_SCHEMAS[q.kind]
        self._writer.flush(q.tenant)
        params: dict[str, Any] = {
            "tenant": q.tenant,
            # Exports read executions and events only (nothing compaction rewrites), so
            # the watermark need not be held while the rows stream out.
            "folded": self.folder.watermark if self.folder is not None else 0,
            **sql.window_params(q.window),
            **sql.filter_params(q.workflow_ids, q.channels),
        }
        batches = self.transport.stream(exports.ROWS_SQL[q.kind], params, batch_rows)
        return pa.RecordBatchReader.from_batches(
            schema, (_conform(b, schema) for b in batches if b.num_rows)
        )

    def settle(self) -> None:
        """Fold every execution committed so far (answers are exact before, too)."""
        self._writer.flush()
        if self.folder is not None:
            self.folder.fold()

    def ping(self) -> bool:
        try:
            self.transport.query("SELECT 1")
            return True
        except Exception:
            return False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.folder is not None:
            self.folder.close()
        self._writer.close()
        self.transport.close()


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """A batch in the export's schema (dictionary text decoded, zones dropped, widths set)."""
    columns = []
    for field in schema:
        column = batch.column(field.name)
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        if pa.types.is_timestamp(column.type) and column.type.tz is not None:
            column = column.cast(pa.timestamp(column.type.unit))
        columns.append(column.cast(field.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)
