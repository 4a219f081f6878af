"""The ClickHouse engine: events in ClickHouse, embedded (chdb) or on a server or cluster.

Imports nothing here, so that importing a module of the package does not load
chdb or clickhouse-connect until an engine is opened.
"""
