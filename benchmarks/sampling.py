"""Watching processes and counting runs while a benchmark goes on."""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

MIB = 1024 * 1024


@dataclass
class Usage:
    """What :class:`ProcessWatch` saw of one process over a window."""

    seconds: float
    cpu_seconds: float  # user + system of the process itself, children excluded
    children_cpu_seconds: float = 0.0  # of its descendants alive at the end, over the window
    rss: list[float] = field(default_factory=list)  # MiB, the process alone
    rss_with_children: list[float] = field(default_factory=list)  # MiB, plus its descendants
    children: list[int] = field(default_factory=list)

    @property
    def cpu_percent(self) -> float:
        """Of one core."""
        return 100 * self.cpu_seconds / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_percent_with_children(self) -> float:
        total = self.cpu_seconds + self.children_cpu_seconds
        return 100 * total / self.seconds if self.seconds > 0 else 0.0


class ProcessWatch:
    """Samples one process's RSS (alone and with its descendants) on a thread; CPU over the
    whole window from its own cpu_times (children excluded)."""

    def __init__(self, pid: int, interval: float = 1.0, children: bool = False) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.children = children
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"watch-{pid}", daemon=True)
        self._usage = Usage(0.0, 0.0)
        self._t0 = 0.0
        self._cpu0 = 0.0
        self._children_cpu0: dict[int, float] = {}

    def __enter__(self) -> ProcessWatch:
        self._t0 = time.monotonic()
        self._cpu0 = _cpu(self.process)
        if self.children:
            self._children_cpu0 = _children_cpu(self.process)
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> Usage:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self._sample()
            self._usage.seconds = time.monotonic() - self._t0
            with contextlib.suppress(psutil.Error):
                self._usage.cpu_seconds = _cpu(self.process) - self._cpu0
                if self.children:
                    now = _children_cpu(self.process)
                    self._usage.children_cpu_seconds = sum(
                        cpu - self._children_cpu0.get(pid, 0.0) for pid, cpu in now.items()
                    )
        return self._usage

    @property
    def usage(self) -> Usage:
        return self._usage

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        with contextlib.suppress(psutil.Error):
            own = self.process.memory_info().rss
            self._usage.rss.append(own / MIB)
            if self.children:
                kids = self.process.children(recursive=True)
                total = own
                for kid in kids:
                    with contextlib.suppress(psutil.Error):
                        total += kid.memory_info().rss
                self._usage.rss_with_children.append(total / MIB)
                self._usage.children.append(len(kids))


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _children_cpu(process: psutil.Process) -> dict[int, float]:
    used: dict[int, float] = {}
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            used[child.pid] = _cpu(child)
    return used


_RUNS = re.compile(r'^flowagent_server_flow_runs\{state="(\w+)"\} ([0-9.e+]+)$', re.M)


def run_counts(http: httpx.Client, server_url: str) -> dict[str, int]:
    """Runs by state on our server, from its /metrics (one GROUP BY on the server side)."""
    base = server_url.removesuffix("/api")
    text = http.get(f"{base}/metrics").text
    return {state: int(float(n)) for state, n in _RUNS.findall(text)}


_REQUESTS = re.compile(
    r'^flowagent_server_requests_total\{method="(\w+)",route="([^"]+)",status="(\d+)"\} '
    r"([0-9.e+]+)$",
    re.M,
)


def request_counts(http: httpx.Client, server_url: str) -> dict[str, int]:
    """Requests our server answered so far, by "METHOD route status"."""
    base = server_url.removesuffix("/api")
    text = http.get(f"{base}/metrics").text
    return {f"{m} {r} {s}": int(float(n)) for m, r, s, n in _REQUESTS.findall(text)}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def read_stamps(directory: Path) -> dict[str, float]:
    """The first-act timestamps the flows wrote, by run id."""
    stamps: dict[str, float] = {}
    for path in directory.iterdir():
        with contextlib.suppress(OSError, ValueError):
            stamps[path.name] = float(path.read_text())
    return stamps


_DURATIONS = re.compile(
    r"^flowagent_server_request_duration_seconds_(bucket|sum|count)\{([^}]*)\} ([0-9.e+-]+|\+Inf)$",
    re.M,
)


def request_durations(http: httpx.Client, server_url: str, route: str) -> dict[str, Any]:
    """The server's own latency histogram of one route ("POST /api/agents/heartbeat"):
    count, mean seconds and the cumulative bucket counts."""
    method, _, path = route.partition(" ")
    base = server_url.removesuffix("/api")
    text = http.get(f"{base}/metrics").text
    found: dict[str, Any] = {"buckets": {}}
    for kind, labels, value in _DURATIONS.findall(text):
        if f'method="{method}"' not in labels or f'route="{path}"' not in labels:
            continue
        if kind == "bucket":
            le = re.search(r'le="([^"]+)"', labels)
            if le:
                found["buckets"][le.group(1)] = int(float(value))
        else:
            found[kind] = float(value)
    if found.get("count"):
        found["mean_seconds"] = found["sum"] / found["count"]
    return found
