"""ClickHouse engine: its own guarantees (on chdb; a server runs the same SQL)."""

from __future__ import annotations

import concurrent.futures
import random
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from factories import iso
from kaie_analytics.analytics.facts import (
    ActivityQuery,
    Ask,
    Cells,
    CustomerQuery,
    JourneyQuery,
    RowsQuery,
    Window,
)
from kaie_analytics.engines import dedupe
from kaie_analytics.engines.clickhouse import activity, folds, sql, workflow_days, writer
from kaie_analytics.engines.clickhouse import customers as customer_facts
from kaie_analytics.engines.clickhouse.engine import WAL_DIRECTORY, ClickHouseEngine
from kaie_analytics.engines.clickhouse.schema import FOLD_TAGGED, ddl
from kaie_analytics.engines.clickhouse.transport import ChdbTransport
from kaie_analytics.errors import QueryTimeout, StoreInUse
from kaie_analytics.ingest.validate import validate_event

NOW = datetime(2024, 6, 1, tzinfo=UTC)


def _valid(events: list[dict[str, object]]) -> list:  # type: ignore[type-arg]
    import orjson

    return [validate_event(orjson.dumps(e), NOW) for e in events]


def _started(i: int, t: datetime) -> dict[str, object]:
    return {"id": f"e{i}", "type": "execution.started", "timestamp": iso(t),
            "workflow_id": "wf", "execution_id": f"x{i}", "channel": "sms"}  # fmt: skip


@pytest.fixture
def transport(tmp_path: Path) -> ChdbTransport:
    t = ChdbTransport(tmp_path / "ch", query_timeout_s=5)
    yield t  # type: ignore[misc]
    t.close()


def test_two_processes_racing_with_the_same_events_count_them_once(
    transport: ChdbTransport,
) -> None:
    """Two engines on one ClickHouse (as two API processes on one server), each with
    its own writer and id lookup, store the same batches at the same moment."""
    transport.embedded = False  # as on a server: neither is the only writer
    a, b = (ClickHouseEngine(transport, fold_idle_s=3600) for _ in range(2))
    t0 = datetime(2024, 5, 1)
    batches = [_valid([_started(i * 50 + j, t0) for j in range(50)]) for i in range(20)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [
            pool.submit(lambda e, rows: e.append("acme", rows).result(), engine, rows)
            for rows in batches
            for engine in (a, b, a, b)
        ]
        results = [f.result() for f in futures]
    assert all(r.accepted + r.duplicates == 50 for r in results)
    assert sum(r.accepted for r in results) >= 1000  # racing copies may both be accepted
    assert a.count_events("acme") == b.count_events("acme") == 1000
    q = ActivityQuery("acme", (Window(t0, t0 + timedelta(days=1)),),
                      (Ask((0,), frozenset({"executions"})),))  # fmt: skip
    assert a.activity(q)[0][(0,)].executions == 1000
    # A retried batch, once stored, is reported as duplicates through either engine.
    for engine in (a, b):
        again = engine.append("acme", batches[3]).result()
        assert (again.accepted, again.duplicates) == (0, 50)
    b._writer.close()  # its transport is a's
    a.close()


class _FailingInserts:
    """Inserts into ``events`` that fail, after writing the rows or before."""

    def __init__(self, transport: ChdbTransport, *, write_first: bool) -> None:
        self._insert = transport.insert
        self.write_first = write_first
        self.failing = True
        transport.insert = self  # type: ignore[method-assign]

    def __call__(self, table: str, rows: object) -> None:
        if self.failing and table == "events":
            self.failing = False
            if self.write_first:
                self._insert(table, rows)  # type: ignore[arg-type]
            raise RuntimeError("connection lost")
        self._insert(table, rows)  # type: ignore[arg-type]


@pytest.mark.parametrize("written", [False, True])
def test_a_batch_in_the_log_whose_insert_failed_is_inserted_once(
    transport: ChdbTransport, written: bool
) -> None:
    """A batch is acknowledged once in the write-ahead log; an insert of the log that
    fails, whether or not it wrote the rows, is tried again: the batch is stored once,
    and a retry of it is reported as duplicates."""
    engine = ClickHouseEngine(transport, fold_idle_s=3600)
    t0 = datetime(2024, 5, 1)
    batch = _valid([_started(i, t0) for i in range(5)])
    failing = _FailingInserts(transport, write_first=written)
    first = engine.append("acme", batch).result(timeout=30)
    assert (first.accepted, first.duplicates) == (5, 0)
    retried = engine.append("acme", batch).result(timeout=30)
    assert (retried.accepted, retried.duplicates) == (0, 5)
    assert engine.count_events("acme") == 5  # waits for the insert tried again
    assert not failing.failing
    engine.close()  # the log's files are removed after their insert
    assert not list((transport.path / WAL_DIRECTORY).glob("*.arrow"))


def test_what_the_log_holds_at_a_stop_is_inserted_at_the_next_start(tmp_path: Path) -> None:
    """Batches acknowledged but not yet in ClickHouse (here its inserts fail until the
    engine stops, as a crash would leave them) are inserted when the store opens."""
    path = tmp_path / "ch"
    engine = ClickHouseEngine(ChdbTransport(path), fold_idle_s=3600)
    t0 = datetime(2024, 5, 1)

    def fail(table: str, rows: object) -> None:
        raise RuntimeError("connection lost")

    engine.transport.insert = fail  # type: ignore[method-assign]
    for i in range(3):
        assert (
            engine.append("acme", _valid([_started(i * 10 + j, t0) for j in range(10)]))
            .result(timeout=30)
            .accepted
            == 10
        )
    engine.close()
    assert len(list((path / WAL_DIRECTORY).glob("*.arrow"))) == 3
    again = ClickHouseEngine(ChdbTransport(path), fold_idle_s=3600)
    assert again.count_events("acme") == 30
    assert not list((path / WAL_DIRECTORY).glob("*.arrow"))  # inserted at the start
    retried = again.append("acme", _valid([_started(j, t0) for j in range(10)])).result()
    assert (retried.accepted, retried.duplicates) == (0, 10)
    again.close()


def test_an_id_whose_hash_is_held_is_confirmed_before_it_is_dropped(
    transport: ChdbTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ids' hashes held in memory only say which ids may be stored: as if every
    hash collided, new events are still stored and copies still dropped."""
    monkeypatch.setattr(
        dedupe.IdIndex, "candidates", lambda self, hashes: np.ones(hashes.size, dtype=bool)
    )
    engine = ClickHouseEngine(transport, fold_idle_s=3600)
    t0 = datetime(2024, 5, 1)
    first = engine.append("acme", _valid([_started(i, t0) for i in range(3)])).result()
    again = engine.append("acme", _valid([_started(i, t0) for i in range(5)])).result()
    assert (first.accepted, again.accepted, again.duplicates) == (3, 2, 3)
    assert engine.count_events("acme") == 5
    engine.close()


class _HeldInserts:
    """Inserts that are written at once but return only when released: as an insert
    still running, whose events are visible (ClickHouse commits table by table)."""

    def __init__(self, transport: ChdbTransport) -> None:
        self._insert = transport.insert
        self.release = threading.Event()
        self.written = threading.Semaphore(0)
        transport.insert = self  # type: ignore[method-assign]

    def __call__(self, table: str, rows: object) -> None:
        self._insert(table, rows)  # type: ignore[arg-type]
        self.written.release()
        assert self.release.wait(30)


def test_a_fold_leaves_out_the_events_of_an_insert_still_running(
    transport: ChdbTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Embedded, as on a server: two inserts at a time."""
    monkeypatch.setitem(writer.IN_FLIGHT, "embedded", 2)
    engine = ClickHouseEngine(transport, fold_idle_s=3600)
    assert engine.folder is not None
    t0 = datetime(2024, 5, 1)
    engine.append("acme", _valid([_started(0, t0)])).result()
    engine.settle()
    before = engine.folder.watermark
    held = _HeldInserts(transport)
    running = engine.append("acme", _valid([_started(1, t0)]))
    assert held.written.acquire(timeout=30)
    # Acknowledged once in the log; its events are in ``events``, and a copy of them
    # is a duplicate, not stored twice.
    assert running.result(timeout=30).accepted == 1
    again = engine.append("acme", _valid([_started(1, t0)])).result(timeout=30)
    assert (again.accepted, again.duplicates) == (0, 1)
    engine.folder.fold()
    assert engine.folder.watermark == before  # nothing past the insert still running
    held.release.set()
    engine.settle()
    assert engine.folder.watermark > before
    assert engine.count_events("acme") == 2
    q = ActivityQuery("acme", (Window(t0, t0 + timedelta(days=1)),),
                      (Ask((0,), frozenset({"executions"})),))  # fmt: skip
    assert engine.activity(q)[0][(0,)].executions == 2
    engine.close()


def test_a_tenants_reads_do_not_wait_for_another_tenants_events_in_the_log(
    transport: ChdbTransport,
) -> None:
    """While one tenant's acknowledged batch is still being inserted, another tenant's
    reads answer at once, and the first tenant's wait for it."""
    engine = ClickHouseEngine(transport, fold_idle_s=3600)
    t0 = datetime(2024, 5, 1)
    engine.append("other", _valid([_started(0, t0)])).result()
    assert engine.count_events("other") == 1  # inserted
    held = _HeldInserts(transport)
    assert engine.append("acme", _valid([_started(1, t0)])).result(timeout=30).accepted == 1
    assert held.written.acquire(timeout=30)
    assert engine.count_events("other") == 1
    q = ActivityQuery("other", (Window(t0, t0 + timedelta(days=1)),),
                      (Ask((0,), frozenset({"executions"})),))  # fmt: skip
    assert engine.activity(q)[0][(0,)].executions == 1
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        done = pool.submit(engine.count_events, "acme")
        with pytest.raises(concurrent.futures.TimeoutError):
            done.result(timeout=0.5)  # waits for the insert
        held.release.set()
        assert done.result(timeout=30) == 1
    engine.close()


def test_an_insert_is_not_stopped_at_the_query_time_limit(tmp_path: Path) -> None:
    """chdb stops a statement at the time limit, and an insert stopped there returns as
    if whole with nothing written: inserts run without it."""
    transport = ChdbTransport(tmp_path / "ch", query_timeout_s=1)
    transport.command(  # each row takes 1 ms to read: 3,000 take 3 s
        "CREATE TABLE slow (x UInt64, s UInt8 DEFAULT sleepEachRow(0.001))"
        " ENGINE = MergeTree ORDER BY x"
    )
    transport.command("CREATE TABLE derived (x UInt64) ENGINE = MergeTree ORDER BY x")
    transport.command("CREATE MATERIALIZED VIEW derived_mv TO derived AS SELECT x FROM slow")
    transport.insert("slow", pa.table({"x": pa.array(range(3000), pa.uint64())}))
    counts = transport.query("SELECT (SELECT count() FROM slow), (SELECT count() FROM derived)")
    assert sql.rows(counts) == [(3000, 3000)]
    with pytest.raises(QueryTimeout):  # while reads keep to it
        transport.query("SELECT sleepEachRow(0.001) FROM numbers(3000)")
    transport.close()


def test_percentiles_equal_numpys_to_the_bit(transport: ChdbTransport) -> None:
    """Tenant ``tN`` holds the first N durations; each percentile is numpy's exactly."""
    engine = ClickHouseEngine(transport, fold_idle_s=3600)
    rng = random.Random(3)
    t0 = datetime(2024, 5, 1)
    durations = [rng.choice([1, 2, 3, 7, 10, 1000, 12345]) for _ in range(997)]
    quantiles = (0.5, 0.95, 0.99, 0.333, 0.85)
    window = Window(t0, t0 + timedelta(days=1))
    q = ActivityQuery("", (window,), (Ask((0,), frozenset({"durations"})),), quantiles=quantiles)
    for n in (1, 2, 3, 4, 10, 997):
        events = []
        for i, d in enumerate(durations[:n]):
            events.append(_started(i, t0))
            events.append({"id": f"d{i}", "type": "execution.completed", "duration_ms": d,
                           "timestamp": iso(t0 + timedelta(seconds=1)),
                           "workflow_id": "wf", "execution_id": f"x{i}"})  # fmt: skip
        engine.append(f"t{n}", _valid(events)).result()
        got = engine.activity(replace(q, tenant=f"t{n}"))[0][(0,)].quantiles
        assert got == tuple(float(np.percentile(durations[:n], 100 * p)) for p in quantiles)
    engine.close()


def test_query_time_limit(transport: ChdbTransport) -> None:
    transport.query_timeout_s = 0.3
    with pytest.raises(QueryTimeout):
        transport.query("SELECT count() FROM numbers(100000000000) WHERE sipHash64(number) = 1")
    assert transport.query("SELECT 42 AS x").column("x")[0].as_py() == 42
    # The engine's own work (folds, upgrades) runs without the limit, on a connection
    # made inside it too (one is after an error); after it, the limit holds again.
    slow = "SELECT count() FROM numbers(50000000) WHERE sipHash64(number) = 1"  # > 0.3 s
    with transport.unlimited():
        assert transport.query(slow).column(0)[0].as_py() == 0
        with pytest.raises(Exception, match="UNKNOWN_TABLE"):
            transport.query("SELECT * FROM no_such_table")
        assert transport.query(slow).column(0)[0].as_py() == 0
    with pytest.raises(QueryTimeout):
        transport.query(slow)


def test_a_second_process_on_the_directory_is_refused(tmp_path: Path) -> None:
    first = ChdbTransport(tmp_path / "ch")
    try:
        with pytest.raises(StoreInUse):
            ChdbTransport.ensure_free(tmp_path / "ch")
    finally:
        first.close()
    ChdbTransport.ensure_free(tmp_path / "ch")  # free once closed


def test_cluster_ddl_is_pinned_and_parses(transport: ChdbTransport) -> None:
    """The DDL for a cluster: pinned, and each statement accepted by ClickHouse's
    parser (no cluster runs on the test machines, so it is not executed here)."""
    statements = ddl("analytics")
    snapshot = Path(__file__).with_name("cluster_ddl.sql")
    assert ";\n\n".join(statements) + ";\n" == snapshot.read_text()
    for statement in statements:
        transport.query("SELECT formatQuery({q:String})", {"q": statement})


def _executions(engine: ClickHouseEngine, tenant: str = "acme") -> list[dict[str, object]]:
    window = Window(datetime(2000, 1, 1), datetime(2100, 1, 1))
    reader = engine.rows(RowsQuery(tenant, "executions", window), 1000)
    return sorted((r for b in reader for r in b.to_pylist()), key=lambda r: str(r["execution_id"]))


def _sums_by_workflow(engine: ClickHouseEngine) -> dict[object, tuple[int, int, int]]:
    """Executions, successful and total duration per workflow and day, from the sums
    per slot once folded (the rows of ``_executions`` are read otherwise)."""
    start = datetime(2024, 5, 1, 0, 7)  # the day's first window edge cuts a slot
    days = tuple(Window(start + timedelta(days=d), start + timedelta(days=d + 1)
                        - timedelta(microseconds=1)) for d in range(-1, 1))  # fmt: skip
    q = ActivityQuery("acme", days, (Ask((0, 1), frozenset({"executions"}), ("workflow_id",)),))
    return {
        k: (c.executions, c.successful, c.duration_sum) for k, c in engine.activity(q)[0].items()
    }


def _sums_of_rows(rows: list[dict[str, object]]) -> dict[object, tuple[int, int, int]]:
    start = datetime(2024, 5, 1, 0, 7)
    out: dict[object, tuple[int, int, int]] = {}
    for r in rows:
        day = 0 if r["started_at"] < start else 1  # type: ignore[operator]
        n, ok, ms = out.get((day, r["workflow_id"]), (0, 0, 0))
        done = r["status"] == "success"
        out[(day, r["workflow_id"])] = (n + 1, ok + done, ms + (r["duration_ms"] or 0) * done)
    return out


def test_a_fold_moves_executions_whose_key_changed_and_survives_being_cut_off(
    transport: ChdbTransport,
) -> None:
    """Also the sums per slot follow: the folded rows taken away, the new ones added."""
    engine = ClickHouseEngine(transport, fold_idle_s=3600)
    t0 = datetime(2024, 5, 1, 12)
    ended = {"type": "execution.completed", "workflow_id": "wf", "duration_ms": 60_000}
    engine.append("acme", _valid([
        {**ended, "id": "c1", "execution_id": "x1", "timestamp": iso(t0)},
        {**ended, "id": "c2", "execution_id": "x2", "timestamp": iso(t0)},
        _started(3, t0),
    ])).result()  # fmt: skip
    before = _executions(engine)
    engine.settle()
    assert _executions(engine) == before  # folded, the same
    assert _sums_by_workflow(engine) == _sums_of_rows(before)
    assert [r["started_at"] for r in before[:2]] == [t0 - timedelta(minutes=1)] * 2
    # Late start events move x1 (earlier start) and x2 (another workflow, later start).
    engine.append("acme", _valid([
        {**_started(1, t0 - timedelta(hours=5)), "execution_id": "x1"},
        {**_started(2, t0 - timedelta(seconds=30)), "execution_id": "x2", "workflow_id": "wf-b"},
    ])).result()  # fmt: skip
    pending = _executions(engine)  # answered from the states, before any fold
    assert [(r["workflow_id"], r["started_at"]) for r in pending[:2]] == [
        ("wf", t0 - timedelta(hours=5)), ("wf-b", t0 - timedelta(seconds=30)),
    ]  # fmt: skip
    assert _sums_by_workflow(engine) == _sums_of_rows(pending)  # folded sums taken away
    # A fold cut off after its first statement and its log's, then a whole one: still exact.
    folder = engine.folder
    assert folder is not None
    hi = int(transport.query("SELECT max(toUnixTimestamp64Micro(ingested_at)) AS m FROM events")
             .column("m")[0].as_py())  # fmt: skip
    for statement in (*folds.FOLD_STATEMENTS[:3], folds.EXECUTION_LOG_FOLD):
        transport.command(statement, {"tenant": "acme", "lo": folder.watermark, "hi": hi,
                                      "old": ["x1", "x2"]})  # fmt: skip
    folder._cut_off = True  # as a fold that failed half way leaves it
    assert _executions(engine) == pending
    assert _sums_by_workflow(engine) == _sums_of_rows(pending)
    engine.settle()
    assert _executions(engine) == pending
    assert _sums_by_workflow(engine) == _sums_of_rows(pending)
    rows = transport.query(
        "SELECT execution_id, workflow_id FROM executions FINAL ORDER BY execution_id"
    ).to_pylist()
    assert rows == [{"execution_id": "x1", "workflow_id": "wf"},
                    {"execution_id": "x2", "workflow_id": "wf-b"},
                    {"execution_id": "x3", "workflow_id": "wf"}]  # fmt: skip
    engine.close()


@pytest.mark.parametrize(
    "value", ["plain", "it's", "back\\slash", "tab\there", "new\nline", "cr\rhere", "é ✓ 🚀", ""]
)
def test_parameters_arrive_as_given(transport: ChdbTransport, value: str) -> None:
    """Bound by ClickHouse from their escaped text, never spliced into the SQL."""
    got = transport.query(
        "SELECT {s:String} AS s, {a:Array(String)} AS a, {n:Nullable(String)} AS n",
        {"s": value, "a": [value, "x'y"], "n": None},
    ).to_pylist()
    assert got == [{"s": value, "a": [value, "x'y"], "n": None}]


def test_a_store_of_layout_4_gets_its_executions_node_events(tmp_path: Path) -> None:
    """Node events ride along with their execution since layout 5: opening an older
    store folds every execution again with them (and adding their states twice changes
    nothing)."""
    path = tmp_path / "ch"
    engine = ClickHouseEngine(ChdbTransport(path), fold_idle_s=3600)
    t0 = datetime(2024, 5, 1, 12)
    events: list[dict[str, object]] = []
    for i in range(10):
        node = {"workflow_id": "wf", "execution_id": f"x{i}", "node_id": f"n{i % 3}",
                "node_type": "llm", "timestamp": iso(t0 + timedelta(seconds=1))}  # fmt: skip
        events += [
            _started(i, t0),
            {**node, "id": f"n{i}", "type": "node.completed", "duration_ms": 10 * i},
            {**node, "id": f"m{i}", "type": "node.failed", "error_type": "timeout"},
        ]
    engine.append("acme", _valid(events)).result()
    engine.settle()
    window = Window(t0 - timedelta(hours=1), t0 + timedelta(hours=1))
    q = ActivityQuery("acme", (window,), (Ask((0,), frozenset({"nodes"}), ("node_id",)),))
    want = engine.activity(q)
    assert sorted(k[1] for k in want[0]) == ["n0", "n1", "n2"]
    assert sum(c.node_events for c in want[0].values()) == 20
    # As layout 4 left a store: folded rows without their node events.
    engine.transport.command("ALTER TABLE executions DROP COLUMN nodes")
    folds.set_state(engine.transport, "layout", 4)
    engine.close()
    again = ClickHouseEngine(ChdbTransport(path), fold_idle_s=3600)
    try:
        again.settle()
        assert again.activity(q) == want
    finally:
        again.close()


def test_an_execution_continued_after_a_restart_keeps_its_earlier_events(
    tmp_path: Path,
) -> None:
    """A fold looks up the states only of executions it knows have events folded
    before (the rest come from its own events): that knowledge survives a restart,
    so a late end merges with the start folded by the process before."""
    path = tmp_path / "ch"
    t0 = datetime(2024, 5, 1, 12)
    engine = ClickHouseEngine(ChdbTransport(path), fold_idle_s=3600)
    engine.append("acme", _valid([_started(0, t0), _started(1, t0)])).result()
    engine.settle()
    engine.close()
    engine = ClickHouseEngine(ChdbTransport(path), fold_idle_s=3600)
    try:
        end = {"type": "execution.completed", "workflow_id": "wf", "duration_ms": 1500}
        engine.append("acme", _valid([
            {**end, "id": "c0", "execution_id": "x0", "timestamp": iso(t0 + timedelta(seconds=2))},
            _started(2, t0),
        ])).result()  # fmt: skip
        engine.settle()
        rows = {r["execution_id"]: r for r in _executions(engine)}
        assert {k: (r["status"], r["started_at"], r["duration_ms"]) for k, r in rows.items()} == {
            "x0": ("success", t0, 1500), "x1": ("running", t0, None), "x2": ("running", t0, None),
        }  # fmt: skip
    finally:
        engine.close()


def test_opening_makes_whole_what_views_keep_of_inserts_cut_off(tmp_path: Path) -> None:
    """An insert cut off after its events and before what views derive from them (ids,
    execution states): at the next opening both are made whole, so the executions
    count and a retry of the batch is reported as duplicates, not stored again."""
    path = tmp_path / "ch"
    engine = ClickHouseEngine(ChdbTransport(path), fold_idle_s=3600)
    t0 = datetime(2024, 5, 1, 12)
    window = Window(t0 - timedelta(hours=1), t0 + timedelta(hours=1))
    q = ActivityQuery("acme", (window,), (Ask((0,), frozenset({"executions"})),))
    engine.append("acme", _valid([_started(0, t0)])).result()
    engine.settle()
    for view in ("event_ids_mv", "executions_state_mv"):  # as if the insert stopped there
        engine.transport.command(f"DETACH TABLE {view}")
    batch = _valid([_started(i, t0) for i in range(1, 6)])
    try:
        assert engine.append("acme", batch).result().accepted == 5
        assert engine.count_events("acme") == 6  # inserted from the log, views detached
        for view in ("event_ids_mv", "executions_state_mv"):
            engine.transport.command(f"ATTACH TABLE {view}")
        assert engine.activity(q)[0][(0,)].executions == 1  # the states are missing
    finally:
        engine.close()
    again = ClickHouseEngine(ChdbTransport(path), fold_idle_s=3600)
    try:
        assert again.activity(q)[0][(0,)].executions == 6
        retried = again.append("acme", batch).result()
        assert (retried.accepted, retried.duplicates) == (0, 5)
    finally:
        again.close()


def _messages(i: int, t: datetime) -> list[dict[str, object]]:
    at = iso(t + timedelta(minutes=i))
    who = {"workflow_id": "wf", "customer_id": f"c{i}", "channel": "sms"}
    return [
        {"id": f"s{i}", "type": "message.sent", "timestamp": at, **who},
        {"id": f"r{i}", "type": "message.received", "timestamp": at, **who},
        {"id": f"f{i}", "type": "feedback.submitted", "timestamp": at, "csat": 1 + i % 5, **who},
    ]


def test_message_rollups_of_a_fold_cut_off_are_not_counted_twice(tmp_path: Path) -> None:
    """Rows a fold wrote before it was cut off (its watermark not written) are taken
    away by the next process's first fold, which adds those messages again; a store of layout 5 gets
    the rollups of the messages it had folded."""
    path = tmp_path / "ch"
    engine = ClickHouseEngine(ChdbTransport(path), fold_idle_s=3600)
    t0 = datetime(2024, 5, 1, 12)
    window = Window(t0 - timedelta(hours=1), t0 + timedelta(hours=3))
    q = ActivityQuery("acme", (window,), (Ask((0,), frozenset({"messages"}), ("channel",)),),
                      workflow_ids=("wf",))  # fmt: skip
    engine.append("acme", _valid([e for i in range(50) for e in _messages(i, t0)])).result()
    engine.settle()
    assert engine.folder is not None
    cut_off = engine.folder.watermark + 1
    engine.transport.command(
        f"INSERT INTO message_slots VALUES ('acme', 'wf', {sql.slot_of_us(sql.epoch_us(t0))},"
        f" 'sms', {cut_off}, 1000, 1000, 1000, 1000)"
    )
    engine.close()  # the process stopped there
    engine = ClickHouseEngine(ChdbTransport(path), fold_idle_s=3600)
    engine.append("acme", _valid([e for i in range(50, 80) for e in _messages(i, t0)])).result()
    engine.settle()
    ((cell,),) = (c.values() for c in engine.activity(q))
    assert (cell.sent, cell.received, cell.csat_count) == (80, 80, 80)
    assert cell.csat_sum == sum(1 + i % 5 for i in range(80))
    # As layout 5 left a store: no message rollups.
    engine.transport.command("TRUNCATE TABLE message_slots")
    folds.set_state(engine.transport, "layout", 5)
    engine.close()
    again = ClickHouseEngine(ChdbTransport(path), fold_idle_s=3600)
    try:
        assert again.transport.query("SELECT count() FROM message_slots").column(0)[0].as_py()
        ((cell_again,),) = (c.values() for c in again.activity(q))
        assert cell_again == cell
    finally:
        again.close()


def _conversation(k: int, t0: datetime, minutes: list[int]) -> list[dict[str, object]]:
    who = {"customer_id": f"c{k}", "channel": "sms"}
    return [
        {"id": f"m{k}-{m}", "type": "message.sent" if m % 2 else "message.received",
         "timestamp": iso(t0 + timedelta(minutes=7 * k + m)), **who}
        for m in minutes
    ]  # fmt: skip


def _session_sums(events: list[dict[str, object]], window: Window) -> tuple[int, int, int]:
    """Sessions starting in the window, their µs and messages, counted plainly."""
    times: dict[object, list[datetime]] = {}
    for e in events:
        if str(e["type"]).startswith("message."):
            times.setdefault(e["customer_id"], []).append(
                datetime.fromisoformat(str(e["timestamp"]))
            )
    sessions = []
    for ts in times.values():
        ts.sort()
        start = 0
        for i in range(1, len(ts) + 1):
            if i == len(ts) or ts[i] - ts[i - 1] > timedelta(minutes=30):
                sessions.append((ts[start], ts[i - 1], i - start))
                start = i
    lo, hi = window.start.replace(tzinfo=UTC), window.end.replace(tzinfo=UTC)
    inside = [s for s in sessions if lo <= s[0] <= hi]
    return (len(inside), sum((b - a) // timedelta(microseconds=1) for a, b, _ in inside),
            sum(n for *_, n in inside))  # fmt: skip


def _firsts(events: list[dict[str, object]], window: Window) -> tuple[int, int]:
    """Customers first seen up to the window's end, and those first heard from in it."""
    first: dict[object, datetime] = {}
    heard: dict[object, datetime] = {}
    for e in events:
        t = datetime.fromisoformat(str(e["timestamp"]))
        c = e["customer_id"]
        first[c] = min(first.get(c, t), t)
        if e["type"] == "message.received":
            heard[c] = min(heard.get(c, t), t)
    lo, hi = window.start.replace(tzinfo=UTC), window.end.replace(tzinfo=UTC)
    return sum(t <= hi for t in first.values()), sum(lo <= t <= hi for t in heard.values())


def test_sessions_of_a_fold_cut_off_are_not_counted_twice(tmp_path: Path) -> None:
    """Late messages join sessions folded before (a fold takes the old ones away) and move
    customers' first-seen times; rows of a fold cut off are taken away by the next
    process's first fold; answers are the same before a fold, after it, with edges
    inside slots, and in a store of layout 6 (which gets its sessions, first-seen times
    and active customers when it opens)."""
    path = tmp_path / "ch"
    engine = ClickHouseEngine(ChdbTransport(path), fold_idle_s=3600)
    t0 = datetime(2024, 5, 1, 12)
    early = [e for k in range(12) for e in _conversation(k, t0, [0, 10, 60, 200])]
    late = [e for k in range(12) for e in _conversation(k, t0, [35, 190])]  # joins them
    late += [e for k in range(4) for e in _conversation(k, t0, [-4])]  # first seen earlier
    late += [e for k in range(12, 15) for e in _conversation(k, t0, [0])]  # new customers
    windows = [Window(t0, t0 + timedelta(days=1)),
               Window(t0 + timedelta(minutes=20), t0 + timedelta(hours=4, minutes=1))]  # fmt: skip

    def check(store: ClickHouseEngine, events: list[dict[str, object]]) -> None:
        for w in windows:
            (got,) = store.customers(CustomerQuery("acme", (w,)))
            s = got.by_channel["sms"]
            assert (s.sessions, s.session_us, s.session_messages) == _session_sums(events, w)
            assert (got.known, got.new) == _firsts(events, w)

    engine.append("acme", _valid(early)).result()
    engine.settle()
    check(engine, early)
    assert engine.folder is not None
    cut_off = engine.folder.watermark + 1  # rows a fold wrote, cut off before its watermark
    engine.transport.command(
        f"INSERT INTO sessions VALUES ('acme', 'c0', 'sms', '2024-05-01 12:30:00',"
        f" '2024-05-01 12:40:00', 5, {cut_off}, 1)"
    )
    engine.transport.command(
        f"INSERT INTO customer_firsts VALUES ('acme', 'new', '', '2024-05-01 12:30:00',"
        f" '2024-05-01 12:30:00', {cut_off}, 1)"
    )
    engine.close()  # the process stopped there
    engine = ClickHouseEngine(ChdbTransport(path), fold_idle_s=3600)
    engine.append("acme", _valid(late)).result()
    check(engine, early + late)  # before the fold: the late messages change sessions
    engine.settle()
    check(engine, early + late)
    tables = ("sessions", "session_starts", "session_slots", "customer_firsts", "first_times",
              "customer_numbers", "active_customers")  # fmt: skip
    for table in tables:  # as layout 6 left it
        engine.transport.command(f"TRUNCATE TABLE {table}")
    folds.set_state(engine.transport, "layout", 6)
    engine.close()
    again = ClickHouseEngine(ChdbTransport(path), fold_idle_s=3600)
    try:
        assert again.transport.query("SELECT count() FROM session_slots").column(0)[0].as_py()
        check(again, early + late)
    finally:
        again.close()


def test_active_customers_while_a_fold_is_under_way(tmp_path: Path) -> None:
    """A fold that has given numbers and filled bitmaps but not yet written its watermark:
    answers as of the watermark count each customer once (the new ones from their
    messages, not also from the bitmaps)."""
    engine = ClickHouseEngine(ChdbTransport(tmp_path / "ch"), fold_idle_s=3600)
    try:
        t0 = datetime(2024, 5, 1, 12)
        early = [e for k in range(6) for e in _conversation(k, t0, [0, 10])]
        late = [e for k in range(3, 10) for e in _conversation(k, t0, [20, 40])]
        window = Window(t0, t0 + timedelta(days=1))
        engine.append("acme", _valid(early)).result()
        engine.settle()
        engine.append("acme", _valid(late)).result()
        assert engine.count_events("acme") == len(early) + len(late)  # in ClickHouse
        assert engine.folder is not None
        hi = engine.transport.query("SELECT toUnixTimestamp64Micro(max(ingested_at)) FROM events")
        params = {"tenant": "acme", "lo": engine.folder.watermark, "hi": hi.column(0)[0].as_py()}
        for statement in (folds.NUMBER_CUSTOMERS, folds.ACTIVE_CUSTOMERS):
            engine.transport.command(statement, params)
        (got,) = engine.customers(CustomerQuery("acme", (window,)))
        assert (got.total.active, got.by_channel["sms"].active) == (10, 10)
        engine.settle()
        (after,) = engine.customers(CustomerQuery("acme", (window,)))
        assert after.total.active == 10
    finally:
        engine.close()


def test_a_store_of_layout_9_gets_its_journeys(tmp_path: Path) -> None:
    """Journeys are folded since layout 10: an older store gets their states and folded
    rows when it opens (events after its watermark included)."""
    path = tmp_path / "ch"
    engine = ClickHouseEngine(ChdbTransport(path), fold_idle_s=3600)
    t0 = datetime(2024, 5, 1, 12)

    def journey(i: int, steps: int) -> list[dict[str, object]]:
        base = {"journey_type": "onboarding", "journey_id": f"j{i}", "customer_id": f"c{i}"}
        return [
            {"id": f"j{i}-{s}", "type": "journey.step", "step": s, "step_name": f"s{s}",
             "timestamp": iso(t0 + timedelta(minutes=i + s)), **base}
            for s in range(1, steps + 1)
        ]  # fmt: skip

    q = JourneyQuery("acme", "onboarding", Window(t0, t0 + timedelta(days=1)), True)
    engine.append("acme", _valid([e for i in range(8) for e in journey(i, 1 + i % 3)])).result()
    engine.settle()
    want = engine.journeys(q)
    assert (want.journeys, [s.reached for s in want.steps]) == (8, [8, 5, 2])
    engine.append("acme", _valid(journey(8, 3))).result()  # not folded yet
    for table in ("journeys_state", "journeys"):  # and a store of layout 9
        engine.transport.command(f"TRUNCATE TABLE {table}")
    folds.set_state(engine.transport, "layout", 9)
    engine.close()
    again = ClickHouseEngine(ChdbTransport(path), fold_idle_s=3600)
    try:
        got = again.journeys(q)
        assert (got.journeys, [s.reached for s in got.steps]) == (9, [9, 6, 3])
        again.settle()
        assert again.journeys(q) == got
        assert again.journey_types("acme") == ["onboarding"]
    finally:
        again.close()


def test_a_store_of_layout_15_gets_its_journeys_per_slot(tmp_path: Path) -> None:
    """Journeys are added up per slot since layout 16: an older store's are, when it
    opens, so its funnels answer the same from the slots."""
    path = tmp_path / "ch"
    engine = ClickHouseEngine(ChdbTransport(path), fold_idle_s=3600)
    t0 = datetime(2024, 5, 1, 12)
    events = [
        {"id": f"j{i}-{s}", "type": "journey.step", "step": s, "step_name": f"s{s}",
         "journey_type": "onboarding", "journey_id": f"j{i}", "customer_id": f"c{i}",
         "timestamp": iso(t0 + timedelta(minutes=20 * i + s))}
        for i in range(30) for s in range(1, 2 + i % 3)
    ]  # fmt: skip
    engine.append("acme", _valid(events)).result()
    engine.settle()
    q = JourneyQuery("acme", "onboarding", Window(t0, t0 + timedelta(hours=12)), True)
    want = engine.journeys(q)
    assert (want.journeys, [s.reached for s in want.steps]) == (30, [30, 20, 10])
    engine.transport.command("TRUNCATE TABLE journey_slots")  # as a store of layout 15
    assert engine.journeys(q).journeys == 0  # the slots are read
    folds.set_state(engine.transport, "layout", 15)
    engine.close()
    again = ClickHouseEngine(ChdbTransport(path), fold_idle_s=3600)
    try:
        assert again.journeys(q) == want
    finally:
        again.close()


def test_a_store_of_layout_14_gets_its_node_events_per_slot(tmp_path: Path) -> None:
    """Node events are kept per slot since layout 15: an older store's log gets its
    executions' node events again, and its answers stay the same."""
    path = tmp_path / "ch"
    engine = ClickHouseEngine(ChdbTransport(path), fold_idle_s=3600)
    t0 = datetime(2024, 5, 1, 8)
    events = []
    for i in range(12):
        base = {"workflow_id": "wf", "execution_id": f"x{i}", "channel": "sms"}
        at = t0 + timedelta(minutes=20 * i)
        events += [{**base, "id": f"s{i}", "type": "execution.started", "timestamp": iso(at)},
                   {**base, "id": f"n{i}", "type": "node.completed", "node_id": f"n{i % 3}",
                    "node_type": "llm", "duration_ms": i, "timestamp": iso(at)}]  # fmt: skip
    q = ActivityQuery("acme", (Window(t0, t0 + timedelta(hours=3, minutes=5)),),
                      (Ask((0,), frozenset({"nodes"}), ("node_id",)),))  # fmt: skip

    def nodes(e: ClickHouseEngine) -> list[tuple[object, ...]]:
        return sorted((k, c.node_type, c.node_events, c.node_duration_sum)
                      for k, c in e.activity(q)[0].items())  # fmt: skip

    engine.append("acme", _valid(events)).result()
    engine.settle()
    # Executions 0 to 9 start in the window: n0 has 0, 3, 6, 9; n1 1, 4, 7; n2 2, 5, 8.
    want = [((0, "n0"), "llm", 4, 18), ((0, "n1"), "llm", 3, 12), ((0, "n2"), "llm", 3, 15)]
    assert nodes(engine) == want
    # As layout 14 left a store: a log without node events, no sums per slot of them.
    t = engine.transport
    t.command("ALTER TABLE execution_log UPDATE nodes = [] WHERE 1 SETTINGS mutations_sync = 1")
    t.command("TRUNCATE TABLE node_slots")
    folds.set_state(t, "layout", 14)
    engine.close()
    again = ClickHouseEngine(ChdbTransport(path), fold_idle_s=3600)
    try:
        assert nodes(again) == want
        got = sql.rows(again.transport.query("SELECT sum(events) FROM node_slots"))
        assert got == [(12,)]
    finally:
        again.close()


def _round_of_messages(r: int, t0: datetime) -> list[dict[str, object]]:
    """Per customer, a message before any of the rounds before (its first-seen time and
    first session move earlier) and one that extends its later session."""
    out = []
    for k in range(10):
        who = {"workflow_id": "wf", "customer_id": f"c{k}", "channel": "sms"}
        for m in (7 * k - 3 * r, 7 * k + 100 + 3 * r):
            kind = "message.received" if (m + r) % 2 else "message.sent"
            out.append({"id": f"r{r}-{k}-{m}", "type": kind,
                        "timestamp": iso(t0 + timedelta(minutes=m)), **who})  # fmt: skip
        # An execution that starts, and the one of the round before completing.
        started = t0 + timedelta(minutes=7 * k + r)
        out.append({**_started(r * 100 + k, started), "customer_id": f"c{k}"})
        if r:
            out.append({"id": f"done{r}-{k}", "type": "execution.completed", "duration_ms": 5,
                        "timestamp": iso(started), "workflow_id": "wf",
                        "execution_id": f"x{(r - 1) * 100 + k}", "customer_id": f"c{k}"})  # fmt: skip
            # Its node, and a node of the execution before that, which fails.
            node = {"timestamp": iso(started), "workflow_id": "wf", "customer_id": f"c{k}"}
            out.append({**node, "id": f"node{r}-{k}", "type": "node.completed",
                        "node_id": f"n{k % 2}", "node_type": "llm", "duration_ms": 3,
                        "execution_id": f"x{(r - 1) * 100 + k}"})  # fmt: skip
            if r > 1:
                out.append({**node, "id": f"nodefail{r}-{k}", "type": "node.failed",
                            "node_id": "n2", "node_type": "http", "error_type": "timeout",
                            "execution_id": f"x{(r - 2) * 100 + k}"})  # fmt: skip
    return out


def _tagged_rows(engine: ClickHouseEngine) -> dict[str, tuple[int, int, int]]:
    """Per tagged table: its rows, those of ``message_slots``' keys beyond the first, -1
    rows."""
    out = {}
    for tagged in FOLD_TAGGED:
        keys = ", ".join(tagged.keys)
        negative = "countIf(sign < 0)" if tagged.signed else "0"
        out[tagged.table] = sql.rows(
            engine.transport.query(
                f"SELECT count(), count() - (SELECT count() FROM (SELECT DISTINCT {keys}"
                f" FROM {tagged.table})), {negative} FROM {tagged.table}"
            )
        )[0]
    return out


def test_compaction_adds_up_the_rows_of_many_folds_and_keeps_to_answers_reading(
    tmp_path: Path,
) -> None:
    """Five folds of messages in the same slots (across a month's edge), sessions they
    extend and first-seen times they move earlier, executions that start in one and
    complete in the next: compaction leaves one row per key
    (no -1 rows) and every answer the same, also one reading with an older watermark
    while it runs (the rows of the folds after that one stay apart until it is done)."""
    engine = ClickHouseEngine(ChdbTransport(tmp_path / "ch"), fold_idle_s=3600)
    t0 = datetime(2024, 4, 30, 23, 10)
    windows = [Window(t0 - timedelta(days=1), t0 + timedelta(days=1)),
               Window(t0 + timedelta(minutes=7), t0 + timedelta(hours=2, minutes=1))]  # fmt: skip
    measures = frozenset({"messages", "executions"})
    activity_q = ActivityQuery("acme", tuple(windows), (Ask((0, 1), measures, ()),
                               Ask((1,), frozenset({"nodes"}), ("node_id",))),
                               workflow_ids=("wf",))  # fmt: skip

    def answers(folded: int | None = None) -> object:
        qs = [CustomerQuery("acme", (w,)) for w in windows]
        if folded is None:
            cells = engine.activity(activity_q)
            facts = [engine.customers(q)[0] for q in qs]
        else:  # with an older watermark, as an answer that began before the last fold
            cells = activity.activity(engine.transport, activity_q, folded, True)
            facts = [customer_facts.customers(engine.transport, q, folded, True)[0] for q in qs]
        return (
            [
                sorted(
                    (k, (c.sent, c.received, c.executions, c.successful, c.duration_sum))
                    for k, c in cells[0].items()
                )
            ],
            sorted(
                (
                    k,
                    (
                        c.node_type,
                        c.node_events,
                        c.node_ok,
                        c.node_errors,
                        c.node_duration_sum,
                        c.node_durations,
                    ),
                )
                for k, c in cells[1].items()
            ),
            [((f.known, f.new), (s := f.by_channel["sms"]).sessions, s.session_us) for f in facts],
        )

    def expected(events: list[dict[str, object]]) -> object:
        def count(kind: str, w: Window) -> int:
            return sum(e["type"] == kind and w.start <= _naive(e) <= w.end for e in events)

        done = {e["execution_id"] for e in events if e["type"] == "execution.completed"}

        def completed(w: Window) -> int:
            return sum(e["type"] == "execution.started" and e["execution_id"] in done
                       and w.start <= _naive(e) <= w.end for e in events)  # fmt: skip

        started = {e["execution_id"]: _naive(e) for e in events
                   if e["type"] == "execution.started"}  # fmt: skip
        nodes: dict[tuple[object, ...], list[object]] = {}
        for e in events:
            if str(e["type"]).startswith("node.") and windows[1].start <= started[
                e["execution_id"]] <= windows[1].end:  # fmt: skip
                n = nodes.setdefault((1, e["node_id"]), [e["node_type"], 0, 0, 0, 0, 0])
                ok = e["type"] == "node.completed"
                n[1:] = [n[1] + 1, n[2] + ok, n[3] + (not ok),
                         n[4] + int(e.get("duration_ms") or 0), n[5] + ("duration_ms" in e)]  # fmt: skip
        return (
            [[((i,), (count("message.sent", w), count("message.received", w),
                      count("execution.started", w), completed(w), 5 * completed(w)))
              for i, w in enumerate(windows)]],
            sorted((k, tuple(v)) for k, v in nodes.items()),
            [(_firsts(events, w), *_session_sums(events, w)[:2]) for w in windows],
        )  # fmt: skip

    try:
        events: list[dict[str, object]] = []
        assert engine.folder is not None
        for r in range(4):
            events += _round_of_messages(r, t0)
            engine.append("acme", _valid(_round_of_messages(r, t0))).result()
            engine.settle()
        with engine.folder.reading() as older:  # an answer reading as of the fourth fold
            events += _round_of_messages(4, t0)
            engine.append("acme", _valid(_round_of_messages(4, t0))).result()
            engine.settle()
            assert answers() == answers(older) == expected(events)
            before = _tagged_rows(engine)
            assert before["message_slots"][1] > 0 and before["sessions"][2] > 0
            assert before["first_times"][2] > 0 and before["execution_log"][2] > 0
            assert before["execution_slots"][1] > 0
            engine.folder.compact()  # as of the fourth fold: the fifth's rows stay apart
            pinned = _tagged_rows(engine)
            assert 0 < pinned["message_slots"][1] < before["message_slots"][1]
            assert answers() == answers(older) == expected(events)
        # A month whose rows all cancel out (a session made, then taken back) is dropped.
        session = "'acme', 'gone', 'sms', '2024-01-05 10:00:00', '2024-01-05 10:05:00', 2"
        made, taken_back = older + 1, engine.folder.watermark  # folds since the compaction
        engine.transport.command(
            f"INSERT INTO sessions VALUES ({session}, {made}, 1), ({session}, {taken_back}, -1)"
        )
        engine.folder.compact()
        after = _tagged_rows(engine)
        for table in ("sessions", "session_starts", "session_slots"):
            partitions = f"SELECT DISTINCT _partition_id FROM {table}"
            assert "202401" not in engine.transport.query(partitions).column(0).to_pylist()
        for table, (rows, extra, negative) in after.items():
            # The fifth fold's 20 -1 rows (10 executions completed, 10 with a node that
            # failed): under a quarter.
            if table == "execution_log":
                assert (extra, negative) == (20, 20) and negative * 4 < rows
            else:
                assert (extra, negative) == (0, 0), table
            assert rows < before[table][0], table
        assert answers() == expected(events)
        assert (
            engine.transport.query("SELECT uniqExact(_partition_id) FROM message_slots")
            .column(0)[0]
            .as_py()
            == 2
        )
    finally:
        engine.close()


def _naive(event: dict[str, object]) -> datetime:
    return datetime.fromisoformat(str(event["timestamp"])).replace(tzinfo=None)


def test_a_store_of_layout_10_gets_month_partitions(tmp_path: Path) -> None:
    """Layout 11 partitions the tagged tables by month (so compaction can replace one at
    a time): an older store's rows are copied into them when it opens, also when the
    copy was cut off half way (one table renamed, its new one half filled)."""
    path = tmp_path / "ch"
    engine = ClickHouseEngine(ChdbTransport(path), fold_idle_s=3600)
    t0 = datetime(2024, 4, 30, 23, 10)
    q = CustomerQuery("acme", (Window(t0 - timedelta(days=1), t0 + timedelta(days=1)),))
    for r in range(3):
        engine.append("acme", _valid(_round_of_messages(r, t0))).result()
        engine.settle()
    journey = {"id": "j1", "type": "journey.step", "journey_id": "j1", "journey_type": "onboarding",
               "step": 1, "step_name": "s1", "customer_id": "c1", "timestamp": iso(t0)}  # fmt: skip
    engine.append("acme", _valid([journey])).result()
    engine.settle()
    want = engine.customers(q)
    t = engine.transport
    t.command("DROP VIEW session_starts_mv")
    t.command("DROP VIEW session_slots_mv")
    t.command("DROP VIEW first_times_mv")
    unpartitioned = {
        s.split(" (")[0].split()[-1]: "\n".join(
            line for line in s.splitlines() if not line.startswith("PARTITION BY")
        )
        for s in ddl()
        if s.startswith("CREATE TABLE IF NOT EXISTS")
    }
    for table in ("message_slots", "session_slots", "sessions", "customer_firsts", "first_times"):
        t.command(f"RENAME TABLE {table} TO {table}_rows")
        t.command(unpartitioned[table])  # as layout 10 made it
        t.command(f"INSERT INTO {table} SELECT * FROM {table}_rows")
        t.command(f"DROP TABLE {table}_rows")
    # Cut off while copying sessions: its rows in the old table, the new one half full.
    t.command("RENAME TABLE sessions TO sessions_layout10")
    t.command(next(s for s in ddl() if s.startswith("CREATE TABLE IF NOT EXISTS sessions (")))
    t.command("INSERT INTO sessions SELECT * FROM sessions_layout10 LIMIT 3")
    for statement in ddl():
        t.command(statement)
    folds.set_state(t, "layout", 10)
    engine.close()
    again = ClickHouseEngine(ChdbTransport(path), fold_idle_s=3600)
    try:
        keys = sql.rows(
            again.transport.query(
                "SELECT name, partition_key FROM system.tables WHERE database = currentDatabase()"
                " AND name IN ('message_slots', 'session_slots', 'sessions', 'customer_firsts',"
                " 'first_times', 'sessions_layout10') ORDER BY name"
            )
        )
        assert len(keys) == 5 and all(key for _, key in keys)
        # Only what is new since layout 10 is worked out again (not the journeys).
        assert again.transport.query("SELECT count() FROM journeys").column(0)[0].as_py() == 1
        assert again.customers(q) == want
        again.append("acme", _valid(_round_of_messages(3, t0))).result()
        again.settle()  # the views feed the new tables
        events = [e for r in range(4) for e in _round_of_messages(r, t0)]
        (got,) = again.customers(q)
        s = got.by_channel["sms"]
        assert (got.known, got.new) == _firsts(events, q.windows[0])
        assert (s.sessions, s.session_us, s.session_messages) == _session_sums(events, q.windows[0])
    finally:
        again.close()


def test_what_answers_look_up_first_follows_every_commit(tmp_path: Path) -> None:
    """Workflows and journey types are kept in memory per data version: a commit that
    adds one is seen by the next lookup, folded or not."""
    engine = ClickHouseEngine(ChdbTransport(tmp_path / "ch"), fold_idle_s=3600)
    try:

        def step(i: int, kind: str) -> dict[str, object]:
            return {"id": f"j{i}", "type": "journey.step", "journey_id": f"j{i}",
                    "journey_type": kind, "step": 1, "step_name": "s1", "customer_id": "c",
                    "timestamp": iso(NOW - timedelta(hours=i))}  # fmt: skip

        engine.append(
            "acme", _valid([step(1, "a"), _started(1, NOW - timedelta(hours=1))])
        ).result()
        engine.settle()
        assert (engine.journey_types("acme"), [w.workflow_id for w in engine.workflows("acme")]) \
            == (["a"], ["wf"])  # fmt: skip
        moved = {**_started(2, NOW - timedelta(hours=2)), "workflow_id": "wf-2"}
        engine.append("acme", _valid([step(2, "b"), moved])).result()
        assert sorted(engine.journey_types("acme")) == ["a", "b"]
        assert engine.workflow("acme", "wf-2") is not None
    finally:
        engine.close()


def test_distinct_customers_count_numbers_folded_or_not(tmp_path: Path) -> None:
    """Folded executions carry their customers' numbers; executions not folded yet look
    theirs up as of the watermark, and customers without one are counted by id: each
    customer once, before the fold, after it, and in a store of layout 11 (whose
    folded executions get their numbers when it opens, and their sums per slot)."""
    path = tmp_path / "ch"
    engine = ClickHouseEngine(ChdbTransport(path), fold_idle_s=3600)
    t0 = datetime(2024, 5, 1, 12)

    def execution(i: int, customer: str) -> dict[str, object]:
        return {**_started(i, t0 + timedelta(minutes=i)), "customer_id": customer}

    window = Window(t0 - timedelta(hours=1), t0 + timedelta(hours=1))
    q = ActivityQuery("acme", (window,), (Ask((0,), frozenset({"customers"})),))

    def customers(store: ClickHouseEngine) -> int:
        return int(store.activity(q)[0][(0,)].customers)

    engine.append("acme", _valid([execution(i, f"c{i}") for i in range(5)])).result()
    engine.settle()
    later = [execution(5, "c3"), execution(6, "c4"), execution(7, "c5"), execution(8, "c6")]
    engine.append("acme", _valid(later)).result()
    assert customers(engine) == 7  # c3 and c4 by number on both sides, c5 and c6 by id
    engine.settle()
    assert customers(engine) == 7
    t = engine.transport
    t.command("ALTER TABLE executions UPDATE customer_num = 0 WHERE 1 SETTINGS mutations_sync = 1")
    t.command("TRUNCATE TABLE customer_numbers")  # layout 11 numbered message senders only
    for table in ("execution_log", "execution_slots"):  # new in layout 13
        t.command(f"TRUNCATE TABLE {table}")
    folds.set_state(t, "layout", 11)
    engine.close()
    again = ClickHouseEngine(ChdbTransport(path), fold_idle_s=3600)
    try:
        unnumbered = again.transport.query(
            "SELECT count() FROM executions FINAL WHERE customer_id IS NOT NULL"
            " AND customer_num = 0"
        )
        assert unnumbered.column(0)[0].as_py() == 0
        assert customers(again) == 7
        assert _sums_by_workflow(again) == _sums_of_rows(_executions(again)) != {}
    finally:
        again.close()


@pytest.mark.parametrize("gap_us", [0, 1, -1])
def test_a_period_and_its_parts_whether_or_not_they_tile_it(
    transport: ChdbTransport, gap_us: int
) -> None:
    """A period's cells are its parts' grand totals only when the parts cover it
    exactly; with a microsecond's gap between them (or an overlap), it is read on its
    own. Expected: each window's executions counted here, one by one."""
    engine = ClickHouseEngine(transport, fold_idle_s=3600)
    a = datetime(2024, 5, 1)
    b, m = a + timedelta(hours=6), a + timedelta(hours=3)
    us = timedelta(microseconds=1)
    starts = [a, b, m, m - us, m + us, *(a + timedelta(minutes=7 * i) for i in range(60))]
    events = []
    for i, t in enumerate(starts):
        events.append({**_started(i, t), "customer_id": f"c{i % 7}",
                       "channel": ("sms", "voice")[i % 2]})  # fmt: skip
        events.append({"id": f"d{i}", "type": "execution.completed", "duration_ms": 10 * i,
                       "timestamp": iso(t + timedelta(seconds=1)),
                       "workflow_id": "wf", "execution_id": f"x{i}"})  # fmt: skip
    engine.append("acme", _valid(events)).result()
    whole = Window(a, b)
    windows = (whole, Window(a, m - us), Window(m + gap_us * us, b))
    all_three = (0, 1, 2)
    q = ActivityQuery("acme", windows, (
        Ask(all_three, frozenset({"customers"})),
        Ask(all_three, frozenset({"executions", "durations"}), ("channel",)),
        Ask(all_three, frozenset({"executions"})),
    ), quantiles=(0.5,))  # fmt: skip
    for settled in (False, True):
        if settled:
            engine.settle()
        customers, by_channel, totals = engine.activity(q)
        for w, window in enumerate(windows):
            inside = [i for i, t in enumerate(starts) if window.start <= t <= window.end]
            assert customers[(w,)].customers == len({i % 7 for i in inside})
            assert totals[(w,)].executions == len(inside)
            for c, channel in enumerate(("sms", "voice")):
                mine = [i for i in inside if i % 2 == c]
                assert by_channel[(w, channel)].executions == len(mine)
                assert by_channel[(w, channel)].quantiles == (
                    float(np.percentile([10 * i for i in mine], 50)),
                )
    engine.close()


def test_a_journey_whose_type_or_first_step_changes_leaves_its_old_key(
    transport: ChdbTransport,
) -> None:
    """Folded journeys are ordered by type and first step: late events that move a
    journey's first step out of the period, or give it an earlier type, leave a deleted
    row at its old key, so it is counted where it is now, before the fold and after."""
    engine = ClickHouseEngine(transport, fold_idle_s=3600)
    t0 = datetime(2024, 5, 1, 12)

    def step(journey: str, at: timedelta, kind: str = "onboarding") -> dict[str, object]:
        return {"id": f"{journey}-{at}-{kind}", "type": "journey.step", "step": 1,
                "step_name": "start", "journey_type": kind, "journey_id": journey, "customer_id": "c",
                "timestamp": iso(t0 + at)}  # fmt: skip

    window = Window(t0, t0 + timedelta(days=1))

    def counted() -> dict[str, int]:
        return {kind: engine.journeys(JourneyQuery("acme", kind, window, True)).journeys
                for kind in ("onboarding", "sales")}  # fmt: skip

    hour = timedelta(hours=1)
    engine.append("acme", _valid([step("j1", 2 * hour), step("j2", 3 * hour)])).result()
    engine.settle()
    assert counted() == {"onboarding": 2, "sales": 0}
    # j1 first stepped before the period; j2's earliest event is of another type.
    late = [step("j1", -2 * hour), step("j2", hour, "sales"), step("j3", 4 * hour)]
    engine.append("acme", _valid(late)).result()
    assert counted() == {"onboarding": 1, "sales": 1}  # not folded yet
    engine.settle()
    assert counted() == {"onboarding": 1, "sales": 1}
    assert sorted(engine.journey_types("acme")) == ["onboarding", "sales"]
    live = transport.query("SELECT count() FROM journeys FINAL").column(0)[0].as_py()
    assert live == 3
    engine.close()


@pytest.mark.parametrize("few", [True, False])
def test_a_workflows_days_held_in_memory_follow_every_fold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, few: bool
) -> None:
    """A workflow's folded executions (``few``: or, for a busy workflow, their sums per
    slot) and its other sums per slot are held in memory per day once read; a fold
    drops the days it changed (a late failure changes the day its execution started),
    and an answer with an earlier watermark reads the days as of that watermark
    without keeping them. Expected: the events counted here, one by one."""
    if not few:
        monkeypatch.setattr(activity, "MEMORY_EXECUTIONS", 0)
    engine = ClickHouseEngine(ChdbTransport(tmp_path / "ch"), fold_idle_s=3600)
    d0 = datetime(2024, 5, 1)
    window = Window(d0 + timedelta(minutes=7), d0 + timedelta(days=2, hours=20, minutes=53))
    q = ActivityQuery("acme", (window,), (
        Ask((0,), frozenset({"executions"}), ("channel",)),
        Ask((0,), frozenset({"messages"})),
        Ask((0,), frozenset({"nodes"}), ("node_id",)),
        Ask((0,), frozenset({"customers", "durations"})),
        Ask((0,), frozenset({"durations"})),
        Ask((0,), frozenset({"executions"}), ("hour",)),
    ), workflow_ids=("wf",), quantiles=(0.5, 0.9))  # fmt: skip
    starts: dict[int, tuple[datetime, str]] = {}
    ended: dict[int, tuple[str, int]] = {}
    customer: dict[int, str] = {}
    messages: list[datetime] = []
    nodes: list[tuple[datetime, str, int]] = []  # start of the execution, node, duration

    def execution(
        i: int, t: datetime, channel: str, who: str | None = None
    ) -> list[dict[str, object]]:
        starts[i] = (t, channel)
        ended[i] = ("completed", i)
        customer[i] = who or f"c{i % 7}"
        nodes.append((t, f"n{i % 2}", i))
        base = {"workflow_id": "wf", "execution_id": f"x{i}", "channel": channel,
                "customer_id": customer[i]}  # fmt: skip
        return [{**base, "id": f"s{i}", "type": "execution.started", "timestamp": iso(t)},
                {**base, "id": f"c{i}", "type": "execution.completed", "duration_ms": i,
                 "timestamp": iso(t + timedelta(seconds=1))},
                {**base, "id": f"n{i}", "type": "node.completed", "node_id": f"n{i % 2}",
                 "node_type": "llm", "duration_ms": i, "timestamp": iso(t)}]  # fmt: skip

    def message(k: int, t: datetime) -> dict[str, object]:
        messages.append(t)
        return {"id": f"m{k}", "type": "message.sent", "timestamp": iso(t),
                "workflow_id": "wf", "customer_id": "c", "channel": "sms"}  # fmt: skip

    Facts = tuple[
        dict[object, tuple[int, int, int, int]], int, dict[object, int], object, object, object
    ]

    def want() -> Facts:
        inside = {i for i, (t, _) in starts.items() if window.start <= t <= window.end}
        by_channel: dict[object, tuple[int, int, int, int]] = {}
        for ch in {starts[i][1] for i in inside}:
            mine = [i for i in inside if starts[i][1] == ch]
            ok = [i for i in mine if ended[i][0] == "completed"]
            by_channel[(0, ch)] = (len(mine), len(ok), len(mine) - len(ok),
                                   sum(ended[i][1] for i in mine))  # fmt: skip
        sent = sum(window.start <= t <= window.end for t in messages)
        per_node: dict[object, int] = {}
        for t, node, _ in nodes:
            if window.start <= t <= window.end:
                per_node[(0, node)] = per_node.get((0, node), 0) + 1
        durations = [ended[i][1] for i in inside]
        quantiles = tuple(float(np.percentile(durations, p)) for p in (50, 90))
        hours: dict[object, int] = {}
        for i in inside:
            at = starts[i][0].replace(minute=0, second=0, microsecond=0)
            hours[(0, at)] = hours.get((0, at), 0) + 1
        overall = (len({customer[i] for i in inside}), quantiles)
        return by_channel, sent, per_node, overall, quantiles, hours

    def got(cells: list[Cells] | None = None) -> Facts:
        execs, msgs, per_node, overall, durations, per_hour = cells or engine.activity(q)
        return (
            {k: (c.executions, c.successful, c.failed, c.duration_sum)
             for k, c in execs.items() if c.executions},
            sum(c.sent for c in msgs.values()),
            {k: c.node_events for k, c in per_node.items()},
            (overall[(0,)].customers, overall[(0,)].quantiles),
            durations[(0,)].quantiles,
            {k: c.executions for k, c in per_hour.items() if c.executions},
        )  # fmt: skip

    events = []
    for i in range(60):  # every 70 minutes over three days, the window's edges cut slots
        events += execution(i, d0 + timedelta(minutes=70 * i + 3), ("sms", "voice")[i % 2])
        events.append(message(i, d0 + timedelta(minutes=70 * i + 11)))
    # Customers seen only in the slots the window's edges cut, inside it and outside.
    end = window.end
    for i, (t, who) in enumerate([(window.start + timedelta(minutes=3), "edge"),
                                  (end - timedelta(minutes=3), "edge2"),
                                  (end + timedelta(minutes=2), "outside")], start=200):  # fmt: skip
        events += execution(i, t, "sms", who)
    # An execution known from its completion alone: it started 1 s before, for "cz".
    done = d0 + timedelta(days=2, hours=3)  # a day nothing else of the late events is on
    lone = {"workflow_id": "wf", "execution_id": "y", "channel": "sms"}
    events.append({**lone, "id": "yc", "type": "execution.completed", "duration_ms": 1000,
                   "timestamp": iso(done), "customer_id": "cz"})  # fmt: skip
    starts[100], ended[100], customer[100] = (
        (done - timedelta(seconds=1), "sms"),
        ("completed", 1000),
        "cz",
    )
    engine.append("acme", _valid(events)).result()
    engine.settle()
    assert got() == want()
    cache = engine.workflow_days
    assert cache is not None and cache.nbytes > 0
    assert got() == want()  # from the days held
    first_fold = engine.folder.watermark if engine.folder else 0
    # The second day gains executions and messages; an execution of the first day fails
    # later than it completed (the later terminal event wins).
    late = []
    for i in range(60, 70):
        late += execution(i, d0 + timedelta(days=1, minutes=50 * (i - 60) + 5), "voice")
        late.append(message(i, d0 + timedelta(days=1, minutes=50 * (i - 60) + 9)))
    late.append({"id": "f1", "type": "execution.failed", "error_type": "timeout",
                 "timestamp": iso(starts[1][0] + timedelta(seconds=5)),
                 "workflow_id": "wf", "execution_id": "x1", "channel": "voice"})  # fmt: skip
    ended[1] = ("failed", 5000)  # its duration from the timestamps: 5 s
    # The lone execution's start arrives, for another customer: only its customer
    # changes (a fold that writes nothing else for its day).
    late.append({**lone, "id": "ys", "type": "execution.started",
                 "timestamp": iso(starts[100][0]), "customer_id": "c0"})  # fmt: skip
    customer[100] = "c0"
    engine.append("acme", _valid(late)).result()
    assert got() == want()  # not folded yet: read from the events
    engine.settle()
    assert got() == want()

    # An answer that began before the second fold finished: as of the first fold's
    # watermark, with the late events merged (the days it reads are not kept).
    def days(first: int, last: int) -> workflow_days.Days:
        return cache.days("acme", "wf", first, last, first_fold)

    assert got(activity.activity(engine.transport, q, first_fold, True, days)) == want()
    assert got() == want()
    engine.close()
