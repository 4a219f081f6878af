"""Data exports, streamed from the engine to the file in Arrow batches.

Memory stays flat whatever the row count: rows flow from DuckDB as a
``RecordBatchReader`` into a Parquet / CSV writer or line by line into JSON.
Raw rows are therefore written in storage order (by workflow, then time),
not sorted: a sort would hold the whole export in memory.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import orjson
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from kaie_analytics.analytics.periods import (
    Period,
    parse_period,
    parse_string_list,
    parse_timezone,
)
from kaie_analytics.engines.duckdb.store import DuckDBEventStore
from kaie_analytics.errors import InvalidParameter
from kaie_analytics.ingest.validate import FIELD_COLUMNS

DATA_TYPES = ("executions", "messages", "feedback", "journeys", "events", "workflow_metrics")
FORMATS = ("csv", "json", "ndjson", "parquet")
CONTENT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "json": "application/json",
    "ndjson": "application/x-ndjson",
    "parquet": "application/vnd.apache.parquet",
}
BATCH_ROWS = 65_536


class JobTimeout(Exception):
    pass


@dataclass(frozen=True, slots=True)
class ExportRequest:
    data_type: str
    format: str
    period: Period
    workflow_ids: tuple[str, ...]
    channels: tuple[str, ...]
    include_metadata: bool

    def as_params(self) -> dict[str, Any]:
        return {
            "data_type": self.data_type,
            "format": self.format,
            "start_date": self.period.start.isoformat(),
            "end_date": self.period.end.isoformat(),
            "timezone": self.period.tz.key,
            "filters": {"workflow_ids": list(self.workflow_ids), "channels": list(self.channels)},
            "include_metadata": self.include_metadata,
        }


def parse_export_request(body: Any) -> ExportRequest:
    if not isinstance(body, dict):
        raise InvalidParameter("the body must be a JSON object", field="body")
    known = {"data_type", "format", "start_date", "end_date", "timezone", "filters",
             "include_metadata"}  # fmt: skip
    unknown = sorted(set(body) - known)
    if unknown:
        raise InvalidParameter(f"unknown field {unknown[0]!r}", field=unknown[0])
    data_type = body.get("data_type")
    if data_type not in DATA_TYPES:
        raise InvalidParameter(
            f"data_type must be one of: {', '.join(DATA_TYPES)}", field="data_type"
        )
    fmt = body.get("format", "csv")
    if fmt not in FORMATS:
        raise InvalidParameter(f"format must be one of: {', '.join(FORMATS)}", field="format")
    filters = body.get("filters") or {}
    if not isinstance(filters, dict):
        raise InvalidParameter("filters must be an object", field="filters")
    extra = sorted(set(filters) - {"workflow_ids", "channels"})
    if extra:
        raise InvalidParameter(f"unknown filter {extra[0]!r}", field=f"filters.{extra[0]}")
    include = body.get("include_metadata", False)
    if not isinstance(include, bool):
        raise InvalidParameter("include_metadata must be true or false", field="include_metadata")
    tz = parse_timezone(body.get("timezone"))
    return ExportRequest(
        data_type=data_type,
        format=fmt,
        period=parse_period(body.get("start_date"), body.get("end_date"), tz),
        workflow_ids=parse_string_list(filters.get("workflow_ids"), "filters.workflow_ids"),
        channels=parse_string_list(filters.get("channels"), "filters.channels"),
        include_metadata=include,
    )


_FILTERS = (
    "(len($workflows) = 0 OR list_contains($workflows, workflow_id))"
    " AND (len($channels) = 0 OR list_contains($channels, channel))"
)


def export_sql(store: DuckDBEventStore, tenant: str, data_type: str) -> str:
    """The query behind each data type; binds $tenant $lo $hi $workflows $channels $tz."""
    if data_type == "executions":
        return f"""
            SELECT execution_id, workflow_id, channel, customer_id, started_at,
                ['running', 'success', 'failed'][status + 1] AS status, duration_ms, error_type
            FROM ({store.executions_sql(tenant)})
            WHERE started_at BETWEEN $lo AND $hi AND {_FILTERS}
        """
    if data_type == "messages":
        return f"""
            SELECT event_id, replace(type, 'message.', '') AS direction, ts AS timestamp,
                customer_id, channel, workflow_id, execution_id, message_id
            FROM events
            WHERE tenant = $tenant AND type IN ('message.sent', 'message.received')
              AND ts BETWEEN $lo AND $hi AND {_FILTERS}
        """
    if data_type == "feedback":
        return f"""
            SELECT event_id, ts AS timestamp, customer_id, workflow_id, execution_id, channel,
                csat, nps, comment
            FROM events
            WHERE tenant = $tenant AND type = 'feedback.submitted'
              AND ts BETWEEN $lo AND $hi AND {_FILTERS}
        """
    if data_type == "journeys":
        # Journeys have no workflow; the channel filter keeps journeys with a step on it.
        return """
            SELECT journey_id, journey_type, any_value(customer_id) AS customer_id,
                min(ts) FILTER (WHERE type = 'journey.step') AS started_at,
                min(ts) FILTER (WHERE type = 'journey.completed') AS completed_at,
                min(ts) FILTER (WHERE type = 'journey.dropped') AS dropped_at,
                arg_min(reason, ts) FILTER (WHERE type = 'journey.dropped') AS drop_reason,
                max(step) FILTER (WHERE type = 'journey.step') AS highest_step,
                count(DISTINCT step) FILTER (WHERE type = 'journey.step') AS steps_reached
            FROM events
            WHERE tenant = $tenant AND type LIKE 'journey.%'
            GROUP BY journey_id, journey_type
            HAVING started_at BETWEEN $lo AND $hi
              AND (len($channels) = 0 OR bool_or(list_contains($channels, channel)))
            ORDER BY started_at, journey_id
        """
    if data_type == "events":
        fields = ", ".join(FIELD_COLUMNS)
        return f"""
            SELECT event_id AS id, id_given, type, ts_text AS timestamp,
                {fields}
            FROM events
            WHERE tenant = $tenant AND ts BETWEEN $lo AND $hi AND {_FILTERS}
        """
    assert data_type == "workflow_metrics"
    return f"""
        SELECT strftime(date_trunc('day', timezone($tz, timezone('UTC', started_at))), '%Y-%m-%d')
                 AS date,
            workflow_id, channel, count(*) AS executions,
            count(*) FILTER (WHERE status = 1) AS successful_executions,
            count(*) FILTER (WHERE status = 2) AS failed_executions,
            round(count(*) FILTER (WHERE status = 1)
                  / nullif(count(*) FILTER (WHERE status > 0), 0), 4) AS success_rate,
            round(avg(duration_ms) FILTER (WHERE status > 0))::BIGINT AS average_duration_ms,
            count(DISTINCT customer_id) AS unique_customers
        FROM ({store.executions_sql(tenant)})
        WHERE started_at BETWEEN $lo AND $hi AND {_FILTERS}
        GROUP BY ALL ORDER BY date, workflow_id, channel
    """


def _batches(
    store: DuckDBEventStore, tenant: str, req: ExportRequest, deadline: float
) -> Iterator[pa.RecordBatch]:
    params = {
        "tenant": tenant,
        "lo": req.period.start_naive,
        "hi": req.period.end_naive,
        "workflows": list(req.workflow_ids),
        "channels": list(req.channels),
        "tz": req.period.tz.key,
    }
    for batch in store.stream(export_sql(store, tenant, req.data_type), params, BATCH_ROWS):
        if time.monotonic() > deadline:
            raise JobTimeout("the export ran past its time limit")
        yield batch


def _json_rows(batch: pa.RecordBatch, data_type: str) -> Iterator[bytes]:
    if data_type == "events":
        for row in batch.to_pylist():
            yield orjson.dumps(_raw_event(row))
        return
    for row in batch.to_pylist():
        yield orjson.dumps(row, option=orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z)


def _raw_event(row: dict[str, Any]) -> dict[str, Any]:
    """The event as it was sent: the same fields and values (keys in a fixed order)."""
    out: dict[str, Any] = {}
    if row.pop("id_given"):
        out["id"] = row["id"]
    row.pop("id")
    for key, value in row.items():
        if value is None:
            continue
        out[key] = orjson.loads(value) if key in ("properties", "traits") else value
    return out


def write_export(
    out: IO[bytes],
    store: DuckDBEventStore,
    tenant: str,
    req: ExportRequest,
    metadata: dict[str, Any],
    deadline: float,
) -> int:
    """Stream the export into ``out`` by ``deadline`` (monotonic); return the number of rows."""
    rows = 0
    batches = _batches(store, tenant, req, deadline)
    meta = metadata if req.include_metadata else None
    if req.format == "parquet":
        writer: Any = None
        for batch in batches:
            if writer is None:
                schema = batch.schema
                if meta:
                    schema = schema.with_metadata({"kaie": orjson.dumps(meta)})
                writer = pq.ParquetWriter(out, schema, compression="zstd")
            writer.write_batch(batch)
            rows += batch.num_rows
        if writer is None:  # no rows: still a valid file with the columns
            empty = store.stream(
                export_sql(store, tenant, req.data_type) + " LIMIT 0",
                {"tenant": tenant, "lo": req.period.start_naive, "hi": req.period.end_naive,
                 "workflows": [], "channels": [], "tz": "UTC"},
                1,
            )  # fmt: skip
            schema = empty.schema
            if meta:
                schema = schema.with_metadata({"kaie": orjson.dumps(meta)})
            writer = pq.ParquetWriter(out, schema, compression="zstd")
        writer.close()
        return rows
    if req.format == "csv":
        if meta:
            for key, value in meta.items():
                text = value if isinstance(value, str) else orjson.dumps(value).decode()
                out.write(f"# {key}: {text}\n".encode())
        csv_writer: Any = None
        for batch in batches:
            if req.data_type == "events":
                batch = batch.drop_columns(["id_given"])
            if csv_writer is None:
                csv_writer = pa_csv.CSVWriter(out, batch.schema)
            csv_writer.write_batch(batch)
            rows += batch.num_rows
        if csv_writer is not None:
            csv_writer.close()
        return rows
    if req.format == "ndjson":
        if meta:
            out.write(orjson.dumps({"_metadata": meta}) + b"\n")
        for batch in batches:
            for line in _json_rows(batch, req.data_type):
                out.write(line + b"\n")
                rows += 1
        return rows
    out.write(b'{"metadata":' + orjson.dumps(meta) + b',"data":[' if meta else b"[")
    first = True
    for batch in batches:
        for line in _json_rows(batch, req.data_type):
            out.write(line if first else b"," + line)
            first = False
            rows += 1
    out.write(b"]}" if meta else b"]")
    return rows
