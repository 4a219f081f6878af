"""Workflow metrics and performance (spec/METRICS.md), compiled to DuckDB SQL.

A request becomes a frozen query object first (``parse_*``); ``run_*`` compiles
it to a few parameterised statements over the tenant's executions and events,
and assembles the response. Tenant, workflow, period and bucket bounds are
always bound parameters; only names from closed registries reach SQL text.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import numpy as np
from pyroaring import BitMap

from kaie_analytics.analytics import numbers as num
from kaie_analytics.analytics.periods import (
    Period,
    bucket_label,
    buckets,
    parse_bool,
    parse_granularity,
    parse_list,
    parse_period,
    parse_timezone,
)
from kaie_analytics.engines.duckdb import rollup_cache, rollups, slots
from kaie_analytics.engines.duckdb.activity import SLOT_US, epoch_us
from kaie_analytics.engines.duckdb.rollup_cache import (
    EXEC,
    MESSAGES,
    NODES,
    Rollups,
    read_with_rollups,
)
from kaie_analytics.engines.duckdb.store import Columns, DuckDBEventStore
from kaie_analytics.errors import InvalidMetrics, InvalidParameter, WorkflowNotFound

METRICS = (
    "total_executions",
    "successful_executions",
    "failed_executions",
    "success_rate",
    "average_duration_ms",
    "total_messages_sent",
    "total_messages_received",
    "unique_customers",
    "customer_satisfaction",
    "channel_breakdown",
)
GROUP_BY = ("channel", "customer_segment")


@dataclass(frozen=True, slots=True)
class WorkflowMetricsQuery:
    tenant: str
    workflow_id: str
    period: Period
    granularity: str
    metrics: tuple[str, ...]
    group_by: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class WorkflowPerformanceQuery:
    tenant: str
    workflow_id: str
    period: Period
    include_nodes: bool
    include_channels: bool


def _one(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = params.get(name)
    return values[-1] if values else None


def parse_metrics_query(
    tenant: str, workflow_id: str, params: Mapping[str, Sequence[str]]
) -> WorkflowMetricsQuery:
    tz = parse_timezone(_one(params, "timezone"))
    period = parse_period(_one(params, "start_date"), _one(params, "end_date"), tz)
    granularity = parse_granularity(_one(params, "granularity"))
    metrics = parse_list(params, "metrics")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise InvalidMetrics(
            f"unknown metric(s) {', '.join(unknown)}; valid metrics: {', '.join(METRICS)}",
            field="metrics",
        )
    group_by = parse_list(params, "group_by")
    bad = [g for g in group_by if g not in GROUP_BY]
    if bad:
        raise InvalidParameter(
            f"cannot group by {', '.join(bad)}; valid fields: {', '.join(GROUP_BY)}",
            field="group_by",
        )
    return WorkflowMetricsQuery(
        tenant, workflow_id, period, granularity, metrics or METRICS, group_by
    )


def parse_performance_query(
    tenant: str, workflow_id: str, params: Mapping[str, Sequence[str]]
) -> WorkflowPerformanceQuery:
    tz = parse_timezone(_one(params, "timezone"))
    period = parse_period(_one(params, "start_date"), _one(params, "end_date"), tz)
    return WorkflowPerformanceQuery(
        tenant,
        workflow_id,
        period,
        parse_bool(_one(params, "include_nodes"), "include_nodes", True),
        parse_bool(_one(params, "include_channels"), "include_channels", True),
    )


# --------------------------------------------------------------------- SQL

SEGMENTS_SQL = """
    SELECT customer_id, arg_max(segment, ts) AS segment
    FROM events
    WHERE tenant = $tenant AND type = 'customer.updated' AND segment IS NOT NULL
    GROUP BY customer_id
"""


def _exec_cte(store: DuckDBEventStore, tenant: str, with_segment: bool) -> str:
    """The workflow's executions started in [$lo, $hi], with ``t`` = start."""
    base = f"""
        SELECT *, started_at AS t FROM ({store.executions_sql(tenant)})
        WHERE workflow_id = $workflow AND started_at BETWEEN $lo AND $hi
    """
    if not with_segment:
        return base
    return f"SELECT x.*, seg.segment FROM ({base}) x LEFT JOIN ({SEGMENTS_SQL}) seg USING (customer_id)"


def _event_cte() -> str:
    """The workflow's messages and feedback in [$lo, $hi], with their customer's segment."""
    return f"""
        SELECT x.*, seg.segment FROM (
            SELECT type, ts AS t, channel, customer_id, csat FROM events
            WHERE tenant = $tenant AND workflow_id = $workflow
              AND type IN ('message.sent', 'message.received', 'feedback.submitted')
              AND ts BETWEEN $lo AND $hi
        ) x LEFT JOIN ({SEGMENTS_SQL}) seg USING (customer_id)
    """


_EXEC_FIELDS = ("total", "ok", "failed", "dur_sum", "dur_n")
_EVENT_FIELDS = ("sent", "received", "csat_sum", "csat_n")


def _params(q: WorkflowMetricsQuery | WorkflowPerformanceQuery, period: Period) -> dict[str, Any]:
    return {
        "tenant": q.tenant,
        "workflow": q.workflow_id,
        "lo": period.start_naive,
        "hi": period.end_naive,
    }


def _ensure_workflow(store: DuckDBEventStore, tenant: str, workflow_id: str) -> None:
    if store.workflow(tenant, workflow_id) is None:
        raise WorkflowNotFound(f"no workflow {workflow_id!r} for this tenant", field="workflow_id")


def _sums(
    store: DuckDBEventStore, q: WorkflowMetricsQuery, params: dict[str, Any], keys: str, group: str
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Sums of executions (with distinct customers) and of messages/feedback, per group key.

    ``keys`` selects the key columns (registry expressions only), ``group`` is
    the GROUP BY clause; rows carry their customer's latest ``segment``.
    """
    n_keys = keys.count(" AS ")
    out: dict[tuple[Any, ...], dict[str, Any]] = defaultdict(dict)
    sources = (
        (
            f"({_exec_cte(store, q.tenant, True)}) x",
            f"{rollups.EXEC_SUMS}, count(DISTINCT x.customer_id)",
            (*_EXEC_FIELDS, "customers"),
        ),
        (f"({_event_cte()}) e", rollups.MESSAGE_SUMS, _EVENT_FIELDS),
    )
    for source, agg, fields in sources:
        sql = f"SELECT {keys}, {agg} FROM {source} GROUP BY {group}"
        for row in store.query(sql, params):
            out[tuple(row[:n_keys])].update(zip(fields, row[n_keys:], strict=True))
    return out


def metrics_block(raw: Mapping[str, Any], channels: dict[str, int] | None) -> dict[str, Any]:
    """The metrics of spec/METRICS.md from raw sums (shared with custom reports)."""
    total, ok, failed = raw.get("total") or 0, raw.get("ok") or 0, raw.get("failed") or 0
    return {
        "total_executions": total,
        "successful_executions": ok,
        "failed_executions": failed,
        "success_rate": num.rate(ok, ok + failed),
        "average_duration_ms": num.avg_ms(raw.get("dur_sum"), raw.get("dur_n") or 0),
        "total_messages_sent": raw.get("sent") or 0,
        "total_messages_received": raw.get("received") or 0,
        "unique_customers": raw.get("customers") or 0,
        "customer_satisfaction": num.mean(raw.get("csat_sum"), raw.get("csat_n") or 0, 2),
        "channel_breakdown": channels if channels is not None else {},
    }


_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)


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


#: Per bucket: numbers of raw customers, and ids of raw customers with none yet.
RawCustomers = dict[int, tuple[list[int], set[str]]]
_FIELDS = (*_EXEC_FIELDS, *_EVENT_FIELDS)
_MESSAGES_AT = len(_EXEC_FIELDS)


def _add_at(target: list[int], at: int, values: list[int]) -> None:
    for i, value in enumerate(values):
        target[at + i] += value


class _Sums:
    """Execution and message sums per (period, channel) and per bucket, with the raw
    rows' customers per bucket. A sum over nothing is 0 here: every mean divides
    by a count that is then 0."""

    def __init__(self) -> None:
        self.by_channel: dict[tuple[bool, Any], list[int]] = {}
        self.series: dict[int, list[int]] = {}
        self.raw_customers: RawCustomers = defaultdict(lambda: ([], set()))

    def add(self, cur: bool, channel: Any, bucket: int | None, at: int, values: list[int]) -> None:
        """Add ``values`` (fields from ``_FIELDS[at]`` on) for a channel of a period, and
        for a bucket of the current period unless ``bucket`` is None."""
        _add_at(self.by_channel.setdefault((cur, channel), [0] * len(_FIELDS)), at, values)
        if bucket is not None:
            self.add_bucket(bucket, at, values)

    def add_bucket(self, bucket: int, at: int, values: list[int]) -> None:
        _add_at(self.series.setdefault(bucket, [0] * len(_FIELDS)), at, values)

    def add_rolled(
        self,
        rolled: Rollups,
        table: rollup_cache.Table,
        at: int,
        p: slots.SlotPlan,
        owners: slots.Owners,
        cur_first: int,
    ) -> None:
        """Add the rollups of ``table`` of the plan's non-raw slots, summed per channel
        and per bucket (a whole day inside one bucket as its totals)."""
        cuts = np.array(sorted({cur_first, *owners.edges}), np.int64)
        rows = rolled.rows(table, p.first, p.last, p.raw, cuts)
        cur = rows.slot >= cur_first
        values = rolled.values
        (is_cur, channel), sums = rollup_cache.group(
            [cur.astype(np.int64), rows.keys[:, 0]], rows.sums
        )
        for c, ch, v in zip(is_cur.tolist(), channel.tolist(), sums.tolist(), strict=True):
            self.add(bool(c), values[ch], None, at, v)
        (bucket,), sums = rollup_cache.group([owners.buckets(rows.slot[cur])], rows.sums[cur])
        for b, v in zip(bucket.tolist(), sums.tolist(), strict=True):
            self.add_bucket(b, at, v)

    def add_raw(
        self, x: slots.RawExecutions, messages: list[tuple[Any, ...]], owners: slots.Owners
    ) -> None:
        """Add the raw executions (with their customers) and messages."""
        channels, channel = slots.factorize(x.channel)
        sums = x.sums()
        (is_cur, ch), by_channel = rollup_cache.group([x.cur.astype(np.int64), channel], sums)
        for c, code, v in zip(is_cur.tolist(), ch.tolist(), by_channel.tolist(), strict=True):
            self.add(bool(c), channels[code], None, 0, v)
        bucket = owners.buckets(x.slot[x.cur])
        (buckets,), by_bucket = rollup_cache.group([bucket], sums[x.cur])
        for b, v in zip(buckets.tolist(), by_bucket.tolist(), strict=True):
            self.add_bucket(b, 0, v)
        num, customer_id = x.num[x.cur], x.customer_id[x.cur]
        for b, n, c in zip(bucket.tolist(), num.tolist(), customer_id.tolist(), strict=True):
            if n >= 0:
                self.raw_customers[b][0].append(n)
            elif c is not None:
                self.raw_customers[b][1].add(c)
        for slot, cur, channel_v, type_, n, csat_sum, csat_n in messages:
            acc = [0, 0, 0, 0]
            slots.add_messages(acc, type_, n, csat_sum, csat_n)
            self.add(cur, channel_v, owners.bucket(slot) if cur else None, _MESSAGES_AT, acc)

    def totals(self) -> dict[bool, dict[str, Any]]:
        """Per period (current: True), the sums over every channel."""
        out: dict[bool, dict[str, Any]] = {}
        for (cur, _), vector in self.by_channel.items():
            total = out.setdefault(cur, dict.fromkeys(_FIELDS, 0))
            for field, value in zip(_FIELDS, vector, strict=True):
                total[field] += value
        return out

    def channels(self, cur: bool) -> dict[Any, dict[str, Any]]:
        """Per channel, the sums of one period."""
        return {
            ch: dict(zip(_FIELDS, v, strict=True))
            for (c, ch), v in self.by_channel.items()
            if c == cur
        }

    def bucket(self, i: int) -> dict[str, Any]:
        return dict(zip(_FIELDS, self.series.get(i, [0] * len(_FIELDS)), strict=True))


def _bucket_customers(
    rolled: Rollups,
    p: slots.SlotPlan,
    cur_first: int,
    raw: RawCustomers,
    owners: slots.Owners,
) -> tuple[int, list[int]]:
    """Distinct customers of the current period's executions, overall and per bucket."""
    unions = []
    for bucket, (a, b) in enumerate(owners.bounds()):
        customers = rolled.customers(max(a, cur_first), min(b, p.last), p.raw)
        numbers, _ = raw.get(bucket, ((), ()))
        if numbers:
            customers |= BitMap(numbers)
        unions.append(customers)
    counts = [len(u) + len(raw[b][1]) if b in raw else len(u) for b, u in enumerate(unions)]
    everyone = BitMap.union(*unions) if unions else BitMap()
    all_strangers: set[str] = set().union(*(s for _, s in raw.values()))
    return len(everyone) + len(all_strangers), counts


def run_workflow_metrics(store: DuckDBEventStore, q: WorkflowMetricsQuery) -> dict[str, Any]:
    _ensure_workflow(store, q.tenant, q.workflow_id)
    period = q.period
    previous = period.previous()
    starts = [b.astimezone(UTC).replace(tzinfo=None) for b in buckets(period, q.granularity)]
    owners = slots.Owners.of(starts, period.end_naive)
    lo, hi = previous.start_naive, period.end_naive

    def read() -> tuple[slots.SlotPlan, list[Columns | None]]:
        # One plan over the previous and current periods, cut where they meet.
        p = slots.plan(store, q.tenant, q.workflow_id, lo, hi, edges=(period.start_naive,))
        rows = (slots.exec_rows(store, p), slots.message_rows(store, p))
        statements = [(sql, p.params) if sql is not None else None for sql in rows]
        if "channel" in q.group_by:
            statements.append(
                (
                    f"""SELECT channel, count(DISTINCT customer_id)
                        FROM ({_exec_cte(store, q.tenant, False)}) GROUP BY ALL""",
                    _params(q, period),
                )
            )
        return p, _query_some(store, statements)

    # The statements run side by side, each on its own snapshot, and with the
    # rollups of one fold: every slot is read from exactly one source, so the
    # answer is exact; events that arrive meanwhile may show in some, not others.
    rolled, (p, (exec_raw, message_raw, *per_channel)) = read_with_rollups(
        store, q.tenant, q.workflow_id, *slots.span(lo, hi), read
    )
    # Rolled-up slots are never cut by the period's start: theirs is a slot edge.
    cur_first = -(-epoch_us(period.start_naive) // SLOT_US)
    sums = _Sums()
    sums.add_rolled(rolled, EXEC, 0, p, owners, cur_first)
    sums.add_rolled(rolled, MESSAGES, _MESSAGES_AT, p, owners, cur_first)
    sums.add_raw(slots.raw_executions(p, exec_raw), _rows(message_raw), owners)
    totals = sums.totals()
    customers, per_bucket = _bucket_customers(rolled, p, cur_first, sums.raw_customers, owners)
    by_channel = sums.channels(True)
    for ch, n in _rows(per_channel[0]) if per_channel else ():
        by_channel.setdefault(ch, {})["customers"] = n
    channels = {
        ch: v["total"]
        for ch, v in sorted(by_channel.items(), key=lambda kv: str(kv[0]))
        if ch is not None and v.get("total")
    }
    current = metrics_block({**totals.get(True, {}), "customers": customers}, channels)
    prev = metrics_block(totals.get(False, {}), None)
    daily = []
    for i, start in enumerate(starts):
        block = metrics_block({**sums.bucket(i), "customers": per_bucket[i]}, None)
        daily.append(
            {
                "date": bucket_label(start.replace(tzinfo=UTC), q.granularity, period.tz),
                "executions": block["total_executions"],
                "success_rate": block["success_rate"],
                "average_duration_ms": block["average_duration_ms"],
                "messages_sent": block["total_messages_sent"],
                "messages_received": block["total_messages_received"],
                "unique_customers": block["unique_customers"],
            }
        )
    data: dict[str, Any] = {
        "workflow_id": q.workflow_id,
        "period": period.render(),
        "metrics": {k: current[k] for k in q.metrics},
        "trends": {
            "execution_trend": num.trend(current["total_executions"], prev["total_executions"]),
            "success_rate_trend": num.trend(current["success_rate"], prev["success_rate"]),
            "duration_trend": num.trend(
                current["average_duration_ms"], prev["average_duration_ms"]
            ),
        },
        "daily_metrics": daily,
    }
    if q.group_by:
        data["groups"] = _groups(store, q, by_channel)
    return data


def _groups(
    store: DuckDBEventStore, q: WorkflowMetricsQuery, by_channel: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    groups = []
    for field in q.group_by:
        blocks: dict[Any, dict[str, Any]] = {}
        if field == "channel":
            for ch, v in by_channel.items():
                blocks[ch] = metrics_block(
                    v, {ch: v["total"]} if ch is not None and v.get("total") else {}
                )
        else:
            per = _sums(
                store,
                q,
                _params(q, q.period),
                "segment AS segment, grouping(channel) AS g, channel AS channel",
                "GROUPING SETS ((segment), (segment, channel))",
            )
            for (seg, g, _), v in per.items():
                if g:
                    chans = {
                        ch: w["total"]
                        for (s2, g2, ch), w in sorted(per.items(), key=lambda kv: str(kv[0][2]))
                        if s2 == seg and not g2 and ch is not None and w.get("total")
                    }
                    blocks[seg] = metrics_block(v, chans)
        for key in sorted(blocks, key=lambda k: (k is None, str(k))):
            groups.append({field: key, "metrics": {m: blocks[key][m] for m in q.metrics}})
    return groups


# ------------------------------------------------------------- performance


def _utc_offsets_us(slots_: np.ndarray, tz: tzinfo) -> np.ndarray:
    """The UTC offset of ``tz`` (µs) at the start of each slot.

    Looked up once per UTC day and per slot only on days whose offset at the
    start and the end differ (no zone changes its offset twice in one day).
    """
    days = slots_ // rollups.SLOTS_PER_DAY
    out = np.empty(len(slots_), np.int64)
    for day in np.unique(days).tolist():
        start = _EPOCH_UTC + timedelta(days=day)
        first = start.astimezone(tz).utcoffset() or timedelta(0)
        end = (start + timedelta(days=1, microseconds=-1)).astimezone(tz).utcoffset()
        on_day = days == day
        if first == (end or timedelta(0)):
            out[on_day] = first // timedelta(microseconds=1)
            continue
        for i in np.flatnonzero(on_day).tolist():
            at = _EPOCH_UTC + timedelta(microseconds=int(slots_[i]) * SLOT_US)
            out[i] = (at.astimezone(tz).utcoffset() or timedelta(0)) // timedelta(microseconds=1)
    return out


def _hours(
    slots_: np.ndarray, counts: list[int], tz: tzinfo
) -> tuple[dict[int, int], dict[int, int]]:
    """Executions per local clock hour and per local hour of the day, from per-slot counts.

    A clock hour is keyed by the UTC second it starts at, so a repeated hour when
    clocks go back counts twice.
    """
    if not len(slots_):
        return {}, {}
    local_us = slots_ * SLOT_US + _utc_offsets_us(slots_, tz)
    minute = local_us // 60_000_000 % 60
    clock = slots_ * (SLOT_US // 1_000_000) - minute * 60
    hour = local_us // 3_600_000_000 % 24
    n = np.array(counts, np.int64)[:, None]
    (clock_keys,), per_clock = rollup_cache.group([clock - clock.min()], n)
    (hour_keys,), per_hour = rollup_cache.group([hour], n)
    return (
        dict(zip((clock_keys + clock.min()).tolist(), per_clock[:, 0].tolist(), strict=True)),
        dict(zip(hour_keys.tolist(), per_hour[:, 0].tolist(), strict=True)),
    )


#: Group whole days by their totals everywhere.
_NO_CUTS = np.empty(0, np.int64)


def _nodes(rolled: Rollups, p: slots.SlotPlan, raw: list[Any]) -> list[tuple[Any, ...]]:
    """(node_id, type, events, ok, dur_sum, dur_n, errors), most events first, then node_id.

    ``raw``: the node events of each raw execution. A node's type is its latest
    one (``type_ts``), over rollups and raw events.
    """
    x = rolled.rows(NODES, p.first, p.last, p.raw, _NO_CUTS)
    node, type_code, type_ts = x.keys[:, 0], x.keys[:, 1], x.keys[:, 2]
    (ids,), sums = rollup_cache.group([node], x.sums)
    last = rollup_cache.latest(node, type_ts)
    values = rolled.values
    #: Per node: (type_ts, type) of its latest event, and its sums.
    latest: dict[Any, tuple[int, Any]] = {}
    totals: dict[Any, list[int]] = {}
    for n, i, v in zip(ids.tolist(), last.tolist(), sums.tolist(), strict=True):
        latest[values[n]] = (int(type_ts[i]), values[int(type_code[i])])
        totals[values[n]] = v
    for events in raw:
        for e in events if events is not None else ():
            ts = epoch_us(e["ts"]) if e["ts"] is not None else -1
            if e["node_id"] not in latest or ts > latest[e["node_id"]][0]:
                latest[e["node_id"]] = (ts, e["node_type"])
            slots.add_node(totals.setdefault(e["node_id"], [0] * 5), e["ok"], e["dur"])
    ordered = sorted(totals.items(), key=lambda kv: (-kv[1][0], kv[0] is None, kv[0] or ""))
    return [(node_id, latest[node_id][1], *v) for node_id, v in ordered]


def run_workflow_performance(
    store: DuckDBEventStore, q: WorkflowPerformanceQuery
) -> dict[str, Any]:
    _ensure_workflow(store, q.tenant, q.workflow_id)
    period = q.period
    lo, hi = period.start_naive, period.end_naive

    def read() -> tuple[slots.SlotPlan, slots.RawExecutions]:
        p = slots.plan(store, q.tenant, q.workflow_id, lo, hi)
        raw = slots.exec_rows(store, p, nodes=q.include_nodes)
        folded = store.query_columns(raw, p.params) if raw is not None else None
        return p, slots.raw_executions(p, folded)

    # With the rollups of one fold (see run_workflow_metrics).
    rolled, (p, raw) = read_with_rollups(store, q.tenant, q.workflow_id, *slots.span(lo, hi), read)
    # Percentiles over every duration (numpy's linear interpolation, as the spec's).
    durations = np.concatenate(
        [
            rolled.durations(p.first, p.last, p.raw),
            raw.duration_ms[raw.timed],
        ]
    )
    quantiles = np.quantile(durations, [0.5, 0.95, 0.99]).tolist() if len(durations) else None
    values = rolled.values
    # Executions per slot (for the peak hours) and per (channel, error type).
    slot_of, per_slot = rolled.per_slot(p.first, p.last, p.raw)
    slot_counts: dict[int, int] = dict(zip(slot_of.tolist(), per_slot.tolist(), strict=True))
    x = rolled.rows(EXEC, p.first, p.last, p.raw, _NO_CUTS)
    (channel, error), sums = rollup_cache.group([x.keys[:, 0], x.keys[:, 1]], x.sums)
    by_key: dict[tuple[Any, Any], list[int]] = {
        (values[c], values[e]): v
        for c, e, v in zip(channel.tolist(), error.tolist(), sums.tolist(), strict=True)
    }
    (raw_slots,), counts = rollup_cache.group(
        [raw.slot - p.first], np.ones((len(raw.slot), 1), np.int64)
    )
    for slot, n in zip((raw_slots + p.first).tolist(), counts[:, 0].tolist(), strict=True):
        slot_counts[slot] = slot_counts.get(slot, 0) + n
    channels, channel_code = slots.factorize(raw.channel)
    errors, error_code = slots.factorize(raw.error_type)
    (channel, error), sums = rollup_cache.group([channel_code, error_code], raw.sums())
    for c, e, v in zip(channel.tolist(), error.tolist(), sums.tolist(), strict=True):
        _add_at(by_key.setdefault((channels[c], errors[e]), [0] * 5), 0, v)
    total = ok = failed = dn = dsum = 0
    by_error: dict[str, int] = defaultdict(int)
    by_channel: dict[str, list[int]] = {}
    for (channel_v, error_type), (n, n_ok, n_failed, d_sum, d_n) in by_key.items():
        total, ok, failed, dsum, dn = (
            total + n,
            ok + n_ok,
            failed + n_failed,
            dsum + d_sum,
            dn + d_n,
        )
        if error_type is not None and n_failed:
            by_error[error_type] += n_failed
        if channel_v is not None:
            _add_at(by_channel.setdefault(channel_v, [0] * 5), 0, [n, n_ok, n_failed, d_sum, d_n])
    per_clock_hour, per_hour_of_day = _hours(
        np.fromiter(slot_counts, np.int64, len(slot_counts)), list(slot_counts.values()), period.tz
    )
    nodes = _nodes(rolled, p, raw.nodes) if q.include_nodes else []
    finished = ok + failed
    p50, p95, p99 = quantiles if quantiles is not None else (None, None, None)
    peak_hour = (
        min(per_hour_of_day, key=lambda h: (-per_hour_of_day[h], h)) if per_hour_of_day else None
    )
    hours = period.hours
    performance: dict[str, Any] = {
        "execution_time": {
            "average_ms": num.avg_ms(dsum, dn),
            "median_ms": num.round_ms(p50),
            "p95_ms": num.round_ms(p95),
            "p99_ms": num.round_ms(p99),
        },
        "throughput": {
            "executions_per_hour": num.round_half_up(total / hours, 2) if hours > 0 else None,
            "peak_executions_per_hour": max(per_clock_hour.values(), default=0),
            "peak_hour": f"{peak_hour:02d}:00" if peak_hour is not None else None,
        },
        "error_rate": {
            "overall": num.rate(failed, finished),
            "by_error_type": {err: num.rate(n, finished) for err, n in sorted(by_error.items())},
        },
    }
    if q.include_nodes:
        performance["node_performance"] = [
            {
                "node_id": node_id,
                "type": node_type,
                "execution_count": count,
                "success_rate": num.rate(done, count),
                "average_duration_ms": num.avg_ms(dsum_n, dcount),
                "error_count": errors,
            }
            for node_id, node_type, count, done, dsum_n, dcount, errors in nodes
        ]
    if q.include_channels:
        performance["channel_performance"] = {
            ch: {
                "executions": n,
                "success_rate": num.rate(c_ok, c_ok + c_failed),
                "average_duration_ms": num.avg_ms(c_dsum, c_dn),
            }
            for ch, (n, c_ok, c_failed, c_dsum, c_dn) in sorted(by_channel.items())
        }
    return {"workflow_id": q.workflow_id, "period": period.render(), "performance": performance}
