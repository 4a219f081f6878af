"""Export rows in DuckDB: one query per kind, streamed as Arrow batches."""

from __future__ import annotations

import pyarrow as pa

from kaie_analytics.analytics.facts import RowsQuery
from kaie_analytics.engines.duckdb.store import DuckDBEventStore
from kaie_analytics.ingest.validate import FIELD_COLUMNS

_FILTERS = (
    "(len($workflows) = 0 OR list_contains($workflows, workflow_id))"
    " AND (len($channels) = 0 OR list_contains($channels, channel))"
)


def rows_sql(store: DuckDBEventStore, q: RowsQuery) -> str:
    """The query behind each kind; binds $tenant $lo $hi $workflows $channels."""
    if q.kind == "executions":
        return f"""
            SELECT execution_id, workflow_id, channel, customer_id, started_at,
                ['running', 'success', 'failed'][status + 1] AS status, duration_ms, error_type
            FROM ({store.executions_sql(q.tenant)})
            WHERE started_at BETWEEN $lo AND $hi AND {_FILTERS}
        """
    if q.kind == "messages":
        return f"""
            SELECT event_id, replace(type, 'message.', '') AS direction, ts AS timestamp,
                customer_id, channel, workflow_id, execution_id, message_id
            FROM events
            WHERE tenant = $tenant AND type IN ('message.sent', 'message.received')
              AND ts BETWEEN $lo AND $hi AND {_FILTERS}
        """
    if q.kind == "feedback":
        return f"""
            SELECT event_id, ts AS timestamp, customer_id, workflow_id, execution_id, channel,
                csat, nps, comment
            FROM events
            WHERE tenant = $tenant AND type = 'feedback.submitted'
              AND ts BETWEEN $lo AND $hi AND {_FILTERS}
        """
    if q.kind == "journeys":
        # A journey is its id; its type is that of its earliest event, as in the
        # journey funnel. Journeys have no workflow; the channel filter keeps
        # journeys with an event on one of the channels.
        return """
            SELECT journey_id, arg_min(journey_type, ts) AS journey_type,
                arg_min(customer_id, ts) AS customer_id,
                min(ts) FILTER (WHERE type = 'journey.step') AS started_at,
                min(ts) FILTER (WHERE type = 'journey.completed') AS completed_at,
                min(ts) FILTER (WHERE type = 'journey.dropped') AS dropped_at,
                arg_min(reason, ts) FILTER (WHERE type = 'journey.dropped') AS drop_reason,
                max(step) FILTER (WHERE type = 'journey.step') AS highest_step,
                count(DISTINCT step) FILTER (WHERE type = 'journey.step') AS steps_reached
            FROM events
            WHERE tenant = $tenant
              AND type IN ('journey.step', 'journey.completed', 'journey.dropped')
            GROUP BY journey_id
            HAVING started_at BETWEEN $lo AND $hi
              AND (len($channels) = 0 OR bool_or(list_contains($channels, channel)))
            ORDER BY started_at, journey_id
        """
    assert q.kind == "events"
    return f"""
        SELECT event_id AS id, id_given, type, ts_text AS timestamp, {", ".join(FIELD_COLUMNS)}
        FROM events
        WHERE tenant = $tenant AND ts BETWEEN $lo AND $hi AND {_FILTERS}
    """


def rows(store: DuckDBEventStore, q: RowsQuery, batch_rows: int) -> pa.RecordBatchReader:
    params = {
        "tenant": q.tenant,
        "lo": q.window.start,
        "hi": q.window.end,
        "workflows": list(q.workflow_ids),
        "channels": list(q.channels),
    }
    return store.stream(rows_sql(store, q), params, batch_rows)
