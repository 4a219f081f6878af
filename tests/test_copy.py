"""copy-events: every event and workflow of one engine into another, exactly, resumably."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from conftest import ENGINES, Api, make_key, stored_events
from factories import workflow_events
from kaie_analytics.analytics.facts import EventEngine, Workflow
from kaie_analytics.app import create_app
from kaie_analytics.config import Settings
from kaie_analytics.copying import CopyState, copy_events
from kaie_analytics.engines import open_engine

START = datetime(2024, 1, 1, tzinfo=UTC)


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("target_backend", ENGINES)
def test_copy_is_exact_resumable_and_verified(
    tmp_path: Path, api: Api, other_api: Api, settings: Settings, target_backend: str
) -> None:
    if target_backend == settings.events_backend:
        pytest.skip("a copy goes to another engine")
    api.send(workflow_events(1, START, 20, n=400, wf="wf-a"))
    other_api.send(workflow_events(2, START, 3, n=50, wf="wf-b"))
    assert api.put("/v1/workflows/wf-a", json={"name": "Checkout"}).status_code == 200
    api.compact()
    query = "/v1/analytics/workflows/wf-a?start_date=2023-12-31&end_date=2024-01-25&granularity=day"
    want = api.get(query).json()
    source = api.client.app.state.engine  # type: ignore[attr-defined]
    want_events = {
        t: sorted(stored_events(source, t), key=lambda e: e["id"]) for t in ("acme", "globex")
    }
    want_workflows = {t: source.workflows(t) for t in ("acme", "globex")}

    target_settings = Settings(data_dir=tmp_path / "target", events_backend=target_backend)
    state = CopyState(tmp_path / "copy.json", "test")
    target = open_engine(target_settings)
    try:
        _copy_twice(source, target, state, want_events, want_workflows)
    finally:
        target.close()

    # The API on the target answers as the source did.
    key = make_key(target_settings, "acme")
    with TestClient(create_app(target_settings)) as client:
        got = client.get(query, headers={"Authorization": f"Bearer {key}"}).json()
    assert got == want


def _copy_twice(
    source: EventEngine, target: EventEngine, state: CopyState,
    want_events: dict[str, list[dict[str, Any]]], want_workflows: dict[str, list[Workflow]],
) -> None:  # fmt: skip
    """An interrupted copy, then the copy again: it finishes, exactly."""
    copied = [0]

    def stop_after_some(n: int) -> None:
        copied[0] += n
        if copied[0] > 300:
            raise Interrupted

    with pytest.raises(Interrupted):
        copy_events(source, target, state, on_events=stop_after_some)
    assert state.done_until("acme") is not None  # some days are recorded as done
    total = [0]
    assert (
        copy_events(source, target, state, on_events=lambda n: total.__setitem__(0, total[0] + n))
        == []
    )
    assert total[0] == sum(len(v) for v in want_events.values())
    assert not state.path.exists()
    for tenant, events in want_events.items():
        assert sorted(stored_events(target, tenant), key=lambda e: e["id"]) == events
        assert target.workflows(tenant) == want_workflows[tenant]
