"""The Docker image, built for real on the local base image (scripts/build-image.sh), running the
agent in a container against a server on the host: flows complete, the health check passes,
`docker stop` drains and exits 0, and the container runs as a non-root user.

CI starts dockerd and builds the base image (scripts/ci-setup.sh); without them this fails in CI
and skips elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.contract.dockerd import BASE_IMAGE, require_dockerd
from tests.support import Server, free_port, server_fixture, wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FLOWS = Path(__file__).parent / "flows"
IMAGE = "flowagent/agent:test"


def docker(
    *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {result.returncode}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def image() -> str:
    require_dockerd()
    env = os.environ | {
        "FLOWAGENT_IMAGE": IMAGE,
        "FLOWAGENT_BASE_IMAGE": BASE_IMAGE,
        "PYTHON": sys.executable,
    }
    build = subprocess.run(
        ["bash", str(REPO / "scripts/build-image.sh")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert build.returncode == 0, f"{build.stdout}\n{build.stderr}"
    assert "flowagent 0.1.0" in build.stdout
    return IMAGE


server = server_fixture("docker-image")


def post(api: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post(path, json=body)
    assert response.status_code in (200, 201), response.text
    return dict(response.json())


def test_image_runs_as_a_non_root_user(image: str) -> None:
    uid = docker("run", "--rm", "--entrypoint", "id", image, "-u").stdout.strip()
    assert uid != "0"
    config = docker("image", "inspect", image, "--format", "{{json .Config.Healthcheck.Test}}")
    assert "agent.health" in config.stdout


def test_agent_in_a_container_runs_flows_and_drains_on_docker_stop(
    image: str, server: Server
) -> None:
    api = server.client()
    queue = post(api, "work_queues", {"name": f"q-{uuid.uuid4().hex[:8]}"})
    python_flow = post(
        api,
        "deployments",
        {
            "name": f"d-{uuid.uuid4().hex[:8]}",
            "work_queue_id": queue["id"],
            "entrypoint": "sample.py:add",
            "parameters": {"a": 20, "b": 22},
            "working_dir": "/flows",
        },
    )
    command_flow = post(
        api,
        "deployments",
        {
            "name": f"d-{uuid.uuid4().hex[:8]}",
            "work_queue_id": queue["id"],
            # Still running when `docker stop` comes: the drain must let it finish.
            "command": ["sh", "-c", "echo ran as $(id -un); sleep 3; echo done"],
        },
    )
    health_port = free_port()
    name = f"flowagent-e2e-{uuid.uuid4().hex[:8]}"
    docker(
        "run",
        "--detach",
        "--init",
        "--name",
        name,
        # The server listens on the host's loopback.
        "--network",
        "host",
        "--env",
        f"AGENT_API_URL={server.url}",
        "--env",
        f"AGENT_HEALTH_PORT={health_port}",
        "--env",
        "AGENT_HEALTH_HOST=127.0.0.1",
        "--health-interval",
        "1s",
        "--health-start-period",
        "30s",
        "--volume",
        f"{FLOWS}:/flows:ro",
        image,
        "start",
        queue["id"],
        "--name",
        name,
    )
    try:
        run = post(api, f"deployments/{python_flow['id']}/runs", {})

        def finished(run_id: str) -> dict[str, Any] | None:
            found = dict(api.get(f"flow_runs/{run_id}").json())
            return found if found["state"]["type"] in {"COMPLETED", "FAILED", "CRASHED"} else None

        done = wait_for(lambda: finished(run["id"]), timeout=60, what="the run in the container")
        assert done["state"]["type"] == "COMPLETED", done["state"]
        assert done["runner_info"]["result"] == 42
        assert "adding 20 and 22" in [
            line["line"] for line in api.get(f"flow_runs/{run['id']}/logs").json()
        ]
        wait_for(
            lambda: (
                docker("inspect", name, "--format", "{{.State.Health.Status}}").stdout.strip()
                == "healthy"
            ),
            timeout=30,
            what="the container's HEALTHCHECK to pass",
        )

        slow = post(api, f"deployments/{command_flow['id']}/runs", {})
        wait_for(
            lambda: api.get(f"flow_runs/{slow['id']}").json()["state"]["type"] == "RUNNING",
            what="the slow run to start",
        )
        started = time.monotonic()
        docker("stop", "--time", "30", name, timeout=60)
        assert time.monotonic() - started < 25, "SIGTERM reached the agent, which drained"

        state = docker("inspect", name, "--format", "{{.State.ExitCode}}").stdout.strip()
        assert state == "0", docker("logs", name, check=False).stderr[-3000:]
        slow_done = api.get(f"flow_runs/{slow['id']}").json()
        assert slow_done["state"]["type"] == "COMPLETED", slow_done["state"]
        lines = [line["line"] for line in api.get(f"flow_runs/{slow['id']}/logs").json()]
        assert lines[:2] == ["ran as flowagent", "done"]
        logs = docker("logs", name).stderr
        assert '"event": "agent_stopping"' in logs
        assert '"event": "agent_stopped"' in logs
    finally:
        docker("rm", "--force", name, check=False)
        api.close()


def test_compose_file_has_a_server_and_two_agents() -> None:
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    services = compose["services"]

    assert set(services) == {"server", "agent", "docker-agent"}
    assert services["server"]["command"][:2] == ["server", "start"]
    for agent in ("agent", "docker-agent"):
        assert services[agent]["command"][0] == "start"
        assert services[agent]["environment"]["AGENT_API_URL"] == "http://server:4200/api"
        assert services[agent]["init"] is True
        assert services[agent]["depends_on"]["server"]["condition"] == "service_healthy"
    assert "/var/run/docker.sock:/var/run/docker.sock" in services["docker-agent"]["volumes"]
    assert not any("docker.sock" in v for v in services["agent"]["volumes"])
