"""Facts of one workflow from its 15-minute rollups, with raw rows where they fall short.

The fast path of ``ActivityQuery``: for one workflow without a channel filter,
sums by channel and error type, distinct customers, exact duration
percentiles, executions per local clock hour and node sums all come from the
rollups held in memory (``rollup_cache``) for the slots they have right, and
from the executions and events themselves for the rest (``slots``). Asks it
cannot serve go to ``sql_reads``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
from pyroaring import AbstractBitMap, BitMap

from kaie_analytics.analytics.facts import ActivityQuery, Ask, Cells, Sums
from kaie_analytics.engines.duckdb import rollup_cache, slots
from kaie_analytics.engines.duckdb.rollup_cache import EXEC, MESSAGES, NODES, Rollups
from kaie_analytics.engines.duckdb.slots import Intervals, RawExecutions, SlotPlan
from kaie_analytics.engines.duckdb.store import Columns, DuckDBEventStore
from kaie_analytics.engines.duckdb.times import SLOT_US, epoch_us
from kaie_analytics.engines.sums import group, utc_offsets_us

#: Where each dimension is among the keys of the execution rollups.
_KEYS = {"channel": 0, "error_type": 1}
#: More window edges off the 15-minute grid than this (zones with odd historical
#: offsets) are read by ``sql_reads``.
MAX_CUTS = 8
_EXEC_FIELDS = ("executions", "successful", "failed", "duration_sum", "durations")
_MESSAGE_FIELDS = ("sent", "received", "csat_sum", "csat_count")
_MESSAGES_AT = len(_EXEC_FIELDS)
#: The additive fields, in the order ``Sums`` declares them (it is built from them).
_WIDTH = len(_EXEC_FIELDS) + len(_MESSAGE_FIELDS)
_NODE_FIELDS = ("node_events", "node_ok", "node_duration_sum", "node_durations", "node_errors")
_EMPTY = np.empty(0, np.int64)
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)


def _sums_of(fields: Sequence[str], vector: Sequence[int], node_type: Any = None) -> Sums:
    sums = Sums(node_type=node_type)
    for name, value in zip(fields, vector, strict=True):
        setattr(sums, name, value)
    return sums


def serves(q: ActivityQuery, ask: Ask) -> bool:
    """Whether the rollups answer ``ask`` exactly."""
    if len(q.workflow_ids) != 1 or q.channels:
        return False
    m, by = ask.measures, set(ask.by)
    return (
        (m <= {"executions", "messages"} and by <= {"channel", "error_type"})
        or (m == {"executions"} and ask.by == ("hour",))
        or (not by and m in ({"customers"}, {"durations"}))
        or (m == {"nodes"} and ask.by == ("node_id",))
    )


def _window_bounds(q: ActivityQuery) -> tuple[np.ndarray, np.ndarray]:
    """Each window's start and end + 1 µs, as µs since the epoch."""
    starts = np.fromiter((epoch_us(w.start) for w in q.windows), np.int64, len(q.windows))
    ends = np.fromiter((epoch_us(w.end) for w in q.windows), np.int64, len(q.windows))
    return starts, ends + 1


def _edges(bounds: tuple[np.ndarray, np.ndarray], asks: Sequence[Ask]) -> list[int]:
    """The edges of the windows ``asks`` use, sorted."""
    used = np.array(sorted({w for ask in asks for w in ask.windows}), np.int64)
    return np.unique(np.concatenate([bounds[0][used], bounds[1][used]])).tolist()


def _query_some(
    store: DuckDBEventStore, statements: list[tuple[str, dict[str, Any]] | None]
) -> list[Columns | None]:
    """The columns of each statement, side by side; None for a None statement."""
    ran = iter(store.query_all([s for s in statements if s is not None], columns=True))
    return [next(ran) if s is not None else None for s in statements]


def _rows(columns: Columns | None) -> list[tuple[Any, ...]]:
    """Columns as rows (None where NULL)."""
    if columns is None:
        return []
    return list(zip(*(c.tolist() for c in columns.values()), strict=True))


def activity(store: DuckDBEventStore, q: ActivityQuery, asks: Sequence[Ask]) -> list[Cells] | None:
    """The cells of ``asks`` (each served, see ``serves``); None when the windows cut
    too many slots (read them with ``sql_reads``)."""
    bounds = _window_bounds(q)
    edges = _edges(bounds, asks)
    iv = Intervals.of(edges)
    if len(iv.cuts) > MAX_CUTS:
        return None
    workflow_id = q.workflow_ids[0]
    nodes = any("nodes" in a.measures for a in asks)
    messages = any("messages" in a.measures for a in asks)

    def read(rolled: Rollups) -> tuple[SlotPlan, list[Columns | None]]:
        p = slots.plan(store, q.tenant, workflow_id, edges, rolled)
        statements: list[tuple[str, dict[str, Any]] | None] = [
            (sql, p.params) if (sql := slots.exec_rows(store, p, nodes=nodes)) else None,
            (sql, p.params)
            if messages and (sql := slots.message_rows(store, p, iv.cuts))
            else None,
        ]
        return p, _query_some(store, statements)

    # The statements run side by side, each on its own snapshot, and with the
    # rollups of one fold: every slot is read from exactly one source, so the
    # answer is exact; events that arrive meanwhile may show in some, not others.
    first, last = edges[0] // SLOT_US, (edges[-1] - 1) // SLOT_US
    rolled, (p, (exec_raw, message_raw)) = rollup_cache.read_with_rollups(
        store, q.tenant, workflow_id, first, last, read
    )
    reader = _Reader(
        q, bounds, iv, rolled, p, slots.raw_executions(p, exec_raw), _rows(message_raw)
    )
    return [reader.cells(ask) for ask in asks]


class _Reader:
    """One answer's rollups and raw rows, and the cells of each ask from them."""

    def __init__(
        self,
        q: ActivityQuery,
        bounds: tuple[np.ndarray, np.ndarray],
        iv: Intervals,
        rolled: Rollups,
        p: SlotPlan,
        raw: RawExecutions,
        messages: list[tuple[Any, ...]],
    ) -> None:
        self.q, self.iv, self.rolled, self.p, self.raw = q, iv, rolled, p, raw
        self.messages = messages
        self.raw_piece = iv.of_times(raw.t)
        self.n_pieces = len(iv.edges) - 1
        #: Per window of the query: its start and its end + 1 µs, and its pieces.
        self.start_us, self.end_us = bounds
        self.first_piece = np.searchsorted(iv.edges, self.start_us)
        self.end_piece = np.searchsorted(iv.edges, self.end_us)
        self._piece_customers: dict[int, tuple[AbstractBitMap, set[str]]] = {}

    def cells(self, ask: Ask) -> Cells:
        if ask.measures == {"customers"}:
            return {(w,): Sums(customers=self._customers(w)) for w in ask.windows}
        if ask.measures == {"durations"}:
            return {(w,): Sums(quantiles=self._quantiles(w)) for w in ask.windows}
        if ask.by == ("hour",):
            return {key: s for w in ask.windows for key, s in self._per_hour(w).items()}
        if ask.measures == {"nodes"}:
            return {key: s for w in ask.windows for key, s in self._nodes(w).items()}
        return self._sums(ask)

    def _pieces(self, w: int) -> tuple[int, int]:
        return int(self.first_piece[w]), int(self.end_piece[w])

    def _raw_in(self, w: int) -> np.ndarray:
        a, b = self._pieces(w)
        return (self.raw_piece >= a) & (self.raw_piece < b)

    # ------------------------------------------------------------------ sums

    def _sums(self, ask: Ask) -> Cells:
        """Additive sums per piece and key, then per window (a run of pieces).

        Rows are added into a dense (piece, key, field) array; a window's sums
        are the difference of its running totals at its two ends.
        """
        by, iv, p, values = ask.by, self.iv, self.p, self.rolled.values
        keys: dict[tuple[Any, ...], int] = {}
        parts: list[tuple[np.ndarray, np.ndarray, int, np.ndarray]] = []

        def add(pieces: np.ndarray, key_tuples: Sequence[tuple[Any, ...]], at: int,
                sums: np.ndarray) -> None:  # fmt: skip
            index = np.fromiter(
                (keys.setdefault(k, len(keys)) for k in key_tuples), np.int64, len(key_tuples)
            )
            parts.append((pieces, index, at, sums))

        # Whole days come as their totals unless one of this ask's edges cuts them.
        mine = np.array(ask.windows, np.int64)
        cuts = np.unique(-(-np.concatenate([self.start_us[mine], self.end_us[mine]]) // SLOT_US))
        tables = [(EXEC, 0)] if "executions" in ask.measures else []
        if "messages" in ask.measures:
            tables.append((MESSAGES, _MESSAGES_AT))
        for table, at in tables:
            rows = self.rolled.rows(table, p.first, p.last, p.raw, cuts)
            columns = [iv.of_slots(rows.slot)]
            for d in by:
                if d == "error_type" and table is MESSAGES:
                    columns.append(np.zeros(len(rows.slot), np.int64))  # messages have none
                else:
                    columns.append(rows.keys[:, _KEYS[d]])
            (pieces, *codes), sums = group(columns, rows.sums)
            decoded = [
                [None] * len(pieces)
                if d == "error_type" and table is MESSAGES
                else [values[c] for c in column.tolist()]
                for d, column in zip(by, codes, strict=True)
            ]
            add(pieces, list(zip(*decoded, strict=True)) or [()] * len(pieces), at, sums)
        raw = self.raw
        if "executions" in ask.measures and len(raw.slot):
            keep = (self.raw_piece >= 0) & (self.raw_piece < self.n_pieces)
            columns = [self.raw_piece[keep]]
            distinct_values: list[list[Any]] = []
            for d in by:
                distinct, coded = slots.factorize(getattr(raw, d)[keep])
                columns.append(coded)
                distinct_values.append(distinct)
            (pieces, *codes), sums = group(columns, raw.sums()[keep])
            decoded = [
                [distinct_values[i][c] for c in column.tolist()] for i, column in enumerate(codes)
            ]
            add(pieces, list(zip(*decoded, strict=True)) or [()] * len(pieces), 0, sums)
        if "messages" in ask.measures and self.messages:
            message_pieces, message_keys, message_sums = [], [], []
            for slot, after, channel, type_, n, csat_sum, csat_n in self.messages:
                piece = iv.of_slot_after(slot, after)
                if 0 <= piece < self.n_pieces:
                    acc = [0, 0, 0, 0]
                    slots.add_messages(acc, type_, n, csat_sum, csat_n)
                    message_pieces.append(piece)
                    message_keys.append(tuple(channel if d == "channel" else None for d in by))
                    message_sums.append(acc)
            if message_pieces:
                add(np.array(message_pieces, np.int64), message_keys, _MESSAGES_AT,
                    np.array(message_sums, np.int64))  # fmt: skip
        if not keys:
            return {}
        # The last field counts the rows a cell has: a cell exists when it has any.
        dense = np.zeros((self.n_pieces, len(keys), _WIDTH + 1), np.int64)
        for pieces, index, at, sums in parts:
            np.add.at(dense[:, :, at : at + sums.shape[1]], (pieces, index), sums)
            np.add.at(dense[:, :, _WIDTH], (pieces, index), 1)
        running = np.zeros((self.n_pieces + 1, *dense.shape[1:]), np.int64)
        np.cumsum(dense, axis=0, out=running[1:])
        per_window = running[self.end_piece[mine]] - running[self.first_piece[mine]]
        at_w, at_k = np.nonzero(per_window[:, :, _WIDTH])
        key_list = list(keys)
        return {
            (ask.windows[w], *key_list[k]): Sums(*vector)
            for w, k, vector in zip(
                at_w.tolist(), at_k.tolist(), per_window[at_w, at_k, :_WIDTH].tolist(), strict=True
            )
        }

    # ------------------------------------------------------------- customers

    def _customers_of_piece(self, piece: int) -> tuple[AbstractBitMap, set[str]]:
        """The numbers of the piece's customers, and the ids of those not numbered yet."""
        got = self._piece_customers.get(piece)
        if got is None:
            first, last = self.iv.slot_range(piece, piece + 1)
            first, last = max(first, self.p.first), min(last, self.p.last)
            numbers: AbstractBitMap = (
                self.rolled.customers(first, last, self.p.raw) if first <= last else BitMap()
            )
            mine = self.raw_piece == piece
            nums, ids = self.raw.num[mine], self.raw.customer_id[mine]
            if (nums >= 0).any():
                numbers = numbers | BitMap(nums[nums >= 0].tolist())
            strangers = {c for c in ids[nums < 0].tolist() if c is not None}
            got = self._piece_customers[piece] = (numbers, strangers)
        return got

    def _customers(self, w: int) -> int:
        a, b = self._pieces(w)
        parts = [self._customers_of_piece(k) for k in range(a, b)]
        if len(parts) == 1:
            return len(parts[0][0]) + len(parts[0][1])
        numbers = BitMap.union(*(n for n, _ in parts)) if parts else BitMap()
        strangers: set[str] = set().union(*(s for _, s in parts))
        return len(numbers) + len(strangers)

    # ------------------------------------------------------------- durations

    def _slots(self, w: int) -> tuple[int, int]:
        first, last = self.iv.slot_range(*self._pieces(w))
        return max(first, self.p.first), min(last, self.p.last)

    def _quantiles(self, w: int) -> tuple[float | None, ...]:
        """Exact percentiles (numpy's linear interpolation, as the spec's)."""
        first, last = self._slots(w)
        mine = self._raw_in(w) & self.raw.timed
        durations = np.concatenate(
            [
                self.rolled.durations(first, last, self.p.raw) if first <= last else _EMPTY,
                self.raw.duration_ms[mine],
            ]
        )
        if not len(durations):
            return tuple(None for _ in self.q.quantiles)
        return tuple(np.quantile(durations, list(self.q.quantiles)).tolist())

    # ------------------------------------------------------------------ hours

    def _per_hour(self, w: int) -> Cells:
        """Execution sums per local clock hour (keyed by its UTC start)."""
        first, last = self._slots(w)
        parts_slot, parts_sums = [], []
        if first <= last:
            slots_with, sums = self.rolled.per_slot(first, last, self.p.raw)
            parts_slot.append(slots_with)
            parts_sums.append(sums)
        mine = self._raw_in(w)
        if mine.any():
            parts_slot.append(self.raw.slot[mine])
            parts_sums.append(self.raw.sums()[mine])
        if not parts_slot:
            return {}
        slot = np.concatenate(parts_slot)
        distinct, index = np.unique(slot, return_inverse=True)
        local_us = distinct * SLOT_US + utc_offsets_us(
            distinct * SLOT_US, ZoneInfo(self.q.timezone)
        )
        hour_start = distinct * SLOT_US - local_us % 3_600_000_000
        hours, per_slot = np.unique(hour_start, return_inverse=True)
        (hour,), sums = group([per_slot[index]], np.concatenate(parts_sums))
        starts = hours[hour].astype("datetime64[us]").tolist()  # datetimes, in C
        return {(w, t): Sums(*v) for t, v in zip(starts, sums.tolist(), strict=True)}

    # ----------------------------------------------------------------- nodes

    def _nodes(self, w: int) -> Cells:
        """Node sums per node; a node's type is its latest one, over rollups and raw events."""
        first, last = self._slots(w)
        values = self.rolled.values
        latest: dict[Any, tuple[int, Any]] = {}
        totals: dict[Any, list[int]] = {}
        if first <= last:
            x = self.rolled.rows(NODES, first, last, self.p.raw, _EMPTY)
            node, type_code, type_ts = x.keys[:, 0], x.keys[:, 1], x.keys[:, 2]
            (ids,), sums = group([node], x.sums)
            at = rollup_cache.latest(node, type_ts)
            for n, i, v in zip(ids.tolist(), at.tolist(), sums.tolist(), strict=True):
                latest[values[n]] = (int(type_ts[i]), values[int(type_code[i])])
                totals[values[n]] = v
        mine = self._raw_in(w)
        for events in (e for e, m in zip(self.raw.nodes, mine.tolist(), strict=True) if m):
            for e in events if events is not None else ():
                ts = epoch_us(e["ts"]) if e["ts"] is not None else -1
                if e["node_id"] not in latest or ts > latest[e["node_id"]][0]:
                    latest[e["node_id"]] = (ts, e["node_type"])
                slots.add_node(totals.setdefault(e["node_id"], [0] * 5), e["ok"], e["dur"])
        return {
            (w, node_id): _sums_of(_NODE_FIELDS, v, node_type=latest[node_id][1])
            for node_id, v in totals.items()
        }
