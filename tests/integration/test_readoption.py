"""Re-adoption: an agent SIGKILLed and restarted with the same name within its lease takes over
the runs its earlier life left executing, instead of crashing them.

Real server, real agents, real flows. The flows print in phases gated by files the test creates,
so what is printed while no agent runs is known exactly. The lease is long enough (10 s, fenced
after 5 s of silence) for an agent to start again in between.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.contract.dockerd import BASE_IMAGE, require_dockerd
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

LEASE = 10.0
FAST = {"AGENT_HEARTBEAT_SECONDS": "0.3", "AGENT_CANCEL_POLL_SECONDS": "0.3"}
# The `phases` flow in a shell: before, (go-1) during x3, (go-2) after, then exit 3.
PHASES_COMMAND = [
    "sh",
    "-c",
    'echo "$$" > "$1/exec-$$.pid"; echo before; '
    'while [ ! -e "$1/go-1" ]; do sleep 0.02; done; '
    "echo during 0; echo during 1; echo during 2; "
    'while [ ! -e "$1/go-2" ]; do sleep 0.02; done; echo after; exit 3',
    "phases",
]


server = server_fixture("readoption", {"AGENT_LEASE_SECONDS": str(LEASE)})


@pytest.fixture
def agents(server: Server) -> Iterator[Any]:
    started: list[subprocess.Popen[bytes]] = []

    def start(queue: dict[str, Any], name: str) -> subprocess.Popen[bytes]:
        process = start_agent(server, queue["id"], "--name", name, **FAST)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            stop(process, timeout=30)


def flow_lines(api: httpx.Client, run_id: str) -> list[str]:
    logs = api.get(f"flow_runs/{run_id}/logs").json()
    return [entry["line"] for entry in logs if entry["stream"] in ("stdout", "stderr")]


def agent_lines(api: httpx.Client, run_id: str) -> list[str]:
    logs = api.get(f"flow_runs/{run_id}/logs").json()
    return [entry["line"] for entry in logs if entry["stream"] == "agent"]


def executions(marker_dir: Path) -> list[int]:
    pids = [json.loads(p.read_text())["pid"] for p in marker_dir.glob("exec-*.json")]
    return pids + [int(p.read_text()) for p in marker_dir.glob("exec-*.pid")]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def orphan_a_run(
    api: httpx.Client, agents: Any, marker_dir: Path, name: str, **fields: Any
) -> tuple[dict[str, Any], str, int]:
    """Deploy ``phases`` (or the command in ``fields``), run it under agent ``name``, SIGKILL
    the agent once the flow's first phase has reached the server: the queue, run id, flow pid."""
    if "command" not in fields:
        phases = {"entrypoint": "sample.py:phases", "parameters": {"marker_dir": str(marker_dir)}}
        fields = phases | fields
    queue = make_queue(api)
    deployment = make_deployment(api, queue, **fields)
    first = agents(queue, name)
    run_id = str(make_run(api, deployment)["id"])
    wait_for(lambda: "before" in flow_lines(api, run_id), what="the first phase's output")
    [pid] = executions(marker_dir)
    first.send_signal(signal.SIGKILL)
    first.wait()
    return queue, run_id, pid


def taken_over(api: httpx.Client, run_id: str) -> None:
    wait_for(
        lambda: any("took the run over" in line for line in agent_lines(api, run_id)),
        what="the restarted agent to take the run over",
    )


def test_a_restarted_agent_takes_over_its_running_flow(server, api, agents, tmp_path) -> None:
    queue, run_id, pid = orphan_a_run(api, agents, tmp_path, "phoenix")

    # Printed while no agent runs: it waits in the pipe, and the flow is not killed by SIGPIPE.
    (tmp_path / "go-1").touch()
    agents(queue, "phoenix")
    try:
        # 2 s here; once (two xdist workers busy) more than 10 s, with nothing kept to say why.
        wait_for(
            lambda: "during 2" in flow_lines(api, run_id),
            timeout=30,
            what="output printed meanwhile",
        )
    except AssertionError as exc:
        logs = sorted(server.home.glob("agent-*.log"), key=lambda p: p.stat().st_mtime)[-2:]
        told = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-6000:]}" for p in logs)
        raise AssertionError(
            f"{exc}; the run's logs: {api.get(f'flow_runs/{run_id}/logs').text}\n{told}"
        ) from None
    assert alive(pid)
    (tmp_path / "go-2").touch()

    done = wait_state(api, run_id)
    assert done["state"]["type"] == "COMPLETED", done["state"]
    assert done["runner_info"]["result"] == {"result": "done", "pid": pid}
    assert flow_lines(api, run_id) == ["before", "during 0", "during 1", "during 2", "after"]
    assert any(
        "phoenix restarted and took the run over" in line for line in agent_lines(api, run_id)
    )
    assert executions(tmp_path) == [pid]  # one execution, never a second
    assert done["attempt"] == 1


def test_a_command_run_taken_over_keeps_its_exit_status(api, agents, tmp_path) -> None:
    queue, run_id, _ = orphan_a_run(
        api, agents, tmp_path, "phoenix-cmd", command=[*PHASES_COMMAND, str(tmp_path)]
    )

    agents(queue, "phoenix-cmd")
    taken_over(api, run_id)
    (tmp_path / "go-1").touch()
    (tmp_path / "go-2").touch()

    done = wait_state(api, run_id)
    assert done["state"]["type"] == "FAILED", done["state"]
    assert done["state"]["message"].startswith("exited with code 3")
    assert done["runner_info"]["exit_code"] == 3
    assert flow_lines(api, run_id) == ["before", "during 0", "during 1", "during 2", "after"]
    assert len(executions(tmp_path)) == 1


def test_a_run_that_ended_while_no_agent_ran_keeps_its_outcome(api, agents, tmp_path) -> None:
    queue, run_id, pid = orphan_a_run(api, agents, tmp_path, "phoenix-late")
    (tmp_path / "go-1").touch()
    (tmp_path / "go-2").touch()
    wait_for(lambda: not alive(pid), what="the flow to end unwatched")

    agents(queue, "phoenix-late")
    done = wait_state(api, run_id)
    # Its result file says how it ended; what it printed after the agent died went with its pipe.
    assert done["state"]["type"] == "COMPLETED", done["state"]
    assert done["runner_info"]["result"] == {"result": "done", "pid": pid}
    assert done["attempt"] == 1
    assert executions(tmp_path) == [pid]


def test_a_run_killed_while_no_agent_ran_is_crashed_and_retried(api, agents, tmp_path) -> None:
    queue, run_id, pid = orphan_a_run(api, agents, tmp_path, "phoenix-dead", retries=1)
    psutil.Process(pid).kill()
    wait_for(lambda: not alive(pid), what="the flow to die")

    agents(queue, "phoenix-dead")
    wait_for(lambda: get_run(api, run_id)["attempt"] == 2, what="attempt 2")
    states = api.get(f"flow_runs/{run_id}/states").json()
    crashed = [s for s in states if s["type"] == "CRASHED"]
    assert len(crashed) == 1
    assert "ended without recording how" in crashed[0]["message"]
    (tmp_path / "go-1").touch()
    (tmp_path / "go-2").touch()
    assert wait_state(api, run_id)["state"]["type"] == "COMPLETED"


def test_a_run_taken_over_can_still_be_cancelled(api, agents, tmp_path) -> None:
    queue, run_id, pid = orphan_a_run(api, agents, tmp_path, "phoenix-cancel")
    agents(queue, "phoenix-cancel")
    taken_over(api, run_id)

    assert api.post(f"flow_runs/{run_id}/cancel").status_code in (200, 202)
    done = wait_state(api, run_id)
    assert done["state"]["type"] == "CANCELLED", done["state"]
    wait_for(lambda: not alive(pid), what="the flow to be stopped")


def test_a_run_taken_over_keeps_its_timeout(api, agents, tmp_path) -> None:
    queue, run_id, pid = orphan_a_run(api, agents, tmp_path, "phoenix-timeout", timeout_seconds=4)
    agents(queue, "phoenix-timeout")

    done = wait_state(api, run_id)
    assert done["state"]["type"] == "FAILED", done["state"]
    assert done["state"]["message"].startswith("timed out after 4s")
    wait_for(lambda: not alive(pid), what="the flow to be stopped")


def test_a_restarted_agent_takes_over_its_docker_run(api, agents, tmp_path) -> None:
    require_dockerd()
    queue, run_id, _ = orphan_a_run(
        api,
        agents,
        tmp_path,
        "phoenix-docker",
        runner="docker",
        runner_options={"image": BASE_IMAGE, "volumes": [f"{tmp_path}:{tmp_path}"]},
    )
    container = get_run(api, run_id)["runner_info"]["container_id"]
    (tmp_path / "go-1").touch()  # printed while no agent runs: kept in the container's log

    agents(queue, "phoenix-docker")
    wait_for(lambda: "during 2" in flow_lines(api, run_id), what="output printed meanwhile")
    (tmp_path / "go-2").touch()

    done = wait_state(api, run_id)
    assert done["state"]["type"] == "COMPLETED", done["state"]
    assert done["runner_info"]["container_id"] == container
    assert done["runner_info"]["result"]["result"] == "done"
    lines = flow_lines(api, run_id)
    # The log is replayed from shortly before the earlier life's last lease renewal: a line
    # may come twice, none is missing.
    assert list(dict.fromkeys(lines)) == ["before", "during 0", "during 1", "during 2", "after"]
    assert all(lines.count(line) <= 2 for line in lines)
    assert len(executions(tmp_path)) == 1
