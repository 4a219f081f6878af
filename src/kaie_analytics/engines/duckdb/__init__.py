"""The embedded event engine: DuckDB in the data directory.

The engine class is ``engine.DuckDBEngine``. Read in this order: ``engine``
(the facts), ``store`` (the file; it wires ``writer``, ``folds`` and
``progress``), ``workflow_reads`` and ``slots`` (rollups plus raw rows),
``sql_reads``, ``customer_reads``, ``realtime_reads``, ``export_reads``. The
tables derived from events are defined in ``schema``, ``executions_sql``,
``derived``, ``rollups`` and ``activity``. This package module imports
nothing, so its modules import each other without a circle.
"""
