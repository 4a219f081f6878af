"""Independent, plain-Python computation of spec/METRICS.md over a list of events.

Written from the spec text alone, without the service's code, so that tests
compare the API against a second implementation.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np


def ts(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).astimezone(UTC)


def r(value: float | None, digits: int) -> float | None:
    if value is None:
        return None
    return float(Decimal(repr(value)).quantize(Decimal(1).scaleb(-digits), ROUND_HALF_UP))


def r_int(value: float | None) -> int | None:
    return None if value is None else int(r(value, 0))  # type: ignore[arg-type]


def div(a: float, b: float, digits: int) -> float | None:
    return r(a / b, digits) if b else None


def avg_int(values: list[int]) -> int | None:
    if not values:
        return None
    return int(Decimal(sum(values)) / Decimal(len(values)) + Decimal("0.5"))


@dataclass
class Execution:
    execution_id: str
    workflow_id: str | None
    channel: str | None
    customer_id: str | None
    started_at: datetime
    status: str
    duration_ms: int | None
    error_type: str | None


def executions(events: list[dict[str, Any]]) -> list[Execution]:
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        if e["type"].startswith("execution."):
            by_id[e["execution_id"]].append(e)
    out = []
    for xid, evs in by_id.items():
        starts = sorted((e for e in evs if e["type"] == "execution.started"), key=ts)
        comps = sorted((e for e in evs if e["type"] == "execution.completed"), key=ts)
        fails = sorted((e for e in evs if e["type"] == "execution.failed"), key=ts)
        start = starts[0] if starts else None
        comp = comps[-1] if comps else None
        fail = fails[-1] if fails else None
        terminals = sorted([t for t in (comp, fail) if t is not None], key=ts)
        if comp and fail:
            winner = comp if ts(comp) > ts(fail) else fail
        else:
            winner = comp or fail

        def attr(name: str) -> Any:
            if start is not None and start.get(name) is not None:
                return start[name]
            for t in terminals:
                if t.get(name) is not None:
                    return t[name]
            return None

        if start is not None:
            started_at = ts(start)
        else:
            assert winner is not None
            started_at = ts(winner) - timedelta(milliseconds=winner.get("duration_ms") or 0)
        status = "running" if winner is None else ("success" if winner is comp else "failed")
        duration = None
        if winner is not None:
            if winner.get("duration_ms") is not None:
                duration = winner["duration_ms"]
            elif start is not None:
                duration = max(0, (ts(winner) - ts(start)) // timedelta(milliseconds=1))
        out.append(Execution(xid, attr("workflow_id"), attr("channel"), attr("customer_id"),
                             started_at, status, duration,
                             fail.get("error_type") if status == "failed" and fail else None))  # fmt: skip
    return out


def segments(events: list[dict[str, Any]]) -> dict[str, str]:
    latest: dict[str, tuple[datetime, str]] = {}
    for e in events:
        if e["type"] == "customer.updated" and e.get("segment") is not None:
            cur = latest.get(e["customer_id"])
            if cur is None or ts(e) >= cur[0]:
                latest[e["customer_id"]] = (ts(e), e["segment"])
    return {c: s for c, (_, s) in latest.items()}


def metrics_block(execs: list[Execution], evs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = sum(x.status == "success" for x in execs)
    failed = sum(x.status == "failed" for x in execs)
    durs = [x.duration_ms for x in execs if x.status != "running" and x.duration_ms is not None]
    csat = [e["csat"] for e in evs if e["type"] == "feedback.submitted" and e.get("csat")]
    channels = Counter(x.channel for x in execs if x.channel is not None)
    return {
        "total_executions": len(execs),
        "successful_executions": ok,
        "failed_executions": failed,
        "success_rate": div(ok, ok + failed, 4),
        "average_duration_ms": avg_int(durs),
        "total_messages_sent": sum(e["type"] == "message.sent" for e in evs),
        "total_messages_received": sum(e["type"] == "message.received" for e in evs),
        "unique_customers": len({x.customer_id for x in execs if x.customer_id is not None}),
        "customer_satisfaction": div(sum(csat), len(csat), 2),
        "channel_breakdown": dict(sorted(channels.items())),
    }


def trend(cur: float | None, prev: float | None) -> str:
    if not prev:
        return "stable" if not cur else "increasing"
    if cur is None:
        return "stable"
    return "increasing" if cur > prev * 1.05 else "decreasing" if cur < prev * 0.95 else "stable"


def bucket_starts(start: datetime, end: datetime, gran: str, tz: ZoneInfo) -> list[datetime]:
    local = start.astimezone(tz)
    if gran == "hour":
        first = local.replace(minute=0, second=0, microsecond=0)
    else:
        d = local.date()
        if gran == "week":
            d = d - timedelta(days=d.weekday())
        if gran == "month":
            d = d.replace(day=1)
        first = datetime(d.year, d.month, d.day, tzinfo=tz)
    out = [first.astimezone(UTC)]
    while True:
        last = out[-1]
        if gran == "hour":
            nxt = last + timedelta(hours=1)
        else:
            d = last.astimezone(tz).date()
            if gran == "day":
                d = d + timedelta(days=1)
            elif gran == "week":
                d = d + timedelta(days=7)
            else:
                d = date_add_month(d)
            nxt = datetime(d.year, d.month, d.day, tzinfo=tz).astimezone(UTC)
        if nxt > end:
            return out
        out.append(nxt)


def date_add_month(d: Any) -> Any:
    return d.replace(year=d.year + (d.month == 12), month=d.month % 12 + 1, day=1)


def workflow_metrics(
    events: list[dict[str, Any]], wf: str, start: datetime, end: datetime, gran: str, tz: ZoneInfo
) -> dict[str, Any]:
    all_execs = [x for x in executions(events) if x.workflow_id == wf]

    def window(lo: datetime, hi: datetime) -> tuple[list[Execution], list[dict[str, Any]]]:
        xs = [x for x in all_execs if lo <= x.started_at <= hi]
        evs = [e for e in events if e.get("workflow_id") == wf and lo <= ts(e) <= hi
               and e["type"] in ("message.sent", "message.received", "feedback.submitted")]  # fmt: skip
        return xs, evs

    cur = metrics_block(*window(start, end))
    prev_end = start - timedelta(microseconds=1)
    prev = metrics_block(*window(prev_end - (end - start), prev_end))
    starts = bucket_starts(start, end, gran, tz)
    daily = []
    for i, b in enumerate(starts):
        hi = starts[i + 1] - timedelta(microseconds=1) if i + 1 < len(starts) else end
        blk = metrics_block(*window(max(b, start), hi))
        local = b.astimezone(tz)
        label = local.isoformat() if gran == "hour" else local.date().isoformat()
        daily.append({"date": label.replace("+00:00", "Z"), "executions": blk["total_executions"],
                      "success_rate": blk["success_rate"],
                      "average_duration_ms": blk["average_duration_ms"],
                      "messages_sent": blk["total_messages_sent"],
                      "messages_received": blk["total_messages_received"],
                      "unique_customers": blk["unique_customers"]})  # fmt: skip
    return {
        "metrics": cur,
        "trends": {
            "execution_trend": trend(cur["total_executions"], prev["total_executions"]),
            "success_rate_trend": trend(cur["success_rate"], prev["success_rate"]),
            "duration_trend": trend(cur["average_duration_ms"], prev["average_duration_ms"]),
        },
        "daily_metrics": daily,
    }


def groups(
    events: list[dict[str, Any]], wf: str, start: datetime, end: datetime,
    field: str | tuple[str, ...],
) -> dict[Any, dict[str, Any]]:  # fmt: skip
    """Per value of ``field`` (or per combination of the values of several fields, as
    a tuple), the metrics of the workflow's executions and events that have it."""
    fields = (field,) if isinstance(field, str) else field
    segs = segments(events)
    xs = [x for x in executions(events) if x.workflow_id == wf and start <= x.started_at <= end]
    evs = [e for e in events if e.get("workflow_id") == wf and start <= ts(e) <= end
           and e["type"] in ("message.sent", "message.received", "feedback.submitted")]  # fmt: skip

    def key_x(x: Execution) -> Any:
        values = {"channel": x.channel, "customer_segment": segs.get(x.customer_id or "")}
        key = tuple(values[f] for f in fields)
        return key[0] if isinstance(field, str) else key

    def key_e(e: dict[str, Any]) -> Any:
        values = {"channel": e.get("channel"),
                  "customer_segment": segs.get(e.get("customer_id") or "")}  # fmt: skip
        key = tuple(values[f] for f in fields)
        return key[0] if isinstance(field, str) else key

    keys = {key_x(x) for x in xs} | {key_e(e) for e in evs}
    return {
        k: metrics_block([x for x in xs if key_x(x) == k], [e for e in evs if key_e(e) == k])
        for k in keys
    }


def performance(
    events: list[dict[str, Any]], wf: str, start: datetime, end: datetime, tz: ZoneInfo
) -> dict[str, Any]:
    xs = [x for x in executions(events) if x.workflow_id == wf and start <= x.started_at <= end]
    finished = [x for x in xs if x.status != "running"]
    durs = [x.duration_ms for x in finished if x.duration_ms is not None]
    n_fin = len(finished)
    failed = [x for x in xs if x.status == "failed"]
    clock: Counter[datetime] = Counter()
    hod: Counter[int] = Counter()
    for x in xs:
        local = x.started_at.astimezone(tz)
        clock[local.replace(minute=0, second=0, microsecond=0)] += 1
        hod[local.hour] += 1
    peak = min(hod, key=lambda h: (-hod[h], h)) if hod else None
    ids = {x.execution_id for x in xs}
    nodes: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        if e["type"] in ("node.completed", "node.failed") and e["execution_id"] in ids:
            nodes[e["node_id"]].append(e)
    node_perf = []
    for node_id, evs in nodes.items():
        done = sum(e["type"] == "node.completed" for e in evs)
        nd = [e["duration_ms"] for e in evs if e.get("duration_ms") is not None]
        node_perf.append({"node_id": node_id, "type": max(evs, key=ts)["node_type"],
                          "execution_count": len(evs), "success_rate": div(done, len(evs), 4),
                          "average_duration_ms": avg_int(nd),
                          "error_count": len(evs) - done})  # fmt: skip
    node_perf.sort(key=lambda n: (-n["execution_count"], n["node_id"]))
    chans: dict[str, list[Execution]] = defaultdict(list)
    for x in xs:
        if x.channel is not None:
            chans[x.channel].append(x)
    hours = (end - start).total_seconds() / 3600

    def pct(q: float) -> int | None:
        return r_int(float(np.percentile(durs, q))) if durs else None

    return {
        "execution_time": {"average_ms": avg_int(durs), "median_ms": pct(50), "p95_ms": pct(95),
                           "p99_ms": pct(99)},
        "throughput": {"executions_per_hour": div(len(xs), hours, 2),
                       "peak_executions_per_hour": max(clock.values(), default=0),
                       "peak_hour": f"{peak:02d}:00" if peak is not None else None},
        "error_rate": {"overall": div(len(failed), n_fin, 4),
                       "by_error_type": {k: div(v, n_fin, 4) for k, v in
                                         sorted(Counter(x.error_type for x in failed
                                                        if x.error_type).items())}},
        "node_performance": node_perf,
        "channel_performance": {
            ch: {"executions": len(v),
                 "success_rate": div(sum(x.status == "success" for x in v),
                                     sum(x.status != "running" for x in v), 4),
                 "average_duration_ms": avg_int([x.duration_ms for x in v if x.status != "running"
                                                 and x.duration_ms is not None])}
            for ch, v in sorted(chans.items())
        },
    }  # fmt: skip


# ------------------------------------------------------------------ customers


def engagement(
    events: list[dict[str, Any]], start: datetime, end: datetime,
    segment: str | None = None, channel: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    segs = segments(events)

    def keep(e: dict[str, Any]) -> bool:
        if e.get("customer_id") is None:
            return False
        if channel is not None and e.get("channel") != channel:
            return False
        return segment is None or segs.get(e["customer_id"]) == segment

    evs = [e for e in events if keep(e)]

    def numbers(lo: datetime, hi: datetime) -> dict[str, Any]:
        recv = [e for e in evs if e["type"] == "message.received"]
        first: dict[str, datetime] = {}
        for e in recv:
            c = e["customer_id"]
            first[c] = min(first.get(c, ts(e)), ts(e))
        in_period = [e for e in recv if lo <= ts(e) <= hi]
        active = {e["customer_id"] for e in in_period}
        new = {c for c in active if lo <= first[c] <= hi}
        convo: dict[tuple[str, str], list[datetime]] = defaultdict(list)
        for e in evs:
            if e["type"] in ("message.sent", "message.received"):
                convo[(e["customer_id"], e["channel"])].append(ts(e))
        sessions: list[tuple[str, datetime, datetime, int]] = []
        for (_, ch), times in convo.items():
            times.sort()
            cur = [times[0]]
            for t in times[1:]:
                if t - cur[-1] > timedelta(minutes=30):
                    sessions.append((ch, cur[0], cur[-1], len(cur)))
                    cur = [t]
                else:
                    cur.append(t)
            sessions.append((ch, cur[0], cur[-1], len(cur)))
        sessions = [s for s in sessions if lo <= s[1] <= hi]
        fb = [e for e in evs if e["type"] == "feedback.submitted" and lo <= ts(e) <= hi]

        def dur(ss: list[tuple[str, datetime, datetime, int]]) -> float | None:
            if not ss:
                return None
            us = sum((s[2] - s[1]) // timedelta(microseconds=1) for s in ss)
            return r(us / 1_000_000 / len(ss), 1)

        def csat(items: list[dict[str, Any]]) -> float | None:
            vals = [e["csat"] for e in items if e.get("csat") is not None]
            return div(sum(vals), len(vals), 2)

        nps = [e["nps"] for e in fb if e.get("nps") is not None]
        channels = sorted({s[0] for s in sessions} | {e["channel"] for e in in_period}
                          | {e["channel"] for e in fb if e.get("channel")})  # fmt: skip
        return {
            "total_customers": len({e["customer_id"] for e in evs if ts(e) <= hi}),
            "active_customers": len(active),
            "new_customers": len(new),
            "returning_customers": len(active) - len(new),
            "average_session_duration": dur(sessions),
            "average_messages_per_session": div(sum(s[3] for s in sessions), len(sessions), 1),
            "customer_satisfaction": csat(fb),
            "net_promoter_score": r((sum(n >= 9 for n in nps) - sum(n <= 6 for n in nps)) * 100
                                    / len(nps), 1) if nps else None,
            "engagement_by_channel": {
                ch: {"customers": len({e["customer_id"] for e in in_period if e["channel"] == ch}),
                     "average_session_duration": dur([s for s in sessions if s[0] == ch]),
                     "satisfaction": csat([e for e in fb if e.get("channel") == ch])}
                for ch in channels
            },
        }  # fmt: skip

    cur = numbers(start, end)
    prev_end = start - timedelta(microseconds=1)
    prev = numbers(prev_end - (end - start), prev_end)
    return {
        "engagement": cur,
        "trends": {
            "customer_growth": trend(cur["active_customers"], prev["active_customers"]),
            "engagement_trend": trend(cur["average_messages_per_session"],
                                      prev["average_messages_per_session"]),
            "satisfaction_trend": trend(cur["customer_satisfaction"],
                                        prev["customer_satisfaction"]),
        },
    }  # fmt: skip


def journey(
    events: list[dict[str, Any]], jtype: str, start: datetime, end: datetime
) -> dict[str, Any]:
    by_j: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        if e["type"].startswith("journey.") and e["journey_type"] == jtype:
            by_j[e["journey_id"]].append(e)
    js = {}
    for jid, evs in by_j.items():
        steps = [e for e in evs if e["type"] == "journey.step"]
        if steps and start <= min(ts(e) for e in steps) <= end:
            js[jid] = evs
    total = len(js)
    reached: dict[str, dict[int, datetime]] = {}
    for jid, evs in js.items():
        rs: dict[int, datetime] = {}
        for e in evs:
            if e["type"] == "journey.step":
                rs[e["step"]] = min(rs.get(e["step"], ts(e)), ts(e))
        reached[jid] = rs
    done = {}
    for jid, evs in js.items():
        comps = [ts(e) for e in evs if e["type"] == "journey.completed"]
        if comps:
            first = min(ts(e) for e in evs if e["type"] == "journey.step")
            done[jid] = min(comps) - first
    all_steps = sorted({k for rs in reached.values() for k in rs})
    names: dict[int, tuple[datetime, str]] = {}
    for evs in js.values():
        for e in evs:
            if e["type"] == "journey.step":
                cur = names.get(e["step"])
                if cur is None or ts(e) >= cur[0]:
                    names[e["step"]] = (ts(e), e["step_name"])
    count = {k: sum(k in rs for rs in reached.values()) for k in all_steps}
    steps_out = []
    for k in all_steps:
        if k == 1:
            rate = div(count[k], total, 4)
        else:
            both = sum(k in rs and (k - 1) in rs for rs in reached.values())
            rate = div(both, count.get(k - 1, 0), 4)
        gaps = []
        for jid, rs in reached.items():
            if k in rs:
                later = [ts(e) - rs[k] for e in js[jid] if ts(e) > rs[k]
                         and not (e["type"] == "journey.step" and e["step"] == k)]  # fmt: skip
                if later:
                    gaps.append(min(later) // timedelta(microseconds=1))
        steps_out.append({"step": k, "name": names[k][1], "customers": count[k],
                          "completion_rate": rate,
                          "average_duration_ms": int(Decimal(sum(gaps)) / Decimal(len(gaps) * 1000)
                                                     + Decimal("0.5")) if gaps else None})  # fmt: skip
    drops = []
    for k in all_steps:
        if k < 2:
            continue
        n = sum((k - 1) in rs and k not in rs for rs in reached.values())
        if n <= 0:
            continue
        reasons: Counter[str] = Counter()
        for jid, rs in reached.items():
            if max(rs) == k - 1:
                reasons.update(e["reason"] for e in js[jid] if e["type"] == "journey.dropped")
        ordered = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        drops.append({"step": k, "name": names[k][1], "drop_off_count": n,
                      "drop_off_rate": div(n, total, 4),
                      "common_reasons": [name for name, _ in ordered]})  # fmt: skip
    dur_us = sum(d // timedelta(microseconds=1) for d in done.values())
    return {
        "journey_type": jtype,
        "total_journeys": total,
        "completed_journeys": len(done),
        "completion_rate": div(len(done), total, 4),
        "average_journey_duration": r(dur_us / 1_000_000 / len(done), 1) if done else None,
        "journey_steps": steps_out,
        "drop_off_points": drops,
    }


def report_rows(
    events: list[dict[str, Any]], start: datetime, end: datetime, metrics: list[str],
    group_by: list[str], granularity: str | None, tz: ZoneInfo,
    workflow_ids: list[str] | None = None, channels: list[str] | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    segs = segments(events)

    def ok(wf: Any, ch: Any) -> bool:
        return (not workflow_ids or wf in workflow_ids) and (not channels or ch in channels)

    xs = [
        x
        for x in executions(events)
        if start <= x.started_at <= end and ok(x.workflow_id, x.channel)
    ]
    evs = [e for e in events if e["type"] in ("message.sent", "message.received", "feedback.submitted")
           and start <= ts(e) <= end and ok(e.get("workflow_id"), e.get("channel"))]  # fmt: skip

    def dims_x(x: Execution) -> tuple[Any, ...]:
        vals = {"workflow_id": x.workflow_id, "channel": x.channel,
                "customer_segment": segs.get(x.customer_id or "")}  # fmt: skip
        return tuple(vals[g] for g in group_by)

    def dims_e(e: dict[str, Any]) -> tuple[Any, ...]:
        vals = {"workflow_id": e.get("workflow_id"), "channel": e.get("channel"),
                "customer_segment": segs.get(e.get("customer_id") or "")}  # fmt: skip
        return tuple(vals[g] for g in group_by)

    starts = bucket_starts(start, end, granularity, tz) if granularity else [None]

    def bucket_of(t: datetime) -> Any:
        if granularity is None:
            return None
        return max(b for b in starts if b <= t)  # type: ignore[operator]

    groups = sorted({dims_x(x) for x in xs} | {dims_e(e) for e in evs},
                    key=lambda g: [(v is None, str(v)) for v in g])  # fmt: skip
    out = []
    for g in groups:
        for b in starts:
            gx = [x for x in xs if dims_x(x) == g and bucket_of(x.started_at) == b]
            ge = [e for e in evs if dims_e(e) == g and bucket_of(ts(e)) == b]
            block = metrics_block(gx, ge)
            durs = [
                x.duration_ms for x in gx if x.status != "running" and x.duration_ms is not None
            ]
            block["median_duration_ms"] = r_int(float(np.percentile(durs, 50))) if durs else None
            block["p95_duration_ms"] = r_int(float(np.percentile(durs, 95))) if durs else None
            row: dict[str, Any] = dict(zip(group_by, g, strict=True))
            if b is not None:
                row["date"] = b.astimezone(tz).date().isoformat()
            row.update({m: block[m] for m in metrics})
            out.append(row)
    return out
