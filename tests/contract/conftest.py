"""One fixture, ``harness``, over every runner we ship, for the contract suite in this folder.

A harness knows how to build a :class:`RunSpec` for its runner (a Docker image, say) and what the
runner cannot do, with the reason: a test that needs such a case skips, saying which runner
cannot express it and why. Each test gets its own working directory holding the shared flows.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from uuid import uuid4

import psutil
import pytest

from runners.base import OutputSink, RemainsKeeper, RunHandle, Runner, RunSpec
from runners.docker import DockerRunner
from runners.inprocess import InProcessRunner
from runners.subprocess import SubprocessRunner
from tests.contract.dockerd import BASE_IMAGE, our_containers, require_dockerd

T = TypeVar("T")
FLOWS = Path(__file__).parent / "flows"
TIMEOUT = 30  # seconds; only reached when something is broken


class Sink:
    """Collects a run's output lines; a test can wait for a particular one."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self._waiters: list[tuple[str, asyncio.Future[None]]] = []

    def __call__(self, stream: str, line: str) -> None:
        self.lines.append((stream, line))
        for text, future in self._waiters:
            if text == line and not future.done():
                future.set_result(None)

    def of(self, stream: str) -> list[str]:
        return [line for s, line in self.lines if s == stream]

    async def line(self, text: str) -> None:
        """Return once ``text`` has been output (on either stream)."""
        if any(line == text for _, line in self.lines):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((text, future))
        await asyncio.wait_for(future, TIMEOUT)


@dataclass
class Harness:
    name: str
    runner: Runner
    working_dir: Path
    options: dict[str, Any] = field(default_factory=dict)
    #: What the runner cannot do: capability -> why.
    limits: dict[str, str] = field(default_factory=dict)

    def needs(self, capability: str) -> None:
        if capability in self.limits:
            pytest.skip(f"{self.name} runner: {self.limits[capability]}")

    def spec(self, entrypoint: str | None = None, **fields: Any) -> RunSpec:
        if entrypoint is not None:
            fields["entrypoint"] = f"contract_flows.py:{entrypoint}"
        # As the agent builds it: its own environment first, the run's on top.
        fields["env"] = dict(os.environ) | fields.get("env", {})
        fields.setdefault("options", self.options)
        return RunSpec(run_id=uuid4(), working_dir=self.working_dir, **fields)

    #: Every handle started, for their remains to be discarded at the end (as the agent's fence
    #: does once it has recorded a run's outcome).
    started: list[RunHandle] = field(default_factory=list)

    async def start(self, entrypoint: str | None = None, **fields: Any) -> tuple[RunHandle, Sink]:
        sink = Sink()
        return await self.start_spec(self.spec(entrypoint, **fields), sink), sink

    async def start_spec(self, spec: RunSpec, sink: OutputSink) -> RunHandle:
        handle = await self.runner.start(spec, sink)
        self.started.append(handle)
        return handle

    def discard_remains(self) -> None:
        if isinstance(self.runner, RemainsKeeper):
            for handle in self.started:
                self.runner.discard_remains(handle.info)


def arun(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


NO_OOM = "sets no memory limit, so nothing is OOM-killed"
IN_PROCESS: dict[str, str] = {
    "cwd": "in-process flows share the agent's working directory (a chdir would move every run)",
    "env": "in-process flows share the agent's os.environ (one per process)",
    "command": "runs Python entrypoints only, not commands",
    "sigkill": "a flow in the agent's process cannot be SIGKILLed without killing the agent",
    "oom": NO_OOM,
}


def _harness(name: str, working_dir: Path) -> Harness:
    if name == "subprocess":
        return Harness(name, SubprocessRunner(), working_dir, limits={"oom": NO_OOM})
    if name == "docker":
        require_dockerd()
        return Harness(name, DockerRunner(), working_dir, options={"image": BASE_IMAGE})
    return Harness(name, InProcessRunner(), working_dir, limits=IN_PROCESS)


@pytest.fixture(params=["subprocess", "docker", "inprocess"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    working_dir = tmp_path / "work"
    shutil.copytree(FLOWS, working_dir)
    # Docker's bind mounts (and a container user that is not us) must be able to read it.
    working_dir.chmod(0o755)
    harness = _harness(request.param, working_dir)
    children = set(psutil.Process().children(recursive=True))
    containers = our_containers() if harness.name == "docker" else {}
    yield harness
    harness.discard_remains()
    if harness.name == "docker":
        assert our_containers() == containers, "containers left behind"
    # Zombies count too: every run's process must have been reaped.
    left = [p for p in psutil.Process().children(recursive=True) if p not in children]
    assert left == [], "processes left behind"
