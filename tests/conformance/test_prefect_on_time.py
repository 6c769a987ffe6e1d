"""Scheduled Prefect runs begin on time (issue 13, 9).

Prefect's worker claims runs up to PREFECT_WORKER_PREFETCH_SECONDS (10 s) before they are due
and starts their engine at once; the server answers the engine's RUNNING with WAIT until the
scheduled time, so the flow begins on time instead of one engine start-up (~2 s) late. The agent
does the same (``prefetch_seconds``). Against real Prefect 3 and 2.20.27 servers.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conformance.harness import TERMINAL, Agents, PrefectHarness
from tests.support import wait_for

pytestmark = pytest.mark.integration


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_a_run_scheduled_15s_ahead_is_running_within_half_a_second_of_its_time(
    prefect_harness: PrefectHarness, prefect_agents: Agents
) -> None:
    queue = prefect_harness.queue()
    deployment = prefect_harness.deployment(queue, "flows.py:add", a=1, b=2)
    prefect_agents.start(queue)
    due = datetime.now(UTC) + timedelta(seconds=15)
    body = {
        "parameters": {},
        "state": {"type": "SCHEDULED", "state_details": {"scheduled_time": due.isoformat()}},
    }
    run = str(
        prefect_harness.ok("POST", f"deployments/{deployment}/create_flow_run", json=body)["id"]
    )

    assert prefect_harness.wait_state(run, TERMINAL, timeout=60)["type"] == "COMPLETED"
    states = prefect_harness.ok("GET", "flow_run_states/", params={"flow_run_id": run})
    stamps = {s["type"]: when(s["timestamp"]) for s in states}
    late = (stamps["RUNNING"] - due).total_seconds()
    early = (due - stamps["PENDING"]).total_seconds()
    print(f"{prefect_harness.kind}: claimed {early:.2f}s early, RUNNING {late:+.3f}s from its time")
    # Either side: the server rounds its WAIT to whole seconds, and accepts RUNNING once less
    # than half a second is left (core_policy.py, WaitForScheduledTime), for Prefect's worker too.
    assert -0.5 <= late <= 0.5, late
    assert 0 < early <= 10.5, early  # claimed ahead, never more than the prefetch


RETRIED_FLOW = """\
import os
import time
from pathlib import Path

from prefect import flow


@flow(retries=1, retry_delay_seconds=3)
def flaky(marker_dir: str) -> int:
    marks = Path(marker_dir)
    attempt = len(list(marks.iterdir()))
    (marks / f"{attempt}-{os.getpid()}").write_text("")
    if attempt == 0:
        raise RuntimeError("the first attempt fails")
    time.sleep(3)
    return attempt
"""


def test_a_flow_retrying_in_its_process_is_not_claimed_again(
    prefect_harness: PrefectHarness, prefect_agents: Agents, tmp_path: Path
) -> None:
    """A flow's retry waits in its engine as AwaitingRetry, a SCHEDULED state due within the
    prefetch: the engine runs it again itself, so no agent may claim it, neither the one that
    runs it nor another on the queue (a second engine would run the flow twice, in the first
    one's directory). What keeps it off the scheduled list is the server's bookkeeping: the
    AwaitingRetry replaces a rejected FAILED, so the run's ``next_scheduled_start_time``, which
    ``get_scheduled_flow_runs`` filters on, stays unset (3.9.1 ``global_policy.py``,
    SetNextScheduledStartTime; 2.20.27 the same)."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "retried.py").write_text(RETRIED_FLOW)
    marks = tmp_path / "marks"
    marks.mkdir()
    queue = prefect_harness.queue()
    flow = prefect_harness.ok("POST", "flows/", json={"name": "flaky"})
    steps = [{"prefect.deployments.steps.set_working_directory": {"directory": str(source)}}]
    body = {
        "name": "flaky",
        "flow_id": flow["id"],
        "work_pool_name": queue.pool,
        "work_queue_name": queue.name,
        "entrypoint": "retried.py:flaky",
        "pull_steps": steps,
    }
    deployment = prefect_harness.ok("POST", "deployments/", json=body)["id"]
    prefect_agents.start(queue)
    prefect_agents.start(queue)
    run = prefect_harness.run(deployment, marker_dir=str(marks))

    assert prefect_harness.wait_state(run, TERMINAL, timeout=90)["type"] == "COMPLETED"
    assert prefect_harness.result(run) == 1
    assert len({name.split("-")[1] for name in os.listdir(marks)}) == 1  # one process
    assert sorted(name.split("-")[0] for name in os.listdir(marks)) == ["0", "1"]
    assert prefect_harness.claims(run) == 1


def test_a_prefetched_run_cancelled_before_its_time_never_runs(
    prefect_harness: PrefectHarness, prefect_agents: Agents, tmp_path: Path
) -> None:
    """Claimed ahead, its engine waiting for the scheduled time, a run cancelled meanwhile ends
    CANCELLED without ever being RUNNING, and its flow never begins."""
    marks = tmp_path / "marks"
    marks.mkdir()
    queue = prefect_harness.queue()
    deployment = prefect_harness.deployment(queue, "flows.py:mark", marker_dir=str(marks))
    # Claimed 25 s ahead (not the default 10): the engine's start-up must not use up the time
    # before the run is due on a busy machine, or there is nothing left to cancel.
    prefect_agents.start(queue, env={"AGENT_PREFETCH_SECONDS": "25"})
    due = datetime.now(UTC) + timedelta(seconds=35)
    body = {
        "parameters": {},
        "state": {"type": "SCHEDULED", "state_details": {"scheduled_time": due.isoformat()}},
    }
    run = str(
        prefect_harness.ok("POST", f"deployments/{deployment}/create_flow_run", json=body)["id"]
    )
    prefect_harness.wait_state(run, {"PENDING"}, timeout=30)  # claimed ~25 s ahead
    wait_for(lambda: prefect_harness.flow_pid(run), timeout=10, what="the engine to start")

    prefect_harness.cancel(run)

    # Prefect 3's engine answers the SIGTERM with a forced CRASHED; the agent's CANCELLED
    # follows a moment later (docs/PREFECT_BACKEND.md, "Cancellation history").
    prefect_harness.wait_state(run, {"CANCELLED"}, timeout=30)
    assert datetime.now(UTC) < due  # over before it was due
    assert "RUNNING" not in prefect_harness.history(run)
    assert os.listdir(marks) == []
