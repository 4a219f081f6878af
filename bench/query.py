"""Query latency at scale: workflow, customer, journey, realtime and cached answers.

Builds (once, kept in bench/data/) a data directory with, over 90 days:
- 10,000,000 executions over 50 tenants with Zipf-like skew, each with a start,
  an end (5% failed), two node events, a message each way, and feedback for
  one in five (about 62M events);
- tenant ``big``: 1,000,000 customers and 20,000,000 messages, and 450,000
  journeys of four steps with drop-offs.
The events are written day by day in the store's own layout (sorted chunks,
one per day, as the store itself writes them), then the store folds the
executions. Then it prints p50/p95 over HTTP (uncached, then cached) next to
the same queries run in-process on the engine.

    python bench/query.py [--executions 10000000] [--runs 30] [--rebuild] [--engines duckdb,chdb]

With chdb, the same events are first copied into embedded ClickHouse
(``copy-events``, kept in the data directory), and the two engines are
printed side by side, with the ratio per query.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import httpx

sys.path.insert(0, str(Path(__file__).parent))
from common import Server, machine, percentile
from kaie_analytics.analytics import customers as cq
from kaie_analytics.analytics import realtime as rq
from kaie_analytics.analytics import workflows as wq
from kaie_analytics.engines.duckdb.engine import DuckDBEngine

DAYS = 90
TENANTS = 50
WORKFLOWS = 20
BIG_CUSTOMERS = 1_000_000
BIG_MESSAGES = int(__import__("os").environ.get("BIG_MESSAGES", 20_000_000))
BIG_JOURNEYS = 450_000
LIMITS = ",".join(
    f"{c}=100000000/hour"
    for c in ("realtime", "historical", "reports", "export", "events", "default")
)

COLUMNS = (
    "seq, tenant, id_hash, event_id, id_given, type, ts, ts_text, workflow_id, execution_id,"
    " customer_id, journey_id, node_id, channel, workflow_name, duration_ms, error_type,"
    " error_message, node_type, message_id, csat, nps, comment, segment, traits, journey_type,"
    " step, step_name, reason, properties, ingested_at"
)


def day_sql(per_day: int) -> str:
    """One day of events; binds $day (0..89), $start (that day), $base (first seq)."""
    return f"""
    WITH x AS (
        SELECT i, hash(i, $day) AS h,
            'x' || $day || '-' || i AS xid,
            least(floor(exp((hash(i, $day, 1) % 1000000) / 1e6 * ln({TENANTS + 1}))) - 1,
                  {TENANTS - 1})::INT AS t,
            least(floor(exp((hash(i, $day, 2) % 1000000) / 1e6 * ln({WORKFLOWS + 1}))) - 1,
                  {WORKFLOWS - 1})::INT AS w,
            $start + to_microseconds(((hash(i, $day, 3) % 86400000000))::BIGINT) AS t0,
            (200 + exp(8 + (hash(i, $day, 4) % 1000) / 400.0))::BIGINT AS dur
        FROM range({per_day}) r(i)
    ),
    e AS (
        SELECT 't' || lpad(t::VARCHAR, 2, '0') AS tenant, xid, h, t0, dur,
            'wf-' || lpad(w::VARCHAR, 2, '0') AS wf,
            ['whatsapp', 'instagram', 'voice', 'sms', 'webchat'][(h % 5)::INT + 1] AS ch,
            'c' || (h % 50000) AS cust
        FROM x
    ),
    rows AS (
        SELECT tenant, xid || '-s' AS event_id, 'execution.started' AS type, t0 AS ts, wf, xid,
            cust, ch, NULL::BIGINT AS dur, NULL AS err, NULL AS node, NULL AS ntype,
            NULL::TINYINT AS csat FROM e
        UNION ALL
        SELECT tenant, xid || '-e', CASE WHEN h % 20 = 0 THEN 'execution.failed'
            ELSE 'execution.completed' END, t0 + to_milliseconds(dur), wf, xid, cust, ch, dur,
            CASE WHEN h % 20 = 0 THEN ['timeout', 'api_error', 'validation_error'][(h % 3)::INT + 1]
            END, NULL, NULL, NULL FROM e
        UNION ALL
        SELECT tenant, xid || '-n1', 'node.completed', t0 + to_milliseconds(dur // 3), wf, xid,
            NULL, NULL, dur // 3, NULL, 'welcome', 'message', NULL FROM e
        UNION ALL
        SELECT tenant, xid || '-n2', CASE WHEN h % 50 = 1 THEN 'node.failed'
            ELSE 'node.completed' END, t0 + to_milliseconds(dur // 2), wf, xid, NULL, NULL,
            dur // 4, CASE WHEN h % 50 = 1 THEN 'api_error' END, 'answer', 'ai', NULL FROM e
        UNION ALL
        SELECT tenant, xid || '-ms', 'message.sent', t0 + INTERVAL 1 SECOND, wf, xid, cust, ch,
            NULL, NULL, NULL, NULL, NULL FROM e
        UNION ALL
        SELECT tenant, xid || '-mr', 'message.received', t0 + INTERVAL 40 SECOND, wf, xid, cust,
            ch, NULL, NULL, NULL, NULL, NULL FROM e
        UNION ALL
        SELECT tenant, xid || '-f', 'feedback.submitted', t0 + to_milliseconds(dur + 60000), wf,
            xid, cust, ch, NULL, NULL, NULL, NULL, (1 + h % 5)::TINYINT FROM e WHERE h % 5 = 2
    )
    SELECT $base + row_number() OVER () AS seq, tenant,
        hash(tenant, event_id) AS id_hash, event_id, true, type, ts,
        strftime(ts, '%Y-%m-%dT%H:%M:%S.%fZ'), wf, xid, cust, NULL, node, ch,
        CASE WHEN type = 'execution.started' THEN 'Workflow ' || wf END, dur, err, NULL, ntype,
        NULL, csat, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, ts
    FROM rows
    """


def big_day_sql(messages: int, journeys: int) -> str:
    """Tenant ``big``: messages of 1M customers, and journeys with drop-offs."""
    return f"""
    WITH m AS (
        SELECT i, hash(i, $day, 7) AS h,
            $start + to_microseconds(((hash(i, $day, 8) % 86400000000))::BIGINT) AS ts
        FROM range({messages}) r(i)
    ),
    j AS (
        SELECT i, hash(i, $day, 9) AS h,
            $start + to_microseconds(((hash(i, $day, 10) % 80000000000))::BIGINT) AS t0,
            1 + (CASE WHEN hash(i, $day, 11) % 10 < 7 THEN 3
                      ELSE hash(i, $day, 11) % 3 END)::INT AS top
        FROM range({journeys}) r(i)
    ),
    steps AS (SELECT j.*, s FROM j, range(1, 5) r(s) WHERE s <= top),
    rows AS (
        SELECT 'm' || $day || '-' || i AS event_id,
            CASE WHEN h % 2 = 0 THEN 'message.sent' ELSE 'message.received' END AS type, ts,
            'b' || (h % {BIG_CUSTOMERS}) AS cust,
            ['whatsapp', 'instagram', 'voice', 'sms'][((h // 7) % 4)::INT + 1] AS ch,
            NULL AS jid, NULL::TINYINT AS step, NULL AS sname, NULL AS reason FROM m
        UNION ALL
        SELECT 'j' || $day || '-' || i || '-' || s, 'journey.step',
            t0 + to_seconds(s * 60 + h % 300), 'b' || (h % {BIG_CUSTOMERS}), 'whatsapp',
            'j' || $day || '-' || i, s::TINYINT,
            ['Welcome', 'Information Collection', 'Resolution', 'Survey'][s], NULL FROM steps
        UNION ALL
        SELECT 'j' || $day || '-' || i || '-c', 'journey.completed', t0 + to_seconds(400),
            'b' || (h % {BIG_CUSTOMERS}), NULL, 'j' || $day || '-' || i, NULL, NULL, NULL
        FROM j WHERE top = 4
        UNION ALL
        SELECT 'j' || $day || '-' || i || '-d', 'journey.dropped', t0 + to_seconds(500),
            'b' || (h % {BIG_CUSTOMERS}), NULL, 'j' || $day || '-' || i, top::TINYINT, NULL,
            ['timeout', 'user_abandoned'][(h % 2)::INT + 1] FROM j WHERE top < 4
    )
    SELECT $base + row_number() OVER () AS seq, 'big', hash('big', event_id), event_id, true,
        type, ts, strftime(ts, '%Y-%m-%dT%H:%M:%S.%fZ'), NULL, NULL, cust, jid, NULL, ch, NULL,
        NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
        CASE WHEN jid IS NOT NULL THEN 'onboarding' END, step, sname, reason, NULL, ts
    FROM rows
    """


def build(data_dir: Path, executions: int, now: datetime) -> None:
    if data_dir.exists():
        shutil.rmtree(data_dir)
    store = DuckDBEngine(data_dir / "events.duckdb")
    store.close()
    con = duckdb.connect(str(data_dir / "events.duckdb"), config={"memory_limit": "8GB"})
    first_day = (now - timedelta(days=DAYS)).replace(hour=0, minute=0, second=0, microsecond=0)
    per_day = executions // DAYS
    seq = 0
    t0 = time.perf_counter()
    for d in range(DAYS):
        start = first_day + timedelta(days=d)
        for sql in (day_sql(per_day), big_day_sql(BIG_MESSAGES // DAYS, BIG_JOURNEYS // DAYS)):
            con.execute(
                f"INSERT INTO events_main ({COLUMNS}) SELECT * FROM ({sql}) AS t({COLUMNS})"
                " WHERE ts <= $now ORDER BY tenant, type, workflow_id, ts",
                {"day": d, "start": start.replace(tzinfo=None), "base": seq,
                 "now": now.replace(tzinfo=None)},
            )  # fmt: skip
            seq = con.execute("SELECT max(seq) FROM events_main").fetchall()[0][0]
        if d % 10 == 9:
            print(f"  built day {d + 1}/{DAYS}: {seq:,} events, {time.perf_counter() - t0:.0f} s",
                  flush=True)  # fmt: skip
    con.execute(
        "INSERT INTO workflows SELECT tenant, workflow_id, 'Workflow ' || workflow_id, NULL, now()"
        " FROM (SELECT DISTINCT tenant, workflow_id FROM events_main WHERE workflow_id IS NOT NULL)"
    )
    con.execute("CHECKPOINT")
    con.close()
    store = DuckDBEngine(data_dir / "events.duckdb", memory_limit="8GB")
    t1 = time.perf_counter()
    store.compact_now().result()
    print(f"  folded executions in {time.perf_counter() - t1:.0f} s", flush=True)
    store.close()


class TimedOut(Exception):
    """The server stopped the query at its time limit."""


def timed(fn: Callable[[], Any], runs: int) -> tuple[float, float, float]:
    """p50 and p95 of ``runs`` calls after a first one, and the first one's time."""
    times = []
    t = time.perf_counter()
    fn()  # warm: for a workflow, its rollup days are read into memory
    first = (time.perf_counter() - t) * 1000
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), percentile(times, 0.95), first


def build_clickhouse(data_dir: Path) -> None:
    """The same events in embedded ClickHouse (``data_dir/clickhouse``), by copy-events."""
    from kaie_analytics.copying import CopyState, copy_events
    from kaie_analytics.engines.clickhouse.engine import ClickHouseEngine

    source = DuckDBEngine(data_dir / "events.duckdb", memory_limit="4GB")
    target = ClickHouseEngine.open("chdb", data_dir)
    t0 = time.perf_counter()
    copied = [0]
    try:
        state = CopyState(data_dir / "copy-events.json", f"chdb {data_dir}")
        missed = copy_events(
            source, target, state, on_events=lambda n: copied.__setitem__(0, copied[0] + n)
        )
    finally:
        target.close()
        source.close()
    if missed:
        raise SystemExit(f"copy-events: counts differ: {missed}")
    took = time.perf_counter() - t0
    print(f"  copied into chdb in {took:.0f} s ({copied[0] / took:,.0f} events/s)", flush=True)


def open_for_bench(engine: str, data_dir: Path) -> Any:
    if engine == "duckdb":
        return DuckDBEngine(data_dir / "events.duckdb", memory_limit="2GB")
    from kaie_analytics.engines.clickhouse.engine import ClickHouseEngine

    t0 = time.perf_counter()
    store = ClickHouseEngine.open(engine, data_dir, query_timeout_s=600)
    store.settle()  # fold whatever is not folded yet (all of it, the first time)
    print(f"  {engine} opened and folded in {time.perf_counter() - t0:.0f} s", flush=True)
    # The month partitions as they are an hour after their last insert (one part each,
    # schema.MERGED_WHEN_COLD), which a bench run does not wait for; once done, a no-op.
    t0 = time.perf_counter()
    partitions = store.transport.query(
        "SELECT DISTINCT table, partition_id FROM system.parts WHERE active"
        " AND database = currentDatabase() AND partition_id != 'all'"
    ).to_pylist()
    for p in partitions:
        store.transport.command(
            f"OPTIMIZE TABLE {p['table']} PARTITION ID '{p['partition_id']}' FINAL"
            " SETTINGS optimize_skip_merged_partitions = 1"
        )
    print(f"  {engine} month partitions merged in {time.perf_counter() - t0:.0f} s", flush=True)
    return store


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--executions", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--engines", default="duckdb,chdb", help="comma-separated: duckdb, chdb")
    args = ap.parse_args()
    engines = args.engines.split(",")
    data_dir = Path(__file__).parent / "data" / f"query-{args.executions}"
    marker = data_dir / "built"
    now = datetime.now(UTC)
    print(f"Machine: {machine()}")
    if args.rebuild or not marker.exists():
        print(f"Building {data_dir} ...", flush=True)
        build(data_dir, args.executions, now)
        marker.write_text(now.isoformat())
        (data_dir / "built-chdb").unlink(missing_ok=True)
    if "chdb" in engines and not (data_dir / "built-chdb").exists():
        # A copy cut off goes on where it stopped (copy-events keeps its place).
        print(f"Copying {data_dir} into chdb ...", flush=True)
        build_clickhouse(data_dir)
        (data_dir / "built-chdb").write_text(now.isoformat())
    built = datetime.fromisoformat(marker.read_text())
    # Bring every derived table up to date before measuring (a no-op once done).
    store = DuckDBEngine(data_dir / "events.duckdb", memory_limit="12GB")
    t1 = time.perf_counter()
    store.compact_now(move_events=True).result()
    print(f"Derived tables up to date in {time.perf_counter() - t1:.0f} s", flush=True)
    store.close()
    # Measure a warm server: the database file in the OS page cache, as a
    # running server's would be (this VM drops its page cache now and then).
    with open(data_dir / "events.duckdb", "rb") as f:
        while f.read(64 << 20):
            pass
    end = built
    start = end - timedelta(days=30)
    period = {"start_date": start.isoformat(), "end_date": end.isoformat()}

    store = DuckDBEngine(data_dir / "events.duckdb", memory_limit="2GB")
    stats = store.query(
        "SELECT count(*), count(*) FILTER (WHERE type LIKE 'message.%') FROM events"
    )[0]
    execs = store.query("SELECT count(*) FROM executions")[0][0]
    top = store.query(
        "SELECT tenant, workflow_id, count(*) FROM executions GROUP BY ALL ORDER BY 3 DESC LIMIT 1"
    )[0]
    small = store.query(
        "SELECT tenant, workflow_id, count(*) FROM executions WHERE tenant = 't25'"
        " GROUP BY ALL ORDER BY 3 LIMIT 1"
    )[0]
    print(f"Data: {stats[0]:,} events ({stats[1]:,} messages), {execs:,} executions;"
          f" busiest workflow {top[0]}/{top[1]} ({top[2]:,} executions),"
          f" small {small[0]}/{small[1]} ({small[2]:,})")  # fmt: skip
    store.close()
    params = {k: [v] for k, v in period.items()}
    results: dict[str, dict[str, tuple[float, float, float, str]]] = {}
    for engine in engines:
        results[engine] = measure(engine, data_dir, params, period, top, small, built, args.runs)
    print()
    print(f"{args.runs} runs each, 30-day period; milliseconds (p50; engine = in-process)")
    print()
    head = " | ".join(f"{e}: HTTP | {e}: engine | {e}: cached" for e in engines)
    ratio = " | chdb ÷ duckdb, HTTP" if {"duckdb", "chdb"} <= set(engines) else ""
    print(f"| query | {head}{ratio} |")
    print("|---|" + "---:|" * (3 * len(engines) + (1 if ratio else 0)))

    def ms(v: float) -> str:
        return "over the limit" if v == float("inf") else f"{v:.1f}"

    for name in results[engines[0]]:
        cells = " | ".join(
            f"{ms(results[e][name][0])} | {ms(results[e][name][2])} | {results[e][name][3]}"
            for e in engines
        )
        extra = f" | {results['chdb'][name][0] / results['duckdb'][name][0]:.1f}×" if ratio else ""
        print(f"| {name} | {cells}{extra} |")


def measure(
    engine: str, data_dir: Path, params: dict[str, list[str]], period: dict[str, str],
    top: tuple[Any, ...], small: tuple[Any, ...], built: datetime, runs: int,
) -> dict[str, tuple[float, float, float, str]]:  # fmt: skip
    """Per query: HTTP p50, HTTP p95, engine p50 and cached HTTP p50 on ``engine``."""
    store = open_for_bench(engine, data_dir)
    cases: list[tuple[str, str, str, Callable[[], Any]]] = []
    for label, (tenant, wf, _) in (("busiest workflow", top), ("small workflow", small)):
        q = wq.parse_metrics_query(tenant, wf, params)
        p = wq.parse_performance_query(tenant, wf, params)
        cases.append((f"workflow metrics, {label}", tenant, f"/v1/analytics/workflows/{wf}",
                      wq.WorkflowMetricsRunner(store, q).compute))  # fmt: skip
        cases.append((f"workflow performance, {label}", tenant,
                      f"/v1/analytics/workflows/{wf}/performance",
                      wq.WorkflowPerformanceRunner(store, p).compute))  # fmt: skip
    eq = cq.parse_engagement_query("big", params)
    jq = cq.parse_journey_query("big", params)
    cases.append(("customer engagement, 1M customers", "big", "/v1/analytics/customers/engagement",
                  cq.EngagementRunner(store, eq).compute))  # fmt: skip
    cases.append(("customer journey, 450k journeys", "big", "/v1/analytics/customers/journey",
                  cq.JourneyRunner(store, jq).compute))  # fmt: skip
    rtq = rq.parse_realtime_query(top[0], {})
    cases.append(("realtime, busiest tenant", top[0], "/v1/analytics/realtime",
                  rq.RealtimeRunner(store, rtq, health=lambda: ("healthy", None),
                                    now=built).compute))  # fmt: skip
    direct = {}
    for name, _, _, fn in cases:
        direct[name] = timed(fn, runs)
        print(f"  {engine}, in-process: {name}: p50 {direct[name][0]:.1f} ms", flush=True)
    store.close()
    out: dict[str, tuple[float, float, float, str]] = {}
    with Server(data_dir, KAIE_RATE_LIMITS=LIMITS, KAIE_EVENTS_BACKEND=engine) as server:
        keys = {t: server.create_key(t) for t in {c[1] for c in cases}}
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for name, tenant, path, _ in cases:
                headers = {"Authorization": f"Bearer {keys[tenant]}"}
                query = {} if "realtime" in path else period

                def get(h: dict[str, str] = headers, path: str = path, query: Any = query) -> None:
                    r = client.get(path, params=query, headers=h)
                    if r.status_code == 503 and "QUERY_TIMEOUT" in r.text:
                        raise TimedOut
                    assert r.status_code == 200, r.text

                fresh = {**headers, "Cache-Control": "no-cache"}
                try:
                    uncached = timed(lambda fresh=fresh: get(fresh), runs)
                except TimedOut:  # past the server's KAIE_QUERY_TIMEOUT_S
                    out[name] = (float("inf"), float("inf"), direct[name][0], "—")
                    print(f"  {engine}, HTTP: {name}: over the query time limit", flush=True)
                    continue
                cached = "—" if "realtime" in path else f"{timed(get, runs)[0]:.1f}"
                out[name] = (uncached[0], uncached[1], direct[name][0], cached)
                print(f"  {engine}, HTTP: {name}: p50 {uncached[0]:.1f} ms", flush=True)
    return out


if __name__ == "__main__":
    main()
