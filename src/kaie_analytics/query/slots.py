"""Reading one workflow's numbers per 15-minute slot: rollups where right, rows elsewhere.

A *slot plan* splits the slots of a period (or of the previous and current
periods together) in two: the slots the rollups have exactly right, and the
*raw* slots, read from the executions and events themselves. Raw are the slots
cut by a period edge (an edge not on a quarter hour), and the slots of the
executions that events not yet folded touch (both where such an execution was
and where it is now). Messages not yet folded are added on top: they only add.

Whole days whose slots are all rolled up are read from the day rollups (one
row per key instead of 96). Every function here returns SQL whose rows have
one shape whatever their source, so a caller sums them without caring where
they came from. Each statement reads every slot from exactly one source, so
each is exact on its own snapshot: a fold between the plan and a statement
moves rows from "not folded" to "rolled up" without losing or doubling any.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kaie_analytics.store import executions_sql as xsql
from kaie_analytics.store import rollups
from kaie_analytics.store.activity import SLOT_US, epoch_us
from kaie_analytics.store.duckdb_store import DuckDBEventStore

#: More raw ranges than this are read with one range and a slot filter.
MAX_RANGES = 8
_SLOT = rollups.slot_of


@dataclass(frozen=True, slots=True)
class SlotPlan:
    first: int
    last: int
    raw: tuple[int, ...]
    #: Whole days (as their first slot) read from the day rollups.
    days: tuple[int, ...]
    params: dict[str, Any]

    def ranges(self, column: str) -> str:
        """A predicate on ``column`` for the raw slots (ranges zone maps can use)."""
        if not self.raw:
            return "false"
        runs = _runs(self.raw)
        if len(runs) > MAX_RANGES:
            runs = [(self.raw[0], self.raw[-1])]
            extra = f" AND {_SLOT(column)} IN {_ints(self.raw)}"
        else:
            extra = ""
        parts = [
            f"({column} >= {_ts(a * SLOT_US)} AND {column} < {_ts((b + 1) * SLOT_US)})"
            for a, b in runs
        ]
        return "((" + " OR ".join(parts) + ")" + extra + ")"

    def per_range(self, column: str, sql: str) -> str:
        """``sql`` once per run of raw slots, its ``{RANGE}`` a predicate on ``column``.

        One range per branch of a ``UNION ALL``, because zone maps skip row
        groups for a plain range but not for ranges joined by ``OR`` (worth it
        for the executions, whose row groups each span weeks of a workflow).
        """
        runs = _runs(self.raw)
        if len(runs) > MAX_RANGES:
            return sql.replace("{RANGE}", self.ranges(column))
        return " UNION ALL ".join(
            sql.replace(
                "{RANGE}",
                f"{column} >= {_ts(a * SLOT_US)} AND {column} < {_ts((b + 1) * SLOT_US)}",
            )
            for a, b in runs
        )


def _ts(us: int) -> str:
    # An integer we computed, never user input.
    return f"make_timestamp({int(us)}::BIGINT)"


def _ints(values: tuple[int, ...]) -> str:
    """A literal list of integers we computed (a plain filter, where a list
    parameter would cost a join)."""
    return "(" + ", ".join(str(int(v)) for v in values) + ")"


def plan(
    store: DuckDBEventStore,
    tenant: str,
    workflow_id: str,
    lo: datetime,
    hi: datetime,
    edges: tuple[datetime, ...] = (),
    owners: dict[int, int] | None = None,
) -> SlotPlan:
    """The slot plan of [lo, hi] (naive UTC, inclusive), cut also at ``edges``.

    Whole days come from the day rollups when no raw slot is in them, they are
    on one side of ``edges[0]``, and (with ``owners``, slot → bucket) all their
    slots are in one bucket.
    """
    first, last = epoch_us(lo) // SLOT_US, epoch_us(hi) // SLOT_US
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
    if store.has_pending(tenant):
        for (slot,) in store.query(
            f"""SELECT DISTINCT {_SLOT("started_at")} FROM ({xsql.pending_versions()})
                WHERE workflow_id = $workflow AND started_at BETWEEN $lo AND $hi""",
            params,
        ):
            raw.add(int(slot))
    ordered = tuple(sorted(raw))
    cut = epoch_us(params["cur_lo"])
    per_day = rollups.SLOTS_PER_DAY
    days = []
    for d in range(-(-first // per_day) * per_day, last + 2 - per_day, per_day):
        end = d + per_day - 1
        if any(d <= s <= end for s in ordered):
            continue
        if d * SLOT_US < cut < (end + 1) * SLOT_US:
            continue
        if owners is not None and d in owners and owners[d] != owners.get(end):
            continue
        days.append(d)
    return SlotPlan(first, last, ordered, tuple(days), params)


def _runs(values: list[int] | tuple[int, ...], step: int = 1) -> list[tuple[int, int]]:
    """Sorted integers as runs ``(first, last)`` of consecutive values ``step`` apart."""
    runs: list[list[int]] = []
    for v in values:
        if runs and runs[-1][1] == v - step:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return [(a, b) for a, b in runs]


def _in_runs(runs: list[tuple[int, int]]) -> str:
    # Ranges (of integers we computed), so zone maps skip everything else.
    return "(" + " OR ".join(f"slot BETWEEN {int(a)} AND {int(b)}" for a, b in runs) + ")"


def _rolled(p: SlotPlan, table: str, *, days: bool = True) -> str:
    """Rollup rows of the plan's whole days (day rows) and other non-raw slots."""
    # Slot ranges not read otherwise: [first, last] minus raw slots and whole days.
    taken = [(s, s) for s in p.raw]
    day_runs: list[tuple[int, int]] = []
    if days and p.days:
        day_runs = _runs(p.days, rollups.SLOTS_PER_DAY)
        taken += [(a, b + rollups.SLOTS_PER_DAY - 1) for a, b in day_runs]
    slot_runs = []
    at = p.first
    for a, b in sorted(taken):
        if a > at:
            slot_runs.append((at, a - 1))
        at = max(at, b + 1)
    if at <= p.last:
        slot_runs.append((at, p.last))
    parts = []
    if day_runs:
        parts.append(
            f"SELECT * FROM {rollups.DAY_TABLES[table]}"
            f" WHERE tenant = $tenant AND workflow_id = $workflow AND {_in_runs(day_runs)}"
        )
    if slot_runs or not parts:
        parts.append(
            f"SELECT * FROM {table} WHERE tenant = $tenant AND workflow_id = $workflow"
            f" AND {_in_runs(slot_runs) if slot_runs else 'false'}"
        )
    return " UNION ALL ".join(parts)


def _raw(p: SlotPlan, sql: str) -> str:
    """``UNION ALL`` and the raw rows of ``sql`` when the plan has raw slots, else nothing."""
    return f"UNION ALL {sql}" if p.raw else ""


#: Whether a rollup row (never cut by ``$cur_lo``) is in the current period.
_ROLLED_CUR = "slot * " + str(SLOT_US) + " >= epoch_us($cur_lo) AS cur"


def exec_rows(
    store: DuckDBEventStore, p: SlotPlan, *, days: bool = True, customers: bool = False
) -> str:
    """Rows (slot, cur, channel, error_type, total, ok, failed, dur_sum, dur_n) of the plan.

    Without ``days``, every row is one slot's (for numbers per slot or hour).
    With ``customers``, two more columns give the customers of the raw rows of
    the current period: ``nums`` (their numbers) and ``strangers`` (the ids of
    those with no number yet, new since the last fold); NULL on rollup rows.
    """
    extra = ", NULL::UINTEGER[] AS nums, NULL::VARCHAR[] AS strangers" if customers else ""
    rolled = f"""
        SELECT slot, {_ROLLED_CUR}, channel, error_type, total, ok, failed, dur_sum, dur_n{extra}
        FROM ({_rolled(p, "exec_slots", days=days)})"""
    if not p.raw:
        return rolled
    tenant = p.params["tenant"]
    rows = p.per_range(
        "x.started_at",
        f"""SELECT {_SLOT("x.started_at")} AS slot, x.started_at >= $cur_lo AS cur, x.channel,
            x.error_type, x.customer_id, x.customer_num, x.status, x.duration_ms
        FROM ({store.executions_sql(tenant, numbered=True)}) x
        WHERE x.workflow_id = $workflow AND x.started_at BETWEEN $lo AND $hi AND {{RANGE}}""",
    )
    keys = "x.slot, x.cur, x.channel, x.error_type"
    if not customers:
        raw = f"SELECT {keys}, {rollups.EXEC_SUMS} FROM ({rows}) x GROUP BY ALL"
    elif not store.has_pending(tenant):
        # Every execution is folded, so every customer has its number.
        raw = f"""
            SELECT {keys}, {rollups.EXEC_SUMS},
                list(DISTINCT x.customer_num) FILTER (WHERE x.cur AND x.customer_num IS NOT NULL),
                NULL::VARCHAR[]
            FROM ({rows}) x GROUP BY ALL"""
    else:
        # Executions merged on the fly have no number yet: look their few
        # customers up (a semi-join); those without one are new.
        raw = f"""
            WITH rx AS ({rows}),
            known AS (
                SELECT customer_id, num FROM customer_numbers
                WHERE tenant = $tenant AND customer_id IN
                    (SELECT customer_id FROM rx WHERE cur AND customer_num IS NULL)
            )
            SELECT {keys}, {rollups.EXEC_SUMS},
                list(DISTINCT coalesce(x.customer_num, k.num))
                    FILTER (WHERE x.cur AND coalesce(x.customer_num, k.num) IS NOT NULL),
                list(DISTINCT x.customer_id)
                    FILTER (WHERE x.cur AND coalesce(x.customer_num, k.num) IS NULL
                            AND x.customer_id IS NOT NULL)
            FROM rx x LEFT JOIN known k USING (customer_id)
            GROUP BY ALL"""
    return f"{rolled} UNION ALL ({raw})"


def message_rows(store: DuckDBEventStore, p: SlotPlan) -> str:
    """Rows (slot, cur, channel, sent, received, csat_sum, csat_n) of the plan."""
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
            AND e.seq > (SELECT value FROM store_state WHERE key = '{rollups.WATERMARK}')
            AND NOT {p.ranges("e.ts")}"""
        )
    sql = f"""
        SELECT slot, {_ROLLED_CUR}, channel, sent, received, csat_sum, csat_n
        FROM ({_rolled(p, "message_slots")})"""
    if parts:
        sql += f"""
        UNION ALL
        SELECT {_SLOT("e.ts")}, e.ts >= $cur_lo, e.channel, {rollups.MESSAGE_SUMS}
        FROM ({" UNION ALL ".join(parts)}) e GROUP BY ALL"""
    return sql


def node_rows(store: DuckDBEventStore, p: SlotPlan) -> str:
    """Rows (node_id, node_type, type_ts, n, ok, dur_sum, dur_n, errors) of the plan."""
    raw = f"""
        SELECT n.node_id, {rollups.NODE_SUMS}
        FROM ({
        p.per_range(
            "x.started_at",
            f'''SELECT unnest(x.nodes) AS n FROM ({store.executions_sql(p.params["tenant"])}) x
              WHERE x.workflow_id = $workflow AND x.started_at BETWEEN $lo AND $hi
                AND {{RANGE}}''',
        )
    })
        GROUP BY ALL"""
    return f"""
        SELECT node_id, node_type, type_ts, n, ok, dur_sum, dur_n, errors
        FROM ({_rolled(p, "node_slots")})
        {_raw(p, raw)}"""


def customer_bitmaps(p: SlotPlan) -> str:
    """Rows (slot, customers) of the current period's rolled-up slots and days."""
    return (
        f"SELECT slot, customers FROM ({_rolled(p, 'exec_customers')})"
        f" WHERE slot * {SLOT_US} >= epoch_us($cur_lo)"
    )
