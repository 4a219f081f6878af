"""Exact counts of active customers from bitmaps of customer numbers.

A customer is active in a period when it sent us (``message.received``) a
message in it. Counting that exactly is a distinct count over millions of
messages; here it is a union of bitmaps instead:

- every customer that ever sent a message gets a dense number per tenant
  (``customer_numbers``, assigned once, in order of first fold);
- ``activity`` keeps, per tenant, channel and time bucket, a Roaring bitmap of
  the numbers of the customers active in it, for two bucket spans: 15 minutes
  and one (UTC) day. A bucket only ever gains customers, so folding new events
  is a union, whatever order they arrive in;
- a period is covered by whole days, then whole 15-minute slots at its ends
  (every time zone's midnight falls on one), and the few minutes left at the
  edges, plus any events not folded yet, are read from the events themselves.

The union of those sets, counted, is exactly the distinct count.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
from pyroaring import BitMap

from kaie_analytics.engines.duckdb.times import DAY_US, SLOT_US, epoch_us, from_epoch_us

if TYPE_CHECKING:
    from kaie_analytics.engines.duckdb.store import DuckDBEventStore

SPANS = (SLOT_US, DAY_US)
FEED = "type = 'message.received'"
FEED_TYPES = frozenset(("message.received",))
WATERMARK = "activity_seq"
DDL = [
    "CREATE TABLE IF NOT EXISTS customer_numbers (tenant VARCHAR NOT NULL,"
    " customer_id VARCHAR NOT NULL, num UINTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS activity (tenant VARCHAR NOT NULL, channel VARCHAR NOT NULL,"
    " span BIGINT NOT NULL, bucket BIGINT NOT NULL, customers BLOB NOT NULL)",
]


# ------------------------------------------------------------------ folding


def number_customers(con: duckdb.DuckDBPyConnection, source: str) -> None:
    """Give the customers of table ``source`` (tenant, customer_id) that have none a number."""
    con.execute(
        f"""INSERT INTO customer_numbers
        SELECT n.tenant, n.customer_id,
            (coalesce(m.top, 0)
             + row_number() OVER (PARTITION BY n.tenant ORDER BY n.customer_id))::UINTEGER
        FROM (SELECT DISTINCT tenant, customer_id FROM {source}
              WHERE customer_id IS NOT NULL) n
        LEFT JOIN (SELECT tenant, max(num) AS top FROM customer_numbers
                   WHERE tenant IN (SELECT tenant FROM {source}) GROUP BY tenant) m
          USING (tenant)
        WHERE NOT EXISTS (SELECT 1 FROM customer_numbers c
                          WHERE c.tenant = n.tenant AND c.customer_id = n.customer_id)
        ORDER BY n.tenant, n.customer_id"""
    )


def put_bitmaps(
    con: duckdb.DuckDBPyConnection,
    table: str,
    keys: tuple[str, ...],
    source: str,
    *,
    replace: str,
    merge: bool,
) -> None:
    """Write rows ``(*keys, customers)`` of ``table`` from rows ``(*keys, nums)`` of ``source``.

    Rows of ``table`` whose keys are in table ``replace`` go first; with
    ``merge``, their customers are kept in the new rows (a union).
    """
    cols = ", ".join(keys)
    on = " AND ".join(f"t.{k} = a.{k}" for k in keys)
    stale = f"EXISTS (SELECT 1 FROM {replace} t WHERE {on})"
    old: dict[tuple[Any, ...], bytes] = {}
    if merge:
        for row in con.execute(f"SELECT {cols}, customers FROM {table} a WHERE {stale}").fetchall():
            old[tuple(row[:-1])] = row[-1]
    con.execute(f"DELETE FROM {table} a WHERE {stale}")
    rows = con.sql(f"SELECT {cols}, nums FROM {source}").to_arrow_table()
    for batch in rows.to_batches(max_chunksize=65_536):
        columns = batch.to_pydict()
        blobs = []
        key_rows = zip(*(columns[k] for k in keys), strict=True)
        for key, nums in zip(key_rows, columns["nums"], strict=True):
            bits = BitMap(nums)
            if (blob := old.get(key)) is not None:
                bits |= BitMap.deserialize(blob)
            blobs.append(bits.serialize())
        fresh = pa.table(
            {**{k: batch.column(k) for k in keys}, "customers": pa.array(blobs, pa.binary())}
        )
        con.register("fresh_bitmaps", fresh)
        try:
            con.execute(f"INSERT INTO {table} SELECT * FROM fresh_bitmaps")
        finally:
            con.unregister("fresh_bitmaps")


def fold(con: duckdb.DuckDBPyConnection, lo_seq: int, hi_seq: int) -> None:
    """Number new customers and add the messages in (lo_seq, hi_seq] to their buckets.

    Runs in the writer's transaction.
    """
    con.execute(
        "CREATE TEMP TABLE adelta AS SELECT tenant, customer_id, channel, epoch_us(ts) AS t"
        f" FROM events WHERE seq > {int(lo_seq)} AND seq <= {int(hi_seq)} AND {FEED}"
    )
    try:
        number_customers(con, "adelta")
        spans = ", ".join(f"({s})" for s in SPANS)
        con.execute(
            f"""CREATE TEMP TABLE touched AS
            SELECT d.tenant, d.channel, s.span, d.t // s.span AS bucket,
                list(DISTINCT c.num ORDER BY c.num) AS nums
            FROM adelta d
            JOIN (SELECT * FROM customer_numbers WHERE tenant IN (SELECT tenant FROM adelta)) c
              USING (tenant, customer_id)
            CROSS JOIN (VALUES {spans}) s(span)
            GROUP BY ALL"""
        )
        put_bitmaps(con, "activity", ("tenant", "channel", "span", "bucket"), "touched",
                    replace="touched", merge=True)  # fmt: skip
    finally:
        con.execute("DROP TABLE IF EXISTS touched")
        con.execute("DROP TABLE adelta")


# ------------------------------------------------------------------ reading


@dataclass(frozen=True, slots=True)
class Cover:
    """Whole buckets ``(span, first, end)`` and leftover raw ranges ``[a, b)`` (µs)."""

    buckets: list[tuple[int, int, int]]
    raw: list[tuple[int, int]]


def cover(lo_us: int, end_us: int) -> Cover:
    """Cover ``[lo_us, end_us)`` with whole days, whole slots, and raw edges."""
    s0, s1 = -(-lo_us // SLOT_US), end_us // SLOT_US
    if s0 >= s1:
        return Cover([], [(lo_us, end_us)] if lo_us < end_us else [])
    per_day = DAY_US // SLOT_US
    d0, d1 = -(-s0 // per_day), s1 // per_day
    if d0 < d1:
        buckets = [(DAY_US, d0, d1)]
        buckets += [(SLOT_US, a, b) for a, b in ((s0, d0 * per_day), (d1 * per_day, s1)) if a < b]
    else:
        buckets = [(SLOT_US, s0, s1)]
    raw = [(a, b) for a, b in ((lo_us, s0 * SLOT_US), (s1 * SLOT_US, end_us)) if a < b]
    return Cover(buckets, raw)


@dataclass(frozen=True, slots=True)
class ActiveCounts:
    total: int
    by_channel: dict[str, int]


def active_customers(
    store: DuckDBEventStore,
    tenant: str,
    lo: datetime,
    hi: datetime,
    *,
    channel: str | None = None,
    members: str | None = None,
    params: dict[str, Any] | None = None,
) -> ActiveCounts:
    """Distinct customers with a ``message.received`` in ``[lo, hi]`` (naive UTC, inclusive).

    ``channel`` keeps one channel; ``members`` is SQL for the ``customer_id`` of
    the customers to count (a segment), run with ``params``.
    """
    c = cover(epoch_us(lo), epoch_us(hi) + 1)
    p: dict[str, Any] = {**(params or {}), "tenant": tenant, "channel": channel}
    in_bucket = []
    for i, (span, first, end) in enumerate(c.buckets):
        in_bucket.append(f"(span = {span} AND bucket >= $b{i} AND bucket < $e{i})")
        p[f"b{i}"], p[f"e{i}"] = first, end
    only_channel = " AND channel = $channel" if channel is not None else ""
    only_members = f" AND customer_id IN ({members})" if members is not None else ""
    ranges = []
    for i, (a, b) in enumerate(c.raw):
        ranges.append(f"(ts >= $ra{i} AND ts < $rb{i})")
        p[f"ra{i}"], p[f"rb{i}"] = from_epoch_us(a), from_epoch_us(b)
    raw_parts = [" OR ".join(ranges)] if ranges else []
    if store.has_pending(tenant, "activity"):
        p["lo"], p["hi"] = lo, hi
        raw_parts.append(
            "ts BETWEEN $lo AND $hi"
            f" AND seq > (SELECT value FROM store_state WHERE key = '{WATERMARK}')"
        )
    unions: dict[str, list[BitMap]] = defaultdict(list)
    unnumbered: dict[str, set[str]] = defaultdict(set)
    with store.snapshot():
        if in_bucket:
            for ch, blob in store.query(
                f"SELECT channel, customers FROM activity WHERE tenant = $tenant"
                f" AND ({' OR '.join(in_bucket)}){only_channel}",
                p,
            ):
                unions[ch].append(BitMap.deserialize(blob))
        if raw_parts:
            raw = " UNION ALL ".join(
                f"SELECT channel, customer_id FROM events WHERE tenant = $tenant AND {FEED}"
                f" AND ({part}){only_channel}{only_members}"
                for part in raw_parts
            )
            extra: dict[str, list[int]] = defaultdict(list)
            for ch, num, customer in store.query(
                # Look the few raw customers up (a semi-join), rather than joining
                # the tenant's whole numbering to them.
                f"""WITH raw AS (SELECT DISTINCT channel, customer_id FROM ({raw})),
                known AS (
                    SELECT customer_id, num FROM customer_numbers
                    WHERE tenant = $tenant AND customer_id IN (SELECT customer_id FROM raw)
                )
                SELECT r.channel, k.num, r.customer_id FROM raw r LEFT JOIN known k
                  USING (customer_id)""",
                p,
            ):
                if num is None:
                    unnumbered[ch].add(customer)
                else:
                    extra[ch].append(num)
            for ch, nums in extra.items():
                unions[ch].append(BitMap(nums))
        segment = (
            BitMap(
                r[0]
                for r in store.query(
                    "SELECT num FROM customer_numbers WHERE tenant = $tenant"
                    f" AND customer_id IN ({members})",
                    p,
                )
            )
            if members is not None and unions
            else None
        )
    per_channel = {ch: BitMap.union(*bitmaps) for ch, bitmaps in unions.items()}
    if segment is not None:
        per_channel = {ch: bits & segment for ch, bits in per_channel.items()}
    counts = {
        ch: n
        for ch in set(per_channel) | set(unnumbered)
        if (n := len(per_channel.get(ch, ())) + len(unnumbered.get(ch, ())))
    }
    everyone = BitMap.union(*per_channel.values()) if per_channel else BitMap()
    strangers: set[str] = set().union(*unnumbered.values())
    return ActiveCounts(len(everyone) + len(strangers), counts)
