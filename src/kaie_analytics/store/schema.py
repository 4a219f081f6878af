"""The metadata tables as they are after the last migration (``store.migrations``).

Times are ISO 8601 text in UTC (``2026-12-01T15:40:38.123456+00:00``): the same
in SQLite and PostgreSQL, and ordered as text is ordered.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

tenants = sa.Table(
    "tenants",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("created_at", sa.Text, nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("prefix", sa.Text, primary_key=True),
    sa.Column("tenant", sa.Text, sa.ForeignKey("tenants.name"), nullable=False),
    sa.Column("key_hash", sa.Text, nullable=False),
    sa.Column("scopes", sa.Text, nullable=False),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("revoked_at", sa.Text),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("tenant", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),  # report | export
    sa.Column("name", sa.Text),
    sa.Column("params", sa.Text, nullable=False),  # the validated request, as JSON
    sa.Column("state", sa.Text, nullable=False),  # queued | running | completed | failed
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("started_at", sa.Text),
    sa.Column("completed_at", sa.Text),
    sa.Column("expires_at", sa.Text),
    sa.Column("estimated_completion", sa.Text, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("file_name", sa.Text),
    sa.Column("content_type", sa.Text),
    sa.Column("rows", sa.Integer),
    # The process running the job, and until when it holds it unless it renews.
    sa.Column("lease_owner", sa.Text),
    sa.Column("lease_expires_at", sa.Text),
)

schema_migrations = sa.Table(
    "schema_migrations",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("applied_at", sa.Text, nullable=False),
)
