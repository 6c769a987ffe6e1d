"""Servers for the conformance suite: one of each kind per session, started on first use.

* ``native``: our embedded server (`agent server start`).
* ``prefect3``: a real Prefect 3 server from ``.prefect-venv`` (`prefect server start`, its own
  PREFECT_HOME, UI and analytics off); ``prefect2``: the seed's Prefect 2.20.27 from
  ``.prefect2-venv``. ``bash scripts/prefect-setup.sh --with-2`` creates both venvs; a missing
  one fails the tests when ``CI`` is set and skips them otherwise.
* ``replicas``: our server as two replicas on one PostgreSQL (agents given both URLs, the
  scenario's requests sent to each in turn).
* ``*_auth``: the same servers with authentication on (our API key; Prefect's basic auth).

Scenarios take the ``server`` fixture and run once per kind.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conformance.harness import (
    Agents,
    Harness,
    NativeHarness,
    PrefectHarness,
    ReplicasHarness,
    prefect_server,
    venv_or_skip,
)
from tests.postgres import PostgresCluster, postgres_cluster  # noqa: F401 (a fixture)
from tests.support import running_server

KINDS = ["native", "replicas", "prefect3", "prefect2"]
AUTH_STRING = "flowagent:s3cret-pass"
API_KEY = "s3cret-key-for-conformance"
VENVS = {"prefect3": (".prefect-venv", ""), "prefect2": (".prefect2-venv", " --with-2")}


@pytest.fixture(scope="session")
def native_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    home = tmp_path_factory.mktemp("native")
    with running_server(home) as server:
        yield NativeHarness(kind="native", url=server.url, home=home)


@pytest.fixture(scope="session")
def replicas_harness(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Harness]:
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    home = tmp_path_factory.mktemp("replicas")
    database_url = cluster.new_database()
    with (
        running_server(home / "a", database_url=database_url) as a,
        running_server(home / "b", database_url=database_url) as b,
    ):
        yield ReplicasHarness(kind="native", url=a.url, home=home, urls=[a.url, b.url])


def _prefect(
    kind: str, tmp_path_factory: pytest.TempPathFactory, auth_string: str | None = None
) -> Iterator[Harness]:
    venv = venv_or_skip(*VENVS[kind])
    home = tmp_path_factory.mktemp(kind)
    storage = home / "results"
    storage.mkdir()
    with prefect_server(venv, home, auth_string=auth_string) as (url, _):
        yield PrefectHarness(
            kind=kind,
            url=url,
            home=home,
            venv=venv,
            storage=storage,
            auth_string=auth_string,
            auth=httpx.BasicAuth(*auth_string.split(":", 1)) if auth_string else None,
        )


@pytest.fixture(scope="session")
def prefect3_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    yield from _prefect("prefect3", tmp_path_factory)


@pytest.fixture(scope="session")
def prefect2_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    yield from _prefect("prefect2", tmp_path_factory)


@pytest.fixture(scope="session")
def native_auth_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    home = tmp_path_factory.mktemp("native-auth")
    with running_server(home, api_key=API_KEY) as server:
        yield NativeHarness(
            kind="native",
            url=server.url,
            home=home,
            headers={"Authorization": f"Bearer {API_KEY}"},
            api_key=API_KEY,
        )


@pytest.fixture(scope="session")
def prefect3_auth_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    yield from _prefect("prefect3", tmp_path_factory, auth_string=AUTH_STRING)


@pytest.fixture(params=KINDS)
def server(request: pytest.FixtureRequest) -> Harness:
    harness: Harness = request.getfixturevalue(f"{request.param}_harness")
    return harness


@pytest.fixture
def agents(server: Harness, tmp_path: Path) -> Iterator[Agents]:
    started = Agents(server, tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture(params=["prefect3", "prefect2"])
def prefect_harness(request: pytest.FixtureRequest) -> PrefectHarness:
    """Each real Prefect server in turn: for scenarios that only Prefect has."""
    harness: PrefectHarness = request.getfixturevalue(f"{request.param}_harness")
    return harness


@pytest.fixture
def prefect_agents(prefect_harness: PrefectHarness, tmp_path: Path) -> Iterator[Agents]:
    """Agents on ``prefect_harness``'s server, stopped (and checked to exit 0) at the end."""
    started = Agents(prefect_harness, tmp_path)
    try:
        yield started
    finally:
        started.stop_all()
