"""A run's processes that escape its session and process group (a double-forked, setsid daemon)
die with the run when it is cancelled or times out (issue 12, item 6): the run's main process
is their subreaper, so they stay in the tree the agent signals."""

from __future__ import annotations

import shlex
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support import (
    FLOWS,
    Server,
    server_fixture,
    start_agent,
    stop,
    wait_for,
    wait_state,
)

pytestmark = pytest.mark.integration


server = server_fixture("escaped")


def daemon_command(pidfile: Path) -> list[str]:
    # setsid: a new session; the inner sh exits at once, so the sleep is orphaned.
    inner = f"sleep 300 </dev/null >/dev/null 2>&1 & echo $! > {shlex.quote(str(pidfile))}"
    return ["sh", "-c", f"setsid sh -c {shlex.quote(inner)}; echo spawned; sleep 60"]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def run_and_stop(
    server: Server, tmp_path: Path, how: str, **deployment: Any
) -> tuple[dict[str, Any], int]:
    api = server.client()
    queue = api.post("work_queues", json={"name": f"q-{uuid.uuid4().hex[:8]}"}).json()
    body = {"name": f"d-{uuid.uuid4().hex[:8]}", "work_queue_id": queue["id"], **deployment}
    created = api.post("deployments", json=body)
    assert created.status_code == 201, created.text
    run = api.post(f"deployments/{created.json()['id']}/runs", json={}).json()
    pidfile = tmp_path / "daemon.pid"
    agent = start_agent(server, queue["id"], log_path=tmp_path / "agent.log")
    pid = 0
    try:
        wait_state(api, run["id"], {"RUNNING"})
        pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 20))
        assert alive(pid)
        assert psutil.Process(pid).ppid() != agent.pid
        if how == "cancel":
            assert api.post(f"flow_runs/{run['id']}/cancel").status_code == 200
        done = wait_state(api, run["id"], timeout=30)
        wait_for(lambda: not alive(pid), timeout=10, what=f"the daemon {pid} to die")
    finally:
        stop(agent)
        if pid and alive(pid):
            psutil.Process(pid).kill()
        api.close()
    return done, pid


@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_a_command_runs_escaped_daemon_dies_with_the_run(
    server: Server, tmp_path: Path, how: str
) -> None:
    pidfile = tmp_path / "daemon.pid"
    timeout = {"timeout_seconds": 3} if how == "timeout" else {}
    done, _ = run_and_stop(server, tmp_path, how, command=daemon_command(pidfile), **timeout)
    assert done["state"]["type"] == ("CANCELLED" if how == "cancel" else "FAILED"), done["state"]


@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_a_python_flows_escaped_daemon_dies_with_the_run(
    server: Server, tmp_path: Path, how: str
) -> None:
    timeout = {"timeout_seconds": 3} if how == "timeout" else {}
    done, _ = run_and_stop(
        server,
        tmp_path,
        how,
        entrypoint="daemons.py:spawn_daemon",
        working_dir=str(FLOWS),
        parameters={"pidfile": str(tmp_path / "daemon.pid")},
        **timeout,
    )
    assert done["state"]["type"] == ("CANCELLED" if how == "cancel" else "FAILED"), done["state"]
