"""Customer facts (engagement) and journey facts, in DuckDB.

Active customers come from their bitmaps (``active_customers``), sessions from
their rollups where no segment filters them (``rollups``), the rest from the
derived tables (``derived``) with the events not yet folded merged in.
"""

from __future__ import annotations

from typing import Any

from kaie_analytics.analytics.facts import (
    ChannelFacts,
    CustomerFacts,
    CustomerQuery,
    JourneyFacts,
    JourneyQuery,
    StepFacts,
    Window,
)
from kaie_analytics.engines.duckdb.active_customers import active_customers, cover
from kaie_analytics.engines.duckdb.derived import CUSTOMERS, JOURNEYS, SESSIONS
from kaie_analytics.engines.duckdb.store import DuckDBEventStore
from kaie_analytics.engines.duckdb.times import DAY_US, SLOT_US, epoch_us


def customers(store: DuckDBEventStore, q: CustomerQuery) -> list[CustomerFacts]:
    return [_window(store, q, w, by_channel=i == 0) for i, w in enumerate(q.windows)]


def _window(
    store: DuckDBEventStore, q: CustomerQuery, window: Window, *, by_channel: bool
) -> CustomerFacts:
    """One window's facts; ``by_channel`` adds the breakdown by channel (the first
    window's: later ones serve trends, which need totals only)."""
    params = {
        "tenant": q.tenant,
        "channel": q.channel,
        "segment": q.segment,
        "lo": window.start,
        "hi": window.end,
    }
    derived_customers = store.derived_sql(CUSTOMERS, q.tenant)
    # Customers of the segment: the all-channels row carries the latest segment.
    members = (
        f"SELECT customer_id FROM ({derived_customers}) WHERE channel IS NULL AND segment = $segment"
        if q.segment is not None
        else None
    )
    in_segment = f" AND customer_id IN ({members})" if members is not None else ""
    channel = " AND channel = $channel" if q.channel is not None else ""
    (known, new) = store.query(
        f"""SELECT count(*) FILTER (WHERE first_event <= $hi),
                count(*) FILTER (WHERE first_received BETWEEN $lo AND $hi)
            FROM ({derived_customers})
            WHERE channel IS NOT DISTINCT FROM $channel {in_segment}""",
        params,
    )[0]
    active = active_customers(
        store, q.tenant, window.start, window.end, channel=q.channel, members=members,
        params=params,
    )  # fmt: skip
    out = CustomerFacts(known=known, new=new)
    out.total.active = active.total

    def per(ch: str) -> ChannelFacts:
        return out.by_channel.setdefault(ch, ChannelFacts())

    if by_channel:
        for ch, n in active.by_channel.items():
            per(ch).active = n
    for ch, n, dur_us, size in _session_sums(store, q, window, params, channel, in_segment):
        for target in (out.total, per(ch)) if by_channel and ch is not None else (out.total,):
            target.sessions += n
            target.session_us += dur_us or 0
            target.session_messages += size or 0
    for ch, csat_sum, csat_n, answers, promoters, detractors in store.query(
        f"""SELECT channel, sum(csat), count(csat), count(nps),
                count(nps) FILTER (WHERE nps >= 9), count(nps) FILTER (WHERE nps <= 6)
            FROM events
            WHERE tenant = $tenant AND type = 'feedback.submitted' AND ts BETWEEN $lo AND $hi
              AND customer_id IS NOT NULL {channel}{in_segment}
            GROUP BY channel""",
        params,
    ):
        for target in (out.total, per(ch)) if by_channel and ch is not None else (out.total,):
            target.csat_sum += csat_sum or 0
            target.csat_count += csat_n
            target.nps_answers += answers
            target.promoters += promoters
            target.detractors += detractors
    return out


def _session_sums(
    store: DuckDBEventStore,
    q: CustomerQuery,
    window: Window,
    params: dict[str, Any],
    channel: str,
    in_segment: str,
) -> list[tuple[Any, ...]]:
    """Per channel: sessions of the window, their total duration (µs) and size.

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
    c = cover(epoch_us(window.start), epoch_us(window.end) + 1)
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


# ------------------------------------------------------------------- journeys


def journey_types(store: DuckDBEventStore, tenant: str) -> list[str]:
    return [
        r[0]
        for r in store.query(
            f"SELECT DISTINCT journey_type FROM ({store.derived_sql(JOURNEYS, tenant)})"
            " WHERE first_step IS NOT NULL AND journey_type IS NOT NULL ORDER BY 1",
            {"tenant": tenant},
        )
    ]


def journeys(store: DuckDBEventStore, q: JourneyQuery) -> JourneyFacts:
    params = {
        "tenant": q.tenant,
        "jtype": q.journey_type,
        "lo": q.window.start,
        "hi": q.window.end,
    }
    base = f"""
        WITH jr AS (
            SELECT *, list_transform(steps, lambda x: x.step) AS reached
            FROM ({store.derived_sql(JOURNEYS, q.tenant)})
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
                 count(*) FILTER (WHERE NOT list_contains(reached, s.step + 1)),
                 coalesce(sum(s.gap_us), 0)::BIGINT, count(s.gap_us)
             FROM st GROUP BY s.step ORDER BY s.step""",
    ]
    if q.reasons:
        statements.append(
            base
            + """SELECT top_step + 1 AS k, reason, count(*) AS n
                 FROM (SELECT top_step, unnest(reasons) AS reason FROM jr)
                 GROUP BY ALL ORDER BY k, n DESC, reason"""
        )
    # Side by side, each on its own snapshot (an event arriving meanwhile may
    # show in some of the numbers and not yet in others, as documented).
    [(total, completed, completed_us)], steps, *reasons = store.query_all(
        [(sql, params) for sql in statements]
    )
    return JourneyFacts(
        total,
        completed,
        completed_us or 0,
        tuple(StepFacts(*row) for row in steps),
        tuple((k, reason, n) for k, reason, n in (reasons[0] if reasons else ())),
    )
