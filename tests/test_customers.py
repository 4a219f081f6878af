"""Customer engagement and journeys against the independent oracle."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import oracle
from conftest import Api
from factories import iso

START = datetime(2024, 4, 1, tzinfo=UTC)
END = datetime(2024, 4, 14, 23, 59, 59, 999999, tzinfo=UTC)


def msg(kind: str, cust: str, ch: str, t: datetime, **kw: Any) -> dict[str, Any]:
    return {
        "type": f"message.{kind}",
        "customer_id": cust,
        "channel": ch,
        "timestamp": iso(t),
        **kw,
    }


def customer_events(seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    chans = ["whatsapp", "sms", "voice"]
    for c in range(60):
        cust = f"cust-{c}"
        ch = rng.choice(chans)
        t = START + timedelta(days=rng.uniform(-20, 16))
        for _ in range(rng.randrange(1, 12)):
            out.append(msg(rng.choice(["sent", "received"]), cust, ch, t))
            t += timedelta(minutes=rng.choice([1, 5, 29, 45, 300, 2000]))
        if rng.random() < 0.4:
            out.append({"type": "feedback.submitted", "customer_id": cust, "channel": ch,
                        "timestamp": iso(START + timedelta(days=rng.uniform(-14, 14))),
                        "csat": rng.randrange(1, 6), "nps": rng.randrange(0, 11)})  # fmt: skip
        for k in range(rng.randrange(0, 3)):
            out.append({"type": "customer.updated", "customer_id": cust,
                        "timestamp": iso(START + timedelta(days=k * 5 - 3)),
                        "segment": rng.choice(["vip", "smb"])})  # fmt: skip
    # Exact 30-minute gaps: continues at 30:00, splits at 30:00.000001.
    base = START + timedelta(days=3)
    out += [msg("received", "gap", "sms", base), msg("sent", "gap", "sms", base + timedelta(minutes=30)),
            msg("sent", "gap", "sms", base + timedelta(minutes=60, microseconds=1))]  # fmt: skip
    # A session that starts before the period and runs into it.
    out += [msg("received", "straddle", "sms", START - timedelta(minutes=10)),
            msg("sent", "straddle", "sms", START + timedelta(minutes=5))]  # fmt: skip
    # First message ever before the period (returning) vs inside it (new).
    out += [msg("received", "old", "voice", START - timedelta(days=40)),
            msg("received", "old", "voice", START + timedelta(days=2)),
            msg("received", "fresh", "voice", START + timedelta(days=2))]  # fmt: skip
    rng.shuffle(out)
    return out


def send_split(api: Api, events: list[dict[str, Any]], compact: str) -> None:
    """Send events, folding none, the first half, all, or each fifth into the derived tables."""
    if compact == "steps":
        for i in range(5):
            api.send(events[i * len(events) // 5 : (i + 1) * len(events) // 5])
            api.compact()
        return
    half = len(events) // 2 if compact == "half" else len(events)
    api.send(events[:half])
    if compact != "none":
        api.compact()
    if events[half:]:
        api.send(events[half:])


@pytest.mark.parametrize("compact", ["none", "half", "all", "steps"])
@pytest.mark.parametrize(
    ("segment", "channel"), [(None, None), ("vip", None), (None, "sms"), ("smb", "voice")]
)
def test_engagement_matches_oracle(
    api: Api, other_api: Api, segment: str | None, channel: str | None, compact: str
) -> None:
    events = customer_events(11)
    send_split(api, events, compact)
    other_api.send(customer_events(12))
    params = {"start_date": "2024-04-01", "end_date": "2024-04-14"}
    if segment:
        params["customer_segment"] = segment
    if channel:
        params["channel"] = channel
    r = api.get("/v1/analytics/customers/engagement", params=params)
    assert r.status_code == 200, r.text
    got = r.json()["data"]
    want = oracle.engagement(events, START, END, segment, channel)
    assert got["engagement"] == want["engagement"]
    assert got["trends"] == want["trends"]


def test_engagement_edge_cases(api: Api) -> None:
    api.send(customer_events(11))
    e = api.get("/v1/analytics/customers/engagement",
                params={"start_date": "2024-04-01", "end_date": "2024-04-14",
                        "channel": "voice"}).json()["data"]["engagement"]  # fmt: skip
    assert e["new_customers"] >= 1 and e["returning_customers"] >= 1
    empty = api.get("/v1/analytics/customers/engagement",
                    params={"start_date": "2010-01-01", "end_date": "2010-01-02"}).json()["data"]  # fmt: skip
    assert empty["engagement"]["active_customers"] == 0
    assert empty["engagement"]["average_session_duration"] is None
    assert empty["engagement"]["net_promoter_score"] is None
    assert empty["engagement"]["total_customers"] == 0


def journey_events(seed: int, jtype: str = "support", n: int = 150) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    names = ["Welcome", "Information Collection", "Resolution", "Survey"]
    out: list[dict[str, Any]] = []
    for i in range(n):
        jid = f"{jtype}-{i}"
        base = {"journey_type": jtype, "journey_id": jid, "customer_id": f"c{i % 40}"}
        t = START + timedelta(days=rng.uniform(-3, 15))
        last = rng.randrange(1, 5)
        for k in range(1, last + 1):
            if k > 1 and rng.random() < 0.1:
                continue  # skips a step
            out.append({**base, "type": "journey.step", "step": k, "timestamp": iso(t),
                        "step_name": names[k - 1]})  # fmt: skip
            if rng.random() < 0.1:  # repeats a step
                out.append({**base, "type": "journey.step", "step": k,
                            "timestamp": iso(t + timedelta(seconds=5)),
                            "step_name": names[k - 1] + (" v2" if rng.random() < 0.5 else "")})  # fmt: skip
            t += timedelta(seconds=rng.uniform(1, 900))
        end = rng.random()
        if last == 4 and end < 0.8:
            out.append({**base, "type": "journey.completed", "timestamp": iso(t)})
        elif end < 0.6:
            out.append({**base, "type": "journey.dropped", "timestamp": iso(t),
                        "reason": rng.choice(["timeout", "user_abandoned", "error"]),
                        **({"step": last} if rng.random() < 0.5 else {})})  # fmt: skip
        # else: stops without a drop event
    rng.shuffle(out)  # out of order
    return out


@pytest.mark.parametrize("compact", ["none", "half", "all", "steps"])
def test_journey_matches_oracle(api: Api, other_api: Api, compact: str) -> None:
    events = journey_events(3) + journey_events(4, "purchase", 60)
    random.Random(1).shuffle(events)
    send_split(api, events, compact)
    other_api.send(journey_events(5))
    r = api.get("/v1/analytics/customers/journey", params={"start_date": "2024-04-01",
                "end_date": "2024-04-14", "journey_type": "support"})  # fmt: skip
    assert r.status_code == 200, r.text
    got = r.json()["data"]["journey"]
    want = oracle.journey(events, "support", START, END)
    assert got == want
    for s in got["journey_steps"]:
        assert s["completion_rate"] is None or 0 <= s["completion_rate"] <= 1
    for d in got["drop_off_points"]:
        assert 0 <= d["drop_off_rate"] <= 1
    r = api.get("/v1/analytics/customers/journey", params={"start_date": "2024-04-01",
                "end_date": "2024-04-14", "journey_type": "support",
                "include_dropoffs": "false"})  # fmt: skip
    assert "drop_off_points" not in r.json()["data"]["journey"]


def test_journeys_over_parts_of_slots_before_and_after_late_events(api: Api) -> None:
    """Periods whose ends fall inside a 15-minute slot, to the microsecond; then late
    step events that move journeys' first steps to other slots (some out of the
    period, leaving their slots empty), answered before they are folded and after."""
    events = journey_events(6)
    # Journeys that begin inside the slots the first period's ends cut, on both sides.
    edges = [
        datetime(2024, 4, 2, 7, m, s, us, tzinfo=UTC)
        for m, s, us in ((0, 0, 0), (5, 0, 0), (7, 30, 0), (7, 30, 1), (10, 0, 0))
    ]
    edges += [
        datetime(2024, 4, 9, 16, m, s, us, tzinfo=UTC)
        for m, s, us in ((46, 0, 0), (52, 0, 500000), (52, 0, 500001), (59, 0, 0))
    ]
    for i, t in enumerate(edges):
        base = {"journey_type": "support", "journey_id": f"edge-{i}", "customer_id": "c"}
        events += [{**base, "type": "journey.step", "step": 1, "timestamp": iso(t),
                    "step_name": "Welcome"},
                   {**base, "type": "journey.step", "step": 2, "step_name": "Resolution",
                    "timestamp": iso(t + timedelta(seconds=i + 1))}]  # fmt: skip
    api.send(events)
    api.compact()
    periods = [
        (datetime(2024, 4, 2, 7, 7, 30, 1, tzinfo=UTC),
         datetime(2024, 4, 9, 16, 52, 0, 500000, tzinfo=UTC)),
        (START, END),
        (datetime(2024, 4, 5, 10, 0, tzinfo=UTC), datetime(2024, 4, 5, 10, 14, 59, tzinfo=UTC)),
    ]  # fmt: skip

    def check(events: list[dict[str, Any]]) -> None:
        for start, end in periods:
            params = {"start_date": iso(start), "end_date": iso(end), "journey_type": "support"}
            r = api.get(
                "/v1/analytics/customers/journey",
                params=params,
                headers={"Cache-Control": "no-cache"},
            )  # the engine's answer each time
            assert r.status_code == 200, r.text
            assert r.json()["data"]["journey"] == oracle.journey(events, "support", start, end)

    check(events)
    rng = random.Random(7)
    late = [
        {**e, "timestamp": iso(datetime.fromisoformat(e["timestamp"])
                               - timedelta(minutes=rng.choice([20, 600, 4000])))}
        for e in events
        if e["type"] == "journey.step" and e["step"] == 1 and rng.random() < 0.3
    ]  # fmt: skip
    events += late
    api.send(late)
    check(events)  # not folded yet
    api.compact()
    check(events)


def test_journey_type_required_with_several_types(api: Api) -> None:
    api.send(journey_events(3, n=5) + journey_events(4, "purchase", 5))
    r = api.get("/v1/analytics/customers/journey")
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "INVALID_PARAMETER" and err["field"] == "journey_type"
    assert "purchase" in err["details"] and "support" in err["details"]


def test_single_journey_type_is_the_default(api: Api) -> None:
    events = journey_events(8, n=30)
    api.send(events)
    r = api.get("/v1/analytics/customers/journey",
                params={"start_date": "2024-03-20", "end_date": "2024-04-20"})  # fmt: skip
    got = r.json()["data"]["journey"]
    want = oracle.journey(events, "support", datetime(2024, 3, 20, tzinfo=UTC),
                          datetime(2024, 4, 20, 23, 59, 59, 999999, tzinfo=UTC))  # fmt: skip
    assert got == want


KATHMANDU = ZoneInfo("Asia/Kathmandu")  # UTC+5:45: local midnight is not on a UTC hour

# (query parameters, period start, period end) — ends inclusive.
ACTIVE_PERIODS = [
    # Over days, with both ends inside a 15-minute slot, to the microsecond.
    (
        {"start_date": "2024-04-02T07:07:30.000001Z", "end_date": "2024-04-09T16:52:00.5Z"},
        datetime(2024, 4, 2, 7, 7, 30, 1, tzinfo=UTC),
        datetime(2024, 4, 9, 16, 52, 0, 500000, tzinfo=UTC),
    ),
    # Local days in a zone whose midnight falls on a quarter hour.
    (
        {"start_date": "2024-04-03", "end_date": "2024-04-08", "timezone": "Asia/Kathmandu"},
        datetime(2024, 4, 3, tzinfo=KATHMANDU),
        datetime(2024, 4, 8, 23, 59, 59, 999999, tzinfo=KATHMANDU),
    ),
    # Within one day, across slots; and within one slot.
    (
        {"start_date": "2024-04-05T00:10:00Z", "end_date": "2024-04-05T09:00:00Z"},
        datetime(2024, 4, 5, 0, 10, tzinfo=UTC),
        datetime(2024, 4, 5, 9, tzinfo=UTC),
    ),
    (
        {"start_date": "2024-04-05T08:01:00Z", "end_date": "2024-04-05T08:14:00Z"},
        datetime(2024, 4, 5, 8, 1, tzinfo=UTC),
        datetime(2024, 4, 5, 8, 14, tzinfo=UTC),
    ),
]


def activity_events(lo: datetime, hi: datetime, seed: int) -> list[dict[str, Any]]:
    """Received messages around the period's edges and its slot and day boundaries."""
    rng = random.Random(seed)
    us = timedelta(microseconds=1)
    quarter = timedelta(minutes=15)
    lo_slot = lo.astimezone(UTC).replace(minute=lo.astimezone(UTC).minute // 15 * 15, second=0,
                                         microsecond=0)  # fmt: skip
    marks = [lo - us, lo, lo + us, hi - us, hi, hi + us, lo_slot, lo_slot + quarter - us,
             lo_slot + quarter, lo.astimezone(UTC).replace(hour=0, minute=0, second=0,
                                                           microsecond=0) + timedelta(days=1)]  # fmt: skip
    out = []
    for i, t in enumerate(marks):
        out.append(msg("received", f"edge-{i}", rng.choice(["sms", "voice"]), t))
    span = (hi - lo) + timedelta(days=2)
    for i in range(120):
        t = lo - timedelta(days=1) + span * rng.random()
        out.append(msg(rng.choice(["received", "received", "sent"]), f"c-{i % 70}",
                       rng.choice(["sms", "voice", "whatsapp"]), t))  # fmt: skip
    for i in range(0, 70, 3):
        out.append({"type": "customer.updated", "customer_id": f"c-{i}",
                    "timestamp": iso(lo - timedelta(days=3)), "segment": "vip"})  # fmt: skip
    rng.shuffle(out)
    return out


@pytest.mark.parametrize("compact", ["none", "half", "steps"])
@pytest.mark.parametrize(("params", "lo", "hi"), ACTIVE_PERIODS)
def test_active_customers_at_bucket_edges(
    api: Api, compact: str, params: dict[str, str], lo: datetime, hi: datetime
) -> None:
    """Active counts from bitmaps of whole days and slots plus raw edges equal a plain count."""
    events = activity_events(lo, hi, 5)
    send_split(api, events, compact)
    for extra in ({}, {"channel": "sms"}, {"customer_segment": "vip"}):
        r = api.get("/v1/analytics/customers/engagement", params={**params, **extra})
        assert r.status_code == 200, r.text
        got = r.json()["data"]
        want = oracle.engagement(events, lo, hi, extra.get("customer_segment"),
                                 extra.get("channel"))  # fmt: skip
        assert got["engagement"] == want["engagement"], extra
        assert got["trends"] == want["trends"], extra
