"""The execution and node events of the latest commits, kept in memory until folded.

An answer that merges the events not folded yet (``pending``) needs those
committed since its tenant's previous answer. Reading them back from DuckDB
costs a scan of the newest chunk of events for every answer; the writer has
them in hand at each commit, so it leaves them here, and the merge reads them
from memory when every event of the range it asks for is here (else from the
table: after a restart, or when the folder fell far behind and this let go).
"""

from __future__ import annotations

import threading
from collections import deque

import pyarrow as pa
import pyarrow.compute as pc

from kaie_analytics.engines.duckdb.executions_sql import FEED_TYPE_SET, STATE_COLUMNS

#: At most this many events are kept; the oldest commits go first beyond it.
MAX_EVENTS = 300_000
_FEED_TYPES = pa.array(sorted(FEED_TYPE_SET))


class RecentFeed:
    """Committed execution and node events, per commit, with their seqs."""

    def __init__(self, committed_seq: int) -> None:
        self._lock = threading.Lock()
        #: (last seq, events) per commit, oldest first.
        self._commits: deque[tuple[int, pa.Table]] = deque()
        self._events = 0
        #: Every feed event with a seq above this is here (none before the store opened).
        self._complete_above = committed_seq

    def add(self, last_seq: int, events: pa.Table, folded_upto: int) -> None:
        """Keep the feed events of a commit whose last seq is ``last_seq`` (before the
        commit is announced, so whatever is announced is here), and let go of those
        folded up to ``folded_upto``: no merge reads them again. ``events`` has a
        ``seq`` column and the columns ``STATE_COLUMNS`` names."""
        feed = events.filter(pc.is_in(events["type"], _FEED_TYPES)).select([*STATE_COLUMNS, "seq"])
        with self._lock:
            while self._commits and self._commits[0][0] <= folded_upto:
                self._drop_oldest()
            self._commits.append((last_seq, feed))
            self._events += feed.num_rows
            while self._events > MAX_EVENTS and len(self._commits) > 1:
                self._drop_oldest()

    def _drop_oldest(self) -> None:
        last_seq, feed = self._commits.popleft()
        self._events -= feed.num_rows
        self._complete_above = max(self._complete_above, last_seq)

    def between(self, tenant: str, above: int, upto: int) -> pa.Table | None:
        """The tenant's feed events with seq in (above, upto], or None unless all are here."""
        with self._lock:
            if above < self._complete_above:
                return None
            parts = [feed for last, feed in self._commits if last > above]
        if not parts:
            return None
        table = pa.concat_tables(parts)
        seq = table["seq"]
        keep = pc.and_(
            pc.equal(table["tenant"], tenant),
            pc.and_(pc.greater(seq, above), pc.less_equal(seq, upto)),
        )
        return table.filter(keep)
