"""The embedded event engine: DuckDB in the data directory.

Read in this order: ``engine`` (the facts), ``store`` (file, writer, folds),
``workflow_reads`` and ``slots`` (rollups plus raw rows), ``sql_reads``,
``customer_reads``, ``realtime_reads``, ``export_reads``; the tables derived
from events are in ``executions_sql``, ``derived``, ``rollups``, ``activity``.
"""

from kaie_analytics.engines.duckdb.engine import DuckDBEngine

__all__ = ["DuckDBEngine"]
