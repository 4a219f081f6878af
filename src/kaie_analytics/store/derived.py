"""Tables derived from the events by recomputing whole keys: journeys, sessions, customers.

Each derived table has a key (a journey, a customer's channel, a customer). When
events of a key arrive, every row of that key is rebuilt from *all* of the
key's events, so late and out-of-order events give the same rows as in-order
ones. Compaction does this in the background for the keys touched since the
table's watermark; until then a query rebuilds the touched keys of its tenant
on the fly with the same SQL and puts them in place of the stale rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

SESSION_GAP_US = 30 * 60 * 1_000_000


@dataclass(frozen=True)
class Derived:
    name: str
    #: Columns that, with ``tenant``, identify a key.
    key: tuple[str, ...]
    #: Which events feed this table (a predicate on ``events``).
    event_filter: str
    #: Rows of the table from a source of events (SQL over ``src``).
    build: Callable[[str], str]
    ddl: str
    order_by: str

    @property
    def watermark(self) -> str:
        return f"{self.name}_seq"

    def key_cols(self) -> str:
        return ", ".join(("tenant", *self.key))


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


JOURNEYS = Derived(
    name="journeys",
    key=("journey_id",),
    event_filter="type IN ('journey.step', 'journey.completed', 'journey.dropped')",
    build=_journeys,
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


SESSIONS = Derived(
    name="sessions",
    key=("customer_id", "channel"),
    event_filter="type IN ('message.sent', 'message.received')",
    build=_sessions,
    ddl="""
        CREATE TABLE IF NOT EXISTS sessions (
            tenant VARCHAR, customer_id VARCHAR, channel VARCHAR, first_ts TIMESTAMP,
            last_ts TIMESTAMP, size BIGINT
        )""",
    order_by="tenant, first_ts",
)


def _customers(src: str) -> str:
    # One row per customer and channel it used, and one with channel NULL for all of
    # them; each carries the customer's latest segment, for the segment filter.
    return f"""
    WITH e AS (SELECT tenant, customer_id, channel, type, ts, segment FROM ({src})),
    seg AS (
        SELECT tenant, customer_id, arg_max(segment, ts) AS segment FROM e
        WHERE type = 'customer.updated' AND segment IS NOT NULL GROUP BY ALL
    ),
    per AS (
        SELECT tenant, customer_id, channel, min(ts) AS first_event,
            min(ts) FILTER (WHERE type = 'message.received') AS first_received
        FROM e WHERE channel IS NOT NULL GROUP BY ALL
        UNION ALL
        SELECT tenant, customer_id, NULL, min(ts),
            min(ts) FILTER (WHERE type = 'message.received')
        FROM e GROUP BY ALL
    )
    SELECT per.*, seg.segment FROM per LEFT JOIN seg USING (tenant, customer_id)
    """


CUSTOMERS = Derived(
    name="customers",
    key=("customer_id",),
    event_filter="customer_id IS NOT NULL",
    build=_customers,
    ddl="""
        CREATE TABLE IF NOT EXISTS customers (
            tenant VARCHAR, customer_id VARCHAR, channel VARCHAR, first_event TIMESTAMP,
            first_received TIMESTAMP, segment VARCHAR
        )""",
    order_by="tenant, channel, customer_id",
)

DERIVED = (JOURNEYS, SESSIONS, CUSTOMERS)


def compact_statements(d: Derived, lo_seq: int, hi_seq: int) -> list[str]:
    """Rebuild every key touched by events in (lo_seq, hi_seq]."""
    keys = d.key_cols()
    return [
        f"""CREATE TEMP TABLE touched AS SELECT DISTINCT {keys} FROM events
            WHERE seq > {int(lo_seq)} AND seq <= {int(hi_seq)} AND {d.event_filter}""",
        f"""CREATE TEMP TABLE rebuilt AS {
            d.build(
                f"SELECT * FROM events WHERE {d.event_filter} AND seq <= {int(hi_seq)}"
                f" AND ({keys}) IN (SELECT {keys} FROM touched)"
            )
        }""",
        f"DELETE FROM {d.name} WHERE ({keys}) IN (SELECT {keys} FROM touched)",
        f"INSERT INTO {d.name} SELECT * FROM rebuilt ORDER BY {d.order_by}",
        "DROP TABLE touched",
        "DROP TABLE rebuilt",
    ]


def current_rows(d: Derived, has_pending: bool) -> str:
    """The current rows of tenant ``$tenant`` (one statement, one snapshot)."""
    if not has_pending:
        return f"SELECT * FROM {d.name} WHERE tenant = $tenant"
    keys = ", ".join(d.key)
    touched = (
        f"SELECT DISTINCT {keys} FROM events WHERE tenant = $tenant AND {d.event_filter}"
        f" AND seq > (SELECT value FROM store_state WHERE key = '{d.watermark}')"
    )
    return f"""
    SELECT * FROM (
        WITH touched AS ({touched})
        SELECT * FROM {d.name}
        WHERE tenant = $tenant AND ({keys}) NOT IN (SELECT {keys} FROM touched)
        UNION ALL
        SELECT * FROM ({
        d.build(
            f"SELECT * FROM events WHERE tenant = $tenant AND {d.event_filter}"
            f" AND ({keys}) IN (SELECT {keys} FROM touched)"
        )
    })
    )
    """
