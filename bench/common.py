"""Helpers shared by the benchmarks: a live server, its memory, machine facts."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Self

import httpx
import psutil


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, Python {platform.python_version()}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, data_dir: Path, **env: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.key = ""

    def __enter__(self) -> Server:
        env = os.environ | {"KAIE_LOG_FORMAT": "json"} | self.env
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kaie_analytics", "serve", "--port", str(self.port),
             "--data-dir", str(self.data_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise RuntimeError("server did not start")
        return self

    def create_key(self, tenant: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "kaie_analytics", "keys", "create", "--tenant", tenant,
             "--data-dir", str(self.data_dir)],
            check=True, capture_output=True, text=True, env=os.environ | self.env,
        )  # fmt: skip
        return out.stdout.strip().splitlines()[-1]

    def rss_mb(self) -> float:
        """Resident memory of the server and its child processes (ingest workers)."""
        assert self.proc is not None
        proc = psutil.Process(self.proc.pid)
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                total += child.memory_info().rss
        return float(total) / 2**20

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the server and its child processes used so far."""
        assert self.proc is not None
        proc = psutil.Process(self.proc.pid)
        total = sum(proc.cpu_times()[:2])
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                total += sum(child.cpu_times()[:2])
        return float(total)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=60)


class Background:
    """Runs ``_run`` in a thread for the duration of a ``with`` block; ``_run``
    returns once ``_stop`` is set."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class PeakMemory(Background):
    """Samples a process's RSS every 50 ms; ``peak`` in MiB."""

    def __init__(self, server: Server) -> None:
        super().__init__()
        self.server = server
        self.peak = 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.server.rss_mb())
            time.sleep(0.05)


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)
