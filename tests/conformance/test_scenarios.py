"""The same scenarios against every kind of server: ours, Prefect 3, and the seed's Prefect 2.

Each test runs once per server (``server`` fixture). Against Prefect the agent runs each flow
with Prefect's own engine (``python -m prefect.engine`` from the Prefect venv), which reports
RUNNING and the final state itself; against ours, with our bootstrap. Where one kind of server
cannot show something, the test says why and checks what it can.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from tests.conformance.harness import (
    STUB_ENGINE,
    TERMINAL,
    Agents,
    Harness,
    pid_gone,
    unique,
)
from tests.support import AGENT, wait_for

pytestmark = pytest.mark.integration

# The engine of a real Prefect run takes ~2 s of CPU to start; on two busy cores, more.
START_TIMEOUT = 90


def wait_running(server: Harness, run_id: str) -> int:
    """Wait until the flow itself runs; its process id."""
    server.wait_state(run_id, {"RUNNING"} | TERMINAL, timeout=START_TIMEOUT)
    assert server.state(run_id)["type"] == "RUNNING", server.state(run_id)
    return wait_for(lambda: server.flow_pid(run_id), timeout=10, what="the flow's pid")


def test_a_run_is_claimed_and_completed_with_its_result(server: Harness, agents: Agents) -> None:
    queue = server.queue()
    deployment = server.deployment(queue, "flows.py:add", a=1, b=2)
    agents.start(queue)

    run = server.run(deployment, b=40)

    state = server.wait_state(run, timeout=START_TIMEOUT)
    assert state["type"] == "COMPLETED", state
    assert server.result(run) == 41
    assert server.history(run) == ["SCHEDULED", "PENDING", "RUNNING", "COMPLETED"]


@pytest.mark.timeout(420)
def test_four_agents_racing_over_100_runs_claim_each_exactly_once(
    server: Harness, agents: Agents, tmp_path: Path
) -> None:
    """Each run is claimed once (one PENDING transition) and executed once (one marker file).

    Against Prefect the runs use a stand-in engine (tests/conformance/stub_engine): the real one
    costs ~2 s of CPU per run, and what races here is the claim, not the engine.
    """
    markers = tmp_path / "markers"
    markers.mkdir()
    queue = server.queue()
    deployment = server.deployment(queue, "flows.py:mark", marker_dir=str(markers))
    runs = [server.run(deployment) for _ in range(100)]
    stub = {"PYTHONPATH": str(STUB_ENGINE)} if server.kind != "native" else {}
    for _ in range(4):
        agents.start(queue, "--limit", "5", env=stub, engine_args=False)

    for run in runs:
        state = server.wait_state(run, timeout=300)
        assert state["type"] == "COMPLETED", (run, state)
    executed = sorted(path.name[:36] for path in markers.iterdir())  # "<run id>-<pid>"
    assert executed == sorted(runs)
    # Prefect accepts a late PENDING on a run that already ended; the agent that made it puts
    # the run back at once and logs claim_undone (see test_prefect_protocol.py). Those do not
    # count: the run was neither started nor left changed.
    undone = Counter(
        json.loads(line)["run_id"]
        for text in agents.logs()
        for line in text.splitlines()
        if '"claim_undone"' in line
    )
    assert [server.claims(run) - undone[run] for run in runs] == [1] * 100
    print(f"{server.kind}: {sum(undone.values())} late claims undone")


def test_tag_filters_pick_only_matching_runs(server: Harness, agents: Agents) -> None:
    queue = server.queue()
    deployment = server.deployment(queue, "flows.py:add", a=1, b=1)
    untagged = server.run(deployment)
    other = server.run(deployment, tags=("cpu",))
    tagged = server.run(deployment, tags=("gpu", "big"))
    agents.start(queue, "--tag", "gpu")

    assert server.wait_state(tagged, timeout=START_TIMEOUT)["type"] == "COMPLETED"
    time.sleep(2)  # several polls later, the others are still untouched
    assert server.state(untagged)["type"] == "SCHEDULED"
    assert server.state(other)["type"] == "SCHEDULED"
    assert server.claims(untagged) == server.claims(other) == 0


def test_kill_9_of_the_flow_process_is_crashed_within_2s(server: Harness, agents: Agents) -> None:
    queue = server.queue()
    deployment = server.deployment(queue, "flows.py:sleep", seconds=120)
    agents.start(queue)
    run = server.run(deployment)
    pid = wait_running(server, run)

    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    state = server.wait_state(run, timeout=10)
    took = time.monotonic() - killed

    assert state["type"] == "CRASHED", state
    assert "SIGKILL" in (state["message"] or ""), state
    assert took < 2, f"CRASHED after {took:.2f}s"


def test_cancel_ends_cancelled_within_10s_with_no_process_left(
    server: Harness, agents: Agents
) -> None:
    queue = server.queue()
    deployment = server.deployment(queue, "flows.py:sleep", seconds=120)
    agents.start(queue)
    run = server.run(deployment)
    pid = wait_running(server, run)

    server.cancel(run)  # `agent flow-run cancel` / `prefect flow-run cancel`
    asked = time.monotonic()  # the CLI has put the request in (Prefect's takes seconds to load)
    wait_for(lambda: pid_gone(pid), timeout=10, what="the flow's process to be gone")
    server.wait_state(run, {"CANCELLED"}, timeout=max(0.1, 10 - (time.monotonic() - asked)))
    took = time.monotonic() - asked

    assert took < 10, f"took {took:.1f}s"
    time.sleep(1)  # nothing comes after: the agent's report was the last word
    assert server.state(run)["type"] == "CANCELLED", server.history(run)
    # Never CRASHED on the way, not even on Prefect (its engine takes a bare SIGTERM for a
    # crash: the agent tells a 3.x engine first, and kills a 2.x one; test_prefect_hooks.py).
    history = server.history(run)
    assert history == ["SCHEDULED", "PENDING", "RUNNING", "CANCELLING", "CANCELLED"], history


def test_agent_sigterm_during_a_run_ends_it_terminal_never_running(
    server: Harness, agents: Agents
) -> None:
    queue = server.queue()
    deployment = server.deployment(queue, "flows.py:sleep", seconds=120)
    agent, _ = agents.start(queue, env={"AGENT_DRAIN_TIMEOUT_SECONDS": "1"})
    run = server.run(deployment)
    pid = wait_running(server, run)

    agent.send_signal(signal.SIGTERM)
    assert agent.wait(60) == 0, agents.log(agent)

    state = server.state(run)
    assert state["type"] == "CANCELLED", state
    assert state["message"] == "agent shut down", state
    assert pid_gone(pid)


def test_heartbeats_show_the_agent_online(server: Harness, agents: Agents) -> None:
    queue = server.queue()
    agent, name = agents.start(queue)
    wait_for(lambda: server.agent_online(queue, name), timeout=30, what=f"{name} ONLINE")
    # The daemon installs its SIGTERM handler only after its start-up (orphan check); a
    # SIGTERM before that kills it outright, and the fixture expects a clean exit.
    wait_for(lambda: "agent_started" in agents.log(agent), timeout=30, what="agent_started")
    time.sleep(1)


def test_a_same_named_queue_in_another_pool_never_leaks_runs_in(
    server: Harness, agents: Agents
) -> None:
    if server.kind == "native":
        pytest.skip("our server's queue names are unique: no two queues can share a name")
    name = unique("shared")
    ours = server.queue(name=name)
    theirs = server.queue(name=name)  # another pool
    assert ours.pool != theirs.pool
    their_run = server.run(server.deployment(theirs, "flows.py:add", a=1, b=1))
    our_run = server.run(server.deployment(ours, "flows.py:add", a=2, b=2))
    agents.start(queue=ours)

    assert server.wait_state(our_run, timeout=START_TIMEOUT)["type"] == "COMPLETED"
    time.sleep(2)
    assert server.state(their_run)["type"] == "SCHEDULED"
    assert server.claims(their_run) == 0


def test_an_unknown_queue_is_a_clear_error(server: Harness, tmp_path: Path) -> None:
    missing = str(uuid.uuid4())
    result = subprocess.run(
        [AGENT, "start", missing, *server.agent_args()],
        env=server.agent_env(tmp_path) | {"AGENT_LOG_FORMAT": "console"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result
    assert f"error: no work queue with id {missing}" in result.stderr, result.stderr
    # `--backend auto` (the default) told the kinds of server apart by their /health.
    kind = "native" if server.kind == "native" else "prefect"
    assert f"backend={kind}" in result.stderr, result.stderr


# -------------------------------------------------------------------- authenticated servers


@pytest.fixture(params=["native", "prefect3", "prefect2"])
def auth_server(request: pytest.FixtureRequest) -> Harness:
    if request.param == "prefect2":
        pytest.skip(
            "Prefect 2.20.27 has no server-side authentication (PREFECT_SERVER_API_AUTH_STRING "
            "arrived in 3.x); its scenarios above run unauthenticated"
        )
    harness: Harness = request.getfixturevalue(f"{request.param}_auth_harness")
    return harness


def test_an_authenticated_server_serves_runs_and_refuses_bad_credentials(
    auth_server: Harness, tmp_path: Path
) -> None:
    """Ours: an API key (bearer). Prefect 3: basic auth (PREFECT_SERVER_API_AUTH_STRING); the
    flow's engine gets the same credentials (PREFECT_API_AUTH_STRING)."""
    agents = Agents(auth_server, tmp_path)
    try:
        queue = auth_server.queue()
        deployment = auth_server.deployment(queue, "flows.py:add", a=20, b=22)
        agents.start(queue)
        run = auth_server.run(deployment)
        assert auth_server.wait_state(run, timeout=START_TIMEOUT)["type"] == "COMPLETED"
        assert auth_server.result(run) == 42

        wrong = (
            {"AGENT_API_KEY": "wrong"}
            if auth_server.kind == "native"
            else {"AGENT_API_AUTH_STRING": "flowagent:wrong"}
        )
        refused, _ = agents.start(queue, env=wrong | {"AGENT_LOG_FORMAT": "console"})
        assert refused.wait(60) == 1
        assert "refused our credentials (401)" in agents.log(refused), agents.log(refused)
    finally:
        agents.stop_all()


def test_an_agent_restarted_after_kill_9_takes_its_runs_over(
    server: Harness, agents: Agents
) -> None:
    """Prefect's worker, SIGKILLed, leaves its runs RUNNING with nobody watching; ours, started
    again under the same name, takes over what its earlier life left executing and sees it to
    its end: the same process, never a CRASHED in between."""
    queue = server.queue()
    deployment = server.deployment(queue, "flows.py:sleep", seconds=8)
    first, name = agents.start(queue)
    run = server.run(deployment)
    pid = wait_running(server, run)

    first.kill()
    first.wait(10)
    assert not pid_gone(pid), "the flow outlives its agent"
    agents.start(queue, name=name)

    state = server.wait_state(run, timeout=60)
    assert state["type"] == "COMPLETED", state
    assert "CRASHED" not in server.history(run)
    assert server.flow_pid(run) == pid
    # Prefect's engine reports COMPLETED itself, a moment before its process exits.
    wait_for(lambda: pid_gone(pid), timeout=10, what="the flow process to exit")
