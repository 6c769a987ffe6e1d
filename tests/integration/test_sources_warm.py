"""The warm path of sources: cached trees per commit and per bundle, copied for each run.

Real git, a real server, real agents. What the cache must never cost: a run seeing another's
files, a run of a moved branch getting the old commit, a changed tree or bundle being run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gitrepos import Repo, git, make_repo
from tests.support import (
    Server,
    cli,
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

server = server_fixture("sources-warm")

# Reports what the run found in its own directory, then leaves marks in it: a new file and a
# change to a file of the commit. With ``hold``, waits for ``<out>.release`` before ending.
SCRIBBLER = """\
import json
import pathlib
import time


def main(out: str, hold: bool = False) -> None:
    here = pathlib.Path(__file__).resolve().parent
    seen = {
        "version": (here / "VERSION").read_text().strip(),
        "scratch": (here / "scratch.txt").exists(),
        "cwd": str(pathlib.Path.cwd()),
    }
    (here / "scratch.txt").write_text(out)
    (here / "VERSION").write_text("scribbled\\n")
    pathlib.Path(out).write_text(json.dumps(seen))
    while hold and not pathlib.Path(out + ".release").exists():
        time.sleep(0.02)
"""


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    repo = make_repo(tmp_path / "git")
    repo.commit({"scribbler.py": SCRIBBLER, "VERSION": "v1\n"}, "first")
    return repo


@pytest.fixture
def agent_on(server: Server, tmp_path: Path) -> Iterator[Any]:
    started: list[subprocess.Popen[bytes]] = []

    def start(queue: dict[str, Any], home: Path, *args: str, **env: str) -> Any:
        home.mkdir(exist_ok=True)
        name = f"w-{time.monotonic_ns()}"
        process = start_agent(
            server,
            queue["id"],
            "--name",
            name,
            *args,
            log_path=home / "agent.log",
            AGENT_HOME=str(home),
            **env,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            assert stop(process) == 0, f"agent exited {process.returncode}"


def counting_git(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A ``git`` first on the agent's PATH that logs its arguments, then runs the real one."""
    real = shutil.which("git")
    assert real is not None
    bin_dir, calls = tmp_path / "bin", tmp_path / "git-calls.log"
    bin_dir.mkdir()
    shim = bin_dir / "git"
    shim.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {real} "$@"\n')
    shim.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}, calls


def git_calls(calls: Path) -> list[str]:
    """The git commands the agent ran since the last call (each line: a command's args)."""
    found = calls.read_text().splitlines() if calls.exists() else []
    calls.write_text("")
    # The subcommand: what follows git's own options (--git-dir X, -c k=v).
    names = []
    for line in found:
        words = line.split()
        while words and words[0] in {"--git-dir", "-c"}:
            words = words[2:]
        names.append(words[0] if words else "")
    return names


def seen(out: Path) -> dict[str, Any]:
    return dict(json.loads(out.read_text()))


def scribble(api: Any, deployment: dict[str, Any], tmp_path: Path, **params: Any) -> Any:
    out = tmp_path / f"seen-{uuid.uuid4().hex}"
    return make_run(api, deployment, parameters={"out": str(out), **params}), out


def trees(home: Path) -> list[Path]:
    return sorted(p for p in (home / "sources" / "trees" / "git").glob("*/*") if p.is_dir())


def test_runs_of_one_commit_never_see_each_others_files(api, agent_on, repo, tmp_path) -> None:
    queue = make_queue(api)
    deployment = make_deployment(
        api, queue, working_dir=None, entrypoint="scribbler.py:main", source={"git": repo.url}
    )
    home = tmp_path / "h"
    agent_on(queue, home, "--limit", "2")

    # One after the other: the second gets the commit's files, not what the first left.
    first, first_out = scribble(api, deployment, tmp_path)
    assert wait_state(api, first["id"])["state"]["type"] == "COMPLETED"
    second, second_out = scribble(api, deployment, tmp_path)
    assert wait_state(api, second["id"])["state"]["type"] == "COMPLETED"
    # At the same time: one holds its directory (scribbled in) while another runs.
    holding, holding_out = scribble(api, deployment, tmp_path, hold=True)
    wait_for(holding_out.exists, timeout=30, what="the holding run to scribble")
    third, third_out = scribble(api, deployment, tmp_path)
    assert wait_state(api, third["id"])["state"]["type"] == "COMPLETED"
    Path(f"{holding_out}.release").touch()
    assert wait_state(api, holding["id"])["state"]["type"] == "COMPLETED"

    for out in (first_out, second_out, holding_out, third_out):
        assert seen(out)["version"] == "v1" and seen(out)["scratch"] is False, seen(out)
    cwds = {seen(out)["cwd"] for out in (first_out, second_out, holding_out, third_out)}
    assert len(cwds) == 4  # a directory of its own each
    # The shared tree is as the commit has it, and read-only.
    (tree,) = trees(home)
    assert (tree / "VERSION").read_text() == "v1\n" and not (tree / "scratch.txt").exists()
    assert (tree / "VERSION").stat().st_mode & 0o222 == 0


def test_the_commits_tree_is_built_once_and_a_warm_run_starts_one_git(
    api, agent_on, repo, tmp_path
) -> None:
    repo.commit(
        {
            "flaky.py": "import os\n\ndef main(out: str) -> None:\n"
            "    assert os.environ['FLOWAGENT_ATTEMPT'] == '2'\n"
        },
        "fails once",
    )
    queue = make_queue(api)
    deployment = make_deployment(
        api, queue, working_dir=None, entrypoint="scribbler.py:main", source={"git": repo.url}
    )
    flaky = make_deployment(
        api,
        queue,
        working_dir=None,
        entrypoint="flaky.py:main",
        source={"git": repo.url, "ref": "main"},
        retries=1,
    )
    home = tmp_path / "h"
    env, calls = counting_git(tmp_path)
    agent_on(queue, home, **env)
    cold, _ = scribble(api, deployment, tmp_path)
    assert wait_state(api, cold["id"])["state"]["type"] == "COMPLETED"
    assert "archive" in git_calls(calls)  # the cold run built the tree

    warm, _ = scribble(api, deployment, tmp_path)
    assert wait_state(api, warm["id"])["state"]["type"] == "COMPLETED"
    # Only the remote is asked what HEAD is now: no fetch, no archive, no lookup in the mirror.
    assert git_calls(calls) == ["ls-remote"]

    retried, _ = scribble(api, flaky, tmp_path)
    done = wait_state(api, retried["id"], timeout=60)
    assert done["state"]["type"] == "COMPLETED" and done["attempt"] == 2, done["state"]
    # The first attempt asked for main; the retry ran its recorded commit with no git at all.
    assert git_calls(calls) == ["ls-remote"]
    assert done["source"]["commit"] == repo.head()
    built = [line for line in (home / "agent.log").read_text().splitlines() if "tree_built" in line]
    assert len(built) == 1 and repo.head() in built[0]
    assert [tree.name for tree in trees(home)] == [repo.head()]


def test_a_moved_branch_gives_the_next_run_its_new_head_and_back(
    api, agent_on, repo, tmp_path
) -> None:
    first = repo.head()
    queue = make_queue(api)
    deployment = make_deployment(
        api,
        queue,
        working_dir=None,
        entrypoint="scribbler.py:main",
        source={"git": repo.url, "ref": "main"},
    )
    home = tmp_path / "h"
    agent_on(queue, home)
    runs = []

    def one() -> tuple[dict[str, Any], dict[str, Any]]:
        run, out = scribble(api, deployment, tmp_path)
        done = wait_state(api, run["id"])
        assert done["state"]["type"] == "COMPLETED", done["state"]
        runs.append(done)
        return done, seen(out)

    one()
    second = repo.commit({"VERSION": "v2\n"}, "second")
    moved, saw_moved = one()
    again, saw_again = one()
    # Force-pushed back: the remote's main is the first commit again, whose tree is cached.
    git("push", "-q", "-f", "origin", f"{first}:refs/heads/main", cwd=repo.work)
    back, saw_back = one()

    assert moved["source"]["commit"] == second and saw_moved["version"] == "v2"
    assert again["source"]["commit"] == second and saw_again["version"] == "v2"
    assert back["source"]["commit"] == first and saw_back["version"] == "v1"
    assert sorted(tree.name for tree in trees(home)) == sorted([first, second])


def test_a_changed_tree_or_bundle_on_disk_is_never_run(api, server, agent_on, tmp_path) -> None:
    upload = tmp_path / "upload"
    upload.mkdir()
    (upload / "scribbler.py").write_text(SCRIBBLER)
    (upload / "VERSION").write_text("v1\n")
    queue = make_queue(api)
    made = cli(
        server,
        "deployment",
        "create",
        "scribbler.py:main",
        "--name",
        f"b-{time.monotonic_ns()}",
        "--queue",
        queue["name"],
        "--upload",
        str(upload),
    )
    deployment = json.loads(cli(server, "deployment", "inspect", made.stdout.strip()).stdout)
    home = tmp_path / "h"
    agent_on(queue, home)

    def one() -> dict[str, Any]:
        run, out = scribble(api, deployment, tmp_path)
        assert wait_state(api, run["id"])["state"]["type"] == "COMPLETED"
        return seen(out)

    assert one()["version"] == "v1"
    tree = next(p for p in (home / "sources" / "trees" / "bundles").iterdir() if p.is_dir())
    # Someone with the agent's rights changes a file of the unpacked bundle.
    (tree / "VERSION").chmod(0o644)
    (tree / "VERSION").write_text("v6\n")
    # The next run may take a copy made before the change; the one after copies the tree.
    assert [one()["version"] for _ in range(3)] == ["v1", "v1", "v1"]
    log = (home / "agent.log").read_text()
    assert "source_tree_changed" in log
    assert (tree / "VERSION").read_text() == "v1\n"  # built again from the verified archive
