"""Workflow answers while events stream in: the busiest workflow of bench/query.py.

Copies the data directory that ``bench/query.py`` builds (so it stays as it
is), starts a server on the copy, and measures the busiest workflow's metrics
and performance over HTTP (uncached, the last 30 days up to now): quiet, then
while a client streams executions (a start, a received message and a
completion each, timestamped now) into the same workflow in batches of 999
events, and again once the stream has stopped and the events are folded.
Beside each, the stream's POST latencies (each answered after its commit).

    python bench/live.py [--rate 10000] [--runs 30] [--stream-s 30] [--executions 10000000]
                         [--ingest-workers N] [--engine duckdb|chdb] [--end-after S]

``--ingest-workers`` sets the server's ``KAIE_INGEST_WORKERS`` (processes that
decode and validate batches, so validation does not hold the server's GIL).
``--engine chdb`` copies and serves the embedded ClickHouse copy of the same
events (``bench/query.py --engines duckdb,chdb`` makes it). ``--end-after S`` posts
each completion S seconds after its start (in a later batch, so that most
executions are folded before they end, as in a live workflow) instead of in the
same batch.
"""

from __future__ import annotations

import argparse
import collections
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from common import Background, Server, machine, percentile

DATA = Path(__file__).parent / "data"
TENANT, WORKFLOW = "t00", "wf-00"
LIMITS = ",".join(
    f"{c}=100000000/hour"
    for c in ("realtime", "historical", "reports", "export", "events", "default")
)
PATHS = (f"/v1/analytics/workflows/{WORKFLOW}", f"/v1/analytics/workflows/{WORKFLOW}/performance")


class Stream(Background):
    """Posts executions of ``WORKFLOW`` at about ``rate`` events per second."""

    def __init__(self, url: str, key: str, rate: int, end_after_s: float = 0.0) -> None:
        super().__init__()
        self.url, self.key, self.rate = url, key, rate
        self.end_after_s = end_after_s
        self.sent = 0
        self.post_ms: list[float] = []
        self.seconds = 0.0  # how long it streamed

    def _run(self) -> None:
        rng = random.Random(1)
        headers = {"Authorization": f"Bearer {self.key}"}
        start = time.monotonic()
        try:
            self._stream(rng, headers, start)
        finally:
            self.seconds = time.monotonic() - start

    def _stream(self, rng: random.Random, headers: dict[str, str], start: float) -> None:
        # Completions not yet posted: (when to post, the event).
        ends: collections.deque[tuple[float, dict[str, Any]]] = collections.deque()
        made = 0
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self._stop.is_set():
                now = datetime.now(UTC)
                batch: list[dict[str, Any]] = []
                for _ in range(333):
                    x = f"live-{made}"
                    made += 1
                    t = now - timedelta(seconds=rng.uniform(0, 5))
                    who = {"channel": "whatsapp", "customer_id": f"c{rng.randrange(50_000)}"}
                    base = {"workflow_id": WORKFLOW, "execution_id": x}
                    batch += [
                        {"type": "execution.started", "timestamp": t.isoformat(), **base, **who},
                        {"type": "message.received", "timestamp": t.isoformat(), **base, **who},
                    ]  # fmt: skip
                    end = {"type": "execution.completed", "duration_ms": 2000, **base,
                           "timestamp": (t + timedelta(seconds=2)).isoformat()}  # fmt: skip
                    ends.append((time.monotonic() + self.end_after_s, end))
                while ends and ends[0][0] <= time.monotonic():
                    batch.append(ends.popleft()[1])
                t_post = time.perf_counter()
                r = client.post("/v1/events", json={"events": batch}, headers=headers)
                r.raise_for_status()
                self.post_ms.append((time.perf_counter() - t_post) * 1000)
                self.sent += len(batch)
                ahead = self.sent / self.rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)


def measure(client: httpx.Client, headers: dict[str, str], runs: int) -> list[tuple[float, float]]:
    out = []
    for path in PATHS:
        client.get(path, headers=headers).raise_for_status()  # warm
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            client.get(path, headers=headers).raise_for_status()
            times.append((time.perf_counter() - t) * 1000)
        out.append((statistics.median(times), percentile(times, 0.95)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--stream-s", type=float, default=30)
    ap.add_argument("--executions", type=int, default=10_000_000, help="which bench/query.py data")
    ap.add_argument("--ingest-workers", type=int, default=None, help="KAIE_INGEST_WORKERS")
    ap.add_argument("--engine", choices=("duckdb", "chdb"), default="duckdb")
    ap.add_argument("--end-after", type=float, default=0.0, help="seconds from start to end")
    args = ap.parse_args()
    source = DATA / f"query-{args.executions}"
    built = source / ("built-chdb" if args.engine == "chdb" else "built")
    if not built.exists():
        sys.exit("run bench/query.py first (with --engines duckdb,chdb for chdb): it builds"
                 " the data this benchmark copies")  # fmt: skip
    print(f"Machine: {machine()}")
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        data_dir = Path(tmp)
        env = {"KAIE_RATE_LIMITS": LIMITS, "KAIE_EVENTS_BACKEND": args.engine}
        if args.engine == "chdb":
            # ClickHouse keeps its databases as relative symlinks into store/.
            shutil.copytree(source / "clickhouse", data_dir / "clickhouse", symlinks=True)
        else:
            shutil.copy(source / "events.duckdb", data_dir / "events.duckdb")
        if args.ingest_workers is not None:
            env["KAIE_INGEST_WORKERS"] = str(args.ingest_workers)
        with Server(data_dir, **env) as server:
            key = server.create_key(TENANT)
            headers = {"Authorization": f"Bearer {key}", "Cache-Control": "no-cache"}
            rows: list[tuple[str, list[tuple[float, float]], str]] = []
            with httpx.Client(base_url=server.url, timeout=60) as client:
                rows.append(("quiet", measure(client, headers, args.runs), "—"))
                with Stream(server.url, key, args.rate, args.end_after) as stream:
                    time.sleep(args.stream_s / 2)
                    first = len(stream.post_ms)
                    got = measure(client, headers, args.runs)
                    rows.append(("streaming, first half", got, posts(stream.post_ms[:first])))
                    time.sleep(args.stream_s / 2)
                    got = measure(client, headers, args.runs)
                    rows.append(("streaming, second half", got, posts(stream.post_ms[first:])))
                sent, elapsed = stream.sent, stream.seconds
                time.sleep(10)  # the folder catches up, then checkpoints
                rows.append(("after the stream", measure(client, headers, args.runs), "—"))
    print()
    workers = "default" if args.ingest_workers is None else args.ingest_workers
    print(f"engine: {args.engine}; KAIE_INGEST_WORKERS: {workers};"
          f" completions {args.end_after:g} s after their start")  # fmt: skip
    print(f"{TENANT}/{WORKFLOW}, 30 days up to now, {args.runs} runs each; a stream of"
          f" {sent:,} events at ~{sent / elapsed:,.0f} events/s (target {args.rate:,});"
          " milliseconds over HTTP, uncached")  # fmt: skip
    print()
    print("| state | metrics p50 | metrics p95 | performance p50 | performance p95 |"
          " POST p50 / p99 |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for label, ((m50, m95), (p50, p95)), post in rows:
        print(f"| {label} | {m50:.1f} | {m95:.1f} | {p50:.1f} | {p95:.1f} | {post} |")
    quiet = rows[0][1]
    worst = [max(r[1][i][0] for r in rows[1:3]) / quiet[i][0] for i in range(2)]
    print(f"\nstreaming p50 ÷ quiet p50 (worst half): metrics {worst[0]:.1f}×,"
          f" performance {worst[1]:.1f}×")  # fmt: skip


def posts(times: list[float]) -> str:
    return f"{percentile(times, 0.5):.0f} / {percentile(times, 0.99):.0f}" if times else "—"


if __name__ == "__main__":
    main()
