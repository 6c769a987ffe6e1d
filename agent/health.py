"""Is the agent healthy? The answer for systemd's watchdog, for ``/healthz``, and the server.

:class:`HealthMonitor` runs as a side task that ticks every ``tick_seconds``. Each tick stamps
the time, pings the systemd watchdog (only while every supervised side task is alive: a loop
that is blocked does not tick, so the pings stop by themselves) and sends ``STATUS=`` when it
changes.

:class:`HealthServer` answers ``GET /healthz`` and ``GET /metrics`` from a thread of its own, so
that it can still say "503: event loop unresponsive for 12s" while the loop is stuck.
``/healthz`` is 200 only while the loop ticks, every side task runs, the fence process lives
(``agent/fence.py``), and the API was reached (a heartbeat accepted) within ``api_stale_after``
seconds.

``python -m agent.health [URL]`` is the probe the Docker image's HEALTHCHECK runs: exit 0 when
the URL (default ``http://127.0.0.1:$AGENT_HEALTH_PORT/healthz``) answers 200.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST

from agent.errors import ConfigError
from agent.notify import SystemdNotifier

log = structlog.get_logger("agent.health")

DEFAULT_HEALTH_PORT = 8080


class HealthMonitor:
    def __init__(
        self,
        *,
        tick_seconds: float = 1.0,
        api_stale_after: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tick_seconds = tick_seconds
        self.api_stale_after = api_stale_after
        self._clock = clock
        self.last_tick = clock()
        self._tasks: list[asyncio.Task[Any]] = []
        self._since_api: Callable[[], float] | None = None
        self._fence_running: Callable[[], bool] | None = None
        self._stopped = False

    @property
    def lag_limit(self) -> float:
        """A loop that has not ticked for this long counts as blocked."""
        return max(5.0, 5 * self.tick_seconds)

    def supervise(self, tasks: Sequence[asyncio.Task[Any]]) -> None:
        self._tasks = list(tasks)

    def attach_api(self, since_reached: Callable[[], float]) -> None:
        """``since_reached()``: seconds since the server last accepted a heartbeat."""
        self._since_api = since_reached

    def attach_fence(self, running: Callable[[], bool]) -> None:
        """``running()``: whether the agent's fence process lives (agent/fence.py)."""
        self._fence_running = running

    def stopped(self) -> None:
        self._stopped = True

    def loop_problem(self) -> str | None:
        """What is wrong with the event loop or its side tasks, if anything."""
        lag = self._clock() - self.last_tick
        if lag > self.lag_limit:
            return f"event loop unresponsive for {lag:.0f}s"
        for task in self._tasks:
            if task.done():
                return f"side task {task.get_name()} stopped"
        if self._fence_running is not None and not self._fence_running():
            # Without it, runs of an agent killed now would go on beside their retries.
            return "the fence process is not running"
        return None

    def api_problem(self) -> str | None:
        if self._since_api is None:
            return "starting: the work queue is not resolved yet"
        since = self._since_api()
        if since > self.api_stale_after:
            return f"API not reached for {since:.0f}s"
        return None

    def problem(self) -> str | None:
        """Why ``/healthz`` says 503, or None for 200."""
        if self._stopped:
            return "stopping"
        return self.loop_problem() or self.api_problem()

    async def run(self, notifier: SystemdNotifier, status: Callable[[], str]) -> None:
        """Side task: tick, ping the watchdog while healthy, keep systemd's STATUS current."""
        sent: str | None = None
        while True:
            self.last_tick = self._clock()
            if notifier.watchdog_seconds is not None and self.loop_problem() is None:
                notifier.watchdog()
            text = status()
            if text != sent:
                notifier.status(text)
                sent = text
            await asyncio.sleep(self.tick_seconds)


class HealthServer:
    """``/healthz`` and ``/metrics`` over HTTP, served from a daemon thread."""

    def __init__(
        self, host: str, port: int, monitor: HealthMonitor, metrics: Callable[[], bytes]
    ) -> None:
        self.host = host
        self.port = port
        self._monitor = monitor
        self._metrics = metrics
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        monitor, metrics = self._monitor, self._metrics

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    problem = monitor.problem()
                    body = {"status": "ok"} if problem is None else {"status": "unhealthy"}
                    if problem is not None:
                        body["reason"] = problem
                    self._answer(
                        200 if problem is None else 503,
                        json.dumps(body).encode() + b"\n",
                        "application/json",
                    )
                elif path == "/metrics":
                    self._answer(200, metrics(), CONTENT_TYPE_LATEST)
                else:
                    self._answer(404, b"not found: try /healthz or /metrics\n", "text/plain")

            def _answer(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a probe every few seconds is not news

        return Handler

    def start(self) -> None:
        try:
            self._server = ThreadingHTTPServer((self.host, self.port), self._handler())
        except OSError as exc:
            raise ConfigError(
                f"cannot serve /healthz on {self.host}:{self.port}: {exc.strerror}",
                hint="pick another --health-port (setting health_port) or health_host",
            ) from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health-http", daemon=True
        )
        self._thread.start()
        log.info("health_server_listening", host=self.host, port=self.port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def probe(url: str, timeout: float = 5.0) -> int:
    """Exit status of a health probe: 0 when ``url`` answers 200, else 1 (reason on stderr)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            print(response.read().decode(errors="replace").strip())
            return 0
    except urllib.error.HTTPError as exc:
        print(f"{url}: {exc.code} {exc.read().decode(errors='replace').strip()}", file=sys.stderr)
    except (urllib.error.URLError, OSError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    port = os.environ.get("AGENT_HEALTH_PORT") or DEFAULT_HEALTH_PORT
    sys.exit(probe(sys.argv[1] if len(sys.argv) > 1 else f"http://127.0.0.1:{port}/healthz"))
