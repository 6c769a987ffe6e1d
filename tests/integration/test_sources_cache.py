"""`agent sources ls|prune` and pruning at agent start-up, on a host that ran real sources."""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gitrepos import FLOW, make_repo
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

DAY = 86400


server = server_fixture("sources-cache")


@pytest.fixture
def host(api: httpx.Client, server: Server, tmp_path: Path) -> Path:
    """An agent home that ran one git run and one bundle run, the agent stopped since."""
    repo = make_repo(tmp_path / "git")
    repo.commit({"hello.py": FLOW, "VERSION": "v1\n"})
    upload = tmp_path / "upload"
    upload.mkdir()
    (upload / "hello.py").write_text(FLOW)
    (upload / "VERSION").write_text("v1\n")
    queue = make_queue(api)
    from_git = make_deployment(
        api, queue, working_dir=None, entrypoint="hello.py:main", source={"git": repo.url}
    )
    made = cli(
        server,
        "deployment",
        "create",
        "hello.py:main",
        "--name",
        f"u-{time.monotonic_ns()}",
        "--queue",
        queue["name"],
        "--upload",
        str(upload),
    )
    from_bundle = json.loads(cli(server, "deployment", "inspect", made.stdout.strip()).stdout)
    home = tmp_path / "host"
    home.mkdir()
    agent = start_agent(server, queue["id"], "--name", "cache", AGENT_HOME=str(home))
    try:
        for deployment in (from_git, from_bundle):
            out = str(tmp_path / uuid.uuid4().hex)
            run = make_run(api, deployment, parameters={"out": out})
            assert wait_state(api, run["id"])["state"]["type"] == "COMPLETED"
    finally:
        assert stop(agent) == 0
    return home


def listed(server: Server, home: Path) -> list[dict[str, Any]]:
    shown = cli(server, "sources", "ls", "--json", env={"AGENT_HOME": str(home)}).stdout
    return list(json.loads(shown))


def age_everything(home: Path, seconds: float) -> None:
    then = time.time() - seconds
    for path in (home / "sources").rglob("*"):
        os.utime(path, (then, then), follow_symlinks=False)


def test_ls_shows_mirrors_and_bundles_and_prune_removes_only_the_unused(server, host) -> None:
    kinds = sorted(entry["kind"] for entry in listed(server, host))
    # The commit's tree is listed on its own (pruned by its own last use); a bundle's tree is
    # counted in the bundle's entry.
    assert kinds == ["bundle", "git", "tree"]
    env = {"AGENT_HOME": str(host)}

    kept = cli(server, "sources", "prune", "--older-than", "1d", env=env)
    assert "removed 0 item(s)" in kept.stdout
    age_everything(host, 2 * DAY)
    dry = cli(server, "sources", "prune", "--older-than", "1d", "--dry-run", env=env)
    assert "would remove 3 item(s)" in dry.stdout
    assert len(listed(server, host)) == 3

    gone = cli(server, "sources", "prune", "--older-than", "1d", env=env)

    assert "removed 3 item(s)" in gone.stdout
    assert listed(server, host) == []
    assert [p for p in (host / "sources" / "git").iterdir() if p.is_dir()] == []
    assert list((host / "sources" / "bundles").glob("*.tar.gz")) == []
    # The unpacked trees went with them, read-only as they were: no file, no manifest left.
    trees = host / "sources" / "trees"
    assert [p for p in trees.rglob("*") if not p.is_dir()] == []
    assert sorted(p.relative_to(trees).as_posix() for p in trees.rglob("*")) == ["bundles", "git"]


def test_prune_leaves_what_a_run_is_reading(server, host) -> None:
    age_everything(host, 2 * DAY)
    (use,) = (host / "sources" / "git").glob("*.use")
    fd = os.open(use, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # as a run resolving and exporting holds it
        cli(server, "sources", "prune", "--older-than", "1d", env={"AGENT_HOME": str(host)})
        # The mirror and its commit's tree: a run copying the tree holds the mirror's lock.
        assert [entry["kind"] for entry in listed(server, host)] == ["git", "tree"]
    finally:
        os.close(fd)


def test_an_agent_prunes_at_start_up(api, server, host) -> None:
    age_everything(host, 2 * DAY)
    queue = make_queue(api)
    agent = start_agent(
        server, queue["id"], "--name", "cache", AGENT_HOME=str(host), AGENT_SOURCE_MAX_IDLE="3600"
    )
    try:
        wait_for(lambda: listed(server, host) == [], timeout=30, what="the agent to prune")
    finally:
        assert stop(agent) == 0
