"""Jobs under load: a very large PDF, and what it does to other tenants and the API.

Tenant A asks for a PDF report of a year, hourly, grouped by workflow and
channel (52,704 rows); meanwhile tenant B asks for a small export, and a
client polls ``/healthz`` and an uncached workflow answer. Printed: how long
each job took, and the API's latencies while idle and while the PDF ran.

    python bench/jobs.py [--limit-s 60]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from common import Background, Server, machine, median, percentile

LIMITS = ",".join(
    f"{c}=100000000/hour"
    for c in ("realtime", "historical", "reports", "export", "events", "default")
)
YEAR = datetime(2025, 1, 1, tzinfo=UTC)


def events(n: int) -> list[dict[str, Any]]:
    rng = random.Random(1)
    out = []
    for i in range(n):
        t = YEAR + timedelta(seconds=rng.uniform(0, 364 * 86400))
        base = {"workflow_id": f"wf-{i % 3}", "execution_id": f"x{i}"}
        out += [
            {"type": "execution.started", "timestamp": t.isoformat(), **base,
             "channel": ("sms", "whatsapp")[i % 2], "customer_id": f"c{i % 500}"},
            {"type": "execution.completed", "timestamp": (t + timedelta(seconds=9)).isoformat(),
             **base, "duration_ms": rng.randrange(100, 20_000)},
        ]  # fmt: skip
    return out


class Poll(Background):
    """Times GETs of ``path`` back to back."""

    def __init__(self, url: str, path: str, key: str) -> None:
        super().__init__()
        self.url, self.path, self.key = url, path, key
        self.times: list[float] = []

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}", "Cache-Control": "no-cache"}
        with httpx.Client(base_url=self.url, timeout=60, headers=headers) as c:
            while not self._stop.is_set():
                t = time.perf_counter()
                c.get(self.path).raise_for_status()
                self.times.append((time.perf_counter() - t) * 1000)
                time.sleep(0.02)


def wait(c: httpx.Client, path: str) -> tuple[dict[str, Any], float]:
    start = time.perf_counter()
    while True:
        data = c.get(path).json()["data"]
        if data["status"] in ("completed", "failed"):
            return data, time.perf_counter() - start
        time.sleep(0.05)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit-s", type=float, default=60)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kaie-bench-jobs-"))
    env = {"KAIE_RATE_LIMITS": LIMITS, "KAIE_JOB_TIME_LIMIT_S": str(args.limit_s)}
    with Server(tmp / "d", **env) as srv:
        a_key, b_key = srv.create_key("a"), srv.create_key("b")
        a = httpx.Client(
            base_url=srv.url, timeout=120, headers={"Authorization": f"Bearer {a_key}"}
        )
        b = httpx.Client(
            base_url=srv.url, timeout=120, headers={"Authorization": f"Bearer {b_key}"}
        )
        evs = events(6000)
        for i in range(0, len(evs), 1000):
            a.post("/v1/events", json={"events": evs[i : i + 1000]}).raise_for_status()
        b.post("/v1/events", json={"events": evs[:1000]}).raise_for_status()
        wf_path = "/v1/analytics/workflows/wf-0?start_date=2025-01-01&end_date=2025-03-31"
        idle: dict[str, list[float]] = {}
        for path in ("/healthz", wf_path):
            with Poll(srv.url, path, a_key) as p:
                time.sleep(3)
            idle[path] = p.times
        report = {
            "name": "A year, hourly", "metrics": ["total_executions", "success_rate",
            "average_duration_ms", "p95_duration_ms"], "format": "pdf",
            "filters": {"start_date": "2025-01-01", "end_date": "2025-12-31"},
            "group_by": ["workflow_id", "channel"], "granularity": "hour",
        }  # fmt: skip
        with Poll(srv.url, "/healthz", a_key) as health, Poll(srv.url, wf_path, b_key) as wf:
            rid = a.post("/v1/analytics/reports", json=report).json()["data"]["report_id"]
            time.sleep(0.5)
            eid = b.post("/v1/analytics/export", json={
                "data_type": "executions", "start_date": "2025-01-01", "end_date": "2025-01-31",
            }).json()["data"]["export_id"]  # fmt: skip
            export, export_s = wait(b, f"/v1/analytics/export/{eid}")
            pdf, pdf_s = wait(a, f"/v1/analytics/reports/{rid}")
    print(f"# bench/jobs.py — {machine()}, {datetime.now(UTC):%Y-%m-%d}\n")
    print("| job | status | rows | seconds (from its request) |")
    print("|---|---|---:|---:|")
    print(f"| A: PDF, a year hourly by workflow and channel | {pdf['status']} | {pdf.get('rows')} "
          f"| {pdf_s + 0.5:.1f} |")  # fmt: skip
    print(f"| B: export of a month, asked for 0.5 s later | {export['status']} | "
          f"{export.get('rows')} | {export_s:.2f} |\n")  # fmt: skip
    print("| request | idle p50 ms | idle p95 ms | during the PDF p50 ms | p95 ms |")
    print("|---|---:|---:|---:|---:|")
    for name, path, during in (("/healthz", "/healthz", health.times),
                               ("workflow metrics, uncached", wf_path, wf.times)):  # fmt: skip
        calm = idle[path]
        print(f"| {name} | {median(calm):.1f} | {percentile(calm, 0.95):.1f} "
              f"| {median(during):.1f} | {percentile(during, 0.95):.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
