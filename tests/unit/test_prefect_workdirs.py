"""RunDirs: one fresh directory per Prefect run, under the agent name's own directory."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from agent.backends.prefect_workdirs import RunDirs


def test_a_run_gets_a_fresh_private_directory_under_its_agent_s(tmp_path: Path) -> None:
    dirs = RunDirs(tmp_path)
    dirs.bind("host/q 1")
    run = uuid.uuid4()

    path = dirs.create(run)
    assert path == tmp_path / "agents" / "host_q_1" / "workdirs" / str(run)
    assert path.is_dir() and os.listdir(path) == []
    assert path.stat().st_mode & 0o777 == 0o700
    (path / "left.txt").write_text("by an earlier claim of the run")
    assert os.listdir(dirs.create(run)) == []  # fresh again


def test_removal_takes_read_only_trees_and_unknown_runs_in_its_stride(tmp_path: Path) -> None:
    dirs = RunDirs(tmp_path)
    RunDirs(tmp_path).remove(uuid.uuid4())  # not bound yet: nothing to do
    dirs.bind("a")
    run = uuid.uuid4()
    locked = dirs.create(run) / "clone" / "objects"
    locked.mkdir(parents=True)
    (locked / "pack").write_text("x")
    locked.chmod(0o500)
    dirs.remove(run)
    assert not dirs.path(run).exists()
    dirs.remove(uuid.uuid4())


def test_leftovers_are_the_runs_with_a_directory(tmp_path: Path) -> None:
    dirs = RunDirs(tmp_path)
    dirs.bind("a")
    assert dirs.leftovers() == []
    runs = {uuid.uuid4(), uuid.uuid4()}
    for run in runs:
        dirs.create(run)
    (dirs.root / "not-a-run").mkdir()
    assert set(dirs.leftovers()) == runs


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs /proc")
def test_a_directory_a_live_process_works_in_is_in_use(tmp_path: Path) -> None:
    dirs = RunDirs(tmp_path)
    dirs.bind("a")
    busy, idle = uuid.uuid4(), uuid.uuid4()
    inner = dirs.create(busy) / "repo"
    inner.mkdir()
    dirs.create(idle)
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], cwd=inner)
    try:
        assert dirs.in_use([busy, idle]) == {busy}
    finally:
        process.kill()
        process.wait()
    assert dirs.in_use([busy, idle]) == set()
