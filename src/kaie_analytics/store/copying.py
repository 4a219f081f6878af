"""Copying the metadata of one database into another (SQLite to PostgreSQL)."""

from __future__ import annotations

import sqlalchemy as sa

from kaie_analytics.store.database import Database, insert_new
from kaie_analytics.store.schema import metadata, schema_migrations


def copy_metadata(source: Database, target: Database) -> dict[str, int]:
    """Every row of every table (parents first), keeping rows the target has; return
    how many rows each table had in the source."""
    copied = {}
    for table in metadata.sorted_tables:
        if table is schema_migrations:
            continue  # each database has its own, written by its migrations
        with source.reading() as src:
            rows = [dict(row._mapping) for row in src.execute(sa.select(table))]
        with target.writing() as dst:
            for row in rows:
                insert_new(dst, table, **row)
        copied[table.name] = len(rows)
    return copied
