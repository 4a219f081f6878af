"""Facts of one workflow from its 15-minute rollups, with raw rows where they fall short.

The fast path of ``ActivityQuery``: for one workflow without a channel filter,
sums by channel and error type, distinct customers, exact duration
percentiles, executions per 15-minute slot and node sums all come from the
rollups held in memory (``rollup_cache``) for the slots they have right, and
from the executions and events themselves for the rest (``slots``). Asks it
cannot serve go to ``sql_reads``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from pyroaring import BitMap

from kaie_analytics.analytics.facts import ActivityQuery, Ask, Cells, Sums
from kaie_analytics.engines.duckdb import rollup_cache, slots
from kaie_analytics.engines.duckdb.activity import SLOT_US, epoch_us, from_epoch_us
from kaie_analytics.engines.duckdb.rollup_cache import EXEC, MESSAGES, NODES, Rollups
from kaie_analytics.engines.duckdb.slots import Intervals, RawExecutions, SlotPlan
from kaie_analytics.engines.duckdb.store import Columns, DuckDBEventStore

#: Where each dimension is among the keys of the execution rollups.
_KEYS = {"channel": 0, "error_type": 1}
#: More window edges off the 15-minute grid than this (zones with odd historical
#: offsets) are read by ``sql_reads``.
MAX_CUTS = 8
_EXEC_FIELDS = ("executions", "successful", "failed", "duration_sum", "durations")
_MESSAGE_FIELDS = ("sent", "received", "csat_sum", "csat_count")
_NODE_FIELDS = ("node_events", "node_ok", "node_duration_sum", "node_durations", "node_errors")
_EMPTY = np.empty(0, np.int64)


def serves(q: ActivityQuery, ask: Ask) -> bool:
    """Whether the rollups answer ``ask`` exactly."""
    if len(q.workflow_ids) != 1 or q.channels:
        return False
    m, by = ask.measures, set(ask.by)
    return (
        (m <= {"executions", "messages"} and by <= {"channel", "error_type"})
        or (m == {"executions"} and ask.by == ("quarter_hour",))
        or (not by and m in ({"customers"}, {"durations"}))
        or (m == {"nodes"} and ask.by == ("node_id",))
    )


def _edges(q: ActivityQuery, asks: Sequence[Ask]) -> list[int]:
    used = {w for ask in asks for w in ask.windows}
    edges = set()
    for w in used:
        window = q.windows[w]
        edges.update((epoch_us(window.start), epoch_us(window.end) + 1))
    return sorted(edges)


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
    edges = _edges(q, asks)
    iv = Intervals.of(edges)
    if len(iv.cuts) > MAX_CUTS:
        return None
    workflow_id = q.workflow_ids[0]
    nodes = any("nodes" in a.measures for a in asks)
    messages = any("messages" in a.measures for a in asks)

    def read() -> tuple[SlotPlan, list[Columns | None]]:
        p = slots.plan(store, q.tenant, workflow_id, edges)
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
    reader = _Reader(q, iv, rolled, p, slots.raw_executions(p, exec_raw), _rows(message_raw))
    return [reader.cells(ask) for ask in asks]


class _Reader:
    """One answer's rollups and raw rows, and the cells of each ask from them."""

    def __init__(
        self,
        q: ActivityQuery,
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
        self._piece_customers: dict[int, tuple[BitMap, set[str]]] = {}

    def cells(self, ask: Ask) -> Cells:
        if ask.measures == {"customers"}:
            return {(w,): Sums(customers=self._customers(w)) for w in ask.windows}
        if ask.measures == {"durations"}:
            return {(w,): Sums(quantiles=self._quantiles(w)) for w in ask.windows}
        if ask.measures == {"nodes"}:
            return {key: s for w in ask.windows for key, s in self._nodes(w).items()}
        if ask.by == ("quarter_hour",):
            return {key: s for w in ask.windows for key, s in self._per_slot(w).items()}
        return self._sums(ask)

    def _pieces(self, w: int) -> tuple[int, int]:
        window = self.q.windows[w]
        return self.iv.pieces(epoch_us(window.start), epoch_us(window.end) + 1)

    def _raw_in(self, w: int) -> np.ndarray:
        a, b = self._pieces(w)
        return (self.raw_piece >= a) & (self.raw_piece < b)

    # ------------------------------------------------------------------ sums

    def _sums(self, ask: Ask) -> Cells:
        """Additive sums per piece and key, then per window (a run of pieces)."""
        by, iv, p, values = ask.by, self.iv, self.p, self.rolled.values
        per_piece: dict[int, dict[tuple[Any, ...], list[int]]] = defaultdict(dict)
        width = len(_EXEC_FIELDS) + len(_MESSAGE_FIELDS)

        def add(piece: int, key: tuple[Any, ...], at: int, vector: Sequence[int]) -> None:
            acc = per_piece[piece].setdefault(key, [0] * width)
            for i, v in enumerate(vector):
                acc[at + i] += v

        cuts = np.unique(iv.first_slots)
        tables = [(EXEC, 0)] if "executions" in ask.measures else []
        if "messages" in ask.measures:
            tables.append((MESSAGES, len(_EXEC_FIELDS)))
        for table, at in tables:
            rows = self.rolled.rows(table, p.first, p.last, p.raw, cuts)
            columns = [iv.of_slots(rows.slot)]
            for d in by:
                if d == "error_type" and table is MESSAGES:
                    columns.append(np.zeros(len(rows.slot), np.int64))  # messages have none
                else:
                    columns.append(rows.keys[:, _KEYS[d]])
            keys, sums = rollup_cache.group(columns, rows.sums)
            key_rows = zip(*(k.tolist() for k in keys), strict=True)
            for (piece, *codes), vector in zip(key_rows, sums.tolist(), strict=True):
                key = tuple(
                    None if d == "error_type" and table is MESSAGES else values[c]
                    for d, c in zip(by, codes, strict=True)
                )
                add(piece, key, at, vector)
        raw = self.raw
        if "executions" in ask.measures and len(raw.slot):
            keep = (self.raw_piece >= 0) & (self.raw_piece < self.n_pieces)
            columns = [self.raw_piece[keep]]
            decoded = []
            for d in by:
                distinct, codes = slots.factorize(getattr(raw, d)[keep])
                columns.append(codes)
                decoded.append(distinct)
            keys, sums = rollup_cache.group(columns, raw.sums()[keep])
            key_rows = zip(*(k.tolist() for k in keys), strict=True)
            for (piece, *codes), vector in zip(key_rows, sums.tolist(), strict=True):
                add(piece, tuple(decoded[i][c] for i, c in enumerate(codes)), 0, vector)
        if "messages" in ask.measures:
            for slot, after, channel, type_, n, csat_sum, csat_n in self.messages:
                piece = iv.of_slot_after(slot, after)
                if 0 <= piece < self.n_pieces:
                    acc = [0, 0, 0, 0]
                    slots.add_messages(acc, type_, n, csat_sum, csat_n)
                    key = tuple(channel if d == "channel" else None for d in by)
                    add(piece, key, len(_EXEC_FIELDS), acc)
        cells: Cells = {}
        fields = (*_EXEC_FIELDS, *_MESSAGE_FIELDS)
        for w in ask.windows:
            a, b = self._pieces(w)
            for piece in range(a, b):
                for key, vector in per_piece.get(piece, {}).items():
                    cell = cells.get((w, *key))
                    if cell is None:
                        cell = cells[(w, *key)] = Sums()
                    for name, v in zip(fields, vector, strict=True):
                        setattr(cell, name, getattr(cell, name) + v)
        return cells

    # ------------------------------------------------------------- customers

    def _customers_of_piece(self, piece: int) -> tuple[BitMap, set[str]]:
        """The numbers of the piece's customers, and the ids of those not numbered yet."""
        got = self._piece_customers.get(piece)
        if got is None:
            first, last = self.iv.slot_range(piece, piece + 1)
            first, last = max(first, self.p.first), min(last, self.p.last)
            numbers = self.rolled.customers(first, last, self.p.raw) if first <= last else BitMap()
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

    # ------------------------------------------------------------ per slot

    def _per_slot(self, w: int) -> Cells:
        first, last = self._slots(w)
        per: dict[int, list[int]] = {}
        if first <= last:
            rows = self.rolled.rows(EXEC, first, last, self.p.raw)
            (slot,), sums = rollup_cache.group([rows.slot - first], rows.sums)
            for s, v in zip((slot + first).tolist(), sums.tolist(), strict=True):
                per[s] = v
        mine = self._raw_in(w)
        if mine.any():
            base = int(self.raw.slot[mine].min())
            (slot,), sums = rollup_cache.group([self.raw.slot[mine] - base], self.raw.sums()[mine])
            for s, v in zip((slot + base).tolist(), sums.tolist(), strict=True):
                acc = per.setdefault(s, [0] * len(_EXEC_FIELDS))
                for i, x in enumerate(v):
                    acc[i] += x
        return {
            (w, from_epoch_us(s * SLOT_US)): Sums(**dict(zip(_EXEC_FIELDS, v, strict=True)))
            for s, v in per.items()
        }

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
            (ids,), sums = rollup_cache.group([node], x.sums)
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
            (w, node_id): Sums(
                node_type=latest[node_id][1], **dict(zip(_NODE_FIELDS, v, strict=True))
            )
            for node_id, v in totals.items()
        }
