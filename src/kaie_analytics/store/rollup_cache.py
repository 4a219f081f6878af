"""A workflow's rollup rows in memory, one UTC day at a time.

A workflow answer adds up thousands of 15-minute rollup rows (``rollups``).
Read from DuckDB, each statement of an answer cost milliseconds of fixed work
(binding, planning, a 122,880-row group per scan) however few rows it
returned, and that fixed work was most of the answer's time. Held here as
numpy columns, the same sums take well under a millisecond; DuckDB is left
with the rows no rollup has right (the slots cut by a period's edges, those of
unfolded events) and the exact percentiles.

Kept per (tenant, workflow, UTC day): that day's rows of ``exec_slots``,
``message_slots`` and ``node_slots`` and its bitmaps of ``exec_customers``,
loaded when a query first needs the day and evicted least recently used beyond
a byte budget (``KAIE_ROLLUP_CACHE_MB``).

Staying exact: only the writer's fold changes rollups. It bumps the store's
``rollup_gen`` to odd just before it commits, reports the days it changed
(``changed``) and bumps it to even after. A reader (``read_with_rollups``)
notes an even generation, takes the days (dropping those changed since,
loading those missing), runs its own statements, and keeps the result only if
the generation has not moved: then the rows here and whatever it read from
DuckDB are of the same fold. Otherwise it reads again.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from pyroaring import BitMap

from kaie_analytics.errors import QueryTimeout
from kaie_analytics.store.rollups import SLOTS_PER_DAY, DayKey

if TYPE_CHECKING:
    from kaie_analytics.store.duckdb_store import DuckDBEventStore

T = TypeVar("T")

#: Folds remembered; a cache further behind than this starts afresh.
LOG_FOLDS = 1024
#: Reads retried when folds keep committing under them (each takes milliseconds,
#: folds come seconds apart: more than one retry is rare).
ATTEMPTS = 50


@dataclass(frozen=True, slots=True)
class Table:
    """How one rollup table is held: coded text keys, integer keys, sums."""

    name: str
    text: tuple[str, ...]
    ints: tuple[str, ...]
    sums: tuple[str, ...]

    def empty(self) -> Rows:
        return Rows(
            np.empty(0, np.int64),
            np.empty((0, len(self.text) + len(self.ints)), np.int64),
            np.empty((0, len(self.sums)), np.int64),
        )


EXEC = Table(
    "exec_slots",
    ("channel", "error_type"),
    (),
    ("total", "ok", "failed", "coalesce(dur_sum, 0)::BIGINT", "dur_n"),
)
MESSAGES = Table(
    "message_slots",
    ("channel",),
    (),
    ("sent", "received", "coalesce(csat_sum, 0)::BIGINT", "csat_n"),
)
NODES = Table(
    "node_slots",
    ("node_id", "node_type"),
    ("coalesce(epoch_us(type_ts), 0)",),
    ("n", "ok", "coalesce(dur_sum, 0)::BIGINT", "dur_n", "errors"),
)
TABLES = (EXEC, MESSAGES, NODES)


@dataclass(frozen=True, slots=True)
class Rows:
    """Rollup rows as columns: ``keys`` (n × text+ints, text as codes), ``sums`` (n × sums)."""

    slot: np.ndarray
    keys: np.ndarray
    sums: np.ndarray

    def where(self, mask: np.ndarray) -> Rows:
        return Rows(self.slot[mask], self.keys[mask], self.sums[mask])

    @property
    def nbytes(self) -> int:
        return int(self.slot.nbytes + self.keys.nbytes + self.sums.nbytes)


@dataclass(frozen=True, slots=True)
class Day:
    tables: dict[str, Rows]
    #: (slot, customers) of the day's slots that have executions.
    bitmaps: tuple[tuple[int, BitMap], ...]
    nbytes: int


class Rollups:
    """The rollup rows of some days of one workflow (what a query reads)."""

    def __init__(self, first_day: int, days: Sequence[Day], values: list[Any]) -> None:
        self._first_day = first_day
        self._days = days
        #: Code → text value (None for SQL NULL) of the coded key columns.
        self.values = values

    def _cut(self, first: int, last: int, raw: Sequence[int]) -> list[tuple[Day, bool]]:
        """Each day with a slot in [first, last], and whether all its slots are taken."""
        out = []
        for i, day in enumerate(self._days):
            lo = (self._first_day + i) * SLOTS_PER_DAY
            hi = lo + SLOTS_PER_DAY - 1
            if hi < first or lo > last:
                continue
            whole = first <= lo and hi <= last and not any(lo <= r <= hi for r in raw)
            out.append((day, whole))
        return out

    def rows(self, table: Table, first: int, last: int, raw: Sequence[int]) -> Rows:
        """Rows of slots in [first, last] other than ``raw``."""
        raw_slots = np.array(raw, np.int64)
        parts = []
        for day, whole in self._cut(first, last, raw):
            rows = day.tables[table.name]
            parts.append(rows if whole else rows.where(_keep(rows.slot, first, last, raw_slots)))
        if not parts:
            return table.empty()
        return Rows(
            np.concatenate([p.slot for p in parts]),
            np.concatenate([p.keys for p in parts]),
            np.concatenate([p.sums for p in parts]),
        )

    def bitmaps(self, first: int, last: int, raw: Sequence[int]) -> list[tuple[int, BitMap]]:
        """(slot, customers) of slots in [first, last] other than ``raw``."""
        out: list[tuple[int, BitMap]] = []
        skip = set(raw)
        for day, whole in self._cut(first, last, raw):
            if whole:
                out += day.bitmaps
            else:
                out += [(s, b) for s, b in day.bitmaps if first <= s <= last and s not in skip]
        return out


def _keep(slots: np.ndarray, first: int, last: int, raw: np.ndarray) -> np.ndarray:
    keep = (slots >= first) & (slots <= last)
    if raw.size:
        keep &= ~np.isin(slots, raw)
    return keep


class RollupCache:
    def __init__(self, store: DuckDBEventStore, budget_bytes: int) -> None:
        self._store = store
        self._budget = budget_bytes
        self._lock = threading.Lock()
        self._days: OrderedDict[DayKey, Day] = OrderedDict()
        self._bytes = 0
        #: The generation the days held are current for.
        self._gen = 0
        self._log: deque[tuple[int, frozenset[DayKey]]] = deque(maxlen=LOG_FOLDS)
        self._codes: dict[Any, int] = {}
        self._values: list[Any] = []

    def changed(self, gen: int, days: Iterable[DayKey]) -> None:
        """The fold that makes generation ``gen`` changed the rollups of ``days`` (writer)."""
        self._log.append((gen, frozenset(days)))

    def days(
        self, tenant: str, workflow_id: str, first: int, last: int, gen: int
    ) -> Rollups | None:
        """Days ``first``..``last`` (UTC day numbers) as of generation ``gen``, or None if a
        fold has committed since (read again)."""
        with self._lock:
            if not self._catch_up(gen):
                return None
            keys = [(tenant, workflow_id, d) for d in range(first, last + 1)]
            missing = [k[2] for k in keys if k not in self._days]
            if missing:
                loaded = self._load(tenant, workflow_id, missing)
                if self._store.rollup_gen != gen:
                    return None
                for d, day in loaded.items():
                    self._days[(tenant, workflow_id, d)] = day
                    self._bytes += day.nbytes
            days = []
            for k in keys:
                self._days.move_to_end(k)
                days.append(self._days[k])
            while self._bytes > self._budget and self._days:
                self._bytes -= self._days.popitem(last=False)[1].nbytes
            return Rollups(first, days, self._values)

    def _catch_up(self, gen: int) -> bool:
        """Drop the days changed by folds up to ``gen``; False if the cache is past it."""
        if gen < self._gen:
            return False
        if gen == self._gen:
            return True
        folds = [keys for g, keys in self._log if self._gen < g <= gen]
        if len(folds) == (gen - self._gen) // 2:
            for keys in folds:
                for k in keys:
                    day = self._days.pop(k, None)
                    if day is not None:
                        self._bytes -= day.nbytes
        else:  # more folds than the log remembers
            self._days.clear()
            self._bytes = 0
        self._gen = gen
        return True

    def _code(self, value: Any) -> int:
        code = self._codes.get(value)
        if code is None:
            code = self._codes[value] = len(self._values)
            self._values.append(value)
        return code

    def _load(self, tenant: str, workflow_id: str, days: list[int]) -> dict[int, Day]:
        """Read ``days`` of the workflow, one statement per table and run of days."""
        runs: list[list[int]] = []
        for d in days:
            if runs and runs[-1][1] == d - 1:
                runs[-1][1] = d
            else:
                runs.append([d, d])
        params = {"tenant": tenant, "workflow": workflow_id}
        statements = []
        for a, b in runs:
            span = f"slot BETWEEN {int(a) * SLOTS_PER_DAY} AND {(int(b) + 1) * SLOTS_PER_DAY - 1}"
            where = f"WHERE tenant = $tenant AND workflow_id = $workflow AND {span} ORDER BY slot"
            statements += [
                (
                    f"SELECT slot, {', '.join((*t.text, *t.ints, *t.sums))} FROM {t.name} {where}",
                    params,
                )
                for t in TABLES
            ]
            statements.append((f"SELECT slot, customers FROM exec_customers {where}", params))
        results = self._store.query_all(statements)
        out: dict[int, Day] = {}
        per_run = len(TABLES) + 1
        for i, (a, b) in enumerate(runs):
            tables = {t.name: self._rows(t, results[i * per_run + j]) for j, t in enumerate(TABLES)}
            blobs = results[i * per_run + len(TABLES)]
            bitmap_slots = np.fromiter((s for s, _ in blobs), np.int64, len(blobs))
            bitmaps = [BitMap.deserialize(b) for _, b in blobs]
            blob_bytes = np.array([len(b) for _, b in blobs], np.int64)
            for d in range(a, b + 1):
                lo, hi = d * SLOTS_PER_DAY, (d + 1) * SLOTS_PER_DAY
                day_tables = {name: _day_rows(rows, lo, hi) for name, rows in tables.items()}
                i0, i1 = np.searchsorted(bitmap_slots, [lo, hi])
                out[d] = Day(
                    day_tables,
                    tuple(zip(bitmap_slots[i0:i1].tolist(), bitmaps[i0:i1], strict=True)),
                    sum(r.nbytes for r in day_tables.values())
                    + int(blob_bytes[i0:i1].sum()) * 2
                    + 1024,
                )
        return out

    def _rows(self, table: Table, rows: list[tuple[Any, ...]]) -> Rows:
        if not rows:
            return table.empty()
        n, n_text, n_keys = len(rows), len(table.text), len(table.text) + len(table.ints)
        cols = list(zip(*rows, strict=True))
        keys = [np.fromiter(map(self._code, c), np.int64, n) for c in cols[1 : 1 + n_text]]
        keys += [np.fromiter(c, np.int64, n) for c in cols[1 + n_text : 1 + n_keys]]
        return Rows(
            np.fromiter(cols[0], np.int64, n),
            np.column_stack(keys),
            np.column_stack([np.fromiter(c, np.int64, n) for c in cols[1 + n_keys :]]),
        )


def _day_rows(rows: Rows, lo: int, hi: int) -> Rows:
    i0, i1 = np.searchsorted(rows.slot, [lo, hi])
    return Rows(rows.slot[i0:i1].copy(), rows.keys[i0:i1].copy(), rows.sums[i0:i1].copy())


def read_with_rollups(
    store: DuckDBEventStore,
    tenant: str,
    workflow_id: str,
    first_slot: int,
    last_slot: int,
    read: Callable[[], T],
) -> tuple[Rollups, T]:
    """The workflow's rollups over [first_slot, last_slot] and ``read()``, of one fold."""
    first, last = first_slot // SLOTS_PER_DAY, last_slot // SLOTS_PER_DAY
    for _ in range(ATTEMPTS):
        gen = store.rollup_gen
        if gen % 2 == 0:
            rolled = store.rollup_cache.days(tenant, workflow_id, first, last, gen)
            if rolled is not None:
                result = read()
                if store.rollup_gen == gen:
                    return rolled, result
        time.sleep(0.002)
    raise QueryTimeout("the data kept changing under this query; try again")
