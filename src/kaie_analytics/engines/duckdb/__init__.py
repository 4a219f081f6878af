"""The embedded event engine: DuckDB in the data directory."""
