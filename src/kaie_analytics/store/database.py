"""The metadata database: SQLite in the data directory, or a shared PostgreSQL.

Both are reached through SQLAlchemy Core, so every store writes its SQL once:
the tables are described in ``store.schema``, changed only by the versioned
migrations of ``store.migrations``, which ``Database`` applies when it opens
(safely when several processes start at once).

SQLite runs in WAL mode with full sync, and a write transaction takes the
write lock when it begins (``BEGIN IMMEDIATE``), so CLI commands can write
while the server runs. PostgreSQL is used through psycopg 3, with a pool of
connections checked before use, so a restarted server is reconnected to.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from kaie_analytics.config import is_postgres_url
from kaie_analytics.errors import StoreUnavailable


def _sqlite_engine(path: Path) -> Engine:
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        f"sqlite:///{path}",
        connect_args={"timeout": 30, "check_same_thread": False},
        pool_size=8,
        max_overflow=8,
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_con: sqlite3.Connection, _record: Any) -> None:
        dbapi_con.isolation_level = None  # transactions are begun below, not by the driver
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON"):
            dbapi_con.execute(f"PRAGMA {pragma}")

    @event.listens_for(engine, "begin")
    def _begin(con: Connection) -> None:
        write = con.get_execution_options().get("write", False)
        con.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _postgres_engine(url: str) -> Engine:
    rest = url.split("://", 1)[1]
    return sa.create_engine(
        "postgresql+psycopg://" + rest,
        pool_size=5,
        max_overflow=10,
        pool_pre_ping=True,  # a connection dropped by a server restart is replaced
        pool_timeout=10,
        connect_args={"connect_timeout": 5, "application_name": "kaie-analytics"},
    )


def insert_new(con: Connection, table: sa.Table, **values: Any) -> None:
    """Insert a row unless one with the same key exists (also when another process
    inserts it at the same moment)."""
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = postgresql if con.dialect.name == "postgresql" else sqlite
    con.execute(dialect.insert(table).values(**values).on_conflict_do_nothing())


class Database:
    """One metadata database and its connection pool, migrated to this version."""

    def __init__(self, engine: Engine) -> None:
        from kaie_analytics.store import migrations

        self.engine = engine
        #: Whether other processes may use it at the same time (PostgreSQL).
        self.shared = engine.dialect.name == "postgresql"
        #: Where it is, for messages (never the password).
        self.where = engine.url.set(drivername=engine.dialect.name).render_as_string(
            hide_password=True
        )
        try:
            with self.writing() as con:
                #: The migrations this opening applied (none when another process had).
                self.applied = migrations.apply(con)
        except BaseException:
            engine.dispose()
            raise

    @classmethod
    def open(cls, backend: str, sqlite_path: Path) -> Database:
        """``backend`` is ``sqlite`` (the file ``sqlite_path``) or a PostgreSQL URL."""
        if is_postgres_url(backend):
            return cls(_postgres_engine(backend))
        return cls(_sqlite_engine(sqlite_path))

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """A transaction that writes: committed at the end, rolled back on error."""
        with self._unavailable_as_503(), self.engine.connect() as con:
            con = con.execution_options(write=True)
            with con.begin():
                yield con

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        with self._unavailable_as_503(), self.engine.connect() as con, con.begin():
            yield con

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _unavailable_as_503(self) -> Iterator[None]:
        """A database that cannot be reached is ``503 STORE_UNAVAILABLE``, not a 500."""
        try:
            yield
        except (sa.exc.OperationalError, sa.exc.TimeoutError) as exc:
            if isinstance(getattr(exc, "orig", None), sqlite3.OperationalError):
                raise  # a SQLite file error is a bug or a full disk, not an outage
            raise StoreUnavailable(
                f"the metadata database (KAIE_META_BACKEND, {self.where}) cannot be reached;"
                " try again shortly"
            ) from exc
