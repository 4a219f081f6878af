"""DuckDB engine: the workflow rollups held in memory stay exact across folds."""

from __future__ import annotations

import time
from datetime import UTC
from typing import Any

import pytest
from fastapi.testclient import TestClient

import oracle
from conftest import Api, make_key
from factories import iso
from kaie_analytics.analytics import workflows as wq
from kaie_analytics.app import create_app
from kaie_analytics.config import Settings
from kaie_analytics.engines.duckdb import rollup_cache, slots
from kaie_analytics.engines.duckdb import store as duckdb_store
from test_workflow_metrics import (
    LATE_END,
    LATE_START,
    _check_late_moves,
    _get,
    _late_starts,
    _same_metrics,
)


def test_rollups_exact_with_no_memory_for_them(settings: Settings) -> None:
    """KAIE_ROLLUP_CACHE_MB=0: every answer reads the days it needs afresh."""
    settings = settings.model_copy(update={"rollup_cache_mb": 0})
    with TestClient(create_app(settings)) as client:
        api = Api(client, make_key(settings, "acme"), "acme")
        _check_late_moves(api, "Asia/Kathmandu", "day")
        assert client.app.state.engine.rollup_cache.nbytes == 0  # type: ignore[attr-defined]


def test_rollups_held_behind_more_folds_than_remembered_start_afresh(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Days held across more folds than the fold log keeps are all dropped."""
    monkeypatch.setattr(rollup_cache, "LOG_FOLDS", 1)
    first, late = _late_starts()
    half = len(late) // 2
    period = {"start_date": iso(LATE_START), "end_date": iso(LATE_END)}
    with TestClient(create_app(settings)) as client:
        api = Api(client, make_key(settings, "acme"), "acme")
        api.send(first)
        api.compact()
        _get(api, "/v1/analytics/workflows/wf-1", **period)  # days held
        for part in (late[:half], late[half:]):  # two folds; the log keeps one
            api.send(part)
            api.compact()
        got = _get(api, "/v1/analytics/workflows/wf-1", **period)
        want = oracle.workflow_metrics(first + late, "wf-1", LATE_START, LATE_END, "day", UTC)
        _same_metrics(got, want)


def test_an_answer_that_finds_many_events_waiting_has_them_folded(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past FOLD_ON_READ execution events waiting, an answer asks the writer to fold."""
    monkeypatch.setattr(duckdb_store, "FOLD_ON_READ", 10)
    first, late = _late_starts()
    api.send(first + late)
    store = api.client.app.state.engine  # type: ignore[attr-defined]
    assert store.has_pending("acme")
    period = {"start_date": iso(LATE_START), "end_date": iso(LATE_END)}
    got = _get(api, "/v1/analytics/workflows/wf-1", **period)
    _same_metrics(
        got, oracle.workflow_metrics(first + late, "wf-1", LATE_START, LATE_END, "day", UTC)
    )
    deadline = time.monotonic() + 30
    while store.has_pending("acme") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not store.has_pending("acme")


def test_a_fold_during_an_answer_makes_it_read_again(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fold that commits after the rollups were taken and before the statements
    ran: the answer is read again, all of it from the new fold."""
    first, late = _late_starts()
    api.send(first)
    api.compact()
    store = api.client.app.state.engine  # type: ignore[attr-defined]
    params = {"start_date": [iso(LATE_START)], "end_date": [iso(LATE_END)]}
    query = wq.parse_metrics_query("acme", "wf-1", params)
    wq.WorkflowMetricsRunner(store, query).compute()  # the days are in memory now
    real_plan = slots.plan
    plans = []

    def plan_after_a_fold(*args: Any, **kwargs: Any) -> slots.SlotPlan:
        plans.append(store.rollup_gen)
        if len(plans) == 1:  # late starts move executions, and are folded
            api.send(late)
            api.compact()
        return real_plan(*args, **kwargs)

    monkeypatch.setattr(slots, "plan", plan_after_a_fold)
    got = wq.WorkflowMetricsRunner(store, query).compute()
    assert len(plans) == 2 and plans[1] > plans[0]
    _same_metrics(
        got, oracle.workflow_metrics(first + late, "wf-1", LATE_START, LATE_END, "day", UTC)
    )
