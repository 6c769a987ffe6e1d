"""Who may talk to the server, and where it agrees to listen."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.support import AGENT, free_port, stop, wait_for

if TYPE_CHECKING:
    from tests.integration.conftest import ServerCommand
    from tests.support import Server

pytestmark = pytest.mark.integration


@pytest.fixture
def secured(secured_server: Server) -> Server:
    assert secured_server.api_key
    return secured_server


@pytest.fixture
def anonymous(secured: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=secured.url + "/", timeout=10) as client:
        yield client


def test_health_is_open(anonymous: httpx.Client) -> None:
    response = anonymous.get("health")
    assert response.status_code == 200
    assert response.json()["server"] == "flowagent"


# Fixed, not uuid4(): every pytest-xdist worker must collect the same test ids.
UNKNOWN = "6f1c2e0a-3b7d-4c55-9a1e-0d2b8c4f7a19"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "work_queues"),
        ("POST", "work_queues"),
        ("GET", f"work_queues/{UNKNOWN}"),
        ("POST", f"work_queues/{UNKNOWN}/claim"),
        ("GET", "deployments"),
        ("GET", "flow_runs"),
        ("POST", f"flow_runs/{UNKNOWN}/set_state"),
        ("POST", "agents/heartbeat"),
        ("GET", "agents"),
    ],
)
def test_every_other_route_needs_the_key(anonymous: httpx.Client, method: str, path: str) -> None:
    # The key is checked before the body: no hint about the API leaks to strangers.
    missing = anonymous.request(method, path, json={})
    assert missing.status_code == 401, missing.text
    assert "missing API key" in missing.json()["detail"]
    assert missing.headers["WWW-Authenticate"] == "Bearer"

    wrong = anonymous.request(
        method, path, json={}, headers={"Authorization": "Bearer not-the-key"}
    )
    assert wrong.status_code == 401, wrong.text
    assert "wrong API key" in wrong.json()["detail"]


def test_the_right_key_is_accepted(secured: Server) -> None:
    with secured.client() as client:
        name = f"q-{uuid.uuid4().hex}"
        created = client.post("work_queues", json={"name": name})
        assert created.status_code == 201, created.text
        assert name in [q["name"] for q in client.get("work_queues").json()]


def test_another_auth_scheme_is_not_a_key(secured: Server, anonymous: httpx.Client) -> None:
    response = anonymous.get("work_queues", auth=httpx.BasicAuth("user", secured.api_key or ""))
    assert response.status_code == 401


def test_without_a_key_the_server_refuses_to_listen_beyond_loopback(
    server_command: ServerCommand, tmp_path: Path
) -> None:
    result = server_command(tmp_path, "--host", "0.0.0.0", "--port", str(free_port()))
    assert result.returncode == 1
    assert "error: refusing to listen on 0.0.0.0 without an API key" in result.stderr
    assert "set AGENT_API_KEY or use --host 127.0.0.1" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "flowagent.db").exists()


def test_a_busy_port_is_a_clear_error(server_command: ServerCommand, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = server_command(tmp_path, "--port", str(port))
    assert result.returncode == 1
    assert f"error: port {port} is already in use on 127.0.0.1" in result.stderr
    assert "stop the other process or pass --port" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_server_announces_where_it_listens(tmp_path: Path) -> None:
    """One line on stdout, for the person who started it; its logs go to stderr."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
    process = subprocess.Popen(
        [AGENT, "server", "start", "--port", str(port)],
        env=env | {"AGENT_HOME": str(tmp_path), "AGENT_API_KEY": "k"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: port_open(port), timeout=20, what="the server to listen")
    finally:
        assert stop(process) in (0, -signal.SIGTERM)
    assert process.stdout is not None
    with process.stdout:
        printed = process.stdout.read().decode()
    assert printed == (
        f"flowagent server listening on http://127.0.0.1:{port} (API at /api, docs at /docs)\n"
    )


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_an_idle_connection_outlives_the_agents_heartbeat_interval(secured: Server) -> None:
    """The agent's client keeps an idle connection 5 s (httpx), its heartbeat interval: a
    server that closed it at 5 s too failed the beat sent on it as it closed (ReadError)."""
    url = httpx.URL(secured.url)
    request = f"GET /api/health HTTP/1.1\r\nHost: {url.host}\r\n\r\n".encode()
    with socket.create_connection((url.host, url.port), timeout=10) as connection:
        for pause in (6, 0):  # longer than the heartbeat interval and httpx's keep-alive
            connection.sendall(request)
            answer = b""
            while not answer.endswith(b"}"):  # the whole answer (its JSON body ends it)
                received = connection.recv(4096)
                assert received, f"the server closed the connection after {answer!r}"
                answer += received
            assert answer.startswith(b"HTTP/1.1 200"), answer
            time.sleep(pause)
