"""Reading one workflow's numbers per 15-minute slot: rollups where right, rows elsewhere.

A *slot plan* splits the slots of a period (or of the previous and current
periods together) in two: the slots the rollups have exactly right, added up
in memory (``store.rollup_cache``), and the *raw* slots, read from the
executions and events themselves. Raw are the slots cut by a period edge (an
edge not on a quarter hour), and the slots of the executions that events not
yet folded touch (both where such an execution was and where it is now).
Messages not yet folded are added on top: they only add.

The SQL here reads raw slots only: executions as rows (``RawExecutions``,
added up with NumPy, the plan's merged pending ones included), messages
counted per slot and type; ``Owners`` puts slots in buckets. A caller reads
both through ``read_with_rollups``, so the rollups and its statements are of
one fold: every slot is counted from exactly one source.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from kaie_analytics.engines.duckdb import executions_sql as xsql
from kaie_analytics.engines.duckdb import rollups
from kaie_analytics.engines.duckdb.activity import SLOT_US, epoch_us
from kaie_analytics.engines.duckdb.rollup_cache import runs
from kaie_analytics.engines.duckdb.store import Columns, DuckDBEventStore

#: More raw ranges than this are read with one range and a slot filter.
MAX_RANGES = 8
_SLOT = rollups.slot_of


@dataclass(frozen=True, slots=True)
class SlotPlan:
    first: int
    last: int
    raw: tuple[int, ...]
    params: dict[str, Any]
    #: Executions touched by events not yet folded: the ids of their folded rows
    #: in the period (read raw, those rows are left out), and their merged rows
    #: (columns as ``exec_rows``), up to one committed seq (later events are left
    #: out of this answer).
    touched: frozenset[str] = frozenset()
    pending: Columns | None = None

    def ranges(self, column: str) -> str:
        """A predicate on ``column`` for the raw slots (ranges zone maps can use)."""
        if not self.raw:
            return "false"
        raw_runs = runs(self.raw)
        if len(raw_runs) > MAX_RANGES:
            raw_runs = [(self.raw[0], self.raw[-1])]
            extra = f" AND {_SLOT(column)} IN {_ints(self.raw)}"
        else:
            extra = ""
        parts = [
            f"({column} >= {_ts(a * SLOT_US)} AND {column} < {_ts((b + 1) * SLOT_US)})"
            for a, b in raw_runs
        ]
        return "((" + " OR ".join(parts) + ")" + extra + ")"

    def per_range(self, column: str, sql: str) -> str:
        """``sql`` once per run of raw slots, its ``{RANGE}`` a predicate on ``column``.

        One range per branch of a ``UNION ALL``, because zone maps skip row
        groups for a plain range but not for ranges joined by ``OR`` (worth it
        for the executions, whose row groups each span weeks of a workflow).
        """
        raw_runs = runs(self.raw)
        if len(raw_runs) > MAX_RANGES:
            return sql.replace("{RANGE}", self.ranges(column))
        return " UNION ALL ".join(
            sql.replace(
                "{RANGE}",
                f"{column} >= {_ts(a * SLOT_US)} AND {column} < {_ts((b + 1) * SLOT_US)}",
            )
            for a, b in raw_runs
        )


def _ts(us: int) -> str:
    # An integer we computed, never user input.
    return f"make_timestamp({int(us)}::BIGINT)"


def _ints(values: tuple[int, ...]) -> str:
    """A literal list of integers we computed (a plain filter, where a list
    parameter would cost a join)."""
    return "(" + ", ".join(str(int(v)) for v in values) + ")"


def span(lo: datetime, hi: datetime) -> tuple[int, int]:
    """The first and last slot of [lo, hi] (naive UTC)."""
    return epoch_us(lo) // SLOT_US, epoch_us(hi) // SLOT_US


def plan(
    store: DuckDBEventStore,
    tenant: str,
    workflow_id: str,
    lo: datetime,
    hi: datetime,
    edges: tuple[datetime, ...] = (),
) -> SlotPlan:
    """The slot plan of [lo, hi] (naive UTC, inclusive), cut also at ``edges``.

    Call it inside ``read_with_rollups``: which events are folded depends on the fold.
    """
    # Before the pending events are read: all of them up to here are committed.
    upto = store.committed_seq
    first, last = span(lo, hi)
    raw: set[int] = set()
    for t in (lo, *edges):
        if epoch_us(t) % SLOT_US:
            raw.add(epoch_us(t) // SLOT_US)
    if (epoch_us(hi) + 1) % SLOT_US:
        raw.add(last)
    params: dict[str, Any] = {
        "tenant": tenant,
        "workflow": workflow_id,
        "lo": lo,
        "hi": hi,
        # Rows at or after the first edge are the current period's (``cur``).
        "cur_lo": edges[0] if edges else lo,
    }
    touched: frozenset[str] = frozenset()
    pending = None
    store.fold_if_behind(tenant)
    if store.has_pending(tenant):
        since = store.watermark("executions")
        found = store.query_columns(xsql.workflow_pending(since, upto), params)
        raw.update(np.unique(found["slot"]).tolist())
        new = np.asarray(found.pop("new"), bool)
        touched = frozenset(found["execution_id"][~new].tolist())
        pending = {name: column[new] for name, column in found.items()}
    return SlotPlan(first, last, tuple(sorted(raw)), params, touched, pending)


def exec_rows(store: DuckDBEventStore, p: SlotPlan, *, nodes: bool = False) -> str | None:
    """The folded executions of the raw slots: rows (execution_id, slot, cur, channel,
    error_type, status, duration_ms, num, customer_id, nodes).

    None when the plan has no raw slot. ``num`` is the customer's number;
    ``nodes`` NULL unless asked for. Rows, not sums: the few executions of a few
    slots add up faster in NumPy (``RawExecutions``) than an aggregate is
    planned. ``raw_executions`` completes them with the plan's pending ones.
    """
    if not p.raw:
        return None
    return p.per_range(
        "started_at",
        f"""SELECT execution_id, {_SLOT("started_at")} AS slot, started_at >= $cur_lo AS cur,
            channel, error_type, status, duration_ms, customer_num AS num, customer_id,
            {"nodes" if nodes else "NULL"} AS nodes
        FROM executions
        WHERE tenant = $tenant AND workflow_id = $workflow AND started_at BETWEEN $lo AND $hi
          AND {{RANGE}}""",
    )


@dataclass(frozen=True)
class RawExecutions:
    """The executions of the raw slots, as columns."""

    slot: np.ndarray
    cur: np.ndarray
    channel: np.ndarray
    error_type: np.ndarray
    status: np.ndarray
    #: Whether an execution has a duration that counts (finished, known).
    timed: np.ndarray
    duration_ms: np.ndarray
    #: The customer's number, -1 for none yet (a customer new since the last fold).
    num: np.ndarray
    customer_id: np.ndarray
    #: Per execution, its node events (or None when not asked for).
    nodes: list[Any]

    def sums(self) -> np.ndarray:
        """Per execution, what it adds to (total, ok, failed, dur_sum, dur_n)."""
        return np.column_stack(
            [
                np.ones(len(self.slot), np.int64),
                self.status == 1,
                self.status == 2,
                np.where(self.timed, self.duration_ms, 0),
                self.timed,
            ]
        ).astype(np.int64)


def raw_executions(p: SlotPlan, folded: Columns | None) -> RawExecutions:
    """The executions of the raw slots: the folded rows of ``exec_rows`` that no
    pending event touches, and the plan's pending executions, merged."""
    parts = []
    if folded is not None:
        keep = np.array([i not in p.touched for i in folded["execution_id"].tolist()], bool)
        parts.append({name: column[keep] for name, column in folded.items()})
    if p.pending is not None:
        parts.append(p.pending)

    def column(name: str) -> list[Any]:
        return [v for part in parts for v in part[name].tolist()]  # None where NULL

    status = np.array(column("status"), np.int64)
    duration = np.array([d if d is not None else -1 for d in column("duration_ms")], np.int64)
    return RawExecutions(
        np.array(column("slot"), np.int64),
        np.array(column("cur"), bool),
        np.array(column("channel"), object),
        np.array(column("error_type"), object),
        status,
        (status > 0) & (duration >= 0),
        duration,
        np.array([n if n is not None else -1 for n in column("num")], np.int64),
        np.array(column("customer_id"), object),
        column("nodes"),
    )


def factorize(values: np.ndarray) -> tuple[list[Any], np.ndarray]:
    """Distinct values (None included) and each value's index among them."""
    index: dict[Any, int] = {}
    codes = np.fromiter((index.setdefault(v, len(index)) for v in values.tolist()), np.int64)
    return list(index), codes


def message_rows(store: DuckDBEventStore, p: SlotPlan) -> str | None:
    """Messages and feedback the rollups lack, counted per (slot, cur, channel, type):
    rows (slot, cur, channel, type, n, csat_sum, csat_n).

    Those of the raw slots and those not yet folded; None if neither. Call it
    inside ``read_with_rollups`` (the watermark is the fold's).
    """
    events = """
        SELECT e.ts, e.type, e.channel, e.csat FROM events e
        WHERE e.tenant = $tenant AND e.workflow_id = $workflow
          AND e.type IN ('feedback.submitted', 'message.received', 'message.sent')
          AND e.ts BETWEEN $lo AND $hi"""
    parts = []
    if p.raw:
        # Ranges joined by OR here: one scan of the events planned once costs less
        # than one branch per range (measured), unlike for the executions.
        parts.append(f"{events} AND {p.ranges('e.ts')}")
    if store.has_pending(p.params["tenant"], "message_slots"):
        parts.append(
            f"""{events}
            AND e.seq > {int(store.watermark("message_slots"))} AND NOT {p.ranges("e.ts")}"""
        )
    if not parts:
        return None
    return f"""
        SELECT {_SLOT("e.ts")} AS slot, e.ts >= $cur_lo AS cur, e.channel, e.type, count(*),
            sum(e.csat), count(e.csat)
        FROM ({" UNION ALL ".join(parts)}) e GROUP BY ALL"""


# The raw rows add up as the rollups do (``rollups.EXEC_SUMS``, ``MESSAGE_SUMS``,
# ``NODE_SUMS``); sums are in the order of the rollup columns.


def add_messages(acc: list[int], type_: str, n: int, csat_sum: int | None, csat_n: int) -> None:
    """Add ``n`` messages or feedback of one type to (sent, received, csat_sum, csat_n)."""
    if type_ == "message.sent":
        acc[0] += n
    elif type_ == "message.received":
        acc[1] += n
    elif csat_n:
        acc[2] += csat_sum or 0
        acc[3] += csat_n


def add_node(acc: list[int], ok: bool | None, duration_ms: int | None) -> None:
    """Add one node event to (n, ok, dur_sum, dur_n, errors)."""
    acc[0] += 1
    if ok is True:
        acc[1] += 1
    elif ok is False:
        acc[4] += 1
    if duration_ms is not None:
        acc[2] += duration_ms
        acc[3] += 1


# ------------------------------------------------------------------ buckets


@dataclass(frozen=True, slots=True)
class Owners:
    """Which bucket each 15-minute slot of a series is in (every bucket edge, in every
    zone, is a slot edge): slot ``base + i`` is in bucket ``index[i]``."""

    base: int
    index: np.ndarray
    #: The first slot of each bucket, and one past the last bucket's last.
    edges: tuple[int, ...]

    @classmethod
    def of(cls, starts: list[datetime], end: datetime) -> Owners:
        """The slots from the first bucket start (naive UTC) to ``end``, by bucket."""
        edges = [epoch_us(s) // SLOT_US for s in starts] + [epoch_us(end) // SLOT_US + 1]
        widths: np.ndarray = np.diff(np.array(edges, np.int64))
        index = np.repeat(np.arange(len(starts), dtype=np.int64), widths)
        return cls(edges[0], index, tuple(edges))

    def bounds(self) -> list[tuple[int, int]]:
        """The first and last slot of each bucket."""
        return [(a, b - 1) for a, b in zip(self.edges, self.edges[1:], strict=False)]

    def bucket(self, slot: int) -> int:
        return int(self.index[slot - self.base])

    def buckets(self, slots: np.ndarray) -> np.ndarray:
        """The bucket of each slot (all in the series)."""
        return self.index[slots - self.base]
