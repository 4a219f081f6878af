"""The tables of the DuckDB engine, and which events feed each derived one.

``events`` is a view over every accepted event (``seq`` grows with each
commit): commits append to the small ``events_recent``; once it holds
``chunk_rows`` events they move to ``events_main`` as one chunk sorted by
(tenant, type, workflow, time), so zone maps let a tenant's query skip the
other tenants' rows. The derived tables (executions, journeys, sessions,
customers, active-customer bitmaps, workflow rollups) each keep a watermark
in ``store_state``: the seq up to which they have folded the events in.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from kaie_analytics.engines.duckdb import active_customers, rollups
from kaie_analytics.engines.duckdb import executions_sql as xsql
from kaie_analytics.engines.duckdb.derived import DERIVED
from kaie_analytics.ingest.validate import FIELD_COLUMNS

FIELD_TYPES = {"duration_ms": "BIGINT", "csat": "TINYINT", "nps": "TINYINT", "step": "TINYINT"}

#: Which events feed each derived table (a predicate on ``events``).
FEEDS = {
    "executions": f"type IN {xsql.FEED_TYPES}",
    **{d.name: d.event_filter for d in DERIVED},
    "activity": active_customers.FEED,
    "message_slots": rollups.FEED,
}
#: The event types feeding each derived table (None: every event with a customer).
FEED_TYPES: dict[str, frozenset[str] | None] = {
    "executions": xsql.FEED_TYPE_SET,
    **{d.name: d.feed_types for d in DERIVED},
    "activity": active_customers.FEED_TYPES,
    "message_slots": rollups.MESSAGE_TYPES,
}
#: Where each derived table's watermark is kept in ``store_state``.
WATERMARK_KEYS = {
    "executions": "exec_seq",
    **{d.name: d.watermark for d in DERIVED},
    "activity": active_customers.WATERMARK,
    "message_slots": rollups.WATERMARK,
}
DDL = [
    *(
        f"CREATE TABLE IF NOT EXISTS {table} (seq BIGINT NOT NULL, tenant VARCHAR NOT NULL,"
        " id_hash UBIGINT NOT NULL, event_id VARCHAR NOT NULL, id_given BOOLEAN NOT NULL,"
        " type VARCHAR NOT NULL, ts TIMESTAMP NOT NULL, ts_text VARCHAR NOT NULL, "
        + ", ".join(f"{c} {FIELD_TYPES.get(c, 'VARCHAR')}" for c in FIELD_COLUMNS)
        + ", ingested_at TIMESTAMP NOT NULL)"
        for table in ("events_main", "events_recent")
    ),
    "CREATE OR REPLACE VIEW events AS"
    " SELECT * FROM events_main UNION ALL SELECT * FROM events_recent",
    xsql.EXECUTIONS_DDL,
    xsql.EXECUTIONS_MIGRATE,
    "CREATE TABLE IF NOT EXISTS workflows (tenant VARCHAR NOT NULL, workflow_id VARCHAR NOT NULL,"
    " name VARCHAR, name_ts TIMESTAMP, created_at TIMESTAMP NOT NULL)",
    "CREATE TABLE IF NOT EXISTS store_state (key VARCHAR PRIMARY KEY, value BIGINT NOT NULL)",
    "INSERT OR IGNORE INTO store_state VALUES ('exec_seq', 0), ('exec_sorted_rows', 0)",
    *(d.ddl for d in DERIVED),
    *active_customers.DDL,
    *rollups.DDL,
    *(f"INSERT OR IGNORE INTO store_state VALUES ('{key}', 0)" for key in WATERMARK_KEYS.values()),
]


def utcnow() -> datetime:
    """Now, as the tables keep times: naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


def feed_counts(tenants: list[str], parts: list[pa.Table]) -> list[tuple[Any, ...]]:
    """Per tenant: events kept, then events feeding each derived table (``FEEDS`` order)."""
    totals: dict[str, list[int]] = {}
    for tenant, part in zip(tenants, parts, strict=True):
        if not part.num_rows:
            continue
        row = totals.setdefault(tenant, [0] * (1 + len(FEEDS)))
        row[0] += part.num_rows
        by_type = {v["values"]: v["counts"] for v in part["type"].value_counts().to_pylist()}
        for i, name in enumerate(FEEDS, start=1):
            types = FEED_TYPES[name]
            if types is None:
                row[i] += part.num_rows - part["customer_id"].null_count
            else:
                row[i] += sum(n for t, n in by_type.items() if t in types)
    return [(tenant, *row) for tenant, row in totals.items()]
