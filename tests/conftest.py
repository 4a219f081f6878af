"""Fixtures: a real app on a real event engine + SQLite in a temporary data directory.

Every test that takes ``settings`` (or ``client``, ``api``, ``engine``) runs once
per engine in ``ENGINES``; tests of one engine's internals live in
``tests/engines/<name>/``. A module that sets ``SHARED_SERVICES = True`` runs
its tests once more with the services several API processes share: metadata
and jobs in PostgreSQL, limits and cache versions in Redis, files in a
directory of their own (servers started by ``tests/servers.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from kaie_analytics.analytics.facts import EventEngine, RowKind, RowsQuery, Window
from kaie_analytics.app import create_app
from kaie_analytics.config import Settings
from kaie_analytics.store.database import Database
from kaie_analytics.store.meta import MetaStore
from servers import PostgresServer, RedisServer, free_port

GENEROUS_LIMITS = ",".join(
    f"{c}=100000/hour" for c in ("realtime", "historical", "reports", "export", "events", "default")
)


class Api:
    """A test client bound to one tenant's key."""

    def __init__(self, client: TestClient, key: str, tenant: str) -> None:
        self.client = client
        self.key = key
        self.tenant = tenant
        self.headers = {"Authorization": f"Bearer {key}"}

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.get(path, headers=self.headers | kw.pop("headers", {}), **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.post(path, headers=self.headers | kw.pop("headers", {}), **kw)

    def put(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.put(path, headers=self.headers | kw.pop("headers", {}), **kw)

    def send(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        """POST events in chunks; every event must be accepted or a duplicate."""
        out = {"accepted": 0, "duplicates": 0, "rejected": 0}
        for i in range(0, len(events), 1000):
            r = self.post("/v1/events", json={"events": events[i : i + 1000]})
            assert r.status_code == 200, r.text
            data = r.json()["data"]
            assert data["rejected"] == 0, data["errors"][:3]
            for k in out:
                out[k] += data[k]
        return out

    def compact(self) -> None:
        self.client.app.state.engine.settle()  # type: ignore[attr-defined]


#: The event engines the suite runs on (``KAIE_EVENTS_BACKEND`` values);
#: ``KAIE_TEST_ENGINES=duckdb`` runs one.
ENGINES = tuple(os.environ.get("KAIE_TEST_ENGINES", "duckdb,chdb").split(","))
_TESTS = Path(__file__).parent


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test of ``settings`` runs on each engine; the tests in
    ``tests/engines/<name>/`` on that engine only; with ``SHARED_SERVICES``, once
    more on the first engine with the shared services."""
    if "events_backend" not in metafunc.fixturenames:
        return
    engines = ENGINES
    parts = metafunc.definition.path.relative_to(_TESTS).parts
    if len(parts) > 2 and parts[0] == "engines":
        engines = (parts[1],)
    if "services" not in metafunc.fixturenames:
        metafunc.parametrize("events_backend", engines)
        return
    combos = [(engine, "embedded") for engine in engines]
    if getattr(metafunc.module, "SHARED_SERVICES", False):
        combos.append((engines[0], "shared"))
    metafunc.parametrize(("events_backend", "services"), combos,
                         ids=[e if s == "embedded" else f"{e}-shared" for e, s in combos])  # fmt: skip


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def shared_services(
    tmp_path: Path, postgres: PostgresServer, redis_server: RedisServer
) -> dict[str, Any]:
    """Settings of the services several processes share, fresh for one test."""
    redis_server.flush()
    return {
        "meta_backend": postgres.new_database(),
        "redis_url": redis_server.url,
        "files_dir": tmp_path / "shared-files",
    }


@pytest.fixture
def settings(
    request: pytest.FixtureRequest, tmp_path: Path, events_backend: str, services: str
) -> Settings:
    shared = request.getfixturevalue("shared_services") if services == "shared" else {}
    return Settings(
        data_dir=tmp_path / "data",
        events_backend=events_backend,
        compact_idle_s=3600,
        compact_after_events=10**9,
        rate_limits=GENEROUS_LIMITS,
        allowed_hosts="testserver",  # the host name of Starlette's test client
        **shared,
    )


def open_meta(settings: Settings) -> MetaStore:
    """The metadata store of ``settings`` (close its ``db`` after use)."""
    return MetaStore(Database.open(settings.meta_backend, settings.meta_db_path))


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def make_key(settings: Settings, tenant: str, scopes: str | None = None) -> str:
    meta = open_meta(settings)
    try:
        if scopes is None:
            return meta.create_key(tenant)
        return meta.create_key(tenant, frozenset(scopes.split(",")))
    finally:
        meta.db.close()


@pytest.fixture
def engine(client: TestClient) -> EventEngine:
    """The app's event engine (``analytics.facts.EventEngine``)."""
    return client.app.state.engine  # type: ignore[attr-defined, no-any-return]


def stored_events(
    engine: EventEngine, tenant: str, kind: RowKind = "events"
) -> list[dict[str, Any]]:
    """Every stored row of ``tenant`` of one export kind (raw ``events`` by default)."""
    window = Window(datetime(1900, 1, 1), datetime(2999, 12, 31))
    reader = engine.rows(RowsQuery(tenant, kind, window), 10_000)
    return [row for batch in reader for row in batch.to_pylist()]


@pytest.fixture
def api(client: TestClient, settings: Settings) -> Api:
    return Api(client, make_key(settings, "acme"), "acme")


@pytest.fixture
def other_api(client: TestClient, settings: Settings) -> Api:
    return Api(client, make_key(settings, "globex"), "globex")


class LiveServer:
    """``kaie-analytics serve`` in a subprocess, on a free port."""

    def __init__(
        self, data_dir: Path, events_backend: str = "duckdb", env: dict[str, str] | None = None
    ) -> None:
        self.data_dir = data_dir
        self.events_backend = events_backend
        #: More ``KAIE_*`` settings for the process.
        self.env = env or {}
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def create_key(self, tenant: str) -> str:
        """An API key for ``tenant``, in the server's metadata database."""
        meta = MetaStore(Database.open(self.env.get("KAIE_META_BACKEND", "sqlite"),
                                       self.data_dir / "meta.sqlite3"))  # fmt: skip
        try:
            return meta.create_key(tenant)
        finally:
            meta.db.close()

    def start(self, log: Path | None = None) -> str:
        """Start it (its JSON log appended to ``log``, if given); return its URL."""
        env = os.environ | {"KAIE_LOG_FORMAT": "json", "KAIE_EVENTS_BACKEND": self.events_backend}
        stderr: Any = subprocess.DEVNULL
        if log is not None:
            stderr = open(log, "ab")  # noqa: SIM115  # the child holds it from here
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kaie_analytics", "serve", "--port", str(self.port),
             "--data-dir", str(self.data_dir)],
            stdout=subprocess.PIPE, stderr=stderr, env=env | self.env,
        )  # fmt: skip
        if log is not None:
            stderr.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self.url
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError("server exited during start")
            time.sleep(0.05)
        raise RuntimeError("server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            if self.proc.stdout:
                self.proc.stdout.close()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stdout:
                self.proc.stdout.close()
            self.proc = None


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path / "live")
    yield server
    server.stop()
