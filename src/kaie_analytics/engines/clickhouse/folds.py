"""The fold: executions merged from their states into ``executions``, in the background.

Every execution event is in ``executions_state`` as soon as it is inserted (a
materialized view), so merging an execution is always exact; the fold keeps
the merged rows in ``executions``, ordered by tenant, workflow and start, so a
workflow's period is read as one range instead of merging every execution of
the tenant. Queries read the folded rows except those of executions with
events ingested after the fold's watermark, which they merge themselves
(``sql.executions``): an answer never waits for a fold.

One fold, for the events ingested in (watermark, new watermark]:

1. the merged rows of the executions they change are written to
   ``executions`` (version: the new watermark), and a deleted row at the old
   key of each whose key (workflow, start) changed, found in
   ``execution_keys``;
2. their keys are written to ``execution_keys``, and how they change to
   ``execution_log`` (views add that up per slot in ``execution_slots`` and, of
   their node events, ``node_slots``),
   tagged with the new watermark;
3. their messages and feedback, added up per workflow, channel and slot, are
   written to ``message_slots``, and how the sessions of their conversations
   change to ``sessions`` (views copy those to ``session_starts`` and add them
   up in ``session_slots``), all tagged with the new watermark; the customers
   that sent them get numbers (tagged likewise), added to ``active_customers``
   per slot and channel; and how the first-seen times of the customers of
   the new events change goes to ``customer_firsts`` (a view copies it to
   ``first_times``), tagged likewise; their journeys are worked out again
   from their states into ``journeys`` (version: the new watermark), with a
   deleted row at the old key (type, first step) of each whose key changed,
   found in ``journey_keys``, and their keys written there, and each type's
   journeys whose first steps are in the slots theirs were in or are in now
   are added up again into ``journey_slots`` (version: the new watermark);
4. the new watermark is written to ``engine_state``, and the workflows and days
   the fold wrote anything for are reported to the days held in memory
   (``workflow_days``, before answers read with the new watermark).

Steps 1 and 2 (the log aside), ``active_customers``, ``journeys`` and
``journey_slots`` are idempotent, and a customer is given a number once; the
log and the other rows of step 3 of a fold cut off before step 4 are taken
away by the next fold before it writes its own (queries read only rows tagged
up to the watermark they use, and a fold builds on the rows as of the
watermark before it; numbers given after the watermark are left out of
answers). Answers read ``journey_slots`` only while none of the tenant's
events wait for a fold, and the next fold makes every slot one cut off
touched again, at a later version. So a fold cut off at any point (a crash)
is simply done again by the next one. Every ``COMPACT_EVERY_S``, the rows of
many folds are added up into one per key (``compaction``).

The watermark is exact when one process writes (embedded chdb): the writer
gives each insert a later ``ingested_at`` than the one before, and a fold
takes only events of inserts that have returned (an insert still running may
have its events visible before what the views derive from them). With
several API processes on one server, inserts of different processes
interleave, so the fold runs only embedded.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa

from kaie_analytics.engines.clickhouse import compaction, schema, sql
from kaie_analytics.engines.clickhouse.customers import (
    add_up_journeys,
    first_changes,
    journey_sums,
    journeys_sql,
    session_changes,
)
from kaie_analytics.engines.clickhouse.schema import (
    CUSTOMER_STATES,
    EXEC_TYPES,
    EXECUTION_STATES,
    FEED_TYPES,
    FOLD_TAGGED,
    JOURNEY_STATES,
    JOURNEY_TYPES,
    LAYOUT,
    MESSAGE_ROLLUP_TYPES,
    NODE_TYPES,
    SLOT_US,
    SLOTS_FROM_US,
    SLOTS_PER_DAY,
    executions_state_view,
)
from kaie_analytics.engines.clickhouse.transport import Transport
from kaie_analytics.engines.dedupe import IdIndex

log = logging.getLogger("kaie_analytics.store")

WATERMARK = "executions_folded"
#: The fold up to which the tagged rows were last compacted (``compaction``).
COMPACTED = "folds_compacted"
#: Seconds between compactions while folds come in.
COMPACT_EVERY_S = 300.0
#: The events a fold takes up: those ingested in (lo, hi].
_IN_FOLD = sql.ingested("{lo:Int64}", "{hi:Int64}")
#: The executions the fold's events touch, with their ids' hashes.
_TOUCHED = (
    f"SELECT DISTINCT execution_id, {sql.id_hash('execution_id')} FROM events"
    " WHERE tenant = {tenant:String} AND type IN " + FEED_TYPES
    + " AND execution_id IS NOT NULL AND " + _IN_FOLD
)  # fmt: skip
#: Those of them that may have events from before the fold (``Folder._seen``). Only
#: these are looked up in the tables ordered by execution id: a lookup of many ids
#: reads nearly every granule (they are spread over all), however few they are
#: against the table, so looking up every execution a fold touched made each fold
#: cost as much as the tenant's executions. The others' states come from the fold's
#: events alone.
_OLD = "{old:Array(String)}"
_FOLD_STATES = f"""(
    SELECT * FROM executions_state WHERE tenant = {{tenant:String}} AND execution_id IN {_OLD}
    UNION ALL
    {EXECUTION_STATES.format(source=f"(SELECT * FROM events WHERE tenant = {{tenant:String}}"
                                    f" AND {_IN_FOLD} AND execution_id NOT IN {_OLD})")}
)"""  # fmt: skip
_MERGED = sql.merged_executions("1", with_tenant=True, states=_FOLD_STATES)
#: The columns of a row of ``executions``, as the fold writes them (named: a store of an
#: older layout has the later ones in the order they were added).
_EXECUTION_ROW = (
    "tenant, workflow_id, started_at, execution_id, channel, customer_id, status,"
    " duration_ms, error_type, version, deleted, nodes, customer_num"
)
# The filter is a level down: at this level ``workflow_id`` is the alias, never NULL.
_NEW_ROWS = f"""
SELECT tenant, assumeNotNull(workflow_id) AS workflow_id,
    assumeNotNull(started_at) AS started_at, execution_id, channel, customer_id, status,
    duration_ms, error_type, {{hi:Int64}} AS version, 0 AS deleted, nodes
FROM (SELECT * FROM ({_MERGED}) WHERE workflow_id IS NOT NULL AND started_at IS NOT NULL)
"""
_OLD_KEYS = f"""
SELECT tenant, workflow_id, started_at, execution_id FROM execution_keys FINAL
WHERE tenant = {{tenant:String}} AND execution_id IN {_OLD}
"""
#: The messages and feedback ingested in (lo, hi], added up per slot as of fold ``hi``.
MESSAGE_ROLLUP = f"""
INSERT INTO message_slots
SELECT tenant, ifNull(workflow_id, ''), {sql.slot_of("ts")} AS slot, ifNull(channel, ''),
    {{hi:Int64}}, countIf(type = 'message.sent'), countIf(type = 'message.received'),
    sumIf(ifNull(csat, 0), type = 'feedback.submitted'),
    countIf(csat IS NOT NULL AND type = 'feedback.submitted')
FROM events FINAL
WHERE tenant = {{tenant:String}} AND type IN {MESSAGE_ROLLUP_TYPES} AND {_IN_FOLD}
GROUP BY tenant, workflow_id, channel, slot
"""
#: How the sessions change with the messages ingested in (lo, hi], as of fold ``hi``.
SESSION_FOLD = f"""
INSERT INTO sessions
SELECT {{tenant:String}}, customer_id, channel, first_ts, last_ts, size, {{hi:Int64}}, sign
FROM ({session_changes("{lo:Int64}", "{hi:Int64}")})
"""
_RECEIVED = (
    "SELECT assumeNotNull(customer_id) AS c, assumeNotNull(channel) AS ch, ts FROM events"
    " WHERE tenant = {tenant:String} AND type = 'message.received' AND " + _IN_FOLD
)
#: The customers of the messages received and execution events ingested in (lo, hi]
#: (an execution's customer comes from its own events).
_TO_NUMBER = (
    "SELECT DISTINCT assumeNotNull(customer_id) AS c FROM events"
    " WHERE tenant = {tenant:String} AND customer_id IS NOT NULL"
    f" AND type IN ('message.received', {EXEC_TYPES[1:-1]}) AND " + _IN_FOLD
)
#: Numbers for those of them without one, after the tenant's highest, tagged with fold
#: ``hi`` (before the executions are written, which carry them).
NUMBER_CUSTOMERS = f"""
INSERT INTO customer_numbers
SELECT {{tenant:String}}, c,
    toUInt32((SELECT max(num) FROM customer_numbers WHERE tenant = {{tenant:String}})
             + row_number() OVER (ORDER BY c)),
    {{hi:Int64}}
FROM ({_TO_NUMBER})
WHERE c NOT IN (SELECT customer_id FROM customer_numbers WHERE tenant = {{tenant:String}})
"""
#: The numbers of the customers that sent the messages ingested in (lo, hi], in the
#: slots and channels of those messages.
ACTIVE_CUSTOMERS = f"""
INSERT INTO active_customers
SELECT DISTINCT {{tenant:String}}, {sql.slot_of("m.ts")}, m.ch, n.num
FROM ({_RECEIVED}) m
JOIN (SELECT customer_id, num FROM customer_numbers FINAL
      WHERE tenant = {{tenant:String}} AND customer_id IN (SELECT c FROM ({_RECEIVED}))) n
  ON m.c = n.customer_id
"""
FOLD_STATEMENTS = (
    # The merged rows, worked out once (a temporary table: the fold's connection's own;
    # a MergeTree, on disk, as a first fold of a large copy merges millions).
    "DROP TEMPORARY TABLE IF EXISTS fold_rows",
    f"CREATE TEMPORARY TABLE fold_rows ENGINE = MergeTree ORDER BY tuple() AS {_NEW_ROWS}",
    # 1. deleted rows at the keys that changed, then the merged rows
    f"""INSERT INTO executions ({_EXECUTION_ROW})
    SELECT tenant, workflow_id, started_at, execution_id, NULL, NULL, 0, NULL, NULL,
        {{hi:Int64}}, 1, [], 0
    FROM ({_OLD_KEYS})
    WHERE (tenant, workflow_id, started_at, execution_id) NOT IN (
        SELECT tenant, workflow_id, started_at, execution_id FROM fold_rows)""",
    f"""INSERT INTO executions ({_EXECUTION_ROW})
    SELECT r.*, ifNull(n.num, 0) FROM fold_rows r
    LEFT JOIN (SELECT customer_id, num FROM customer_numbers FINAL
               WHERE tenant = {{tenant:String}}
                 AND customer_id IN (SELECT customer_id FROM fold_rows)) n
      ON r.customer_id = n.customer_id""",
    # 2. the keys
    """INSERT INTO execution_keys
    SELECT tenant, execution_id, workflow_id, started_at, version FROM fold_rows""",
)
_LOGGED = (
    "tenant, execution_id, workflow_id, started_at, channel, error_type, status, duration_ms, nodes"
)
#: An execution's row of the log, from one of ``executions``: its node events sorted.
_TO_LOG = _LOGGED.replace("nodes", "arraySort(nodes)")
#: How the executions the events ingested in (lo, hi] change, as of fold ``hi``: their rows
#: as of fold ``lo`` taken away, their merged rows added (an unchanged row: neither).
EXECUTION_LOG_FOLD = f"""
INSERT INTO execution_log ({_LOGGED}, fold, sign)
SELECT {_LOGGED}, {{hi:Int64}}, toInt8(sum(change)) AS total
FROM (
    SELECT {_LOGGED}, -toInt64(sign) AS change FROM execution_log
    WHERE tenant = {{tenant:String}} AND fold <= {{lo:Int64}} AND execution_id IN {_OLD}
    UNION ALL
    SELECT {_TO_LOG}, toInt64(1) FROM fold_rows
)
GROUP BY {_LOGGED}
HAVING total != 0
"""
#: The executions folded up to the watermark ``{hi}``, as rows of that fold (the log of a
#: store of an older layout).
EXECUTION_LOG_FILL = f"""
INSERT INTO execution_log ({_LOGGED}, fold, sign)
SELECT {_TO_LOG}, {{hi:Int64}}, 1 FROM executions FINAL WHERE tenant = {{tenant:String}}
"""


#: How the customers' first-seen times change with the events ingested in (lo, hi].
FIRSTS_FOLD = f"""
INSERT INTO customer_firsts
SELECT {{tenant:String}}, customer_id, channel, first_event, first_received, {{hi:Int64}}, sign
FROM ({first_changes("{lo:Int64}", "{hi:Int64}")})
"""
_TOUCHED_JOURNEYS = (
    "SELECT journey_id FROM events WHERE tenant = {tenant:String}"
    f" AND type IN {JOURNEY_TYPES} AND journey_id IS NOT NULL AND {_IN_FOLD}"
)
#: The journeys with events ingested in (lo, hi], worked out again from their states.
_NEW_JOURNEYS = f"""
SELECT {{tenant:String}} AS tenant, journey_id, journey_type, first_step, completed, top_step,
    reasons, steps, {{hi:Int64}} AS version
FROM ({journeys_sql(f"journey_id IN ({_TOUCHED_JOURNEYS})")})
"""
#: The slots of the first steps of a type's journeys, before and after: those of the
#: rows of ``journeys`` of the folds in (lo, hi] (deleted rows at old keys included).
#: (``kind``: an alias that is not the name of a column, which it would stand for.)
_TOUCHED_SLOTS = f"""
SELECT DISTINCT assumeNotNull(journey_type) AS kind,
    {sql.slot_of("assumeNotNull(first_step)")} AS slot
FROM journeys
WHERE tenant = {{tenant:String}} AND version > {{lo:Int64}} AND version <= {{hi:Int64}}
  AND journey_type IS NOT NULL AND first_step IS NOT NULL
"""
_SLOT_TIME = f"fromUnixTimestamp64Micro({SLOTS_FROM_US} + {{}} * {SLOT_US}, 'UTC')"
#: Those slots added up again from the journeys in them now (none: a row of zeros, which
#: replaces the slot's row before), as of fold ``hi``. (The bounds on ``first_step`` let
#: the primary key skip the rest of the table; the test of (kind, slot) picks the slots.)
JOURNEY_SLOTS_FOLD = f"""
INSERT INTO journey_slots
WITH touched AS ({_TOUCHED_SLOTS}),
    chosen AS (
        SELECT assumeNotNull(journey_type) AS kind,
            {sql.slot_of("assumeNotNull(first_step)")} AS slot, first_step, completed, top_step,
            reasons, steps
        FROM journeys FINAL
        WHERE tenant = {{tenant:String}} AND journey_type IN (SELECT kind FROM touched)
          AND first_step >= {_SLOT_TIME.format("(SELECT min(slot) FROM touched)")}
          AND first_step < {_SLOT_TIME.format("(SELECT max(slot) + 1 FROM touched)")}
          AND (kind, slot) IN (SELECT kind, slot FROM touched)
    )
SELECT {{tenant:String}}, t.kind, t.slot, {{hi:Int64}}, s.journeys, s.completions,
    s.completion_us, s.steps, s.reasons
FROM touched t
LEFT JOIN ({add_up_journeys(journey_sums("chosen", "kind, slot"), "kind, slot")}) s
  ON s.kind = t.kind AND s.slot = t.slot
"""
_JOURNEY_ROW = "tenant, journey_id, journey_type, first_step, completed, top_step, reasons, steps"
JOURNEY_STATEMENTS = (
    # Deleted rows at the keys that changed (type or first step; NULL is a key as any).
    f"""INSERT INTO journeys (tenant, journey_id, journey_type, first_step, version, deleted)
    SELECT tenant, journey_id, journey_type, first_step, {{hi:Int64}}, 1
    FROM journey_keys FINAL
    WHERE tenant = {{tenant:String}} AND journey_id IN ({_TOUCHED_JOURNEYS})
      AND (journey_id, journey_type, first_step) NOT IN (
          SELECT journey_id, journey_type, first_step FROM ({_NEW_JOURNEYS}))
    SETTINGS transform_null_in = 1""",
    f"""INSERT INTO journeys ({_JOURNEY_ROW}, version, deleted)
    SELECT {_JOURNEY_ROW}, version, 0 FROM ({_NEW_JOURNEYS})""",
    f"""INSERT INTO journey_keys
    SELECT tenant, journey_id, journey_type, first_step, version FROM ({_NEW_JOURNEYS})""",
    JOURNEY_SLOTS_FOLD,
)


#: The workflows and UTC days the fold ``hi`` wrote anything for (``workflow_days``):
#: the start, before and after, of every execution whose log rows it wrote, the start
#: of every execution it took up (changed or not: it is no longer one waiting for a
#: fold), and the days of the messages it added up.
#: (Rows of fold ``hi`` are this fold's, found by a minmax index: a lookup by execution
#: id would read all of the tables.)
CHANGED_DAYS = f"""
SELECT DISTINCT workflow_id, intDiv(slot, {SLOTS_PER_DAY}) FROM (
    SELECT workflow_id, {sql.slot_of("started_at")} AS slot FROM execution_log
    WHERE tenant = {{tenant:String}} AND fold = {{hi:Int64}}
    UNION ALL
    SELECT workflow_id, {sql.slot_of("started_at")} FROM execution_keys
    WHERE tenant = {{tenant:String}} AND version = {{hi:Int64}}
    UNION ALL
    SELECT ifNull(workflow_id, ''), {sql.slot_of("ts")} FROM events
    WHERE tenant = {{tenant:String}} AND type IN {MESSAGE_ROLLUP_TYPES} AND {_IN_FOLD}
)
"""


#: What a fold adds up of messages, in order (after the numbers, which they use).
ROLLUP_STATEMENTS = (MESSAGE_ROLLUP, SESSION_FOLD, ACTIVE_CUSTOMERS)


def state(transport: Transport, key: str) -> int:
    """A value kept in ``engine_state`` (0 when not set)."""
    table = transport.query(
        "SELECT value FROM engine_state FINAL WHERE key = {key:String}", {"key": key}
    )
    return int(table.column(0)[0].as_py()) if table.num_rows else 0


def set_state(transport: Transport, key: str, value: int) -> None:
    transport.command(
        "INSERT INTO engine_state SELECT {key:String}, {value:Int64},"
        " toUInt64(toUnixTimestamp64Micro(now64(6)))",
        {"key": key, "value": value},
    )


def upgrade(transport: Transport, cluster: str | None = None) -> None:
    """Bring a store of an older layout up to ``schema.LAYOUT``: fill the tables that
    are new since with what the events say (tenant by tenant, to bound memory)."""
    layout = state(transport, "layout")
    if layout >= LAYOUT:
        return
    if layout < 11:  # month partitions, so that compaction replaces one at a time
        compaction.repartition(transport, cluster)
    if layout < 5:  # node events now ride along with their execution's states
        on = f" ON CLUSTER {schema.identifier(cluster)}" if cluster else ""
        transport.command(f"DROP VIEW IF EXISTS executions_state_mv{on}")
        transport.command(executions_state_view(cluster))
    # The aggregate states new since that layout, filled from the events.
    everything = "(SELECT * FROM events WHERE tenant = {tenant:String})"
    nodes = f"(SELECT * FROM events WHERE tenant = {{tenant:String}} AND type IN {NODE_TYPES})"
    fills = []
    if layout < 2:
        fills.append(("executions_state", EXECUTION_STATES, everything))
    elif layout < 5:  # the states of the node events only: the others are in
        fills.append(("executions_state", EXECUTION_STATES, nodes))
    if layout < 4:
        fills.append(("customers_state", CUSTOMER_STATES, everything))
    if layout < 10:
        fills.append(("journeys_state", JOURNEY_STATES, everything))
    tenants = transport.query("SELECT DISTINCT tenant FROM events").column(0).to_pylist()
    for tenant in tenants:
        for table, states, source in fills:
            transport.command(
                f"INSERT INTO {table} " + states.format(source=source), {"tenant": tenant}
            )
    if layout < 3:  # the index of ingestion times, for the parts written before it
        transport.command(
            "ALTER TABLE events MATERIALIZE INDEX ingested SETTINGS mutations_sync = 1"
        )
    if layout < 5:  # folded rows have no nodes yet: fold every execution again
        set_state(transport, WATERMARK, 0)
    else:  # the rollups new since, of the events folded so far, as of the watermark
        folded = watermark(transport)
        for tenant in tenants:
            params = {"tenant": tenant, "lo": 0, "hi": folded}
            if layout < 6:
                transport.command(MESSAGE_ROLLUP, params)
            if layout < 7:
                transport.command(SESSION_FOLD, params)
            if layout < 12:  # since then, execution customers get numbers too
                transport.command(NUMBER_CUSTOMERS, params)
            if layout < 8:
                transport.command(ACTIVE_CUSTOMERS, params)
            if layout < 9:
                transport.command(FIRSTS_FOLD, params)
        if layout < 12 and transport.embedded:  # only the embedded engine folds
            _number_folded_executions(transport)
        # The executions as a log, so that their sums (since layout 15, also their node
        # events') are kept per slot.
        if layout < 15 and transport.embedded:
            for table in ("execution_log", "execution_slots", "node_slots"):  # a fill cut off
                transport.command(f"TRUNCATE TABLE {table}")
            for tenant in tenants:
                transport.command(EXECUTION_LOG_FILL, {"tenant": tenant, "hi": folded})
    if layout < 14:  # journeys ordered by type and first step: made again
        _rebuild_journeys(transport, cluster, tenants)
    elif layout < 16 and transport.embedded:  # the journeys folded so far, per slot
        folded = watermark(transport)
        for tenant in tenants:
            transport.command(JOURNEY_SLOTS_FOLD, {"tenant": tenant, "lo": 0, "hi": folded})
    set_state(transport, "layout", LAYOUT)


def _rebuild_journeys(transport: Transport, cluster: str | None, tenants: list[str]) -> None:
    """Make ``journeys`` again in the order of layout 14, with its keys and slots, from the
    states of the journeys folded so far (safe to run again if cut off)."""
    on = f" ON CLUSTER {schema.identifier(cluster)}" if cluster else ""
    tables = ("journeys_local", "journeys") if cluster else ("journeys",)
    for table in tables:  # on a cluster, the Distributed table copies the local one
        transport.command(f"DROP TABLE IF EXISTS {table}{on} SYNC")
    for statement in schema.ddl(cluster):
        transport.command(statement)
    for table in ("journey_keys", "journey_slots"):
        transport.command(f"TRUNCATE TABLE IF EXISTS {table}{'_local' if cluster else ''}{on}")
    folded = watermark(transport)
    if transport.embedded and folded:  # only the embedded engine folds
        for tenant in tenants:
            for statement in JOURNEY_STATEMENTS:
                transport.command(statement, {"tenant": tenant, "lo": 0, "hi": folded})


def _number_folded_executions(transport: Transport) -> None:
    """Give the executions folded before layout 12 their customers' numbers (a mutation
    that looks them up in a ``Join`` table; safe to run again if cut off)."""
    database = str(transport.query("SELECT currentDatabase()").column(0)[0].as_py())
    lookup = f"{database}.customer_numbers_join".replace("\\", "\\\\").replace("'", "\\'")
    transport.command(
        "CREATE TABLE IF NOT EXISTS customer_numbers_join"
        " (tenant String, customer_id String, num UInt32)"
        " ENGINE = Join(ANY, LEFT, tenant, customer_id)"
    )
    transport.command(
        "INSERT INTO customer_numbers_join SELECT tenant, customer_id, num FROM customer_numbers"
    )
    transport.command(
        "ALTER TABLE executions UPDATE customer_num = joinGet("
        f"'{lookup}', 'num', toString(tenant), assumeNotNull(customer_id))"
        " WHERE customer_id IS NOT NULL AND customer_num = 0 SETTINGS mutations_sync = 1"
    )
    transport.command("DROP TABLE customer_numbers_join")


def repair(transport: Transport, after_us: int) -> None:
    """Make what views keep from the events whole, for those ingested after ``after_us``.

    An insert writes the events, then what each view derives from them (ids,
    execution and customer states), each a part of its own: an insert cut off
    by a crash, or failing half way, can leave events without those, and a
    retry of the batch would then be stored again or its executions left out.
    Every step adds what the events say again, which changes nothing where it
    is there already.
    """
    source = f"(SELECT * FROM events WHERE {sql.ingested('{after:Int64}')})"
    params = {"after": after_us}
    transport.command(f"INSERT INTO event_ids SELECT tenant, event_id FROM {source}", params)
    for table, states in (
        ("executions_state", EXECUTION_STATES),
        ("customers_state", CUSTOMER_STATES),
        ("journeys_state", JOURNEY_STATES),
    ):
        transport.command(f"INSERT INTO {table} " + states.format(source=source), params)


def _drop_after(transport: Transport, lo: int) -> None:
    """Take away the rows of a fold cut off before it wrote its watermark (after ``lo``):
    they would count its messages, sessions and customers twice."""
    params = {"lo": lo}
    counts = ", ".join(
        f"(SELECT count() FROM {t.table} WHERE fold > {{lo:Int64}})" for t in FOLD_TAGGED
    )
    stale = sql.rows(transport.query(f"SELECT {counts}", params))[0]
    for tagged, n in zip(FOLD_TAGGED, stale, strict=True):
        if n:
            transport.command(
                f"ALTER TABLE {tagged.table} DELETE WHERE fold > {{lo:Int64}}"
                " SETTINGS mutations_sync = 1",
                params,
            )


def watermark(transport: Transport) -> int:
    """µs of ``ingested_at`` up to which executions are folded (0: none yet)."""
    return state(transport, WATERMARK)


class Folder:
    """Folds every ``idle_s`` seconds while new events have come in, and compacts what
    the folds wrote every ``COMPACT_EVERY_S`` (embedded only)."""

    def __init__(
        self,
        transport: Transport,
        idle_s: float,
        in_flight: Callable[[], int | None],
        changed: Callable[[int, int, set[tuple[str, str, int]]], None] | None = None,
    ) -> None:
        self._transport = transport
        #: Told, before answers read with a fold's watermark, the (tenant, workflow,
        #: UTC day) it wrote anything for (``workflow_days``).
        self._changed = changed
        self._idle_s = idle_s
        #: µs of ``ingested_at`` of the oldest insert still running (``Writer``): its
        #: events may be visible before all that views derive from them.
        self._in_flight = in_flight
        #: The watermark of the last fold (this process is the only one that folds).
        self.watermark = watermark(transport)
        #: The executions with events folded, as hashes of their ids (those with states:
        #: more is only slower), so a fold looks up only those (``_OLD``).
        with transport.unlimited():  # millions of rows in a large store
            seen = transport.query(f"SELECT {sql.id_hash('execution_id')} FROM executions_state")
        self._seen = IdIndex(seen.column(0).to_numpy())
        self._compacted = state(transport, COMPACTED)
        self._compacted_at = time.monotonic()
        #: The watermarks answers are reading with (how many of each): compaction
        #: stays at or before the oldest.
        self._readers: collections.Counter[int] = collections.Counter()
        self._readers_lock = threading.Lock()
        #: Whether a fold may have been cut off since the last that finished (another
        #: process before this one opened the store, or a fold here that failed).
        self._cut_off = True
        self._lock = threading.Lock()  # one fold at a time
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kaie-ch-fold", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def reading(self) -> Iterator[int]:
        """The watermark to answer with, held until the answer is read."""
        with self._readers_lock:
            mark = self.watermark
            self._readers[mark] += 1
        try:
            yield mark
        finally:
            with self._readers_lock:
                self._readers[mark] -= 1
                if not self._readers[mark]:
                    del self._readers[mark]

    def _run(self) -> None:
        while not self._stop.wait(self._idle_s):
            try:
                self.fold()
                if time.monotonic() - self._compacted_at >= COMPACT_EVERY_S:
                    self.compact()
            except Exception:  # the next round tries again; queries stay exact meanwhile
                log.exception("a fold or compaction failed")

    def fold(self) -> None:
        """Fold every execution with events ingested since the watermark."""
        with self._lock, self._transport.unlimited():
            t = self._transport
            lo = self.watermark
            # Only events of inserts that returned: one that started after this has a
            # later ``ingested_at`` than any of them.
            running = self._in_flight()
            new = sql.ingested("{lo:Int64}", "{upto:Int64}" if running else None)
            found = t.query(
                f"SELECT tenant, {sql.us('max(ingested_at)')}, countIf(type IN {FEED_TYPES}),"
                f" countIf(type IN {MESSAGE_ROLLUP_TYPES}), countIf(customer_id IS NOT NULL),"
                f" countIf(type IN {JOURNEY_TYPES})"
                f" FROM events WHERE {new}"
                " GROUP BY tenant",
                {"lo": lo, "upto": running - 1 if running else None},
            )
            if not found.num_rows:
                return
            tenants = sql.rows(found)
            hi = max(int(last) for _, last, *_ in tenants)
            if self._cut_off:
                _drop_after(t, lo)
            self._cut_off = True  # until this fold has written its watermark
            changed: set[tuple[str, str, int]] = set()
            seen: list[np.ndarray] = []
            for tenant, _, executions, messages, customers, journeys in tenants:
                params: dict[str, object] = {"tenant": tenant, "lo": lo, "hi": hi}
                if executions:
                    touched = t.query(_TOUCHED, params)
                    hashes = touched.column(1).to_numpy()
                    may_have_events = pa.array(self._seen.candidates(hashes))
                    params["old"] = touched.column(0).filter(may_have_events).to_pylist()
                    seen.append(hashes)
                # Only what the tenant's new events can change (each statement has a cost).
                statements = (
                    # Numbers first: the executions and active customers use them.
                    ((NUMBER_CUSTOMERS,) if executions or messages else ())
                    + ((*FOLD_STATEMENTS, EXECUTION_LOG_FOLD) if executions else ())
                    + (ROLLUP_STATEMENTS if messages else ())
                    + ((FIRSTS_FOLD,) if customers else ())
                    + (JOURNEY_STATEMENTS if journeys else ())
                )
                for statement in statements:
                    t.command(statement, params)
                if self._changed is not None and (executions or messages):
                    found_days = t.query(CHANGED_DAYS, params)
                    changed |= {(tenant, w, int(d)) for w, d in sql.rows(found_days)}
            set_state(t, WATERMARK, hi)  # 4. the watermark, last
            for hashes in seen:
                self._seen.add(hashes)
            if self._changed is not None:
                self._changed(lo, hi, changed)
            with self._readers_lock:
                self.watermark = hi
            self._cut_off = False

    def compact(self) -> None:
        """Add up the rows the folds since the last compaction tagged (``compaction``),
        as of the oldest watermark an answer still reads with."""
        with self._lock, self._transport.unlimited():
            self._compacted_at = time.monotonic()
            if self._cut_off:  # the rows of a fold cut off go first
                _drop_after(self._transport, self.watermark)
                self._cut_off = False
            with self._readers_lock:
                upto = min([self.watermark, *self._readers])
            if upto <= self._compacted:
                return
            started = time.perf_counter()
            done = compaction.compact(self._transport, self._compacted, upto)
            set_state(self._transport, COMPACTED, upto)
            self._compacted = upto
            if done:
                log.info("compacted %d partitions in %.1f s", done, time.perf_counter() - started)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
