"""How far the events are committed, and how far each derived table has folded them.

Shared by the writer (which commits), the folder (which folds) and readers
(which merge what is not folded yet). Per derived table and tenant it counts
the events past the table's watermark (*pending*), so a query knows without
asking DuckDB whether it must merge events on the fly.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

import duckdb

from kaie_analytics.engines.duckdb.schema import FEEDS, WATERMARK_KEYS


def _scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list[object] | None = None) -> int:
    rows = con.execute(sql, params or []).fetchall()
    return int(rows[0][0]) if rows else 0


class Progress:
    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        #: Guards what the writer and the folder both change: the pending counts,
        #: the commit log, the seq, the count of recent rows.
        self.lock = threading.Lock()
        #: The seq of the last committed event: every event up to it is visible.
        self.seq = _scalar(con, "SELECT coalesce(max(seq), 0) FROM events")
        #: Events committed before this process opened the store: what of them is
        #: not folded yet is counted from the table, later ones from ``commits``.
        self.opened_seq = self.seq
        #: Per derived table, the seq up to which it has folded the events.
        self.watermarks = {
            name: _scalar(con, "SELECT value FROM store_state WHERE key = ?", [key])
            for name, key in WATERMARK_KEYS.items()
        }
        #: Per commit since opening: its last seq and, per derived table, events per tenant.
        self.commits: list[tuple[int, list[dict[str, int]]]] = []
        #: Per derived table, per tenant: events past the table's watermark.
        self.pending: dict[str, dict[str, int]] = self.count_pending(con)
        #: Events in ``events_recent`` (moved to ``events_main`` a chunk at a time).
        self.recent_rows = _scalar(con, "SELECT count(*) FROM events_recent")
        #: Bumped on every commit that touches a tenant; caches key on it.
        self.versions: dict[str, int] = defaultdict(int)
        #: Odd while a fold commits, bumped to even after: a reader that sees the
        #: same even value before and after its reads read one fold's rollups.
        self.rollup_gen = 0
        self.last_commit = time.monotonic()

    def count_pending(
        self, con: duckdb.DuckDBPyConnection, above: int | None = None, only: str | None = None
    ) -> dict[str, dict[str, int]]:
        """Per derived table, per tenant: events not folded yet, up to the seq at opening.

        Counted from the table, for events committed before this process opened
        the store (``above``: count only those past it, after a fold of a piece;
        ``only``: for that table alone).
        """
        pending: dict[str, dict[str, int]] = {name: defaultdict(int) for name in FEEDS}
        for name, predicate in FEEDS.items():
            if only is not None and name != only:
                continue
            lo = self.watermarks[name] if above is None else max(above, self.watermarks[name])
            if lo >= self.opened_seq:
                continue
            for tenant, n in con.execute(
                f"SELECT tenant, count(*) FROM events WHERE seq > ? AND seq <= ? AND {predicate}"
                " GROUP BY tenant",
                [lo, self.opened_seq],
            ).fetchall():
                pending[name][tenant] = n
        return pending

    def has_pending(self, tenant: str, table: str = "executions") -> bool:
        return self.pending[table].get(tenant, 0) > 0

    def backlog(self) -> int:
        """Events committed but not yet folded into every derived table."""
        return self.seq - min(self.watermarks.values())

    def committed(self, old_seq: int, kept: int, counts: list[tuple[Any, ...]]) -> None:
        """A commit of ``kept`` events after ``old_seq``; ``counts`` from ``feed_counts``."""
        per_commit: list[dict[str, int]] = [defaultdict(int) for _ in FEEDS]
        for tenant, _, *per_table in counts:
            for i, n in enumerate(per_table):
                if n:
                    per_commit[i][tenant] += n
        with self.lock:
            # Pending counts first: a reader that sees the new seq sees them too.
            self.commits.append((old_seq + kept, per_commit))
            for tenant, _, *per_table in counts:
                self.versions[tenant] += 1
                for name, n in zip(FEEDS, per_table, strict=True):
                    if n:
                        self.pending[name][tenant] += n
            self.seq += kept
            self.recent_rows += kept
        self.last_commit = time.monotonic()

    def folded(self, name: str, new_seq: int, before_open: dict[str, int] | None) -> None:
        """Table ``name`` has folded the events up to ``new_seq``.

        ``before_open``: what is still pending of the events from before opening.
        """
        at = list(FEEDS).index(name)
        with self.lock:
            self.watermarks[name] = new_seq
            floor = min(self.watermarks.values())
            self.commits = [c for c in self.commits if c[0] > floor]
            counts = before_open if before_open is not None else defaultdict(int)
            for hi, per_table in self.commits:
                if hi > new_seq:
                    for tenant, n in per_table[at].items():
                        counts[tenant] += n
            self.pending = {**self.pending, name: counts}

    def moved(self, n: int) -> None:
        """``n`` recent events moved into ``events_main``."""
        with self.lock:
            self.recent_rows -= n

    def piece_end(self, target: int, piece: int) -> int:
        """The seq up to which the next fold piece goes: at most ``piece`` events past the
        lowest watermark, and not past ``target``.

        Events of this process's commits are folded whole commits at a time, so
        that the per-commit counts stay exact.
        """
        low = min(self.watermarks.values())
        limit = min(target, low + piece)
        if low < self.opened_seq:
            return min(limit, self.opened_seq)
        with self.lock:
            ends = [hi for hi, _ in self.commits if low < hi <= target]
        fitting = [hi for hi in ends if hi <= limit]
        return fitting[-1] if fitting else ends[0] if ends else target
