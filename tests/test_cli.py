"""The command line, run as a user runs it (spec/OPERATIONS.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest

from conftest import LiveServer, free_port


def cli(
    *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kaie_analytics", *args],
        input=stdin.decode() if stdin else None,
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | (env or {}),
    )


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    data = str(tmp_path / "d")
    out = cli(
        "keys", "create", "--tenant", "acme", "--scopes", "analytics:read", "--data-dir", data
    )
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip().splitlines()[-1]
    assert key.startswith("kaie_")
    listed = cli("keys", "list", "--data-dir", data).stdout
    prefix = "_".join(key.split("_")[:2])
    assert prefix in listed and key not in listed and "analytics:read" in listed
    assert cli("keys", "revoke", prefix, "--data-dir", data).returncode == 0
    assert "revoked" in cli("keys", "list", "--data-dir", data).stdout


@pytest.mark.parametrize(
    "args",
    [
        ("keys", "create", "--tenant", "acme", "--scopes", "events:read"),
        ("keys", "revoke", "kaie_nope"),
        ("ingest", "/does/not/exist.ndjson"),
        ("ingest", "-", "--url", "http://127.0.0.1:9"),
    ],
)
def test_bad_input_is_one_line_error(tmp_path: Path, args: tuple[str, ...]) -> None:
    out = cli(*args, "--data-dir", str(tmp_path / "d"))
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.startswith("error:")


def test_ingest_local_file(tmp_path: Path) -> None:
    data = str(tmp_path / "d")
    lines = [
        {"id": f"e{i}", "type": "message.sent", "timestamp": "2024-01-01T00:00:00Z",
         "customer_id": f"c{i}", "channel": "sms"}
        for i in range(12_000)
    ]  # fmt: skip
    bad = {"type": "message.sent", "timestamp": "2024-01-01T00:00:00Z", "customer_id": 7,
           "channel": "sms"}  # fmt: skip
    # A blank line, then a bad event on line 12,002 of the file.
    body = b"\n".join(orjson.dumps(e) for e in lines) + b"\n\n" + orjson.dumps(bad) + b"\n"
    path = tmp_path / "events.ndjson"
    path.write_bytes(body)
    out = cli("ingest", str(path), "--tenant", "acme", "--data-dir", data)
    assert out.returncode == 0, out.stderr
    assert "accepted 12000, duplicates 0, rejected 1" in out.stdout
    assert "line 12002: customer_id must be a string, not an integer" in out.stderr
    out = cli("ingest", "-", "--tenant", "acme", "--data-dir", data, stdin=body)
    assert "accepted 0, duplicates 12000, rejected 1" in out.stdout
    assert "None" not in out.stderr  # standard input has no size: no "1154/None"


def test_serve_bootstraps_a_key_and_keys_work_while_running(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "d")
    try:
        url = server.start()
        assert server.proc is not None and server.proc.stdout is not None
        banner = server.proc.stdout.readline().decode() + server.proc.stdout.readline().decode()
        key = banner.strip().splitlines()[-1]
        assert key.startswith("kaie_")
        r = httpx.get(url + "/v1/workflows", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200
        # keys create works while the server runs, and the new key works at once
        out = cli("keys", "create", "--tenant", "beta", "--data-dir", str(server.data_dir))
        new_key = out.stdout.strip().splitlines()[-1]
        r = httpx.get(url + "/v1/workflows", headers={"Authorization": f"Bearer {new_key}"})
        assert r.status_code == 200 and r.json() == {"data": []}
        # ingest through the running server
        body = orjson.dumps({"type": "message.sent", "timestamp": "2024-01-01T00:00:00Z",
                             "customer_id": "c", "channel": "sms"})  # fmt: skip
        out = cli("ingest", "-", "--url", url, "--api-key", new_key, stdin=body + b"\n")
        assert out.returncode == 0, out.stderr
        assert "accepted 1" in out.stdout
        # the local mode refuses a data directory that a server holds, with one line
        out = cli("ingest", "-", "--data-dir", str(server.data_dir), stdin=body)
        holder = f"another process (PID {server.proc.pid}) is serving {server.data_dir}"
        assert out.returncode != 0 and holder in out.stderr and "Traceback" not in out.stderr
        # and so does a second server on it
        out = cli("serve", "--data-dir", str(server.data_dir), "--port", str(free_port()))
        assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.startswith("error:") and holder in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    finally:
        server.stop()


def _demo_key(stdout: str) -> str:
    return next(w for w in stdout.split() if w.startswith("kaie_"))


def test_demo_generates_once_then_reuses(tmp_path: Path) -> None:
    data = str(tmp_path / "d")
    out = cli("demo", "--days", "3", "--no-serve", "--data-dir", data)
    assert out.returncode == 0, out.stderr
    assert "rejected" in out.stdout and " 0 rejected" in out.stdout
    assert "Bearer kaie_" in out.stdout
    again = cli("demo", "--days", "3", "--no-serve", "--data-dir", data)
    assert again.returncode == 0 and "already present" in again.stdout
    # The same key again (not one more full-access key each run), while it is active.
    assert _demo_key(again.stdout) == _demo_key(out.stdout) and "made before" in again.stdout
    prefix = "_".join(_demo_key(out.stdout).split("_")[:2])
    assert cli("keys", "revoke", prefix, "--data-dir", data).returncode == 0
    third = cli("demo", "--days", "3", "--no-serve", "--data-dir", data)
    assert _demo_key(third.stdout) != _demo_key(out.stdout)


def test_demo_serves_live_events_with_room_to_explore(tmp_path: Path) -> None:
    """While the demo serves, executions keep happening: realtime numbers move; and
    its limits let a person explore (more than the production limit of 100 an hour)."""
    import os
    import time

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "KAIE_RATE_LIMITS"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kaie_analytics", "demo", "--days", "1", "--port", str(port),
         "--data-dir", str(tmp_path / "d")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        key = ""
        while not key:
            line = proc.stdout.readline()
            assert line, "the demo ended"
            if "kaie_" in line:
                key = _demo_key(line)
        url = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {key}"}
        seen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                r = httpx.get(url + "/v1/analytics/realtime", headers=headers, timeout=5)
            except httpx.TransportError:
                time.sleep(0.5)
                continue
            assert r.status_code == 200, r.text
            now = r.json()["data"]["current_metrics"]
            seen.append((now["active_executions"], now["messages_in_last_hour"]))
            if max(a for a, _ in seen) > 0 and len({m for _, m in seen}) > 1:
                break
            time.sleep(1)
        assert max(a for a, _ in seen) > 0 and len({m for _, m in seen}) > 1, seen
        for _ in range(120):  # the "historical" class: 100 an hour in production
            r = httpx.get(url + "/v1/analytics/workflows/support-bot", headers=headers, timeout=10)
            assert r.status_code == 200, r.text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def test_a_second_process_on_a_data_directory_is_refused_in_one_line(
    tmp_path: Path, events_backend: str
) -> None:
    server = LiveServer(tmp_path / "d", events_backend)
    server.start()
    try:
        assert server.proc is not None
        holder = f"another process (PID {server.proc.pid}) is serving {server.data_dir}"
        env = {"KAIE_EVENTS_BACKEND": events_backend}
        for args in (
            ("serve", "--data-dir", str(server.data_dir), "--port", str(free_port())),
            ("ingest", "-", "--data-dir", str(server.data_dir)),
        ):
            out = cli(*args, stdin=b"{}\n", env=env)
            assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
            assert out.stderr.startswith("error:") and holder in out.stderr, out.stderr
            assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    finally:
        server.stop()


def test_copy_events_moves_a_data_directory_onto_clickhouse(tmp_path: Path) -> None:
    data = str(tmp_path / "d")
    lines = b"".join(
        orjson.dumps({"id": f"e{i}", "type": "execution.started", "workflow_id": "wf",
                      "execution_id": f"x{i}", "channel": "sms",
                      "timestamp": f"2024-01-{1 + i % 28:02d}T10:00:00Z"}) + b"\n"
        for i in range(500)
    )  # fmt: skip
    out = cli("ingest", "-", "--tenant", "acme", "--data-dir", data, stdin=lines)
    assert out.returncode == 0, out.stderr
    out = cli("copy-events", "--to", "chdb", "--data-dir", data)
    assert out.returncode == 0, out.stderr
    assert "copied 500 events of 1 tenants; the counts match for every tenant" in out.stdout
    assert "Copying" in out.stderr  # the progress bar
    # Run again: nothing more is copied, and the counts still match.
    out = cli("copy-events", "--to", "chdb", "--data-dir", data)
    assert out.returncode == 0 and "copied 500 events" in out.stdout, out.stderr
    out = cli("copy-events", "--to", "postgres://x", "--data-dir", data)
    assert out.returncode != 0 and out.stderr.startswith("error: KAIE_EVENTS_BACKEND must be")


def test_an_unreachable_clickhouse_server_is_one_line(tmp_path: Path) -> None:
    url = f"clickhouse://kaie:s3cret@127.0.0.1:{free_port()}/kaie"
    out = cli("serve", "--data-dir", str(tmp_path / "d"), "--port", str(free_port()),
              env={"KAIE_EVENTS_BACKEND": url})  # fmt: skip
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("error: cannot reach ClickHouse at 127.0.0.1:"), out.stderr
    assert "s3cret" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
