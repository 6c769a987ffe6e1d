"""A runner from another distribution: installed with pip, found through its entry point, used
by a real agent for a real run, listed by `agent runner ls`, and its options validated."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Server, cli, running_server, start_agent, stop, wait_for

pytestmark = pytest.mark.integration

PACKAGE = Path(__file__).parents[1] / "fixtures" / "thirdparty_runner"
DISTRIBUTION = "flowagent-echo-runner"
FLOWS = Path(__file__).parent / "flows"


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def echo_runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The fixture package installed into this environment for the module, then uninstalled."""
    # Built from a copy: pip builds in the source tree and would leave build/ and egg-info there.
    source = tmp_path_factory.mktemp("thirdparty") / "echo"
    shutil.copytree(PACKAGE, source)
    installed = pip("install", "--no-deps", str(source))
    assert installed.returncode == 0, installed.stdout + installed.stderr
    try:
        yield
    finally:
        removed = pip("uninstall", "--yes", DISTRIBUTION)
        assert removed.returncode == 0, removed.stdout + removed.stderr


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, echo_runner: None) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("thirdparty-server")) as srv:
        yield srv


def test_runner_ls_lists_the_plug_in_with_its_options(server: Server) -> None:
    listing = cli(server, "runner", "ls").stdout

    assert "echo" in listing
    assert DISTRIBUTION in listing
    assert "flowagent_echo:EchoRunner" in listing
    assert "prefix" in listing and "Put in front of every output line." in listing


def test_its_options_are_validated_at_deployment_create(server: Server) -> None:
    queue = f"q-{time.monotonic_ns()}"
    cli(server, "work-queue", "create", queue)

    refused = cli(
        server,
        "deployment", "create", "sample.py:add", "--name", f"d-{time.monotonic_ns()}",
        "--queue", queue, "--workdir", str(FLOWS), "--runner", "echo",
        "--runner-option", "prefx=>>",
        check=False,
    )  # fmt: skip

    assert refused.returncode == 1
    assert "unknown option 'prefx'" in refused.stderr
    assert "did you mean 'prefix'" in refused.stderr


def test_a_flow_runs_with_it_end_to_end(server: Server) -> None:
    queue = f"q-{time.monotonic_ns()}"
    queue_id = cli(server, "work-queue", "create", queue).stdout.strip()
    name = f"d-{time.monotonic_ns()}"
    cli(
        server,
        "deployment", "create", "sample.py:add", "--name", name, "--queue", queue,
        "--workdir", str(FLOWS), "--param", "a=1", "--param", "b=2",
        "--runner", "echo", "--runner-option", "prefix=>>",
    )  # fmt: skip
    agent = start_agent(server, queue_id, "--name", f"echo-agent-{time.monotonic_ns()}")
    try:
        with server.client() as api:
            deployment = api.get(f"deployments/name/{name}").json()
            run = api.post(f"deployments/{deployment['id']}/runs", json={}).json()

            def finished() -> dict[str, Any] | None:
                current = api.get(f"flow_runs/{run['id']}").json()
                terminal = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
                return current if current["state"]["type"] in terminal else None

            done = wait_for(finished, timeout=30, what="the echo runner's run to finish")
            assert done["state"]["type"] == "COMPLETED", done["state"]
            assert done["runner_info"]["result"] == 3
            lines = [line["line"] for line in api.get(f"flow_runs/{run['id']}/logs").json()]
            assert ">> adding 1 and 2" in lines
    finally:
        assert stop(agent) == 0
