"""The in-process runner inside a real agent: output per run, timeouts and cancellation that
never block the agent, and the agent's own log untouched by its flows."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import Server, server_fixture, start_agent, stop, wait_for

pytestmark = pytest.mark.integration

FLOWS = Path(__file__).parents[1] / "contract" / "flows"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


server = server_fixture("inprocess-e2e")


class Agent:
    def __init__(self, server: Server, api: httpx.Client, log: Path, *args: str) -> None:
        response = api.post("work_queues", json={"name": f"q-{time.monotonic_ns()}"})
        assert response.status_code == 201, response.text
        self.api = api
        self.queue = dict(response.json())
        self.log = log
        self.process = start_agent(
            server,
            self.queue["id"],
            "--name",
            f"inprocess-{time.monotonic_ns()}",
            *args,
            log_path=log,
            AGENT_CANCEL_GRACE_SECONDS="1",
        )

    def run(self, entrypoint: str, **fields: Any) -> str:
        body = {
            "name": f"d-{time.monotonic_ns()}",
            "work_queue_id": self.queue["id"],
            "working_dir": str(FLOWS),
            "entrypoint": f"contract_flows.py:{entrypoint}",
            "runner": "inprocess",
            **fields,
        }
        deployment = self.api.post("deployments", json=body)
        assert deployment.status_code == 201, deployment.text
        run = self.api.post(f"deployments/{deployment.json()['id']}/runs", json={})
        assert run.status_code == 201, run.text
        return str(run.json()["id"])

    def state(self, run_id: str, states: set[str] = TERMINAL) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            current = dict(self.api.get(f"flow_runs/{run_id}").json())
            return current if current["state"]["type"] in states else None

        return wait_for(reached, timeout=30, what=f"run {run_id} to reach {sorted(states)}")

    def logs(self, run_id: str) -> list[str]:
        return [line["line"] for line in self.api.get(f"flow_runs/{run_id}/logs").json()]


@pytest.fixture
def agent(server: Server, api: httpx.Client, tmp_path: Path) -> Iterator[Any]:
    started: list[Agent] = []

    def start(*args: str) -> Agent:
        started.append(Agent(server, api, tmp_path / f"agent-{len(started)}.log", *args))
        return started[-1]

    yield start
    for each in started:
        began = time.monotonic()
        assert stop(each.process) == 0
        assert time.monotonic() - began < 5, "a flow's thread must not hold up the agent's exit"


def test_flows_run_with_their_own_output_and_results(agent: Any) -> None:
    on = agent("--limit", "3")
    runs = {
        "sync": on.run("chatty", parameters={"name": "sync", "lines": 20}),
        "async": on.run("add_async", parameters={"a": 20, "b": 22}),
        "logging": on.run("log_records", parameters={"name": "logger"}),
    }

    done = {name: on.state(run_id) for name, run_id in runs.items()}

    assert {d["state"]["type"] for d in done.values()} == {"COMPLETED"}, done
    assert done["async"]["runner_info"]["result"] == 42
    assert done["async"]["runner_info"]["in_process"] is True
    sync_lines = on.logs(runs["sync"])
    assert [line for line in sync_lines if " out " in line] == [f"sync out {i}" for i in range(20)]
    assert all(line.startswith("sync ") for line in sync_lines), sync_lines
    assert on.logs(runs["async"]) == ["async adding 20 and 22"]
    assert on.logs(runs["logging"]) == ["logger warns"]
    agent_log = on.log.read_text()
    assert "sync out" not in agent_log and "logger warns" not in agent_log


def test_a_flow_may_configure_logging_and_its_records_stay_its_own(agent: Any) -> None:
    on = agent()
    configures = on.run("configure_logging", parameters={"name": "first"})
    assert on.state(configures)["state"]["type"] == "COMPLETED"
    later = on.run("log_records", parameters={"name": "second"})
    assert on.state(later)["state"]["type"] == "COMPLETED"

    # basicConfig() worked (INFO, its format), and nothing arrives twice.
    assert on.logs(configures) == ["INFO flows.first: first informs"]
    assert on.logs(later) == [
        "INFO flows.second: not shown: below the default level",
        "WARNING flows.second: second warns",
    ]


def test_a_sync_flow_past_its_timeout_frees_its_slot(agent: Any) -> None:
    on = agent("--limit", "1")
    stuck = on.run("ignore_sigterm", parameters={"seconds": 20}, timeout_seconds=0.5)
    after = on.run("add", parameters={"a": 1, "b": 1})

    timed_out = on.state(stuck)
    began = time.monotonic()
    next_one = on.state(after)

    assert timed_out["state"]["type"] == "FAILED"
    assert timed_out["state"]["message"] == "timed out after 0.5s"
    # The slot was freed at once, not when the thread finally returned 20 s in.
    assert next_one["state"]["type"] == "COMPLETED"
    assert time.monotonic() - began < 10
    assert "inprocess_run_abandoned" in on.log.read_text()


def test_cancelling_an_async_flow_cancels_its_task(agent: Any, api: httpx.Client) -> None:
    on = agent()
    run_id = on.run("cancellable")
    on.state(run_id, {"RUNNING"})
    wait_for(lambda: "sleeping" in on.logs(run_id), what="the flow to be sleeping")

    assert api.post(f"flow_runs/{run_id}/cancel").status_code == 200
    done = on.state(run_id)

    assert done["state"]["type"] == "CANCELLED"
    assert on.logs(run_id)[-1] == "cleaning up"


def test_commands_are_refused_with_the_reason(agent: Any, api: httpx.Client) -> None:
    on = agent()
    body = {
        "name": f"d-{time.monotonic_ns()}",
        "work_queue_id": on.queue["id"],
        "command": ["echo", "hi"],
        "runner": "inprocess",
    }
    deployment = api.post("deployments", json=body).json()
    run_id = api.post(f"deployments/{deployment['id']}/runs", json={}).json()["id"]

    done = on.state(run_id)

    assert done["state"]["type"] == "FAILED"
    assert done["state"]["message"] == (
        "the in-process runner runs Python entrypoints only, not commands"
    )
