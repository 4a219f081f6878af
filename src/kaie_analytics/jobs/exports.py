"""Data exports, streamed from the engine to the file in Arrow batches.

Memory stays flat whatever the row count: rows flow from the engine as a
``RecordBatchReader`` into a Parquet / CSV writer or line by line into JSON.
Raw rows are therefore written in storage order (by workflow, then time),
not sorted: a sort would hold the whole export in memory.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import IO, Any, cast

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from kaie_analytics.analytics import metrics as reg
from kaie_analytics.analytics.facts import ActivityQuery, Ask, EventEngine, RowKind, RowsQuery
from kaie_analytics.analytics.periods import (
    Period,
    bucket_label,
    bucket_windows,
    parse_period,
    parse_string_list,
    parse_timezone,
)
from kaie_analytics.errors import InvalidParameter

DATA_TYPES = ("executions", "messages", "feedback", "journeys", "events", "workflow_metrics")
FORMATS = ("csv", "json", "ndjson", "parquet")
CONTENT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "json": "application/json",
    "ndjson": "application/x-ndjson",
    "parquet": "application/vnd.apache.parquet",
}
BATCH_ROWS = 65_536
#: Every CSV (exports and reports) starts with a UTF-8 byte order mark: spreadsheets
#: then read non-ASCII text right, and pandas, polars and DuckDB skip it.
CSV_BOM = b"\xef\xbb\xbf"


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
    filters = {} if body.get("filters") is None else body["filters"]
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


#: The columns of the ``workflow_metrics`` export: its key, then registry metrics.
_DAILY_METRICS = (
    ("executions", "total_executions", pa.int64()),
    ("successful_executions", "successful_executions", pa.int64()),
    ("failed_executions", "failed_executions", pa.int64()),
    ("success_rate", "success_rate", pa.float64()),
    ("average_duration_ms", "average_duration_ms", pa.int64()),
    ("unique_customers", "unique_customers", pa.int64()),
)
DAILY_SCHEMA = pa.schema(
    [("date", pa.date32()), ("workflow_id", pa.string()), ("channel", pa.string())]
    + [(column, kind) for column, _, kind in _DAILY_METRICS]
)


def daily_workflow_metrics(engine: EventEngine, tenant: str, req: ExportRequest) -> pa.Table:
    """Per local day, workflow and channel: the registry's workflow metrics."""
    days = bucket_windows(req.period, "day")
    names = [metric for _, metric, _ in _DAILY_METRICS]
    (cells,) = engine.activity(
        ActivityQuery(
            tenant,
            tuple(w for _, w in days),
            (Ask(tuple(range(len(days))), reg.measures(names), ("workflow_id", "channel")),),
            workflow_ids=req.workflow_ids,
            channels=req.channels,
        )
    )
    rows = []
    order = sorted(cells, key=lambda k: (k[0], k[1] is None, str(k[1]), k[2] is None, str(k[2])))
    for key in order:
        w, workflow_id, channel = key
        values = reg.values(cells[key], names)
        rows.append(
            {
                "date": date.fromisoformat(bucket_label(days[w][0], "day", req.period.tz)),
                "workflow_id": workflow_id,
                "channel": channel,
                **{column: values[metric] for column, metric, _ in _DAILY_METRICS},
            }
        )
    return pa.Table.from_pylist(rows, schema=DAILY_SCHEMA)


def _reader(engine: EventEngine, tenant: str, req: ExportRequest) -> pa.RecordBatchReader:
    if req.data_type == "workflow_metrics":
        table = daily_workflow_metrics(engine, tenant, req)
        return pa.RecordBatchReader.from_batches(table.schema, table.to_batches(BATCH_ROWS))
    return engine.rows(
        RowsQuery(
            tenant,
            cast(RowKind, req.data_type),
            req.period.window,
            workflow_ids=req.workflow_ids,
            channels=req.channels,
        ),
        BATCH_ROWS,
    )


def _utc_schema(schema: pa.Schema) -> pa.Schema:
    """Times as UTC timestamps (engines give naive UTC ones), so readers know the zone."""
    return pa.schema(
        [
            f.with_type(pa.timestamp(f.type.unit, tz="UTC"))
            if pa.types.is_timestamp(f.type) and f.type.tz is None
            else f
            for f in schema
        ],
        metadata=schema.metadata,
    )


def _batches(reader: pa.RecordBatchReader, deadline: float) -> Iterator[pa.RecordBatch]:
    for batch in reader:
        if time.monotonic() > deadline:
            raise JobTimeout("the export ran past its time limit")
        yield batch.cast(_utc_schema(batch.schema))


def _rfc3339(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Timestamp columns as RFC 3339 text in UTC (``2024-01-31T23:59:59.123456Z``), as in
    the JSON formats (Arrow's CSV writer puts a space between date and time)."""
    columns = [
        pc.strftime(column, format="%Y-%m-%dT%H:%M:%SZ")
        if pa.types.is_timestamp(column.type)
        else column
        for column in batch.columns
    ]
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def _json_rows(batch: pa.RecordBatch, data_type: str) -> Iterator[bytes]:
    if data_type == "events":
        for row in batch.to_pylist():
            yield orjson.dumps(_raw_event(row))
        return
    for row in batch.to_pylist():
        yield orjson.dumps(row, option=orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z)


def _raw_event(row: dict[str, Any]) -> dict[str, Any]:
    """The event as it was sent, with every field (null where it had none, the id too
    when it was sent without one), in a fixed order: every row has the same keys, and
    ``POST /v1/events`` takes it back as the same event (null means absent)."""
    if not row.pop("id_given"):
        row["id"] = None
    for key in ("properties", "traits"):
        if row.get(key) is not None:
            row[key] = orjson.loads(row[key])
    return row


def export_metadata(export_id: str, req: ExportRequest, generated: datetime) -> dict[str, Any]:
    """What an export is of: written into a Parquet file's schema metadata, and given
    in the export's status answer (a CSV or JSON file holds rows only, so that every
    reader reads it as it is)."""
    return {
        "export_id": export_id,
        "data_type": req.data_type,
        "period": req.period.render(),
        "timezone": req.period.tz.key,
        "filters": {"workflow_ids": list(req.workflow_ids), "channels": list(req.channels)},
        "generated_at": generated.isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


def write_export(
    out: IO[bytes],
    engine: EventEngine,
    tenant: str,
    req: ExportRequest,
    metadata: dict[str, Any],
    deadline: float,
) -> int:
    """Stream the export into ``out`` by ``deadline`` (monotonic); return the number of rows."""
    rows = 0
    reader = _reader(engine, tenant, req)
    batches = _batches(reader, deadline)
    meta = metadata if req.include_metadata else None  # Parquet only: see export_metadata
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
            schema = _utc_schema(reader.schema)
            if meta:
                schema = schema.with_metadata({"kaie": orjson.dumps(meta)})
            writer = pq.ParquetWriter(out, schema, compression="zstd")
        writer.close()
        return rows
    if req.format == "csv":
        out.write(CSV_BOM)
        csv_writer: Any = None
        for batch in batches:
            if req.data_type == "events":
                batch = batch.drop_columns(["id_given"])
            batch = _rfc3339(batch)
            if csv_writer is None:
                csv_writer = pa_csv.CSVWriter(out, batch.schema)
            csv_writer.write_batch(batch)
            rows += batch.num_rows
        if csv_writer is not None:
            csv_writer.close()
        return rows
    if req.format == "ndjson":
        for batch in batches:
            for line in _json_rows(batch, req.data_type):
                out.write(line + b"\n")
                rows += 1
        return rows
    out.write(b"[")
    first = True
    for batch in batches:
        for line in _json_rows(batch, req.data_type):
            out.write(line if first else b"," + line)
            first = False
            rows += 1
    out.write(b"]")
    return rows
