"""Retry (the same run as its next attempt) and rerun (a new run linked to the old one), for
real: server and agent processes, the `agent` CLI, flows that leave a marker per execution."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    Server,
    cli,
    get_run,
    make_deployment,
    make_queue,
    make_run,
    server_fixture,
    start_agent,
    stop,
    wait_state,
)

pytestmark = pytest.mark.integration


server = server_fixture("retry")


@pytest.fixture
def agent_on(server: Server) -> Iterator[Any]:
    started: list[subprocess.Popen[bytes]] = []

    def start(queue: dict[str, Any]) -> subprocess.Popen[bytes]:
        started.append(start_agent(server, queue["id"], "--name", f"a-{time.monotonic_ns()}"))
        return started[-1]

    yield start
    for process in started:
        assert stop(process) == 0, f"agent exited {process.returncode}"


def executions(marker_dir: Path) -> list[dict[str, Any]]:
    return sorted(
        (json.loads(path.read_text()) for path in marker_dir.glob("*.json")),
        key=lambda mark: mark["attempt"],
    )


def history(api: httpx.Client, run_id: str) -> list[str]:
    return [state["type"] for state in api.get(f"flow_runs/{run_id}/states").json()]


def test_retry_runs_a_failed_run_again_as_its_next_attempt(
    server: Server, api: httpx.Client, agent_on: Any, tmp_path: Path
) -> None:
    queue = make_queue(api)
    deployment = make_deployment(
        api, queue, entrypoint="sample.py:fail_first", parameters={"marker_dir": str(tmp_path)}
    )
    agent_on(queue)
    run = make_run(api, deployment)
    assert wait_state(api, run["id"])["state"]["type"] == "FAILED"
    assert [m["attempt"] for m in executions(tmp_path)] == [1]

    answer = cli(server, "flow-run", "retry", run["id"])
    assert "attempt 2" in answer.stdout, answer.stdout

    done = wait_state(api, run["id"])
    assert done["state"]["type"] == "COMPLETED", done["state"]
    assert done["id"] == run["id"] and done["attempt"] == 2
    assert done["runner_info"]["result"] == 2
    marks = executions(tmp_path)
    assert [m["attempt"] for m in marks] == [1, 2], marks  # each attempt ran once, no more
    assert {m["run"] for m in marks} == {run["id"]}
    assert history(api, run["id"]) == [
        *("SCHEDULED", "PENDING", "RUNNING", "FAILED"),
        *("SCHEDULED", "PENDING", "RUNNING", "COMPLETED"),
    ]
    # The attempt that ended is fenced off: a late report about it cannot move the run.
    stale = api.post(f"flow_runs/{run['id']}/set_state", json={"type": "FAILED", "attempt": 1})
    assert stale.status_code == 409 and "stale report" in stale.json()["detail"]

    # COMPLETED: nothing to retry; the CLI says why and fails.
    refused = cli(server, "flow-run", "retry", run["id"], check=False)
    assert refused.returncode != 0
    assert "COMPLETED" in refused.stderr and "rerun" in refused.stderr, refused.stderr
    again = api.post(f"flow_runs/{run['id']}/retry")
    assert again.status_code == 409 and "COMPLETED" in again.json()["detail"]
    assert get_run(api, run["id"])["attempt"] == 2
    assert len(executions(tmp_path)) == 2


def test_retry_refuses_an_active_run_and_takes_a_cancelled_one(api: httpx.Client) -> None:
    queue = make_queue(api)  # no agent: the run stays SCHEDULED
    run = make_run(api, make_deployment(api, queue, command=["true"]))

    refused = api.post(f"flow_runs/{run['id']}/retry")
    assert refused.status_code == 409
    assert "still SCHEDULED" in refused.json()["detail"]

    assert api.post(f"flow_runs/{run['id']}/cancel").json()["state"]["type"] == "CANCELLED"
    retried = api.post(f"flow_runs/{run['id']}/retry")
    assert retried.status_code == 200, retried.text
    body = retried.json()
    assert body["attempt"] == 2 and body["agent_id"] is None
    assert body["state"]["type"] == "SCHEDULED" and body["state"]["name"] == "AwaitingRetry"
    assert history(api, run["id"]) == ["SCHEDULED", "CANCELLED", "SCHEDULED"]
    # Asked twice (say, a double click): the second is refused, not a third attempt.
    twice = api.post(f"flow_runs/{run['id']}/retry")
    assert twice.status_code == 409 and get_run(api, run["id"])["attempt"] == 2
    assert api.post(f"flow_runs/{'0' * 8}-0000-0000-0000-{'0' * 12}/retry").status_code == 404


def test_rerun_makes_a_new_linked_run_with_parameters_overridden(
    server: Server, api: httpx.Client, agent_on: Any
) -> None:
    queue = make_queue(api)
    deployment = make_deployment(
        api, queue, entrypoint="sample.py:add", parameters={"a": 1, "b": 2}, tags=["etl"]
    )
    agent_on(queue)
    original = make_run(api, deployment, parameters={"b": 40}, tags=["nightly"])
    assert wait_state(api, original["id"])["runner_info"]["result"] == 41

    answer = cli(server, "flow-run", "rerun", original["id"], "--param", "a=10")
    new_id = answer.stdout.strip()
    assert new_id and new_id != original["id"]

    rerun = wait_state(api, new_id)
    assert rerun["state"]["type"] == "COMPLETED", rerun["state"]
    # The old run's parameters (b=40 was given to that run, not the deployment), a overridden.
    assert rerun["parameters"] == {"a": 10, "b": 40}
    assert rerun["runner_info"]["result"] == 50
    assert rerun["rerun_of"] == original["id"]
    assert rerun["deployment_id"] == deployment["id"] and rerun["attempt"] == 1
    assert sorted(rerun["tags"]) == ["etl", "nightly"]
    inspected = json.loads(cli(server, "flow-run", "inspect", new_id).stdout)
    assert inspected["rerun_of"] == original["id"]
    # The original is untouched.
    after = get_run(api, original["id"])
    assert after["attempt"] == 1 and after["runner_info"]["result"] == 41
    assert after["rerun_of"] is None

    # A rerun with nothing overridden repeats the parameters exactly.
    same = api.post(f"flow_runs/{original['id']}/rerun")
    assert same.status_code == 201 and same.json()["parameters"] == {"a": 1, "b": 40}


def test_rerun_of_a_run_whose_deployment_is_gone_is_a_404(api: httpx.Client) -> None:
    queue = make_queue(api)
    deployment = make_deployment(api, queue, command=["true"])
    run = make_run(api, deployment)
    api.post(f"flow_runs/{run['id']}/cancel")
    assert api.delete(f"deployments/{deployment['id']}").status_code == 204
    gone = api.post(f"flow_runs/{run['id']}/rerun", json={"parameters": {}})
    assert gone.status_code == 404 and "deployment" in gone.json()["detail"]
    assert api.post(f"flow_runs/{run['id']}/retry").status_code == 404
