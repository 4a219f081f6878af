"""Tenants and API keys, in the metadata database (SQLite or PostgreSQL).

Keys are stored only as SHA-256 hashes; the secret is shown once, when it is
created. Lookups are cached per process for a few seconds (``auth.KeyCache``),
which bounds how long a revoked key still works on any process.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from kaie_analytics.store.database import Database, insert_new
from kaie_analytics.store.schema import api_keys, tenants

SCOPES = ("events:write", "analytics:read", "reports:write")
KEY_PREFIX = "kaie_"


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


def _record(row: Any) -> ApiKey:  # a row of _KEY_COLUMNS
    return ApiKey(row.prefix, row.tenant, frozenset(row.scopes.split(",")), row.created_at,
                  row.revoked_at)  # fmt: skip


_KEY_COLUMNS = (api_keys.c.prefix, api_keys.c.tenant, api_keys.c.scopes, api_keys.c.created_at,
                api_keys.c.revoked_at)  # fmt: skip


class MetaStore:
    """Tenants and API keys. Thread-safe (a pool of connections)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create_key(self, tenant: str, scopes: frozenset[str] = frozenset(SCOPES)) -> str:
        """Create the tenant if new and a key for it; return the secret (shown once)."""
        prefix = KEY_PREFIX + secrets.token_hex(4)
        key = f"{prefix}_{secrets.token_urlsafe(24)}"
        with self.db.writing() as con:
            insert_new(con, tenants, name=tenant, created_at=_now())
            con.execute(
                api_keys.insert().values(prefix=prefix, tenant=tenant, key_hash=hash_key(key),
                                         scopes=",".join(sorted(scopes)), created_at=_now())
            )  # fmt: skip
        return key

    def has_keys(self) -> bool:
        with self.db.reading() as con:
            return con.execute(sa.select(api_keys.c.prefix).limit(1)).first() is not None

    def list_keys(self) -> list[ApiKey]:
        query = sa.select(*_KEY_COLUMNS).order_by(api_keys.c.tenant, api_keys.c.created_at)
        with self.db.reading() as con:
            return [_record(row) for row in con.execute(query)]

    def revoke_key(self, prefix: str) -> int:
        """Revoke every active key whose prefix starts with ``prefix``; return how many."""
        with self.db.writing() as con:
            matches = con.execute(
                sa.select(api_keys.c.prefix).where(
                    api_keys.c.revoked_at.is_(None),
                    api_keys.c.prefix.startswith(prefix, autoescape=True),
                )
            ).scalars().all()  # fmt: skip
            if len(matches) > 1:
                raise ValueError(f"prefix {prefix!r} matches {len(matches)} keys; give more of it")
            if matches:
                con.execute(
                    api_keys.update()
                    .where(api_keys.c.prefix == matches[0])
                    .values(revoked_at=_now())
                )
        return len(matches)

    def key_is_active(self, prefix: str) -> bool:
        with self.db.reading() as con:
            row = con.execute(
                sa.select(api_keys.c.revoked_at).where(api_keys.c.prefix == prefix)
            ).first()
        return row is not None and row.revoked_at is None

    def authenticate(self, key: str) -> ApiKey | None:
        """The active key record for a full secret, or None."""
        prefix = "_".join(key.split("_", 2)[:2]) if key.startswith(KEY_PREFIX) else ""
        with self.db.reading() as con:
            row = con.execute(
                sa.select(*_KEY_COLUMNS, api_keys.c.key_hash).where(api_keys.c.prefix == prefix)
            ).first()
        if row is None or row.revoked_at is not None:
            return None
        if not hmac.compare_digest(row.key_hash, hash_key(key)):
            return None
        return _record(row)
