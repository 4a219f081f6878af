"""Reports and exports: numbers, formats, signed links, and crash safety."""

from __future__ import annotations

import csv
import io
import json
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import httpx
import psutil
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from pypdf import PdfReader

import oracle
from conftest import GENEROUS_LIMITS, Api, LiveServer, make_key, open_meta
from factories import iso, workflow_events
from kaie_analytics.app import create_app
from kaie_analytics.config import Settings
from kaie_analytics.jobs.reports import MAX_PDF_ROWS
from kaie_analytics.store import schema
from kaie_analytics.store.database import Database
from kaie_analytics.store.jobs import JobStore

#: Every test here runs with PostgreSQL, Redis and a files directory too (conftest).
SHARED_SERVICES = True

START = datetime(2024, 3, 4, tzinfo=UTC)
END = datetime(2024, 3, 10, 23, 59, 59, 999999, tzinfo=UTC)
METRICS = ["total_executions", "successful_executions", "failed_executions", "success_rate",
           "average_duration_ms", "median_duration_ms", "p95_duration_ms", "total_messages_sent",
           "total_messages_received", "unique_customers", "customer_satisfaction"]  # fmt: skip


def wait_done(api: Api, path: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = api.get(path).json()["data"]
        if data["status"] in ("completed", "failed"):
            return data
        time.sleep(0.05)
    raise AssertionError(f"{path} did not finish")


def download(api: Api, url: str) -> httpx.Response:
    parts = urlsplit(url)
    return api.client.get(f"{parts.path}?{parts.query}")  # no API key: the link is enough


@pytest.fixture
def loaded(api: Api) -> list[dict[str, Any]]:
    events = workflow_events(21, START - timedelta(days=2), 10, n=250)
    events += workflow_events(22, START, 7, n=80, wf="wf-2")
    api.send(events)
    return events


def make_report(api: Api, **body: Any) -> dict[str, Any]:
    r = api.post("/v1/analytics/reports", json=body)
    assert r.status_code == 202, r.text
    data = r.json()["data"]
    assert data["status"] == "generating" and data["report_id"].startswith("report-")
    assert datetime.fromisoformat(data["estimated_completion"].replace("Z", "+00:00"))
    return wait_done(api, f"/v1/analytics/reports/{data['report_id']}")


REPORT = {
    "name": "Weekly Performance",
    "description": "Performance per workflow and channel",
    "metrics": METRICS,
    "filters": {"start_date": iso(START), "end_date": iso(END)},
    "group_by": ["workflow_id", "channel"],
    "granularity": "day",
}


def test_report_json_and_csv_match_oracle(api: Api, loaded: list[dict[str, Any]]) -> None:
    want = oracle.report_rows(loaded, START, END, METRICS, ["workflow_id", "channel"], "day",
                              ZoneInfo("UTC"))  # fmt: skip
    done = make_report(api, **REPORT, format="json")
    assert done["status"] == "completed", done.get("error")
    assert done["expires_at"] and done["completed_at"]
    r = download(api, done["download_url"])
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert "attachment" in r.headers["content-disposition"]
    body = r.json()
    assert body["name"] == "Weekly Performance" and body["row_count"] == len(want)
    assert body["rows"] == want
    done = make_report(api, **REPORT, format="csv")
    r = download(api, done["download_url"])
    assert r.content.startswith(b"\xef\xbb\xbf")  # BOM, so spreadsheets read UTF-8
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert len(rows) == len(want)
    for got, exp in zip(rows, want, strict=True):
        for key, value in exp.items():
            assert got[key] == ("" if value is None else str(value)), key


def test_report_filters_and_segments(api: Api, loaded: list[dict[str, Any]]) -> None:
    body = {**REPORT, "group_by": ["customer_segment"], "granularity": None,
            "filters": {**REPORT["filters"], "workflow_ids": ["wf-1"], "channels": ["sms", "voice"]}}  # fmt: skip
    done = make_report(api, **body)
    got = download(api, done["download_url"]).json()["rows"]
    want = oracle.report_rows(loaded, START, END, METRICS, ["customer_segment"], None,
                              ZoneInfo("UTC"), ["wf-1"], ["sms", "voice"])  # fmt: skip
    assert got == want


def test_report_pdf_is_readable(api: Api, loaded: list[dict[str, Any]]) -> None:
    """A first page with the period for people and the summary against the previous
    period, a chart per metric, then the table with people's names and units, and a
    header and page numbers on every page."""
    done = make_report(api, **{**REPORT, "group_by": ["workflow_id"]}, format="pdf")
    assert done["status"] == "completed", done.get("error")
    r = download(api, done["download_url"])
    assert r.headers["content-type"] == "application/pdf"
    reader = PdfReader(io.BytesIO(r.content))
    pages = [" ".join(page.extract_text().split()) for page in reader.pages]  # words, one space
    first, text = pages[0], " ".join(pages)
    assert "Weekly Performance" in first and "Performance per workflow and channel" in first
    assert "4–10 March 2024, UTC" in first and "grouped by workflow, per day" in first
    summary = oracle.report_rows(loaded, START, END, METRICS, [], None, ZoneInfo("UTC"))[0]
    before = oracle.report_rows(loaded, START - timedelta(days=7), START - timedelta(microseconds=1),
                                METRICS, [], None, ZoneInfo("UTC"))[0]  # fmt: skip
    assert f"Executions {summary['total_executions']:,} {before['total_executions']:,}" in first
    rate = f"{summary['success_rate'] * 100:.1f}%"
    points = (summary["success_rate"] - before["success_rate"]) * 100
    assert f"Success rate {rate} {before['success_rate'] * 100:.1f}% {points:+.1f} points" in first
    assert f"{summary['p95_duration_ms'] / 1000:,.1f} s" in first
    assert "Previous period: 26 February – 3 March 2024, UTC." in first
    for number, page in enumerate(pages, start=1):  # a header and a footer on every page
        assert "Weekly Performance — 4–10 March 2024, UTC" in page
        assert f"Page {number} of {len(pages)}" in page
    assert "Over time" in text and "Success rate per day" not in text  # titles are in images
    header = "Workflow Period Executions Successful Failed Success rate Average duration"
    assert header in text
    want = oracle.report_rows(loaded, START, END, METRICS, ["workflow_id"], "day", ZoneInfo("UTC"))
    for row in want:
        assert f"{row['total_executions']:,}" in text
        if row["success_rate"] is not None:
            assert f"{row['success_rate'] * 100:.1f}%" in text
    images = sum(len(p.images) for p in reader.pages)
    assert images == len(METRICS)  # a chart per metric


def test_report_charts_draw_the_top_groups_and_the_rest_exactly(api: Api, engine: Any) -> None:
    """With more groups than a chart names, the others are one line: exact where counts
    allow it (executions, the success rate), else the line of all groups together."""
    from kaie_analytics.analytics.reports import TOP_GROUPS, chart_data, parse_report_request

    events: list[dict[str, Any]] = []
    for k in range(TOP_GROUPS + 2):
        events += workflow_events(40 + k, START, 7, n=20 + 15 * k, wf=f"wf-{k}")
    api.send(events)
    body = {"name": "x", "metrics": ["total_executions", "success_rate", "average_duration_ms"],
            "filters": {"start_date": iso(START), "end_date": iso(END)},
            "group_by": ["workflow_id"], "granularity": "day"}  # fmt: skip
    charts = chart_data(engine, "acme", parse_report_request(body))
    names = [name for name, _ in charts.lines["total_executions"]]
    assert len(names) == TOP_GROUPS + 1 and names[-1] == "other"
    assert [n for n, _ in charts.lines["average_duration_ms"]][-1] == "all groups"
    rows = oracle.report_rows(events, START, END, ["total_executions", "successful_executions",
                              "failed_executions", "average_duration_ms"], ["workflow_id"],
                              "day", ZoneInfo("UTC"))  # fmt: skip
    rest = [r for r in rows if r["workflow_id"] not in names]
    for i, day in enumerate(charts.labels):
        theirs = [r for r in rest if r["date"] == day]
        assert charts.lines["total_executions"][-1][1][i] == sum(
            r["total_executions"] for r in theirs
        )
        ok = sum(r["successful_executions"] for r in theirs)
        done = ok + sum(r["failed_executions"] for r in theirs)
        want = None if done == 0 else round(ok / done, 4)
        assert charts.lines["success_rate"][-1][1][i] == want


def test_periods_are_written_for_people() -> None:
    from kaie_analytics.analytics.periods import parse_period
    from kaie_analytics.jobs.reports import change, human_period

    utc, paris = ZoneInfo("UTC"), ZoneInfo("Europe/Paris")
    assert human_period(parse_period("2024-01-01", "2024-01-31", utc)) == "1–31 January 2024, UTC"
    assert human_period(parse_period("2024-01-15", "2024-02-14", paris)) == (
        "15 January – 14 February 2024, Europe/Paris"
    )
    assert human_period(parse_period("2023-12-20", "2024-01-05", utc)) == (
        "20 December 2023 – 5 January 2024, UTC"
    )
    assert human_period(parse_period("2024-03-05", "2024-03-05", utc)) == "5 March 2024, UTC"
    assert human_period(parse_period("2024-03-05T10:00:00Z", "2024-03-05T12:00:00Z", utc)) == (
        "5 March 2024, 10:00 – 5 March 2024, 12:00, UTC"
    )
    assert change("total_executions", 150, 100) == "+50.0%"
    assert change("success_rate", 0.9, 0.95) == "-5.0 points"
    assert change("total_executions", 5, 0) == "new"
    assert change("average_duration_ms", 1000, None) == "no earlier figure"


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({"metrics": ["total_executions"]}, "INVALID_PARAMETER", "name"),
        ({"name": "x", "metrics": ["bogus"]}, "INVALID_METRICS", "metrics"),
        ({"name": "x", "metrics": []}, "INVALID_METRICS", "metrics"),
        ({"name": "x", "metrics": ["total_executions"], "granularity": "minute"},
         "INVALID_GRANULARITY", "granularity"),
        ({"name": "x", "metrics": ["total_executions"],
          "filters": {"start_date": "2024-02-01", "end_date": "2024-01-01"}},
         "INVALID_DATE_RANGE", "filters.end_date"),
        ({"name": "x", "metrics": ["total_executions"], "format": "xls"}, "INVALID_PARAMETER",
         "format"),
        ({"name": "x", "metrics": ["total_executions"], "group_by": ["planet"]},
         "INVALID_PARAMETER", "group_by"),
    ],
)  # fmt: skip
def test_report_validation(api: Api, body: dict[str, Any], code: str, field: str) -> None:
    r = api.post("/v1/analytics/reports", json=body)
    assert r.status_code in (400, 422)
    err = r.json()["error"]
    assert (err["code"], err["field"]) == (code, field)
    assert api.get("/v1/analytics/reports").json()["data"] == []


def test_links_tenancy_tamper_expiry_and_not_ready(
    api: Api, other_api: Api, loaded: list[dict[str, Any]]
) -> None:
    done = make_report(api, **REPORT)
    url = done["download_url"]
    assert download(api, url).status_code == 200
    parts = urlsplit(url)
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    tampered = {**q, "signature": q["signature"][:-1] + ("0" if q["signature"][-1] != "0" else "1")}
    foreign = {**q, "tenant": "globex"}
    longer = {**q, "expires": str(int(q["expires"]) + 3600)}
    for params in (tampered, foreign, longer):
        r = api.client.get(parts.path, params=params)
        assert r.status_code == 403 and r.json()["error"]["code"] == "FORBIDDEN"
    # The other tenant can neither see nor download it with its own key.
    rid = done["report_id"]
    assert other_api.get(f"/v1/analytics/reports/{rid}").status_code == 404
    assert other_api.get(f"/v1/analytics/reports/{rid}/download").status_code == 404
    assert api.get(f"/v1/analytics/reports/{rid}/download").status_code == 200  # own key works
    # Expired: the job's expiry passed (7 days), and an old link.
    past = (datetime.now(UTC) - timedelta(seconds=5)).isoformat(timespec="seconds")
    with api.client.app.state.db.writing() as con:  # type: ignore[attr-defined]
        con.execute(schema.jobs.update().where(schema.jobs.c.id == rid).values(expires_at=past))
    r = api.get(f"/v1/analytics/reports/{rid}/download")
    assert r.status_code == 410 and r.json()["error"]["code"] == "REPORT_EXPIRED"
    from kaie_analytics.signing import sign

    secret = api.client.app.state.secret  # type: ignore[attr-defined]
    old = int(time.time()) - 10
    r = api.client.get(parts.path, params={**q, "expires": str(old),
                       "signature": sign(secret, "report", rid, "acme", q["key"], old)})  # fmt: skip
    assert r.status_code == 410
    # Not finished yet: 409.
    api.client.app.state.worker.stop()  # type: ignore[attr-defined]
    r = api.post("/v1/analytics/reports", json=REPORT)
    pending = r.json()["data"]
    assert pending["status"] == "generating"
    r = download(api, pending["download_url"])
    assert r.status_code == 409 and r.json()["error"]["code"] == "REPORT_NOT_READY"


def test_pdf_table_is_bounded(api: Api, loaded: list[dict[str, Any]]) -> None:
    body = {**REPORT, "granularity": "hour", "metrics": ["total_executions"]}
    done = make_report(api, **body, format="pdf")
    assert done["status"] == "completed", done.get("error")
    assert done["rows"] > MAX_PDF_ROWS
    reader = PdfReader(io.BytesIO(download(api, done["download_url"]).content))
    text = "\n".join(page.extract_text() for page in reader.pages)
    assert f"first {MAX_PDF_ROWS} of {done['rows']:,} rows" in text
    csv_done = make_report(api, **body, format="csv")
    lines = download(api, csv_done["download_url"]).text.splitlines()
    assert len(lines) == done["rows"] + 1  # the CSV holds every row


def _job_app(tmp_path: Path, **overrides: Any) -> TestClient:
    settings = Settings(
        data_dir=tmp_path / "d", rate_limits=GENEROUS_LIMITS, allowed_hosts="testserver",
        **overrides,
    )  # fmt: skip
    client = TestClient(create_app(settings))
    client.settings = settings  # type: ignore[attr-defined]
    return client


def test_time_limit_stops_a_pdf_and_its_renderer(tmp_path: Path) -> None:
    with _job_app(tmp_path, job_time_limit_s=0.05) as c:
        api = Api(c, make_key(c.settings, "acme"), "acme")  # type: ignore[attr-defined]
        api.send(workflow_events(3, START, 2, n=30))
        failed = make_report(api, **REPORT, format="pdf")
        assert failed["status"] == "failed"
        assert "time limit" in failed["error"]["details"]
        renderers = [
            p for p in psutil.Process().children(recursive=True)
            if p.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(p.cmdline())
        ]  # fmt: skip
        assert renderers == []  # killed at the limit, not left running


def test_one_tenants_jobs_do_not_hold_back_another(tmp_path: Path) -> None:
    """Two workers, at most one per tenant: B's export runs beside A's queue of PDFs."""
    with _job_app(tmp_path, job_workers=2) as c:
        a = Api(c, make_key(c.settings, "a"), "a")  # type: ignore[attr-defined]
        b = Api(c, make_key(c.settings, "b"), "b")  # type: ignore[attr-defined]
        a.send(workflow_events(4, START, 5, n=60))
        b.send(workflow_events(5, START, 5, n=10))
        heavy = [a.post("/v1/analytics/reports", json={**REPORT, "format": "pdf"}).json()["data"]
                 for _ in range(3)]  # fmt: skip
        export = b.post("/v1/analytics/export", json={"data_type": "executions",
                        "start_date": iso(START), "end_date": iso(END)}).json()["data"]  # fmt: skip
        done = wait_done(b, f"/v1/analytics/export/{export['export_id']}")
        assert done["status"] == "completed"
        last = a.get(f"/v1/analytics/reports/{heavy[-1]['report_id']}").json()["data"]
        assert last["status"] == "generating"  # A's third PDF had not even started
        for job in heavy:
            assert (
                wait_done(a, f"/v1/analytics/reports/{job['report_id']}")["status"] == "completed"
            )


def test_claims_are_fair_between_tenants(settings: Settings) -> None:
    jobs = JobStore(Database.open(settings.meta_backend, settings.meta_db_path))
    try:
        made = [jobs.create(tenant=t, kind="export", name=None, params={}, estimate_s=1)
                for t in ("a", "a", "a", "b", "c")]  # fmt: skip
        claimed = [jobs.claim("w", max_per_tenant=1, lease_s=30) for _ in range(4)]
        assert [j.id if j else None for j in claimed] == [made[0].id, made[3].id, made[4].id, None]
        assert jobs.complete(made[0].id, "w", file_name="f", content_type="text/csv", rows=0)
        again = jobs.claim("w", max_per_tenant=1, lease_s=30)
        assert again is not None and again.id == made[1].id  # a's next, in order of creation
    finally:
        jobs.db.close()


def test_a_job_belongs_to_whoever_holds_its_lease(settings: Settings) -> None:
    """Two processes (owners) on one database: a lapsed lease moves the job to the
    other, the first can then neither renew nor complete it, and a job cut off
    too often fails with the reason."""
    jobs = JobStore(Database.open(settings.meta_backend, settings.meta_db_path))
    try:
        job = jobs.create(tenant="a", kind="export", name=None, params={}, estimate_s=1)
        first = jobs.claim("p1", max_per_tenant=1, lease_s=0.5)
        assert first is not None and first.id == job.id and first.attempts == 1
        assert jobs.claim("p2", max_per_tenant=1, lease_s=30) is None  # held
        assert jobs.renew("p1", job.id, lease_s=0.5)
        time.sleep(0.6)
        second = jobs.claim("p2", max_per_tenant=1, lease_s=0.5)
        assert second is not None and second.id == job.id and second.lease_owner == "p2"
        assert second.attempts == 2
        assert not jobs.renew("p1", job.id, lease_s=30)
        assert not jobs.complete(job.id, "p1", file_name="f", content_type="text/csv", rows=0)
        time.sleep(0.6)
        third = jobs.claim("p1", max_per_tenant=1, lease_s=0.5)
        assert third is not None and third.attempts == 3
        time.sleep(0.6)
        assert jobs.claim("p2", max_per_tenant=1, lease_s=30) is None
        failed = jobs.get("a", "export", job.id)
        assert failed is not None and failed.state == "failed" and "3 times" in (failed.error or "")
        # The cap on one tenant is per process; the order between tenants counts all of them.
        made = [jobs.create(tenant=t, kind="export", name=None, params={}, estimate_s=1)
                for t in ("a", "a", "b")]  # fmt: skip
        one = jobs.claim("p1", max_per_tenant=1, lease_s=30)
        other = jobs.claim("p2", max_per_tenant=1, lease_s=30)
        assert one is not None and one.id == made[0].id
        assert other is not None and other.id == made[2].id  # b has none running anywhere
        last = jobs.claim("p2", max_per_tenant=1, lease_s=30)
        assert last is not None and last.id == made[1].id  # p2 runs none of a's yet
        # A graceful stop gives the jobs back at once, without counting the attempt.
        assert jobs.release("p2") == 2
        back = jobs.get("a", "export", made[1].id)
        assert back is not None and back.state == "queued" and back.attempts == 0
    finally:
        jobs.db.close()


def test_link_stops_with_its_key(
    api: Api, settings: Settings, loaded: list[dict[str, Any]]
) -> None:
    """A signed link names the key it was made for; revoking that key ends the link."""
    second = Api(api.client, make_key(settings, "acme"), "acme")
    done = make_report(api, **REPORT)
    link = second.get(f"/v1/analytics/reports/{done['report_id']}").json()["data"]["download_url"]
    assert download(api, link).status_code == 200
    meta = open_meta(settings)
    assert meta.revoke_key("_".join(second.key.split("_")[:2])) == 1
    meta.db.close()
    time.sleep(settings.key_cache_ttl_s + 0.1)
    r = download(api, link)
    assert r.status_code == 403 and r.json()["error"]["field"] == "key"
    assert download(api, done["download_url"]).status_code == 200  # the other key's link


def test_links_are_built_only_for_trusted_hosts(api: Api, loaded: list[dict[str, Any]]) -> None:
    r = api.post("/v1/analytics/reports", json=REPORT, headers={"Host": "evil.example"})
    err = r.json()["error"]
    assert r.status_code == 400 and err["field"] == "Host"
    assert "KAIE_PUBLIC_URL" in err["details"]
    assert api.get("/v1/analytics/reports").json()["data"] == []  # nothing was queued
    done = make_report(api, **REPORT)
    assert done["download_url"].startswith("http://testserver/")
    for host in ("localhost:8000", "127.0.0.1"):
        r = api.get(f"/v1/analytics/reports/{done['report_id']}", headers={"Host": host})
        assert r.json()["data"]["download_url"].startswith(f"http://{host}/")
    r = api.get(f"/v1/analytics/reports/{done['report_id']}", headers={"Host": "evil.example"})
    assert r.status_code == 400


def test_public_url_sets_every_link(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "d", public_url="https://analytics.example.com/")
    with TestClient(create_app(settings)) as c:
        api = Api(c, make_key(settings, "acme"), "acme")
        r = api.post("/v1/analytics/reports", json=REPORT, headers={"Host": "evil.example"})
        assert r.status_code == 202
        url = r.json()["data"]["download_url"]
        assert url.startswith("https://analytics.example.com/v1/analytics/reports/")


def _export(api: Api, **body: Any) -> tuple[dict[str, Any], bytes]:
    r = api.post("/v1/analytics/export", json=body)
    assert r.status_code == 202, r.text
    data = r.json()["data"]
    assert data["status"] == "processing" and data["download_url"]
    done = wait_done(api, f"/v1/analytics/export/{data['export_id']}")
    assert done["status"] == "completed", done.get("error")
    resp = download(api, data["download_url"])
    assert resp.status_code == 200
    return done, resp.content


def _read(content: bytes, fmt: str) -> list[dict[str, Any]]:
    if fmt == "parquet":
        return pq.read_table(io.BytesIO(content)).to_pylist()
    if fmt == "csv":
        assert content.startswith(b"\xef\xbb\xbf")  # every CSV: UTF-8 with a BOM
        return list(csv.DictReader(io.StringIO(content.decode("utf-8-sig"))))
    if fmt == "ndjson":
        return [json.loads(line) for line in content.splitlines()]
    return json.loads(content)


def _norm(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, str) and len(value) >= 19 and value[4] == "-" and value[10] in "T ":
        return datetime.fromisoformat(value.replace("Z", "+00:00")).replace(tzinfo=UTC) \
            if "+" not in value[19:] else datetime.fromisoformat(value)  # fmt: skip
    return value


def _expected(events: list[dict[str, Any]], data_type: str) -> list[dict[str, Any]]:
    in_period = [e for e in events if START <= oracle.ts(e) <= END]
    if data_type == "executions":
        xs = [x for x in oracle.executions(events) if START <= x.started_at <= END]
        xs.sort(key=lambda x: (x.started_at, x.execution_id))
        return [{"execution_id": x.execution_id, "workflow_id": x.workflow_id,
                 "channel": x.channel, "customer_id": x.customer_id,
                 "started_at": x.started_at, "status": x.status,
                 "duration_ms": x.duration_ms, "error_type": x.error_type} for x in xs]  # fmt: skip
    if data_type == "messages":
        ms = sorted((e for e in in_period if e["type"].startswith("message.")),
                    key=lambda e: (oracle.ts(e), e["id"]))  # fmt: skip
        return [{"event_id": e["id"], "direction": e["type"].split(".")[1],
                 "timestamp": oracle.ts(e), "customer_id": e["customer_id"],
                 "channel": e["channel"], "workflow_id": e.get("workflow_id"),
                 "execution_id": e.get("execution_id"), "message_id": e.get("message_id")}
                for e in ms]  # fmt: skip
    if data_type == "feedback":
        fs = sorted((e for e in in_period if e["type"] == "feedback.submitted"),
                    key=lambda e: (oracle.ts(e), e["id"]))  # fmt: skip
        return [{"event_id": e["id"], "timestamp": oracle.ts(e), "customer_id": e["customer_id"],
                 "workflow_id": e.get("workflow_id"), "execution_id": e.get("execution_id"),
                 "channel": e.get("channel"), "csat": e.get("csat"), "nps": e.get("nps"),
                 "comment": e.get("comment")} for e in fs]  # fmt: skip
    raise AssertionError(data_type)


def _same(got: list[dict[str, Any]], want: list[dict[str, Any]], fmt: str) -> None:
    assert len(got) == len(want)
    key = "execution_id" if "execution_id" in want[0] and "event_id" not in want[0] else "event_id"
    got = sorted(got, key=lambda r: r[key])
    want = sorted(want, key=lambda r: r[key])
    for g, w in zip(got, want, strict=True):
        for key, value in w.items():
            gv = g[key]
            if fmt == "csv":
                gv = None if gv == "" else gv
                value = None if value is None else (str(value) if not isinstance(value, datetime)
                                                    else value)  # fmt: skip
            assert _norm(gv) == _norm(value), (key, g, w)


@pytest.mark.parametrize("fmt", ["csv", "json", "ndjson", "parquet"])
@pytest.mark.parametrize("data_type", ["executions", "messages", "feedback"])
def test_exports_read_back_row_by_row(
    api: Api, loaded: list[dict[str, Any]], fmt: str, data_type: str
) -> None:
    _, content = _export(api, data_type=data_type, format=fmt, start_date=iso(START),
                         end_date=iso(END))  # fmt: skip
    _same(_read(content, fmt), _expected(loaded, data_type), fmt)


def test_raw_events_export_is_what_was_sent(api: Api) -> None:
    sent = [
        {"type": "message.sent", "timestamp": "2024-03-05T10:00:00Z", "customer_id": "c",
         "channel": "sms", "properties": {"a": [1, {"b": "é"}]}},
        {"id": "given", "type": "customer.updated", "timestamp": "2024-03-05T12:30:00.250+02:00",
         "customer_id": "c", "segment": "vip", "traits": {"plan": "pro"}},
        {"id": "f", "type": "feedback.submitted", "timestamp": "2024-03-06T00:00:00Z",
         "customer_id": "c", "csat": 4, "nps": 10, "comment": "ok"},
    ]  # fmt: skip
    api.send(sent)
    _, content = _export(api, data_type="events", format="ndjson", start_date=iso(START),
                         end_date=iso(END))  # fmt: skip
    got = sorted((json.loads(line) for line in content.splitlines()), key=lambda e: e["timestamp"])
    # Every row has every field, null where the event had none (the id too, when it
    # was sent without one), and is otherwise what was sent.
    assert len({tuple(row) for row in got}) == 1 and len(got[0]) > 10
    present = [{k: v for k, v in row.items() if v is not None} for row in got]
    assert present == sorted(sent, key=lambda e: e["timestamp"])
    assert got[0]["id"] is None and got[0]["workflow_id"] is None
    # Sent back, the rows are the same events: duplicates, nothing stored twice.
    again = api.post("/v1/events", json={"events": got}).json()["data"]
    assert (again["accepted"], again["duplicates"], again["rejected"]) == (0, 3, 0)
    import polars as pl

    assert pl.read_ndjson(io.BytesIO(content)).width == len(got[0])  # every column
    _, content = _export(api, data_type="events", format="parquet", start_date=iso(START),
                         end_date=iso(END), include_metadata=True)  # fmt: skip
    table = pq.read_table(io.BytesIO(content))
    assert table.num_rows == 3
    meta = json.loads(table.schema.metadata[b"kaie"])
    assert meta["data_type"] == "events"


def _check_workflow_metrics_export(api: Api, loaded: list[dict[str, Any]], tz: str) -> None:
    """Every column of every (local day, workflow, channel) row, against the oracle."""
    _, content = _export(api, data_type="workflow_metrics", format="ndjson", start_date=iso(START),
                         end_date=iso(END), timezone=tz)  # fmt: skip
    rows = [json.loads(line) for line in content.splitlines()]
    zone = ZoneInfo(tz)
    xs = [x for x in oracle.executions(loaded) if START <= x.started_at <= END]
    want: dict[tuple[Any, ...], list[Any]] = {}
    for x in xs:
        day = x.started_at.astimezone(zone).date().isoformat()
        want.setdefault((day, x.workflow_id, x.channel), []).append(x)
    expected = []
    for (day, wf, channel), mine in sorted(
        want.items(), key=lambda kv: (kv[0][0], kv[0][1] is None, str(kv[0][1]),
                                      kv[0][2] is None, str(kv[0][2]))
    ):  # fmt: skip
        block = oracle.metrics_block(mine, [])
        expected.append({
            "date": day, "workflow_id": wf, "channel": channel,
            "executions": block["total_executions"],
            "successful_executions": block["successful_executions"],
            "failed_executions": block["failed_executions"],
            "success_rate": block["success_rate"],
            "average_duration_ms": block["average_duration_ms"],
            "unique_customers": block["unique_customers"],
        })  # fmt: skip
    assert rows == expected


def test_export_metadata_journeys_and_workflow_metrics(
    api: Api, loaded: list[dict[str, Any]]
) -> None:
    """The metadata of a CSV, JSON or NDJSON export is in its status answer (the file
    holds rows only, so that every reader reads it as it is); Parquet's is in the file."""
    import duckdb
    import pandas as pd
    import polars as pl

    done, content = _export(api, data_type="executions", format="json", start_date=iso(START),
                            end_date=iso(END), include_metadata=True,
                            filters={"workflow_ids": ["wf-2"], "channels": ["sms"]})  # fmt: skip
    assert done["metadata"]["filters"] == {"workflow_ids": ["wf-2"], "channels": ["sms"]}
    assert done["metadata"]["export_id"] == done["export_id"]
    want = [x for x in _expected(loaded, "executions")
            if x["workflow_id"] == "wf-2" and x["channel"] == "sms"]  # fmt: skip
    _same(json.loads(content), want, "json")
    for fmt in ("csv", "json", "ndjson"):
        done, content = _export(api, data_type="executions", format=fmt, start_date=iso(START),
                                end_date=iso(END), include_metadata=True)  # fmt: skip
        assert done["metadata"]["data_type"] == "executions"
        path = Path(api.client.app.state.settings.data_dir) / f"with-metadata.{fmt}"  # type: ignore[attr-defined]
        path.write_bytes(content)
        rows = len(_expected(loaded, "executions"))
        if fmt == "csv":
            assert len(pd.read_csv(path)) == len(pl.read_csv(path)) == rows
        elif fmt == "json":
            assert len(pd.read_json(path)) == rows
        else:
            assert len(pd.read_json(path, lines=True)) == len(pl.read_ndjson(path)) == rows
        reader = {"csv": "read_csv", "json": "read_json", "ndjson": "read_json"}[fmt]
        count = duckdb.connect().execute(f"SELECT count(*) FROM {reader}('{path}')").fetchone()
        assert count == (rows,)
    _check_workflow_metrics_export(api, loaded, "UTC")
    _check_workflow_metrics_export(api, loaded, "Asia/Kathmandu")
    from test_customers import journey_events

    journeys = journey_events(9, n=40)
    api.send(journeys)
    _, content = _export(api, data_type="journeys", format="json", start_date="2024-03-20",
                         end_date="2024-04-20")  # fmt: skip
    got = json.loads(content)
    expected = oracle.journey(journeys, "support", datetime(2024, 3, 20, tzinfo=UTC),
                              datetime(2024, 4, 20, 23, 59, 59, 999999, tzinfo=UTC))  # fmt: skip
    assert len(got) == expected["total_journeys"]
    assert sum(1 for j in got if j["completed_at"]) == expected["completed_journeys"]


@pytest.mark.slow
def test_job_survives_sigkill(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "d")
    key = server.create_key("acme")
    rng = random.Random(3)
    lines = []
    for i in range(120_000):
        t = START + timedelta(seconds=rng.uniform(0, 6 * 86400))
        lines.append(json.dumps({"id": f"e{i}", "type": "execution.started", "timestamp": iso(t),
                                 "workflow_id": "wf", "execution_id": f"x{i}", "channel": "sms"}))  # fmt: skip
    path = tmp_path / "e.ndjson"
    path.write_text("\n".join(lines))
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "kaie_analytics", "ingest", str(path), "--tenant", "acme",
                    "--data-dir", str(server.data_dir)], check=True, capture_output=True)  # fmt: skip
    server.start()
    h = {"Authorization": f"Bearer {key}"}
    body = {"data_type": "executions", "format": "ndjson", "start_date": iso(START),
            "end_date": iso(END)}  # fmt: skip
    export_id = httpx.post(server.url + "/v1/analytics/export", json=body, headers=h).json()[
        "data"
    ]["export_id"]
    time.sleep(rng.uniform(0.2, 0.6))
    server.kill()
    files = list((server.data_dir / "files").rglob("*"))
    server.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = httpx.get(f"{server.url}/v1/analytics/export/{export_id}", headers=h).json()[
            "data"
        ]
        if status["status"] in ("completed", "failed"):
            break
        time.sleep(0.1)
    r = httpx.get(f"{server.url}/v1/analytics/export/{export_id}/download", headers=h)
    server.stop()
    assert status["status"] == "completed", status
    assert r.status_code == 200
    assert len(r.content.splitlines()) == 120_000  # whole, never a partial file
    assert all(f.suffix in ("", ".part", ".ndjson") for f in files)


def test_a_journey_whose_events_disagree_on_its_type_is_one_journey_everywhere(api: Api) -> None:
    """Its type is that of its earliest event, in the funnel and in the export alike."""
    base = {"journey_id": "j1", "customer_id": "c1"}
    api.send([
        {**base, "type": "journey.step", "journey_type": "support", "step": 1,
         "step_name": "open", "timestamp": "2024-03-21T10:00:00Z"},
        {**base, "type": "journey.step", "journey_type": "sales", "step": 2,
         "step_name": "pay", "timestamp": "2024-03-21T10:05:00Z"},
    ])  # fmt: skip
    period = {"start_date": "2024-03-20", "end_date": "2024-03-22"}
    for jtype, total, steps in (("support", 1, [1, 2]), ("sales", 0, [])):
        r = api.get("/v1/analytics/customers/journey", params={**period, "journey_type": jtype})
        journey = r.json()["data"]["journey"]
        assert journey["total_journeys"] == total
        assert [s["step"] for s in journey["journey_steps"]] == steps
    _, content = _export(api, data_type="journeys", format="json", **period)
    [row] = json.loads(content)
    assert (row["journey_type"], row["highest_step"], row["steps_reached"]) == ("support", 2, 2)


@pytest.mark.parametrize("data_type", ["executions", "messages", "workflow_metrics"])
def test_export_times_carry_their_zone(
    api: Api, loaded: list[dict[str, Any]], data_type: str, tmp_path: Path
) -> None:
    """Parquet timestamps are typed UTC and dates are dates; CSV times are RFC 3339 with
    Z; DuckDB's readers take both as they are."""
    import duckdb
    import pyarrow as pa

    period = {"start_date": iso(START), "end_date": iso(END)}
    _, parquet = _export(api, data_type=data_type, format="parquet", **period)
    schema = pq.read_table(io.BytesIO(parquet)).schema
    times = [f for f in schema if pa.types.is_timestamp(f.type)]
    assert all(f.type.tz == "UTC" for f in times), schema
    if data_type == "workflow_metrics":
        assert schema.field("date").type == pa.date32()
    else:
        assert times, schema
    _, text = _export(api, data_type=data_type, format="csv", **period)
    path = tmp_path / "export.csv"
    path.write_bytes(text)
    con = duckdb.connect()
    described = con.execute(f"DESCRIBE SELECT * FROM read_csv('{path}')").fetchall()
    types = {name: kind for name, kind, *_ in described}
    for f in times:
        assert types[f.name] == "TIMESTAMP WITH TIME ZONE", (f.name, types)
        first = next(csv.DictReader(io.StringIO(text.decode("utf-8-sig"))))[f.name]
        assert first.endswith("Z") and "T" in first, first
    if data_type == "workflow_metrics":
        assert types["date"] == "DATE"


@pytest.mark.parametrize("kind", ["report", "export"])
def test_csv_files_read_alike_in_pandas_polars_and_duckdb(
    api: Api, loaded: list[dict[str, Any]], kind: str, tmp_path: Path
) -> None:
    """One rule for every CSV (a UTF-8 BOM): the three readers see the same header."""
    import duckdb
    import pandas as pd
    import polars as pl

    if kind == "report":
        r = api.post("/v1/analytics/reports", json={
            "name": "R", "metrics": ["total_executions", "success_rate"],
            "filters": {"start_date": iso(START), "end_date": iso(END)},
            "group_by": ["channel"], "format": "csv"})  # fmt: skip
        assert r.status_code == 202, r.text
        done = wait_done(api, f"/v1/analytics/reports/{r.json()['data']['report_id']}")
        content = download(api, done["download_url"]).content
    else:
        _, content = _export(api, data_type="executions", format="csv",
                             start_date=iso(START), end_date=iso(END))  # fmt: skip
    assert content.startswith(b"\xef\xbb\xbf")
    path = tmp_path / "file.csv"
    path.write_bytes(content)
    header = content.decode("utf-8-sig").splitlines()[0].replace('"', "").split(",")
    assert list(pd.read_csv(path).columns) == header
    assert pl.read_csv(path).columns == header
    con = duckdb.connect()
    assert [
        c[0] for c in con.execute(f"DESCRIBE SELECT * FROM read_csv('{path}')").fetchall()
    ] == header
