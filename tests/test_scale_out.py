"""Two ``serve`` processes sharing PostgreSQL, Redis, a files directory and the secret.

What spec/OPERATIONS.md's scale-out section promises, through real HTTP. The
events engine is the one thing not shared here: a shared events store is a
ClickHouse server, which cannot run on these machines. So each process has its
own embedded DuckDB, and every event a job or an answer needs is ingested
into both (the same events, so both compute the same numbers).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from conftest import LiveServer
from factories import iso
from servers import PostgresServer, RedisServer

pytestmark = pytest.mark.slow

START = datetime(2024, 3, 4, tzinfo=UTC)
END = datetime(2024, 3, 10, 23, 59, 59, 999999, tzinfo=UTC)
Q = {"start_date": "2024-03-04", "end_date": "2024-03-10"}
HISTORICAL_LIMIT = 8
EXECUTIONS = 150_000  # enough for an export to take a few seconds


class Cluster:
    def __init__(self, base: Path, postgres: PostgresServer, redis: RedisServer) -> None:
        self.base = base
        self.env = {
            "KAIE_META_BACKEND": postgres.new_database(),
            "KAIE_REDIS_URL": redis.url,
            "KAIE_FILES_DIR": str(base / "shared-files"),
            "KAIE_SECRET_KEY": "s" * 32,
            "KAIE_JOB_LEASE_S": "3",
            "KAIE_JOB_WORKERS": "2",
            "KAIE_RATE_LIMITS": f"historical={HISTORICAL_LIMIT}/hour,export=1000/hour,"
            "events=100000/hour,realtime=100000/hour,reports=1000/hour,default=100000/hour",
        }
        self.servers = [LiveServer(base / name, env=self.env) for name in ("a", "b")]
        self.logs = [base / f"{name}.log" for name in ("a", "b")]

    def cli(self, *args: str, data_dir: Path | None = None) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "kaie_analytics", *args, "--data-dir",
             str(data_dir or self.base / "cli")],
            capture_output=True, text=True, timeout=300, env=os.environ | self.env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    def new_key(self, tenant: str = "acme") -> dict[str, str]:
        key = self.cli("keys", "create", "--tenant", tenant).strip().splitlines()[-1]
        return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer, redis_server: RedisServer
) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("cluster")
    cluster = Cluster(base, postgres, redis_server)
    rng = random.Random(5)
    lines = []
    for i in range(EXECUTIONS):
        t = START + timedelta(seconds=rng.uniform(0, 6 * 86400))
        lines.append(json.dumps({"id": f"e{i}", "type": "execution.started", "timestamp": iso(t),
                                 "workflow_id": "wf", "execution_id": f"x{i}", "channel": "sms"}))  # fmt: skip
    events = base / "events.ndjson"
    events.write_text("\n".join(lines))
    for server in cluster.servers:  # the same events in each process's own store
        cluster.cli("ingest", str(events), "--tenant", "acme", data_dir=server.data_dir)
    for server, log in zip(cluster.servers, cluster.logs, strict=True):
        server.start(log=log)
    yield cluster
    for server in cluster.servers:
        server.stop()


def test_a_key_made_once_works_on_both(cluster: Cluster) -> None:
    h = cluster.new_key()
    for server in cluster.servers:
        r = httpx.get(server.url + "/v1/workflows", headers=h)
        assert r.status_code == 200 and [w["workflow_id"] for w in r.json()["data"]] == ["wf"]


def test_a_rate_limit_counts_the_requests_to_both(cluster: Cluster) -> None:
    h = cluster.new_key()
    a, b = (s.url for s in cluster.servers)
    path = "/v1/analytics/workflows/wf/performance"
    for i in range(HISTORICAL_LIMIT):
        r = httpx.get((a, b)[i % 2] + path, params=Q, headers=h)
        assert r.status_code == 200, r.text
        assert r.headers["X-RateLimit-Remaining"] == str(HISTORICAL_LIMIT - 1 - i)
    for url in (a, b):
        r = httpx.get(url + path, params=Q, headers=h)
        assert r.status_code == 429 and "Retry-After" in r.headers


def test_a_revoked_key_is_refused_by_both_within_5_s(cluster: Cluster) -> None:
    h = cluster.new_key()
    for server in cluster.servers:
        assert httpx.get(server.url + "/v1/workflows", headers=h).status_code == 200
    prefix = "_".join(h["Authorization"].split()[1].split("_")[:2])
    cluster.cli("keys", "revoke", prefix)
    revoked = time.monotonic()
    pending = {s.url for s in cluster.servers}
    while pending and time.monotonic() - revoked < 5:
        pending = {u for u in pending
                   if httpx.get(u + "/v1/workflows", headers=h).status_code != 401}  # fmt: skip
        time.sleep(0.1)
    assert not pending, "still accepted 5 s after revocation"


def test_an_ingest_through_one_makes_the_others_cached_answer_stale(cluster: Cluster) -> None:
    h = cluster.new_key()
    a, b = (s.url for s in cluster.servers)
    path = "/v1/analytics/workflows/wf"
    params = {"start_date": "2024-03-11", "end_date": "2024-03-11", "granularity": "hour"}
    assert httpx.get(a + path, params=params, headers=h).headers["X-Cache"] == "miss"
    assert httpx.get(a + path, params=params, headers=h).headers["X-Cache"] == "hit"
    # After the period the exports below read, so that they see the same events.
    event = {"id": "late-1", "type": "execution.started", "timestamp": "2024-03-11T10:00:00Z",
             "workflow_id": "wf", "execution_id": "late-1", "channel": "sms"}  # fmt: skip
    r = httpx.post(b + "/v1/events", json={"events": [event]}, headers=h)
    assert r.status_code == 200 and r.json()["data"]["accepted"] == 1
    # B's store has the event and A's does not (see the module's docstring), but A's
    # cached answer is no longer served: the shared data version moved.
    assert httpx.get(a + path, params=params, headers=h).headers["X-Cache"] == "miss"


def test_a_download_link_made_by_one_is_served_by_the_other(cluster: Cluster) -> None:
    h = cluster.new_key()
    a, b = (s.url for s in cluster.servers)
    body = {"data_type": "executions", "format": "csv", "start_date": iso(START),
            "end_date": iso(START + timedelta(hours=6))}  # fmt: skip
    created = httpx.post(a + "/v1/analytics/export", json=body, headers=h).json()["data"]
    status = _wait(b, f"/v1/analytics/export/{created['export_id']}", h)  # seen by B too
    assert status["status"] == "completed", status
    link = urlsplit(status["download_url"])
    assert link.port == cluster.servers[1].port  # built for the host B was asked under
    made_by_a = urlsplit(created["download_url"])
    r = httpx.get(f"{b}{made_by_a.path}?{made_by_a.query}")  # A's link, no key, on B
    assert r.status_code == 200 and r.content.count(b"\n") > 1000


def _wait(url: str, path: str, h: dict[str, str], timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = httpx.get(url + path, headers=h).json()["data"]
        if data["status"] in ("completed", "failed"):
            return data  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"{path} did not finish")


def _runs(logs: list[Path]) -> dict[str, list[tuple[str, float, float | None]]]:
    """Per job: (owner, started, ended or None) of every run, from both processes' logs."""
    runs: dict[str, list[tuple[str, float, float | None]]] = {}
    for log in logs:
        for line in log.read_text().splitlines():
            if not line.startswith("{"):
                continue
            entry = json.loads(line)
            at = datetime.fromisoformat(entry["ts"]).timestamp()
            if entry["msg"] == "job started":
                runs.setdefault(entry["job"], []).append((entry["owner"], at, None))
            elif entry["msg"] in ("job completed", "job failed") and "owner" in entry:
                owned = runs[entry["job"]]
                i = max(i for i, r in enumerate(owned) if r[0] == entry["owner"])
                owned[i] = (owned[i][0], owned[i][1], at)
    return runs


def test_jobs_survive_a_killed_process_and_run_once_at_a_time(cluster: Cluster) -> None:
    h = cluster.new_key()
    a, b = cluster.servers
    body = {"data_type": "executions", "format": "ndjson", "start_date": iso(START),
            "end_date": iso(END)}  # fmt: skip
    ids = [httpx.post(a.url + "/v1/analytics/export", json=body, headers=h).json()["data"]
           ["export_id"] for _ in range(4)]  # fmt: skip
    deadline = time.monotonic() + 60  # until A is running one of them
    while time.monotonic() < deadline and not any(
        run[0].split(":")[1] == str(a.proc.pid if a.proc else 0)
        for job in ids for run in _runs(cluster.logs).get(job, [])
    ):  # fmt: skip
        time.sleep(0.05)
    a.kill()
    killed_at = time.time()
    for job in ids:
        status = _wait(b.url, f"/v1/analytics/export/{job}", h, timeout=180)
        assert status["status"] in ("completed", "failed"), status
        assert status["status"] == "completed", status  # one lost run is well within 3 tries
        r = httpx.get(b.url + f"/v1/analytics/export/{job}/download", headers=h)
        assert r.status_code == 200 and len(r.content.splitlines()) == EXECUTIONS
    runs = _runs(cluster.logs)
    taken_over = 0
    for job in ids:
        # One run at a time: each run starts after the one before it ended; a run of A
        # that never ended ended when A was killed.
        ordered = sorted(runs[job], key=lambda r: r[1])
        for before, after in itertools.pairwise(ordered):
            ended = before[2] if before[2] is not None else killed_at
            assert after[1] >= ended, (job, ordered)
        taken_over += any(r[2] is None for r in ordered)
        assert ordered[-1][2] is not None
    assert taken_over >= 1  # the kill did cut a job off, and another process finished it
