"""A workflow's sums per slot in memory, one UTC day at a time (embedded only).

A workflow answer adds up the sums the fold keeps per 15-minute slot
(``execution_slots``, ``message_slots``, ``node_slots``) for the slots no window
edge cuts. Each ClickHouse statement costs 10-20 ms of analysis and planning
however few rows it reads, and reading those sums was a branch of every
statement of the answer; held here as numpy columns, the same sums add up in
well under a millisecond, and ClickHouse is left with the rows of the cut
slots and of the executions not folded yet. The DuckDB engine keeps its own
rollups the same way (``engines.duckdb.rollup_cache``).

Kept per (tenant, workflow, UTC day): that day's rows of the three tables,
added up per slot and key over the folds up to a watermark, loaded when an
answer first needs the day and evicted least recently used beyond a byte
budget (``KAIE_ROLLUP_CACHE_MB``).

Staying exact: only a fold changes these tables (compaction adds rows up
without changing any sum as of a watermark an answer can read with). Each
fold reports the days it wrote rows for (``changed``) before answers can read
with its watermark, and the days held are current for one watermark
(``_mark``): an answer with a later one first drops the days the folds in
between changed; an answer with an earlier one (a fold finished while it
started) reads the days it needs without keeping them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kaie_analytics.engines.clickhouse.schema import EXECUTION_SUMS, NODE_SUMS, SLOTS_PER_DAY
from kaie_analytics.engines.clickhouse.transport import Transport
from kaie_analytics.engines.sums import runs

#: Folds remembered; a cache further behind than this starts afresh.
LOG_FOLDS = 4096
#: (tenant, workflow, UTC day as a slot number // ``SLOTS_PER_DAY``).
DayKey = tuple[str, str, int]


@dataclass(frozen=True, slots=True)
class Table:
    """One table of sums per slot, as held: text keys (as codes), then sums."""

    name: str
    keys: tuple[str, ...]
    sums: tuple[str, ...]


EXECUTIONS = Table("execution_slots", ("channel", "error_type"), EXECUTION_SUMS)
MESSAGES = Table("message_slots", ("channel",), ("sent", "received", "csat_sum", "csat_n"))
NODES = Table("node_slots", ("channel", "node_id", "node_type"), NODE_SUMS)
TABLES = (EXECUTIONS, MESSAGES, NODES)


@dataclass(frozen=True, slots=True)
class Rows:
    """Rows as columns, ascending by slot: ``keys`` (n × keys, text as codes), ``sums``."""

    slot: np.ndarray
    keys: np.ndarray
    sums: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.slot.nbytes + self.keys.nbytes + self.sums.nbytes)


def _empty(table: Table) -> Rows:
    return Rows(
        np.empty(0, np.int64),
        np.empty((0, len(table.keys)), np.int64),
        np.empty((0, len(table.sums)), np.int64),
    )


@dataclass(frozen=True, slots=True)
class SlotSums:
    """The sums of a run of days of one workflow, as one answer reads them."""

    tables: dict[str, Rows]
    #: Code → text value of the key columns, and text → code.
    values: list[str]
    codes: dict[str, int]

    def rows(self, table: Table) -> Rows:
        return self.tables[table.name]


class SlotCache:
    """The days held, least recently used first, and the days each fold changed."""

    def __init__(self, transport: Transport, budget_bytes: int) -> None:
        self._transport = transport
        self._budget = budget_bytes
        self._lock = threading.Lock()
        #: Guards the log only, so a fold never waits for a load.
        self._log_lock = threading.Lock()
        self._days: OrderedDict[DayKey, dict[str, Rows]] = OrderedDict()
        self._bytes = 0
        #: The watermark the days held are current for.
        self._mark = 0
        #: (watermark before, watermark after, days changed) of each fold.
        self._log: deque[tuple[int, int, frozenset[DayKey]]] = deque(maxlen=LOG_FOLDS)
        self._codes: dict[str, int] = {}
        self._values: list[str] = []

    @property
    def nbytes(self) -> int:
        return self._bytes

    def changed(self, before: int, after: int, days: Iterable[DayKey]) -> None:
        """The fold from watermark ``before`` to ``after`` wrote rows for ``days`` (the
        fold calls this before any answer reads with ``after``)."""
        with self._log_lock:
            self._log.append((before, after, frozenset(days)))

    def sums(self, tenant: str, workflow_id: str, first: int, last: int, folded: int) -> SlotSums:
        """The workflow's sums of slots ``first``..``last`` as of watermark ``folded``."""
        lo_day, hi_day = first // SLOTS_PER_DAY, last // SLOTS_PER_DAY
        keys = [(tenant, workflow_id, d) for d in range(lo_day, hi_day + 1)]
        with self._lock:
            keep = self._catch_up(folded)
            held = {k: self._days[k] for k in keys if k in self._days} if keep else {}
            missing = [k[2] for k in keys if k not in held]
            if missing:
                loaded = self._load(tenant, workflow_id, missing, folded)
                for d, day in loaded.items():
                    held[(tenant, workflow_id, d)] = day
                    if keep:
                        self._days[(tenant, workflow_id, d)] = day
                        self._bytes += _day_bytes(day)
            if keep:
                for k in keys:
                    self._days.move_to_end(k)
                while self._bytes > self._budget and self._days:
                    self._bytes -= _day_bytes(self._days.popitem(last=False)[1])
            days = [held[k] for k in keys]
            values, codes = self._values, self._codes
        tables = {}
        for t in TABLES:
            parts = [day[t.name] for day in days if len(day[t.name].slot)]
            tables[t.name] = (
                Rows(*(np.concatenate([getattr(p, f) for p in parts]) for f in Rows.__slots__))
                if parts
                else _empty(t)
            )
        return SlotSums(tables, values, codes)

    def _catch_up(self, folded: int) -> bool:
        """Drop the days the folds up to watermark ``folded`` changed; False if the days
        held are of a later watermark (the caller keeps nothing)."""
        if folded < self._mark:
            return False
        if folded == self._mark:
            return True
        with self._log_lock:
            log = list(self._log)
        chain = []
        at = self._mark
        for before, after, days in log:  # folds in order, each from the last one's mark
            if before == at and after <= folded:
                chain.append(days)
                at = after
        if at == folded:
            for days in chain:
                for k in days:
                    day = self._days.pop(k, None)
                    if day is not None:
                        self._bytes -= _day_bytes(day)
        else:  # more folds than the log remembers
            self._days.clear()
            self._bytes = 0
        self._mark = folded
        return True

    def _code(self, value: str) -> int:
        code = self._codes.get(value)
        if code is None:
            code = self._codes[value] = len(self._values)
            self._values.append(value)
        return code

    def _load(
        self, tenant: str, workflow_id: str, days: Sequence[int], folded: int
    ) -> dict[int, dict[str, Rows]]:
        """Read ``days`` of the workflow as of ``folded``: one statement per table and run
        of consecutive days, side by side."""
        day_runs = runs(days)
        params = {"tenant": tenant, "workflow": workflow_id, "folded": folded}
        statements = []
        for a, b in day_runs:
            for t in TABLES:
                keys = ", ".join(t.keys)
                sums = ", ".join(f"sum({c})" for c in t.sums)
                statements.append(
                    (
                        f"""SELECT slot, {keys}, {sums} FROM {t.name}
                        WHERE tenant = {{tenant:String}} AND workflow_id = {{workflow:String}}
                          AND fold <= {{folded:Int64}}
                          AND slot BETWEEN {a * SLOTS_PER_DAY} AND {(b + 1) * SLOTS_PER_DAY - 1}
                        GROUP BY slot, {keys} ORDER BY slot""",
                        params,
                    )
                )
        results = iter(self._transport.query_all(statements))
        out: dict[int, dict[str, Rows]] = {d: {} for d in days}
        for a, b in day_runs:
            for t in TABLES:
                rows = self._rows(t, next(results))
                bounds = np.searchsorted(rows.slot, np.arange(a, b + 2) * SLOTS_PER_DAY)
                for d, i0, i1 in zip(range(a, b + 1), bounds[:-1], bounds[1:], strict=True):
                    out[d][t.name] = Rows(
                        rows.slot[i0:i1].copy(), rows.keys[i0:i1].copy(), rows.sums[i0:i1].copy()
                    )
        return out

    def _rows(self, table: Table, result: Any) -> Rows:
        """Rows of a load statement's result (slot, keys, sums); keys whose sums all come
        to zero (every change taken back) are no rows."""
        columns = [result.column(i) for i in range(result.num_columns)]
        n = result.num_rows
        k = len(table.keys)
        sums = np.column_stack([np.asarray(c, np.int64) for c in columns[1 + k :]]).reshape(
            n, len(table.sums)
        )
        keys = np.column_stack(
            [np.fromiter(map(self._code, c.to_pylist()), np.int64, n) for c in columns[1 : 1 + k]]
        ).reshape(n, k)
        present = sums.any(axis=1)
        return Rows(np.asarray(columns[0], np.int64)[present], keys[present], sums[present])


def _day_bytes(day: dict[str, Rows]) -> int:
    return sum(r.nbytes for r in day.values()) + 512
