"""DuckDB engine: folding a backlog of any size, in pieces, within memory, with the same
numbers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
import pytest
from fastapi.testclient import TestClient

import oracle
from conftest import GENEROUS_LIMITS, Api, make_key
from factories import iso, workflow_events
from kaie_analytics.app import create_app
from kaie_analytics.config import Settings
from kaie_analytics.engines.duckdb import folds

START = datetime(2024, 3, 4, tzinfo=UTC)
END = datetime(2024, 3, 10, 23, 59, 59, 999999, tzinfo=UTC)


def _settings(data_dir: Path, **overrides: Any) -> Settings:
    return Settings(data_dir=data_dir, rate_limits=GENEROUS_LIMITS, **overrides)


def _answers(api: Api) -> list[dict[str, Any]]:
    q = {"start_date": iso(START), "end_date": iso(END)}
    out = []
    for path in ("/v1/analytics/workflows/wf-1", "/v1/analytics/workflows/wf-1/performance",
                 "/v1/analytics/customers/engagement"):  # fmt: skip
        r = api.get(path, params=q, headers={"Cache-Control": "no-cache"})
        assert r.status_code == 200, r.text
        out.append(r.json()["data"])
    return out


def test_a_backlog_from_before_opening_folds_in_pieces(tmp_path: Path) -> None:
    """Events a stopped server never folded (an older version, a bulk load) fold in pieces."""
    events = workflow_events(7, START - timedelta(days=3), 10, n=400)
    held = _settings(tmp_path / "d", compact_idle_s=3600, compact_after_events=10**9)
    with TestClient(create_app(held)) as c:
        api = Api(c, make_key(held, "acme"), "acme")
        api.send(events)
        unfolded = _answers(api)  # from the raw events: nothing is folded yet
    assert (
        unfolded[0]["metrics"]
        == oracle.workflow_metrics(events, "wf-1", START, END, "day", ZoneInfo("UTC"))["metrics"]
    )
    # Reopened with pieces of 1,000 events: many folds, each its own transaction.
    pieces = _settings(tmp_path / "d", compact_idle_s=3600, fold_piece_events=1000)
    with TestClient(create_app(pieces)) as c:
        store = c.app.state.engine  # type: ignore[attr-defined]
        assert store.progress.backlog() == len(events)
        api = Api(c, make_key(pieces, "acme"), "acme")
        pieces_folded: list[int] = []
        real = store.folder.fold_piece_up_to
        store.folder.fold_piece_up_to = lambda seq: (pieces_folded.append(seq), real(seq))[1]
        api.compact()
        assert store.progress.backlog() == 0
        assert len(pieces_folded) == -(-len(events) // 1000)
        assert pieces_folded == sorted(pieces_folded)
        assert _answers(api) == unfolded


def test_an_out_of_memory_fold_retries_in_smaller_pieces(tmp_path: Path) -> None:
    events = workflow_events(8, START, 5, n=200)
    s = _settings(tmp_path / "d", compact_idle_s=3600, compact_after_events=10**9)
    with TestClient(create_app(s)) as c:
        api = Api(c, make_key(s, "acme"), "acme")
        api.send(events)
        before = _answers(api)
        store = c.app.state.engine  # type: ignore[attr-defined]
        real = store.folder.fold_piece_up_to
        sizes: list[int] = []

        def fold(seq: int) -> None:
            sizes.append(store.folder.piece)
            if store.folder.piece > folds.MIN_FOLD_PIECE * 4:
                raise duckdb.OutOfMemoryException("Out of Memory Error: failed to allocate")
            real(seq)

        store.folder.fold_piece_up_to = fold  # type: ignore[method-assign]
        api.compact()
        assert sizes[0] == folds.FOLD_PIECE_EVENTS and min(sizes) < sizes[0]
        assert store.progress.backlog() == 0
        assert _answers(api) == before
        # Ingestion goes on, and the store still answers.
        api.send(workflow_events(9, START, 2, n=20, wf="wf-2"))


@pytest.mark.parametrize("rate_of_commits", [1, 5])
def test_folds_run_beside_commits(tmp_path: Path, rate_of_commits: int) -> None:
    """The folder folds while the writer commits: every event counted once."""
    s = _settings(tmp_path / "d", compact_idle_s=0.05, compact_after_events=50)
    events = workflow_events(10, START, 7, n=300)
    with TestClient(create_app(s)) as c:
        api = Api(c, make_key(s, "acme"), "acme")
        step = max(1, len(events) // (20 * rate_of_commits))
        for i in range(0, len(events), step):
            api.send(events[i : i + step])
        api.compact()
        got = _answers(api)[0]
    want = oracle.workflow_metrics(events, "wf-1", START, END, "day", ZoneInfo("UTC"))
    assert got["metrics"] == want["metrics"] and got["daily_metrics"] == want["daily_metrics"]
