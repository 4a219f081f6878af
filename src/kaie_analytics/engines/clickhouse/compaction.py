"""Compaction: the rows many folds tagged, added up into one per key.

Every fold tags what it writes to the tables of ``schema.FOLD_TAGGED`` with
its watermark, and an answer reads the rows tagged up to the watermark it
uses (``folds``). Rows of different folds never merge, so under a steady
stream a slot of ``message_slots`` gains a row per fold (every 2 seconds),
and the session, first-seen and execution logs keep every +1 a later fold took back
with a -1. Compaction rewrites them, one month partition at a time:

- the rows of the folds up to ``upto`` are added up per key into one row
  tagged ``upto`` (keys whose sums come to zero go), and the rows of later
  folds are kept as they are;
- the new partition takes the old one's place in one step (``REPLACE
  PARTITION`` from a staging table), so a statement reads either all the old
  rows or all the new ones;
- ``upto`` is no later than the watermark of any answer still reading
  (``Folder.reading``): every answer that can see the new rows reads with a
  watermark from ``upto`` on, for which the sums are the same.

It runs under the fold's lock (no fold writes meanwhile; views write only
when a fold inserts). Tables of sums per slot are compacted in every
partition a fold wrote to since the last compaction, since answers read the
recent slots most; the logs, where rebuilding a month costs more, once a
quarter of a partition's rows are -1 rows (half of it taken back).
"""

from __future__ import annotations

import logging
import re

from kaie_analytics.engines.clickhouse import schema, sql
from kaie_analytics.engines.clickhouse.schema import FOLD_TAGGED, Tagged
from kaie_analytics.engines.clickhouse.transport import Transport

log = logging.getLogger("kaie_analytics.store")

#: The tables that layout 11 partitioned by month (their rows are copied once).
_REPARTITIONED = ("message_slots", "session_slots", "sessions", "customer_firsts", "first_times")
#: The views that read or write them: dropped while they are copied, then made again.
_VIEWS = ("session_starts_mv", "session_slots_mv", "first_times_mv")


def compact(transport: Transport, since: int, upto: int) -> int:
    """Compact the partitions that need it, as of fold ``upto`` (``since``: the last
    compaction's); the number of partitions rewritten."""
    done = 0
    for tagged in FOLD_TAGGED:
        for partition in _due(transport, tagged, since, upto):
            _compact_partition(transport, tagged, partition, upto)
            done += 1
    return done


def _due(transport: Transport, tagged: Tagged, since: int, upto: int) -> list[str]:
    params = {"since": since, "upto": upto}
    if tagged.signed:
        statement = (
            f"SELECT _partition_id FROM {tagged.table} WHERE fold <= {{upto:Int64}}"
            " GROUP BY _partition_id"
            " HAVING countIf(sign < 0) > 0 AND countIf(sign < 0) * 4 >= count()"
        )
    else:
        statement = (
            f"SELECT DISTINCT _partition_id FROM {tagged.table}"
            " WHERE fold > {since:Int64} AND fold <= {upto:Int64}"
        )
    return [str(p) for p in transport.query(statement, params).column(0).to_pylist()]


def _compact_partition(transport: Transport, tagged: Tagged, partition: str, upto: int) -> None:
    if not re.fullmatch(r"[0-9A-Za-z_-]+", partition):  # ClickHouse's own id, never input
        raise ValueError(f"unexpected partition id {partition!r}")
    table, staging = tagged.table, f"{tagged.table}_compacting"
    keys = ", ".join(tagged.keys)
    # Other names than the columns': an alias would shadow the column inside sum().
    sums = ", ".join(f"sum({c}) AS total_{c}" for c in tagged.sums)
    nonzero = " OR ".join(f"total_{c} != 0" for c in tagged.sums)
    of_partition = f"_partition_id = '{partition}'"
    params = {"upto": upto}
    transport.command(f"DROP TABLE IF EXISTS {staging}")
    transport.command(f"CREATE TABLE {staging} AS {table}")
    try:
        transport.command(
            f"INSERT INTO {staging} ({keys}, fold, {', '.join(tagged.sums)})"
            f" SELECT {keys}, {{upto:Int64}}, {sums} FROM {table}"
            f" WHERE {of_partition} AND fold <= {{upto:Int64}} GROUP BY {keys} HAVING {nonzero}",
            params,
        )
        transport.command(
            f"INSERT INTO {staging} SELECT * FROM {table}"
            f" WHERE {of_partition} AND fold > {{upto:Int64}}",
            params,
        )
        if transport.query(f"SELECT count() FROM {staging}").column(0)[0].as_py():
            transport.command(
                f"ALTER TABLE {table} REPLACE PARTITION ID '{partition}' FROM {staging}"
            )
        else:  # every row added up to nothing (ClickHouse refuses to replace with none)
            transport.command(f"ALTER TABLE {table} DROP PARTITION ID '{partition}'")
    finally:
        transport.command(f"DROP TABLE IF EXISTS {staging}")


def repartition(transport: Transport, cluster: str | None) -> None:
    """Give the tables of a store older than layout 11 their month partitions (needed to
    replace one at a time), copying their rows; safe to run again if cut off."""
    on = f" ON CLUSTER {schema.identifier(cluster)}" if cluster else ""
    local = "_local" if cluster else ""
    statements = {_created(s): s for s in schema.ddl(cluster)}
    for view in _VIEWS:
        transport.command(f"DROP VIEW IF EXISTS {view}{on}")
    for name in _REPARTITIONED:
        table, old = f"{name}{local}", f"{name}{local}_layout10"
        if _partition_key(transport, old) is None:  # not cut off half way
            if _partition_key(transport, table):
                continue
            if cluster:  # only the embedded fold writes these: empty on a cluster
                transport.command(f"DROP TABLE IF EXISTS {table}{on} SYNC")
                transport.command(statements[table])
                continue
            transport.command(f"RENAME TABLE {table} TO {old}")
        transport.command(f"DROP TABLE IF EXISTS {table}")
        transport.command(statements[table])
        transport.command(f"INSERT INTO {table} SELECT * FROM {old}")
        transport.command(f"DROP TABLE {old}")
        log.info("%s: partitioned by month", table)
    for statement in schema.ddl(cluster):  # the views again
        transport.command(statement)


def _created(statement: str) -> str:
    """The table a ``CREATE TABLE IF NOT EXISTS`` statement makes ('' for others)."""
    found = re.match(r"CREATE TABLE IF NOT EXISTS (\w+)", statement)
    return found.group(1) if found else ""


def _partition_key(transport: Transport, table: str) -> str | None:
    """The table's partition key ('' for none; None when there is no such table)."""
    found = sql.rows(
        transport.query(
            "SELECT partition_key FROM system.tables"
            " WHERE database = currentDatabase() AND name = {table:String}",
            {"table": table},
        )
    )
    return str(found[0][0]) if found else None
