"""The pool's and the block's settings, the pool's type, a whole pool served (issue 13, 3-5).

Prefect's worker launches a run with its pool's base job template filled in: the template's
variable defaults under the deployment's job variables under the run's (``env`` merged key by
key), the template's ``command`` instead of the engine's when it has one. Prefect 2's agent
launches it with the deployment's ``Process`` block, the deployment's dotted overrides
(``env.X``) set into it. A pool whose type is not one the agent can launch is refused at start;
``agent start --pool`` serves the pool's queues as ``prefect worker start --pool`` does. Against
real Prefect 3 and 2.20.27 servers, with the real ``agent``; the flows write what they saw.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conformance.harness import (
    TERMINAL,
    Agents,
    Harness,
    PrefectHarness,
    Queue,
    clean_env,
    unique,
)
from tests.support import wait_for

pytestmark = pytest.mark.integration

NAMES = ("POOL_ONLY", "SHARED", "DEPLOYMENT", "RUN", "BLOCK", "OVERRIDE")

#: Writes what the flow saw: its working directory and the variables the test set.
ENV_FLOW = f"""\
import json
import os
from pathlib import Path

from prefect import flow

NAMES = {NAMES!r}


@flow
def report(out: str) -> str:
    seen = {{"cwd": os.getcwd(), "env": {{n: os.environ.get(n) for n in NAMES}}}}
    Path(out).write_text(json.dumps(seen))
    return "reported"
"""

#: A 2.x deployment as `Deployment.build_from_flow` (or `prefect deployment build --override
#: env.OVERRIDE=…`) makes it: a Process block with env and working_dir, and dotted overrides.
BLOCK_BUILD = """\
import sys

from prefect.deployments import Deployment
from prefect.infrastructure import Process

from envflow import report

name, pool, queue, workdir = sys.argv[1:5]
deployment = Deployment.build_from_flow(
    report,
    name=name,
    work_pool_name=pool,
    work_queue_name=queue,
    infrastructure=Process(env={"BLOCK": "block", "SHARED": "block"}, working_dir=workdir),
    infra_overrides={"env.OVERRIDE": "override", "env.SHARED": "override"},
)
print(deployment.apply())
"""


def pool(prefect: PrefectHarness, kind: str = "process", **fields: Any) -> str:
    name = unique("pool")
    prefect.ok("POST", "work_pools/", json={"name": name, "type": kind, **fields})
    return name


def queue_in(prefect: PrefectHarness, pool_name: str, **fields: Any) -> Queue:
    body = prefect.ok(
        "POST", f"work_pools/{pool_name}/queues", json={"name": unique("q"), **fields}
    )
    return Queue(id=body["id"], name=body["name"], pool=pool_name)


def deploy(prefect: PrefectHarness, queue: Queue, source: Path, **fields: Any) -> str:
    """A deployment of ``source/envflow.py:report`` with no pull steps: the engine copies
    ``path`` into the directory it starts in (both versions)."""
    flow = prefect.ok("POST", "flows/", json={"name": "report"})
    body = {
        "name": unique("d"),
        "flow_id": flow["id"],
        "work_pool_name": queue.pool,
        "work_queue_name": queue.name,
        "entrypoint": "envflow.py:report",
        "path": str(source),
        **fields,
    }
    return str(prefect.ok("POST", "deployments/", json=body)["id"])


def run(prefect: PrefectHarness, deployment: str, **body: Any) -> str:
    created = prefect.ok("POST", f"deployments/{deployment}/create_flow_run", json=body)
    return str(created["id"])


def source_dir(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    source.mkdir()
    (source / "envflow.py").write_text(ENV_FLOW)
    return source


def test_pool_template_defaults_and_command_reach_the_flow_under_deployment_and_run(
    prefect_harness: PrefectHarness, prefect_agents: Agents, tmp_path: Path
) -> None:
    """Template defaults < deployment < run for ``env``; the template's ``working_dir`` and
    ``command`` are used (the command writes a mark, then starts the engine)."""
    prefect = prefect_harness
    source = source_dir(tmp_path)
    workdir = tmp_path / "pool-workdir"
    workdir.mkdir()
    mark = tmp_path / "command-ran"
    command = f"sh -c {shlex.quote(f'touch {mark} && exec {prefect.python} -m prefect.engine')}"
    template = {
        "job_configuration": {
            "command": "{{ command }}",
            "env": "{{ env }}",
            "working_dir": "{{ working_dir }}",
        },
        "variables": {
            "type": "object",
            "properties": {
                "command": {"type": "string", "default": command},
                "env": {
                    "type": "object",
                    "default": {"POOL_ONLY": "pool", "SHARED": "pool"},
                },
                "working_dir": {"type": "string", "default": str(workdir)},
            },
        },
    }
    queue = queue_in(prefect, pool(prefect, base_job_template=template))
    deployment = deploy(
        prefect,
        queue,
        source,
        job_variables={"env": {"SHARED": "deployment", "DEPLOYMENT": "deployment"}},
    )
    out = tmp_path / "seen.json"
    flow_run = run(
        prefect,
        deployment,
        parameters={"out": str(out)},
        job_variables={"env": {"RUN": "run", "SHARED": "run"}},
    )
    prefect_agents.start(queue)

    assert prefect.wait_state(flow_run, TERMINAL, timeout=120)["type"] == "COMPLETED"
    seen = json.loads(out.read_text())
    assert seen["env"] == {
        "POOL_ONLY": "pool",
        "SHARED": "run",
        "DEPLOYMENT": "deployment",
        "RUN": "run",
        "BLOCK": None,
        "OVERRIDE": None,
    }
    assert Path(seen["cwd"]).resolve() == workdir.resolve()
    assert mark.exists()


def test_prefect2_block_env_working_dir_and_dotted_overrides_reach_the_flow(
    prefect2_harness: PrefectHarness, tmp_path: Path
) -> None:
    """A 2.x agent's pool (``prefect-agent``): the deployment's Process block's ``env`` and
    ``working_dir``, its ``env.X`` overrides over the block, the run's ``env`` over both."""
    prefect = prefect2_harness
    source = source_dir(tmp_path)
    (source / "build.py").write_text(BLOCK_BUILD)
    workdir = tmp_path / "block-workdir"
    workdir.mkdir()
    queue = queue_in(prefect, pool(prefect, "prefect-agent"))
    built = subprocess.run(
        [prefect.python, "build.py", unique("d"), queue.pool or "", queue.name, str(workdir)],
        cwd=source,
        env=clean_env(**prefect.prefect_env()),
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    deployment = built.stdout.strip().splitlines()[-1]
    stored = prefect.ok("GET", f"deployments/{deployment}")
    assert stored["infrastructure_document_id"]
    assert stored["infra_overrides"] == {"env.OVERRIDE": "override", "env.SHARED": "override"}
    out = tmp_path / "seen.json"
    flow_run = run(
        prefect, deployment, parameters={"out": str(out)}, job_variables={"env": {"RUN": "run"}}
    )
    agents = Agents(prefect, tmp_path)
    try:
        agents.start(queue)
        assert prefect.wait_state(flow_run, TERMINAL, timeout=120)["type"] == "COMPLETED"
    finally:
        agents.stop_all()
    seen = json.loads(out.read_text())
    assert seen["env"] == {
        "POOL_ONLY": None,
        "SHARED": "override",
        "DEPLOYMENT": None,
        "RUN": "run",
        "BLOCK": "block",
        "OVERRIDE": "override",
    }
    assert Path(seen["cwd"]).resolve() == workdir.resolve()


@pytest.mark.parametrize("how", ["queue", "pool"])
def test_a_kubernetes_pool_is_refused_at_start_and_its_run_left_alone(
    prefect_harness: PrefectHarness, prefect_agents: Agents, tmp_path: Path, how: str
) -> None:
    prefect = prefect_harness
    name = pool(prefect, "kubernetes")
    queue = queue_in(prefect, name)
    deployment = deploy(prefect, queue, source_dir(tmp_path))
    flow_run = run(prefect, deployment, parameters={"out": str(tmp_path / "seen.json")})
    if how == "queue":
        agent, _ = prefect_agents.start(queue)
    else:
        agent, _ = prefect_agents.start_pool(name)
    assert agent.wait(timeout=60) != 0
    log = prefect_agents.log(agent)
    assert f"work pool '{name}' is of type 'kubernetes'" in log, log
    assert f"prefect worker start --pool {name}" in log, log
    assert set(prefect.history(flow_run)) == {"SCHEDULED"}  # never claimed (Late is one too)
    assert not (tmp_path / "seen.json").exists()


def test_a_pool_is_served_queue_by_queue_in_priority_order(
    prefect_harness: PrefectHarness, prefect_agents: Agents, tmp_path: Path
) -> None:
    """Queues made low, mid, high priority (in that order, so creation order is not the
    answer); two runs in each, all due. ``--pool --work-queue high --work-queue low --limit 1``
    runs high's two, then low's, and never mid's; ``--pool`` alone then serves mid too, and a
    queue made after it started."""
    prefect = prefect_harness
    name = pool(prefect)
    queues = {
        label: queue_in(prefect, name, priority=priority)
        for label, priority in (("low", 3), ("mid", 2), ("high", 1))
    }
    source = source_dir(tmp_path)
    outs = tmp_path / "outs"
    outs.mkdir()
    runs: dict[str, str] = {}
    for label, queue in queues.items():
        deployment = deploy(prefect, queue, source)
        for i in range(2):
            runs[f"{label}{i}"] = run(
                prefect, deployment, parameters={"out": str(outs / f"{label}{i}")}
            )

    some, _ = prefect_agents.start_pool(
        name,
        "--work-queue",
        queues["high"].name,
        "--work-queue",
        queues["low"].name,
        "--limit",
        "1",
    )
    served = ["high0", "high1", "low0", "low1"]
    for key in served:
        assert prefect.wait_state(runs[key], TERMINAL, timeout=180)["type"] == "COMPLETED"
    started = {key: prefect.ok("GET", f"flow_runs/{runs[key]}")["start_time"] for key in served}
    order = sorted(served, key=lambda key: started[key])
    assert [key[:-1] for key in order] == ["high", "high", "low", "low"], started
    # Never claimed: SCHEDULED only (the server may have added its Late, a SCHEDULED too).
    assert [set(prefect.history(runs[f"mid{i}"])) for i in range(2)] == [{"SCHEDULED"}] * 2
    assert sorted(p.name for p in outs.iterdir()) == served

    _, every = prefect_agents.start_pool(name)
    for i in range(2):
        assert prefect.wait_state(runs[f"mid{i}"], TERMINAL, timeout=180)["type"] == "COMPLETED"
    # A queue made after the agent started is served too, as by Prefect's worker.
    late = queue_in(prefect, name)
    runs["late0"] = run(
        prefect, deploy(prefect, late, source), parameters={"out": str(outs / "late0")}
    )
    assert prefect.wait_state(runs["late0"], TERMINAL, timeout=180)["type"] == "COMPLETED"
    assert prefect.ok("GET", f"flow_runs/{runs['late0']}")["work_queue_name"] == late.name
    pending = prefect.ok("GET", "flow_run_states/", params={"flow_run_id": runs["late0"]})
    assert [f" {every} " in s["message"] for s in pending if s["type"] == "PENDING"] == [True]
    assert sorted(p.name for p in outs.iterdir()) == sorted(runs)
    assert some.poll() is None  # still serving its two queues
    wait_for(lambda: all(prefect.claims(r) == 1 for r in runs.values()), timeout=10)


def test_a_run_whose_job_configuration_cannot_be_built_is_crashed_with_the_reason(
    prefect_harness: PrefectHarness, prefect_agents: Agents, tmp_path: Path
) -> None:
    """The pool's command cannot be split into words (an open quote): the run is CRASHED,
    saying so, as Prefect's worker reports a run it could not submit; it is not claimed again
    and no process starts."""
    prefect = prefect_harness
    template = {
        "job_configuration": {"command": "{{ command }}", "env": "{{ env }}"},
        "variables": {
            "type": "object",
            "properties": {
                "command": {"type": "string", "default": 'sh -c "touch never'},
                "env": {"type": "object"},
            },
        },
    }
    queue = queue_in(prefect, pool(prefect, base_job_template=template))
    out = tmp_path / "seen.json"
    flow_run = run(
        prefect, deploy(prefect, queue, source_dir(tmp_path)), parameters={"out": str(out)}
    )
    prefect_agents.start(queue)

    state = prefect.wait_state(flow_run, TERMINAL, timeout=120)
    assert state["type"] == "CRASHED", state
    assert state["message"].startswith(
        "flow run could not be submitted to infrastructure: job variable command "
    ), state
    assert "cannot be split into words" in state["message"], state
    assert prefect.claims(flow_run) == 1
    assert prefect.flow_pid(flow_run) is None
    assert not out.exists()


def test_pool_against_our_own_server_is_refused_clearly(
    native_harness: Harness, tmp_path: Path
) -> None:
    agents = Agents(native_harness, tmp_path)
    agent, _ = agents.start_pool("etl")
    assert agent.wait(timeout=60) != 0
    log = agents.log(agent)
    assert (
        "--pool etl: " in log and "is a flowagent server, which has work queues and no pools" in log
    ), log
    assert "agent start QUEUE_ID" in log, log
