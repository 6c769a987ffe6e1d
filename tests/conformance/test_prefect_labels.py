"""A run launched by the agent carries what Prefect's worker gives it (issue 13, item 8).

Prefect 3.9.1's worker (``prefect/workers/base.py``) labels each run with the worker and its
pool, starts the engine with ``PREFECT__*`` attribution variables, writes its own lines into the
run's logs and records ``infrastructure_pid`` (the bare pid; Prefect 2's agent writes
``host:pid``). Against real Prefect 3.9.1 and 2.20.27 servers and the real ``agent``.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from tests.conformance.harness import Agents, PrefectHarness
from tests.support import wait_for

# Prefect engines start slowly on a busy machine; each scenario starts at least one.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

START_TIMEOUT = 120


def test_labels_environment_log_lines_and_pid_are_the_workers(
    prefect_harness: PrefectHarness, prefect_agents: Agents, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    queue = prefect_harness.queue()
    deployment = prefect_harness.deployment(queue, "hooks.py:hooked", marker_dir=str(marks))
    _, name = prefect_agents.start(queue)
    run_id = prefect_harness.run(deployment, seconds=0)
    state = prefect_harness.wait_state(run_id, timeout=START_TIMEOUT)
    assert state["type"] == "COMPLETED", prefect_harness.history(run_id)

    run = prefect_harness.ok("GET", f"flow_runs/{run_id}")
    pool = prefect_harness.ok("GET", f"work_pools/{queue.pool}")
    deployed = prefect_harness.ok("GET", f"deployments/{deployment}")
    env = dict(line.split("=", 1) for line in (marks / f"{run_id}.env").read_text().splitlines())
    assert env["PREFECT__FLOW_RUN_ID"] == run_id
    assert env["PREFECT__WORKER_NAME"] == name
    assert env["PREFECT__FLOW_ID"] == run["flow_id"]
    assert env["PREFECT__FLOW_NAME"] == "hooked"
    assert env["PREFECT__DEPLOYMENT_ID"] == deployment
    assert env["PREFECT__DEPLOYMENT_NAME"] == deployed["name"]
    # Set only where the engine has already run the pull steps (3.9's workspace supervisor).
    assert "PREFECT__FLOW_ENTRYPOINT" not in env
    # The control channel's one-shot variables are consumed by the engine before the flow.
    assert "PREFECT__CONTROL_TOKEN" not in env

    pid = run["infrastructure_pid"]
    if prefect_harness.kind == "prefect3":
        assert env["PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS"] == "false"
        assert re.fullmatch(r"\d+", pid), pid  # as the process worker writes it
        labels = run["labels"]
        assert labels["prefect.worker.name"] == name, labels
        assert labels["prefect.worker.type"] == "process", labels
        assert labels["prefect.work-pool.name"] == queue.pool, labels
        assert labels["prefect.work-pool.id"] == pool["id"], labels
    else:
        # Prefect 2's agent leaves the hooks to the engine, and writes host:pid.
        assert "PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS" not in env
        assert re.fullmatch(rf"{re.escape(socket.gethostname())}:\d+", pid), pid

    def worker_lines() -> list[str] | None:
        lines = [
            str(line["message"])
            for line in prefect_harness.logs(run_id)
            if line["name"] == "prefect.flow_runs.worker"
        ]
        return lines if len(lines) >= 2 else None

    lines = wait_for(worker_lines, timeout=10, what="the worker's lines in the run's logs")
    assert lines == [
        f"Worker '{name}' submitting flow run '{run_id}'",
        f"Flow run '{run['name']}' submitted to infrastructure",
    ], lines
