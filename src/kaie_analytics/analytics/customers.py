"""Customer engagement and journeys (spec/METRICS.md), from the engine's facts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from kaie_analytics.analytics import facts
from kaie_analytics.analytics import numbers as num
from kaie_analytics.analytics.facts import ChannelFacts
from kaie_analytics.analytics.periods import (
    Period,
    parse_bool,
    parse_filter,
    parse_period,
    parse_timezone,
)
from kaie_analytics.analytics.runners import QueryRunner
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
        tenant,
        _period(params),
        parse_filter(_one(params, "customer_segment"), "customer_segment"),
        parse_filter(_one(params, "channel"), "channel"),
    )


def parse_journey_query(tenant: str, params: Mapping[str, Sequence[str]]) -> JourneyQuery:
    return JourneyQuery(
        tenant,
        _period(params),
        parse_filter(_one(params, "journey_type"), "journey_type"),
        parse_bool(_one(params, "include_dropoffs"), "include_dropoffs", True),
    )


def session_duration(c: ChannelFacts) -> float | None:
    """Mean session length in seconds, 1 decimal."""
    return num.mean(c.session_us / 1_000_000, c.sessions, 1)


def messages_per_session(c: ChannelFacts) -> float | None:
    return num.mean(c.session_messages, c.sessions, 1)


def satisfaction(c: ChannelFacts) -> float | None:
    return num.mean(c.csat_sum, c.csat_count, 2)


def net_promoter_score(c: ChannelFacts) -> float | None:
    """% of answers 9-10 minus % of answers 0-6, 1 decimal."""
    if not c.nps_answers:
        return None
    return num.round_half_up((c.promoters - c.detractors) * 100 / c.nps_answers, 1)


class EngagementRunner(QueryRunner[EngagementQuery]):
    kind: ClassVar[str] = "engagement"

    def compute(self) -> dict[str, Any]:
        q = self.query
        cur, prev = self.engine.customers(
            facts.CustomerQuery(
                q.tenant,
                (q.period.window, q.period.previous().window),
                channel=q.channel,
                segment=q.customer_segment,
            )
        )
        t, pt = cur.total, prev.total
        per_session, csat = messages_per_session(t), satisfaction(t)
        return {
            "period": q.period.render(),
            "engagement": {
                "total_customers": cur.known,
                "active_customers": t.active,
                "new_customers": cur.new,
                "returning_customers": t.active - cur.new,
                "average_session_duration": session_duration(t),
                "average_messages_per_session": per_session,
                "customer_satisfaction": csat,
                "net_promoter_score": net_promoter_score(t),
                "engagement_by_channel": {
                    ch: {
                        "customers": c.active,
                        "average_session_duration": session_duration(c),
                        "satisfaction": satisfaction(c),
                    }
                    for ch, c in sorted(cur.by_channel.items())
                },
            },
            "trends": {
                "customer_growth": num.trend(t.active, pt.active),
                "engagement_trend": num.trend(per_session, messages_per_session(pt)),
                "satisfaction_trend": num.trend(csat, satisfaction(pt)),
            },
        }


class JourneyRunner(QueryRunner[JourneyQuery]):
    kind: ClassVar[str] = "journey"

    def _journey_type(self) -> str | None:
        q = self.query
        if q.journey_type is not None:
            return q.journey_type
        types = self.engine.journey_types(q.tenant)
        if len(types) > 1:
            raise InvalidParameter(
                "this tenant has several journey types; pass journey_type, one of: "
                + ", ".join(types),
                field="journey_type",
            )
        return types[0] if types else None

    def compute(self) -> dict[str, Any]:
        q = self.query
        jtype = self._journey_type()
        if jtype is None:
            f = facts.JourneyFacts(0, 0, 0, (), ())
        else:
            f = self.engine.journeys(
                facts.JourneyQuery(q.tenant, jtype, q.period.window, q.include_dropoffs)
            )
        reached = {s.step: s.reached for s in f.steps}
        journey: dict[str, Any] = {
            "journey_type": jtype,
            "total_journeys": f.journeys,
            "completed_journeys": f.completed,
            "completion_rate": num.rate(f.completed, f.journeys),
            "average_journey_duration": num.mean(f.completed_us / 1_000_000, f.completed, 1),
            "journey_steps": [
                {
                    "step": s.step,
                    "name": s.name,
                    "customers": s.reached,
                    "completion_rate": num.rate(s.reached, f.journeys)
                    if s.step == 1
                    else num.rate(s.with_previous, reached.get(s.step - 1, 0)),
                    "average_duration_ms": num.mean_us_as_ms(s.gap_us, s.gaps),
                }
                for s in f.steps
            ],
        }
        if q.include_dropoffs:
            names = {s.step: s.name for s in f.steps}
            # Journeys that reached k - 1 but not k dropped off at k.
            dropped = {s.step + 1: s.without_next for s in f.steps}
            by_step: dict[int, list[str]] = {}
            for k, reason, _ in f.reasons:
                if len(by_step.setdefault(k, [])) < MAX_REASONS:
                    by_step[k].append(reason)
            journey["drop_off_points"] = [
                {
                    "step": k,
                    "name": names.get(k),
                    "drop_off_count": dropped.get(k, 0),
                    "drop_off_rate": num.rate(dropped.get(k, 0), f.journeys),
                    "common_reasons": by_step.get(k, []),
                }
                for k in sorted(reached)
                if dropped.get(k, 0) > 0 and k >= 2
            ]
        return {"period": q.period.render(), "journey": journey}
