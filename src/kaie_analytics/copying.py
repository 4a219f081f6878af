"""Copy every event of one engine into another (``kaie-analytics copy-events``).

Tenant by tenant and day by day (UTC), the source's stored events are read as
export rows and appended to the target with their ids, times and fields, so
the target counts exactly what the source does. A day is recorded as done in
a small state file once the target has acknowledged it; an interrupted copy
run again starts at the first day not done, and the target's dedupe drops
whatever of that day it already has. Then each workflow's name and creation
time are carried over, and the counts are compared per tenant.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from kaie_analytics.analytics.facts import EventEngine, RowsQuery, TenantEvents, Window
from kaie_analytics.ingest.columns import from_stored

DAY = timedelta(days=1)
BATCH_ROWS = 20_000
_US = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Mismatch:
    tenant: str
    source: int
    target: int


class CopyState:
    """Which days of which tenant are copied, kept in a JSON file written atomically."""

    def __init__(self, path: Path, target: str) -> None:
        self.path = path
        self.target = target
        data = json.loads(path.read_text()) if path.exists() else {}
        if data.get("target") != target:
            data = {"target": target, "done_until": {}}
        #: Per tenant: the start of the first day not yet copied (ISO text).
        self._done_until: dict[str, str] = data["done_until"]

    def done_until(self, tenant: str) -> datetime | None:
        text = self._done_until.get(tenant)
        return datetime.fromisoformat(text) if text else None

    def mark(self, tenant: str, until: datetime) -> None:
        self._done_until[tenant] = until.isoformat()
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"target": self.target, "done_until": self._done_until}))
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        tmp.replace(self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def _days(stats: TenantEvents, start: datetime | None) -> list[tuple[datetime, datetime]]:
    """UTC days from the tenant's first event (or ``start``) through its last."""
    day = datetime.combine((start or stats.first).date(), datetime.min.time())
    out = []
    while day <= stats.last:
        out.append((day, day + DAY))
        day += DAY
    return out


def copy_events(
    source: EventEngine,
    target: EventEngine,
    state: CopyState,
    on_events: Callable[[int], None] = lambda n: None,
    on_total: Callable[[int], None] = lambda n: None,
    more_tenants: tuple[str, ...] = (),
) -> list[Mismatch]:
    """Copy every tenant's events and workflows (also of ``more_tenants``, which may have
    named workflows and no events); the tenants whose counts differ after."""
    tenants = source.event_stats()
    on_total(sum(t.events for t in tenants))
    for stats in tenants:
        start = state.done_until(stats.tenant)
        if start is not None:  # days already copied count as done
            on_events(source.count_events(stats.tenant, until=start - _US))
        for lo, hi in _days(stats, start):
            window = Window(lo, hi - _US)
            for batch in source.rows(RowsQuery(stats.tenant, "events", window), BATCH_ROWS):
                if batch.num_rows:
                    target.append_prepared(stats.tenant, from_stored(stats.tenant, batch)).result()
                    on_events(batch.num_rows)
            state.mark(stats.tenant, hi)
    for tenant in sorted({t.tenant for t in tenants} | set(more_tenants)):
        for workflow in source.workflows(tenant):
            target.restore_workflow(tenant, workflow)
    target.settle()
    counted = [(t, target.count_events(t.tenant)) for t in tenants]
    mismatches = [Mismatch(t.tenant, t.events, n) for t, n in counted if n != t.events]
    if not mismatches:
        state.clear()
    return mismatches
