"""Several real server replicas (``agent server start`` processes) on one PostgreSQL database,
each on its own loopback port and home, for the tests of a server that scales out."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.support import Server, running_server


@contextlib.contextmanager
def replicas(
    root: Path, database_url: str, count: int = 2, extra_env: dict[str, str] | None = None
) -> Iterator[list[Server]]:
    """``count`` replicas on ``database_url``; all stopped when the block ends."""
    env = {"AGENT_DATABASE_URL": database_url} | dict(extra_env or {})
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(running_server(root / f"replica-{i}", env)) for i in range(count)
        ]


def kill(server: Server) -> None:
    """SIGKILL a replica: no shutdown, no lock released but by the database noticing."""
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(timeout=10)


def client(server: Server, timeout: float = 30) -> httpx.Client:
    return httpx.Client(base_url=server.url + "/", timeout=timeout)
