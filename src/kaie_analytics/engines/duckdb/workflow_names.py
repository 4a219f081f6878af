"""The workflows registry: every workflow any event named, and its latest name.

Held in memory (every query checks that its workflow exists) and written to
the ``workflows`` table in the writer's transactions.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import duckdb

from kaie_analytics.analytics.facts import Workflow
from kaie_analytics.engines.duckdb.schema import utcnow

_INSERT = "INSERT INTO workflows VALUES (?, ?, ?, ?, ?)"
_RENAME = "UPDATE workflows SET name = ?, name_ts = ? WHERE tenant = ? AND workflow_id = ?"
_RESTORE = (
    "UPDATE workflows SET name = ?, name_ts = ?, created_at = ?"
    " WHERE tenant = ? AND workflow_id = ?"
)
#: A statement and its parameters.
Change = tuple[str, list[Any]]


class WorkflowNames:
    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._known: dict[str, dict[str, Workflow]] = defaultdict(dict)
        for tenant, wf, name, name_ts, created in con.execute(
            "SELECT tenant, workflow_id, name, name_ts, created_at FROM workflows"
        ).fetchall():
            self._known[tenant][wf] = Workflow(wf, name, name_ts, created)

    def all(self, tenant: str) -> list[Workflow]:
        return sorted(self._known.get(tenant, {}).values(), key=lambda w: w.workflow_id)

    def get(self, tenant: str, workflow_id: str) -> Workflow | None:
        return self._known.get(tenant, {}).get(workflow_id)

    def changes(self, con: duckdb.DuckDBPyConnection, table: str) -> list[Change]:
        """Statements that register the new workflows of the events in ``table`` and
        apply their newer names (writer thread, inside its transaction)."""
        rows = con.execute(
            "SELECT tenant, workflow_id,"
            " arg_max(workflow_name, ts) FILTER (WHERE workflow_name IS NOT NULL),"
            " max(ts) FILTER (WHERE workflow_name IS NOT NULL)"
            f" FROM {table} WHERE workflow_id IS NOT NULL GROUP BY ALL"
        ).fetchall()
        now = utcnow()
        out: list[Change] = []
        for tenant, wf, name, ts in rows:
            known = self.get(tenant, wf)
            if known is None:
                out.append((_INSERT, [tenant, wf, name, ts, now]))
            elif name is not None and (known.name_ts is None or ts >= known.name_ts):
                out.append((_RENAME, [name, ts, tenant, wf]))
        return out

    def apply(self, changes: list[Change]) -> None:
        """Take committed changes into memory."""
        for stmt, params in changes:
            if stmt is _INSERT:
                tenant, wf, name, ts, created = params
                self._known[tenant][wf] = Workflow(wf, name, ts, created)
            elif stmt is _RESTORE:
                name, ts, created, tenant, wf = params
                self._known[tenant][wf] = Workflow(wf, name, ts, created)
            else:
                name, ts, tenant, wf = params
                old = self._known[tenant][wf]
                self._known[tenant][wf] = Workflow(wf, name, ts, old.created_at)

    def restore(self, con: duckdb.DuckDBPyConnection, tenant: str, wf: Workflow) -> Workflow:
        """Take another store's name, name time and creation time (writer thread): the
        later name wins, the earlier creation time stays."""
        known = self.get(tenant, wf.workflow_id)
        if known is None:
            change: Change = (_INSERT, [tenant, wf.workflow_id, wf.name, wf.name_ts, wf.created_at])
        else:
            newer = wf.name is not None and (
                known.name_ts is None or (wf.name_ts is not None and wf.name_ts >= known.name_ts)
            )
            name, name_ts = (wf.name, wf.name_ts) if newer else (known.name, known.name_ts)
            created = min(known.created_at, wf.created_at)
            change = (_RESTORE, [name, name_ts, created, tenant, wf.workflow_id])
        con.execute(*change)
        self.apply([change])
        return self._known[tenant][wf.workflow_id]

    def rename(
        self, con: duckdb.DuckDBPyConnection, tenant: str, workflow_id: str, name: str
    ) -> Workflow:
        """Create or rename a workflow (writer thread)."""
        now = utcnow()
        if self.get(tenant, workflow_id) is None:
            change: Change = (_INSERT, [tenant, workflow_id, name, now, now])
        else:
            change = (_RENAME, [name, now, tenant, workflow_id])
        con.execute(*change)
        self.apply([change])
        return self._known[tenant][workflow_id]
