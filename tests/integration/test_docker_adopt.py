"""Docker re-adoption against a real dockerd: an agent dies, the next life supervises its runs.

An agent's death is simulated at the runner level: one DockerRunner starts the run inside one
``asyncio.run`` and is dropped without waiting for the run (``asyncio.run`` cancels the handle's
supervision as it returns, the runner's finalizer closes its client), as a killed agent would
leave it. A fresh DockerRunner then adopts the run in a new event loop.

The flow is steered through an inbox the test writes to (mounted read-only): each message is a
line to print, or an order to return, raise or run out of memory.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar
from uuid import uuid4

import pytest

from agent.errors import RunnerError
from runners.base import Outcome, RunHandle, RunResult, RunSpec
from runners.docker import DockerRunner
from tests.contract.dockerd import (
    BASE_IMAGE,
    RUN_LABEL,
    client,
    labelled,
    none_left_behind,
    our_containers,
)

pytestmark = pytest.mark.integration

T = TypeVar("T")
TIMEOUT = 30  # seconds; only reached when something is broken

FLOW = """
import sys
import time
from pathlib import Path


def obey(inbox: str):
    box, seen = Path(inbox), set()
    print("ready", flush=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for message in sorted(box.glob("*.say")):
            if message.name in seen:
                continue
            seen.add(message.name)
            text = message.read_text()
            if text == "return":
                return {"answer": 42}
            if text == "raise":
                print("about to fail", file=sys.stderr, flush=True)
                raise ValueError("told to fail")
            if text == "hog":
                hog = [bytearray(1024 * 1024) for _ in range(512)]
                print(f"allocated {len(hog)} MiB", flush=True)
            print(text, flush=True)
        time.sleep(0.02)
    raise TimeoutError("nobody told the flow to end")
"""


class Sink:
    """Collects a run's output; a test can wait for a particular line."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __call__(self, stream: str, line: str) -> None:
        self.lines.append((stream, line))

    def text(self) -> list[str]:
        return [line for _, line in self.lines]

    async def line(self, text: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while text not in self.text():
            assert time.monotonic() < deadline, f"{text!r} never came; got {self.lines}"
            await asyncio.sleep(0.02)


class Run:
    """One run of the ``obey`` flow: its spec, and the inbox that steers it."""

    def __init__(self, tmp_path: Path, **options: Any) -> None:
        work, self.inbox = tmp_path / "work", tmp_path / "inbox"
        work.mkdir(parents=True)
        self.inbox.mkdir()
        (work / "adopt_flows.py").write_text(FLOW)
        for directory in (tmp_path, work, self.inbox):
            directory.chmod(0o755)  # the container's user must be able to read them
        self.spec = RunSpec(
            run_id=uuid4(),
            working_dir=work,
            entrypoint="adopt_flows.py:obey",
            parameters={"inbox": str(self.inbox)},
            labels={"flowagent.deployment": "adopt-test"},
            options={
                "image": BASE_IMAGE,
                "volumes": [f"{self.inbox}:{self.inbox}:ro"],
                **options,
            },
        )
        self._said = 0

    def say(self, text: str) -> None:
        self._said += 1
        draft = self.inbox / f"{self._said:03}.tmp"
        draft.write_text(text)
        draft.rename(draft.with_suffix(".say"))  # whole, or not at all, when the flow looks

    def docker(self, look: Callable[[Any], T]) -> T:
        """``look`` at the run's container (straight from dockerd: no agent watches it)."""
        docker_client = client()
        try:
            [container] = labelled(docker_client, f"{RUN_LABEL}={self.spec.run_id}")
            return look(container)
        finally:
            docker_client.close()

    def logs(self) -> list[str]:
        return self.docker(lambda container: container.logs().decode().splitlines())

    def first_life(self, until: str = "ready", *, then: str | None = None) -> dict[str, Any]:
        """Start the run in an agent life that ends, once ``until`` is shipped, without ending
        the run; ``then`` is said right after (the agent's last moments). Returns its info."""

        async def life() -> dict[str, Any]:
            sink = Sink()
            handle = await DockerRunner().start(self.spec, sink)
            await sink.line(until)
            if then is not None:
                self.say(then)
            return dict(handle.info)

        info = arun(life())
        gc.collect()  # the runner and its handle are gone: its finalizer closed the client
        return info

    def exited(self) -> dict[str, Any]:
        """Wait, without an agent, for the container to exit; its State."""

        def state(container: Any) -> dict[str, Any]:
            container.wait(timeout=TIMEOUT)
            container.reload()
            return dict(container.attrs["State"])

        return self.docker(state)


def arun(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


async def adopt(run: Run, info: dict[str, Any], since: float) -> tuple[RunHandle, Sink]:
    sink = Sink()
    handle = await DockerRunner().adopt(run.spec, {**info, "output_since": since}, sink)
    return handle, sink


def wait_until(check: Any, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def gone(info: dict[str, Any]) -> bool:
    """Once its outcome is recorded and its remains discarded (as the agent's fence does), the
    run left nothing behind: neither its container nor its files directory. Until then both
    stay: they are the only record of how it ended."""
    assert info["container_id"] in our_containers(), "removed before the outcome was recorded"
    assert Path(info["files"]).is_dir(), "files removed before the outcome was recorded"
    DockerRunner.discard_remains(info)
    return info["container_id"] not in our_containers() and not Path(info["files"]).exists()


@pytest.fixture(autouse=True)
def dockerd() -> Iterator[None]:
    with none_left_behind():
        yield


def test_an_adopted_run_streams_output_from_output_since_and_completes(tmp_path: Path) -> None:
    run = Run(tmp_path)
    info = run.first_life(then="shipped before")
    assert run.docker(lambda c: c.status) == "running", "the first life's end stopped the run"
    wait_until(lambda: "shipped before" in run.logs(), "the flow to print")
    time.sleep(0.05)
    since = time.time()  # what the dead agent had surely shipped
    time.sleep(0.05)
    run.say("printed while nobody watched")
    wait_until(lambda: "printed while nobody watched" in run.logs(), "the flow to print")

    async def second_life() -> tuple[RunResult, Sink, dict[str, Any]]:
        handle, sink = await adopt(run, info, since)
        await sink.line("printed while nobody watched")
        run.say("printed after adoption")
        await sink.line("printed after adoption")
        run.say("return")
        return await handle.wait(), sink, handle.info

    result, sink, adopted_info = arun(second_life())

    assert result.outcome is Outcome.COMPLETED, result
    assert result.result == {"answer": 42}
    assert result.exit_code == 0
    # Only what was printed after output_since is replayed, once, in order.
    assert sink.text() == ["printed while nobody watched", "printed after adoption"]
    assert adopted_info == info
    assert gone(info)


def test_a_failing_adopted_flow_fails_with_its_error(tmp_path: Path) -> None:
    run = Run(tmp_path)
    info = run.first_life()

    async def second_life() -> RunResult:
        handle, _ = await adopt(run, info, time.time())
        run.say("raise")
        return await handle.wait()

    result = arun(second_life())

    assert result.outcome is Outcome.FAILED, result
    assert result.message.startswith("ValueError: told to fail\nlast lines of stderr:\n")
    assert "about to fail" in result.message
    assert result.exit_code == 1
    assert gone(info)


@pytest.mark.parametrize(("action", "signal"), [("interrupt", "SIGTERM"), ("terminate", "SIGKILL")])
def test_an_adopted_run_can_be_interrupted_and_terminated(
    tmp_path: Path, action: str, signal: str
) -> None:
    run = Run(tmp_path)
    info = run.first_life()

    async def second_life() -> RunResult:
        handle, sink = await adopt(run, info, time.time())
        run.say("adopted")
        await sink.line("adopted")
        await getattr(handle, action)()
        return await handle.wait()

    result = arun(second_life())

    assert result.outcome is Outcome.CRASHED, result
    assert result.message == f"killed by signal {signal}"
    assert gone(info)


@pytest.mark.parametrize(
    ("order", "options", "outcome", "message"),
    [
        ("return", {}, Outcome.COMPLETED, "completed"),
        ("raise", {}, Outcome.FAILED, "ValueError: told to fail"),
        ("hog", {"memory": "64m"}, Outcome.CRASHED, "out of memory (limit 64m)"),
    ],
)
def test_a_run_that_ended_while_unwatched_reports_its_real_outcome(
    tmp_path: Path, order: str, options: dict[str, Any], outcome: Outcome, message: str
) -> None:
    run = Run(tmp_path, **options)
    info = run.first_life(then="last words")
    wait_until(lambda: "last words" in run.logs(), "the flow to print")
    time.sleep(0.05)
    since = time.time()
    time.sleep(0.05)
    run.say("unwatched")
    run.say(order)
    state = run.exited()
    assert state["Status"] == "exited"

    async def second_life() -> tuple[RunResult, Sink]:
        handle, sink = await adopt(run, info, since)
        result = await handle.wait()
        assert await handle.wait() == result  # as safe to call twice as a started run's
        await handle.terminate()  # over already: nothing to do, and no error
        return result, sink

    result, sink = arun(second_life())

    assert result.outcome is outcome, result
    assert result.message.split("\n")[0] == message
    assert result.exit_code == state["ExitCode"]
    if order == "return":
        assert result.result == {"answer": 42}
    assert "unwatched" in sink.text()
    assert "last words" not in sink.text()
    assert gone(info)


def test_a_container_whose_id_is_unknown_is_found_by_its_label(tmp_path: Path) -> None:
    run = Run(tmp_path)
    info = run.first_life()

    async def second_life(record: dict[str, Any]) -> RunResult:
        handle, sink = await adopt(run, record, time.time())
        run.say("found")
        await sink.line("found")
        run.say("return")
        return await handle.wait()

    result = arun(second_life({**info, "container_id": "0" * 64}))

    assert result.outcome is Outcome.COMPLETED, result
    assert result.result == {"answer": 42}
    assert gone(info)


def test_a_gone_container_cannot_be_adopted_and_its_files_are_cleaned_up(
    tmp_path: Path,
) -> None:
    run = Run(tmp_path)
    files = tmp_path / "flowagent-docker-gone"
    files.mkdir()
    info = {"container_id": "0" * 64, "files": str(files), "image": BASE_IMAGE}

    with pytest.raises(RunnerError, match=r"container 000000000000 is gone.* label flowagent"):
        arun(adopt(run, info, time.time()))
    assert not files.exists()

    with pytest.raises(RunnerError, match=f"no container carries the label.*{run.spec.run_id}"):
        arun(adopt(run, {}, time.time()))


def test_another_runs_container_is_not_adopted(tmp_path: Path) -> None:
    run = Run(tmp_path)
    info = run.first_life()
    impostor = Run(tmp_path / "other")

    with pytest.raises(RunnerError, match=f"not this run's.*{run.spec.run_id}"):
        arun(adopt(impostor, info, time.time()))

    # The refused adoption touched neither the container nor its files: the run's own agent
    # still can adopt it.
    assert run.docker(lambda c: c.status) == "running"
    assert Path(info["files"]).is_dir()

    async def second_life() -> RunResult:
        handle, _ = await adopt(run, info, time.time())
        await handle.terminate()
        return await handle.wait()

    assert arun(second_life()).outcome is Outcome.CRASHED
    assert gone(info)
