"""How SQL reaches ClickHouse: embedded (chdb) or a server (clickhouse-connect).

The engine's DDL and queries are the same for both; a transport only runs a
statement with bound parameters and moves Arrow tables in and out. Parameters
are ClickHouse's ``{name:Type}`` placeholders, bound by the server (never
spliced into the SQL text); values are ``str``, ``int``, ``None`` or lists of
them, and every time is passed as ``Int64`` microseconds since the epoch (a
driver's datetime formatting may drop the microseconds).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import io
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import pyarrow as pa

from kaie_analytics.errors import QueryTimeout, StoreInUse, StoreUnavailable

Params = Mapping[str, Any]

#: Session settings every statement runs with: an outer join fills a missing
#: side with NULL (as SQL does) rather than the type's default, and ``grouping()``
#: sets a column's bit when it is not in the grouping set (as SQL does).
SETTINGS: dict[str, int | str | float] = {
    "join_use_nulls": 1,
    "force_grouping_standard_compatibility": 1,
}
#: ClickHouse's error code for a statement stopped at ``max_execution_time``.
TIMEOUT_EXCEEDED = 159


def settings(query_timeout_s: float) -> dict[str, int | str | float]:
    """The session settings, with the longest time a statement may run."""
    return SETTINGS | {"max_execution_time": query_timeout_s}


@contextlib.contextmanager
def translated(query_timeout_s: float) -> Iterator[None]:
    """ClickHouse's time limit as ``QueryTimeout``; other errors as they are."""
    try:
        yield
    except Exception as exc:
        if (
            f"Code: {TIMEOUT_EXCEEDED}." in str(exc)
            or getattr(exc, "code", None) == TIMEOUT_EXCEEDED
        ):
            raise QueryTimeout(f"query exceeded {query_timeout_s:g} s") from None
        raise


class Transport(Protocol):
    #: Whether this is the embedded engine (one process owns the data directory).
    embedded: bool

    def command(self, sql: str, params: Params | None = None) -> None: ...

    def query(self, sql: str, params: Params | None = None) -> pa.Table: ...

    def stream(self, sql: str, params: Params | None, batch_rows: int) -> Iterator[pa.RecordBatch]:
        """The rows in batches of at most ``batch_rows``, read as they are consumed."""

    def insert(self, table: str, rows: pa.Table) -> None:
        """``rows`` into ``table``, without the query time limit: on chdb 4.4, an insert
        stopped at it returns as if it had succeeded, with none of its rows written
        (stopped while they were read) or without what views derive from them
        (stopped in a view). A copy of 84M events lost a batch of 20,000 this way
        on a loaded machine."""

    def query_all(self, statements: Sequence[tuple[str, Params]]) -> list[pa.Table]:
        """Independent statements side by side (each on its own connection)."""

    def unlimited(self) -> contextlib.AbstractContextManager[None]:
        """Within it, this thread's statements run without the query time limit: the
        engine's own work (folds, upgrades, repairs), which no request waits for and
        which must finish however much has come in since it last ran."""

    def close(self) -> None: ...


class _SideBySide:
    """``query_all`` for a transport whose connections are per thread."""

    _pool: concurrent.futures.ThreadPoolExecutor

    def query(self, sql: str, params: Params | None = None) -> pa.Table:
        raise NotImplementedError

    def query_all(self, statements: Sequence[tuple[str, Params]]) -> list[pa.Table]:
        if len(statements) < 2:
            return [self.query(sql, params) for sql, params in statements]
        futures = [self._pool.submit(self.query, sql, params) for sql, params in statements]
        return [f.result() for f in futures]


def _quoted(value: Any) -> str:
    """A value as a literal inside a composite parameter (an array element)."""
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_quoted(v) for v in value) + "]"
    raise TypeError(f"unsupported parameter value {type(value).__name__}")


def encode_param(value: Any) -> str:
    """A parameter value in ClickHouse's escaped text form (what chdb binds)."""
    if value is None:
        return "\\N"
    if isinstance(value, str):
        return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
    return _quoted(value)


class ChdbTransport(_SideBySide):
    """ClickHouse embedded in this process, its data in ``path``.

    A chdb connection runs one statement at a time, so each thread gets its own
    connection to the same data (they run side by side and see each other's
    inserts).
    """

    embedded = True

    def __init__(self, path: Path, *, query_timeout_s: float = 10.0) -> None:
        import chdb

        path.mkdir(parents=True, exist_ok=True)
        self.ensure_free(path)
        self._chdb: Any = chdb  # untyped
        self.path = path
        self._path = str(path)
        self.query_timeout_s = query_timeout_s
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False
        self._pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="kaie-ch-read")
        self._connection()  # fail now, not at the first query

    def _connection(self) -> Any:
        con = getattr(self._local, "con", None)
        if con is None:
            if self._closed:
                raise StoreUnavailable("the store is shutting down")
            con = self._open(0 if getattr(self._local, "unlimited", False) else None)
            self._local.con = con
            with self._lock:
                self._all.append(con)
        return con

    def _open(self, query_timeout_s: float | None = None) -> Any:
        con = self._chdb.connect(self._path)
        limit = self.query_timeout_s if query_timeout_s is None else query_timeout_s
        for name, value in settings(limit).items():
            con.query(f"SET {name} = {value}")
        return con

    @contextlib.contextmanager
    def unlimited(self) -> Iterator[None]:
        if getattr(self._local, "unlimited", False):
            yield
            return
        self._local.unlimited = True
        self._connection().query("SET max_execution_time = 0")
        try:
            yield
        finally:
            self._local.unlimited = False
            con = getattr(self._local, "con", None)  # None: dropped after an error
            if con is not None:
                con.query(f"SET max_execution_time = {self.query_timeout_s}")

    @staticmethod
    def ensure_free(path: Path) -> None:
        """Raise ``StoreInUse`` if another process has ClickHouse open on ``path``.

        ClickHouse holds an exclusive ``flock`` on its ``status`` file, which
        names the process, while it runs.
        """
        status = path / "status"
        try:
            f = status.open("rb")
        except FileNotFoundError:
            return
        with f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                found = re.search(rb"PID: (\d+)", f.read(200))
                pid = int(found.group(1)) if found else None
                raise StoreInUse(f"{path} is in use by another process", pid) from None
            fcntl.flock(f, fcntl.LOCK_UN)

    @staticmethod
    def _params(params: Params | None) -> dict[str, str] | None:
        return {k: encode_param(v) for k, v in params.items()} if params else None

    def _run(self, sql: str, fmt: str, params: Params | None) -> Any:
        con = self._connection()
        with translated(self.query_timeout_s):
            try:
                return con.query(sql, fmt, params=self._params(params))
            except Exception:
                # After an error (a timeout among them) chdb's next answer on the same
                # connection can come back corrupt: start afresh.
                self._local.con = None
                with self._lock:
                    if con in self._all:
                        self._all.remove(con)
                con.close()
                raise

    def command(self, sql: str, params: Params | None = None) -> None:
        self._run(sql, "Null", params)

    def query(self, sql: str, params: Params | None = None) -> pa.Table:
        return self._run(sql, "ArrowTable", params)

    def stream(self, sql: str, params: Params | None, batch_rows: int) -> Iterator[pa.RecordBatch]:
        # A connection of its own: the stream stays open while it is read. Exports
        # are bounded by the job's time limit, not by the query's (0: none).
        con = self._open(query_timeout_s=0)
        try:
            result = con.send_query(sql, "Arrow", params=self._params(params))
            try:
                yield from result.record_batch(rows_per_batch=batch_rows)
            finally:
                result.close()
        finally:
            con.close()

    def insert(self, table: str, rows: pa.Table) -> None:
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, rows.schema) as writer:
            writer.write_table(rows)
        with self.unlimited():  # see ``Transport.insert``
            inserter = self._connection().send_insert(f"INSERT INTO {table}", "ArrowStream")
            inserter.append(sink.getvalue())
            inserter.finish()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            self._closed = True
            cons, self._all = self._all, []
        for con in cons:
            con.close()


class ServerTransport(_SideBySide):
    """A ClickHouse server or cluster over HTTP (``clickhouse://USER:PASSWORD@HOST:8123/DB``).

    clickhouse-connect's clients are not shared between threads: each thread
    gets its own (they share one connection pool).
    """

    embedded = False

    def __init__(
        self, url: str, *, query_timeout_s: float = 10.0, cluster: str | None = None
    ) -> None:
        import clickhouse_connect

        parts = urlsplit(url)
        self._options: dict[str, Any] = {
            "host": parts.hostname or "localhost",
            "port": parts.port or 8123,
            "username": unquote(parts.username or "default"),
            "password": unquote(parts.password or ""),
            "database": parts.path.strip("/") or "default",
            "secure": parts.scheme in ("clickhouses", "https"),
            "settings": settings(query_timeout_s)
            # On a cluster an insert returns once the shards have it, not once queued.
            | ({"distributed_foreground_insert": 1} if cluster else {}),
            "autogenerate_session_id": False,
        }
        self._connect = clickhouse_connect.get_client
        self.query_timeout_s = query_timeout_s
        self._local = threading.local()
        self._pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="kaie-ch-read")
        self._client()

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._connect(**self._options)
        return client

    def _settings(self) -> dict[str, int]:
        return {"max_execution_time": 0} if getattr(self._local, "unlimited", False) else {}

    @contextlib.contextmanager
    def unlimited(self) -> Iterator[None]:
        before = getattr(self._local, "unlimited", False)
        self._local.unlimited = True
        try:
            yield
        finally:
            self._local.unlimited = before

    def command(self, sql: str, params: Params | None = None) -> None:
        with translated(self.query_timeout_s):
            self._client().command(sql, parameters=dict(params or {}), settings=self._settings())

    def query(self, sql: str, params: Params | None = None) -> pa.Table:
        with translated(self.query_timeout_s):
            return self._client().query_arrow(
                sql, parameters=dict(params or {}), settings=self._settings()
            )

    def stream(self, sql: str, params: Params | None, batch_rows: int) -> Iterator[pa.RecordBatch]:
        with self._client().query_arrow_stream(
            sql, parameters=dict(params or {}), settings={"max_execution_time": 0}
        ) as stream:
            for batch in stream:
                yield from pa.Table.from_batches([batch]).to_batches(batch_rows)

    def insert(self, table: str, rows: pa.Table) -> None:
        # See ``Transport.insert``.
        self._client().insert_arrow(table, rows, settings={"max_execution_time": 0})

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        client = getattr(self._local, "client", None)
        if client is not None:
            client.close()


def chdb_path(data_dir: Path) -> Path:
    """Where embedded ClickHouse keeps its data in the data directory."""
    return data_dir / "clickhouse"


def open_transport(
    backend: str, data_dir: Path, *, query_timeout_s: float = 10.0, cluster: str | None = None
) -> Transport:
    """``chdb`` (embedded, in ``data_dir/clickhouse``) or a ``clickhouse://`` URL."""
    if backend == "chdb":
        return ChdbTransport(chdb_path(data_dir), query_timeout_s=query_timeout_s)
    if backend.startswith(("clickhouse://", "clickhouses://")):
        return ServerTransport(backend, query_timeout_s=query_timeout_s, cluster=cluster)
    raise ValueError(f"not a ClickHouse backend: {backend!r}")
