"""Workflow metrics and performance against the independent oracle."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import oracle
from conftest import Api
from factories import iso, workflow_events

START = datetime(2024, 3, 4, tzinfo=UTC)  # the US DST change (2024-03-10) is inside
END = datetime(2024, 3, 17, 23, 59, 59, 999999, tzinfo=UTC)


@pytest.fixture
def loaded(api: Api, other_api: Api) -> list[dict[str, Any]]:
    events = workflow_events(1, START - timedelta(days=14), 30)
    other_wf = workflow_events(2, START, 14, n=60, wf="wf-2")
    # Half compacted into the executions table, half pending: both paths are read.
    half = len(events) // 2
    api.send(events[:half] + other_wf)
    api.compact()
    api.send(events[half:])
    # Another tenant with the same workflow id must never show up.
    other_api.send(workflow_events(3, START, 14, n=80))
    return events + other_wf


def _get(api: Api, path: str, **params: Any) -> dict[str, Any]:
    # Uncached: a fold between two requests changes where the numbers come from, not them.
    r = api.get(path, params=params, headers={"Cache-Control": "no-cache"})
    assert r.status_code == 200, r.text
    return r.json()["data"]


@pytest.mark.parametrize("gran", ["hour", "day", "week", "month"])
@pytest.mark.parametrize("tz", ["UTC", "America/New_York"])
def test_metrics_match_oracle(api: Api, loaded: list[dict[str, Any]], gran: str, tz: str) -> None:
    zone = ZoneInfo(tz)
    start = datetime(2024, 3, 4, tzinfo=zone).astimezone(UTC)
    end = datetime(2024, 3, 17, 23, 59, 59, 999999, tzinfo=zone).astimezone(UTC)
    got = _get(api, "/v1/analytics/workflows/wf-1", start_date="2024-03-04",
               end_date="2024-03-17", granularity=gran, timezone=tz)  # fmt: skip
    want = oracle.workflow_metrics(loaded, "wf-1", start, end, gran, zone)
    assert got["period"] == {"start_date": iso(start), "end_date": iso(end)}
    assert got["metrics"] == want["metrics"]
    assert got["trends"] == want["trends"]
    assert got["daily_metrics"] == want["daily_metrics"]
    if gran == "day":
        assert len(got["daily_metrics"]) == 14


@pytest.mark.parametrize(
    "group_by",
    [("channel",), ("customer_segment",), ("channel", "customer_segment"),
     ("customer_segment", "channel")],
)  # fmt: skip
def test_group_by_and_metric_selection(
    api: Api, loaded: list[dict[str, Any]], group_by: tuple[str, ...]
) -> None:
    """One group per combination of the fields' values, keyed by every field."""
    chosen = ("total_executions", "success_rate", "unique_customers", "channel_breakdown")
    got = _get(api, "/v1/analytics/workflows/wf-1", start_date=iso(START), end_date=iso(END),
               metrics=",".join(chosen), group_by=",".join(group_by))  # fmt: skip
    assert set(got["metrics"]) == set(chosen)
    want = oracle.groups(loaded, "wf-1", START, END, group_by)
    mine = {tuple(g[f] for f in group_by): g["metrics"] for g in got["groups"]}
    assert all(set(g) == {*group_by, "metrics"} for g in got["groups"])
    assert set(mine) == set(want) and len(mine) == len(got["groups"])
    for key, block in mine.items():
        assert block == {k: want[key][k] for k in chosen}, key


@pytest.mark.parametrize("tz", ["UTC", "America/New_York", "Asia/Kolkata"])
def test_performance_matches_oracle(api: Api, loaded: list[dict[str, Any]], tz: str) -> None:
    zone = ZoneInfo(tz)
    got = _get(api, "/v1/analytics/workflows/wf-1/performance", start_date=iso(START),
               end_date=iso(END), timezone=tz)  # fmt: skip
    want = oracle.performance(loaded, "wf-1", START, END, zone)
    assert got["performance"] == want


def test_a_node_whose_type_changed_has_its_latest_type(api: Api) -> None:
    """A node's type is that of its latest event: one that changed type ("llm", then
    "http", then "llm" again in a late event), one that never did; folded, pending
    and both, as the oracle's."""
    start, end = datetime(2024, 6, 1, tzinfo=UTC), datetime(2024, 6, 2, tzinfo=UTC)
    sent: list[dict[str, Any]] = []

    def execution(i: int, at: datetime, node_type: str) -> list[dict[str, Any]]:
        base = {"workflow_id": "w", "execution_id": f"x{i}", "channel": "sms"}
        return [
            {**base, "id": f"s{i}", "type": "execution.started", "timestamp": iso(at)},
            {**base, "id": f"n{i}", "type": "node.completed", "node_id": "changes",
             "node_type": node_type, "duration_ms": 10 + i, "timestamp": iso(at + timedelta(seconds=1))},
            {**base, "id": f"k{i}", "type": "node.failed", "node_id": "keeps", "node_type": "api",
             "error_type": "timeout", "timestamp": iso(at + timedelta(seconds=2))},
        ]  # fmt: skip

    def check() -> dict[str, Any]:
        got = _get(api, "/v1/analytics/workflows/w/performance", start_date=iso(start),
                   end_date=iso(end))["performance"]  # fmt: skip
        assert got == oracle.performance(sent, "w", start, end, ZoneInfo("UTC"))
        return {n["node_id"]: n["type"] for n in got["node_performance"]}

    for i, (hour, node_type) in enumerate([(3, "llm"), (9, "llm"), (15, "http")]):
        sent += execution(i, start + timedelta(hours=hour, minutes=20), node_type)
    api.send(sent)
    api.compact()
    assert check() == {"changes": "http", "keeps": "api"}
    late = execution(3, start + timedelta(hours=20), "llm")
    sent += late
    api.send(late)
    check()
    api.compact()
    check()


def test_performance_flags(api: Api, loaded: list[dict[str, Any]]) -> None:
    got = _get(api, "/v1/analytics/workflows/wf-1/performance", start_date=iso(START),
               end_date=iso(END), include_nodes="false", include_channels="false")  # fmt: skip
    assert "node_performance" not in got["performance"]
    assert "channel_performance" not in got["performance"]


def test_period_end_is_inclusive_to_the_microsecond(api: Api) -> None:
    end = datetime(2024, 5, 1, 12, tzinfo=UTC)
    events = [
        {"type": "execution.started", "timestamp": iso(end), "workflow_id": "w",
         "execution_id": "at-end", "channel": "sms"},
        {"type": "execution.started", "timestamp": iso(end + timedelta(microseconds=1)),
         "workflow_id": "w", "execution_id": "after-end", "channel": "sms"},
        {"type": "execution.started", "timestamp": "2024-05-01T00:00:00Z",
         "workflow_id": "w", "execution_id": "at-start", "channel": "sms"},
    ]  # fmt: skip
    api.send(events)
    got = _get(api, "/v1/analytics/workflows/w", start_date="2024-05-01T00:00:00Z",
               end_date=iso(end))  # fmt: skip
    assert got["metrics"]["total_executions"] == 2
    assert got["metrics"]["success_rate"] is None  # nothing finished: null, not 0
    assert got["metrics"]["average_duration_ms"] is None


def test_empty_period_and_defaults(api: Api) -> None:
    api.send([{"type": "execution.started", "timestamp": "2020-01-01T00:00:00Z",
               "workflow_id": "w", "execution_id": "old", "channel": "sms"}])  # fmt: skip
    got = _get(api, "/v1/analytics/workflows/w")
    start = datetime.fromisoformat(got["period"]["start_date"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(got["period"]["end_date"].replace("Z", "+00:00"))
    assert end - start == timedelta(days=30)
    assert got["metrics"]["total_executions"] == 0
    assert got["metrics"]["customer_satisfaction"] is None
    assert len(got["daily_metrics"]) == 31
    assert all(d["executions"] == 0 and d["success_rate"] is None for d in got["daily_metrics"])
    perf = _get(api, "/v1/analytics/workflows/w/performance")["performance"]
    assert perf["execution_time"] == {"average_ms": None, "median_ms": None, "p95_ms": None,
                                      "p99_ms": None}  # fmt: skip
    assert perf["throughput"]["peak_hour"] is None


def test_late_events_change_the_answer(api: Api) -> None:
    """A terminal event that arrives after the start, then a later failed event."""
    base = {"workflow_id": "w", "execution_id": "x"}
    q = {"start_date": "2024-06-01", "end_date": "2024-06-02"}
    api.send([{**base, "type": "execution.completed", "timestamp": "2024-06-01T10:00:10Z",
               "duration_ms": 10_000, "id": "c"}])  # fmt: skip
    m = _get(api, "/v1/analytics/workflows/w", **q)["metrics"]
    assert (m["successful_executions"], m["average_duration_ms"]) == (1, 10_000)
    api.compact()
    api.send([{**base, "type": "execution.started", "timestamp": "2024-06-01T10:00:00Z",
               "channel": "voice", "customer_id": "c1", "id": "s"},
              {**base, "type": "execution.failed", "timestamp": "2024-06-01T10:00:20Z",
               "error_type": "timeout", "id": "f"}])  # fmt: skip
    m = _get(api, "/v1/analytics/workflows/w", **q)["metrics"]
    assert m["failed_executions"] == 1 and m["successful_executions"] == 0
    assert m["average_duration_ms"] == 20_000  # no duration on the failure: timestamp difference
    assert m["channel_breakdown"] == {"voice": 1}
    api.compact()
    assert _get(api, "/v1/analytics/workflows/w", **q)["metrics"] == m


#: A period cut mid-slot at both ends, for executions moved by late start events.
LATE_START = datetime(2024, 3, 5, 3, 7, 11, 5, tzinfo=UTC)
LATE_END = datetime(2024, 3, 9, 17, 52, tzinfo=UTC)


def _late_starts() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Executions' other events, and their start events (to send late)."""
    events = workflow_events(7, START, 6, n=250)
    return (
        [e for e in events if e["type"] != "execution.started"],
        [e for e in events if e["type"] == "execution.started"],
    )


def _same_metrics(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["metrics"] == want["metrics"]
    assert got["trends"] == want["trends"]
    assert got["daily_metrics"] == want["daily_metrics"]


def _check_late_moves(api: Api, tz: str, gran: str) -> None:
    """Terminal events first (each execution starts at terminal − duration, in one
    slot, with the terminal's customer), then the start events, which move
    executions to other slots and give them their customers: compared with the
    oracle while pending, after a fold, and half and half."""
    zone = ZoneInfo(tz)
    first, late = _late_starts()
    half = len(late) // 2
    start, end = LATE_START, LATE_END
    period = {"start_date": iso(start), "end_date": iso(end), "timezone": tz}

    def check(sent: list[dict[str, Any]]) -> None:
        got = _get(api, "/v1/analytics/workflows/wf-1", granularity=gran, **period)
        _same_metrics(got, oracle.workflow_metrics(sent, "wf-1", start, end, gran, zone))
        perf = _get(api, "/v1/analytics/workflows/wf-1/performance", **period)
        assert perf["performance"] == oracle.performance(sent, "wf-1", start, end, zone)

    api.send(first)
    check(first)
    api.compact()
    check(first)
    api.send(late[:half])
    check(first + late[:half])
    api.compact()
    api.send(late[half:])
    check(first + late)
    api.compact()
    check(first + late)


@pytest.mark.parametrize("gran", ["hour", "day"])
@pytest.mark.parametrize("tz", ["UTC", "Asia/Kathmandu"])
def test_rollups_stay_exact_as_late_events_move_executions(api: Api, tz: str, gran: str) -> None:
    """Per-slot rollups, edges cut mid-slot, and start events that arrive after a
    fold: the days a fold changes are dropped from memory and read again."""
    _check_late_moves(api, tz, gran)


def test_a_period_ending_inside_a_slot_before_or_after_its_events(api: Api) -> None:
    """The period ends at 10:05 inside the 10:00–10:15 slot: its events come before the
    end, then (a late one) after it, folded or not; every answer as the oracle's."""
    base = datetime(2024, 5, 2, 10, 0, tzinfo=UTC)

    def execution(i: int, at: datetime) -> list[dict[str, Any]]:
        x = {"workflow_id": "wf-1", "execution_id": f"edge-{i}", "channel": "sms",
             "customer_id": f"c{i % 3}"}  # fmt: skip
        return [
            {**x, "type": "execution.started", "timestamp": iso(at)},
            {**x, "type": "execution.completed", "timestamp": iso(at + timedelta(seconds=1))},
            {"type": "message.sent", "timestamp": iso(at), "workflow_id": "wf-1",
             "customer_id": f"c{i % 3}", "channel": "sms"},
        ]  # fmt: skip

    start, end = base - timedelta(days=1, minutes=53), base + timedelta(minutes=5)
    period = {"start_date": iso(start), "end_date": iso(end)}
    sent: list[dict[str, Any]] = []
    for i, at in enumerate(
        (
            base + timedelta(minutes=1),
            base + timedelta(minutes=4, seconds=59),
            base + timedelta(minutes=9),
            base - timedelta(days=1, minutes=55),
        )
    ):
        sent += execution(i, at)
        api.send(sent[-3:])
        for _ in range(2):  # pending, then folded
            for gran in ("hour", "day"):
                got = _get(api, "/v1/analytics/workflows/wf-1", granularity=gran, **period)
                want = oracle.workflow_metrics(sent, "wf-1", start, end, gran, UTC)
                assert got["metrics"] == want["metrics"]
                assert got["daily_metrics"] == want["daily_metrics"]
            perf = _get(api, "/v1/analytics/workflows/wf-1/performance", **period)
            assert perf["performance"] == oracle.performance(sent, "wf-1", start, end, UTC)
            api.compact()


def check_pieces_between_answers(
    api: Api, other_api: Api | None = None, *, fold_each: bool = False
) -> None:
    """Pending events arrive in pieces between answers and change executions an
    earlier piece began (and executions already folded); with ``other_api``, another
    tenant's too; with ``fold_each``, each piece is folded after its answers. Each
    answer as the oracle's, and again after a last fold."""
    first, late = _late_starts()
    folded, pending = first[: len(first) // 3], first[len(first) // 3 :]
    api.send(folded)
    api.compact()
    sent = list(folded)
    period = {"start_date": iso(LATE_START), "end_date": iso(LATE_END)}
    pieces = [pending[i::3] for i in range(3)] + [late[i::2] for i in range(2)]
    for piece in pieces:
        api.send(piece)
        if other_api is not None:
            other_api.send(piece[::2])
        sent += piece
        got = _get(api, "/v1/analytics/workflows/wf-1", **period)
        _same_metrics(got, oracle.workflow_metrics(sent, "wf-1", LATE_START, LATE_END, "day", UTC))
        perf = _get(api, "/v1/analytics/workflows/wf-1/performance", **period)
        assert perf["performance"] == oracle.performance(sent, "wf-1", LATE_START, LATE_END, UTC)
        if fold_each:
            api.compact()
    api.compact()
    got = _get(api, "/v1/analytics/workflows/wf-1", **period)
    _same_metrics(got, oracle.workflow_metrics(sent, "wf-1", LATE_START, LATE_END, "day", UTC))


def test_answers_between_commits_stay_exact(api: Api, other_api: Api) -> None:
    """Pieces of two tenants between answers (``check_pieces_between_answers``)."""
    check_pieces_between_answers(api, other_api)
