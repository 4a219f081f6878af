"""The Python client (clients/python) against a live server, as its users call it."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import LiveServer
from kaie_client import AsyncClient, Client, IngestReport, KaieError, RetryPolicy, content_id

pytestmark = pytest.mark.slow

Q = {"start_date": "2024-03-01", "end_date": "2024-03-31"}


def executions(n: int, start: int = 0, with_ids: bool = False) -> list[dict[str, Any]]:
    out = []
    for i in range(start, start + n):
        event = {"type": "execution.started", "workflow_id": "wf", "execution_id": f"x{i}",
                 "timestamp": f"2024-03-{1 + i % 28:02d}T{i % 24:02d}:00:00Z", "channel": "sms"}  # fmt: skip
        if with_ids:
            event["id"] = f"e{i}"
        out.append(event)
    return out


def total(kaie: Client) -> int:
    return int(kaie.workflow_metrics("wf", **Q)["metrics"]["total_executions"])


def test_send_events_batches_names_rejections_and_never_doubles(live: LiveServer) -> None:
    key = live.create_key("acme")
    live.start()
    events: list[Any] = executions(25_000)
    events[3] = {**events[3], "channel": "Not A Channel"}
    events[20_004] = {"type": "execution.started"}  # no workflow, no execution
    with Client(live.url, key) as kaie:
        report = kaie.send_events(events)
        assert report.requests == 3  # 10,000 events per request at most
        assert (report.accepted, report.duplicates, report.rejected) == (24_998, 0, 2)
        assert [(e["index"], e["field"]) for e in report.errors] == [
            (3, "channel"), (20_004, "workflow_id")]  # fmt: skip
        # The same events again (a retry by the caller): ids from their content match.
        again = kaie.send_events(events)
        assert (again.accepted, again.duplicates, again.rejected) == (0, 24_998, 2)
        assert total(kaie) == 24_998
        # NDJSON lines as bytes, as a file holds them; a line that is not JSON is one error.
        lines = [json.dumps(e).encode() + b"\n" for e in executions(3, start=30_000)]
        report = kaie.send_events([*lines[:1], b"{not json\n", *lines[1:]])
        assert (report.accepted, report.rejected) == (3, 1) and report.errors[0]["index"] == 1
        with pytest.raises(KaieError) as caught:
            kaie.workflow_metrics("wf", start_date="2024-02-30")
        assert caught.value.status == 400 and caught.value.field == "start_date"
    assert content_id({"b": 1, "a": 2}) == content_id({"a": 2, "b": 1})


def test_a_server_killed_and_restarted_mid_stream_loses_and_doubles_nothing(
    live: LiveServer,
) -> None:
    key = live.create_key("acme")
    live.start()
    events = executions(150_000)
    outcome: list[IngestReport | BaseException] = []

    def stream() -> None:
        small = [events[i : i + 1000] for i in range(0, len(events), 1000)]
        report = IngestReport()
        try:
            with Client(live.url, key, retry=RetryPolicy(tries=12, cap_s=4)) as kaie:
                for part in small:  # many requests, so that the kill lands between and in them
                    got = kaie.send_events(part)
                    report.accepted += got.accepted
                    report.duplicates += got.duplicates
                    report.rejected += got.rejected
            outcome.append(report)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=stream)
    thread.start()
    time.sleep(1.0)
    assert thread.is_alive()  # the kill lands mid-stream
    live.kill()
    time.sleep(1.0)
    live.start()
    thread.join(timeout=180)
    assert outcome and isinstance(outcome[0], IngestReport), outcome
    report = outcome[0]
    assert report.rejected == 0 and report.accepted + report.duplicates >= 150_000
    with Client(live.url, key) as kaie:
        assert total(kaie) == 150_000  # every event once: none lost, none doubled


def test_429_waits_for_retry_after(tmp_path: Path) -> None:
    live = LiveServer(tmp_path / "d", env={"KAIE_RATE_LIMITS": "events=2/second"})
    key = live.create_key("acme")
    live.start()
    try:
        started = time.monotonic()
        with Client(live.url, key) as kaie:
            for i in range(5):
                assert kaie.send_events(executions(10, start=i * 10)).accepted == 10
        assert time.monotonic() - started >= 1.0  # the third request had to wait its turn
    finally:
        live.stop()


def test_async_client_reports_and_exports_to_files(live: LiveServer, tmp_path: Path) -> None:
    key = live.create_key("acme")
    live.start()

    async def run() -> tuple[list[str], Path, Path]:
        async with AsyncClient(live.url, key) as kaie:
            report = await kaie.send_events(executions(500))
            assert report.accepted == 500
            assert [w["workflow_id"] for w in await kaie.workflows()] == ["wf"]
            seen: list[str] = []
            job = await kaie.create_report({
                "name": "March", "metrics": ["total_executions"], "format": "csv",
                "filters": {"start_date": "2024-03-01", "end_date": "2024-03-31"},
            })  # fmt: skip
            done = await kaie.wait_report(job["report_id"], poll_s=0.1,
                                          on_progress=lambda j: seen.append(j["status"]))  # fmt: skip
            assert done["status"] == "completed", done
            csv = await kaie.download(done["download_url"], tmp_path / "march.csv")
            export = await kaie.create_export({"data_type": "executions", "format": "ndjson", **Q})
            finished = await kaie.wait_export(export["export_id"], poll_s=0.1)
            ndjson = await kaie.download(finished["download_url"], tmp_path / "x.ndjson")
            return seen, csv, ndjson

    seen, csv, ndjson = asyncio.run(run())
    assert seen[-1] == "completed"
    assert "500" in csv.read_text(encoding="utf-8-sig")
    assert len(ndjson.read_bytes().splitlines()) == 500
    assert not list(tmp_path.glob("*.part"))


def test_the_readme_example_runs_as_written(live: LiveServer, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The README's client example, on the demo's data, against a live server."""
    from kaie_analytics.demo import generate_demo

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = readme.split("## Python client", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    key = live.create_key("demo")
    live.start()
    events = [e for _, day in generate_demo(days=3) for e in day]
    monkeypatch.chdir(tmp_path)  # where the example downloads its file
    exec(block.replace("http://127.0.0.1:8000", live.url), {"KEY": key, "events": events})
    assert (tmp_path / "executions.parquet").stat().st_size > 0
