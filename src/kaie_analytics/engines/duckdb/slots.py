"""Reading one workflow's numbers per 15-minute slot: rollups where right, rows elsewhere.

A *slot plan* splits the slots (15-minute stretches of UTC time, ``times``)
of a query's windows in two: the slots the rollups have exactly right, added
up in memory (``rollup_cache``), and the slots *read raw*, from the
executions and events themselves. Read raw are the slots a window edge cuts
(an edge not on a quarter hour), and the slots where the executions that
pending events (not yet folded) change are counted now. The pending
executions, merged with their events, and pending messages are added on
top wherever they fall.

The SQL here reads raw slots only: executions as rows (``RawExecutions``,
added up with NumPy, the plan's merged pending ones included), messages
counted per slot and type; ``Intervals`` puts slots and times in the pieces
the windows of a query cut time into. A caller reads both through
``read_with_rollups``, so the rollups and its statements are of one fold:
every slot is counted from exactly one source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from kaie_analytics.engines.duckdb import rollups
from kaie_analytics.engines.duckdb.rollup_cache import Rollups
from kaie_analytics.engines.duckdb.store import Columns, DuckDBEventStore
from kaie_analytics.engines.duckdb.times import SLOT_US, epoch_us, from_epoch_us
from kaie_analytics.engines.sums import runs

#: More raw ranges than this are read with one range and a slot filter.
MAX_RANGES = 8
_SLOT = rollups.slot_of


@dataclass(frozen=True, slots=True)
class SlotPlan:
    """The slots ``first``..``last``, those of them read raw, and the query parameters."""

    first: int
    last: int
    raw: tuple[int, ...]
    params: dict[str, Any]
    #: Executions that pending events change (*touched*): the ids of their folded
    #: rows (read raw, those rows are left out), and their merged rows (columns as
    #: ``exec_rows``), up to one committed seq (later events are left out of this
    #: answer).
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


def _after(cuts: Sequence[int], column: str) -> str:
    """SQL: how many of ``cuts`` (µs we computed) are at or before ``column``."""
    if not cuts:
        return "0"
    return " + ".join(f"(epoch_us({column}) >= {int(c)})::INT" for c in cuts)


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
    edges: Sequence[int],
    rolled: Rollups,
) -> SlotPlan:
    """The slot plan from the first to the last of ``edges`` (sorted µs since the epoch;
    the last is one past the end): a slot an edge cuts is read raw, unless all its
    folded rows come before the edge (as in the slot of "now" at a period's end).

    Call it inside ``read_with_rollups``, with its rollups: which events are
    folded depends on the fold.
    """
    # Before the pending events are read: all of them up to here are committed.
    upto = store.committed_seq
    lo, hi = from_epoch_us(edges[0]), from_epoch_us(edges[-1] - 1)
    first, last = span(lo, hi)
    raw: set[int] = set()
    for e in edges:
        if e % SLOT_US and rolled.latest_us(e // SLOT_US) >= e:
            raw.add(e // SLOT_US)
    if edges[0] % SLOT_US and first not in raw:
        first += 1  # all of the first slot comes before the first window
    params: dict[str, Any] = {"tenant": tenant, "workflow": workflow_id, "lo": lo, "hi": hi}
    touched: frozenset[str] = frozenset()
    pending = None
    store.fold_if_behind(tenant)
    if store.has_pending(tenant):
        merged = store.pending.merged(tenant, store.watermark("executions"), upto)
        found = merged.rows(workflow_id, lo, hi)
        new = np.asarray(found.pop("new"), bool)
        # Where a touched execution is counted now is read raw, without it; its
        # merged row is added on top wherever it falls (as new executions are).
        raw.update(np.unique(found["slot"][~new]).tolist())
        touched = frozenset(found["execution_id"][~new].tolist())
        pending = {name: column[new] for name, column in found.items()}
    return SlotPlan(first, last, tuple(sorted(raw)), params, touched, pending)


def exec_rows(store: DuckDBEventStore, p: SlotPlan, *, nodes: bool = False) -> str | None:
    """The folded executions of the raw slots: rows (execution_id, slot, t, channel,
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
        f"""SELECT execution_id, {_SLOT("started_at")} AS slot, epoch_us(started_at) AS t,
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
    #: The start, µs since the epoch.
    t: np.ndarray
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
    nodes: np.ndarray

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


def _numbers(values: np.ndarray, missing: int) -> np.ndarray:
    """Integers, ``missing`` where NULL."""
    if isinstance(values, np.ma.MaskedArray):
        return np.asarray(np.ma.filled(values.astype(np.int64), missing), np.int64)
    if values.dtype == object:
        return np.array([missing if v is None else v for v in values.tolist()], np.int64)
    return np.asarray(values, np.int64)


def _objects(values: np.ndarray) -> np.ndarray:
    """Python objects, None where NULL."""
    out = np.asarray(values, dtype=object).copy()
    if isinstance(values, np.ma.MaskedArray):
        out[np.ma.getmaskarray(values)] = None
    return out


def raw_executions(p: SlotPlan, folded: Columns | None) -> RawExecutions:
    """The executions of the raw slots: the folded rows of ``exec_rows`` that no
    pending event touches, and the plan's pending executions, merged."""
    parts = []
    if folded is not None:
        keep = ~np.isin(_objects(folded["execution_id"]), list(p.touched)) if p.touched else None
        parts.append(
            {
                name: (column[keep] if keep is not None else column)
                for name, column in folded.items()
            }
        )
    if p.pending is not None:
        parts.append(p.pending)

    def numbers(name: str, missing: int = -1) -> np.ndarray:
        chunks = [_numbers(part[name], missing) for part in parts]
        return np.concatenate(chunks) if chunks else np.empty(0, np.int64)

    def objects(name: str) -> np.ndarray:
        chunks = [_objects(part[name]) for part in parts]
        return np.concatenate(chunks) if chunks else np.empty(0, object)

    status, duration = numbers("status"), numbers("duration_ms")
    return RawExecutions(
        numbers("slot"),
        numbers("t"),
        objects("channel"),
        objects("error_type"),
        status,
        (status > 0) & (duration >= 0),
        duration,
        numbers("num"),
        objects("customer_id"),
        objects("nodes"),
    )


def factorize(values: np.ndarray) -> tuple[list[Any], np.ndarray]:
    """Distinct values (None included) and each value's index among them."""
    index: dict[Any, int] = {}
    codes = np.fromiter((index.setdefault(v, len(index)) for v in values.tolist()), np.int64)
    return list(index), codes


def message_rows(store: DuckDBEventStore, p: SlotPlan, cuts: Sequence[int]) -> str | None:
    """Messages and feedback the rollups lack, counted per (slot, after, channel, type):
    rows (slot, after, channel, type, n, csat_sum, csat_n), ``after`` the number of
    ``cuts`` (µs, off the slot grid) at or before the message.

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
        SELECT {_SLOT("e.ts")} AS slot, {_after(cuts, "e.ts")} AS after, e.channel, e.type,
            count(*),
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


# ---------------------------------------------------------------- intervals


@dataclass(frozen=True)
class Intervals:
    """The pieces the edges of a query's windows cut time into: piece ``k`` is
    [edges[k], edges[k + 1]) (µs since the epoch).

    A window is a run of pieces. A slot no edge cuts lies in one piece; the
    slots edges cut are read raw, their rows put in pieces by their own times.
    """

    edges: np.ndarray
    #: Edges on the slot grid, and those off it (which cut a slot).
    aligned: np.ndarray
    cuts: tuple[int, ...]
    #: The first slot each piece holds whole.
    first_slots: np.ndarray

    @classmethod
    def of(cls, edges: Sequence[int]) -> Intervals:
        e = np.array(sorted(set(edges)), np.int64)
        return cls(
            e,
            e[e % SLOT_US == 0],
            tuple(int(x) for x in e[e % SLOT_US != 0]),
            -(-e // SLOT_US),
        )

    def of_times(self, us: np.ndarray) -> np.ndarray:
        """The piece of each time (-1 before the first edge; len-1 past the last)."""
        return np.searchsorted(self.edges, us, side="right") - 1

    def of_slots(self, slots: np.ndarray) -> np.ndarray:
        """The piece of each slot no edge cuts."""
        return np.searchsorted(self.first_slots, slots, side="right") - 1

    def of_slot_after(self, slot: int, after: int) -> int:
        """The piece of a time in ``slot`` that ``after`` cuts are at or before."""
        return int(np.searchsorted(self.aligned, slot * SLOT_US, side="right")) + after - 1

    def slot_range(self, first: int, end: int) -> tuple[int, int]:
        """The first and last slot of pieces ``first``..``end - 1`` (cut slots included)."""
        return int(self.first_slots[first]), int(self.first_slots[end]) - 1
