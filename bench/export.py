"""Export throughput and server memory: 10,000,000 executions to Parquet and CSV.

Builds (once, in bench/data/) one tenant with N executions (a start and an end
event each, over 90 days), folds them into the executions table, then asks a
live server for exports over HTTP and prints, per format, the time from the
request to the finished file and the server's peak RSS while it ran.

    python bench/export.py [--executions 10000000] [--runs 3] [--rebuild]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import httpx

sys.path.insert(0, str(Path(__file__).parent))
from common import PeakMemory, Server, machine, median
from kaie_analytics.engines.duckdb.store import DuckDBEventStore

COLUMNS = "seq, tenant, id_hash, event_id, id_given, type, ts, ts_text, workflow_id, execution_id,"
COLUMNS += " customer_id, channel, duration_ms, ingested_at"
LIMITS = ",".join(
    f"{c}=1000000/hour"
    for c in ("realtime", "historical", "reports", "export", "events", "default")
)


def build(data_dir: Path, executions: int, now: datetime) -> None:
    if data_dir.exists():
        shutil.rmtree(data_dir)
    DuckDBEventStore(data_dir / "events.duckdb").close()
    con = duckdb.connect(str(data_dir / "events.duckdb"))
    start = (now - timedelta(days=90)).replace(tzinfo=None)
    con.execute(
        f"""
        INSERT INTO events_main ({COLUMNS})
        SELECT row_number() OVER () AS seq, 'acme', hash(event_id), event_id, true, type, ts,
            strftime(ts, '%Y-%m-%dT%H:%M:%S.%fZ'), wf, xid, cust, ch, dur, ts
        FROM (
            SELECT 'x' || i || '-' || k AS event_id,
                ['execution.started', 'execution.completed'][k + 1] AS type,
                $start + to_microseconds((i * 777::BIGINT) % 7776000000000)
                    + to_milliseconds(k * (1000 + i % 60000)) AS ts,
                'wf-' || (i % 20) AS wf, 'x' || i AS xid, 'c' || (i % 200000) AS cust,
                ['whatsapp', 'instagram', 'voice', 'sms'][(i % 4)::INT + 1] AS ch,
                CASE WHEN k = 1 THEN 1000 + i % 60000 END AS dur
            FROM range({executions}) r(i), range(2) s(k)
        )
        ORDER BY type, wf, ts
        """,
        {"start": start},
    )
    con.execute(
        "INSERT INTO workflows SELECT DISTINCT tenant, workflow_id, NULL, NULL, now()"
        " FROM events_main"
    )
    con.close()
    store = DuckDBEventStore(data_dir / "events.duckdb", memory_limit="12GB")
    store.compact_now().result()
    store.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--executions", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rebuild", action="store_true")
    args = ap.parse_args()
    data_dir = Path(__file__).parent / "data" / f"export-{args.executions}"
    marker = data_dir / "built"
    print(f"Machine: {machine()}")
    if args.rebuild or not marker.exists():
        t = time.perf_counter()
        now = datetime.now(UTC)
        build(data_dir, args.executions, now)
        marker.write_text(now.isoformat())
        print(f"Built {args.executions:,} executions in {time.perf_counter() - t:.0f} s")
    built = datetime.fromisoformat(marker.read_text())
    body = {"data_type": "executions", "start_date": (built - timedelta(days=91)).isoformat(),
            "end_date": built.isoformat()}  # fmt: skip
    print()
    print(f"{args.executions:,} executions, one tenant, median of {args.runs} runs")
    print()
    print("| format | seconds (median) | rows/s | file size | server peak RSS |")
    print("|---|---:|---:|---:|---:|")
    with Server(data_dir, KAIE_RATE_LIMITS=LIMITS) as server:
        key = server.create_key("acme")
        h = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=server.url, headers=h, timeout=60) as client:
            for fmt in ("parquet", "csv"):
                times, peaks, sizes = [], [], []
                for _ in range(args.runs):
                    with PeakMemory(server) as mem:
                        t = time.perf_counter()
                        r = client.post("/v1/analytics/export", json={**body, "format": fmt})
                        export_id = r.json()["data"]["export_id"]
                        while True:
                            d = client.get(f"/v1/analytics/export/{export_id}").json()["data"]
                            if d["status"] in ("completed", "failed"):
                                break
                            time.sleep(0.05)
                        times.append(time.perf_counter() - t)
                    assert d["status"] == "completed", d
                    assert d["rows"] == args.executions, d
                    peaks.append(mem.peak)
                    files = list((data_dir / "files").rglob(f"*{export_id}*"))
                    sizes.append(files[0].stat().st_size)
                    files[0].unlink()
                secs = median(times)
                print(f"| {fmt} | {secs:.1f} | {args.executions / secs:,.0f} |"
                      f" {median(sizes) / 2**20:,.0f} MiB | {max(peaks):,.0f} MiB |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
