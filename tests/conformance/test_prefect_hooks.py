"""A run's cancellation and crash hooks run as under Prefect's worker (issue 13, item 7).

Prefect 3's worker starts the engine with ``PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS=false``
and runs ``on_cancellation`` / ``on_crashed`` itself, after the flow's process is gone: a cancel
is CANCELLING > CANCELLED with the cancellation hooks and no CRASHED; a killed process is CRASHED
with the crash hooks. Against real Prefect 3.9.1 and 2.20.27 servers, the real ``agent``, and
a flow whose hooks count themselves (tests/conformance/flows/hooks.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conformance.harness import TERMINAL, Agents, PrefectHarness, pid_gone
from tests.support import wait_for

# Prefect engines start slowly on a busy machine; each scenario starts at least one.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

START_TIMEOUT = 120


def start_hooked(
    prefect_harness: PrefectHarness, agents: Agents, marks: Path, **env: str
) -> tuple[subprocess.Popen[bytes], str, int]:
    """An agent and one run of the hooked flow, once the flow itself runs: (agent, run, pid)."""
    marks.mkdir(exist_ok=True)
    queue = prefect_harness.queue()
    deployment = prefect_harness.deployment(queue, "hooks.py:hooked", marker_dir=str(marks))
    agent, _ = agents.start(queue, env=env)
    run = prefect_harness.run(deployment)

    def flow_pid() -> int | None:
        path = marks / f"{run}.pid"
        if not path.exists():
            assert prefect_harness.state(run)["type"] not in TERMINAL, prefect_harness.history(run)
            return None
        return int(path.read_text())

    return agent, run, wait_for(flow_pid, timeout=START_TIMEOUT, what="the flow to run")


def hook_calls(marks: Path, run: str, kind: str) -> list[str]:
    path = marks / f"{run}.{kind}"
    return path.read_text().splitlines() if path.exists() else []


def messages(prefect_harness: PrefectHarness, run: str) -> str:
    return "\n".join(str(line["message"]) for line in prefect_harness.logs(run))


def test_a_cancel_runs_the_cancellation_hooks_and_never_crashes(
    prefect_harness: PrefectHarness, prefect_agents: Agents, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    _, run, pid = start_hooked(prefect_harness, prefect_agents, marks)

    prefect_harness.cancel(run)
    wait_for(lambda: pid_gone(pid), timeout=30, what="the flow's process to be gone")
    prefect_harness.wait_state(run, {"CANCELLED"}, timeout=60)
    wait_for(lambda: hook_calls(marks, run, "cancellation"), timeout=60, what="the hook")
    # Stopped: whatever the agent was going to do to the run is done.
    prefect_agents.stop_all()

    history = prefect_harness.history(run)
    assert history[-3:] == ["RUNNING", "CANCELLING", "CANCELLED"], history
    assert "CRASHED" not in history, history
    calls = hook_calls(marks, run, "cancellation")
    assert len(calls) == 1, calls  # once: not by the engine and again by the agent
    state, hook_pid = calls[0].split()
    assert state == "CANCELLING" and int(hook_pid) != pid, calls
    assert hook_calls(marks, run, "crashed") == []
    assert "Running hook 'mark_cancellation'" in messages(prefect_harness, run)


def test_kill_9_of_the_flow_runs_the_crash_hooks_and_keeps_its_output(
    prefect_harness: PrefectHarness, prefect_agents: Agents, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    _, run, pid = start_hooked(prefect_harness, prefect_agents, marks)

    os.kill(pid, signal.SIGKILL)
    state = prefect_harness.wait_state(run, timeout=30)
    assert state["type"] == "CRASHED", state
    wait_for(lambda: hook_calls(marks, run, "crashed"), timeout=60, what="the crash hook")
    prefect_agents.stop_all()

    calls = hook_calls(marks, run, "crashed")
    assert len(calls) == 1 and calls[0].split()[0] == "CRASHED", calls
    assert hook_calls(marks, run, "cancellation") == []
    assert prefect_harness.history(run)[-1] == "CRASHED", prefect_harness.history(run)
    # What the flow printed (never shipped by the engine: no log_prints) is in the run's logs.
    text = messages(prefect_harness, run)
    for i in range(5):
        assert f"flow output line {i} of {run}" in text, text
    assert "Running hook 'mark_crashed'" in text
    # The worker's own explanation, as Prefect's worker logs it.
    assert "Process exited with status code: -9. Process exited due to a SIGKILL" in text, text


def test_an_agent_shutdown_that_cancels_a_run_runs_its_cancellation_hooks(
    prefect_harness: PrefectHarness, prefect_agents: Agents, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    agent, run, pid = start_hooked(
        prefect_harness, prefect_agents, marks, AGENT_DRAIN_TIMEOUT_SECONDS="1"
    )

    agent.send_signal(signal.SIGTERM)
    assert agent.wait(90) == 0, prefect_agents.log(agent)

    state = prefect_harness.state(run)
    assert state["type"] == "CANCELLED" and state["message"] == "agent shut down", state
    assert pid_gone(pid)
    history = prefect_harness.history(run)
    assert "CRASHED" not in history, history
    calls = hook_calls(marks, run, "cancellation")
    assert len(calls) == 1 and calls[0].split()[0] == "CANCELLING", calls
    assert hook_calls(marks, run, "crashed") == []
