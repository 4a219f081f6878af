"""GET /v1/analytics/realtime (spec/METRICS.md), from the engine's live facts.

Never cached: an accepted event is in the next answer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

import psutil

from kaie_analytics.analytics import facts
from kaie_analytics.analytics import numbers as num
from kaie_analytics.analytics.facts import EventEngine
from kaie_analytics.analytics.periods import iso, naive_utc, parse_bool, parse_filter
from kaie_analytics.analytics.runners import QueryRunner


@dataclass(frozen=True, slots=True)
class RealtimeQuery:
    tenant: str
    workflow_id: str | None
    channel: str | None
    include_system: bool


def parse_realtime_query(tenant: str, params: Mapping[str, Sequence[str]]) -> RealtimeQuery:
    def one(name: str) -> str | None:
        values = params.get(name)
        return values[-1] if values and values[-1] != "" else None

    return RealtimeQuery(
        tenant,
        parse_filter(one("workflow_id"), "workflow_id"),
        parse_filter(one("channel"), "channel"),
        parse_bool(one("include_system"), "include_system", False),
    )


def _mean_ms(total_us_and_count: tuple[int, int]) -> int | None:
    return num.mean_us_as_ms(*total_us_and_count)


class RealtimeRunner(QueryRunner[RealtimeQuery]):
    kind: ClassVar[str] = "realtime"
    cacheable: ClassVar[bool] = False

    def __init__(
        self,
        engine: EventEngine,
        query: RealtimeQuery,
        *,
        health: Callable[[], tuple[str, float | None]],
        now: datetime | None = None,
    ) -> None:
        super().__init__(engine, query)
        #: The system health and the mean API latency (ms), asked at compute time.
        self.health = health
        self.now = now

    def compute(self) -> dict[str, Any]:
        q = self.query
        now = (self.now or datetime.now(UTC)).astimezone(UTC)
        health, api_ms = self.health()
        f = self.engine.realtime(
            facts.RealtimeQuery(q.tenant, naive_utc(now), q.workflow_id, q.channel)
        )
        data: dict[str, Any] = {
            "timestamp": iso(now),
            "current_metrics": {
                "active_workflows": len(f.workflows_with_executions),
                "active_executions": sum(f.running.values()),
                "messages_in_last_hour": f.messages,
                "average_response_time_ms": _mean_ms(f.reply_us),
                "system_health": health,
            },
            "workflow_metrics": [
                {
                    "workflow_id": wf,
                    "name": getattr(self.engine.workflow(q.tenant, wf), "name", None),
                    "active_executions": f.running.get(wf, 0),
                    "messages_in_last_hour": f.messages_by_workflow.get(wf, 0),
                    "average_response_time_ms": _mean_ms(f.reply_us_by_workflow.get(wf, (0, 0))),
                }
                for wf in f.workflows_with_executions
            ],
            "channel_metrics": {
                ch: {
                    "active_conversations": f.conversations_by_channel.get(ch, 0),
                    "messages_in_last_hour": f.messages_by_channel.get(ch, 0),
                }
                for ch in sorted(f.messages_by_channel)
            },
        }
        if q.include_system:
            data["system_metrics"] = {
                "cpu_usage": round(psutil.cpu_percent(interval=None), 1),
                "memory_usage": round(psutil.virtual_memory().percent, 1),
                "api_response_time_ms": None if api_ms is None else round(api_ms, 1),
            }
        return data
