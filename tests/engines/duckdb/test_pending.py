"""DuckDB engine: answers that merge events not folded yet read them alike from memory
or from the table, and look up folded rows alike by the index or for every id."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from conftest import Api
from kaie_analytics.engines.duckdb import folded_ids, recent
from test_workflow_metrics import check_pieces_between_answers


@pytest.mark.parametrize("from_memory", [True, False])
@pytest.mark.parametrize("index", [True, False])
def test_merges_agree_whichever_path_they_take(
    api: Api, monkeypatch: pytest.MonkeyPatch, from_memory: bool, index: bool
) -> None:
    """Pieces of events between answers (``check_pieces_between_answers``), each
    folded after its answers, so the next changes executions with folded rows."""
    if not from_memory:
        monkeypatch.setattr(recent.RecentFeed, "between", lambda *_: None)
    if not index:  # as if every hash collided: every id is looked up
        monkeypatch.setattr(folded_ids.FoldedExecutions, "may_have_row", lambda _, ids: ids)
    check_pieces_between_answers(api, fold_each=True)


def _commit(feed: recent.RecentFeed, tenant: str, seqs: range, folded_upto: int = 0) -> None:
    n = len(seqs)
    table = pa.table(
        {
            "tenant": [tenant] * n,
            "execution_id": [f"x{s}" for s in seqs],
            "type": ["execution.started"] * n,
            "seq": list(seqs),
            **{c: pa.nulls(n, pa.string()) for c in ("workflow_id", "channel", "customer_id")},
            "ts": pa.nulls(n, pa.timestamp("us")),
            "duration_ms": pa.nulls(n, pa.int64()),
            **{c: pa.nulls(n, pa.string()) for c in ("error_type", "node_id", "node_type")},
        }
    )
    feed.add(seqs[-1], table, folded_upto)


def test_recent_events_are_given_only_when_all_are_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recent, "MAX_EVENTS", 10)
    feed = recent.RecentFeed(committed_seq=100)
    assert feed.between("a", 90, 100) is None  # from before the store opened
    _commit(feed, "a", range(101, 105))
    _commit(feed, "b", range(105, 109))
    got = feed.between("a", 100, 108)
    assert got is not None and got["seq"].to_pylist() == [101, 102, 103, 104]
    got = feed.between("a", 102, 103)
    assert got is not None and got["seq"].to_pylist() == [103]
    _commit(feed, "a", range(109, 113))  # 12 kept: the oldest commit goes
    assert feed.between("a", 100, 112) is None
    got = feed.between("a", 104, 112)
    assert got is not None and got["seq"].to_pylist() == [109, 110, 111, 112]
    _commit(feed, "b", range(113, 114), folded_upto=108)  # folded: let go
    assert feed.between("b", 104, 113) is None
    got = feed.between("b", 108, 113)
    assert got is not None and got["seq"].to_pylist() == [113]
