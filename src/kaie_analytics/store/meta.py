"""Metadata store on SQLite: tenants and API keys.

SQLite in WAL mode lets CLI commands (``keys create``, ``keys revoke``) write
while the server runs and reads. Keys are stored only as SHA-256 hashes; the
secret is shown once, when it is created.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from kaie_analytics.store.sqlite import SqliteDatabase

SCOPES = ("events:write", "analytics:read", "reports:write")
KEY_PREFIX = "kaie_"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    name TEXT PRIMARY KEY,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    prefix TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants(name),
    key_hash TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
"""


@dataclass(frozen=True, slots=True)
class ApiKey:
    prefix: str
    tenant: str
    scopes: frozenset[str]
    created_at: str
    revoked_at: str | None


class InvalidScopes(ValueError):
    pass


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_scopes(text: str) -> frozenset[str]:
    scopes = frozenset(s.strip() for s in text.split(",") if s.strip())
    unknown = sorted(scopes - set(SCOPES))
    if unknown or not scopes:
        raise InvalidScopes(
            f"unknown scope(s) {', '.join(unknown) or '(none given)'}; valid: {', '.join(SCOPES)}"
        )
    return scopes


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class MetaStore(SqliteDatabase):
    """Tenants and API keys. Thread-safe: one connection per thread."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, _SCHEMA)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    # tenants -------------------------------------------------------------

    # keys ----------------------------------------------------------------

    def create_key(self, tenant: str, scopes: frozenset[str] = frozenset(SCOPES)) -> str:
        """Create the tenant if new and a key for it; return the secret (shown once)."""
        prefix = KEY_PREFIX + secrets.token_hex(4)
        key = f"{prefix}_{secrets.token_urlsafe(24)}"
        with self._tx() as con:
            con.execute(
                "INSERT OR IGNORE INTO tenants(name, created_at) VALUES (?, ?)", (tenant, _now())
            )
            con.execute(
                "INSERT INTO api_keys(prefix, tenant, key_hash, scopes, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (prefix, tenant, hash_key(key), ",".join(sorted(scopes)), _now()),
            )
        return key

    def has_keys(self) -> bool:
        return self._con().execute("SELECT 1 FROM api_keys LIMIT 1").fetchone() is not None

    def list_keys(self) -> list[ApiKey]:
        rows = self._con().execute(
            "SELECT prefix, tenant, scopes, created_at, revoked_at FROM api_keys"
            " ORDER BY tenant, created_at"
        )
        return [ApiKey(p, t, frozenset(s.split(",")), c, r) for p, t, s, c, r in rows]

    def revoke_key(self, prefix: str) -> int:
        """Revoke every active key whose prefix starts with ``prefix``; return how many."""
        with self._tx() as con:
            matches = con.execute(
                "SELECT prefix FROM api_keys WHERE revoked_at IS NULL AND prefix LIKE ? || '%'",
                (prefix,),
            ).fetchall()
            if len(matches) > 1:
                raise ValueError(f"prefix {prefix!r} matches {len(matches)} keys; give more of it")
            if matches:
                con.execute(
                    "UPDATE api_keys SET revoked_at = ? WHERE prefix = ?", (_now(), matches[0][0])
                )
        return len(matches)

    def key_is_active(self, prefix: str) -> bool:
        row = (
            self._con()
            .execute("SELECT revoked_at FROM api_keys WHERE prefix = ?", (prefix,))
            .fetchone()
        )
        return row is not None and row[0] is None

    def authenticate(self, key: str) -> ApiKey | None:
        """The active key record for a full secret, or None."""
        prefix = "_".join(key.split("_", 2)[:2]) if key.startswith(KEY_PREFIX) else ""
        row = (
            self._con()
            .execute(
                "SELECT prefix, tenant, key_hash, scopes, created_at, revoked_at FROM api_keys"
                " WHERE prefix = ?",
                (prefix,),
            )
            .fetchone()
        )
        if row is None or row[5] is not None:
            return None
        if not hmac.compare_digest(row[2], hash_key(key)):
            return None
        return ApiKey(row[0], row[1], frozenset(row[3].split(",")), row[4], row[5])
