"""Per-15-minute rollups of each workflow: executions, their nodes and customers, messages.

The workflow endpoints add up whole 15-minute UTC slots (every bucket edge, in
every time zone, is a slot edge) instead of scanning every execution and
message of the period:

- ``exec_slots``: per (tenant, workflow, slot of ``started_at``, channel,
  error type) the execution counts and duration sums, and the latest start;
- ``exec_customers``: per (tenant, workflow, slot) a Roaring bitmap of the
  numbers of the executions' customers (distinct counts are not additive);
- ``node_slots``: per (tenant, workflow, slot, node) the node event counts;
- ``message_slots``: per (tenant, workflow, slot, channel) messages sent and
  received, the feedback's CSAT sum and count, and the latest timestamp.

A query adds up the rows of a workflow's slots in memory (``rollup_cache``,
which keeps them by UTC day and drops the days each fold reports changed).

Executions change when late events merge into them (status, start, customer),
so the execution rollups are rebuilt, for every slot an execution left or
joined, from the ``executions`` table each time it is folded. Messages never
change: their rollup only adds. A query takes the slots a rollup has right,
and reads the rest from the rows themselves: slots cut by the period's edges,
slots of executions touched by events not yet folded, and messages not yet
folded (see ``query.slots``).
"""

from __future__ import annotations

import duckdb

from kaie_analytics.engines.duckdb.active_customers import put_bitmaps
from kaie_analytics.engines.duckdb.times import DAY_US, SLOT_US

WATERMARK = "message_slots_seq"
BUILT = "exec_rollups_built"
#: The rollup layout this code writes; an older data directory is rebuilt once.
LAYOUT = 6
MESSAGE_TYPES = frozenset(("message.sent", "message.received", "feedback.submitted"))
FEED = (
    "type IN ('feedback.submitted', 'message.received', 'message.sent') AND workflow_id IS NOT NULL"
)

DDL = [
    """CREATE TABLE IF NOT EXISTS exec_slots (
        tenant VARCHAR NOT NULL, workflow_id VARCHAR NOT NULL, slot BIGINT NOT NULL,
        channel VARCHAR, error_type VARCHAR, total BIGINT NOT NULL, ok BIGINT NOT NULL,
        failed BIGINT NOT NULL, dur_sum HUGEINT, dur_n BIGINT NOT NULL, last_start BIGINT)""",
    """CREATE TABLE IF NOT EXISTS exec_customers (
        tenant VARCHAR NOT NULL, workflow_id VARCHAR NOT NULL, slot BIGINT NOT NULL,
        customers BLOB NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS node_slots (
        tenant VARCHAR NOT NULL, workflow_id VARCHAR NOT NULL, slot BIGINT NOT NULL,
        node_id VARCHAR, node_type VARCHAR, type_ts TIMESTAMP, n BIGINT NOT NULL,
        ok BIGINT NOT NULL, dur_sum HUGEINT, dur_n BIGINT NOT NULL, errors BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS message_slots (
        tenant VARCHAR NOT NULL, workflow_id VARCHAR NOT NULL, slot BIGINT NOT NULL,
        channel VARCHAR, sent BIGINT NOT NULL, received BIGINT NOT NULL, csat_sum HUGEINT,
        csat_n BIGINT NOT NULL, last_ts BIGINT)""",
    """CREATE TABLE IF NOT EXISTS session_slots (
        tenant VARCHAR NOT NULL, channel VARCHAR NOT NULL, slot BIGINT NOT NULL,
        n BIGINT NOT NULL, dur_us HUGEINT NOT NULL, size HUGEINT NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS session_days AS SELECT * FROM session_slots WHERE false",
    f"INSERT OR IGNORE INTO store_state VALUES ('{BUILT}', 0)",
    # Layout 6: the latest time in each row (µs), so a slot an edge cuts but whose
    # events all come before the edge needs no raw read. Filled by the rebuild.
    "ALTER TABLE exec_slots ADD COLUMN IF NOT EXISTS last_start BIGINT",
    "ALTER TABLE message_slots ADD COLUMN IF NOT EXISTS last_ts BIGINT",
]
SLOTS_PER_DAY = DAY_US // SLOT_US
#: Day tables of an earlier layout: the workflow queries now add up slot rows in
#: memory (``rollup_cache``), so nothing reads them.
DDL += [
    f"DROP TABLE IF EXISTS {day}"
    for day in ("exec_days", "node_days", "message_days", "exec_customer_days")
]
#: (tenant, workflow, UTC day) whose rollups a fold changed.
DayKey = tuple[str, str, int]


def slot_of(column: str) -> str:
    return f"(epoch_us({column}) // {SLOT_US})"


#: Execution sums of a set of executions rows ``x`` (shared with the raw reads).
EXEC_SUMS = """count(*) AS total, count(*) FILTER (WHERE x.status = 1) AS ok,
    count(*) FILTER (WHERE x.status = 2) AS failed,
    sum(x.duration_ms) FILTER (WHERE x.status > 0) AS dur_sum,
    count(x.duration_ms) FILTER (WHERE x.status > 0) AS dur_n"""
#: Node sums over ``n``, the unnested ``nodes`` of executions.
NODE_SUMS = """arg_max(n.node_type, n.ts) AS node_type, max(n.ts) AS type_ts, count(*) AS n,
    count(*) FILTER (WHERE n.ok) AS ok, sum(n.dur) AS dur_sum, count(n.dur) AS dur_n,
    count(*) FILTER (WHERE NOT n.ok) AS errors"""
#: Message sums over events ``e``.
MESSAGE_SUMS = """count(*) FILTER (WHERE e.type = 'message.sent') AS sent,
    count(*) FILTER (WHERE e.type = 'message.received') AS received,
    sum(e.csat) FILTER (WHERE e.type = 'feedback.submitted') AS csat_sum,
    count(e.csat) FILTER (WHERE e.type = 'feedback.submitted') AS csat_n"""

_SLOT_KEYS = ("tenant", "workflow_id", "slot")
_STALE = "EXISTS (SELECT 1 FROM touched_slots t WHERE t.tenant = r.tenant" \
    " AND t.workflow_id = r.workflow_id AND t.slot = r.slot)"  # fmt: skip


def day_of(slot: str) -> str:
    """The first slot of the day of ``slot`` (SQL)."""
    return f"({slot} // {SLOTS_PER_DAY} * {SLOTS_PER_DAY})"


def touched_days(con: duckdb.DuckDBPyConnection, table: str) -> set[DayKey]:
    """The (tenant, workflow, UTC day number) of the slots in ``table``."""
    rows = con.execute(
        f"SELECT DISTINCT tenant, workflow_id, slot // {SLOTS_PER_DAY} FROM {table}"
        " WHERE workflow_id IS NOT NULL"
    ).fetchall()
    return {(t, w, int(d)) for t, w, d in rows}


def refresh_executions(con: duckdb.DuckDBPyConnection, everything: bool = False) -> set[DayKey]:
    """Rebuild the execution rollups of the slots in temp table ``touched_slots``.

    ``touched_slots`` (tenant, workflow_id, slot) holds every slot an execution
    left or joined. With ``everything``, rebuild all of them from scratch.
    Runs in the fold's transaction, after ``executions`` is up to date.
    Returns the days whose rollups changed.
    """
    if everything:
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE touched_slots AS SELECT DISTINCT tenant, workflow_id,"
            f" {slot_of('started_at')} AS slot FROM executions"
            " WHERE workflow_id IS NOT NULL AND started_at IS NOT NULL"
        )
        where = "x.workflow_id IS NOT NULL AND x.started_at IS NOT NULL"
    else:
        (lo, hi) = con.execute("SELECT min(slot), max(slot) FROM touched_slots").fetchall()[0]
        if lo is None:
            con.execute("DROP TABLE touched_slots")
            return set()
        # Literal bounds let zone maps skip the executions of other times.
        where = f"""x.started_at >= make_timestamp({int(lo) * SLOT_US})
            AND x.started_at < make_timestamp({(int(hi) + 1) * SLOT_US})
            AND x.workflow_id IS NOT NULL
            AND (x.tenant, x.workflow_id, {slot_of("x.started_at")}) IN
                (SELECT tenant, workflow_id, slot FROM touched_slots)"""
    con.execute(
        f"""CREATE TEMP TABLE slot_execs AS
        SELECT x.tenant, x.workflow_id, {slot_of("x.started_at")} AS slot, x.channel,
            x.error_type, x.customer_num, x.status, x.duration_ms, x.nodes,
            epoch_us(x.started_at) AS t
        FROM executions x WHERE {where}"""
    )
    try:
        for table in ("exec_slots", "node_slots"):
            con.execute(f"DELETE FROM {table} r WHERE {_STALE}")
        con.execute(
            f"""INSERT INTO exec_slots
            SELECT tenant, workflow_id, slot, channel, error_type, {EXEC_SUMS}, max(x.t)
            FROM slot_execs x GROUP BY ALL ORDER BY tenant, workflow_id, slot"""
        )
        con.execute(
            f"""INSERT INTO node_slots
            SELECT tenant, workflow_id, slot, n.node_id, {NODE_SUMS}
            FROM (SELECT tenant, workflow_id, slot, unnest(nodes) AS n FROM slot_execs)
            GROUP BY ALL ORDER BY tenant, workflow_id, slot"""
        )
        put_bitmaps(
            con,
            "exec_customers",
            _SLOT_KEYS,
            """(SELECT tenant, workflow_id, slot,
                    list(DISTINCT customer_num ORDER BY customer_num) AS nums
                FROM slot_execs WHERE customer_num IS NOT NULL
                GROUP BY ALL ORDER BY tenant, workflow_id, slot)""",
            replace="touched_slots",
            merge=False,
        )
        return touched_days(con, "touched_slots")
    finally:
        con.execute("DROP TABLE slot_execs")
        con.execute("DROP TABLE IF EXISTS touched_slots")


def fold_messages(con: duckdb.DuckDBPyConnection, lo_seq: int, hi_seq: int) -> set[DayKey]:
    """Add the messages and feedback in (lo_seq, hi_seq] to ``message_slots``.

    Returns the days whose rollups changed.
    """
    con.execute(
        f"""CREATE TEMP TABLE message_delta AS
        SELECT e.tenant, e.workflow_id, {slot_of("e.ts")} AS slot, e.channel, {MESSAGE_SUMS},
            max(epoch_us(e.ts)) AS last_ts
        FROM events e WHERE seq > {int(lo_seq)} AND seq <= {int(hi_seq)} AND {FEED}
        GROUP BY ALL"""
    )
    try:
        same = """t.tenant = r.tenant AND t.workflow_id = r.workflow_id AND t.slot = r.slot
            AND t.channel IS NOT DISTINCT FROM r.channel"""
        con.execute(
            f"""CREATE TEMP TABLE message_merged AS
            SELECT tenant, workflow_id, slot, channel, sum(sent), sum(received), sum(csat_sum),
                sum(csat_n), max(last_ts)
            FROM (SELECT * FROM message_slots r
                  WHERE EXISTS (SELECT 1 FROM message_delta t WHERE {same})
                  UNION ALL SELECT * FROM message_delta)
            GROUP BY ALL"""
        )
        con.execute(
            f"DELETE FROM message_slots r WHERE EXISTS (SELECT 1 FROM message_delta t WHERE {same})"
        )
        con.execute(
            "INSERT INTO message_slots SELECT * FROM message_merged"
            " ORDER BY tenant, workflow_id, slot"
        )
        return touched_days(con, "message_delta")
    finally:
        con.execute("DROP TABLE IF EXISTS message_merged")
        con.execute("DROP TABLE message_delta")


def rebuild_messages(con: duckdb.DuckDBPyConnection) -> None:
    """Rebuild ``message_slots`` from every event its watermark has folded (an upgrade)."""
    (upto,) = con.execute("SELECT value FROM store_state WHERE key = ?", [WATERMARK]).fetchall()[0]
    con.execute("DELETE FROM message_slots")
    fold_messages(con, 0, int(upto))


def refresh_sessions(con: duckdb.DuckDBPyConnection) -> None:
    """Rebuild the session rollups of the keys in temp table ``touched_rows``.

    ``session_slots`` sums, per (tenant, channel, slot of the session's first
    message), the sessions, their durations and sizes; ``session_days`` sums
    a UTC day's slots. ``touched_rows`` (tenant, channel, slot) is left by the
    fold of ``sessions`` (``derived.compact_statements``); dropped here.
    """
    try:
        (lo, hi) = con.execute("SELECT min(slot), max(slot) FROM touched_rows").fetchall()[0]
        if lo is None:
            return
        for table, key, rows, bounds in (
            (
                "session_slots",
                "touched_rows",
                f"""SELECT tenant, channel, {slot_of("first_ts")} AS slot, count(*),
                    sum(epoch_us(last_ts) - epoch_us(first_ts)), sum(size) FROM sessions s""",
                f"""first_ts >= make_timestamp({int(lo) * SLOT_US})
                    AND first_ts < make_timestamp({(int(hi) + 1) * SLOT_US})""",
            ),
            (
                "session_days",
                "touched_session_days",
                f"""SELECT tenant, channel, {day_of("slot")} AS slot, sum(n), sum(dur_us),
                    sum(size) FROM session_slots s""",
                f"slot BETWEEN {int(lo) - SLOTS_PER_DAY} AND {int(hi) + SLOTS_PER_DAY}",
            ),
        ):
            if table == "session_days":
                con.execute(
                    "CREATE TEMP TABLE touched_session_days AS SELECT DISTINCT tenant, channel,"
                    f" {day_of('slot')} AS slot FROM touched_rows"
                )
            on = f"""EXISTS (SELECT 1 FROM {key} t WHERE t.tenant = s.tenant
                AND t.channel = s.channel AND t.slot = {{slot}})"""
            con.execute(f"DELETE FROM {table} s WHERE {on.format(slot='s.slot')}")
            slot_expr = slot_of("s.first_ts") if table == "session_slots" else day_of("s.slot")
            con.execute(
                f"""INSERT INTO {table} {rows}
                WHERE {bounds} AND {on.format(slot=slot_expr)}
                GROUP BY ALL ORDER BY 1, 3"""
            )
    finally:
        con.execute("DROP TABLE IF EXISTS touched_session_days")
        con.execute("DROP TABLE IF EXISTS touched_rows")
