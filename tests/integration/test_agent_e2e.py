"""The whole path, for real: server process, agent process, flow processes, HTTP between them."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from tests.support import (
    FLOWS,
    Server,
    cli,
    get_run,
    log_lines,
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


server = server_fixture("e2e")


@pytest.fixture
def agent_on(server: Server) -> Iterator[Any]:
    """Start agents on queues; every agent is stopped (and must exit 0) at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(queue: dict[str, Any], *args: str, **env: str) -> subprocess.Popen[bytes]:
        process = start_agent(
            server, queue["id"], "--name", f"a-{time.monotonic_ns()}", *args, **env
        )
        started.append(process)
        return process

    yield start
    for process in started:
        assert stop(process) == 0, f"agent exited {process.returncode}"


def test_run_completes_with_logs_result_and_runner_info(api, agent_on) -> None:
    queue = make_queue(api)
    deployment = make_deployment(
        api, queue, entrypoint="sample.py:add", parameters={"a": 1, "b": 2}
    )
    agent_on(queue)
    run = make_run(api, deployment, parameters={"b": 40})

    done = wait_state(api, run["id"])

    assert done["state"]["type"] == "COMPLETED", done["state"]
    assert done["runner_info"]["exit_code"] == 0
    assert done["runner_info"]["pid"] > 0
    assert done["runner_info"]["result"] == 41
    assert "adding 1 and 40" in log_lines(api, run["id"])
    history = [s["type"] for s in api.get(f"flow_runs/{run['id']}/states").json()]
    assert history == ["SCHEDULED", "PENDING", "RUNNING", "COMPLETED"]


def test_failures_are_reported_and_the_agent_keeps_going(api, agent_on) -> None:
    queue = make_queue(api)
    failing = make_deployment(
        api, queue, entrypoint="sample.py:boom", parameters={"message": "bad data"}
    )
    missing_file = make_deployment(api, queue, entrypoint="nowhere.py:main")
    missing_func = make_deployment(api, queue, entrypoint="sample.py:nope")
    exit_code = make_deployment(api, queue, command=["sh", "-c", "echo on stderr >&2; exit 7"])
    killed = make_deployment(api, queue, entrypoint="sample.py:kill_self")
    fine = make_deployment(api, queue, entrypoint="sample.py:add", parameters={"a": 2, "b": 2})
    agent_on(queue, "--limit", "2")
    runs = {
        name: make_run(api, d)["id"]
        for name, d in [
            ("failing", failing),
            ("missing_file", missing_file),
            ("missing_func", missing_func),
            ("exit_code", exit_code),
            ("killed", killed),
            ("fine", fine),
        ]
    }

    states = {name: wait_state(api, run_id)["state"] for name, run_id in runs.items()}

    assert states["failing"]["type"] == "FAILED"
    assert "ValueError: bad data" in states["failing"]["message"]
    assert states["missing_file"]["type"] == "FAILED"
    assert "nowhere.py" in states["missing_file"]["message"]
    assert states["missing_func"]["type"] == "FAILED"
    assert "nope" in states["missing_func"]["message"]
    assert states["exit_code"]["type"] == "FAILED"
    assert "7" in states["exit_code"]["message"]
    assert "on stderr" in states["exit_code"]["message"]
    assert states["killed"]["type"] == "CRASHED"
    assert "SIGKILL" in states["killed"]["message"]
    assert states["fine"]["type"] == "COMPLETED"


def test_env_layers_and_working_directory(api, agent_on) -> None:
    queue = make_queue(api)
    deployment = make_deployment(
        api,
        queue,
        entrypoint="sample.py:show_env",
        env={"LAYER_B": "deployment", "LAYER_C": "deployment"},
    )
    agent_on(queue, LAYER_A="agent", LAYER_B="agent", LAYER_C="agent")
    run = make_run(api, deployment, env={"LAYER_C": "run"})

    done = wait_state(api, run["id"])

    assert done["state"]["type"] == "COMPLETED", done["state"]
    assert done["runner_info"]["result"] == {
        "LAYER_A": "agent",
        "LAYER_B": "deployment",
        "LAYER_C": "run",
    }
    assert f"cwd={FLOWS}" in log_lines(api, run["id"])


def test_logs_are_shipped_while_the_run_goes_on(api, agent_on, tmp_path) -> None:
    queue = make_queue(api)
    marker = tmp_path / "go"
    deployment = make_deployment(
        api, queue, entrypoint="sample.py:wait_for_file", parameters={"marker": str(marker)}
    )
    agent_on(queue)
    run = make_run(api, deployment)

    wait_for(lambda: "waiting for the marker" in log_lines(api, run["id"]), what="the first line")
    assert get_run(api, run["id"])["state"]["type"] == "RUNNING"
    marker.touch()

    assert wait_state(api, run["id"])["state"]["type"] == "COMPLETED"
    assert log_lines(api, run["id"])[-1] == "marker found"


def test_timeout_interrupts_then_fails_the_run(api, agent_on, tmp_path) -> None:
    queue = make_queue(api)
    pidfile = tmp_path / "pid"
    deployment = make_deployment(
        api,
        queue,
        entrypoint="sample.py:sleep",
        parameters={"pidfile": str(pidfile)},
        timeout_seconds=1,
    )
    agent_on(queue)
    run = make_run(api, deployment)

    done = wait_state(api, run["id"])

    assert done["state"]["type"] == "FAILED"
    assert done["state"]["message"] == "timed out after 1s"
    assert (
        not psutil.pid_exists(int(pidfile.read_text()))
        or psutil.Process(int(pidfile.read_text())).status() == psutil.STATUS_ZOMBIE
    )


def test_cancel_a_running_run(api, agent_on, tmp_path) -> None:
    queue = make_queue(api)
    pidfile = tmp_path / "pid"
    deployment = make_deployment(
        api, queue, entrypoint="sample.py:sleep", parameters={"pidfile": str(pidfile)}
    )
    agent_on(queue, AGENT_CANCEL_GRACE_SECONDS="2")
    run = make_run(api, deployment)
    wait_state(api, run["id"], {"RUNNING"})
    wait_for(pidfile.exists, what="the flow's pid file")
    pid = int(pidfile.read_text())

    response = api.post(f"flow_runs/{run['id']}/cancel")
    assert response.status_code == 200, response.text
    done = wait_state(api, run["id"], timeout=10)

    assert done["state"]["type"] == "CANCELLED"
    wait_for(lambda: not psutil.pid_exists(pid), what=f"flow process {pid} to be gone")


def test_cancel_a_scheduled_run_never_starts_it(api, agent_on) -> None:
    queue = make_queue(api)
    deployment = make_deployment(
        api, queue, entrypoint="sample.py:add", parameters={"a": 1, "b": 1}
    )
    run = make_run(api, deployment)
    api.post(f"flow_runs/{run['id']}/cancel").raise_for_status()
    agent_on(queue)
    later = make_run(api, deployment)

    wait_state(api, later["id"])
    states = [s["type"] for s in api.get(f"flow_runs/{run['id']}/states").json()]
    assert states == ["SCHEDULED", "CANCELLED"]


def test_tag_filters_leave_unmatched_runs_scheduled(api, agent_on) -> None:
    queue = make_queue(api, tags=["etl"])
    tagged = make_deployment(
        api, queue, entrypoint="sample.py:add", parameters={"a": 1, "b": 1}, tags=["etl", "gpu"]
    )
    untagged = make_deployment(
        api, queue, entrypoint="sample.py:add", parameters={"a": 1, "b": 1}, tags=["etl"]
    )
    agent_on(queue, "--tag", "gpu")
    matching = make_run(api, tagged)
    other = make_run(api, untagged)

    assert wait_state(api, matching["id"])["state"]["type"] == "COMPLETED"
    time.sleep(0.5)  # give the agent every chance to (wrongly) take the other run
    assert get_run(api, other["id"])["state"]["type"] == "SCHEDULED"


def test_run_once_runs_what_is_due_and_exits(server: Server, api) -> None:
    queue = make_queue(api)
    deployment = make_deployment(
        api, queue, entrypoint="sample.py:add", parameters={"a": 1, "b": 1}
    )
    runs = [make_run(api, deployment)["id"] for _ in range(3)]
    process = start_agent(server, queue["id"], "--run-once")

    assert process.wait(60) == 0
    assert {get_run(api, r)["state"]["type"] for r in runs} == {"COMPLETED"}


def test_heartbeats_show_the_agent_online_with_host_metrics(api, agent_on) -> None:
    queue = make_queue(api)
    agent_on(queue, AGENT_HEARTBEAT_SECONDS="0.5")

    def online() -> dict[str, Any] | None:
        for record in api.get("agents").json():
            if record["work_queue_id"] == queue["id"] and record["status"] == "ONLINE":
                return dict(record)
        return None

    record = wait_for(online, what="an ONLINE agent on the queue")
    first = record["last_heartbeat"]
    assert 0 <= record["metrics"]["memory_percent"] <= 100
    wait_for(lambda: online()["last_heartbeat"] != first, what="a second heartbeat")  # type: ignore[index]


def test_sigterm_lets_a_short_run_finish_then_exits_zero(server: Server, api, tmp_path) -> None:
    queue = make_queue(api)
    marker = tmp_path / "go"
    deployment = make_deployment(
        api, queue, entrypoint="sample.py:wait_for_file", parameters={"marker": str(marker)}
    )
    process = start_agent(server, queue["id"])
    run = make_run(api, deployment)
    wait_state(api, run["id"], {"RUNNING"})

    process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert process.poll() is None, "the agent must drain, not exit with a run in flight"
    marker.touch()

    assert process.wait(30) == 0
    assert get_run(api, run["id"])["state"]["type"] == "COMPLETED"


def test_sigterm_cancels_runs_left_after_the_drain_timeout(server: Server, api, tmp_path) -> None:
    queue = make_queue(api)
    pidfile = tmp_path / "pid"
    deployment = make_deployment(
        api, queue, entrypoint="sample.py:sleep", parameters={"pidfile": str(pidfile)}
    )
    process = start_agent(
        server, queue["id"], AGENT_DRAIN_TIMEOUT_SECONDS="0.5", AGENT_CANCEL_GRACE_SECONDS="1"
    )
    run = make_run(api, deployment)
    wait_state(api, run["id"], {"RUNNING"})
    wait_for(pidfile.exists, what="the flow's pid file")

    process.send_signal(signal.SIGTERM)

    assert process.wait(30) == 0
    done = get_run(api, run["id"])
    assert done["state"]["type"] == "CANCELLED"
    assert done["state"]["message"] == "agent shut down"
    assert not psutil.pid_exists(int(pidfile.read_text()))


def test_agent_runner_defaults_apply_where_the_deployment_is_silent(api, agent_on) -> None:
    queue = make_queue(api)
    silent = make_deployment(api, queue, entrypoint="sample.py:add", parameters={"a": 1, "b": 1})
    explicit = make_deployment(
        api,
        queue,
        entrypoint="sample.py:add",
        parameters={"a": 1, "b": 1},
        runner="subprocess",
        runner_options={"python": sys.executable},
    )
    assert silent["runner"] is None
    agent_on(queue, "--runner", "subprocess", "--runner-option", "python=/nonexistent/python")
    defaulted = make_run(api, silent)
    overridden = make_run(api, explicit)

    failed = wait_state(api, defaulted["id"])
    assert failed["state"]["type"] == "FAILED"
    assert "/nonexistent/python" in failed["state"]["message"]
    assert wait_state(api, overridden["id"])["state"]["type"] == "COMPLETED"


def test_an_unknown_runner_is_refused_at_deployment_create(server: Server, api) -> None:
    queue = make_queue(api)
    result = cli(
        server, "deployment", "create", "sample.py:add", "--name", "nope", "--queue", queue["id"],
        "--workdir", str(FLOWS), "--runner", "no-such-runner", check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "no-such-runner" in result.stderr and "subprocess" in result.stderr
