"""How a Docker run ended survives its agent, killed anywhere between the container's exit and
the agent recording the outcome (the Docker side of the gap the 10,000-run chaos found for the
subprocess runner: the runner removed the container and its result file as the run ended, so an
agent killed before its record had nothing to tell the outcome by, and the run was executed
again). Real containers on a real dockerd and the agent's real fence directory; the agent's steps
are called here as the supervisor calls them, so its death lands exactly between two of them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.fence import FenceDir
from runners.base import Outcome, RunSpec
from runners.docker import DockerRunner
from tests.contract.dockerd import BASE_IMAGE, client, none_left_behind, our_containers

pytestmark = pytest.mark.integration

FLOWS = Path(__file__).parents[1] / "contract" / "flows"
TIMEOUT = 60  # seconds; only reached when something is broken


@pytest.fixture(autouse=True)
def dockerd() -> Iterator[None]:
    with none_left_behind():
        yield


@pytest.fixture
def fence(tmp_path: Path) -> FenceDir:
    fence = FenceDir(tmp_path / "agent")
    fence.runs.mkdir(parents=True)
    return fence


def spec(**options: Any) -> RunSpec:
    return RunSpec(
        run_id=uuid.uuid4(),
        working_dir=FLOWS,
        entrypoint="contract_flows.py:add",
        parameters={"a": 2, "b": 40},
        options={"image": BASE_IMAGE, **options},
    )


def quiet(stream: str, line: str) -> None:
    pass


def first_life(fence: FenceDir, run: RunSpec) -> dict[str, Any]:
    """Start the run, list it with the fence as the supervisor does, and see it end; the agent
    dies right after (nothing recorded). Returns the run's handle info."""
    runner = DockerRunner()

    async def life() -> dict[str, Any]:
        handle = await runner.start(run, quiet)
        info = dict(handle.info)
        fence.register(run.run_id, info, {"info": info}, runner=runner)
        result = await asyncio.wait_for(handle.wait(), TIMEOUT)
        assert result.outcome is Outcome.COMPLETED, result
        return info

    return asyncio.run(life())


def next_life(run: RunSpec, info: dict[str, Any]) -> Any:
    async def life() -> Any:
        handle = await DockerRunner().adopt(run, info, quiet)
        return await asyncio.wait_for(handle.wait(), TIMEOUT)

    return asyncio.run(life())


def test_an_exited_container_outlives_the_run_until_its_outcome_is_recorded(
    fence: FenceDir,
) -> None:
    run = spec()
    info = first_life(fence, run)

    # The agent died before recording: the container and its result file are still there, so
    # the next life reports the run as it ended (with its result), not as lost.
    assert info["container_id"] in our_containers()
    again = next_life(run, info)
    assert again.outcome is Outcome.COMPLETED, again
    assert again.result == {"sum": 42}

    # Recorded, and still kept: the agent may die before the server has the outcome.
    fence.record_outcome(run.run_id, {}, {"type": "COMPLETED"})
    assert info["container_id"] in our_containers()
    assert Path(info["files"]).is_dir()

    # Forgotten (the server has it): now, and only now, everything goes.
    fence.unregister(run.run_id)
    assert info["container_id"] not in our_containers()
    assert not Path(info["files"]).exists()


def test_the_fence_leaves_a_container_that_had_exited_for_the_agents_next_life(
    fence: FenceDir,
) -> None:
    run = spec()
    info = first_life(fence, run)

    # The lease ran out (the agent is dead): the fence fires after the container had exited.
    [(run_id, what)] = fence.fence(age=99.0)
    assert (run_id, what) == (run.run_id, "already ended")
    assert info["container_id"] in our_containers()

    again = next_life(run, info)
    assert again.outcome is Outcome.COMPLETED, again
    fence.unregister(run.run_id)
    assert info["container_id"] not in our_containers()
    assert not Path(info["files"]).exists()


def test_a_kept_container_is_kept_and_only_its_files_go(fence: FenceDir) -> None:
    run = spec(auto_remove=False)
    info = first_life(fence, run)
    fence.unregister(run.run_id)
    try:
        assert info["container_id"] in our_containers()  # the run asked to keep it
        assert not Path(info["files"]).exists()
    finally:
        docker_client = client()
        docker_client.containers.get(info["container_id"]).remove(force=True)
        docker_client.close()


def test_a_container_created_held_and_never_released_is_removed_by_the_fence(
    fence: FenceDir,
) -> None:
    run = dataclasses.replace(spec(), held=True)
    runner = DockerRunner()

    async def life() -> dict[str, Any]:
        handle = await runner.start(run, quiet)
        info = dict(handle.info)
        fence.register(run.run_id, info, {"info": info}, runner=runner)
        return info  # the agent dies before releasing it: its flow never begins

    info = asyncio.run(life())
    assert info["container_id"] in our_containers()

    [(_, what)] = fence.fence(age=99.0)
    assert what == "killed"
    assert info["container_id"] not in our_containers()
    assert not Path(info["files"]).exists()
