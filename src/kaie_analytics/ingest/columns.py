"""A validated batch of events as typed Arrow columns, ready for an engine's writer.

Built off the writer thread (in a request thread or an ingest process), so
the single writer only dedupes, inserts and commits. Every engine takes this
shape (``EventEngine.prepare`` / ``append_prepared``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.json as pa_json
from xxhash import xxh3_64_intdigest

from kaie_analytics.ingest.validate import FIELD_COLUMNS, OBJECT_FIELDS, ValidEvent, timestamp_us

_ARROW_TYPES = {"duration_ms": pa.int64(), "csat": pa.int8(), "nps": pa.int8(), "step": pa.int8()}
_JSON_READ = pa_json.ReadOptions(use_threads=False, block_size=16 << 20)
_JSON_PARSE = pa_json.ParseOptions(
    explicit_schema=pa.schema(
        [(c, _ARROW_TYPES.get(c, pa.string())) for c in FIELD_COLUMNS if c not in OBJECT_FIELDS]
    ),
    unexpected_field_behavior="ignore",
)


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """A validated batch as typed Arrow columns, with its 64-bit id hashes."""

    table: pa.Table
    hashes: np.ndarray
    event_ids: list[str]


def _hashes(tenant: str, event_ids: list[str]) -> np.ndarray:
    prefix = tenant + "\x00"
    return np.fromiter(
        (xxh3_64_intdigest((prefix + i).encode()) for i in event_ids),
        dtype=np.uint64,
        count=len(event_ids),
    )


def from_stored(tenant: str, rows: pa.RecordBatch) -> PreparedBatch:
    """A batch of stored events as an engine gives them (``rows`` of kind ``events``),
    prepared for another engine: the same ids, times and fields (copy-events)."""
    event_ids = rows.column("id").to_pylist()
    hashes = _hashes(tenant, event_ids)
    texts = rows.column("timestamp").to_pylist()
    columns: dict[str, pa.Array] = {
        "tenant": pa.array([tenant] * rows.num_rows, pa.string()),
        "id_hash": pa.array(hashes),
        "event_id": rows.column("id"),
        "id_given": rows.column("id_given"),
        "type": rows.column("type"),
        "ts": pa.array([timestamp_us(t) for t in texts], pa.int64()).cast(pa.timestamp("us")),
        "ts_text": rows.column("timestamp"),
    }
    for name in FIELD_COLUMNS:
        columns[name] = rows.column(name).cast(_ARROW_TYPES.get(name, pa.string()))
    return PreparedBatch(pa.table(columns), hashes, event_ids)


def prepare(tenant: str, rows: list[ValidEvent]) -> PreparedBatch:
    """Typed Arrow columns and 64-bit id hashes (xxh3 of ``tenant NUL id``) of a batch.

    The field columns are parsed from the (already validated) raw JSON by
    Arrow's JSON reader, in C++ and without the GIL.
    """
    event_ids = [e.event_id for e in rows]
    hashes = _hashes(tenant, event_ids)
    columns: dict[str, pa.Array] = {
        "tenant": pa.array([tenant] * len(rows), pa.string()),
        "id_hash": pa.array(hashes),
        "event_id": pa.array(event_ids, pa.string()),
        "id_given": pa.array([e.id_given for e in rows], pa.bool_()),
        "type": pa.array([e.type for e in rows], pa.string()),
        "ts": pa.array([e.ts_us for e in rows], pa.int64()).cast(pa.timestamp("us")),
        "ts_text": pa.array([e.ts_text for e in rows], pa.string()),
    }
    try:
        parsed = pa_json.read_json(
            io.BytesIO(b"\n".join(e.raw for e in rows)),
            read_options=_JSON_READ,
            parse_options=_JSON_PARSE,
        )
    except pa.ArrowInvalid:  # e.g. a repeated key; take the slow path
        parsed = None
    for name in FIELD_COLUMNS:
        if name in OBJECT_FIELDS:
            at = OBJECT_FIELDS.index(name)
            columns[name] = pa.array([e.objects[at] for e in rows], pa.string())
        elif parsed is not None:
            columns[name] = parsed.column(name).combine_chunks()
        else:
            columns[name] = pa.array(
                [getattr(e.fields, name, None) for e in rows],
                _ARROW_TYPES.get(name, pa.string()),
            )
    return PreparedBatch(pa.table(columns), hashes, event_ids)
