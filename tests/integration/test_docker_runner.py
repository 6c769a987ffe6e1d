"""The Docker runner through the whole path: a real server, a real agent, a real dockerd.

Runs use the local base image (scripts/build-base-image.sh), never a registry. Every test checks
that no container of ours is left behind, and the running one carries its labels.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.contract.dockerd import (
    BASE_IMAGE,
    RUN_LABEL,
    client,
    labelled,
    our_containers,
    require_dockerd,
)
from tests.support import Server, running_server, server_fixture, start_agent, stop, wait_for

pytestmark = pytest.mark.integration

FLOWS = Path(__file__).parents[1] / "contract" / "flows"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture(scope="module", autouse=True)
def dockerd() -> None:
    require_dockerd()


@pytest.fixture(autouse=True)
def no_containers_left() -> Iterator[None]:
    before = our_containers()
    yield
    try:
        wait_for(lambda: our_containers() == before, timeout=10, what="our containers removed")
    finally:  # a failed test must not leave them to the next one
        docker_client = client()
        for container_id in set(our_containers()) - set(before):
            docker_client.containers.get(container_id).remove(force=True)
        docker_client.close()


server = server_fixture("docker-e2e")


@pytest.fixture
def queue(api: httpx.Client, server: Server) -> Iterator[dict[str, Any]]:
    """A fresh queue with an agent on it (stopped, and required to exit 0, afterwards)."""
    response = api.post("work_queues", json={"name": f"q-{time.monotonic_ns()}"})
    assert response.status_code == 201, response.text
    queue = dict(response.json())
    agent = start_agent(
        server,
        queue["id"],
        "--name",
        f"docker-agent-{time.monotonic_ns()}",
        "--limit",
        "4",
        AGENT_CANCEL_GRACE_SECONDS="2",
        AGENT_DRAIN_TIMEOUT_SECONDS="2",  # a failed test must not leave a run holding it up
    )
    yield queue
    assert stop(agent) == 0


def deploy(api: httpx.Client, queue: dict[str, Any], **fields: Any) -> dict[str, Any]:
    body = {
        "name": f"d-{time.monotonic_ns()}",
        "work_queue_id": queue["id"],
        "working_dir": str(FLOWS),
        "runner": "docker",
        **fields,
    }
    response = api.post("deployments", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def run(api: httpx.Client, deployment: dict[str, Any]) -> str:
    response = api.post(f"deployments/{deployment['id']}/runs", json={})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def state_of(api: httpx.Client, run_id: str, states: set[str] = TERMINAL) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        current = dict(api.get(f"flow_runs/{run_id}").json())
        return current if current["state"]["type"] in states else None

    return wait_for(reached, timeout=60, what=f"run {run_id} to reach {sorted(states)}")


def logs(api: httpx.Client, run_id: str) -> list[str]:
    return [line["line"] for line in api.get(f"flow_runs/{run_id}/logs").json()]


def containers_of(run_id: str) -> list[Any]:
    docker_client = client()
    try:
        return labelled(docker_client, f"{RUN_LABEL}={run_id}")
    finally:
        docker_client.close()


def test_a_python_flow_completes_in_a_labelled_container_that_is_then_removed(
    api: httpx.Client, queue: dict[str, Any], tmp_path: Path
) -> None:
    marker = tmp_path / "go"
    deployment = deploy(
        api,
        queue,
        entrypoint="contract_flows.py:wait_for_marker",
        parameters={"marker": str(marker)},
        # The marker's directory is mounted in, so the test can let the flow go on.
        runner_options={"image": BASE_IMAGE, "volumes": [f"{tmp_path}:{tmp_path}:ro"]},
    )
    run_id = run(api, deployment)

    state_of(api, run_id, {"RUNNING"})
    wait_for(lambda: "waiting on stdout" in logs(api, run_id), what="the first line, streamed")
    [container] = containers_of(run_id)
    assert container.labels["flowagent.run-id"] == run_id
    assert container.labels["flowagent.deployment"] == deployment["name"]
    assert (
        container.labels["flowagent.agent-id"] == api.get(f"flow_runs/{run_id}").json()["agent_id"]
    )
    marker.touch()

    done = state_of(api, run_id)
    assert done["state"]["type"] == "COMPLETED", done["state"]
    assert done["runner_info"]["result"] == "done"
    assert done["runner_info"]["container_id"] == container.id
    assert logs(api, run_id)[-1] == "marker found"
    wait_for(lambda: containers_of(run_id) == [], what="the container to be removed")


def test_out_of_memory_crashes_the_run(api: httpx.Client, queue: dict[str, Any]) -> None:
    deployment = deploy(
        api,
        queue,
        entrypoint="contract_flows.py:hog_memory",
        runner_options={"image": BASE_IMAGE, "memory": "64m"},
    )
    run_id = run(api, deployment)

    done = state_of(api, run_id)

    assert done["state"]["type"] == "CRASHED", done["state"]
    assert done["state"]["message"].startswith("out of memory (limit 64m)")
    assert done["runner_info"]["exit_code"] == 137
    # Removed once the agent has recorded the outcome, a moment after the server has it.
    wait_for(lambda: containers_of(run_id) == [], what="the container to be removed")


def test_cancel_stops_and_removes_the_container(api: httpx.Client, queue: dict[str, Any]) -> None:
    deployment = deploy(
        api,
        queue,
        entrypoint="contract_flows.py:trap_sigterm",
        runner_options={"image": BASE_IMAGE},
    )
    run_id = run(api, deployment)
    state_of(api, run_id, {"RUNNING"})
    wait_for(lambda: "sleeping" in logs(api, run_id), what="the flow to be sleeping")
    assert len(containers_of(run_id)) == 1

    response = api.post(f"flow_runs/{run_id}/cancel")
    assert response.status_code == 200, response.text
    done = state_of(api, run_id)

    assert done["state"]["type"] == "CANCELLED", done["state"]
    assert "cleaning up" in logs(api, run_id)  # interrupt reached the flow inside the container
    wait_for(lambda: containers_of(run_id) == [], what="the container to be removed")


def test_a_missing_image_fails_the_run_and_says_what_to_do(
    api: httpx.Client, queue: dict[str, Any]
) -> None:
    deployment = deploy(
        api,
        queue,
        entrypoint="contract_flows.py:add",
        parameters={"a": 1, "b": 1},
        runner_options={"image": "flowagent/not-built:never"},
    )

    done = state_of(api, run(api, deployment))

    assert done["state"]["type"] == "FAILED"
    assert done["state"]["message"] == (
        "image 'flowagent/not-built:never' not found locally: build it or docker pull it"
    )


def test_an_unreachable_dockerd_fails_docker_runs_only(server: Server, api: httpx.Client) -> None:
    response = api.post("work_queues", json={"name": f"q-{time.monotonic_ns()}"})
    queue = dict(response.json())
    agent = start_agent(
        server, queue["id"], "--name", "no-docker", DOCKER_HOST="unix:///nonexistent/docker.sock"
    )
    try:
        docker_run = run(
            api,
            deploy(api, queue, entrypoint="contract_flows.py:add", parameters={"a": 1, "b": 2},
                   runner_options={"image": BASE_IMAGE}),
        )  # fmt: skip
        local_run = run(
            api,
            deploy(api, queue, entrypoint="contract_flows.py:add", parameters={"a": 1, "b": 2},
                   runner="subprocess"),
        )  # fmt: skip

        failed, completed = state_of(api, docker_run), state_of(api, local_run)
    finally:
        assert stop(agent) == 0

    assert failed["state"]["type"] == "FAILED"
    assert failed["state"]["message"].startswith(
        "cannot reach the Docker daemon (unix:///nonexistent/docker.sock: "
    )
    assert failed["state"]["message"].endswith("is dockerd running? is DOCKER_HOST right?")
    assert completed["state"]["type"] == "COMPLETED"
    assert completed["runner_info"]["result"] == {"sum": 3}


def test_the_fence_kills_a_dead_agents_container(tmp_path: Path) -> None:
    lease = 2.0
    env = {"AGENT_LEASE_SECONDS": str(lease)}
    with running_server(tmp_path / "home", env) as server, server.client() as api:
        queue = api.post("work_queues", json={"name": "fenced"}).json()
        agent = start_agent(
            server, queue["id"], "--name", "doomed-docker", AGENT_HEARTBEAT_SECONDS="0.3"
        )
        deployment = deploy(
            api,
            queue,
            entrypoint="contract_flows.py:ignore_sigterm",
            runner_options={"image": BASE_IMAGE},
        )
        run_id = run(api, deployment)
        state_of(api, run_id, {"RUNNING"})
        wait_for(lambda: "sleeping" in logs(api, run_id), what="the flow to be sleeping")

        agent.kill()  # SIGKILL: nothing of the agent is left to stop the container
        agent.wait()

        def stopped() -> bool:
            return all(c.status != "running" for c in containers_of(run_id))

        wait_for(stopped, timeout=lease + 3, what="the fence to kill the container")
        crashed = state_of(api, run_id)
        assert crashed["state"]["type"] == "CRASHED"
    # Its run asked for it to be removed (auto_remove, the default), and no agent will now: the
    # fence removes it after the kill.
    wait_for(lambda: containers_of(run_id) == [], what="the fence to remove the container")
