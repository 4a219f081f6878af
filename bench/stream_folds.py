"""What a steady stream leaves in ClickHouse's fold-tagged tables, with and without compaction.

Embedded ClickHouse (chdb) in process, a fresh store: each round appends a
batch of messages (20 workflows, 5 channels, 2,000 customers, timestamps 2
seconds apart per round, as a live stream has) and folds, as the background
fold does every 2 seconds. Run twice on fresh stores: the folds alone, and
with a compaction every ``--compact-every`` rounds (150 rounds of 2 seconds:
the engine's 300 s). Prints, every ``--report-every`` rounds, the rows of
``message_slots``, ``session_slots`` and ``sessions`` and the p50 of a
workflow's metrics and of engagement over the last day.

    python bench/stream_folds.py [--rounds 300] [--report-every 100] [--compact-every 150] [--events 400] [--runs 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).parent))
from common import machine
from kaie_analytics.analytics import customers as cq
from kaie_analytics.analytics import workflows as wq
from kaie_analytics.engines.clickhouse.engine import ClickHouseEngine
from kaie_analytics.ingest.validate import ValidEvent, validate_event

TENANT = "acme"
TABLES = ("message_slots", "session_slots", "sessions")


def batch(r: int, n: int, start: datetime, now: datetime) -> list[ValidEvent]:
    rng = random.Random(r)
    at = start + timedelta(seconds=2 * r)
    out = []
    for i in range(n):
        ts = (at + timedelta(milliseconds=rng.randrange(2000))).isoformat().replace("+00:00", "Z")
        event = {
            "id": f"{r}-{i}", "timestamp": ts,
            "type": "message.received" if i % 2 else "message.sent",
            "workflow_id": f"wf-{rng.randrange(20):02d}",
            "channel": ("whatsapp", "instagram", "voice", "sms", "webchat")[rng.randrange(5)],
            "customer_id": f"c{rng.randrange(2000)}",
        }  # fmt: skip
        out.append(validate_event(orjson.dumps(event), now))
    return out


def p50_ms(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def run(args: argparse.Namespace, compact_every: int | None) -> list[tuple[float, ...]]:
    now = datetime.now(UTC)
    start = now - timedelta(seconds=2 * args.rounds + 60)
    period = {
        "start_date": [(now - timedelta(days=1)).isoformat()],
        "end_date": [now.isoformat()],
    }
    rows: list[tuple[float, ...]] = []
    with tempfile.TemporaryDirectory() as tmp:
        store = ClickHouseEngine.open("chdb", Path(tmp), fold_idle_s=3600)
        assert store.folder is not None
        metrics = wq.WorkflowMetricsRunner(store, wq.parse_metrics_query(TENANT, "wf-00", period))
        engagement = cq.EngagementRunner(store, cq.parse_engagement_query(TENANT, period))
        try:
            for r in range(1, args.rounds + 1):
                store.append(TENANT, batch(r, args.events, start, now)).result()
                store.settle()
                if compact_every and r % compact_every == 0:
                    store.folder.compact()
                if r % args.report_every == 0:
                    counts = [
                        store.transport.query(f"SELECT count() FROM {t}").column(0)[0].as_py()
                        for t in TABLES
                    ]
                    rows.append((r, *counts, p50_ms(metrics.compute, args.runs),
                                 p50_ms(engagement.compute, args.runs)))  # fmt: skip
                    print(f"  compact every {compact_every}: {rows[-1]}", flush=True)
        finally:
            store.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--events", type=int, default=400)
    parser.add_argument("--report-every", type=int, default=100)
    parser.add_argument("--compact-every", type=int, default=150)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"Machine: {machine()}; {args.rounds} rounds of {args.events} messages, a fold each")
    plain = run(args, None)
    compacted = run(args, args.compact_every)
    print()
    print("| folds | compaction | message_slots rows | session_slots rows | sessions rows"
          " | workflow metrics p50, ms | engagement p50, ms |")  # fmt: skip
    print("|---:|---|---:|---:|---:|---:|---:|")
    for a, b in zip(plain, compacted, strict=True):
        for label, row in (("none", a), (f"every {args.compact_every} folds", b)):
            r, m, s, sess, wf, eng = row
            print(f"| {r} | {label} | {m:,} | {s:,} | {sess:,} | {wf:.1f} | {eng:.1f} |")


if __name__ == "__main__":
    main()
