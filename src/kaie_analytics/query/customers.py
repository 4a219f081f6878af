"""Customer engagement and journeys (spec/METRICS.md), compiled to DuckDB SQL."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kaie_analytics.analytics import numbers as num
from kaie_analytics.analytics.periods import Period, parse_bool, parse_period, parse_timezone
from kaie_analytics.engines.duckdb.activity import (
    DAY_US,
    SLOT_US,
    active_customers,
    cover,
    epoch_us,
)
from kaie_analytics.engines.duckdb.derived import CUSTOMERS, JOURNEYS, SESSIONS
from kaie_analytics.engines.duckdb.store import DuckDBEventStore
from kaie_analytics.errors import InvalidParameter

MAX_REASONS = 5


@dataclass(frozen=True, slots=True)
class EngagementQuery:
    tenant: str
    period: Period
    customer_segment: str | None
    channel: str | None


@dataclass(frozen=True, slots=True)
class JourneyQuery:
    tenant: str
    period: Period
    journey_type: str | None
    include_dropoffs: bool


def _one(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = params.get(name)
    return values[-1] if values and values[-1] != "" else None


def _period(params: Mapping[str, Sequence[str]]) -> Period:
    tz = parse_timezone(_one(params, "timezone"))
    return parse_period(_one(params, "start_date"), _one(params, "end_date"), tz)


def parse_engagement_query(tenant: str, params: Mapping[str, Sequence[str]]) -> EngagementQuery:
    return EngagementQuery(
        tenant, _period(params), _one(params, "customer_segment"), _one(params, "channel")
    )


def parse_journey_query(tenant: str, params: Mapping[str, Sequence[str]]) -> JourneyQuery:
    return JourneyQuery(
        tenant,
        _period(params),
        _one(params, "journey_type"),
        parse_bool(_one(params, "include_dropoffs"), "include_dropoffs", True),
    )


# ------------------------------------------------------------------ engagement


def _engagement_numbers(
    store: DuckDBEventStore, q: EngagementQuery, period: Period, *, by_channel: bool = True
) -> dict[str, Any]:
    """The period's raw engagement numbers; ``by_channel`` adds the channel breakdown.

    The previous period (for trends) needs only the totals. Active customers
    come from the activity bitmaps (``store.activity``).
    """
    params = {
        "tenant": q.tenant,
        "channel": q.channel,
        "segment": q.customer_segment,
        "lo": period.start_naive,
        "hi": period.end_naive,
    }
    customers = store.derived_sql(CUSTOMERS, q.tenant)
    # Customers of the segment: the all-channels row carries the latest segment.
    members = (
        f"SELECT customer_id FROM ({customers}) WHERE channel IS NULL AND segment = $segment"
        if q.customer_segment is not None
        else None
    )
    in_segment = f" AND customer_id IN ({members})" if members is not None else ""
    channel = " AND channel = $channel" if q.channel is not None else ""
    (total, new) = store.query(
        f"""SELECT count(*) FILTER (WHERE first_event <= $hi),
                count(*) FILTER (WHERE first_received BETWEEN $lo AND $hi)
            FROM ({customers})
            WHERE channel IS NOT DISTINCT FROM $channel {in_segment}""",
        params,
    )[0]
    active = active_customers(
        store,
        q.tenant,
        period.start_naive,
        period.end_naive,
        channel=q.channel,
        members=members,
        params=params,
    )
    session_rows = _session_sums(store, q, period, params, channel, in_segment)
    feedback_rows = store.query(
        f"""SELECT channel, sum(csat), count(csat), count(nps),
                count(nps) FILTER (WHERE nps >= 9), count(nps) FILTER (WHERE nps <= 6)
            FROM events
            WHERE tenant = $tenant AND type = 'feedback.submitted' AND ts BETWEEN $lo AND $hi
              AND customer_id IS NOT NULL {channel}{in_segment}
            GROUP BY channel""",
        params,
    )
    out: dict[str, Any] = {
        "total": total,
        "active": 0,
        "new": new,
        "sessions": (0, 0, 0),
        "csat": (0, 0),
        "nps": (0, 0, 0),
        "by_channel": {},
    }

    def per_channel(ch: str) -> dict[str, Any]:
        by: dict[str, Any] = out["by_channel"]
        return by.setdefault(ch, {"active": 0, "sessions": (0, 0, 0), "csat": (0, 0)})

    out["active"] = active.total
    if by_channel:
        for ch, n in active.by_channel.items():
            per_channel(ch)["active"] = n

    def add(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(x + y for x, y in zip(a, b, strict=True))

    for ch, n, dur_us, size in session_rows:
        sessions = (n, dur_us or 0, size or 0)
        out["sessions"] = add(out["sessions"], sessions)
        if by_channel and ch is not None:
            per_channel(ch)["sessions"] = sessions
    for ch, csum, cn, nn, promoters, detractors in feedback_rows:
        out["csat"] = add(out["csat"], (csum or 0, cn))
        out["nps"] = add(out["nps"], (nn, promoters, detractors))
        if by_channel and ch is not None:
            per_channel(ch)["csat"] = (csum or 0, cn)
    return out


def _session_sums(
    store: DuckDBEventStore,
    q: EngagementQuery,
    period: Period,
    params: dict[str, Any],
    channel: str,
    in_segment: str,
) -> list[tuple[Any, ...]]:
    """Per channel: sessions of the period, their total duration (µs) and size.

    From the session rollups (whole days and 15-minute slots, and the sessions
    themselves for the minutes left at the edges); from the sessions alone when
    a segment filters them or messages wait to be folded into them.
    """
    if in_segment or store.has_pending(q.tenant, SESSIONS.name):
        return store.query(
            f"""SELECT channel, count(*), sum(epoch_us(last_ts) - epoch_us(first_ts)), sum(size)
                FROM ({store.derived_sql(SESSIONS, q.tenant)})
                WHERE first_ts BETWEEN $lo AND $hi {channel}{in_segment}
                GROUP BY channel""",
            params,
        )
    c = cover(epoch_us(period.start_naive), epoch_us(period.end_naive) + 1)
    parts = []
    for span, first, end in c.buckets:
        per = span // SLOT_US
        table = "session_days" if span == DAY_US else "session_slots"
        parts.append(
            f"SELECT channel, n, dur_us, size FROM {table} WHERE tenant = $tenant"
            f" AND slot >= {int(first) * per} AND slot < {int(end) * per}{channel}"
        )
    for a, b in c.raw:
        parts.append(
            "SELECT channel, 1, epoch_us(last_ts) - epoch_us(first_ts), size FROM sessions"
            f" WHERE tenant = $tenant AND first_ts >= make_timestamp({int(a)}::BIGINT)"
            f" AND first_ts < make_timestamp({int(b)}::BIGINT){channel}"
        )
    return store.query(
        f"SELECT channel, sum(n), sum(dur_us), sum(size) FROM ({' UNION ALL '.join(parts)})"
        " t(channel, n, dur_us, size) GROUP BY channel",
        params,
    )


def _session_means(sessions: tuple[int, int, int]) -> tuple[float | None, float | None]:
    n, dur_us, size = sessions
    return num.mean(dur_us / 1_000_000, n, 1), num.mean(size, n, 1)


def run_engagement(store: DuckDBEventStore, q: EngagementQuery) -> dict[str, Any]:
    cur = _engagement_numbers(store, q, q.period)
    prev = _engagement_numbers(store, q, q.period.previous(), by_channel=False)
    duration, per_session = _session_means(cur["sessions"])
    _, prev_per_session = _session_means(prev["sessions"])
    csat = num.mean(cur["csat"][0], cur["csat"][1], 2)
    prev_csat = num.mean(prev["csat"][0], prev["csat"][1], 2)
    answers, promoters, detractors = cur["nps"]
    nps = num.round_half_up((promoters - detractors) * 100 / answers, 1) if answers else None
    by_channel = {}
    for ch in sorted(cur["by_channel"]):
        c = cur["by_channel"][ch]
        by_channel[ch] = {
            "customers": c["active"],
            "average_session_duration": _session_means(c["sessions"])[0],
            "satisfaction": num.mean(c["csat"][0], c["csat"][1], 2),
        }
    return {
        "period": q.period.render(),
        "engagement": {
            "total_customers": cur["total"],
            "active_customers": cur["active"],
            "new_customers": cur["new"],
            "returning_customers": cur["active"] - cur["new"],
            "average_session_duration": duration,
            "average_messages_per_session": per_session,
            "customer_satisfaction": csat,
            "net_promoter_score": nps,
            "engagement_by_channel": by_channel,
        },
        "trends": {
            "customer_growth": num.trend(cur["active"], prev["active"]),
            "engagement_trend": num.trend(per_session, prev_per_session),
            "satisfaction_trend": num.trend(csat, prev_csat),
        },
    }


# ------------------------------------------------------------------- journeys


def _journey_type(store: DuckDBEventStore, q: JourneyQuery, journeys: str) -> str | None:
    if q.journey_type is not None:
        return q.journey_type
    types = [
        r[0]
        for r in store.query(
            f"SELECT DISTINCT journey_type FROM ({journeys}) WHERE first_step IS NOT NULL"
            " ORDER BY 1",
            {"tenant": q.tenant},
        )
    ]
    if len(types) > 1:
        raise InvalidParameter(
            f"this tenant has several journey types; pass journey_type, one of: {', '.join(types)}",
            field="journey_type",
        )
    return types[0] if types else None


def run_journey(store: DuckDBEventStore, q: JourneyQuery) -> dict[str, Any]:
    journeys = store.derived_sql(JOURNEYS, q.tenant)
    jtype = _journey_type(store, q, journeys)
    params = {
        "tenant": q.tenant,
        "jtype": jtype,
        "lo": q.period.start_naive,
        "hi": q.period.end_naive,
    }
    base = f"""
        WITH jr AS (
            SELECT *, list_transform(steps, lambda x: x.step) AS reached FROM ({journeys})
            WHERE journey_type = $jtype AND first_step BETWEEN $lo AND $hi
        ),
        st AS (SELECT journey_id, reached, unnest(steps) AS s FROM jr)
    """
    statements = [
        base
        + """SELECT count(*), count(completed),
                 sum(epoch_us(completed) - epoch_us(first_step)) FROM jr""",
        # One pass per step: journeys that reached it, those that also reached the
        # step before, and those that did not reach the next (its drop-offs).
        base
        + """SELECT s.step, arg_max(s.name, s.name_ts), count(*),
                 count(*) FILTER (WHERE list_contains(reached, s.step - 1)),
                 sum(s.gap_us), count(s.gap_us),
                 count(*) FILTER (WHERE NOT list_contains(reached, s.step + 1))
             FROM st GROUP BY s.step ORDER BY s.step""",
    ]
    if q.include_dropoffs:
        statements.append(
            base
            + """SELECT top_step + 1 AS k, reason, count(*) AS n
                 FROM (SELECT top_step, unnest(reasons) AS reason FROM jr)
                 GROUP BY ALL ORDER BY k, n DESC, reason"""
        )
    # Side by side, each on its own snapshot (an event arriving meanwhile may
    # show in some of the numbers and not yet in others, as documented).
    [(total, completed, dur_us)], steps, *reason_rows = store.query_all(
        [(sql, params) for sql in statements]
    )
    reached = {k: n for k, _, n, *_ in steps}
    names = {k: name for k, name, *_ in steps}
    not_next = {k + 1: n for k, *_, n in steps}
    journey_steps = [
        {
            "step": k,
            "name": name,
            "customers": n,
            "completion_rate": num.rate(n, total)
            if k == 1
            else num.rate(with_prev, reached.get(k - 1, 0)),
            "average_duration_ms": num.mean_us_as_ms(gap_sum, gap_n),
        }
        for k, name, n, with_prev, gap_sum, gap_n, _ in steps
    ]
    journey: dict[str, Any] = {
        "journey_type": jtype,
        "total_journeys": total,
        "completed_journeys": completed,
        "completion_rate": num.rate(completed, total),
        "average_journey_duration": num.mean(dur_us / 1_000_000, completed, 1)
        if completed and dur_us is not None
        else None,
        "journey_steps": journey_steps,
    }
    if q.include_dropoffs:
        drops = [(k, not_next.get(k, 0)) for k in sorted(reached)]
        by_step: dict[int, list[str]] = {}
        for k, reason, _ in reason_rows[0]:
            if len(by_step.setdefault(k, [])) < MAX_REASONS:
                by_step[k].append(reason)
        journey["drop_off_points"] = [
            {
                "step": k,
                "name": names.get(k),
                "drop_off_count": count,
                "drop_off_rate": num.rate(count, total),
                "common_reasons": by_step.get(k, []),
            }
            for k, count in drops
            if count > 0 and k >= 2
        ]
    return {"period": q.period.render(), "journey": journey}
