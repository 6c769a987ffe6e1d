"""The fixtures of the integration tests: one real embedded server per session (and one with an
API key), a client of it, and more servers when a test needs them.

Tests share the session's server and isolate themselves by creating their own queues (every
name is unique), so most of the suite pays for one start-up. A module that needs a server of
its own settings declares ``server = server_fixture("label", {...})`` (tests/support.py); the
``api`` fixture below then talks to that one. The server's own API modules run on SQLite and
again on PostgreSQL (``each_database=True``, ``shared_server_on_each_database()``): a query
PostgreSQL refuses must fail in every CI run, not only when someone asks for it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.postgres import (  # noqa: F401 (fixtures)
    PostgresCluster,
    postgres_cluster,
    postgres_url,
)
from tests.support import Api, Server, running_server


def server_env(home: Path, api_key: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
    env["AGENT_HOME"] = str(home)
    if api_key is not None:
        env["AGENT_API_KEY"] = api_key
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


ServerFactory = Callable[..., Server]
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
) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("server")
    with running_server(home, database_url=shared_database(request)) as srv:
        yield srv
    srv.assert_stopped_cleanly()


@pytest.fixture(scope="session")
def postgres_server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Server]:
    """The shared server's twin on a PostgreSQL database, for the modules whose tests run on
    each database (``shared_server_on_each_database`` in tests/support.py)."""
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    home = tmp_path_factory.mktemp("server-postgres")
    with running_server(home, database_url=cluster.new_database()) as srv:
        yield srv
    srv.assert_stopped_cleanly()


@pytest.fixture(scope="session")
def secured_server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Server]:
    """A second shared server, started with an API key."""
    home = tmp_path_factory.mktemp("secured")
    database_url = shared_database(request)
    with running_server(home, api_key="s3cret-key-for-tests", database_url=database_url) as srv:
        yield srv
    srv.assert_stopped_cleanly()


@pytest.fixture
def api(server: Server) -> Iterator[Api]:
    """A client of the test's server: the session's, or the module's own (server_fixture)."""
    with server.client() as client:
        yield client


@pytest.fixture
def server_factory() -> Iterator[ServerFactory]:
    """Start more servers (on a given home, maybe with an API key); all stop after the test."""
    with contextlib.ExitStack() as stack:
        started: list[Server] = []

        def start(
            home: Path, *, api_key: str | None = None, database_url: str | None = None
        ) -> Server:
            server = running_server(home, api_key=api_key, database_url=database_url)
            started.append(stack.enter_context(server))
            return started[-1]

        yield start
    for srv in started:
        srv.assert_stopped_cleanly()


@pytest.fixture
def server_command() -> ServerCommand:
    """Run ``python -m agent.server ARGS`` to completion, for the ways it refuses to start."""
    return run_server_command
