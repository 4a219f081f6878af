"""Believable synthetic data for ``kaie-analytics demo``.

Several workflows with named nodes on every channel; weekday and afternoon
peaks; long-tailed durations; error types; returning customers with segments;
satisfaction and NPS answers; journeys of several types with drop-offs.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

CHANNELS = (("whatsapp", 0.5), ("instagram", 0.2), ("voice", 0.12), ("sms", 0.1), ("webchat", 0.08))
SEGMENTS = ("enterprise", "smb", "consumer", "vip")
WORKFLOWS: dict[str, dict[str, Any]] = {
    "support-bot": {
        "name": "Customer Support Bot",
        "per_day": 140,
        "median_ms": 12_000,
        "fail": 0.05,
        "nodes": [("welcome", "message"), ("classify", "ai"), ("lookup", "api_call"),
                  ("answer", "message"), ("handoff", "human_handoff")],
    },
    "order-tracking": {
        "name": "Order Tracking",
        "per_day": 90,
        "median_ms": 4_000,
        "fail": 0.03,
        "nodes": [("welcome", "message"), ("ask_order", "question"), ("fetch_order", "api_call"),
                  ("status", "message")],
    },
    "appointment-booking": {
        "name": "Appointment Booking",
        "per_day": 45,
        "median_ms": 30_000,
        "fail": 0.08,
        "nodes": [("welcome", "message"), ("pick_slot", "question"), ("book", "api_call"),
                  ("confirm", "message")],
    },
    "lead-qualification": {
        "name": "Lead Qualification",
        "per_day": 30,
        "median_ms": 45_000,
        "fail": 0.06,
        "nodes": [("welcome", "message"), ("budget", "question"), ("score", "ai"),
                  ("route", "condition")],
    },
}  # fmt: skip
ERRORS = (("timeout", 0.55), ("api_error", 0.3), ("validation_error", 0.15))
JOURNEYS = {
    "support": ["Welcome", "Information Collection", "Resolution"],
    "purchase": ["Browse", "Cart", "Checkout", "Payment"],
}
DROP_REASONS = (("user_abandoned", 0.5), ("timeout", 0.35), ("payment_failed", 0.15))
HOUR_WEIGHTS = [0.2, 0.1, 0.1, 0.1, 0.15, 0.3, 0.6, 0.9, 1.2, 1.4, 1.5, 1.5,
                1.6, 1.9, 2.1, 2.0, 1.8, 1.5, 1.2, 1.0, 0.8, 0.6, 0.4, 0.3]  # fmt: skip


def _pick(rng: random.Random, weighted: tuple[tuple[str, float], ...]) -> str:
    return rng.choices([w[0] for w in weighted], [w[1] for w in weighted])[0]


def _ts(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def generate_demo(
    *, days: int = 90, seed: int = 1, now: datetime | None = None
) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """Yield ``(days done, events of that day)``, oldest day first: the last ``days``
    whole days, then today so far (counted with the last day, so that history just
    after midnight is never empty)."""
    rng = random.Random(seed)
    now = (now or datetime.now(UTC)) - timedelta(minutes=1)
    first_day = (now - timedelta(days=days)).replace(hour=0, minute=0, second=0, microsecond=0)
    customers = [f"+1555{n:07d}" for n in range(4000)]
    channel_of = {c: _pick(rng, CHANNELS) for c in customers}
    segmented: set[str] = set()
    counter = 0
    for d in range(days + 1):
        day = first_day + timedelta(days=d)
        events: list[dict[str, Any]] = []
        weekday_factor = 0.65 if day.weekday() >= 5 else 1.0
        growth = 0.8 + 0.4 * d / max(days, 1)
        for wf_id, wf in WORKFLOWS.items():
            n = int(wf["per_day"] * weekday_factor * growth * rng.uniform(0.85, 1.15))
            for _ in range(n):
                counter += 1
                hour = rng.choices(range(24), HOUR_WEIGHTS)[0]
                start = day + timedelta(hours=hour, seconds=rng.uniform(0, 3600))
                if start > now - timedelta(minutes=5):
                    continue
                # Returning customers: most traffic comes from a smaller active pool.
                pool = 800 + int(3200 * d / days)
                customer = customers[
                    min(int(rng.paretovariate(1.2)) * 7 % pool, pool - 1)
                    if rng.random() < 0.7
                    else rng.randrange(pool)
                ]
                channel = channel_of[customer]
                events.extend(
                    _execution(rng, wf_id, wf, f"x-{seed}-{counter}", customer, channel, start, now)
                )
                if customer not in segmented or rng.random() < 0.01:
                    segmented.add(customer)
                    events.append(
                        {
                            "type": "customer.updated",
                            "customer_id": customer,
                            "timestamp": _ts(start),
                            "segment": rng.choice(SEGMENTS),
                        }
                    )
            if rng.random() < 0.3:
                pass
        for jtype, steps in JOURNEYS.items():
            for _ in range(int(40 * weekday_factor * growth)):
                counter += 1
                start = day + timedelta(
                    hours=rng.choices(range(24), HOUR_WEIGHTS)[0], seconds=rng.uniform(0, 3600)
                )
                if start > now - timedelta(hours=1):
                    continue
                customer = customers[rng.randrange(800 + int(3200 * d / days))]
                events.extend(
                    _journey(
                        rng,
                        jtype,
                        steps,
                        f"j-{seed}-{counter}",
                        customer,
                        channel_of[customer],
                        start,
                    )
                )
        rng.shuffle(events)  # arrival order is not time order
        yield min(d + 1, days), events


def _execution(
    rng: random.Random,
    wf_id: str,
    wf: dict[str, Any],
    exec_id: str,
    customer: str,
    channel: str,
    start: datetime,
    now: datetime,
) -> list[dict[str, Any]]:
    base = {"workflow_id": wf_id, "execution_id": exec_id}
    out: list[dict[str, Any]] = [
        {**base, "type": "execution.started", "timestamp": _ts(start), "channel": channel,
         "customer_id": customer, "workflow_name": wf["name"]}
    ]  # fmt: skip
    sigma = 0.7 if channel != "voice" else 0.5
    duration = int(
        wf["median_ms"] * math.exp(rng.gauss(0, sigma)) * (1.4 if channel == "voice" else 1)
    )
    t = start
    failed = rng.random() < wf["fail"] * (1.5 if channel == "voice" else 1)
    nodes = wf["nodes"]
    fail_at = rng.randrange(len(nodes)) if failed else -1
    for i, (node_id, node_type) in enumerate(nodes):
        node_ms = max(50, int(duration / len(nodes) * rng.uniform(0.3, 1.7)))
        t += timedelta(milliseconds=node_ms)
        if i == fail_at:
            err = _pick(rng, ERRORS)
            out.append(
                {
                    **base,
                    "type": "node.failed",
                    "timestamp": _ts(t),
                    "node_id": node_id,
                    "node_type": node_type,
                    "error_type": err,
                    "duration_ms": node_ms,
                }
            )
            break
        out.append(
            {
                **base,
                "type": "node.completed",
                "timestamp": _ts(t),
                "node_id": node_id,
                "node_type": node_type,
                "duration_ms": node_ms,
            }
        )
        if node_type in ("message", "question"):
            out.append(
                {
                    **base,
                    "type": "message.sent",
                    "timestamp": _ts(t),
                    "customer_id": customer,
                    "channel": channel,
                }
            )
            if rng.random() < 0.85:
                reply = t + timedelta(seconds=rng.uniform(5, 240))
                out.append(
                    {
                        **base,
                        "type": "message.received",
                        "timestamp": _ts(reply),
                        "customer_id": customer,
                        "channel": channel,
                    }
                )
    end = start + timedelta(milliseconds=duration)
    if end > now and rng.random() < 0.8:
        return out  # still running
    if failed:
        out.append(
            {
                **base,
                "type": "execution.failed",
                "timestamp": _ts(end),
                "duration_ms": duration,
                "error_type": _pick(rng, ERRORS),
                "channel": channel,
                "customer_id": customer,
            }
        )
    else:
        out.append(
            {
                **base,
                "type": "execution.completed",
                "timestamp": _ts(end),
                "duration_ms": duration,
                "channel": channel,
                "customer_id": customer,
            }
        )
        if rng.random() < 0.25:
            fb: dict[str, Any] = {
                "type": "feedback.submitted",
                "workflow_id": wf_id,
                "execution_id": exec_id,
                "customer_id": customer,
                "channel": channel,
                "timestamp": _ts(min(end + timedelta(minutes=2), now)),
            }
            fb["csat"] = rng.choices([1, 2, 3, 4, 5], [3, 4, 10, 35, 48])[0]
            if rng.random() < 0.5:
                fb["nps"] = rng.choices(range(11), [1, 1, 1, 2, 2, 4, 5, 10, 20, 24, 30])[0]
            out.append(fb)
    return out


def _journey(
    rng: random.Random,
    jtype: str,
    steps: list[str],
    journey_id: str,
    customer: str,
    channel: str,
    start: datetime,
) -> list[dict[str, Any]]:
    base = {"journey_type": jtype, "journey_id": journey_id, "customer_id": customer}
    out: list[dict[str, Any]] = []
    t = start
    for k, name in enumerate(steps, start=1):
        out.append(
            {
                **base,
                "type": "journey.step",
                "timestamp": _ts(t),
                "step": k,
                "step_name": name,
                "channel": channel,
            }
        )
        t += timedelta(seconds=rng.lognormvariate(4 + k * 0.4, 0.6))
        if k < len(steps) and rng.random() < 0.08 + 0.05 * k:
            if rng.random() < 0.9:
                out.append(
                    {
                        **base,
                        "type": "journey.dropped",
                        "timestamp": _ts(t),
                        "reason": _pick(rng, DROP_REASONS),
                        "step": k,
                    }
                )
            return out
    out.append({**base, "type": "journey.completed", "timestamp": _ts(t)})
    return out


class LiveDemo:
    """The demo's executions as they happen, for realtime numbers that move.

    Each call to ``due`` starts the executions of the time since the last
    call (about ``per_minute`` a minute) and gives the events whose time has
    come: an execution's nodes, messages and completion follow over the
    seconds or minutes it runs, so some are running at any moment.
    """

    def __init__(self, *, seed: int = 7, per_minute: float = 20.0) -> None:
        self._rng = random.Random(seed)
        self._per_minute = per_minute
        self._waiting: list[tuple[datetime, int, dict[str, Any]]] = []
        self._last: datetime | None = None
        self._counter = 0
        self._order = itertools.count()
        self._customers = [f"+1555{n:07d}" for n in range(800)]

    def due(self, now: datetime) -> list[dict[str, Any]]:
        rng = self._rng
        elapsed = (now - self._last).total_seconds() if self._last else 2.0
        self._last = now
        weights = [wf["per_day"] for wf in WORKFLOWS.values()]
        for _ in range(_poisson(rng, self._per_minute * min(elapsed, 60.0) / 60)):
            self._counter += 1
            wf_id = rng.choices(list(WORKFLOWS), weights)[0]
            customer = rng.choice(self._customers)
            channel = CHANNELS[sum(map(ord, customer)) % len(CHANNELS)][0]
            start = now - timedelta(seconds=rng.uniform(0, elapsed))
            events = _execution(rng, wf_id, WORKFLOWS[wf_id], f"live-{now:%Y%m%d%H%M%S}-"
                                f"{self._counter}", customer, channel, start, start + timedelta(days=1))  # fmt: skip
            for e in events:
                at = datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00"))
                heapq.heappush(self._waiting, (at, next(self._order), e))
        out = []
        while self._waiting and self._waiting[0][0] <= now:
            out.append(heapq.heappop(self._waiting)[2])
        return out


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson-distributed count (Knuth's method; means here are small)."""
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1
