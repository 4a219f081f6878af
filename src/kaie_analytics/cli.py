"""The ``kaie-analytics`` command line (spec/OPERATIONS.md)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Annotated, Any

import httpx
import orjson
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from kaie_analytics.config import Settings
from kaie_analytics.errors import StoreInUse, StoreUnavailable, UnsupportedBackend
from kaie_analytics.shared_state import bump_from_cli
from kaie_analytics.store.database import Database
from kaie_analytics.store.meta import SCOPES, InvalidScopes, MetaStore, parse_scopes
from kaie_analytics.store.migrations import LATEST, NewerSchema
from kaie_client import Client, KaieError

app = typer.Typer(
    help="kaie-analytics: analytics for conversational-automation workflows.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
err = Console(stderr=True)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory [env KAIE_DATA_DIR; default ./kaie-data]"),
]
INGEST_CHUNK = 5_000


class CliError(Exception):
    """A one-line error for standard error, with exit status 2."""


def _settings(**overrides: Any) -> Settings:
    """Settings from the environment and the options given; a bad value is one line."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise CliError(message if "KAIE_" in message else f"{where}: {message}") from None


def _database(settings: Settings, backend: str | None = None) -> Database:
    """The metadata database, migrated; an unreachable or newer one is one line."""
    try:
        return Database.open(backend or settings.meta_backend, settings.meta_db_path)
    except StoreUnavailable as exc:
        raise CliError(str(exc.details)) from None
    except NewerSchema as exc:
        raise CliError(str(exc)) from None


@contextmanager
def _meta(settings: Settings) -> Iterator[MetaStore]:
    db = _database(settings)
    try:
        yield MetaStore(db)
    finally:
        db.close()


def _open_store(settings: Settings) -> Any:
    from kaie_analytics.engines import open_engine

    try:
        return open_engine(settings)
    except StoreInUse as exc:
        raise CliError(
            f"{_holder(exc)} is serving {settings.data_dir};"
            " stop it, or send through it with --url and --api-key"
        ) from None


#: Limits of ``demo`` (unless KAIE_RATE_LIMITS is set): room to explore for hours.
DEMO_RATE_LIMITS = (
    "realtime=20000/hour,historical=10000/hour,reports=1000/hour,"
    "export=1000/hour,events=100000/hour,default=20000/hour"
)
#: Where ``demo`` keeps its key, so that later runs show the same one.
DEMO_KEY_FILE = "demo-key"


def _demo_key(settings: Settings) -> tuple[str, bool]:
    """The demo tenant's key: the one a previous run made while it is active (and
    whether it is that one), else a new one."""
    path = settings.data_dir / DEMO_KEY_FILE
    with _meta(settings) as meta:
        if path.exists():
            known = path.read_text().strip()
            found = meta.authenticate(known)
            if found is not None and found.tenant == "demo":
                return known, True
        key = meta.create_key("demo", frozenset(SCOPES))
    path.touch(mode=0o600)
    path.write_text(key + "\n")
    return key, False


def _stale_caches(settings: Settings, tenants: list[str]) -> None:
    """Events were written straight into the store: servers must not keep serving
    answers cached before them."""
    try:
        bump_from_cli(settings.redis_url, tenants)
    except StoreUnavailable:
        raise CliError(
            "the events are stored, but Redis (KAIE_REDIS_URL) cannot be reached, so servers"
            " may serve answers cached before them; run the command again once it is back"
            " (what is stored comes back as duplicates)"
        ) from None


def _holder(exc: StoreInUse) -> str:
    return f"another process (PID {exc.pid})" if exc.pid else "another process"


def _bootstrap_key(settings: Settings) -> str | None:
    with _meta(settings) as meta:
        if meta.has_keys():
            return None
        return meta.create_key("default", frozenset(SCOPES))


def _serve(settings: Settings, banner: list[str], *, demo: bool = False) -> None:
    import uvicorn

    from kaie_analytics.app import create_app
    from kaie_analytics.engines import ensure_free
    from kaie_analytics.logs import configure_logging
    from kaie_analytics.ratelimit import InvalidRateLimits

    configure_logging(settings.log_format)
    try:
        ensure_free(settings)
    except StoreInUse as exc:
        raise CliError(
            f"{_holder(exc)} is serving {settings.data_dir};"
            " stop it, or give this server another --data-dir"
        ) from None
    except UnsupportedBackend as exc:
        raise CliError(str(exc)) from None
    try:
        app = create_app(settings, demo=demo)
    except InvalidRateLimits as exc:
        raise CliError(str(exc)) from None
    except UnsupportedBackend as exc:
        raise CliError(str(exc)) from None
    for line in banner:
        typer.echo(line)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on [env KAIE_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="Port [env KAIE_PORT; default 8000]")] = None,
    data_dir: DataDir = None,
) -> None:
    """Run the API on the embedded engine (DuckDB + SQLite in the data directory)."""
    settings = _settings(host=host, port=port, data_dir=data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    key = _bootstrap_key(settings)
    banner = []
    if key:
        banner = [
            "Created tenant 'default' and an API key with every scope (shown only once):",
            key,
        ]
    _serve(settings, banner)


@app.command()
def demo(
    data_dir: DataDir = None,
    port: Annotated[int | None, typer.Option(help="Port [env KAIE_PORT; default 8000]")] = None,
    host: Annotated[str | None, typer.Option(help="Address [env KAIE_HOST]")] = None,
    days: Annotated[int, typer.Option(min=1, max=366, help="Days of history")] = 90,
    seed: Annotated[int, typer.Option(help="Random seed")] = 1,
    serve_after: Annotated[bool, typer.Option("--serve/--no-serve", help="Serve after")] = True,
) -> None:
    """Fill the data directory with realistic synthetic data, then serve it."""
    import os

    from kaie_analytics.demo import generate_demo
    from kaie_analytics.ingest.service import ingest_items

    settings = _settings(host=host, port=port, data_dir=data_dir)
    if "KAIE_RATE_LIMITS" not in os.environ:
        # Exploring by hand and with the dashboard soon passes the production limits.
        settings = settings.model_copy(update={"rate_limits": DEMO_RATE_LIMITS})
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    key, reused = _demo_key(settings)
    store = _open_store(settings)
    totals = [0, 0, 0]
    try:
        existing = store.count_events("demo")
        if existing:  # a second `make demo` serves what is there rather than doubling it
            typer.echo(f"Demo data already present ({existing} events); serving it.")
        else:
            with _progress("days") as progress:
                task = progress.add_task("Generating and ingesting demo events", total=days)
                for day_done, events in generate_demo(days=days, seed=seed):
                    for i in range(0, len(events), INGEST_CHUNK):
                        chunk = [orjson.dumps(e) for e in events[i : i + INGEST_CHUNK]]
                        summary = ingest_items(store, "demo", chunk)
                        totals[0] += summary.accepted
                        totals[1] += summary.duplicates
                        totals[2] += summary.rejected
                    progress.update(task, completed=day_done)
            store.settle()
            typer.echo(
                f"Demo data: {totals[0]} events accepted, {totals[1]} duplicates,"
                f" {totals[2]} rejected."
            )
    finally:
        store.close()
    base = f"http://{settings.host}:{settings.port}"
    banner = [
        f"API key for tenant 'demo'{' (the one made before)' if reused else ''}: {key}",
        f"Try:  curl -H 'Authorization: Bearer {key}' {base}/v1/workflows",
        f"      curl -H 'Authorization: Bearer {key}' {base}/v1/analytics/workflows/support-bot",
        f"      curl -H 'Authorization: Bearer {key}'"
        f" {base}/v1/analytics/workflows/support-bot/performance",
        f"Docs: {base}/docs",
    ]
    if serve_after:
        _serve(settings, banner, demo=True)
    else:
        for line in banner:
            typer.echo(line)


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant name (created if new)")],
    scopes: Annotated[str, typer.Option(help="Comma-separated scopes")] = ",".join(SCOPES),
    data_dir: DataDir = None,
) -> None:
    """Create an API key; the key alone is the last line of standard output."""
    settings = _settings(data_dir=data_dir)
    if not tenant.strip() or len(tenant) > 64:
        raise CliError("--tenant must be 1 to 64 characters")
    try:
        parsed = parse_scopes(scopes)
    except InvalidScopes as exc:
        raise CliError(str(exc)) from None
    with _meta(settings) as meta:
        key = meta.create_key(tenant, parsed)
    typer.echo(f"Created a key for tenant {tenant!r} with scopes {','.join(sorted(parsed))}:")
    typer.echo(key)


@keys_app.command("list")
def keys_list(data_dir: DataDir = None) -> None:
    """List keys by prefix (never the secret)."""
    with _meta(_settings(data_dir=data_dir)) as meta:
        keys = meta.list_keys()
    for k in keys:
        state = f"revoked {k.revoked_at}" if k.revoked_at else "active"
        typer.echo(f"{k.prefix}\t{k.tenant}\t{','.join(sorted(k.scopes))}\t{k.created_at}\t{state}")


@keys_app.command("revoke")
def keys_revoke(
    prefix: Annotated[str, typer.Argument(help="The key's prefix, as `keys list` shows it")],
    data_dir: DataDir = None,
) -> None:
    """Revoke a key; running servers refuse it within 5 seconds."""
    with _meta(_settings(data_dir=data_dir)) as meta:
        try:
            n = meta.revoke_key(prefix)
        except ValueError as exc:
            raise CliError(str(exc)) from None
    if not n:
        raise CliError(f"no active key with prefix {prefix!r}")
    typer.echo(f"Revoked {prefix}")


def _progress(unit: str = "bytes") -> Progress:
    """Progress in bytes read (of the file's size, when it has one: standard input has
    none), or in any other ``unit`` counted against a known total."""
    count = (
        DownloadColumn()
        if unit == "bytes"
        else TextColumn(f"{{task.completed}}/{{task.total}} {unit}")
    )
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        count,
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )


def _chunks(stream: IO[bytes]) -> Iterator[tuple[int, list[bytes], list[int]]]:
    """Chunks of the non-blank lines: bytes read, the lines, and their line numbers."""
    chunk: list[bytes] = []
    numbers: list[int] = []
    size = 0
    for number, line in enumerate(stream, start=1):
        size += len(line)
        if line.strip():
            chunk.append(line)
            numbers.append(number)
        if len(chunk) >= INGEST_CHUNK:
            yield size, chunk, numbers
            chunk, numbers, size = [], [], 0
    if chunk:
        yield size, chunk, numbers


@app.command()
def ingest(
    file: Annotated[str, typer.Argument(help="NDJSON file of events, or - for standard input")],
    tenant: Annotated[str, typer.Option(help="Tenant (local mode)")] = "default",
    url: Annotated[
        str | None, typer.Option(help="Send through a running server [env KAIE_URL]")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(help="API key for --url [env KAIE_API_KEY]")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Send an NDJSON file of events through the ingestion path.

    Without --url the events go straight into the data directory (the server
    must not be running); with --url they are POSTed to a running server.
    """
    import os

    from kaie_analytics.ingest.service import ingest_items

    url = url or os.environ.get("KAIE_URL")
    api_key = api_key or os.environ.get("KAIE_API_KEY")
    if url and not api_key:
        raise CliError("--url needs --api-key (or KAIE_API_KEY)")
    try:
        stream: IO[bytes] = sys.stdin.buffer if file == "-" else open(file, "rb")  # noqa: SIM115
    except OSError as exc:
        raise CliError(f"cannot read {file}: {exc.strerror}") from None
    total_size = None if file == "-" else os.path.getsize(file)
    totals = {"accepted": 0, "duplicates": 0, "rejected": 0}
    first_errors: list[str] = []
    settings = _settings(data_dir=data_dir)
    store = None if url else _open_store(settings)
    # Through a server: the client batches, gzips, gives events without an id one from
    # their content (so a retried batch is never stored twice) and retries.
    client = None if not url else Client(url, api_key or "")
    try:
        with _progress() as progress:
            task = progress.add_task("Ingesting", total=total_size)
            for size, lines, numbers in _chunks(stream):
                if client is not None:
                    try:
                        data = vars(client.send_events(lines))
                    except KaieError as exc:
                        raise CliError(
                            f"server answered {exc.status} {exc.code}: {exc.details}"
                        ) from None
                else:
                    assert store is not None
                    data = ingest_items(store, tenant, list(lines)).as_dict()
                for k in totals:
                    totals[k] += data[k]
                for e in data["errors"][: max(0, 5 - len(first_errors))]:
                    # The message names its field; the line is the file's (from 1).
                    first_errors.append(f"line {numbers[e['index']]}: {e['message']}")
                progress.update(task, advance=size)
    except httpx.TransportError as exc:
        raise CliError(f"cannot reach {url}: {exc}") from None
    finally:
        if store is not None:
            store.close()
        if client is not None:
            client.close()
        if stream is not sys.stdin.buffer:
            stream.close()
    if store is not None:
        _stale_caches(settings, [tenant])
    typer.echo(
        f"accepted {totals['accepted']}, duplicates {totals['duplicates']},"
        f" rejected {totals['rejected']}"
    )
    for message in first_errors:
        sys.stderr.write(message + "\n")


@app.command("copy-events")
def copy_events(
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="The engine to copy into: chdb, duckdb or clickhouse://USER:PASSWORD@HOST:8123/DB",
        ),
    ],
    to_data_dir: Annotated[
        Path | None,
        typer.Option(help="Data directory of an embedded target (default: --data-dir)"),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Copy every event (and workflow name) of this data directory's engine into another.

    The source is the engine KAIE_EVENTS_BACKEND names (default duckdb); no server
    may be running on it. Interrupted, run it again: it goes on where it stopped.
    At the end the events are counted per tenant on both sides.
    """
    from kaie_analytics.copying import CopyState
    from kaie_analytics.copying import copy_events as copy
    from kaie_analytics.engines import check_backend

    settings = _settings(data_dir=data_dir)
    target_settings = _settings(data_dir=to_data_dir or settings.data_dir, events_backend=to)
    try:
        check_backend(target_settings)
    except UnsupportedBackend as exc:
        raise CliError(str(exc)) from None
    if to == settings.events_backend and target_settings.data_dir == settings.data_dir:
        raise CliError(f"--to {to} is the source itself; give another engine or --to-data-dir")
    with _meta(settings) as meta:
        tenants = tuple(sorted({k.tenant for k in meta.list_keys()}))
    source = _open_store(settings)
    try:
        target = _open_store(target_settings)
    except BaseException:
        source.close()
        raise
    state = CopyState(settings.data_dir / "copy-events.json", f"{to} {target_settings.data_dir}")
    try:
        with _progress("events") as progress:
            task = progress.add_task("Copying", total=None)
            mismatches = copy(
                source,
                target,
                state,
                on_events=lambda n: progress.update(task, advance=n),
                on_total=lambda n: progress.update(task, total=n),
                more_tenants=tenants,
            )
        stats = source.event_stats()
    finally:
        target.close()
        source.close()
    _stale_caches(target_settings, [t.tenant for t in stats])
    for m in mismatches:
        sys.stderr.write(f"tenant {m.tenant}: {m.source} events here, {m.target} in the target\n")
    if mismatches:
        raise CliError(f"counts differ for {len(mismatches)} tenants (listed above)")
    typer.echo(
        f"copied {sum(t.events for t in stats)} events of {len(stats)} tenants;"
        " the counts match for every tenant"
    )


@app.command()
def migrate(data_dir: DataDir = None) -> None:
    """Bring the metadata database (KAIE_META_BACKEND) to this version's schema.

    ``serve`` does it too when it starts; with several processes, one of them
    applies the migrations and the others wait for it.
    """
    db = _database(_settings(data_dir=data_dir))
    try:
        done = db.applied
    finally:
        db.close()
    applied = ", ".join(str(v) for v in done) if done else "none (already up to date)"
    typer.echo(f"{db.where}: schema version {LATEST}; applied now: {applied}")


@app.command("copy-meta")
def copy_meta(
    to: Annotated[
        str, typer.Option("--to", help="The target: postgresql://USER:PASSWORD@HOST:5432/DB")
    ],
    data_dir: DataDir = None,
) -> None:
    """Copy tenants, API keys and jobs of this deployment's metadata into another database.

    For moving an embedded deployment onto PostgreSQL: rows the target already
    has are kept, so it can run again. Copy the report files (the data
    directory's ``files``) to KAIE_FILES_DIR yourself.
    """
    from kaie_analytics.store.copying import copy_metadata

    settings = _settings(data_dir=data_dir)
    source = _database(settings)
    try:
        target = _database(settings, to)
        try:
            copied = copy_metadata(source, target)
        finally:
            target.close()
    finally:
        source.close()
    typer.echo(
        ", ".join(f"{n} {table}" for table, n in copied.items()) + f" copied to {target.where}"
    )


def main() -> None:
    try:
        app()
    except CliError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
