"""A workflow's folded facts in memory, one UTC day at a time (embedded only).

Each ClickHouse statement costs 10-20 ms of analysis and planning however few
rows it reads, and a workflow answer was three or four of them. Held here as
numpy columns, the same facts add up in a few milliseconds, and ClickHouse is
left with what memory does not have: the executions of a busy workflow, the
slots a window edge cuts where their rows are not held, and whatever waits for
a fold. The DuckDB engine keeps its own rollups the same way
(``engines.duckdb.rollup_cache``).

Kept per (tenant, workflow, UTC day), as of a fold's watermark:

- its rows of ``execution_slots``, ``message_slots`` and ``node_slots``, added
  up per slot and key;
- when first needed (``executions``: a workflow with few in an answer's span),
  its folded executions, one row each (start, channel, error type, status,
  duration, customer number, id): exact in any window, so counts,
  percentiles, hours and distinct customers need no statement of their own.
  An answer leaves out those with events after its watermark, by id, and
  merges them itself;
- when first needed, the message and feedback events, the node events and the
  executions of the slots a window edge cut in an answer (the start of a
  dashboard's period cuts the same slot every time it is asked), the
  durations of its finished executions, and the customers of each slot's
  executions (bitmaps). All but the messages come from the folded executions
  as they are, so answers use them only while nothing of the tenant waits for
  a fold.

Loaded when an answer first needs the day; evicted least recently used
beyond a byte budget (``KAIE_ROLLUP_CACHE_MB``).

Staying exact: only a fold changes these (compaction adds rows up without
changing any sum as of a watermark an answer can read with). Each fold
reports the days it wrote anything for (``changed``: the old and new start of
every execution it took up, changed or not, and the days of the messages it
added up) before any answer can read with its watermark, and the days held
are current for one watermark (``_mark``): an answer with a later one first
drops the days the folds in between changed; an answer with an earlier one
(a fold finished while it started) reads the days it needs without keeping
them.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pyarrow as pa
from pyroaring import FrozenBitMap

from kaie_analytics.engines.clickhouse import sql
from kaie_analytics.engines.clickhouse.schema import (
    EXECUTION_SUMS,
    MESSAGE_ROLLUP_TYPES,
    NODE_SUMS,
    SLOT_US,
    SLOTS_FROM_US,
    SLOTS_PER_DAY,
    execution_sums,
    node_sums,
)
from kaie_analytics.engines.clickhouse.transport import Transport
from kaie_analytics.engines.sums import Codes, HeldDays, runs

#: Folds remembered; a cache further behind than this starts afresh.
LOG_FOLDS = 4096
#: (tenant, workflow, UTC day as slot // ``SLOTS_PER_DAY``).
DayKey = tuple[str, str, int]
_DAY_US = SLOTS_PER_DAY * SLOT_US


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
#: The customer numbers of executions, one row each (as events of a slot; not a table).
CUSTOMERS = Table("customers", (), ("customer_num",))


@dataclass(frozen=True, slots=True)
class Rows:
    """Sums per slot as columns, ascending by slot: ``keys`` (n × keys, text as codes)."""

    slot: np.ndarray
    keys: np.ndarray
    sums: np.ndarray


@dataclass(frozen=True, slots=True)
class Executions:
    """Executions as columns, ascending by start: µs of the start, channel and error
    type (codes; '' for none), status (0 running, 1 success, 2 failed), duration in
    ms (-1 for none), customer number (0: none; a folded execution with a customer
    has one), and the id (its ``cityHash64``, then the id itself)."""

    started_us: np.ndarray
    channel: np.ndarray
    error_type: np.ndarray
    status: np.ndarray
    duration_ms: np.ndarray
    customer_num: np.ndarray
    id_hash: np.ndarray
    execution_id: np.ndarray


@dataclass(frozen=True, slots=True)
class Events:
    """Events of a table's kind (``MESSAGES``: message and feedback events; ``NODES``:
    node events) as columns, ascending by slot: the µs of each (a node event: of its
    execution's start), its slot, its keys (codes of the table's), and its sums (the
    table's, for this one event)."""

    ts_us: np.ndarray
    slot: np.ndarray
    keys: np.ndarray
    sums: np.ndarray


#: How the events of some slots are read, per table: their columns, and where from.
_EVENTS = {
    EXECUTIONS.name: (
        f"""{sql.us("started_at")} AS t, {sql.slot_of("started_at")} AS s,
            ifNull(channel, ''), ifNull(error_type, ''), {", ".join(execution_sums("1"))}
        FROM executions FINAL
        WHERE tenant = {{tenant:String}} AND workflow_id = {{workflow:String}} AND ({{slots}})""",
        "started_at",
    ),
    MESSAGES.name: (
        f"""{sql.us("ts")} AS t, {sql.slot_of("ts")} AS s, ifNull(channel, ''),
            type = 'message.sent', type = 'message.received',
            if(type = 'feedback.submitted', ifNull(csat, 0), 0),
            type = 'feedback.submitted' AND csat IS NOT NULL
        FROM events FINAL
        WHERE tenant = {{tenant:String}} AND type IN {MESSAGE_ROLLUP_TYPES}
          AND workflow_id = {{workflow:String}} AND ({{slots}}) AND {sql.ingested(None, "{folded:Int64}")}""",
        "ts",
    ),
    CUSTOMERS.name: (
        f"""{sql.us("started_at")} AS t, {sql.slot_of("started_at")} AS s, customer_num
        FROM executions FINAL
        WHERE tenant = {{tenant:String}} AND workflow_id = {{workflow:String}} AND ({{slots}})
          AND customer_num > 0""",
        "started_at",
    ),
    NODES.name: (
        f"""{sql.us("started_at")} AS t, {sql.slot_of("started_at")} AS s, ifNull(channel, ''),
            n.2, n.3, {", ".join(node_sums("1", "n"))}
        FROM executions FINAL ARRAY JOIN nodes AS n
        WHERE tenant = {{tenant:String}} AND workflow_id = {{workflow:String}} AND ({{slots}})""",
        "started_at",
    ),
}


@dataclass(frozen=True, slots=True)
class Durations:
    """The durations (ms) of finished executions that have one, and the µs of their
    start, ascending by start."""

    started_us: np.ndarray
    duration_ms: np.ndarray


def _by_day(
    values: np.ndarray, a: int, b: int, origin: int, per_day: int
) -> Iterator[tuple[int, int, int]]:
    """Each day ``a``..``b`` and the range of its rows among ``values`` (ascending;
    day ``d`` starts at ``origin + d * per_day``)."""
    bounds = np.searchsorted(values, origin + np.arange(a, b + 2) * per_day)
    yield from zip(range(a, b + 1), bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)


def _concat(parts: Sequence[Any], empty: Any) -> Any:
    """Rows or executions of several days as one."""
    parts = [p for p in parts if len(getattr(p, fields(p)[0].name))]
    if not parts:
        return empty
    if len(parts) == 1:
        return parts[0]
    return type(empty)(
        *(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(empty))
    )


def _nbytes(value: Any) -> int:
    """About the memory of rows or executions (an id: some 64 bytes)."""
    return sum(
        getattr(value, f.name).nbytes * (9 if f.name == "execution_id" else 1)
        for f in fields(value)
    )


def _empty_rows(table: Table) -> Rows:
    return Rows(
        np.empty(0, np.int64),
        np.empty((0, len(table.keys)), np.int64),
        np.empty((0, len(table.sums)), np.int64),
    )


_NO_INTS = np.empty(0, np.int64)
_NO_DURATIONS = Durations(_NO_INTS, _NO_INTS)
_NO_EXECUTIONS = Executions(
    _NO_INTS, _NO_INTS, _NO_INTS, _NO_INTS, _NO_INTS, _NO_INTS,
    np.empty(0, np.uint64), np.empty(0, object),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class CustomerSets:
    """The numbers of the customers of the folded executions of each slot that has any
    (ascending)."""

    slots: np.ndarray
    sets: list[FrozenBitMap]

    @property
    def nbytes(self) -> int:
        return int(self.slots.nbytes) + sum(4 * len(b) + 64 for b in self.sets)


_NO_CUSTOMERS = CustomerSets(np.empty(0, np.int64), [])


@dataclass
class _Day:
    tables: dict[str, Rows]
    #: What else was read of it when first needed, per (kind, day or slot): its
    #: executions (``"executions"``), the durations of those finished
    #: (``"durations"``), the events of a slot an edge cut (a table's name).
    parts: dict[tuple[str, int], Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        held = [*self.tables.values(), *self.parts.values()]
        return sum(r.nbytes if isinstance(r, CustomerSets) else _nbytes(r) for r in held) + 512


@dataclass(frozen=True, slots=True)
class Days:
    """A run of days of one workflow, as one answer reads them."""

    tables: dict[str, Rows]
    #: Code → text value of the key columns, and a way to code more (``WorkflowDays.code``).
    values: list[str]
    cache: WorkflowDays
    #: Whose days, as of which watermark, and the slots they were asked for.
    tenant: str
    workflow_id: str
    folded: int
    first: int
    last: int

    def rows(self, table: Table) -> Rows:
        return self.tables[table.name]

    def cut_events(self, table: Table, slots: Sequence[int]) -> Events:
        """The events of ``table``'s kind of ``slots`` (ascending, in these days) as of
        the watermark."""
        return self.cache.cut_events(self.tenant, self.workflow_id, table, slots, self.folded)

    def executions(self) -> Executions:
        """The executions of these days (in order of their start), as of the watermark."""
        return self.cache.executions(
            self.tenant, self.workflow_id, self.first, self.last, self.folded
        )

    def customer_sets(self) -> CustomerSets:
        """The customers of the executions of each slot of these days."""
        return self.cache.customer_sets(
            self.tenant, self.workflow_id, self.first, self.last, self.folded
        )

    def durations(self) -> Durations:
        """The durations of these days' finished executions (in order of their start)."""
        return self.cache.durations(
            self.tenant, self.workflow_id, self.first, self.last, self.folded
        )


class WorkflowDays:
    """The days held, least recently used first, and the days each fold changed."""

    def __init__(self, transport: Transport, budget_bytes: int) -> None:
        self._transport = transport
        self._lock = threading.Lock()
        #: Guards the log only, so a fold never waits for a load.
        self._log_lock = threading.Lock()
        self._days: HeldDays[DayKey, _Day] = HeldDays(budget_bytes)
        #: The watermark the days held are current for.
        self._mark = 0
        #: (watermark before, watermark after, days changed) of each fold.
        self._log: deque[tuple[int, int, frozenset[DayKey]]] = deque(maxlen=LOG_FOLDS)
        #: The codes of the text keys ('' for none), of every day held.
        self.codes = Codes()

    @property
    def nbytes(self) -> int:
        return self._days.nbytes

    def changed(self, before: int, after: int, days: Iterable[DayKey]) -> None:
        """The fold from watermark ``before`` to ``after`` wrote rows for ``days`` (the
        fold calls this before any answer reads with ``after``)."""
        with self._log_lock:
            self._log.append((before, after, frozenset(days)))

    def code(self, values: Iterable[str | None]) -> np.ndarray:
        """Codes of text values (None: as '')."""
        return self.codes.codes(v or "" for v in values)

    def days(self, tenant: str, workflow_id: str, first: int, last: int, folded: int) -> Days:
        """The workflow's facts of slots ``first``..``last`` (whole days) as of watermark
        ``folded``."""
        keys = [
            (tenant, workflow_id, d)
            for d in range(first // SLOTS_PER_DAY, last // SLOTS_PER_DAY + 1)
        ]
        with self._lock:
            keep = self._catch_up(folded)
            held = {k: day for k in keys if keep and (day := self._days.get(k)) is not None}
            missing = [k[2] for k in keys if k not in held]
            if missing:
                for d, day in self._load(tenant, workflow_id, missing, folded).items():
                    held[(tenant, workflow_id, d)] = day
                    if keep:
                        self._days.put((tenant, workflow_id, d), day)
            if keep:
                self._days.used(keys)
        days = [held[k] for k in keys]
        return Days(
            {t.name: _concat([d.tables[t.name] for d in days], _empty_rows(t)) for t in TABLES},
            self.codes.values,
            self,
            tenant,
            workflow_id,
            folded,
            first,
            last,
        )

    def executions(
        self, tenant: str, workflow_id: str, first: int, last: int, folded: int
    ) -> Executions:
        """The workflow's folded executions of the days of slots ``first``..``last``,
        kept with their days when those are held as of watermark ``folded`` (an answer
        leaves out, by id, those with events after its watermark)."""
        days = list(range(first // SLOTS_PER_DAY, last // SLOTS_PER_DAY + 1))
        found = self._parts(
            tenant, workflow_id, folded, "executions", days, days,
            lambda missing: self._load_executions(tenant, workflow_id, missing),
        )  # fmt: skip
        return _concat([found[d] for d in days], _NO_EXECUTIONS)

    def durations(
        self, tenant: str, workflow_id: str, first: int, last: int, folded: int
    ) -> Durations:
        """The durations of the workflow's folded executions of the days of slots
        ``first``..``last``, kept likewise (exact only while none waits for a fold)."""
        days = list(range(first // SLOTS_PER_DAY, last // SLOTS_PER_DAY + 1))
        found = self._parts(
            tenant, workflow_id, folded, "durations", days, days,
            lambda missing: self._load_durations(tenant, workflow_id, missing),
        )  # fmt: skip
        return _concat([found[d] for d in days], _NO_DURATIONS)

    def customer_sets(
        self, tenant: str, workflow_id: str, first: int, last: int, folded: int
    ) -> CustomerSets:
        """The customers of the workflow's folded executions of each slot of the days of
        slots ``first``..``last``, kept likewise (exact only while none waits for a fold)."""
        days = list(range(first // SLOTS_PER_DAY, last // SLOTS_PER_DAY + 1))
        found = self._parts(
            tenant, workflow_id, folded, "customers", days, days,
            lambda missing: self._load_customer_sets(tenant, workflow_id, missing),
        )  # fmt: skip
        parts = [found[d] for d in days]
        return CustomerSets(
            np.concatenate([_NO_CUSTOMERS.slots, *(p.slots for p in parts)]),
            [b for p in parts for b in p.sets],
        )

    def cut_events(
        self, tenant: str, workflow_id: str, table: Table, slots: Sequence[int], folded: int
    ) -> Events:
        """The workflow's events of ``table``'s kind of ``slots`` (ascending) as of
        watermark ``folded``, kept with their days (when those are held)."""

        def load(missing: list[int]) -> dict[int, Events]:
            loaded = self._events(tenant, workflow_id, table, missing, folded)
            bounds = np.searchsorted(loaded.slot, [*missing, missing[-1] + 1])
            return {
                s: Events(*(getattr(loaded, f.name)[i0:i1] for f in fields(loaded)))
                for s, i0, i1 in zip(missing, bounds[:-1], bounds[1:], strict=True)
            }

        days = [s // SLOTS_PER_DAY for s in slots]
        found = self._parts(tenant, workflow_id, folded, table.name, list(slots), days, load)
        parts = [found[s] for s in slots]
        return Events(*(np.concatenate([getattr(p, f.name) for p in parts])
                        for f in fields(Events)))  # fmt: skip

    def _parts(
        self,
        tenant: str,
        workflow_id: str,
        folded: int,
        kind: str,
        keys: list[int],
        days: list[int],
        load: Callable[[list[int]], dict[int, Any]],
    ) -> dict[int, Any]:
        """Parts ``kind`` of the days (``keys``: days or slots, each in its day of
        ``days``) as of ``folded``: those held, and those ``load`` reads, kept with
        their day when it is held."""
        with self._lock:
            keep = self._catch_up(folded)
            held = {d: self._days.get((tenant, workflow_id, d)) if keep else None for d in days}
            found: dict[int, Any] = {}
            for k, d in zip(keys, days, strict=True):
                day = held[d]
                if day is not None and (kind, k) in day.parts:
                    found[k] = day.parts[(kind, k)]
            missing = [k for k in keys if k not in found]
            if missing:
                before = [(h, h.nbytes) for h in held.values() if h is not None]
                for k, part in load(missing).items():
                    found[k] = part
                    day = held[days[keys.index(k)]]
                    if day is not None:
                        day.parts[(kind, k)] = part
                # The days' bytes counted again (all of them before any is evicted).
                self._days.grew(sum(held_day.nbytes - size for held_day, size in before))
        return found

    def _events(
        self, tenant: str, workflow_id: str, table: Table, slots: Sequence[int], folded: int
    ) -> Events:
        """Read the events of ``table``'s kind of ``slots`` (ascending) as of ``folded``."""
        columns_from, time = _EVENTS[table.name]
        result = self._transport.query(
            f"SELECT {columns_from.replace('{slots}', sql.in_slots(time, slots))} ORDER BY s, t",
            {"tenant": tenant, "workflow": workflow_id, "folded": folded},
        )
        columns = [result.column(i) for i in range(result.num_columns)]
        n, k = result.num_rows, len(table.keys)
        return Events(
            np.asarray(columns[0], np.int64),
            np.asarray(columns[1], np.int64),
            np.column_stack(
                [self._coded(c) for c in columns[2 : 2 + k]] or [np.empty((n, 0), np.int64)]
            ),
            np.column_stack([np.asarray(c, np.int64) for c in columns[2 + k :]]).reshape(
                n, len(table.sums)
            ),
        )

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
        for before, after, days in log:  # in order, each fold from the one before's mark
            if before == at and after <= folded:
                chain.append(days)
                at = after
        if at == folded:
            for days in chain:
                self._days.drop(days)
        else:  # more folds than the log remembers
            self._days.clear()
        self._mark = folded
        return True

    def _load(
        self, tenant: str, workflow_id: str, days: Sequence[int], folded: int
    ) -> dict[int, _Day]:
        """Read the sums per slot of ``days`` of the workflow as of ``folded``: per run of
        consecutive days, a statement per table, side by side."""
        params = {"tenant": tenant, "workflow": workflow_id, "folded": folded}
        statements = []
        day_runs = runs(days)
        for a, b in day_runs:
            for t in TABLES:
                keys = ", ".join(t.keys)
                sums = ", ".join(f"sum({c})" for c in t.sums)
                statements.append((
                    f"""SELECT slot, {keys}, {sums} FROM {t.name}
                    WHERE tenant = {{tenant:String}} AND workflow_id = {{workflow:String}}
                      AND fold <= {{folded:Int64}}
                      AND slot BETWEEN {a * SLOTS_PER_DAY} AND {(b + 1) * SLOTS_PER_DAY - 1}
                    GROUP BY slot, {keys} ORDER BY slot""",
                    params,
                ))  # fmt: skip
        results = iter(self._transport.query_all(statements))
        out: dict[int, _Day] = {d: _Day({}) for d in days}
        for a, b in day_runs:
            for t in TABLES:
                rows = self._rows(t, next(results))
                for d, i0, i1 in _by_day(rows.slot, a, b, 0, SLOTS_PER_DAY):
                    out[d].tables[t.name] = Rows(
                        rows.slot[i0:i1].copy(), rows.keys[i0:i1].copy(), rows.sums[i0:i1].copy()
                    )
        return out

    def _of_executions(
        self, tenant: str, workflow_id: str, days: Sequence[int], select: str, rest: str
    ) -> Iterator[tuple[int, int, pa.Table]]:
        """``SELECT {select} FROM executions FINAL`` of the workflow's executions started
        in each run ``(a, b)`` of consecutive ``days``, then ``rest`` (more conditions,
        grouping, order), side by side: each run with its result."""
        params = {"tenant": tenant, "workflow": workflow_id}
        day_runs = runs(days)
        statements = []
        for a, b in day_runs:
            lo, hi = SLOTS_FROM_US + a * _DAY_US, SLOTS_FROM_US + (b + 1) * _DAY_US
            statements.append((
                f"""SELECT {select} FROM executions FINAL
                WHERE tenant = {{tenant:String}} AND workflow_id = {{workflow:String}}
                  AND started_at >= fromUnixTimestamp64Micro({lo}, 'UTC')
                  AND started_at < fromUnixTimestamp64Micro({hi}, 'UTC') {rest}""",
                params,
            ))  # fmt: skip
        results = self._transport.query_all(statements)
        for (a, b), result in zip(day_runs, results, strict=True):
            yield a, b, result

    def _load_executions(
        self, tenant: str, workflow_id: str, days: Sequence[int]
    ) -> dict[int, Executions]:
        """Read the folded executions of ``days`` of the workflow (those with events after
        a watermark are left out by the answers that read with it)."""
        out: dict[int, Executions] = {}
        for a, b, result in self._of_executions(
            tenant, workflow_id, days,
            f"""{sql.us("started_at")} AS t, ifNull(channel, ''), ifNull(error_type, ''),
                status, ifNull(duration_ms, -1), customer_num, cityHash64(execution_id),
                execution_id""",
            "ORDER BY t",
        ):  # fmt: skip
            execs = self._executions(result)
            for d, i0, i1 in _by_day(execs.started_us, a, b, SLOTS_FROM_US, _DAY_US):
                out[d] = Executions(*(getattr(execs, f.name)[i0:i1].copy() for f in fields(execs)))
        return out

    def _load_customer_sets(
        self, tenant: str, workflow_id: str, days: Sequence[int]
    ) -> dict[int, CustomerSets]:
        """Read the customers of the folded executions of each slot of ``days``."""
        out: dict[int, CustomerSets] = {}
        for a, b, result in self._of_executions(
            tenant, workflow_id, days,
            f"{sql.slot_of('started_at')} AS s, groupUniqArray(customer_num)",
            "AND customer_num > 0 GROUP BY s ORDER BY s",
        ):  # fmt: skip
            slots = np.asarray(result.column(0), np.int64)
            sets = [FrozenBitMap(v) for v in result.column(1).to_pylist()]
            for d, i0, i1 in _by_day(slots, a, b, 0, SLOTS_PER_DAY):
                out[d] = CustomerSets(slots[i0:i1].copy(), sets[i0:i1])
        return out

    def _load_durations(
        self, tenant: str, workflow_id: str, days: Sequence[int]
    ) -> dict[int, Durations]:
        """Read the durations of the folded, finished executions of ``days``."""
        out: dict[int, Durations] = {}
        for a, b, result in self._of_executions(
            tenant, workflow_id, days,
            f"{sql.us('started_at')} AS t, assumeNotNull(duration_ms)",
            "AND status > 0 AND duration_ms IS NOT NULL ORDER BY t",
        ):  # fmt: skip
            started, durations = (np.asarray(result.column(i), np.int64) for i in (0, 1))
            for d, i0, i1 in _by_day(started, a, b, SLOTS_FROM_US, _DAY_US):
                out[d] = Durations(started[i0:i1].copy(), durations[i0:i1].copy())
        return out

    def _rows(self, table: Table, result: pa.Table) -> Rows:
        """Rows of a load statement (slot, keys, sums); keys whose sums all come to zero
        (every change taken back) are no rows."""
        n, k = result.num_rows, len(table.keys)
        columns = [result.column(i) for i in range(result.num_columns)]
        sums = np.column_stack([np.asarray(c, np.int64) for c in columns[1 + k :]])
        keys = np.column_stack([self._coded(c) for c in columns[1 : 1 + k]]).reshape(n, k)
        present = sums.reshape(n, len(table.sums)).any(axis=1)
        return Rows(
            np.asarray(columns[0], np.int64)[present],
            keys[present],
            sums.reshape(n, len(table.sums))[present],
        )

    def _executions(self, result: pa.Table) -> Executions:
        columns = [result.column(i) for i in range(result.num_columns)]
        return Executions(
            np.asarray(columns[0], np.int64),
            self._coded(columns[1]),
            self._coded(columns[2]),
            np.asarray(columns[3], np.int64),
            np.asarray(columns[4], np.int64),
            np.asarray(columns[5], np.int64),
            np.asarray(columns[6], np.uint64),
            np.array(columns[7].to_pylist(), object),
        )

    def _coded(self, column: pa.ChunkedArray) -> np.ndarray:
        return self.codes.codes(column.to_pylist())
