"""Crash safety and concurrency against a live server killed with SIGKILL."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest

from conftest import LiveServer, stored_events
from kaie_analytics.config import Settings
from kaie_analytics.engines import open_engine

BATCH = 200


def _batches(client: int, n: int) -> list[bytes]:
    out = []
    for b in range(n):
        events = [
            {"id": f"c{client}-b{b}-e{i}", "type": "execution.started",
             "timestamp": "2024-03-01T12:00:00Z", "workflow_id": f"wf-{client}",
             "execution_id": f"c{client}-b{b}-e{i}", "channel": "sms"}
            for i in range(BATCH)
        ]  # fmt: skip
        out.append(orjson.dumps({"events": events}))
    return out


@pytest.mark.slow
def test_sigkill_loses_and_doubles_nothing(tmp_path: Path, events_backend: str) -> None:
    server = LiveServer(tmp_path / "d", events_backend)
    key = server.create_key("acme")
    server.start()
    acked: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()
    rng = random.Random(7)
    rng_c = random.Random(8)

    def client(n: int) -> None:
        batches = _batches(n, 40)
        with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {key}",
                                               "Content-Type": "application/json"}) as c:  # fmt: skip
            # Every batch once, then earlier ones again (retries, as a platform makes
            # them) until the kills are over: a fast machine cannot outrun them.
            sent = 0
            while sent < len(batches) or not stop.is_set():
                body = batches[sent] if sent < len(batches) else rng_c.choice(batches)
                sent += 1
                while True:
                    try:
                        r = c.post(server.url + "/v1/events", content=body)
                        if r.status_code == 200:
                            d = r.json()["data"]
                            assert d["accepted"] + d["duplicates"] == BATCH
                            with lock:
                                acked.update(e["id"] for e in orjson.loads(body)["events"])
                            break
                    except httpx.TransportError:
                        pass
                    time.sleep(0.02)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    kills = 0
    while kills < 4:
        time.sleep(rng.uniform(0.2, 0.8))
        server.kill()
        kills += 1
        server.start()
    stop.set()
    for t in threads:
        t.join(timeout=300)
    server.stop()
    engine = open_engine(Settings(data_dir=server.data_dir, events_backend=events_backend))
    try:
        ids = [e["id"] for e in stored_events(engine, "acme")]
        counted = engine.count_events("acme")
    finally:
        engine.close()
    assert len(ids) == len(set(ids)) == counted, "an event was stored twice"
    assert set(ids) == acked
    assert len(acked) == 3 * 40 * BATCH


@pytest.mark.slow
def test_concurrent_clients_with_overlapping_ids(tmp_path: Path, events_backend: str) -> None:
    server = LiveServer(tmp_path / "d", events_backend)
    key = server.create_key("acme")
    server.start()
    results: list[tuple[int, int]] = []
    lock = threading.Lock()
    # Eight clients send the same 20 batches at once: each event is accepted exactly once.
    bodies = _batches(0, 20)

    def client() -> None:
        with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {key}",
                                               "Content-Type": "application/json"}) as c:  # fmt: skip
            for body in bodies:
                d = c.post(server.url + "/v1/events", content=body).json()["data"]
                with lock:
                    results.append((d["accepted"], d["duplicates"]))

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    server.stop()
    assert sum(a for a, _ in results) == 20 * BATCH
    assert sum(d for _, d in results) == 7 * 20 * BATCH
