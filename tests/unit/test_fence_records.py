"""How a run ended survives an agent killed between reaping the run's process and recording
its outcome (found by the 10,000-run chaos: finished work run again, "its process ended without
recording how"). Real processes through the real subprocess runner; the agent's two steps are
called here as the supervisor calls them, so the kill lands exactly between them."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from agent.fence import FenceDir
from runners.base import Outcome, RunSpec
from runners.subprocess import SubprocessRunner


def result_file(info: dict[str, Any]) -> Path:
    return Path(str(info["_result_file"]))


def spec(tmp_path: Path) -> RunSpec:
    return RunSpec(run_id=uuid.uuid4(), working_dir=tmp_path, command=["sh", "-c", "exit 0"])


@pytest.fixture
def fence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FenceDir:
    """An agent's fence directory; result files go to ``tmp_path`` (TMPDIR), to be counted."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    fence = FenceDir(tmp_path / "agent")
    fence.runs.mkdir(parents=True)
    return fence


def test_the_result_file_outlives_the_reaped_process_until_the_outcome_is_recorded(
    tmp_path: Path, fence: FenceDir
) -> None:
    runner = SubprocessRunner()

    async def main() -> None:
        run = spec(tmp_path)
        handle = await runner.start(run, lambda stream, line: None)
        info = handle.info
        fence.register(run.run_id, info, {"info": info}, runner=runner)
        first = await handle.wait()
        assert first.outcome is Outcome.COMPLETED

        # The agent dies here: the process is reaped (its exit status gone with the agent),
        # and the outcome is not yet in the fence entry. The next life can still tell.
        assert result_file(info).exists()
        again = await runner.adopt(run, info, lambda stream, line: None)
        assert (await again.wait()).outcome is Outcome.COMPLETED

        # Recorded: the entry now says how it ended, and names the file for whoever forgets it.
        fence.record_outcome(run.run_id, {}, {"type": "COMPLETED"})
        assert fence.registered()[run.run_id]["ended"] is True
        assert result_file(fence.registered()[run.run_id]["remains"]) == result_file(info)

        # Forgotten (the server has the outcome): now, and only now, the runner's record goes.
        fence.unregister(run.run_id)
        assert not result_file(info).exists()

    asyncio.run(main())


def test_unregistering_a_run_removes_its_result_file(tmp_path: Path, fence: FenceDir) -> None:
    runner = SubprocessRunner()

    async def main() -> None:
        run = spec(tmp_path)
        handle = await runner.start(run, lambda stream, line: None)
        fence.register(run.run_id, handle.info, {"info": handle.info}, runner=runner)
        await handle.wait()
        fence.unregister(run.run_id)
        assert not result_file(handle.info).exists()

    asyncio.run(main())
    assert list(tmp_path.glob("flowagent-result-*")) == []
