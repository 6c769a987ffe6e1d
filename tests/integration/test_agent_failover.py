"""Agents and the CLI given several replicas' URLs move to the next when the one they use
dies: two replicas on one PostgreSQL, an agent given both, the replica it talks to SIGKILLed
while its runs are RUNNING. Every run completes once (counted from what the flows wrote), in
its first attempt, with every line it printed, and the CLI goes on working through the
survivor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.replicas import client, kill, replicas
from tests.support import (
    cli,
    get_run,
    log_lines,
    make_deployment,
    make_queue,
    make_run,
    start_agent,
    stop,
    wait_for,
    wait_state,
)

pytestmark = pytest.mark.integration

RUNS = 3


def agent_events(path: Path, name: str) -> int:
    count = 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            if json.loads(line).get("event") == name:
                count += 1
        except (ValueError, AttributeError):
            continue
    return count


def test_an_agent_fails_over_when_its_replica_is_killed_mid_run(
    tmp_path: Path, postgres_url: str
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    with replicas(tmp_path, postgres_url) as (a, b), client(b) as api:
        queue = make_queue(api)
        deployment = make_deployment(
            api,
            queue,
            entrypoint="sample.py:phases",
            parameters={"marker_dir": str(markers)},
        )
        both = f"{a.url},{b.url}"  # the agent starts on a
        agent_log = tmp_path / "agent.log"
        agent = start_agent(a, queue["id"], log_path=agent_log, AGENT_API_URL=both)
        try:
            runs = [make_run(api, deployment)["id"] for _ in range(RUNS)]
            for run_id in runs:
                wait_state(api, run_id, {"RUNNING"}, timeout=60)
            wait_for(lambda: len(list(markers.glob("exec-*.json"))) == RUNS, what="the flows")

            kill(a)  # mid-run: every run RUNNING, its output and final report still to come
            (markers / "go-1").touch()
            (markers / "go-2").touch()

            for run_id in runs:
                run = wait_state(api, run_id, timeout=60)
                assert run["state"]["type"] == "COMPLETED", run
                assert run["attempt"] == 1
            assert agent.poll() is None, "the agent must live on"
        finally:
            stop(agent)
        executed = [json.loads(p.read_text())["run"] for p in markers.glob("exec-*.json")]
        assert sorted(executed) == sorted(runs)  # each run executed once, none twice
        for run_id in runs:
            lines = log_lines(api, run_id)
            for expected in ("before", "during 0", "during 1", "during 2", "after"):
                assert lines.count(expected) == 1, (run_id, expected, lines)
            assert get_run(api, run_id)["state"]["type"] == "COMPLETED"
        assert agent_events(agent_log, "api_fail_over") >= 1

        # The CLI too: the first URL is dead, the second answers.
        listed = cli(b, "work-queue", "ls", env={"AGENT_API_URL": both})
        assert queue["name"] in listed.stdout
        shown = cli(b, "--api-url", a.url, "--api-url", b.url, "flow-run", "inspect", runs[0])
        assert "COMPLETED" in shown.stdout
