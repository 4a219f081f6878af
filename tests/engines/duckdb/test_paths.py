"""DuckDB engine: the rollup path and the SQL path answer every ask alike.

The engine answers one workflow's asks from its rollups (``workflow_reads``)
and everything else in SQL (``sql_reads``); both must give the same cells for
the asks the rollups serve, with events folded and pending.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from conftest import Api
from factories import workflow_events
from kaie_analytics.analytics.facts import ActivityQuery, Ask, Cells, Window
from kaie_analytics.engines.duckdb import sql_reads, workflow_reads

START = datetime(2024, 3, 4, 5, 7, 11)  # naive UTC, mid-slot; the US DST change is inside
EXEC = frozenset({"executions"})


def _windows() -> tuple[Window, ...]:
    """The previous period, the period (both cut mid-slot), its days, and a window
    inside a day: overlapping, as a workflow answer's windows are."""
    day, us = timedelta(days=1), timedelta(microseconds=1)
    end = START + 7 * day - timedelta(minutes=3)
    midnights = [datetime(2024, 3, 5) + i * day for i in range(7)]
    starts, ends = [START, *midnights], [*(m - us for m in midnights), end]
    return (
        Window(START - 7 * day, START - us),
        Window(START, end),
        *(Window(a, b) for a, b in zip(starts, ends, strict=True)),
        Window(START + timedelta(hours=30, minutes=11), START + timedelta(hours=31)),
    )


def _same(a: Cells, b: Cells) -> None:
    assert set(a) == set(b)
    for key, x in a.items():
        y = b[key]
        assert x.quantiles == pytest.approx(y.quantiles)
        x.quantiles = y.quantiles = ()
        assert x == y, key


@pytest.mark.parametrize("tz", ["UTC", "America/New_York", "Asia/Kathmandu"])
def test_rollups_and_sql_agree(api: Api, tz: str) -> None:
    events = workflow_events(21, datetime(2024, 2, 26, tzinfo=UTC), 16, n=500)
    api.send(events[: len(events) // 2])
    api.compact()
    api.send(events[len(events) // 2 :])  # pending: merged on the fly by both paths
    windows = _windows()
    all_windows = tuple(range(len(windows)))
    asks = (
        Ask(all_windows, frozenset({"executions", "messages"}), ("channel",)),
        Ask(all_windows, EXEC, ("channel", "error_type")),
        Ask(all_windows, frozenset({"messages"})),
        Ask(all_windows, frozenset({"customers"})),
        Ask(all_windows, frozenset({"durations"})),
        Ask((1, 10), EXEC, ("hour",)),
        Ask((1, 10), frozenset({"nodes"}), ("node_id",)),
    )
    q = ActivityQuery("acme", windows, asks, workflow_ids=("wf-1",), quantiles=(0.5, 0.95, 0.99),
                      timezone=tz)  # fmt: skip
    store: Any = api.client.app.state.engine  # type: ignore[attr-defined]
    assert all(workflow_reads.serves(q, ask) for ask in asks)
    fast = workflow_reads.activity(store, q, asks)
    assert fast is not None
    for ask, a, b in zip(asks, fast, sql_reads.activity(store, q, asks), strict=True):
        assert a, ask  # every ask has cells here
        _same(a, b)
