"""DuckDB engine: the store's own guarantees."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from kaie_analytics.errors import QueryTimeout


def test_query_time_limit(client: TestClient) -> None:
    """A query past the limit is interrupted and fails cleanly; the next one works."""
    store = client.app.state.engine  # type: ignore[attr-defined]
    store.query_timeout_s = 0.2
    with pytest.raises(QueryTimeout):
        store.query("SELECT count(*) FROM range(100000000000) a")
    assert store.query("SELECT 42")[0][0] == 42
    assert QueryTimeout().status == 503
