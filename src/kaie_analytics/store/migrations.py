"""Versioned changes to the metadata tables, applied in order, each exactly once.

Each migration is plain SQL that SQLite and PostgreSQL both accept. They run in
one transaction that first takes a lock (PostgreSQL: an advisory lock; SQLite:
the write lock), so when several processes start at once one applies them and
the others find them applied. A database migrated by a newer version is
refused rather than misread.

Version 1 is the schema of the versions before migrations existed, written
with ``IF NOT EXISTS`` so that their databases are adopted as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from kaie_analytics.store.schema import schema_migrations

#: Any fixed number: the advisory lock all processes of this service agree on.
_LOCK_KEY = 0x6B616965  # "kaie"


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS = (
    Migration(1, "tenants, API keys and jobs", (
        "CREATE TABLE IF NOT EXISTS tenants (name TEXT PRIMARY KEY, created_at TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS api_keys (prefix TEXT PRIMARY KEY,"
        " tenant TEXT NOT NULL REFERENCES tenants(name), key_hash TEXT NOT NULL,"
        " scopes TEXT NOT NULL, created_at TEXT NOT NULL, revoked_at TEXT)",
        "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, tenant TEXT NOT NULL,"
        " kind TEXT NOT NULL, name TEXT, params TEXT NOT NULL, state TEXT NOT NULL,"
        " attempts INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL, started_at TEXT,"
        " completed_at TEXT, expires_at TEXT, estimated_completion TEXT NOT NULL, error TEXT,"
        " file_name TEXT, content_type TEXT, rows INTEGER)",
        "CREATE INDEX IF NOT EXISTS jobs_tenant ON jobs(tenant, kind, created_at)",
        "CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, created_at)",
    )),
    Migration(2, "job leases, so that a job belongs to no one process", (
        "ALTER TABLE jobs ADD COLUMN lease_owner TEXT",
        "ALTER TABLE jobs ADD COLUMN lease_expires_at TEXT",
    )),
)  # fmt: skip

LATEST = MIGRATIONS[-1].version


class NewerSchema(RuntimeError):
    """The metadata database was migrated by a newer version of the service."""


def apply(con: Connection) -> list[int]:
    """Apply the migrations ``con``'s database lacks (``con`` is in a write transaction);
    return their versions."""
    if con.dialect.name == "postgresql":
        con.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    schema_migrations.create(con, checkfirst=True)
    done = set(con.execute(sa.select(schema_migrations.c.version)).scalars())
    if done and max(done) > LATEST:
        raise NewerSchema(
            f"the metadata database is at schema version {max(done)}, newer than this"
            f" version of kaie-analytics knows ({LATEST}); upgrade kaie-analytics"
        )
    applied = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        for statement in migration.statements:
            con.execute(sa.text(statement))
        con.execute(
            schema_migrations.insert().values(
                version=migration.version,
                description=migration.description,
                applied_at=datetime.now(UTC).isoformat(timespec="seconds"),
            )
        )
        applied.append(migration.version)
    return applied
