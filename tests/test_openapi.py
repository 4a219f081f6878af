"""The served OpenAPI describes the API exactly: schemathesis, every check, real HTTP.

A live server with three days of the demo's data; schemathesis generates
requests from ``/openapi.json`` (valid ones and, in its negative phase,
invalid ones) and checks every answer against the same description: no 5xx,
only declared statuses, content types and headers, bodies that match their
schemas, invalid input refused and valid input accepted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import checks
from schemathesis.generation import GenerationMode

from conftest import GENEROUS_LIMITS, LiveServer
from kaie_analytics.demo import generate_demo

pytestmark = pytest.mark.slow
#: Examples per operation and mode, the same ones every run (``derandomize``), so that
#: CI is repeatable; runs of 150 random ones each found nothing more.
EXAMPLES = 40
checks.load_all_checks()


@schemathesis.check
def valid_requests_are_accepted(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis's ``positive_data_acceptance``, knowing the rules a schema cannot
    state: a period's end after its start and at most 366 days long (and a bucket
    limit), and a ``journey_type`` needed when the tenant's data has several."""
    if case.meta is None or case.meta.generation.mode is not GenerationMode.POSITIVE:
        return None
    if response.status_code != 400:
        return None
    error = response.json()["error"]
    relative = ("End date must be after", "The period must be at most")
    if error["code"] == "INVALID_DATE_RANGE" and error["details"].startswith(relative):
        return None  # the bounds relative to each other
    if error["field"] == "granularity" and "buckets" in error["details"]:
        return None  # hours over a long period
    if error["field"] == "journey_type" and "several journey types" in error["details"]:
        return None
    raise AssertionError(f"a request the description allows was refused: {error}")


#: Every check schemathesis has, its acceptance of valid data as above.
CHECKS = [c for c in checks.CHECKS.get_all() if c is not checks.positive_data_acceptance]
CHECKS.append(valid_requests_are_accepted)


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, str]]:
    server = LiveServer(tmp_path_factory.mktemp("openapi") / "d",
                        # Its checks send bad keys on purpose: no lock-out for them.
                        env={"KAIE_RATE_LIMITS": GENEROUS_LIMITS,
                             "KAIE_AUTH_FAILURE_LIMIT": "1000000/minute"})  # fmt: skip
    key = server.create_key("demo")
    server.start(log=server.data_dir.parent / "server.log")
    headers = {"Authorization": f"Bearer {key}"}
    for _, events in generate_demo(days=3):
        for i in range(0, len(events), 1000):
            r = httpx.post(f"{server.url}/v1/events", json={"events": events[i : i + 1000]},
                           headers=headers)  # fmt: skip
            assert r.status_code == 200
    yield server, key
    server.stop()


def test_every_answer_matches_the_description(live_api: tuple[LiveServer, str]) -> None:
    """Each operation, valid requests then invalid ones, every check on every answer."""
    server, key = live_api
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    headers = {"Authorization": f"Bearer {key}"}
    failures: list[str] = []
    known = _known_ids(server.url, headers)
    for result in schema.get_all_operations():
        operation = result.ok()
        runs: list[tuple[str, GenerationMode, dict[str, str] | None]] = [
            ("positive", GenerationMode.POSITIVE, None),
            ("negative", GenerationMode.NEGATIVE, None),
        ]
        names = {p.name for p in operation.path_parameters}
        if names:  # also with ids that exist, so that their answers are checked too
            runs.append(("known ids", GenerationMode.POSITIVE, {n: known[n] for n in names}))
        for label, mode, ids in runs:
            # The key is part of each case (not laid over it when sent), so a case made
            # without it reaches the server without it.
            @given(case=operation.as_strategy(generation_mode=mode, path_parameters=ids,
                                              headers=headers))  # fmt: skip
            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))  # fmt: skip
            def run(case: Any) -> None:
                case.call_and_validate(base_url=server.url, checks=CHECKS)

            try:
                run()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # nothing to get wrong: no parameters
            except (Exception, BaseExceptionGroup) as exc:  # every operation is tried; all shown
                failures.append(f"{operation.method.upper()} {operation.path} ({label}): {exc}")
    # The server's own account of any error goes with the failures (its traceback).
    log = (server.data_dir.parent / "server.log").read_text(errors="replace").splitlines()
    errors = [line for line in log if '"level":"error"' in line]
    assert not failures, "\n\n".join(failures + errors[-3:])


def _known_ids(url: str, headers: dict[str, str]) -> dict[str, str]:
    """A workflow, a finished report and a finished export of the demo tenant."""
    report = httpx.post(f"{url}/v1/analytics/reports", headers=headers, json={
        "name": "r", "metrics": ["total_executions"], "format": "csv"}).json()["data"]  # fmt: skip
    export = httpx.post(f"{url}/v1/analytics/export", headers=headers,
                        json={"data_type": "executions"}).json()["data"]  # fmt: skip
    for path in (f"/v1/analytics/reports/{report['report_id']}",
                 f"/v1/analytics/export/{export['export_id']}"):  # fmt: skip
        for _ in range(200):
            if httpx.get(url + path, headers=headers).json()["data"]["status"] == "completed":
                break
            time.sleep(0.05)
    return {"workflow_id": "support-bot", "report_id": report["report_id"],
            "export_id": export["export_id"]}  # fmt: skip


def test_the_description_is_complete(live_api: tuple[LiveServer, str]) -> None:
    server, _ = live_api
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    metrics = spec["paths"]["/v1/analytics/workflows/{workflow_id}"]["get"]
    names = {p["name"] for p in metrics["parameters"]}
    assert {"start_date", "end_date", "timezone", "granularity", "metrics", "group_by"} <= names
    events = spec["paths"]["/v1/events"]["post"]["requestBody"]["content"]
    assert {"application/json", "application/x-ndjson"} <= set(events)
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if path.startswith("/v1/"):
                assert "401" in operation["responses"], (method, path)
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # never answered
    docs = httpx.get(f"{server.url}/docs").text
    assert "cdn" not in docs.lower() and "/docs-assets/" in docs
