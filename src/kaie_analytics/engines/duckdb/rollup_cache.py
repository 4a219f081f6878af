"""A workflow's rollup rows in memory, one UTC day at a time.

A workflow answer adds up thousands of 15-minute rollup rows (``rollups``).
Read from DuckDB, each statement of an answer cost milliseconds of fixed work
(binding, planning, a 122,880-row group per scan) however few rows it
returned, and that fixed work was most of the answer's time. Held here as
numpy columns, the same sums take well under a millisecond; DuckDB is left
with the rows no rollup has right (the slots cut by a period's edges, those of
unfolded events).

Kept per (tenant, workflow, UTC day): that day's rows of ``exec_slots``,
``message_slots`` and ``node_slots``, its bitmaps of ``exec_customers`` and the
durations of its finished executions (for exact percentiles), loaded when a
query first needs the day and evicted least recently used beyond a byte
budget (``KAIE_ROLLUP_CACHE_MB``).

Staying exact: only a fold (``folds``) changes rollups. It bumps a counter,
the store's ``rollup_gen`` (the *generation* of the rollups), to odd just
before it commits, reports the days it changed (``changed``) and bumps it to
even after. A reader (``read_with_rollups``) notes an even generation, takes
the days (dropping those changed since, loading those missing), runs its own
statements, and keeps the result only if the generation has not moved: then
the rows here and whatever it read from DuckDB are of the same fold.
Otherwise it reads again.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from pyroaring import AbstractBitMap, BitMap, FrozenBitMap

from kaie_analytics.engines.duckdb.rollups import SLOTS_PER_DAY, DayKey, slot_of
from kaie_analytics.engines.duckdb.times import DAY_US
from kaie_analytics.engines.sums import Codes, HeldDays, group, runs
from kaie_analytics.errors import QueryTimeout

if TYPE_CHECKING:
    from kaie_analytics.engines.duckdb.store import Columns, DuckDBEventStore

T = TypeVar("T")

#: A latest time that is not known (rows from before layout 6): never "before" an edge.
_UNKNOWN = 2**63 - 1
#: Folds remembered; a cache further behind than this starts afresh.
LOG_FOLDS = 1024


@dataclass(frozen=True, slots=True)
class Table:
    """How one rollup table is held: coded text keys, integer keys, sums."""

    name: str
    text: tuple[str, ...]
    ints: tuple[str, ...]
    sums: tuple[str, ...]
    #: A day's total groups by this many leading keys; the other keys come
    #: from the row with the greatest last key (the latest node type).
    group_keys: int

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
    2,
)
MESSAGES = Table(
    "message_slots",
    ("channel",),
    (),
    ("sent", "received", "coalesce(csat_sum, 0)::BIGINT", "csat_n"),
    1,
)
NODES = Table(
    "node_slots",
    ("node_id", "node_type"),
    ("coalesce(epoch_us(type_ts), 0)",),
    ("n", "ok", "coalesce(dur_sum, 0)::BIGINT", "dur_n", "errors"),
    1,
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
    """One UTC day of one workflow's rollups."""

    #: Per table, the day's rows, and their totals over the day (one row per
    #: key, ``slot`` the day's first).
    tables: dict[str, Rows]
    totals: dict[str, Rows]
    #: The execution sums (``EXEC``'s) of each slot of the day: slots × sums.
    per_slot: np.ndarray
    #: The durations of the day's finished executions that have one, and their
    #: slots (ascending): percentiles are exact over the values themselves.
    duration_slots: np.ndarray
    durations: np.ndarray
    #: The day's slots that have executions (ascending), their customers, and the
    #: union of those.
    bitmap_slots: list[int]
    bitmaps: list[FrozenBitMap]
    customers: FrozenBitMap
    #: Per slot of the day, the latest start or message time of its rows (µs;
    #: -1 for none): a slot an edge cuts after it needs no raw read.
    latest_us: np.ndarray
    nbytes: int


class Rollups:
    """The rollup rows of consecutive days of one workflow (what a query reads)."""

    def __init__(self, first_day: int, days: Sequence[Day], values: list[Any]) -> None:
        self._first_day = first_day
        self._days = days
        #: Code → text value (None for SQL NULL) of the coded key columns.
        self.values = values

    def _cut(self, first: int, last: int, raw: Sequence[int]) -> Iterator[tuple[int, Day, bool]]:
        """Each day (first slot, day) with a slot in [first, last], and whether all its
        slots are taken."""
        lo_day = max(first // SLOTS_PER_DAY, self._first_day)
        hi_day = min(last // SLOTS_PER_DAY, self._first_day + len(self._days) - 1)
        for d in range(lo_day, hi_day + 1):
            lo, hi = d * SLOTS_PER_DAY, (d + 1) * SLOTS_PER_DAY - 1
            whole = first <= lo and hi <= last and not any(lo <= r <= hi for r in raw)
            yield lo, self._days[d - self._first_day], whole

    def latest_us(self, slot: int) -> int:
        """The latest time (µs) of the rollups of ``slot``: -1 if it has none."""
        d = slot // SLOTS_PER_DAY - self._first_day
        if not 0 <= d < len(self._days):
            return _UNKNOWN
        return int(self._days[d].latest_us[slot % SLOTS_PER_DAY])

    def rows(
        self,
        table: Table,
        first: int,
        last: int,
        raw: Sequence[int],
        cuts: np.ndarray | None = None,
    ) -> Rows:
        """Rows of slots in [first, last] other than ``raw``.

        With ``cuts`` (sorted slots where the caller's groups change), a whole
        day no cut falls inside comes as its totals (one row per key).
        """
        raw_slots = np.array(raw, np.int64)
        parts = []
        for lo, day, whole in self._cut(first, last, raw):
            if whole and cuts is not None and _uncut(cuts, lo):
                parts.append(day.totals[table.name])
                continue
            rows = day.tables[table.name]
            parts.append(rows if whole else rows.where(_keep(rows.slot, first, last, raw_slots)))
        if not parts:
            return table.empty()
        return Rows(
            np.concatenate([p.slot for p in parts]),
            np.concatenate([p.keys for p in parts]),
            np.concatenate([p.sums for p in parts]),
        )

    def per_slot(self, first: int, last: int, raw: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Slots in [first, last] other than ``raw`` that have executions, and their
        execution sums (slots × ``EXEC`` sums)."""
        raw_slots = np.array(raw, np.int64)
        slots, sums = [], []
        for lo, day, whole in self._cut(first, last, raw):
            day_slots = np.arange(lo, lo + SLOTS_PER_DAY, dtype=np.int64)
            keep = day.per_slot[:, 0] > 0
            if not whole:
                keep &= _keep(day_slots, first, last, raw_slots)
            slots.append(day_slots[keep])
            sums.append(day.per_slot[keep])
        if not slots:
            return np.empty(0, np.int64), np.empty((0, len(EXEC.sums)), np.int64)
        return np.concatenate(slots), np.concatenate(sums)

    def durations(self, first: int, last: int, raw: Sequence[int]) -> np.ndarray:
        """The durations of the finished executions of slots in [first, last] other than
        ``raw``."""
        raw_slots = np.array(raw, np.int64)
        parts = [
            day.durations
            if whole
            else day.durations[_keep(day.duration_slots, first, last, raw_slots)]
            for _, day, whole in self._cut(first, last, raw)
        ]
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    def customers(self, first: int, last: int, raw: Sequence[int]) -> AbstractBitMap:
        """The customers of the slots in [first, last] other than ``raw`` (never one
        held here: those are frozen)."""
        parts = []
        for _, day, whole in self._cut(first, last, raw):
            if whole:
                parts.append(day.customers)
                continue
            i0 = bisect.bisect_left(day.bitmap_slots, first)
            i1 = bisect.bisect_right(day.bitmap_slots, last)
            parts += [
                b
                for s, b in zip(day.bitmap_slots[i0:i1], day.bitmaps[i0:i1], strict=True)
                if s not in raw
            ]
        return BitMap.union(*parts) if parts else BitMap()


def _uncut(cuts: np.ndarray, lo: int) -> bool:
    """Whether no cut falls inside the day starting at slot ``lo`` (a cut at ``lo`` is its edge)."""
    i = int(np.searchsorted(cuts, lo, side="right"))
    return i == len(cuts) or int(cuts[i]) >= lo + SLOTS_PER_DAY


def _keep(slots: np.ndarray, first: int, last: int, raw: np.ndarray) -> np.ndarray:
    keep = (slots >= first) & (slots <= last)
    if raw.size:
        keep &= ~np.isin(slots, raw)
    return keep


def latest(group_key: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Per distinct ``group_key`` (in ascending order), the index of its row with the
    greatest ``ts``."""
    order = np.lexsort((ts, group_key))
    if not len(order):
        return order
    return order[np.r_[group_key[order][1:] != group_key[order][:-1], True]]


def _day_totals(table: Table, rows: Rows, lo: int) -> Rows:
    """The day's rows summed per key (``slot``: the day's first, ``lo``)."""
    if not len(rows.slot):
        return rows
    g = table.group_keys
    keys, sums = group([rows.keys[:, i] for i in range(g)], rows.sums)
    columns = np.column_stack(keys)
    if rows.keys.shape[1] > g:
        # The other keys from each group's latest row (groups come out in key order).
        flat = np.ravel_multi_index(
            tuple(rows.keys[:, i] for i in range(g)),
            tuple(int(rows.keys[:, i].max()) + 1 for i in range(g)),
        )
        columns = np.column_stack([columns, rows.keys[latest(flat, rows.keys[:, -1]), g:]])
    return Rows(np.full(len(sums), lo, np.int64), columns, sums)


class RollupCache:
    """The days held, least recently used first, and the days each fold changed."""

    def __init__(self, store: DuckDBEventStore, budget_bytes: int) -> None:
        self._store = store
        self._lock = threading.Lock()
        #: Guards the log only, so the writer never waits for a load.
        self._log_lock = threading.Lock()
        self._days: HeldDays[DayKey, Day] = HeldDays(budget_bytes)
        #: The generation the days held are current for.
        self._gen = 0
        self._log: deque[tuple[int, frozenset[DayKey]]] = deque(maxlen=LOG_FOLDS)
        self._codes = Codes()

    @property
    def nbytes(self) -> int:
        """About how much memory the days held take."""
        return self._days.nbytes

    def changed(self, gen: int, days: Iterable[DayKey]) -> None:
        """The fold that makes generation ``gen`` changed the rollups of ``days`` (writer)."""
        with self._log_lock:
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
            held = {k: day for k in keys if (day := self._days.get(k)) is not None}
            missing = [k[2] for k in keys if k not in held]
            if missing:
                loaded = self._load(tenant, workflow_id, missing)
                if self._store.rollup_gen != gen:
                    return None
                for d, day in loaded.items():
                    held[(tenant, workflow_id, d)] = day
                    self._days.put((tenant, workflow_id, d), day)
            self._days.used(keys)
            return Rollups(first, [held[k] for k in keys], self._codes.values)

    def _catch_up(self, gen: int) -> bool:
        """Drop the days changed by folds up to ``gen``; False if the cache is past it."""
        if gen < self._gen:
            return False
        if gen == self._gen:
            return True
        with self._log_lock:
            folds = [keys for g, keys in self._log if self._gen < g <= gen]
        if len(folds) == (gen - self._gen) // 2:
            for keys in folds:
                self._days.drop(keys)
        else:  # more folds than the log remembers
            self._days.clear()
        self._gen = gen
        return True

    def _load(self, tenant: str, workflow_id: str, days: list[int]) -> dict[int, Day]:
        """Read ``days`` of the workflow, one statement per table and run of days."""
        day_runs = runs(days)
        params = {"tenant": tenant, "workflow": workflow_id}
        statements = []
        for a, b in day_runs:
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
            statements.append(
                (
                    f"""SELECT slot, CASE WHEN count(*) > count(t) THEN {_UNKNOWN} ELSE max(t) END
                    FROM (SELECT slot, last_start AS t FROM exec_slots {where.replace(" ORDER BY slot", "")}
                          UNION ALL
                          SELECT slot, last_ts FROM message_slots {where.replace(" ORDER BY slot", "")})
                    GROUP BY slot ORDER BY slot""",
                    params,
                )
            )
            statements.append(
                (
                    f"""SELECT {slot_of("started_at")} AS slot, duration_ms FROM executions
                    WHERE tenant = $tenant AND workflow_id = $workflow
                      AND started_at >= make_timestamp({int(a) * DAY_US}::BIGINT)
                      AND started_at < make_timestamp({(int(b) + 1) * DAY_US}::BIGINT)
                      AND status > 0 AND duration_ms IS NOT NULL
                    ORDER BY slot""",
                    params,
                )
            )
        results = self._store.query_all(statements, columns=True)
        out: dict[int, Day] = {}
        per_run = len(TABLES) + 3
        for i, (a, b) in enumerate(day_runs):
            tables = {t.name: self._rows(t, results[i * per_run + j]) for j, t in enumerate(TABLES)}
            blobs = results[i * per_run + len(TABLES)]
            latest = results[i * per_run + len(TABLES) + 1]
            finished = results[i * per_run + len(TABLES) + 2]
            latest_slots = np.asarray(latest["slot"], np.int64)
            latest_values = np.asarray(latest[list(latest)[1]], np.int64)
            duration_slots = np.asarray(finished["slot"], np.int64)
            durations = np.asarray(finished["duration_ms"], np.int64)
            bitmap_slots = blobs["slot"]
            blob_list = blobs["customers"].tolist()
            bitmaps = [FrozenBitMap.deserialize(b) for b in blob_list]
            # About the memory of a day's bitmaps and their union: 3× the serialized size.
            blob_bytes = np.array([len(b) for b in blob_list], np.int64)
            for d in range(a, b + 1):
                lo, hi = d * SLOTS_PER_DAY, (d + 1) * SLOTS_PER_DAY
                day_tables = {name: _day_rows(rows, lo, hi) for name, rows in tables.items()}
                totals = {t.name: _day_totals(t, day_tables[t.name], lo) for t in TABLES}
                execs = day_tables[EXEC.name]
                per_slot = np.zeros((SLOTS_PER_DAY, len(EXEC.sums)), np.int64)
                np.add.at(per_slot, execs.slot - lo, execs.sums)
                f0, f1 = np.searchsorted(duration_slots, [lo, hi])
                i0, i1 = np.searchsorted(bitmap_slots, [lo, hi])
                l0, l1 = np.searchsorted(latest_slots, [lo, hi])
                latest_us = np.full(SLOTS_PER_DAY, -1, np.int64)
                latest_us[latest_slots[l0:l1] - lo] = latest_values[l0:l1]
                out[d] = Day(
                    day_tables,
                    totals,
                    per_slot,
                    duration_slots[f0:f1].copy(),
                    durations[f0:f1].copy(),
                    bitmap_slots[i0:i1].tolist(),
                    bitmaps[i0:i1],
                    FrozenBitMap.union(*bitmaps[i0:i1]) if i1 > i0 else FrozenBitMap(),
                    latest_us,
                    sum(r.nbytes for r in (*day_tables.values(), *totals.values()))
                    + per_slot.nbytes
                    + latest_us.nbytes
                    + 16 * int(f1 - f0)
                    + int(blob_bytes[i0:i1].sum()) * 3
                    + 1024,
                )
        return out

    def _rows(self, table: Table, columns: Columns) -> Rows:
        """Rows from the columns of a load statement (slot, text keys, int keys, sums)."""
        names = list(columns)
        n_text, n_keys = len(table.text), len(table.text) + len(table.ints)
        keys = []
        for name in names[1 : 1 + n_text]:
            keys.append(self._codes.codes(columns[name].tolist()))  # None where NULL
        keys += [np.asarray(columns[name], np.int64) for name in names[1 + n_text : 1 + n_keys]]
        return Rows(
            np.asarray(columns[names[0]], np.int64),
            np.column_stack(keys).reshape(len(columns[names[0]]), n_keys),
            np.column_stack([np.asarray(columns[n], np.int64) for n in names[1 + n_keys :]]),
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
    read: Callable[[Rollups], T],
) -> tuple[Rollups, T]:
    """The workflow's rollups over [first_slot, last_slot] and ``read(rollups)``, of one
    fold."""
    first, last = first_slot // SLOTS_PER_DAY, last_slot // SLOTS_PER_DAY
    # Folds commit in milliseconds, seconds apart: more than one retry is rare, but a
    # loaded machine may need several, so retry for as long as a query may run.
    deadline = time.monotonic() + store.query_timeout_s
    while time.monotonic() < deadline:
        gen = store.rollup_gen
        if gen % 2 == 0:
            rolled = store.rollup_cache.days(tenant, workflow_id, first, last, gen)
            if rolled is not None:
                result = read(rolled)
                if store.rollup_gen == gen:
                    return rolled, result
        time.sleep(0.002)
    raise QueryTimeout("the data kept changing under this query; try again")
