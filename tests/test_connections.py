"""What happens on the wire: body bounds, 413s every client reads, keep-alive after errors.

These run against a live ``kaie-analytics serve`` (uvicorn with httptools), since
they are about the connection, not the handler.
"""

from __future__ import annotations

import gzip
import http.client
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import uvicorn

from conftest import GENEROUS_LIMITS, LiveServer, free_port, make_key
from kaie_analytics.app import create_app
from kaie_analytics.config import Settings

Connect = Callable[[int], http.client.HTTPConnection]
EVENT = {"type": "message.sent", "timestamp": "2024-01-01T00:00:00Z", "customer_id": "c",
         "channel": "sms"}  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, str]]:
    live = LiveServer(tmp_path_factory.mktemp("conn") / "d")
    key = live.create_key("acme")
    live.start()
    yield live, key
    live.stop()


@pytest.fixture
def connect() -> Iterator[Callable[[int], http.client.HTTPConnection]]:
    """Opens keep-alive connections to a port; closes them after the test."""
    opened: list[http.client.HTTPConnection] = []

    def open_(port: int) -> http.client.HTTPConnection:
        opened.append(http.client.HTTPConnection("127.0.0.1", port, timeout=30))
        return opened[-1]

    yield open_
    for conn in opened:
        conn.close()


def _urllib(url: str, body: bytes, key: str, ctype: str = "application/json") -> tuple[int, bytes]:
    req = urllib.request.Request(
        url, data=body, method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": ctype},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.parametrize("path", ["/v1/events", "/v1/analytics/reports"])
def test_urllib_reads_the_413(server: tuple[LiveServer, str], path: str) -> None:
    live, key = server
    status, body = _urllib(live.url + path, b" " * (6 << 20), key)
    assert status == 413
    assert orjson.loads(body)["error"]["code"] == "PAYLOAD_TOO_LARGE"


def test_an_endless_body_is_not_read(server: tuple[LiveServer, str]) -> None:
    """A chunked body that never ends: the server stops reading and answers 413."""
    live, key = server
    sock = socket.create_connection(("127.0.0.1", live.port), timeout=30)
    head = (
        "POST /v1/analytics/reports HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    sock.sendall(head.encode())
    chunk = b"100000\r\n" + b" " * 0x100000 + b"\r\n"  # 1 MiB per chunk
    sent = 0
    try:
        while sent < 1 << 30:
            sock.sendall(chunk)
            sent += 1 << 20
    except OSError:
        pass  # the server closed the connection: it stopped reading
    sock.settimeout(5)
    assert sent < 200 << 20, "the server read far past the limit"
    try:
        reply = sock.recv(65536)
        if reply:
            assert reply.startswith(b"HTTP/1.1 413")
    except OSError:
        pass  # the reply may be lost to the reset once the socket buffers filled
    sock.close()


def test_gzip_member_ends_the_body(server: tuple[LiveServer, str], connect: Connect) -> None:
    live, key = server
    body = gzip.compress(orjson.dumps({"events": [EVENT]}))
    conn = connect(live.port)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json",
               "Content-Encoding": "gzip"}  # fmt: skip
    for extra, status in [(b"", 200), (b"\0" * 4096, 400), (body, 400)]:
        conn.request("POST", "/v1/events", body=body + extra, headers=headers)
        r = conn.getresponse()
        data = orjson.loads(r.read())
        assert r.status == status, data
        if status == 400:
            assert "after the end of its gzip member" in data["error"]["details"]
    # Compressed bytes are bounded as well as the inflated ones.
    conn.request("POST", "/v1/events", body=b"\x1f\x8b" + b"\0" * (6 << 20), headers=headers)
    r = conn.getresponse()
    r.read()
    assert r.status in (400, 413)


def test_errors_keep_the_connection(server: tuple[LiveServer, str], connect: Connect) -> None:
    """After any error answer the same connection serves the next request."""
    live, key = server
    conn = connect(live.port)
    auth = {"Authorization": f"Bearer {key}"}
    requests = [
        ("GET", "/v1/analytics/workflows/wf?start_date=0001-01-01", auth, None, 400),
        ("GET", "/v1/analytics/workflows/wf?timezone=Europe", auth, None, 400),
        ("GET", "/v1/nowhere", auth, None, 404),
        ("DELETE", "/v1/events", auth, None, 405),
        ("POST", "/v1/analytics/reports", auth, b"[1,", 400),
        ("POST", "/v1/events", auth, b" " * (5 << 20) + b"  ", 413),
        ("GET", "/v1/workflows", auth, None, 200),
    ]
    first_socket = None
    for method, path, headers, body, status in requests:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        r.read()
        assert r.status == status, (path, r.status)
        assert r.getheader("connection", "").lower() != "close", path
        first_socket = first_socket or conn.sock
        assert conn.sock is first_socket, f"the connection was dropped after {path}"


def test_allow_and_www_authenticate(server: tuple[LiveServer, str], connect: Connect) -> None:
    live, key = server
    conn = connect(live.port)
    conn.request("DELETE", "/v1/events", headers={"Authorization": f"Bearer {key}"})
    r = conn.getresponse()
    r.read()
    assert r.status == 405 and r.getheader("allow") == "POST"
    conn.request("GET", "/v1/workflows")
    r = conn.getresponse()
    r.read()
    assert r.status == 401 and r.getheader("www-authenticate") == 'Bearer realm="kaie-analytics"'
    conn.request("GET", "/v1/workflows", headers={"Authorization": "Bearer kaie_nope_x"})
    r = conn.getresponse()
    r.read()
    assert r.status == 401
    assert 'error="invalid_token"' in (r.getheader("www-authenticate") or "")


def test_an_unexpected_error_keeps_the_connection(tmp_path: Path, connect: Connect) -> None:
    """A 500 from a route that raised is in the seed's shape and keeps the connection."""
    settings = Settings(data_dir=tmp_path / "d", rate_limits=GENEROUS_LIMITS)
    app = create_app(settings)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    port = free_port()
    config = uvicorn.Config(app, port=port, log_config=None, http="httptools", lifespan="on")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not srv.started and time.monotonic() < deadline:
            time.sleep(0.05)
        make_key(settings, "acme")
        conn = connect(port)
        conn.request("GET", "/boom")
        r = conn.getresponse()
        body = orjson.loads(r.read())
        assert r.status == 500 and body["error"]["code"] == "INTERNAL_ERROR"
        sock = conn.sock
        conn.request("GET", "/healthz")
        r = conn.getresponse()
        r.read()
        assert r.status == 200 and conn.sock is sock
    finally:
        srv.should_exit = True
        thread.join(timeout=30)
