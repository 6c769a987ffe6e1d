"""Never lose a run, never run one twice: agent crashes, partitions, server restarts, signals.

A real server with a short lease (2 s), real agents heartbeating every 0.3 s, real flows that
write a marker per execution, a TCP fault proxy of our own between agents and server.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.faultproxy import FaultProxy
from tests.support import (
    AGENT,
    Server,
    free_port,
    get_run,
    log_lines,
    make_deployment,
    make_queue,
    make_run,
    running_server,
    server_fixture,
    start_agent,
    stop,
    wait_for,
    wait_state,
)

pytestmark = pytest.mark.integration

LEASE = 2.0
FAST = {"AGENT_HEARTBEAT_SECONDS": "0.3", "AGENT_CANCEL_POLL_SECONDS": "0.3"}


server = server_fixture("reliability", {"AGENT_LEASE_SECONDS": str(LEASE)})


@pytest.fixture
def agents(server: Server) -> Iterator[Any]:
    started: list[subprocess.Popen[bytes]] = []

    def start(queue: dict[str, Any], name: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        process = start_agent(server, queue["id"], "--name", name, *args, **(FAST | env))
        started.append(process)
        return process

    yield start
    for process in started:
        stop(process, timeout=30)


def executions(marker_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(marker_dir.glob("*.json"))]


def assert_no_overlap(marks: list[dict[str, Any]]) -> None:
    by_run: dict[str, list[dict[str, Any]]] = {}
    for mark in marks:
        by_run.setdefault(mark["run"], []).append(mark)
    for run, runs in by_run.items():
        # A killed execution has no end: it ran until it was last seen alive (every 50 ms).
        spans = sorted((m["start"], m.get("end", m["alive"]), m["pid"]) for m in runs)
        for (_, end, pid), (start, _, other) in itertools.pairwise(spans):
            assert end <= start, f"run {run}: executions {pid} and {other} overlapped"


def pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_killed_agents_run_is_fenced_crashed_and_retried_once(api, agents, tmp_path) -> None:
    queue = make_queue(api)
    deployment = make_deployment(
        api, queue, entrypoint="sample.py:record", retries=1,
        parameters={"marker_dir": str(tmp_path), "seconds": 60, "retry_seconds": 0.2},
    )  # fmt: skip
    doomed = agents(queue, "doomed")
    run = make_run(api, deployment)
    wait_state(api, run["id"], {"RUNNING"})
    first = wait_for(lambda: executions(tmp_path), what="the first execution's marker")[0]

    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    wait_for(lambda: pid_gone(first["pid"]), timeout=LEASE, what="the fence to kill the flow")
    crashed_at = time.time()
    retried = wait_for(
        lambda: (r := get_run(api, run["id"]))["attempt"] == 2 and r, timeout=LEASE + 5,
        what="the server to expire the lease",
    )  # fmt: skip
    assert time.time() >= crashed_at  # the flow was dead before the run could be retried

    assert retried["state"]["type"] == "SCHEDULED"
    states = api.get(f"flow_runs/{run['id']}/states").json()
    assert any(
        s["type"] == "CRASHED" and "agent doomed stopped heartbeating" in s["message"]
        for s in states
    )
    agents(queue, "survivor")  # attempt 2 runs here, this time short
    done = wait_state(api, run["id"], timeout=90)
    assert done["attempt"] == 2
    marks = executions(tmp_path)
    assert len(marks) == 2
    assert_no_overlap(marks)


def test_a_partitioned_agent_stops_its_runs_before_its_lease_ends(
    server: Server, api, tmp_path
) -> None:
    queue = make_queue(api)
    deployment = make_deployment(
        api, queue, entrypoint="sample.py:record",
        parameters={"marker_dir": str(tmp_path), "seconds": 60},
    )  # fmt: skip
    port = int(server.url.split(":")[2].split("/")[0])
    with FaultProxy(port) as proxy:
        url = f"http://127.0.0.1:{proxy.port}/api"
        agent = start_agent(
            server, queue["id"], "--name", "partitioned", AGENT_API_URL=url,
            AGENT_REQUEST_TIMEOUT_SECONDS="1", AGENT_STARTUP_TIMEOUT_SECONDS="1", **FAST,
        )  # fmt: skip
        try:
            run = make_run(api, deployment)
            wait_state(api, run["id"], {"RUNNING"})
            pid = wait_for(lambda: executions(tmp_path), what="the flow's marker")[0]["pid"]

            proxy.set_mode("blackhole")
            cut = time.monotonic()
            wait_for(lambda: pid_gone(pid), timeout=LEASE * 2, what="the agent to fence its run")
            fenced_after = time.monotonic() - cut
            assert get_run(api, run["id"])["state"]["type"] == "RUNNING" or fenced_after < LEASE

            crashed = wait_state(api, run["id"], timeout=LEASE + 5)
            assert crashed["state"]["type"] == "CRASHED"
            assert "stopped heartbeating" in crashed["state"]["message"]

            proxy.set_mode("pass")
            later = make_run(api, deployment, parameters={"seconds": 0.1})
            assert wait_state(api, later["id"], timeout=30)["state"]["type"] == "COMPLETED"
            # The agent's own CRASHED report about the first run reached the server late and
            # was refused: the server's word stands.
            assert get_run(api, run["id"])["state"]["message"] == crashed["state"]["message"]
        finally:
            assert stop(agent, timeout=30) == 0


def test_reports_made_while_the_server_is_down_are_delivered_after(tmp_path) -> None:
    home = tmp_path / "home"
    port = free_port()
    marker = tmp_path / "go"
    with running_server(home, port=port) as server, server.client() as api:
        queue = make_queue(api)
        deployment = make_deployment(
            api, queue, entrypoint="sample.py:wait_for_file", parameters={"marker": str(marker)}
        )
        agent = start_agent(server, queue["id"], "--name", "patient", **FAST)
        run = make_run(api, deployment)
        wait_for(lambda: "waiting for the marker" in log_lines(api, run["id"]), what="output")
    # The server is down now; the flow finishes meanwhile and its reports are spooled.
    try:
        marker.touch()
        spool = home / "agents" / "patient" / "spool"
        wait_for(lambda: list(spool.glob("*-state-*.json")), timeout=60, what="a spooled report")
        assert agent.poll() is None, "the agent must ride out the outage"
        with running_server(home, port=port) as server, server.client() as api:
            done = wait_state(api, run["id"], timeout=30)
            assert done["state"]["type"] == "COMPLETED"
            assert log_lines(api, run["id"]) == ["waiting for the marker", "marker found"]
            wait_for(lambda: not list(spool.glob("*.json")), what="the spool to empty")
    finally:
        assert stop(agent, timeout=30) == 0


def test_a_restarted_agent_stops_what_is_no_longer_its_own(server, api, agents, tmp_path) -> None:
    # The agent and its fence both die, so nothing stops the flow when the lease runs out and
    # the server retries the run. The restarted agent must kill that leftover, not take it over.
    queue = make_queue(api)
    deployment = make_deployment(
        api, queue, entrypoint="sample.py:record", retries=1,
        parameters={"marker_dir": str(tmp_path), "seconds": 60, "retry_seconds": 0.2},
    )  # fmt: skip
    first = agents(queue, "phoenix")
    run = make_run(api, deployment)
    wait_state(api, run["id"], {"RUNNING"})
    pid = wait_for(lambda: executions(tmp_path), what="the flow's marker")[0]["pid"]
    fence = int((server.home / "agents" / "phoenix" / "fence.pid").read_text())

    first.send_signal(signal.SIGKILL)
    first.wait()
    os.kill(fence, signal.SIGKILL)
    wait_for(lambda: get_run(api, run["id"])["attempt"] == 2, timeout=LEASE + 5, what="attempt 2")
    assert not pid_gone(pid)  # nothing fenced it: the leftover runs on, unsupervised

    agents(queue, "phoenix")  # same name, same host
    wait_for(lambda: pid_gone(pid), timeout=10, what="the leftover to be stopped")
    done = wait_state(api, run["id"], timeout=30)
    assert (done["state"]["type"], done["attempt"]) == ("COMPLETED", 2)
    marks = executions(tmp_path)
    assert len(marks) == 2
    assert_no_overlap(marks)


def test_second_signal_cancels_runs_now_and_third_exits(server: Server, api, tmp_path) -> None:
    queue = make_queue(api)
    deployment = make_deployment(
        api, queue, entrypoint="sample.py:record",
        parameters={"marker_dir": str(tmp_path), "seconds": 60},
    )  # fmt: skip
    agent = start_agent(
        server, queue["id"], "--name", "impatient", AGENT_DRAIN_TIMEOUT_SECONDS="600", **FAST
    )
    run = make_run(api, deployment)
    wait_state(api, run["id"], {"RUNNING"})

    agent.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert agent.poll() is None  # draining: the run may finish
    agent.send_signal(signal.SIGINT)
    done = wait_state(api, run["id"], timeout=20)
    assert done["state"]["type"] == "CANCELLED"
    assert done["state"]["message"] == "agent shut down"
    assert agent.wait(20) == 0


def test_third_signal_exits_at_once(server: Server, api, tmp_path) -> None:
    queue = make_queue(api)
    deployment = make_deployment(
        api, queue, entrypoint="sample.py:record",
        parameters={"marker_dir": str(tmp_path), "seconds": 60, "ignore_sigterm": True},
    )  # fmt: skip
    agent = start_agent(
        server, queue["id"], "--name", "hasty", AGENT_DRAIN_TIMEOUT_SECONDS="600",
        AGENT_CANCEL_GRACE_SECONDS="600", **FAST,
    )  # fmt: skip
    run = make_run(api, deployment)
    wait_state(api, run["id"], {"RUNNING"})
    pid = wait_for(lambda: executions(tmp_path), what="the flow's marker")[0]["pid"]
    # A flow that ignores SIGTERM keeps the second signal's cancel waiting out its grace.
    for sig in (signal.SIGTERM, signal.SIGTERM):
        agent.send_signal(sig)
        time.sleep(0.3)
    assert agent.poll() is None
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(5) == 130
    # Even then nothing is left running for ever: the fence stops the flow and the server
    # resolves the run when the lease runs out.
    wait_for(lambda: pid_gone(pid), timeout=LEASE + 5, what="the fence")
    assert wait_state(api, run["id"], timeout=LEASE + 5)["state"]["type"] in {
        "CRASHED",
        "CANCELLED",
    }


def agent_with_no_server(tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """An agent whose server is not there (it retries for 60 s), and its JSON log."""
    env = {
        "AGENT_HOME": str(tmp_path),
        "AGENT_API_URL": f"http://127.0.0.1:{free_port()}/api",  # nobody listens there
        "AGENT_STARTUP_TIMEOUT_SECONDS": "60",
        "AGENT_LOG_FORMAT": "json",
    }
    log_path = tmp_path / "agent.log"
    with log_path.open("wb") as log:
        agent = subprocess.Popen(
            [AGENT, "start", "00000000-0000-4000-8000-000000000000"],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return agent, log_path


def test_a_signal_while_starting_stops_the_agent_at_once(tmp_path) -> None:
    agent, log_path = agent_with_no_server(tmp_path)
    # Retrying the unreachable server: its handlers are in place by then.
    wait_for(lambda: b"api_retry" in log_path.read_bytes(), timeout=30, what="a retry")
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(5) == 0
    assert b"agent_stopped" in log_path.read_bytes()


def test_a_sigterm_while_python_imports_exits_zero_at_once(tmp_path) -> None:
    # Before the daemon has its handlers (say, restarted a moment before being stopped).
    agent, log_path = agent_with_no_server(tmp_path)
    # The first moment SIGTERM is caught at all: the entry point's first line.
    wait_for(lambda: catches_sigterm(agent.pid), interval=0.001, what="a SIGTERM handler")
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(10) == 0
    assert log_path.read_text() == ""  # ended before the daemon began (it would log its stop)


def catches_sigterm(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(
        next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16
    )
    return bool(caught & (1 << (signal.SIGTERM - 1)))
