"""Customer engagement and journeys (spec/METRICS.md), compiled to DuckDB SQL."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from kaie_analytics.errors import InvalidParameter
from kaie_analytics.query import numbers as num
from kaie_analytics.query.params import Period, parse_bool, parse_period, parse_timezone
from kaie_analytics.store.duckdb_store import DuckDBEventStore

SESSION_GAP_US = 30 * 60 * 1_000_000
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

_SEGMENT_FILTER = """
    customer_id IN (
        SELECT customer_id FROM (
            SELECT customer_id, arg_max(segment, ts) AS segment FROM events
            WHERE tenant = $tenant AND type = 'customer.updated' AND segment IS NOT NULL
            GROUP BY customer_id
        ) WHERE segment = $segment
    )
"""


def _filters(q: EngagementQuery) -> str:
    parts = ["tenant = $tenant", "customer_id IS NOT NULL"]
    if q.channel is not None:
        parts.append("channel = $channel")
    if q.customer_segment is not None:
        parts.append(_SEGMENT_FILTER)
    return " AND ".join(parts)


def _engagement_numbers(
    store: DuckDBEventStore, q: EngagementQuery, period: Period
) -> dict[str, Any]:
    params = {
        "tenant": q.tenant,
        "channel": q.channel,
        "segment": q.customer_segment,
        "lo": period.start_naive,
        "hi": period.end_naive,
        "session_lo": period.start_naive - timedelta(microseconds=SESSION_GAP_US),
    }
    where = _filters(q)
    (total,) = store.query(
        f"SELECT count(DISTINCT customer_id) FROM events WHERE {where} AND ts <= $hi", params
    )[0]
    active_rows = store.query(
        f"""
        WITH received AS (
            SELECT customer_id, channel, ts FROM events
            WHERE {where} AND type = 'message.received'
        ),
        first_ever AS (SELECT customer_id, min(ts) AS first_ts FROM received GROUP BY ALL)
        SELECT grouping(r.channel), r.channel, count(DISTINCT r.customer_id),
               count(DISTINCT r.customer_id) FILTER (WHERE f.first_ts >= $lo)
        FROM received r JOIN first_ever f USING (customer_id)
        WHERE r.ts BETWEEN $lo AND $hi
        GROUP BY GROUPING SETS ((), (r.channel))
        """,
        params,
    )
    session_rows = store.query(
        f"""
        WITH m AS (
            SELECT customer_id, channel, ts,
                CASE WHEN epoch_us(ts) - epoch_us(lag(ts) OVER w) <= {SESSION_GAP_US}
                     THEN 0 ELSE 1 END AS starts
            FROM events
            WHERE {where} AND type IN ('message.sent', 'message.received') AND ts >= $session_lo
            WINDOW w AS (PARTITION BY customer_id, channel ORDER BY ts)
        ),
        numbered AS (
            SELECT *, sum(starts) OVER (PARTITION BY customer_id, channel ORDER BY ts
                                        ROWS UNBOUNDED PRECEDING) AS session
            FROM m
        ),
        sessions AS (
            SELECT channel, min(ts) AS first_ts, max(ts) AS last_ts, count(*) AS size
            FROM numbered GROUP BY customer_id, channel, session
        )
        SELECT grouping(channel), channel, count(*),
               sum(epoch_us(last_ts) - epoch_us(first_ts)), sum(size)
        FROM sessions WHERE first_ts BETWEEN $lo AND $hi
        GROUP BY GROUPING SETS ((), (channel))
        """,
        params,
    )
    feedback_rows = store.query(
        f"""
        SELECT grouping(channel), channel, sum(csat), count(csat), count(nps),
               count(nps) FILTER (WHERE nps >= 9), count(nps) FILTER (WHERE nps <= 6)
        FROM events
        WHERE {where} AND type = 'feedback.submitted' AND ts BETWEEN $lo AND $hi
        GROUP BY GROUPING SETS ((), (channel))
        """,
        params,
    )
    out: dict[str, Any] = {
        "total": total,
        "active": 0,
        "new": 0,
        "sessions": (0, 0, 0),
        "csat": (0, 0),
        "nps": (0, 0, 0),
        "by_channel": {},
    }

    def channel(ch: str) -> dict[str, Any]:
        by: dict[str, Any] = out["by_channel"]
        return by.setdefault(ch, {"active": 0, "sessions": (0, 0, 0), "csat": (0, 0)})

    for g, ch, active, new in active_rows:
        if g:
            out["active"], out["new"] = active, new
        elif ch is not None:
            channel(ch)["active"] = active
    for g, ch, n, dur_us, size in session_rows:
        if g:
            out["sessions"] = (n, dur_us or 0, size or 0)
        elif ch is not None:
            channel(ch)["sessions"] = (n, dur_us or 0, size or 0)
    for g, ch, csum, cn, nn, promoters, detractors in feedback_rows:
        if g:
            out["csat"] = (csum or 0, cn)
            out["nps"] = (nn, promoters, detractors)
        elif ch is not None:
            channel(ch)["csat"] = (csum or 0, cn)
    return out


def _session_means(sessions: tuple[int, int, int]) -> tuple[float | None, float | None]:
    n, dur_us, size = sessions
    return num.mean(dur_us / 1_000_000, n, 1), num.mean(size, n, 1)


def run_engagement(store: DuckDBEventStore, q: EngagementQuery) -> dict[str, Any]:
    cur = _engagement_numbers(store, q, q.period)
    prev = _engagement_numbers(store, q, q.period.previous())
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


def _journey_type(store: DuckDBEventStore, q: JourneyQuery) -> str | None:
    types = [
        r[0]
        for r in store.query(
            "SELECT DISTINCT journey_type FROM events"
            " WHERE tenant = $tenant AND journey_type IS NOT NULL ORDER BY 1",
            {"tenant": q.tenant},
        )
    ]
    if q.journey_type is not None:
        return q.journey_type
    if len(types) > 1:
        raise InvalidParameter(
            f"this tenant has several journey types; pass journey_type, one of: {', '.join(types)}",
            field="journey_type",
        )
    return types[0] if types else None


def run_journey(store: DuckDBEventStore, q: JourneyQuery) -> dict[str, Any]:
    jtype = _journey_type(store, q)
    params = {
        "tenant": q.tenant,
        "jtype": jtype,
        "lo": q.period.start_naive,
        "hi": q.period.end_naive,
    }
    base = """
        WITH j AS (
            SELECT journey_id, type, ts, step, step_name, reason FROM events
            WHERE tenant = $tenant AND journey_type = $jtype AND type LIKE 'journey.%'
        ),
        journeys AS (
            SELECT journey_id, min(ts) AS first_step FROM j WHERE type = 'journey.step'
            GROUP BY journey_id HAVING min(ts) BETWEEN $lo AND $hi
        ),
        mine AS (SELECT j.* FROM j SEMI JOIN journeys USING (journey_id)),
        reached AS (
            SELECT journey_id, step, min(ts) AS reached_ts FROM mine
            WHERE type = 'journey.step' GROUP BY ALL
        ),
        highest AS (SELECT journey_id, max(step) AS top FROM reached GROUP BY ALL)
    """
    (total, completed, dur_us) = store.query(
        base
        + """
        SELECT count(*), count(c.done),
               sum(epoch_us(c.done) - epoch_us(journeys.first_step))
        FROM journeys LEFT JOIN (
            SELECT journey_id, min(ts) AS done FROM mine WHERE type = 'journey.completed'
            GROUP BY ALL
        ) c USING (journey_id)
        """,
        params,
    )[0]
    steps = store.query(
        base
        + """
        , names AS (
            SELECT step, arg_max(step_name, ts) AS name FROM mine
            WHERE type = 'journey.step' GROUP BY ALL
        ),
        next_event AS (
            SELECT r.journey_id, r.step,
                   min(epoch_us(m.ts) - epoch_us(r.reached_ts)) AS gap
            FROM reached r JOIN mine m
              ON m.journey_id = r.journey_id AND m.ts > r.reached_ts
             AND NOT (m.type = 'journey.step' AND m.step = r.step)
            GROUP BY ALL
        )
        SELECT r.step, any_value(n.name), count(*),
               count(prev.journey_id), sum(ne.gap), count(ne.gap)
        FROM reached r
        JOIN names n USING (step)
        LEFT JOIN reached prev ON prev.journey_id = r.journey_id AND prev.step = r.step - 1
        LEFT JOIN next_event ne ON ne.journey_id = r.journey_id AND ne.step = r.step
        GROUP BY r.step ORDER BY r.step
        """,
        params,
    )
    reached = {k: n for k, _, n, _, _, _ in steps}
    names = {k: name for k, name, *_ in steps}
    journey_steps = []
    for k, name, n, with_prev, gap_sum, gap_n in steps:
        rate = num.rate(n, total) if k == 1 else num.rate(with_prev, reached.get(k - 1, 0))
        journey_steps.append(
            {
                "step": k,
                "name": name,
                "customers": n,
                "completion_rate": rate,
                "average_duration_ms": num.mean_us_as_ms(gap_sum, gap_n),
            }
        )
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
        drops = store.query(
            base
            + """
            SELECT r.step + 1 AS k, count(*) FROM reached r
            ANTI JOIN reached nxt ON nxt.journey_id = r.journey_id AND nxt.step = r.step + 1
            WHERE r.step + 1 IN (SELECT step FROM reached)
            GROUP BY ALL ORDER BY 1
            """,
            params,
        )
        reasons = store.query(
            base
            + """
            SELECT h.top + 1 AS k, m.reason, count(*) AS n FROM mine m
            JOIN highest h USING (journey_id)
            WHERE m.type = 'journey.dropped' AND m.reason IS NOT NULL
            GROUP BY ALL ORDER BY k, n DESC, m.reason
            """,
            params,
        )
        by_step: dict[int, list[str]] = {}
        for k, reason, _ in reasons:
            by_step.setdefault(k, [])
            if len(by_step[k]) < MAX_REASONS:
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
