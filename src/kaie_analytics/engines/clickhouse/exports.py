"""Export rows in ClickHouse SQL: one query per kind, streamed as Arrow batches."""

from __future__ import annotations

from kaie_analytics.analytics.facts import RowKind
from kaie_analytics.engines.clickhouse import sql
from kaie_analytics.ingest.validate import FIELD_COLUMNS

_LO, _HI = sql.time_param("lo"), sql.time_param("hi")
_IN_PERIOD = f"ts BETWEEN {_LO} AND {_HI} AND {sql.FILTERS}"

ROWS_SQL: dict[RowKind, str] = {
    "executions": f"""
        SELECT execution_id, workflow_id, channel, customer_id, started_at,
            ['running', 'success', 'failed'][status + 1] AS status, duration_ms, error_type
        FROM ({sql.executions(f"started_at BETWEEN {_LO} AND {_HI} AND {sql.FILTERS}")})
        WHERE started_at BETWEEN {_LO} AND {_HI} AND {sql.FILTERS}
        ORDER BY started_at, execution_id""",
    "messages": sql.tenant_events(
        sql.MESSAGE_TYPES,
        "event_id, replaceOne(type, 'message.', '') AS direction, ts AS timestamp,"
        " customer_id, channel, workflow_id, execution_id, message_id",
        _IN_PERIOD,
    )
    + " ORDER BY ts, event_id",
    "feedback": sql.tenant_events(
        "('feedback.submitted')",
        "event_id, ts AS timestamp, customer_id, workflow_id, execution_id, channel,"
        " csat, nps, comment",
        _IN_PERIOD,
    )
    + " ORDER BY ts, event_id",
    # A journey is its id; its type is that of its earliest event, as in the
    # journey funnel. Journeys have no workflow; the channel filter keeps
    # journeys with an event on one of the channels.
    "journeys": f"""
        SELECT journey_id, argMin(journey_type, ts) AS journey_type,
            argMin(customer_id, ts) AS customer_id,
            minOrNullIf(ts, type = 'journey.step') AS started_at,
            minOrNullIf(ts, type = 'journey.completed') AS completed_at,
            minOrNullIf(ts, type = 'journey.dropped') AS dropped_at,
            argMinIf(reason, ts, type = 'journey.dropped') AS drop_reason,
            maxOrNullIf(step, type = 'journey.step') AS highest_step,
            uniqExactIf(step, type = 'journey.step') AS steps_reached
        FROM ({sql.tenant_events(
            "('journey.step', 'journey.completed', 'journey.dropped')",
            "journey_id, journey_type, customer_id, type, ts, reason, step, channel",
        )})
        GROUP BY journey_id
        HAVING started_at BETWEEN {_LO} AND {_HI}
            AND (empty({{channels:Array(String)}})
                 OR countIf(has({{channels:Array(String)}}, channel)) > 0)
        ORDER BY started_at, journey_id""",
    "events": sql.tenant_events(
        None,
        f"event_id AS id, id_given, type, ts_text AS timestamp, {', '.join(FIELD_COLUMNS)}",
        _IN_PERIOD,
    )
    + " ORDER BY ts, event_id",
}  # fmt: skip
