"""Exactly once, tried at the worst instants: an agent killed the moment its flow's process
appears, two agents under one name, a fence killed before its agent, an agent back after its
fence fired, an agent killed between a run's end and its report.

Real server, real agents, real flows; what counts is what the flows did (one marker file per
execution, see ``sample.py:phases``), not only the states the server shows. The lease is 12 s:
an agent's fence fires after 6 s without a renewed lease.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.integration.test_readoption import alive, executions, orphan_a_run
from tests.support import (
    Server,
    get_run,
    make_deployment,
    make_queue,
    make_run,
    server_fixture,
    start_agent,
    stop,
    wait_for,
    wait_state,
)

pytestmark = pytest.mark.integration

LEASE = 12.0
FAST = {"AGENT_HEARTBEAT_SECONDS": "0.3", "AGENT_CANCEL_POLL_SECONDS": "0.3"}


server = server_fixture("exactly-once", {"AGENT_LEASE_SECONDS": str(LEASE)})


@pytest.fixture
def agents(server: Server) -> Iterator[Any]:
    started: list[subprocess.Popen[bytes]] = []

    def start(queue: dict[str, Any], *args: str, **env: str) -> subprocess.Popen[bytes]:
        process = start_agent(server, queue["id"], *args, **(FAST | env))
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            stop(process, timeout=30)


def unique(prefix: str) -> str:
    return f"{prefix}-{time.monotonic_ns()}"


def agent_dir(server: Server, name: str) -> Path:
    return server.home / "agents" / name


def phases(api: httpx.Client, queue: dict[str, Any], marker_dir: Path, **fields: Any) -> Any:
    body = {"entrypoint": "sample.py:phases", "parameters": {"marker_dir": str(marker_dir)}}
    return make_deployment(api, queue, **(body | fields))


def let_it_finish(marker_dir: Path) -> None:
    (marker_dir / "go-1").touch()
    (marker_dir / "go-2").touch()


def first_child(agent: subprocess.Popen[bytes]) -> psutil.Process | None:
    """The agent's first child that is not its fence: a run's process, maybe not exec'd yet."""
    try:
        children = psutil.Process(agent.pid).children()
    except psutil.NoSuchProcess:
        return None
    for child in children:
        try:
            if "agent.fence" not in child.cmdline():
                return child
        except psutil.Error:
            return child  # gone or mid-exec: a child all the same
    return None


#: The run under test is due this long after it is created, and the first agent takes it at
#: once (its start lead is longer): its process is spawned held and stays held until then. So
#: the kill below lands between the spawn and the release whatever the machine's load; with
#: a run due now, RUNNING is accepted and the run released within milliseconds, and a test
#: process slow to see the child would kill an agent whose flow had already begun (a crash
#: and a retry, two executions, rightly).
DUE_IN = 5.0
EARLY = {"AGENT_START_LEAD_SECONDS": str(DUE_IN * 6)}


def make_held_run(api: httpx.Client, deployment: dict[str, Any]) -> str:
    due = datetime.now(UTC) + timedelta(seconds=DUE_IN)
    return str(make_run(api, deployment, expected_start_time=due.isoformat())["id"])


def kill_as_its_flow_appears(agent: subprocess.Popen[bytes]) -> psutil.Process:
    """SIGKILL ``agent`` the instant a run's process of its exists (between the spawn and
    whatever the agent does next), long before the run is due (``DUE_IN``)."""
    child = wait_for(
        lambda: first_child(agent), timeout=30, interval=0.0005, what="a run's process"
    )
    agent.send_signal(signal.SIGKILL)
    agent.wait()
    return child


def test_an_agent_killed_as_its_flow_process_appears_and_restarted_runs_it_once(
    api: httpx.Client, agents: Any, server: Server, tmp_path: Path
) -> None:
    queue = make_queue(api)
    deployment = phases(api, queue, tmp_path, retries=1)
    name = unique("spawn")
    first = agents(queue, "--name", name, **EARLY)
    run_id = make_held_run(api, deployment)
    child = kill_as_its_flow_appears(first)

    # Started held, it never begins without its agent: it ends on its own.
    wait_for(lambda: not alive(child.pid), timeout=10, what="the orphaned run's process to end")
    assert executions(tmp_path) == []
    agents(queue, "--name", name)
    let_it_finish(tmp_path)
    run = wait_state(api, run_id, timeout=60)
    assert run["state"]["type"] == "COMPLETED", run["state"]
    assert len(executions(tmp_path)) == 1


def test_an_agent_killed_as_its_flow_process_appears_and_never_back_leaves_it_to_another(
    api: httpx.Client, agents: Any, tmp_path: Path
) -> None:
    queue = make_queue(api)
    deployment = phases(api, queue, tmp_path, retries=1)
    first = agents(queue, "--name", unique("gone"), **EARLY)
    run_id = make_held_run(api, deployment)
    child = kill_as_its_flow_appears(first)
    wait_for(lambda: not alive(child.pid), timeout=10, what="the orphaned run's process to end")
    assert executions(tmp_path) == []

    # Another agent gets it once the server has given up on the first (its lease).
    agents(queue, "--name", unique("other"))
    let_it_finish(tmp_path)
    run = wait_state(api, run_id, timeout=LEASE + 60)
    assert run["state"]["type"] == "COMPLETED", run["state"]
    assert len(executions(tmp_path)) == 1


def test_a_second_agent_under_a_live_agents_name_refuses_to_start(
    api: httpx.Client, agents: Any, server: Server, tmp_path: Path
) -> None:
    queue = make_queue(api)
    name = unique("twin")
    first = agents(queue, "--name", name)
    wait_for(lambda: (agent_dir(server, name) / "lease").exists(), timeout=30)
    log_path = tmp_path / "second.log"
    second = start_agent(server, queue["id"], "--name", name, log_path=log_path, **FAST)
    assert second.wait(timeout=60) != 0
    said = log_path.read_text()
    assert f"another agent named '{name}' is already running on this host (pid {first.pid})" in said
    assert "--name" in said
    assert first.poll() is None


def test_the_server_refuses_a_live_agents_name_from_another_host(
    api: httpx.Client, agents: Any, server: Server
) -> None:
    queue = make_queue(api)
    name = unique("host")
    agents(queue, "--name", name)
    wait_for(lambda: (agent_dir(server, name) / "lease").exists(), timeout=30)
    beat = {"name": name, "work_queue_id": queue["id"], "hostname": "elsewhere", "pid": 1}
    response = api.post("agents/heartbeat", json=beat)
    assert response.status_code == 409, response.text
    assert f"held by a live agent on host {socket.gethostname()}" in response.json()["detail"]
    # The same host is the agent's own business (its lock), e.g. a restart after a SIGKILL.
    assert api.post("agents/heartbeat", json=beat | {"hostname": socket.gethostname()}).is_success


def test_agents_of_two_queues_on_one_host_get_names_of_their_own(
    api: httpx.Client, agents: Any
) -> None:
    queues = [make_queue(api), make_queue(api)]
    for queue in queues:
        agents(queue)  # no --name

    def names() -> set[str] | None:
        listed = {
            a["name"]
            for a in api.get("agents").json()
            if a["work_queue_id"] in {q["id"] for q in queues}
        }
        return listed if len(listed) == 2 else None

    expected = {f"{socket.gethostname()}-{q['id'].replace('-', '')[:8]}" for q in queues}
    assert wait_for(names, timeout=30, what="both agents registered") == expected


def test_a_killed_fence_is_restarted_and_still_stops_the_runs_of_a_killed_agent(
    api: httpx.Client, agents: Any, server: Server, tmp_path: Path
) -> None:
    markers, tmpdir = tmp_path / "markers", tmp_path / "tmp"
    markers.mkdir()
    tmpdir.mkdir()
    queue = make_queue(api)
    deployment = phases(api, queue, markers)
    name = unique("fence")
    first = agents(queue, "--name", name, TMPDIR=str(tmpdir))
    run_id = str(make_run(api, deployment)["id"])
    wait_state(api, run_id, {"RUNNING"})
    [flow] = wait_for(lambda: executions(markers), what="the flow to begin")
    pid_file = agent_dir(server, name) / "fence.pid"
    fence = int(pid_file.read_text())
    os.kill(fence, signal.SIGKILL)  # the OOM killer's choice, say

    def new_fence() -> int | None:
        pid = int(pid_file.read_text())
        return pid if pid != fence and alive(pid) else None

    wait_for(new_fence, timeout=10, what="the agent to start its fence again")
    first.send_signal(signal.SIGKILL)
    first.wait()
    wait_for(lambda: not alive(flow), timeout=LEASE, what="the fence to kill the run")
    # Killed before it recorded an outcome: its empty result file goes with it.
    assert list(tmpdir.glob("flowagent-result-*")) == []
    assert len(executions(markers)) == 1


def test_a_run_that_ended_after_its_agent_died_is_reported_as_it_ended_after_the_fence_fired(
    api: httpx.Client, agents: Any, server: Server, tmp_path: Path
) -> None:
    name = unique("late")
    named = lambda queue, name: agents(queue, "--name", name)  # noqa: E731
    queue, run_id, pid = orphan_a_run(api, named, tmp_path, name)
    let_it_finish(tmp_path)
    wait_for(lambda: not alive(pid), what="the flow to end with no agent")
    fenced = agent_dir(server, name) / "runs" / f"{run_id}.fenced"
    wait_for(fenced.exists, timeout=LEASE, what="the fence to fire")
    assert "already ended" in json.loads(fenced.read_text())["fenced"]["what"]

    agents(queue, "--name", name)  # back within the lease
    run = wait_state(api, run_id, timeout=30)
    assert run["state"]["type"] == "COMPLETED", run["state"]
    assert run["attempt"] == 1
    assert run["runner_info"]["result"] == {"result": "done", "pid": pid}
    assert executions(tmp_path) == [pid]


def test_an_outcome_recorded_before_the_agent_died_is_reported_not_run_again(
    api: httpx.Client, agents: Any, server: Server, tmp_path: Path
) -> None:
    """The instant between a run's end and the server hearing of it: the agent has recorded
    the outcome with its fence (agent/supervisor.py, _finish) and is killed before reporting.
    Made here by hand: a run claimed and RUNNING under the agent's name, and that record."""
    queue = make_queue(api)
    deployment = phases(api, queue, tmp_path)
    name = unique("ended")
    beat = {"name": name, "work_queue_id": queue["id"], "hostname": socket.gethostname()}
    agent_id = api.post("agents/heartbeat", json=beat).json()["id"]
    run_id = str(make_run(api, deployment)["id"])
    [claimed] = api.post(f"work_queues/{queue['id']}/claim", json={"agent_id": agent_id}).json()
    running = {"type": "RUNNING", "agent_id": agent_id, "attempt": 1}
    assert api.post(f"flow_runs/{run_id}/set_state", json=running).is_success
    outcome = running | {
        "type": "COMPLETED",
        "message": "completed",
        "runner_info": {"exit_code": 0, "result": 42},
    }
    runs = agent_dir(server, name) / "runs"
    runs.mkdir(parents=True)
    entry = {"ended": True, "outcome": outcome, "adoption": {"claimed": claimed}}
    (runs / f"{run_id}.json").write_text(json.dumps(entry))

    agents(queue, "--name", name)
    run = wait_state(api, run_id, timeout=30)
    assert (run["state"]["type"], run["attempt"]) == ("COMPLETED", 1), run["state"]
    assert run["runner_info"]["result"] == 42
    assert executions(tmp_path) == []
    assert list(runs.glob(f"{run_id}*")) == []
    assert get_run(api, run_id)["state"]["type"] == "COMPLETED"
