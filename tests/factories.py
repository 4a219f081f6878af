"""Seeded random events with the edge cases of spec/METRICS.md built in."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

CHANNELS = ["whatsapp", "instagram", "voice", "sms"]
ERRORS = ["timeout", "api_error", "validation_error"]


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def workflow_events(
    seed: int, start: datetime, days: int, n: int = 300, wf: str = "wf-1"
) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    customers = [f"cust-{i}" for i in range(40)]
    for c in customers[:30]:
        for k in range(rng.randrange(1, 3)):
            out.append({"type": "customer.updated", "customer_id": c,
                        "timestamp": iso(start + timedelta(days=k * 3)),
                        "segment": rng.choice(["vip", "smb", "consumer"])})  # fmt: skip
    for i in range(n):
        xid = f"{wf}-x{i}"
        t0 = start + timedelta(seconds=rng.uniform(-86400, days * 86400 + 86400))
        cust = rng.choice(customers) if rng.random() < 0.9 else None
        ch = rng.choice(CHANNELS)
        base = {"workflow_id": wf, "execution_id": xid}
        kind = rng.random()
        dur = int(rng.lognormvariate(8, 1))
        start_ev = {**base, "type": "execution.started", "timestamp": iso(t0), "channel": ch}
        if cust:
            start_ev["customer_id"] = cust
        t1 = t0 + timedelta(milliseconds=dur)
        if kind < 0.08:  # no start event; terminal with duration
            out.append({**base, "type": "execution.completed", "timestamp": iso(t1),
                        "duration_ms": dur, "channel": ch})  # fmt: skip
        elif kind < 0.12:  # no start event, no duration: started at the terminal timestamp
            out.append({**base, "type": "execution.failed", "timestamp": iso(t1),
                        "error_type": rng.choice(ERRORS)})  # fmt: skip
        elif kind < 0.2:  # running
            out.append(start_ev)
        elif kind < 0.26:  # both terminal events: the later one wins
            out.append(start_ev)
            out.append({**base, "type": "execution.failed", "timestamp": iso(t1),
                        "error_type": rng.choice(ERRORS), "duration_ms": dur})  # fmt: skip
            later = t1 + timedelta(seconds=rng.choice([-5, 5]))
            out.append({**base, "type": "execution.completed", "timestamp": iso(later)})
        elif kind < 0.32:  # terminal without duration: timestamp difference
            out.append(start_ev)
            out.append({**base, "type": "execution.completed", "timestamp": iso(t1)})
        else:
            out.append(start_ev)
            if rng.random() < 0.15:
                out.append({**base, "type": "execution.failed", "timestamp": iso(t1),
                            "error_type": rng.choice(ERRORS), "duration_ms": dur})  # fmt: skip
            else:
                out.append({**base, "type": "execution.completed", "timestamp": iso(t1),
                            "duration_ms": dur})  # fmt: skip
        for k, node in enumerate(["welcome", "ask", "api"][: rng.randrange(0, 4)]):
            failed = rng.random() < 0.1
            ev = {**base, "type": "node.failed" if failed else "node.completed",
                  "timestamp": iso(t0 + timedelta(seconds=k + 1)), "node_id": node,
                  "node_type": "message" if node != "api" else "api_call"}  # fmt: skip
            if failed:
                ev["error_type"] = "api_error"
            if rng.random() < 0.8:
                ev["duration_ms"] = rng.randrange(10, 2000)
            out.append(ev)
        if cust:
            for k in range(rng.randrange(0, 4)):
                out.append({"type": rng.choice(["message.sent", "message.received"]),
                            "timestamp": iso(t0 + timedelta(seconds=10 * k)), "customer_id": cust,
                            "channel": ch, "workflow_id": wf, "execution_id": xid})  # fmt: skip
            if rng.random() < 0.3:
                out.append({"type": "feedback.submitted", "timestamp": iso(t1), "customer_id": cust,
                            "workflow_id": wf, "csat": rng.randrange(1, 6), "channel": ch})  # fmt: skip
    rng.shuffle(out)
    for i, e in enumerate(out):
        e["id"] = f"{wf}-{seed}-e{i}"
    return out
