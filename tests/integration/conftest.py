"""The embedded server as a real process on a free loopback port, and helpers to drive its API.

Tests share one server per session and isolate themselves by creating their own queues (every
name is unique), so the whole server suite pays for one startup. Test modules use the fixtures
below; they import the helper classes only for type checking, since a conftest is not a module
to import at run time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.postgres import (  # noqa: F401 (fixtures)
    PostgresCluster,
    postgres_cluster,
    postgres_url,
)
from tests.support import free_port, stop, wait_for


@dataclass
class ServerProcess:
    """A running ``python -m agent.server``."""

    url: str  # http://127.0.0.1:PORT, without /api
    home: Path
    process: subprocess.Popen[bytes]
    stderr_path: Path
    api_key: str | None = None
    database_url: str | None = None  # None: SQLite in home

    def client(self, api_key: str | None = None, timeout: float = 30) -> httpx.Client:
        key = api_key if api_key is not None else self.api_key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url + "/api/", headers=headers, timeout=timeout)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def server_env(
    home: Path, api_key: str | None = None, database_url: str | None = None
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
    env["AGENT_HOME"] = str(home)
    if api_key is not None:
        env["AGENT_API_KEY"] = api_key
    if database_url is not None:
        env["AGENT_DATABASE_URL"] = database_url
    return env


def run_server_command(
    home: Path, *args: str, api_key: str | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.server", *args],
        env=server_env(home, api_key),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_server(
    home: Path, *, api_key: str | None = None, database_url: str | None = None
) -> ServerProcess:
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    stderr_path = home / f"server-{port}.stderr"
    with stderr_path.open("wb") as err, (home / f"server-{port}.stdout").open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "agent.server", "--port", str(port)],
            env=server_env(home, api_key, database_url),
            stdout=out,
            stderr=err,
        )
    server = ServerProcess(
        f"http://127.0.0.1:{port}", home, process, stderr_path, api_key, database_url
    )

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(
                f"the server exited with {process.returncode} before answering:\n{server.stderr()}"
            )
        try:
            return httpx.get(f"{server.url}/api/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, timeout=20, what=f"GET {server.url}/api/health")
    except AssertionError:
        stop(process)
        raise
    return server


def stop_server(server: ServerProcess) -> None:
    """SIGTERM, and check that it went down on its own (uvicorn re-raises the signal)."""
    code = stop(server.process, timeout=10)
    assert code in (0, -15), f"server exited with {code}:\n{server.stderr()}"
    assert "Traceback" not in server.stderr(), server.stderr()


ServerFactory = Callable[..., ServerProcess]
ServerCommand = Callable[..., subprocess.CompletedProcess[str]]


def shared_database(request: pytest.FixtureRequest) -> str | None:
    """``FLOWAGENT_TEST_DATABASE=postgres``: the shared servers run on a PostgreSQL database of
    the session's cluster (the server tests, again, on the other database); else SQLite."""
    if os.environ.get("FLOWAGENT_TEST_DATABASE", "sqlite") != "postgres":
        return None
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    return cluster.new_database()


@pytest.fixture(scope="session")
def server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path_factory.mktemp("server"), database_url=shared_database(request))
    try:
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture(scope="session")
def secured_server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ServerProcess]:
    """A second shared server, started with an API key."""
    srv = start_server(
        tmp_path_factory.mktemp("secured"),
        api_key="s3cret-key-for-tests",
        database_url=shared_database(request),
    )
    try:
        yield srv
    finally:
        stop_server(srv)


@dataclass
class Api:
    """Thin helpers over one httpx client; they assert the status so tests read as steps."""

    http: httpx.Client

    def queue(self, **fields: Any) -> dict[str, Any]:
        response = self.http.post("work_queues", json={"name": unique("q"), **fields})
        assert response.status_code == 201, response.text
        return dict(response.json())

    def deployment(self, queue: dict[str, Any], **fields: Any) -> dict[str, Any]:
        body = {"name": unique("d"), "work_queue_id": queue["id"], "command": ["true"], **fields}
        response = self.http.post("deployments", json=body)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def run(self, deployment: dict[str, Any], **fields: Any) -> dict[str, Any]:
        response = self.http.post(f"deployments/{deployment['id']}/runs", json=fields)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def agent(self, queue: dict[str, Any], **fields: Any) -> dict[str, Any]:
        body = {"name": unique("agent"), "work_queue_id": queue["id"], **fields}
        response = self.http.post("agents/heartbeat", json=body)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def get_run(self, run_id: str) -> dict[str, Any]:
        response = self.http.get(f"flow_runs/{run_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def claim(self, queue: dict[str, Any], agent: dict[str, Any], **fields: Any) -> list[Any]:
        body = {"agent_id": agent["id"], **fields}
        response = self.http.post(f"work_queues/{queue['id']}/claim", json=body)
        assert response.status_code == 200, response.text
        return list(response.json())

    def set_state(self, run_id: str, state: str, **fields: Any) -> httpx.Response:
        return self.http.post(f"flow_runs/{run_id}/set_state", json={"type": state, **fields})

    def move(self, run_id: str, *states: str) -> dict[str, Any]:
        """Walk a run through ``states``, each of which must be accepted."""
        run: dict[str, Any] = {}
        for state in states:
            response = self.set_state(run_id, state)
            assert response.status_code == 200, response.text
            run = dict(response.json())
        return run


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def api(server: ServerProcess) -> Iterator[Api]:
    with server.client() as client:
        yield Api(client)


@pytest.fixture
def server_factory() -> Iterator[ServerFactory]:
    """Start more servers (on a given home, maybe with an API key); all stop after the test."""
    started: list[ServerProcess] = []

    def start(
        home: Path, *, api_key: str | None = None, database_url: str | None = None
    ) -> ServerProcess:
        started.append(start_server(home, api_key=api_key, database_url=database_url))
        return started[-1]

    yield start
    for srv in started:
        stop_server(srv)


@pytest.fixture
def server_command() -> ServerCommand:
    """Run ``python -m agent.server ARGS`` to completion, for the ways it refuses to start."""
    return run_server_command
