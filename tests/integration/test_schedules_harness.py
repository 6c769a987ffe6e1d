"""A real server (uvicorn, HTTP on loopback, SQLite file) run in a thread of the test process,
so that a test can give it fast scheduler/notification settings and move its clock.

No tests here: the schedule, notification and result tests import it. A webhook receiver
(``http.server`` in a thread) is here too.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import uvicorn

from agent.models import utcnow
from agent.server.app import create_app
from agent.server.db import migrate
from agent.server.notifications import NotificationConfig
from agent.server.scheduler import SchedulerConfig
from agent.server.settings import ServerSettings
from tests.support import AGENT, Server, base_env, free_port, wait_for

FAST_SCHEDULER = SchedulerConfig(
    tick_seconds=0.1,
    horizon=timedelta(hours=6),
    max_runs=20,
    late_after=timedelta(seconds=15),
    missed_after=timedelta(minutes=5),
)
FAST_NOTIFICATIONS = NotificationConfig(
    poll_seconds=0.05,
    max_attempts=4,
    backoff_seconds=0.05,
    backoff_max_seconds=0.2,
    timeout_seconds=5,
    offline_check_seconds=0.05,
)


class Clock:
    """The server's "now": real time plus an offset the test may move forward."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return utcnow() + self.offset


@contextlib.contextmanager
def thread_server(
    home: Path,
    scheduling: SchedulerConfig = FAST_SCHEDULER,
    notifying: NotificationConfig = FAST_NOTIFICATIONS,
    clock: Clock | None = None,
    webhook_allow_private: bool = False,
) -> Iterator[Server]:
    """The server app on a free port, served by uvicorn in a thread, as a ``tests.support``
    ``Server`` (its ``process`` is None: there is none), so ``cli`` and agents can use it.
    ``webhook_allow_private`` lets its webhooks reach a receiver on loopback."""
    home.mkdir(parents=True, exist_ok=True)
    migrate(home)
    port = free_port()
    app = create_app(
        ServerSettings(home=home, port=port, webhook_allow_private=webhook_allow_private),
        migrate_on_startup=False,
        scheduling=scheduling,
        notifying=notifying,
        clock=clock or Clock(),
    )
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"server-{port}", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=20, what="the in-thread server to start")
        url = f"http://127.0.0.1:{port}/api"
        env = base_env(home) | {"AGENT_API_URL": url}
        yield Server(url=url, home=home, process=cast(Any, None), env=env)
    finally:
        app.state.notifier.close()  # release held long polls so that shutdown is quick
        server.should_exit = True
        thread.join(15)
        assert not thread.is_alive(), "the in-thread server did not stop"


# --------------------------------------------------------------------------- webhooks


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A webhook endpoint on loopback that records what it gets and answers ``codes`` in turn
    (then 200)."""

    url: str
    codes: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bodies(self) -> list[Any]:
        with self.lock:
            return [r.json() for r in self.received]


@contextlib.contextmanager
def webhook_receiver(codes: list[int] | None = None) -> Iterator[Receiver]:
    port = free_port()
    receiver = Receiver(url=f"http://127.0.0.1:{port}/hook", codes=list(codes or []))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with receiver.lock:
                receiver.received.append(Received(self.path, dict(self.headers), body))
                code = receiver.codes.pop(0) if receiver.codes else 200
            self.send_response(code)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=httpd.serve_forever, name=f"webhook-{port}", daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


__all__ = ["AGENT", "Clock", "Receiver", "thread_server", "webhook_receiver"]
