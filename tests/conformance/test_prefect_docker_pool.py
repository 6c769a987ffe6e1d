"""A Prefect ``docker`` pool's runs execute in the pool's image (issue 13, 4).

Prefect's Docker worker starts each run's engine in a container of the pool's ``image``, with
the job variables' ``env``, ``volumes``, ``mem_limit``, ``auto_remove``… The agent does the
same on its Docker runner. Against real Prefect 3 and 2.20.27 servers, a real dockerd and the
base image (no registry: the image's Python runs the server's Prefect venv, mounted read-only,
as the pool's ``command`` says).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conformance.harness import TERMINAL, Agents, PrefectHarness, Queue, unique
from tests.contract.dockerd import BASE_IMAGE, RUN_LABEL, client, labelled, require_dockerd
from tests.support import wait_for

pytestmark = pytest.mark.integration

FLOW = """\
import json
import os
from pathlib import Path

from prefect import flow


@flow
def where(out: str) -> str:
    seen = {
        "pid1": Path("/proc/1/cmdline").read_bytes().split(b"\\0")[0].decode(),
        "cwd": os.getcwd(),
        "env": {n: os.environ.get(n) for n in ("POOL", "DEPLOYMENT", "RUN")},
    }
    Path(out, os.environ["PREFECT__FLOW_RUN_ID"]).write_text(json.dumps(seen))
    return "here"


@flow
def hog(out: str) -> None:
    Path(out, "hog-started").write_text("")
    held = []
    for _ in range(200):
        held.append(bytearray(b"x") * (32 * 1024 * 1024))  # written, so really resident
"""


def docker_pool(prefect: PrefectHarness, volumes: list[str]) -> str:
    """A pool as `prefect work-pool create --type docker` makes it (prefect-docker's template,
    the variables the agent maps), with defaults for this machine."""
    venv = prefect.venv.resolve()
    python = Path(os.path.realpath(venv / "bin" / "python"))
    runtime = python.parent.parent  # the interpreter the venv was made from
    names = ("command", "env", "image", "image_pull_policy", "networks", "network_mode")
    names += ("auto_remove", "volumes", "mem_limit", "privileged", "labels", "name")
    template = {
        "job_configuration": {name: "{{ " + name + " }}" for name in names},
        "variables": {
            "type": "object",
            "properties": {
                "image": {"type": "string", "default": BASE_IMAGE},
                "image_pull_policy": {"type": "string", "default": "Never"},
                "command": {"type": "string", "default": f"{venv}/bin/python -m prefect.engine"},
                "env": {"type": "object", "default": {"POOL": "pool"}},
                "auto_remove": {"type": "boolean", "default": True},
                "volumes": {
                    "type": "array",
                    "default": [f"{runtime}:{runtime}:ro", f"{venv}:{venv}:ro", *volumes],
                },
                "networks": {"type": "array", "default": []},
                "mem_limit": {"type": "string"},
                "network_mode": {"type": "string"},
                "privileged": {"type": "boolean", "default": False},
                "labels": {"type": "object"},
                "name": {"type": "string"},
            },
        },
    }
    name = unique("docker-pool")
    prefect.ok(
        "POST",
        "work_pools/",
        json={"name": name, "type": "docker", "base_job_template": template},
    )
    return name


def our_container(run_id: str) -> Any:
    docker_client = client()
    try:
        found = labelled(docker_client, f"{RUN_LABEL}={run_id}")
        return found[0] if found else None
    finally:
        docker_client.close()


def test_a_docker_pools_runs_execute_in_its_image_and_an_oom_is_crashed(
    prefect_harness: PrefectHarness, prefect_agents: Agents, tmp_path: Path
) -> None:
    require_dockerd()
    prefect = prefect_harness
    source = tmp_path / "source"
    source.mkdir()
    (source / "docker_flows.py").write_text(FLOW)
    out = tmp_path / "out"
    out.mkdir()
    pool = docker_pool(prefect, [f"{source}:{source}:ro", f"{out}:{out}"])
    body = prefect.ok("POST", f"work_pools/{pool}/queues", json={"name": unique("q")})
    queue = Queue(id=body["id"], name=body["name"], pool=pool)
    steps = [{"prefect.deployments.steps.set_working_directory": {"directory": str(source)}}]
    deployments = {}
    for entrypoint in ("where", "hog"):
        flow = prefect.ok("POST", "flows/", json={"name": entrypoint})
        deployments[entrypoint] = prefect.ok(
            "POST",
            "deployments/",
            json={
                "name": unique("d"),
                "flow_id": flow["id"],
                "work_pool_name": pool,
                "work_queue_name": queue.name,
                "entrypoint": f"docker_flows.py:{entrypoint}",
                "pull_steps": steps,
                "job_variables": {"env": {"DEPLOYMENT": "deployment"}},
            },
        )["id"]
    where = prefect.ok(
        "POST",
        f"deployments/{deployments['where']}/create_flow_run",
        json={
            "parameters": {"out": str(out)},
            "job_variables": {"env": {"RUN": "run"}, "auto_remove": False},
        },
    )["id"]
    hog = prefect.ok(
        "POST",
        f"deployments/{deployments['hog']}/create_flow_run",
        json={"parameters": {"out": str(out)}, "job_variables": {"mem_limit": "300m"}},
    )["id"]
    prefect_agents.start(queue)

    assert prefect.wait_state(where, TERMINAL, timeout=180)["type"] == "COMPLETED"
    seen = json.loads((out / where).read_text())
    assert seen["pid1"].endswith("docker-init")  # in a container of ours, not on the host
    assert seen["cwd"] == str(source)
    assert seen["env"] == {"POOL": "pool", "DEPLOYMENT": "deployment", "RUN": "run"}
    container = our_container(where)  # kept: the run's auto_remove is false
    assert container is not None
    try:
        assert container.image.id == client().images.get(BASE_IMAGE).id
        assert container.attrs["HostConfig"]["NetworkMode"] == "host"  # a loopback API URL
    finally:
        container.remove(force=True)

    state = prefect.wait_state(hog, TERMINAL, timeout=180)
    assert state["type"] == "CRASHED", state
    assert "out of memory (limit 300m)" in state["message"], state
    assert (out / "hog-started").exists()  # the flow ran, and was killed for its memory
    # auto_remove (the pool's default): removed once the agent has recorded the outcome, a
    # moment after the server has it.
    wait_for(lambda: our_container(hog) is None, what="the hog's container to be removed")
