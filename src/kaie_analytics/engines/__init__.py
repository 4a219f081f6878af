"""Event engines: where events are kept and how facts are computed from them.

Each engine is one package implementing ``analytics.facts.EventEngine``;
``open_engine`` picks it from ``KAIE_EVENTS_BACKEND``.
"""

from __future__ import annotations

import importlib.util
import logging

from kaie_analytics.analytics.facts import EventEngine
from kaie_analytics.config import Settings
from kaie_analytics.errors import UnsupportedBackend


def check_backend(settings: Settings) -> None:
    """Raise ``UnsupportedBackend`` if the engine's libraries are not installed."""
    if settings.clickhouse_cluster and not settings.events_backend.startswith("clickhouse"):
        raise UnsupportedBackend(
            "KAIE_CLICKHOUSE_CLUSTER needs KAIE_EVENTS_BACKEND=clickhouse://... (a server)"
        )
    if settings.events_backend == "duckdb":
        return
    module = "chdb" if settings.events_backend == "chdb" else "clickhouse_connect"
    if importlib.util.find_spec(module) is None:
        raise UnsupportedBackend(
            f"KAIE_EVENTS_BACKEND={settings.events_backend.split(':')[0]} needs {module}:"
            " pip install 'kaie-analytics[clickhouse]'"
        )


def open_engine(settings: Settings) -> EventEngine:
    """The engine ``settings.events_backend`` names, opened on the data directory."""
    if settings.events_backend != "duckdb":
        from kaie_analytics.engines.clickhouse.engine import ClickHouseEngine

        return ClickHouseEngine.open(
            settings.events_backend,
            settings.data_dir,
            cluster=settings.clickhouse_cluster,
            query_timeout_s=settings.query_timeout_s,
            fold_idle_s=settings.compact_idle_s,
            rollup_cache_bytes=settings.rollup_cache_mb << 20,
        )
    from kaie_analytics.engines.duckdb.engine import DuckDBEngine

    return DuckDBEngine(
        settings.events_db_path,
        memory_limit=settings.duckdb_memory_limit,
        threads=settings.duckdb_threads,
        query_timeout_s=settings.query_timeout_s,
        compact_after_events=settings.compact_after_events,
        compact_idle_s=settings.compact_idle_s,
        chunk_rows=settings.events_chunk_rows,
        rollup_cache_bytes=settings.rollup_cache_mb << 20,
        fold_piece_events=settings.fold_piece_events,
    )


def ensure_free(settings: Settings) -> None:
    """Raise ``errors.StoreInUse`` if another process holds the engine's data, and
    ``UnsupportedBackend`` if a ClickHouse server cannot be reached."""
    if settings.events_backend == "chdb":
        from kaie_analytics.engines.clickhouse.transport import ChdbTransport, chdb_path

        ChdbTransport.ensure_free(chdb_path(settings.data_dir))
        return
    if settings.events_backend != "duckdb":  # a server serves many processes: reach it
        from kaie_analytics.engines.clickhouse.transport import ServerTransport

        # The drivers' own warnings about each retry would bury the one line.
        names = ("urllib3", "urllib3.connectionpool", "clickhouse_connect")
        drivers = [logging.getLogger(name) for name in names]
        levels = [d.level for d in drivers]
        for d in drivers:
            d.setLevel(logging.CRITICAL)
        try:
            ServerTransport(settings.events_backend).close()
        except Exception as exc:
            text = str(exc)
            reason = "connection refused" if "refused" in text else text.splitlines()[0][:160]
            where = settings.events_backend.split("@")[-1]  # never the password
            raise UnsupportedBackend(f"cannot reach ClickHouse at {where} ({reason})") from None
        finally:
            for d, level in zip(drivers, levels, strict=True):
                d.setLevel(level)
        return
    from kaie_analytics.engines.duckdb.engine import DuckDBEngine

    DuckDBEngine.ensure_free(settings.events_db_path)
