"""Ingestion throughput and server memory over HTTP, with durable acknowledgements.

Sends N events (default 1,000,000) in batches of 1,000 to a fresh server, as
JSON and as NDJSON, from 1 and 4 concurrent clients, and prints events/s
(median of the runs), the server's CPU time per event (user + system, server
and ingest workers: the same on a loaded machine, where events/s is not) and
its peak RSS.

    python bench/ingest.py [--events 1000000] [--runs 3] [--engines duckdb,chdb]
                           [--workers 0,2] [--clients 1,4]

Each engine (``KAIE_EVENTS_BACKEND``) gets the same events, one after the other.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).parent))
from common import PeakMemory, Server, machine, median

BATCH = 1000


def make_events(n: int, seed: int, run: str) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    now = datetime.now(UTC) - timedelta(hours=1)
    channels = ["whatsapp", "instagram", "voice", "sms", "webchat"]
    out: list[dict[str, Any]] = []
    i = 0
    while len(out) < n:
        i += 1
        t = now - timedelta(seconds=rng.uniform(0, 30 * 86400))
        wf = f"wf-{rng.randrange(20)}"
        x = f"{run}-x{i}"
        cust = f"c{rng.randrange(100_000)}"
        ch = rng.choice(channels)
        ts = t.isoformat().replace("+00:00", "Z")
        out.append(
            {
                "id": f"{x}-s",
                "type": "execution.started",
                "timestamp": ts,
                "workflow_id": wf,
                "execution_id": x,
                "channel": ch,
                "customer_id": cust,
            }
        )
        out.append(
            {
                "id": f"{x}-n",
                "type": "node.completed",
                "timestamp": ts,
                "workflow_id": wf,
                "execution_id": x,
                "node_id": "welcome",
                "node_type": "message",
                "duration_ms": rng.randrange(10, 900),
            }
        )
        out.append(
            {
                "id": f"{x}-m",
                "type": "message.sent",
                "timestamp": ts,
                "workflow_id": wf,
                "execution_id": x,
                "customer_id": cust,
                "channel": ch,
            }
        )
        out.append(
            {
                "id": f"{x}-c",
                "type": "execution.completed",
                "timestamp": ts,
                "workflow_id": wf,
                "execution_id": x,
                "duration_ms": rng.randrange(100, 60_000),
            }
        )
    return out[:n]  # fmt: skip


def bodies(events: list[dict[str, Any]], fmt: str) -> list[bytes]:
    out = []
    for i in range(0, len(events), BATCH):
        chunk = events[i : i + BATCH]
        if fmt == "json":
            out.append(orjson.dumps({"events": chunk}))
        else:
            out.append(b"\n".join(orjson.dumps(e) for e in chunk))
    return out


def send(url: str, key: str, payloads: list[bytes], fmt: str, clients: int) -> float:
    ctype = "application/json" if fmt == "json" else "application/x-ndjson"
    parts = [payloads[i::clients] for i in range(clients)]
    errors: list[str] = []

    def worker(mine: list[bytes]) -> None:
        with httpx.Client(base_url=url, timeout=120,
                          headers={"Authorization": f"Bearer {key}", "Content-Type": ctype}) as c:  # fmt: skip
            for body in mine:
                r = c.post("/v1/events", content=body)
                if r.status_code != 200 or r.json()["data"]["accepted"] != BATCH:
                    errors.append(r.text[:200])

    threads = [threading.Thread(target=worker, args=(p,)) for p in parts]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError(errors[0])
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--engines", default="duckdb,chdb", help="comma-separated: duckdb, chdb")
    ap.add_argument("--workers", default="0,2", help="KAIE_INGEST_WORKERS values to try")
    ap.add_argument("--clients", default="1,4", help="client counts to try")
    args = ap.parse_args()
    print(f"Machine: {machine()}")
    print(f"{args.events:,} events per run, batches of {BATCH}, durable acknowledgements")
    print()
    print(
        "| engine | body | clients | ingest workers | events/s (median) | server CPU µs/event |"
        " runs | peak RSS, server + workers |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|")
    for engine, workers, fmt, clients in itertools.product(
        args.engines.split(","),
        [int(w) for w in args.workers.split(",")],
        ("json", "ndjson"),
        [int(c) for c in args.clients.split(",")],
    ):
        rates, peaks, cpu = [], [], []
        for run in range(args.runs):
            events = make_events(args.events, run, f"{fmt}{clients}r{run}")
            payloads = bodies(events, fmt)
            del events
            with (
                tempfile.TemporaryDirectory() as tmp,
                Server(
                    Path(tmp) / "data",
                    KAIE_INGEST_WORKERS=str(workers),
                    KAIE_EVENTS_BACKEND=engine,
                ) as server,
            ):
                key = server.create_key("bench")
                cpu0 = server.cpu_s()
                with PeakMemory(server) as mem:
                    elapsed = send(server.url, key, payloads, fmt, clients)
                cpu.append((server.cpu_s() - cpu0) / args.events * 1e6)
                rates.append(args.events / elapsed)
                peaks.append(mem.peak)
        print(f"| {engine} | {fmt} | {clients} | {workers} | {median(rates):,.0f} |"
              f" {median(cpu):.1f} | {args.runs} | {max(peaks):,.0f} MiB |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
