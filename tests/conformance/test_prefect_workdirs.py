"""Each Prefect run executes its own code, in a working directory of its own (issue 13, 1-2).

Prefect's engine fetches a deployment's code into its current directory (``git_clone`` into
``<cwd>/<repo>``, Prefect 2's local ``path`` copied into ``.``), so runs started in one shared
directory read each other's files and can run another deployment's flow. Prefect's worker starts
each engine in a fresh temporary directory and removes it afterwards; so must the agent. Against
real Prefect 3 and 2.20.27 servers, with real git repositories and the real ``agent``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conformance.harness import (
    FLOWS,
    TERMINAL,
    Agents,
    PrefectHarness,
    Queue,
    clean_env,
    unique,
)
from tests.support import wait_for

pytestmark = pytest.mark.integration

START_TIMEOUT = 120

#: One commit's flow: what its code says, and what its checkout holds when the run starts and
#: again once the test lets it go on (by then the other run has fetched its own commit).
FLOW = """\
import os
import time
from pathlib import Path

from prefect import flow

CODE = "{version}"


@flow
def which(gate: str) -> str:
    first = Path("version.txt").read_text().strip()
    Path(gate, os.environ["PREFECT__FLOW_RUN_ID"]).write_text(first)
    deadline = time.time() + 120
    while not Path(gate, "go").exists() and time.time() < deadline:
        time.sleep(0.1)
    again = Path("version.txt").read_text().strip()
    return f"{{CODE}}/{{first}}/{{again}}"
"""


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    )
    return result.stdout.strip()


def commit(repo: Path, version: str) -> str:
    (repo / "flows.py").write_text(FLOW.format(version=version))
    (repo / "version.txt").write_text(version + "\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", version)
    return git(repo, "rev-parse", "HEAD")


def assert_removed(workdirs: Path) -> None:
    """The agent's runs' directories are all gone (soon after the runs' ends)."""
    wait_for(
        lambda: not workdirs.exists() or not os.listdir(workdirs),
        timeout=30,
        what=f"{workdirs} to be empty",
    )


def deploy(prefect: PrefectHarness, queue: Queue, entrypoint: str, **fields: Any) -> str:
    flow = prefect.ok("POST", "flows/", json={"name": entrypoint.rpartition(":")[2]})
    body = {
        "name": unique("d"),
        "flow_id": flow["id"],
        "work_pool_name": queue.pool,
        "work_queue_name": queue.name,
        "entrypoint": entrypoint,
        **fields,
    }
    return str(prefect.ok("POST", "deployments/", json=body)["id"])


def test_git_clone_runs_each_read_their_own_commit(
    prefect_harness: PrefectHarness, prefect_agents: Agents, tmp_path: Path
) -> None:
    """Two deployments of one repository at different commits, runs overlapping: each run reads
    its own commit from start to end, and the agent's directory is left as it was.

    Prefect 3 pins each deployment to a commit (``commit_sha``). Prefect 2's ``git_clone`` takes
    only a branch, and names its checkout ``<repo>-<branch>``: both deployments follow ``main``,
    which moves from X to Y between the first run's clone and the second's.
    """
    repo = tmp_path / "project"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    first_commit = commit(repo, "X")
    gate = tmp_path / "gate"
    gate.mkdir()
    agent_cwd = tmp_path / "agent-cwd"
    agent_cwd.mkdir()
    queue = prefect_harness.queue()

    def deployment(sha: str) -> str:
        clone: dict[str, Any] = {"repository": f"file://{repo}"}
        if prefect_harness.kind == "prefect3":
            clone["commit_sha"] = sha
        else:
            clone["branch"] = "main"
        steps = [{"prefect.deployments.steps.git_clone": clone}]
        return deploy(prefect_harness, queue, "flows.py:which", pull_steps=steps)

    _, name = prefect_agents.start(queue, "--limit", "4", cwd=agent_cwd)
    run_x = prefect_harness.run(deployment(first_commit), gate=str(gate))
    wait_for(lambda: (gate / run_x).exists(), timeout=START_TIMEOUT, what="run X to start")
    run_y = prefect_harness.run(deployment(commit(repo, "Y")), gate=str(gate))
    wait_for(lambda: (gate / run_y).exists(), timeout=START_TIMEOUT, what="run Y to start")
    # Both are running now, each past its clone.
    assert {prefect_harness.state(run_x)["type"], prefect_harness.state(run_y)["type"]} == {
        "RUNNING"
    }
    (gate / "go").touch()

    for run in (run_x, run_y):
        state = prefect_harness.wait_state(run, TERMINAL, timeout=START_TIMEOUT)
        assert state["type"] == "COMPLETED", state
    assert prefect_harness.result(run_x) == "X/X/X"
    assert prefect_harness.result(run_y) == "Y/Y/Y"
    assert sorted(os.listdir(agent_cwd)) == []
    # Each run's directory goes with its end (the engine reports it a moment before).
    assert_removed(prefect_agents.workdirs(name))


PROJECT_FLOW = """\
import time

from prefect import flow


@flow
def hello() -> str:
    time.sleep(1)
    return "{project}"
"""

BUILD = """\
import sys

from prefect.deployments import Deployment

from flows import hello

deployment = Deployment.build_from_flow(
    hello, name=sys.argv[1], work_pool_name=sys.argv[2], work_queue_name=sys.argv[3]
)
print(deployment.apply())
"""


@pytest.mark.timeout(600)
def test_prefect2_local_path_deployments_each_run_their_own_project(
    prefect2_harness: PrefectHarness, tmp_path: Path
) -> None:
    """Two projects with the same ``flows.py:hello``, deployed with ``Deployment.build_from_flow``
    (a local path, no pull steps: the 2.x engine copies the path into its working directory and
    imports the entrypoint from there). 8 runs of each at once: each runs its own project's code,
    and nothing lands in the agent's directory."""
    prefect = prefect2_harness
    queue = prefect.queue()
    deployments = {}
    for project in ("alpha", "beta"):
        source = tmp_path / project
        source.mkdir()
        (source / "flows.py").write_text(PROJECT_FLOW.format(project=project))
        (source / "build.py").write_text(BUILD)
        built = subprocess.run(
            [prefect.python, "build.py", unique(project), queue.pool or "", queue.name],
            cwd=source,
            env=clean_env(**prefect.prefect_env()),
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        deployments[project] = built.stdout.strip().splitlines()[-1]
        assert prefect.ok("GET", f"deployments/{deployments[project]}")["path"] == str(source)

    runs = {prefect.run(deployments[p]): p for p in ("alpha", "beta") for _ in range(8)}
    agent_cwd = tmp_path / "agent-cwd"
    agent_cwd.mkdir()
    agents = Agents(prefect, tmp_path)
    try:
        _, name = agents.start(queue, "--limit", "16", cwd=agent_cwd)
        ran = {}
        for run, project in runs.items():
            state = prefect.wait_state(run, TERMINAL, timeout=300)
            assert state["type"] == "COMPLETED", (project, state)
            ran[run] = prefect.result(run)
    finally:
        agents.stop_all()
    wrong = [(project, ran[run]) for run, project in runs.items() if ran[run] != project]
    assert wrong == []
    assert sorted(os.listdir(agent_cwd)) == []
    assert_removed(agents.workdirs(name))


def test_a_restarted_agent_removes_the_directories_of_runs_that_ended_meanwhile(
    prefect_harness: PrefectHarness, prefect_agents: Agents, tmp_path: Path
) -> None:
    """Killed (-9) while two runs execute, the agent leaves their directories behind; the runs go
    on without it. Its next life removes the directory of the run that ended meanwhile, takes
    the other over in its own directory, and removes that one when it ends."""
    queue = prefect_harness.queue()
    # No pull steps: the engine copies ``path`` into its working directory (both versions).
    deployment = deploy(prefect_harness, queue, "flows.py:until_exists", path=str(FLOWS))
    agent_cwd = tmp_path / "agent-cwd"
    agent_cwd.mkdir()
    first, name = prefect_agents.start(queue, "--limit", "2", cwd=agent_cwd)
    # Each ends when the test says (a file), not after a sleep: a short sleep could end before
    # the kill under load, and the live agent would then remove its directory itself.
    end_short, end_long = tmp_path / "end-short", tmp_path / "end-long"
    short, long = (
        prefect_harness.run(deployment, path=str(end_short)),
        prefect_harness.run(deployment, path=str(end_long)),
    )
    workdirs = prefect_agents.workdirs(name)
    for run in (short, long):
        assert (
            prefect_harness.wait_state(run, {"RUNNING"} | TERMINAL, timeout=START_TIMEOUT)["type"]
            == "RUNNING"
        )
        assert (workdirs / run / "flows.py").exists()
    first.kill()
    first.wait()
    end_short.touch()
    assert prefect_harness.wait_state(short, TERMINAL, timeout=START_TIMEOUT)["type"] == "COMPLETED"
    assert (workdirs / short).exists()  # nobody left to remove it

    prefect_agents.start(queue, "--limit", "2", name=name, cwd=agent_cwd)
    wait_for(lambda: not (workdirs / short).exists(), timeout=60, what="the ended run's directory")
    assert prefect_harness.state(long)["type"] == "RUNNING"
    assert (workdirs / long / "flows.py").exists()
    end_long.touch()
    assert prefect_harness.wait_state(long, TERMINAL, timeout=START_TIMEOUT)["type"] == "COMPLETED"
    wait_for(lambda: not (workdirs / long).exists(), timeout=30, what="the long run's directory")
    assert sorted(os.listdir(agent_cwd)) == []
