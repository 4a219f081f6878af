"""One settings object: every option is also an environment variable ``KAIE_<NAME>``."""

from __future__ import annotations

from pathlib import Path

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kaie_analytics.ratelimit import DEFAULT_RATE_LIMITS


def is_postgres_url(value: str) -> bool:
    return value.startswith(("postgresql://", "postgres://"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KAIE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("./kaie-data")

    #: Per-class limits per API key; classes not named keep their default (spec/OPERATIONS.md).
    rate_limits: str = DEFAULT_RATE_LIMITS
    #: Failed authentications allowed per client address; past it, 429 until the window passes.
    auth_failure_limit: str = "20/minute"
    #: Redis shared by several API processes (rate limits, cache versions); unset: one process.
    redis_url: str | None = None
    #: Signs download links; generated and kept in the data directory when unset.
    secret_key: str | None = None
    #: Where events live: duckdb, chdb (embedded ClickHouse) or clickhouse://USER:PASSWORD@HOST:8123/DB.
    events_backend: str = "duckdb"
    #: The ClickHouse cluster (its name in the servers' remote_servers) the tables are created
    #: on: replicated, and distributed by tenant. Unset: one server.
    clickhouse_cluster: str | None = None
    #: Where tenants, keys and jobs live: sqlite (in the data directory) or postgresql://...
    meta_backend: str = "sqlite"
    #: Report and export files; a directory every API process shares when there are several.
    files_dir: Path | None = None

    #: Processes that decode and validate event batches beside the server (0: in the server).
    ingest_workers: int = 0
    #: Largest request body, after gzip is undone.
    max_body_bytes: int = 5 * 1024 * 1024
    #: Longest time one analytics query may run before it is interrupted.
    query_timeout_s: float = 10.0
    #: Memory DuckDB may use (its own buffer manager limit).
    duckdb_memory_limit: str = "2GB"
    duckdb_threads: int = 2
    #: Memory for the workflow rollups held per UTC day (MiB; 0 keeps none between queries).
    rollup_cache_mb: int = 256
    #: How long a looked-up API key is trusted before it is checked again.
    key_cache_ttl_s: float = 2.0
    #: Fold pending events into the compacted execution table after this many.
    compact_after_events: int = 500_000
    #: ... or once events have waited this many seconds.
    compact_idle_s: float = 2.0
    #: A fold takes at most this many events per transaction (so any backlog fits in memory).
    fold_piece_events: int = 1_000_000
    #: Longest time one report or export job may run before it fails.
    job_time_limit_s: float = 1800.0
    #: Threads running report and export jobs; a tenant uses at most all but one of them.
    job_workers: int = 2
    #: A running job's lease: renewed every third of it; if its process dies, another
    #: process takes the job over once it runs out.
    job_lease_s: float = 30.0
    #: Base of absolute download links (e.g. https://analytics.example.com); default: the
    #: request's own, if its host is trusted (the listen address, loopback or allowed_hosts).
    public_url: str | None = None
    #: Comma-separated host names download links may be built for when public_url is unset.
    allowed_hosts: str = ""
    #: Recent events move into the sorted main table in chunks of this many rows.
    events_chunk_rows: int = 1_000_000
    #: Log format: "json" or "text".
    log_format: str = "json"

    @field_validator("events_backend")
    @classmethod
    def _known_events_backend(cls, value: str) -> str:
        if value in ("duckdb", "chdb") or value.startswith(("clickhouse://", "clickhouses://")):
            return value
        raise ValueError(
            "KAIE_EVENTS_BACKEND must be duckdb, chdb or clickhouse://USER:PASSWORD@HOST:8123/DB"
        )

    @field_validator("meta_backend")
    @classmethod
    def _known_meta_backend(cls, value: str) -> str:
        if value == "sqlite" or is_postgres_url(value):
            return value
        raise ValueError(
            "KAIE_META_BACKEND must be sqlite or postgresql://USER:PASSWORD@HOST:5432/DB"
        )

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is None or value.startswith(("redis://", "rediss://", "unix://")):
            return value or None
        raise ValueError("KAIE_REDIS_URL must be redis://HOST:6379/0 (or rediss:// or unix://)")

    @field_validator("job_lease_s")
    @classmethod
    def _lease(cls, value: float) -> float:
        if value < 3:
            raise ValueError("KAIE_JOB_LEASE_S must be at least 3 seconds")
        return value

    @property
    def allowed_host_names(self) -> frozenset[str]:
        return frozenset(h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip())

    @property
    def events_db_path(self) -> Path:
        return self.data_dir / "events.duckdb"

    @property
    def files_path(self) -> Path:
        return self.files_dir if self.files_dir is not None else self.data_dir / "files"

    @property
    def meta_db_path(self) -> Path:
        return self.data_dir / "meta.sqlite3"
