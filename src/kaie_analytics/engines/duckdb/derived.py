"""Tables derived from the events: journeys, sessions, customers.

Each derived table has a key (a journey, a customer's channel, a customer) and
a way to bring the rows of the keys touched by new events up to date, exactly
as if they had been built from all events at once, whatever order events came
in: journeys are rebuilt from all their events; sessions are rebuilt from the
first session the new messages can touch onwards; customers merge first-seen
times with ``min``. Compaction does this in the background for the keys touched
since the table's watermark; until then a query does the same for its tenant
on the fly, with the same SQL, and puts the result in place of the stale rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kaie_analytics.analytics.facts import SESSION_GAP_US
from kaie_analytics.engines.duckdb.times import SLOT_US


@dataclass(frozen=True)
class Fold:
    """How the fold updates a derived table: statements first, then ``update``'s two
    parts, then the temp tables to drop."""

    prelude: list[str]
    rows: str
    replaced: str
    temps: tuple[str, ...]


@dataclass(frozen=True)
class Derived:
    name: str
    #: Which events feed this table (a predicate on ``events``).
    event_filter: str
    #: The event types that feed it, or None when any event with a customer does.
    feed_types: frozenset[str] | None
    #: ``update(delta, table)``: SQL for the new rows of every key in ``delta``
    #: (events past the watermark), and the predicate on ``table`` rows they replace.
    update: Callable[[str, str], tuple[str, str]]
    ddl: str
    order_by: str
    #: The key a rollup sums this table's rows by (SQL columns: tenant, channel,
    #: slot), when one does: each fold leaves the keys it touched in temp table
    #: ``touched_rows`` for the rollup to rebuild (see ``rollups``).
    rollup_key: str | None = None
    #: ``update`` for the fold, when it should first materialize part of it.
    fold: Callable[[str, str], Fold] | None = None

    @property
    def watermark(self) -> str:
        return f"{self.name}_seq"


def _rebuild_keys(
    build: Callable[[str], str], key: str, event_filter: str
) -> Callable[[str, str], tuple[str, str]]:
    """Rebuild every touched key from all of its events."""

    def update(delta: str, table: str) -> tuple[str, str]:
        touched = f"SELECT DISTINCT {key} FROM ({delta})"
        rows = build(
            f"SELECT * FROM events WHERE {event_filter}"
            f" AND tenant IN (SELECT tenant FROM ({delta}))"
            f" AND ({key}) IN ({touched})"
        )
        return rows, f"({key}) IN ({touched})"

    return update


def _journeys(src: str) -> str:
    return f"""
    WITH j AS (SELECT tenant, journey_id, journey_type, type, ts, step, step_name, reason FROM ({src})),
    reached AS (
        SELECT tenant, journey_id, step, min(ts) AS reached,
               arg_max(step_name, ts) AS name, max(ts) AS name_ts
        FROM j WHERE type = 'journey.step' GROUP BY ALL
    ),
    gaps AS (
        SELECT r.tenant, r.journey_id, r.step, min(epoch_us(m.ts) - epoch_us(r.reached)) AS gap
        FROM reached r JOIN j m
          ON m.tenant = r.tenant AND m.journey_id = r.journey_id AND m.ts > r.reached
         AND NOT (m.type = 'journey.step' AND m.step = r.step)
        GROUP BY ALL
    ),
    steps AS (
        SELECT r.tenant, r.journey_id,
            list({{'step': r.step, 'reached': r.reached, 'gap_us': g.gap, 'name': r.name,
                   'name_ts': r.name_ts}} ORDER BY r.step) AS steps
        FROM reached r LEFT JOIN gaps g USING (tenant, journey_id, step)
        GROUP BY ALL
    ),
    heads AS (
        SELECT tenant, journey_id, arg_min(journey_type, ts) AS journey_type,
            min(ts) FILTER (WHERE type = 'journey.step') AS first_step,
            min(ts) FILTER (WHERE type = 'journey.completed') AS completed,
            max(step) FILTER (WHERE type = 'journey.step') AS top_step,
            coalesce(list(reason ORDER BY reason) FILTER (WHERE type = 'journey.dropped'), [])
                AS reasons
        FROM j GROUP BY ALL
    )
    SELECT h.tenant, h.journey_id, h.journey_type, h.first_step, h.completed, h.top_step,
        coalesce(s.steps, []) AS steps, h.reasons
    FROM heads h LEFT JOIN steps s USING (tenant, journey_id)
    """


def type_filter(types: frozenset[str]) -> str:
    return "type IN (" + ", ".join(f"'{t}'" for t in sorted(types)) + ")"


_JOURNEY_TYPES = frozenset(("journey.step", "journey.completed", "journey.dropped"))
_JOURNEY_EVENTS = type_filter(_JOURNEY_TYPES)
JOURNEYS = Derived(
    name="journeys",
    event_filter=_JOURNEY_EVENTS,
    feed_types=_JOURNEY_TYPES,
    update=_rebuild_keys(_journeys, "tenant, journey_id", _JOURNEY_EVENTS),
    ddl="""
        CREATE TABLE IF NOT EXISTS journeys (
            tenant VARCHAR, journey_id VARCHAR, journey_type VARCHAR, first_step TIMESTAMP,
            completed TIMESTAMP, top_step TINYINT,
            steps STRUCT(step TINYINT, reached TIMESTAMP, gap_us BIGINT, name VARCHAR,
                         name_ts TIMESTAMP)[],
            reasons VARCHAR[]
        )""",
    order_by="tenant, journey_type, first_step",
)


def _sessions(src: str) -> str:
    return f"""
    WITH m AS (
        SELECT tenant, customer_id, channel, ts, type,
            CASE WHEN epoch_us(ts) - epoch_us(lag(ts) OVER w) <= {SESSION_GAP_US}
                 THEN 0 ELSE 1 END AS starts
        FROM ({src})
        WINDOW w AS (PARTITION BY tenant, customer_id, channel ORDER BY ts)
    ),
    numbered AS (
        SELECT *, sum(starts) OVER (PARTITION BY tenant, customer_id, channel ORDER BY ts
                                    ROWS UNBOUNDED PRECEDING) AS session
        FROM m
    )
    SELECT tenant, customer_id, channel, min(ts) AS first_ts, max(ts) AS last_ts,
        count(*) AS size
    FROM numbered GROUP BY tenant, customer_id, channel, session
    """


_MESSAGE_TYPES = frozenset(("message.sent", "message.received"))
_MESSAGES = type_filter(_MESSAGE_TYPES)


def _session_cut(delta: str, table: str) -> str:
    """Per conversation the new messages touch: the time from which it is rebuilt."""
    return f"""
        SELECT t.tenant, t.customer_id, t.channel,
            least(t.t0, coalesce(min(s.first_ts), t.t0)) AS from_ts
        FROM (SELECT tenant, customer_id, channel, min(ts) AS t0 FROM ({delta}) GROUP BY ALL) t
        LEFT JOIN {table} s
          ON s.tenant = t.tenant AND s.customer_id = t.customer_id AND s.channel = t.channel
         AND epoch_us(s.last_ts) >= epoch_us(t.t0) - {SESSION_GAP_US}
        GROUP BY t.tenant, t.customer_id, t.channel, t.t0
    """


def _sessions_update(delta: str, table: str, cut: str | None = None) -> tuple[str, str]:
    """Rebuild each touched conversation from the first session its new messages can join.

    Sessions that ended more than 30 minutes before a conversation's earliest
    new message cannot change; the ones after are rebuilt from their messages.

    ``cut`` is a query of ``_session_cut`` already computed (the fold makes it a
    table: inline, the predicate on ``table`` is planned as a join per row).
    """
    cut = cut or _session_cut(delta, table)
    rows = _sessions(
        f"""SELECT e.* FROM events e JOIN ({cut}) c
              ON e.tenant = c.tenant AND e.customer_id = c.customer_id AND e.channel = c.channel
             AND e.ts >= c.from_ts
            WHERE e.{_MESSAGES} AND e.tenant IN (SELECT tenant FROM ({delta}))"""
    )
    replaced = f"""EXISTS (SELECT 1 FROM ({cut}) c WHERE c.tenant = {table}.tenant
        AND c.customer_id = {table}.customer_id AND c.channel = {table}.channel
        AND {table}.first_ts >= c.from_ts)"""
    return rows, replaced


def _sessions_fold(delta: str, table: str) -> Fold:
    """The cut, and the rows it replaces, computed once as tables (as joins, not as a
    predicate evaluated per row of ``table``)."""
    rows, _ = _sessions_update(delta, table, "SELECT * FROM session_cut")
    return Fold(
        [
            f"CREATE TEMP TABLE session_cut AS {_session_cut(delta, table)}",
            f"""CREATE TEMP TABLE session_gone AS SELECT s.rowid AS r FROM {table} s
            JOIN session_cut c ON c.tenant = s.tenant AND c.customer_id = s.customer_id
             AND c.channel = s.channel AND s.first_ts >= c.from_ts""",
        ],
        rows,
        "rowid IN (SELECT r FROM session_gone)",
        ("session_gone", "session_cut"),
    )


SESSIONS = Derived(
    name="sessions",
    event_filter=_MESSAGES,
    feed_types=_MESSAGE_TYPES,
    update=_sessions_update,
    fold=_sessions_fold,
    ddl="""
        CREATE TABLE IF NOT EXISTS sessions (
            tenant VARCHAR, customer_id VARCHAR, channel VARCHAR, first_ts TIMESTAMP,
            last_ts TIMESTAMP, size BIGINT
        )""",
    order_by="tenant, first_ts",
    rollup_key=f"tenant, channel, epoch_us(first_ts) // {SLOT_US} AS slot",
)


def _customers_update(delta: str, table: str) -> tuple[str, str]:
    """Merge first-seen times and the latest segment into the touched customers' rows.

    One row per customer and channel it used, and one with channel NULL for all
    of them, which also carries the customer's latest segment.
    """
    keys = f"SELECT DISTINCT tenant, customer_id FROM ({delta})"
    fresh = f"""
        SELECT tenant, customer_id, channel, min(ts) AS first_event,
            min(ts) FILTER (WHERE type = 'message.received') AS first_received,
            NULL AS segment, NULL::TIMESTAMP AS segment_ts
        FROM ({delta}) WHERE channel IS NOT NULL GROUP BY ALL
        UNION ALL
        SELECT tenant, customer_id, NULL, min(ts),
            min(ts) FILTER (WHERE type = 'message.received'),
            arg_max(segment, ts) FILTER (WHERE type = 'customer.updated' AND segment IS NOT NULL),
            max(ts) FILTER (WHERE type = 'customer.updated' AND segment IS NOT NULL)
        FROM ({delta}) GROUP BY ALL
    """
    rows = f"""
        SELECT tenant, customer_id, channel, min(first_event), min(first_received),
            arg_max(segment, segment_ts), max(segment_ts)
        FROM (
            SELECT * FROM {table} WHERE (tenant, customer_id) IN ({keys})
            UNION ALL {fresh}
        )
        GROUP BY tenant, customer_id, channel
    """
    return rows, f"(tenant, customer_id) IN ({keys})"


CUSTOMERS = Derived(
    name="customers",
    event_filter="customer_id IS NOT NULL",
    feed_types=None,
    update=_customers_update,
    ddl="""
        CREATE TABLE IF NOT EXISTS customers (
            tenant VARCHAR, customer_id VARCHAR, channel VARCHAR, first_event TIMESTAMP,
            first_received TIMESTAMP, segment VARCHAR, segment_ts TIMESTAMP
        )""",
    order_by="tenant, channel, customer_id",
)

DERIVED = (JOURNEYS, SESSIONS, CUSTOMERS)


def compact_statements(d: Derived, lo_seq: int, hi_seq: int) -> list[str]:
    """Bring the keys touched by events in (lo_seq, hi_seq] up to date."""
    delta = f"SELECT * FROM events WHERE seq > {int(lo_seq)} AND seq <= {int(hi_seq)} AND {d.event_filter}"
    fold = (
        d.fold("SELECT * FROM delta", d.name)
        if d.fold
        else Fold([], *d.update("SELECT * FROM delta", d.name), ())
    )
    rows, replaced = fold.rows, fold.replaced
    touched = (
        [
            f"CREATE TEMP TABLE touched_rows AS SELECT DISTINCT {d.rollup_key} FROM {d.name}"
            f" WHERE {replaced} UNION SELECT DISTINCT {d.rollup_key} FROM rebuilt"
        ]
        if d.rollup_key
        else []
    )
    return [
        f"CREATE TEMP TABLE delta AS {delta}",
        *fold.prelude,
        f"CREATE TEMP TABLE rebuilt AS {rows}",
        *touched,
        f"DELETE FROM {d.name} WHERE {replaced}",
        f"INSERT INTO {d.name} SELECT * FROM rebuilt ORDER BY {d.order_by}",
        "DROP TABLE rebuilt",
        *(f"DROP TABLE {t}" for t in fold.temps),
        "DROP TABLE delta",
    ]


def current_rows(d: Derived, has_pending: bool) -> str:
    """The current rows of tenant ``$tenant`` (one statement, one snapshot)."""
    if not has_pending:
        return f"SELECT * FROM {d.name} WHERE tenant = $tenant"
    delta = (
        f"SELECT * FROM events WHERE tenant = $tenant AND {d.event_filter}"
        f" AND seq > (SELECT value FROM store_state WHERE key = '{d.watermark}')"
    )
    rows, replaced = d.update("SELECT * FROM delta", d.name)
    return f"""
    SELECT * FROM (
        WITH delta AS ({delta})
        SELECT * FROM {d.name} WHERE tenant = $tenant AND NOT ({replaced})
        UNION ALL
        SELECT * FROM ({rows})
    )
    """
