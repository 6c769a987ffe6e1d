"""The fence kills what a run started by asking the runner that started it (real processes)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from agent.fence import kill_listed
from runners.base import OrphanKiller
from runners.docker import DockerRunner
from runners.inprocess import InProcessRunner
from runners.subprocess import SubprocessRunner


@pytest.fixture
def orphan() -> Iterator[subprocess.Popen[bytes]]:
    """A run's process in its own session, with a child of its own (a tree to kill)."""
    process = subprocess.Popen(["sh", "-c", "sleep 300 & wait"], start_new_session=True)
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()


def listed(process: subprocess.Popen[bytes]) -> dict[str, Any]:
    ps = psutil.Process(process.pid)
    deadline = time.monotonic() + 10
    while not ps.children() and time.monotonic() < deadline:
        time.sleep(0.01)
    return {"pid": process.pid, "pgid": process.pid, "create_time": ps.create_time()}


def dead(process: subprocess.Popen[bytes], children: list[psutil.Process]) -> bool:
    process.wait(timeout=10)
    _, alive = psutil.wait_procs(children, timeout=10)
    return process.returncode is not None and not alive


def test_runners_that_outlive_the_agent_can_kill_an_orphan_and_the_in_process_one_cannot() -> None:
    assert issubclass(SubprocessRunner, OrphanKiller)
    assert issubclass(DockerRunner, OrphanKiller)
    assert not issubclass(InProcessRunner, OrphanKiller)


@pytest.mark.parametrize(
    "entry",
    [
        lambda info: {"runner": "subprocess", "info": info},
        lambda info: info,  # flat, as an earlier version listed it
        lambda info: {"runner": "no-such-runner", "info": info},  # its process tree still dies
    ],
    ids=["named", "flat", "unknown-runner"],
)
def test_a_listed_process_tree_is_killed(orphan: subprocess.Popen[bytes], entry: Any) -> None:
    info = listed(orphan)
    children = psutil.Process(orphan.pid).children(recursive=True)
    assert children

    assert kill_listed(entry(info)) is True

    assert dead(orphan, children)
    assert kill_listed(entry(info)) is False  # gone now: nothing killed, no error


def test_a_reused_pid_is_not_killed(orphan: subprocess.Popen[bytes]) -> None:
    info = listed(orphan) | {"create_time": 1.0}  # the listed process started long ago

    assert kill_listed({"runner": "subprocess", "info": info}) is False
    assert orphan.poll() is None
