"""The shared services themselves: migrations, moving metadata, and outages of
PostgreSQL and Redis (``503 STORE_UNAVAILABLE``, then recovery by itself)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from conftest import GENEROUS_LIMITS, make_key
from kaie_analytics.app import create_app
from kaie_analytics.config import Settings
from kaie_analytics.store import schema
from kaie_analytics.store.database import Database
from kaie_analytics.store.jobs import JobStore
from kaie_analytics.store.meta import MetaStore
from kaie_analytics.store.migrations import LATEST, NewerSchema
from servers import PostgresServer, RedisServer

#: The metadata database of the versions before migrations (what their SQLite files hold).
OLD_SCHEMA = """
CREATE TABLE tenants (name TEXT PRIMARY KEY, created_at TEXT NOT NULL);
CREATE TABLE api_keys (prefix TEXT PRIMARY KEY, tenant TEXT NOT NULL REFERENCES tenants(name),
    key_hash TEXT NOT NULL, scopes TEXT NOT NULL, created_at TEXT NOT NULL, revoked_at TEXT);
CREATE TABLE jobs (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, kind TEXT NOT NULL, name TEXT,
    params TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL, started_at TEXT, completed_at TEXT, expires_at TEXT,
    estimated_completion TEXT NOT NULL, error TEXT, file_name TEXT, content_type TEXT,
    rows INTEGER);
INSERT INTO jobs(id, tenant, kind, params, state, attempts, created_at, estimated_completion)
    VALUES ('export-old', 'acme', 'export', '{}', 'running', 1, '2026-11-01T10:00:00+00:00',
            '2026-11-01T10:00:01+00:00');
"""


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kaie_analytics", *args], capture_output=True,
                          text=True, timeout=120, env=os.environ | env)  # fmt: skip


def test_an_older_sqlite_database_is_adopted_and_its_cut_off_job_runs_again(
    tmp_path: Path,
) -> None:
    path = tmp_path / "meta.sqlite3"
    con = sqlite3.connect(path)
    con.executescript(OLD_SCHEMA)
    con.close()
    jobs = JobStore(Database.open("sqlite", path))
    try:
        assert jobs.db.applied == list(range(1, LATEST + 1))
        assert jobs.expire_all_leases() == 1  # what `serve` does first on its own database
        job = jobs.claim("me", max_per_tenant=1, lease_s=30)
        assert job is not None and job.id == "export-old" and job.attempts == 2
    finally:
        jobs.db.close()
    again = Database.open("sqlite", path)
    assert again.applied == []
    again.close()


def test_several_processes_migrating_at_once_apply_each_migration_once(
    postgres: PostgresServer,
) -> None:
    url = postgres.new_database()
    results: list[object] = []

    def open_it() -> None:
        try:
            db = Database.open(url, Path("unused"))
            results.append(db.applied)
            db.close()
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results, key=len) == [[]] * 5 + [list(range(1, LATEST + 1))], results
    db = Database.open(url, Path("unused"))
    with db.reading() as con:
        versions = con.execute(sa.select(schema.schema_migrations.c.version)).scalars().all()
    assert sorted(versions) == list(range(1, LATEST + 1))
    # A database a newer version migrated is refused, not misread.
    with db.writing() as con:
        con.execute(schema.schema_migrations.insert().values(
            version=LATEST + 1, description="from the future", applied_at="2030-01-01"))  # fmt: skip
    db.close()
    with pytest.raises(NewerSchema):
        Database.open(url, Path("unused"))
    r = cli("migrate", env={"KAIE_META_BACKEND": url})
    assert r.returncode == 2 and "upgrade kaie-analytics" in r.stderr and r.stdout == ""


def test_migrate_and_copy_meta_move_an_embedded_deployment(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    url = postgres.new_database()
    data = str(tmp_path / "d")
    r = cli("migrate", "--data-dir", data, env={"KAIE_META_BACKEND": url})
    assert r.returncode == 0 and f"schema version {LATEST}" in r.stdout, r.stderr
    assert "postgres@127.0.0.1" in r.stdout
    r = cli("migrate", "--data-dir", data, env={"KAIE_META_BACKEND": url})
    assert "already up to date" in r.stdout
    key = cli("keys", "create", "--tenant", "acme", "--data-dir", data, env={}).stdout.split()[-1]
    revoked = cli("keys", "create", "--tenant", "globex", "--data-dir", data, env={}).stdout
    prefix = "_".join(revoked.split()[-1].split("_")[:2])
    assert cli("keys", "revoke", prefix, "--data-dir", data, env={}).returncode == 0
    for _ in range(2):  # running it again keeps what the target has
        r = cli("copy-meta", "--to", url, "--data-dir", data, env={})
        assert r.returncode == 0, r.stderr
        for part in ("2 tenants", "2 api_keys", "0 jobs", "copied to postgresql://postgres@"):
            assert part in r.stdout
    meta = MetaStore(Database.open(url, Path("unused")))
    try:
        found = meta.authenticate(key)
        assert found is not None and found.tenant == "acme"
        assert [k.revoked_at is not None for k in meta.list_keys()] == [False, True]
    finally:
        meta.db.close()


def test_an_unreachable_metadata_database_is_one_line(tmp_path: Path) -> None:
    r = cli("keys", "list", "--data-dir", str(tmp_path),
            env={"KAIE_META_BACKEND": "postgresql://u:secret@127.0.0.1:1/db"})  # fmt: skip
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert "127.0.0.1:1" in r.stderr and "secret" not in r.stderr


@pytest.fixture
def shared_client(tmp_path: Path, shared_services: dict[str, object]) -> TestClient:
    settings = Settings(data_dir=tmp_path / "d", rate_limits=GENEROUS_LIMITS, **shared_services)  # type: ignore[arg-type]
    with TestClient(create_app(settings)) as c:
        c.headers["Authorization"] = f"Bearer {make_key(settings, 'acme')}"
        yield c


def _status(client: TestClient, path: str) -> tuple[int, str | None]:
    r = client.get(path)
    return r.status_code, r.json().get("error", {}).get("code") if r.status_code != 200 else None


def _recovers(client: TestClient, path: str, within_s: float, what: str) -> None:
    """``path`` answers 200 again by itself, within ``within_s`` of ``what`` coming back."""
    deadline = time.monotonic() + within_s
    while _status(client, path)[0] != 200:
        assert time.monotonic() < deadline, f"did not recover after {what} came back"
        time.sleep(0.2)


def test_redis_down_is_503_and_recovers_by_itself(
    shared_client: TestClient, redis_server: RedisServer
) -> None:
    assert _status(shared_client, "/v1/workflows") == (200, None)
    redis_server.pause()
    try:
        started = time.monotonic()
        assert _status(shared_client, "/v1/workflows") == (503, "STORE_UNAVAILABLE")
        assert time.monotonic() - started < 5  # bounded by the Redis timeouts, never hung
        assert shared_client.get("/readyz").status_code == 503
        assert shared_client.get("/healthz").status_code == 200  # the process itself is alive
    finally:
        redis_server.resume()
    _recovers(shared_client, "/v1/workflows", 10, "Redis")
    assert shared_client.get("/readyz").status_code == 200


def test_postgresql_down_is_503_and_recovers_by_itself(
    shared_client: TestClient, postgres: PostgresServer
) -> None:
    assert _status(shared_client, "/v1/analytics/reports") == (200, None)
    postgres.interrupt()
    try:
        # The key is still trusted for a moment (KAIE_KEY_CACHE_TTL_S); the jobs are not.
        assert _status(shared_client, "/v1/analytics/reports") == (503, "STORE_UNAVAILABLE")
        assert shared_client.get("/readyz").status_code == 503
    finally:
        postgres.resume()
    _recovers(shared_client, "/v1/analytics/reports", 15, "PostgreSQL")


def test_a_command_that_wrote_events_makes_cached_answers_stale(
    shared_client: TestClient, shared_services: dict[str, object]
) -> None:
    """``ingest`` straight into a shared store (or ``copy-events``) bumps the version."""
    from kaie_analytics.shared_state import bump_from_cli

    event = {"id": "e1", "type": "execution.started", "timestamp": "2024-01-10T10:00:00Z",
             "workflow_id": "wf", "execution_id": "x1", "channel": "sms"}  # fmt: skip
    assert shared_client.post("/v1/events", json={"events": [event]}).status_code == 200
    path, q = "/v1/analytics/workflows/wf", {"start_date": "2024-01-01", "end_date": "2024-01-31"}
    assert shared_client.get(path, params=q).headers["X-Cache"] == "miss"
    assert shared_client.get(path, params=q).headers["X-Cache"] == "hit"
    bump_from_cli(str(shared_services["redis_url"]), ["globex"])  # another tenant: still valid
    assert shared_client.get(path, params=q).headers["X-Cache"] == "hit"
    bump_from_cli(str(shared_services["redis_url"]), ["acme"])
    assert shared_client.get(path, params=q).headers["X-Cache"] == "miss"
