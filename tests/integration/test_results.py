"""A flow's return value, end to end: real server, real agent, real flow processes."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.server.lifecycle import MAX_RESULT_BYTES
from tests.support import (
    Server,
    cli,
    make_deployment,
    make_queue,
    make_run,
    server_fixture,
    start_agent,
    stop,
    wait_state,
)

pytestmark = pytest.mark.integration

FLOWS = """
import datetime


def answer():
    return {"answer": 42, "items": [1, 2, 3], "text": "naïve ✓"}


def opaque():
    return datetime.datetime  # a class: no JSON for that


def huge():
    return "x" * 200_000


def nested_huge():
    return {"rows": [{"i": i, "pad": "y" * 100} for i in range(5_000)]}


def nothing():
    print("no return value")
"""


server = server_fixture("results")


@pytest.fixture(scope="module")
def flows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("flows")
    (directory / "results_flows.py").write_text(FLOWS)
    return directory


@pytest.fixture(scope="module")
def queue(server: Server) -> Iterator[dict[str, Any]]:
    """One queue with one agent for the whole module (runs are independent)."""
    with server.client() as api:
        made = make_queue(api)
    agent: subprocess.Popen[bytes] = start_agent(
        server, made["id"], "--name", f"results-{time.monotonic_ns()}"
    )
    yield made
    assert stop(agent) == 0


def run_flow(
    server: Server, queue: dict[str, Any], flows: Path, name: str, runner: str = "subprocess"
) -> dict[str, Any]:
    with server.client() as api:
        deployment = make_deployment(
            api,
            queue,
            entrypoint=f"results_flows.py:{name}",
            working_dir=str(flows),
            runner=runner,
        )
        run = make_run(api, deployment)
        done = wait_state(api, run["id"], timeout=60)
    assert done["state"]["type"] == "COMPLETED", done["state"]
    return done


def inspect(server: Server, run: dict[str, Any]) -> dict[str, Any]:
    shown = json.loads(cli(server, "flow-run", "inspect", run["id"]).stdout)
    assert isinstance(shown, dict)
    return shown


@pytest.mark.parametrize("runner", ["subprocess", "inprocess"])
def test_a_json_result_is_stored_and_shown(
    server: Server, queue: dict[str, Any], flows: Path, runner: str
) -> None:
    done = run_flow(server, queue, flows, "answer", runner)
    expected = {"answer": 42, "items": [1, 2, 3], "text": "naïve ✓"}
    assert done["runner_info"]["result"] == expected
    assert "result_note" not in done["runner_info"]
    shown = inspect(server, done)
    assert shown["result"] == expected
    assert "result_note" not in shown


def test_a_value_that_is_not_json_is_stored_as_its_repr(
    server: Server, queue: dict[str, Any], flows: Path
) -> None:
    done = run_flow(server, queue, flows, "opaque")
    assert done["runner_info"]["result"] == "<class 'datetime.datetime'>"
    assert done["runner_info"]["result_note"] == "not JSON-serialisable: this is its repr"
    shown = inspect(server, done)
    assert shown["result"] == "<class 'datetime.datetime'>"
    assert shown["result_note"].startswith("not JSON-serialisable")


@pytest.mark.parametrize(("flow", "size"), [("huge", 200_002), ("nested_huge", None)])
def test_a_large_result_is_truncated_with_a_marker(
    server: Server, queue: dict[str, Any], flows: Path, flow: str, size: int | None
) -> None:
    done = run_flow(server, queue, flows, flow)
    result = done["runner_info"]["result"]
    note = done["runner_info"]["result_note"]
    assert isinstance(result, str)
    assert note.startswith("truncated: the result is ")
    assert note.endswith(f"the first {MAX_RESULT_BYTES} are kept")
    if size is not None:
        assert f"the result is {size} bytes as JSON" in note
    assert result.endswith(f"…[{note}]")
    assert len(result.encode()) < MAX_RESULT_BYTES + 200
    assert inspect(server, done)["result_note"] == note


def test_no_return_value_no_result(server: Server, queue: dict[str, Any], flows: Path) -> None:
    done = run_flow(server, queue, flows, "nothing")
    assert "result" not in done["runner_info"]
    assert "result" not in inspect(server, done)


def test_a_truncated_result_comes_through_the_api_too(server: Server) -> None:
    """What an agent reports is kept the same way, whoever reports it."""
    with server.client() as api:
        queue = make_queue(api)
        deployment = make_deployment(api, queue, command=["true"])
        run = make_run(api, deployment)
        for state in ("PENDING", "RUNNING"):
            api.post(f"flow_runs/{run['id']}/set_state", json={"type": state})
        response = api.post(
            f"flow_runs/{run['id']}/set_state",
            json={"type": "COMPLETED", "runner_info": {"result": list(range(50_000))}},
        )
        assert response.status_code == 200
        stored = httpx.get(f"{server.url}/flow_runs/{run['id']}").json()
    assert stored["runner_info"]["result"].startswith("[0, 1, 2, 3")
    assert "truncated" in stored["runner_info"]["result_note"]
