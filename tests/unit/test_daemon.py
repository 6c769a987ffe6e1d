"""The agent daemon and its run supervisor, in-process: an in-memory backend, a fake runner.

No server, no flow processes: each test drives a real :class:`Agent` through one policy — claim
→ launch → report, drain on SIGTERM, the second signal, a lost lease, cancel → interrupt →
grace → kill, a timeout — and reads what it reported. The integration tests prove the same
against the real server and real processes; these say precisely which step does what, fast.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import pytest

from agent.backends.memory import InMemoryBackend
from agent.config import Settings
from agent.daemon import EXIT_OK, Agent, AgentOptions
from agent.errors import ConfigError, ServerUnavailable
from agent.models import FlowRun, StateType
from runners.base import Outcome, RunResult
from runners.testing import FakeHandle, FakeRunner

T = TypeVar("T")
TIMEOUT = 20.0


@dataclass
class Rig:
    backend: InMemoryBackend
    runner: FakeRunner
    agent: Agent
    task: asyncio.Task[int]

    async def handle(self, run: FlowRun) -> FakeHandle:
        handle = await within(self.runner.started(run.id))
        await within(handle.began.wait())  # released: the agent proposed RUNNING, it was taken
        return handle

    async def state(self, run: FlowRun, *states: StateType) -> str:
        """Wait until ``run`` is in one of ``states``; its history then."""
        await until(lambda: self.backend.runs[run.id].state.type in states, f"{run.id} {states}")
        return self.backend.runs[run.id].state.message or ""


async def within(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, TIMEOUT)


async def until(check: Callable[[], bool], what: str) -> None:
    async def poll() -> None:
        while not check():  # noqa: ASYNC110 - the backend has no event to wait on
            await asyncio.sleep(0.01)

    try:
        await within(poll())
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


@asynccontextmanager
async def running(
    tmp_path: Path, *, ignore_interrupt: bool = False, **settings: Any
) -> AsyncIterator[Rig]:
    backend = InMemoryBackend(lease_seconds=settings.pop("lease_seconds", 30.0))
    queue = backend.add_queue()
    runner = FakeRunner(ignore_interrupt=ignore_interrupt)
    fast = {
        "heartbeat_seconds": 0.05,
        "cancel_poll_seconds": 0.05,
        "claim_wait_seconds": 0.2,
        "cancel_grace_seconds": 0.3,
        "drain_timeout_seconds": 5.0,
        "startup_timeout_seconds": 1.0,
        "limit": 4,
    }
    agent = Agent(
        Settings(home=tmp_path, **(fast | settings)),
        AgentOptions(queues=(str(queue.id),), name="unit", runner="fake"),
        backend,
        runners={"fake": runner},
    )
    task = asyncio.create_task(agent.run())
    rig = Rig(backend, runner, agent, task)
    try:
        yield rig
    finally:
        if not task.done():
            agent.on_signal(signal.SIGTERM)
            agent.on_signal(signal.SIGTERM)  # the second: cancel what still runs
            await within(asyncio.shield(task))


def add_run(rig: Rig, **deployment: Any) -> FlowRun:
    [queue] = rig.backend.queues.values()
    return rig.backend.add_run(queue, **deployment)


def arun(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))  # type: ignore[arg-type]


def test_a_claimed_run_is_launched_held_released_and_reported(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as rig:
            run = add_run(rig, parameters={"x": 1})
            handle = await rig.handle(run)
            assert handle.spec.parameters == {"x": 1} and handle.spec.held
            handle.print("stdout", "hello")
            handle.finish(RunResult(Outcome.COMPLETED, "done", 0, {"answer": 42}))
            await rig.state(run, StateType.COMPLETED)
            await until(lambda: "hello" in rig.backend.lines(run.id), "the output line")
        done = rig.backend.runs[run.id]
        assert rig.backend.states(run.id) == ["SCHEDULED", "PENDING", "RUNNING", "COMPLETED"]
        assert done.runner_info["result"] == {"answer": 42} and done.runner_info["fake"] is True
        assert rig.task.result() == EXIT_OK

    arun(scenario())


def test_sigterm_stops_claiming_lets_runs_finish_then_cancels_the_rest(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path, drain_timeout_seconds=0.5) as rig:
            finishing, lingering = add_run(rig), add_run(rig)
            first, second = await rig.handle(finishing), await rig.handle(lingering)
            rig.agent.on_signal(signal.SIGTERM)
            signalled = len(rig.backend.calls)
            late = add_run(rig)  # made after the signal: never claimed
            first.finish(RunResult(Outcome.COMPLETED, "done", 0))
            message = await rig.state(lingering, StateType.CANCELLED)
            assert await within(rig.task) == EXIT_OK
        assert rig.backend.runs[finishing.id].state.type is StateType.COMPLETED
        assert message == "agent shut down" and second.interrupted
        # A long poll cancelled by the signal may have taken it: it is handed back, never run.
        assert rig.backend.states(late.id)[-1] == "SCHEDULED"
        assert late.id not in rig.runner.handles
        # Heartbeats go on while the runs drain (the lease holds them), until the last report.
        calls = rig.backend.methods()
        last_report = max(i for i, c in enumerate(calls) if c == "set_state")
        assert "heartbeat" in calls[signalled:last_report]
        assert "claim" not in calls[signalled + 1 :]  # one in flight at the signal, no more

    arun(scenario())


def test_a_second_signal_cancels_runs_at_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path, drain_timeout_seconds=60) as rig:
            run = add_run(rig)
            handle = await rig.handle(run)
            rig.agent.on_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            assert not handle.interrupted  # the first only stops claiming
            rig.agent.on_signal(signal.SIGINT)
            assert await rig.state(run, StateType.CANCELLED) == "agent shut down"
            assert handle.interrupted and await within(rig.task) == EXIT_OK

    arun(scenario())


def test_cancel_interrupts_then_kills_a_run_that_ignores_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path, ignore_interrupt=True, cancel_grace_seconds=0.3) as rig:
            run = add_run(rig)
            handle = await rig.handle(run)
            rig.backend.cancel(run.id)
            await rig.state(run, StateType.CANCELLED)
        assert handle.interrupted and handle.terminated
        assert rig.backend.states(run.id)[-2:] == ["CANCELLING", "CANCELLED"]
        lines = rig.backend.lines(run.id)
        assert any("interrupting, 0.3s grace" in line for line in lines), lines
        assert any("terminating" in line for line in lines), lines

    arun(scenario())


def test_a_run_that_obeys_the_interrupt_is_not_killed(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as rig:
            run = add_run(rig)
            handle = await rig.handle(run)
            rig.backend.cancel(run.id)
            await rig.state(run, StateType.CANCELLED)
        assert handle.interrupted and not handle.terminated

    arun(scenario())


def test_a_timeout_fails_the_run(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as rig:
            run = add_run(rig, timeout_seconds=0.2)
            handle = await rig.handle(run)
            message = await rig.state(run, StateType.FAILED)
        assert message == "timed out after 0.2s" and handle.interrupted

    arun(scenario())


def test_a_lost_lease_stops_the_runs_so_they_cannot_run_twice(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path, lease_seconds=1.0) as rig:
            run = add_run(rig)
            handle = await rig.handle(run)
            # The server cannot be reached: no heartbeat renews the lease, no report lands.
            for method in ("heartbeat", "set_state", "send_logs", "claim"):
                rig.backend.failing[method] = ServerUnavailable("down")
            await until(lambda: handle.ended, "the run stopped at half the lease")
            assert handle.interrupted
            # Back: the report the agent kept (spooled) arrives and says why.
            rig.backend.failing.clear()
            message = await rig.state(run, StateType.CRASHED)
        assert "stopped so it cannot run twice" in message

    arun(scenario())


def test_a_run_that_completed_as_its_lease_was_lost_is_reported_completed(
    tmp_path: Path,
) -> None:
    """Its process exits 0 in the instant the lease guard stops it (the interrupt finds it
    gone): its work is done, and CRASHED would have a retry do it again (the chaos suite saw
    this: "finished work done again")."""

    async def scenario() -> None:
        async with running(tmp_path, lease_seconds=1.0, ignore_interrupt=True) as rig:
            run = add_run(rig)
            handle = await rig.handle(run)
            for method in ("heartbeat", "set_state", "send_logs", "claim"):
                rig.backend.failing[method] = ServerUnavailable("down")
            await until(lambda: handle.interrupted, "the lease guard's interrupt")
            handle.finish(RunResult(Outcome.COMPLETED, "done", 0, {"answer": 42}))
            rig.backend.failing.clear()
            await rig.state(run, StateType.COMPLETED)
        assert rig.backend.runs[run.id].runner_info["result"] == {"answer": 42}

    arun(scenario())


def test_a_run_stopped_for_a_lost_lease_that_did_not_complete_is_crashed(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path, lease_seconds=1.0, ignore_interrupt=True) as rig:
            run = add_run(rig)
            handle = await rig.handle(run)
            for method in ("heartbeat", "set_state", "send_logs", "claim"):
                rig.backend.failing[method] = ServerUnavailable("down")
            await until(lambda: handle.interrupted, "the lease guard's interrupt")
            handle.finish(RunResult(Outcome.CRASHED, "killed by SIGTERM", -15))
            rig.backend.failing.clear()
            message = await rig.state(run, StateType.CRASHED)
        assert "stopped so it cannot run twice" in message

    arun(scenario())


def add_later_run(rig: Rig, seconds: float) -> FlowRun:
    """A run due in ``seconds``, which an agent with a start lead claims and holds until then."""
    run = add_run(rig)
    later = run.model_copy(update={"expected_start_time": run.created + timedelta(seconds=seconds)})
    rig.backend.runs[run.id] = later
    return later


def test_a_lease_lost_before_the_flow_began_hands_the_run_back(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path, lease_seconds=1.0, start_lead_seconds=60) as rig:
            run = add_later_run(rig, 30)
            handle = await within(rig.runner.started(run.id))  # launched held, waiting
            for method in ("heartbeat", "set_state", "send_logs", "claim"):
                rig.backend.failing[method] = ServerUnavailable("down")
            await until(lambda: handle.ended, "the held run stopped at half the lease")
            rig.backend.failing.clear()
            # Its history, not its state: once back, the agent may claim it again at once.
            history = rig.backend.history[run.id]
            await until(lambda: len(history) >= 3, f"run {run.id} handed back")
        # It never executed: it goes back to the queue, not to CANCELLED (a run lost).
        assert not handle.began.is_set()
        assert history[2].message == (
            "agent lost contact with the server before the run started: handed back"
        )
        assert rig.backend.states(run.id)[:3] == ["SCHEDULED", "PENDING", "SCHEDULED"]

    arun(scenario())


def test_a_shutdown_before_the_flow_began_hands_the_run_back(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path, start_lead_seconds=60, drain_timeout_seconds=0.2) as rig:
            run = add_later_run(rig, 30)
            handle = await within(rig.runner.started(run.id))
            rig.agent.on_signal(signal.SIGTERM)
            assert await within(rig.task) == EXIT_OK
        assert not handle.began.is_set()
        assert rig.backend.runs[run.id].state.message == (
            "agent shut down before the run started: handed back"
        )
        assert rig.backend.states(run.id) == ["SCHEDULED", "PENDING", "SCHEDULED"]

    arun(scenario())


def test_a_runner_error_fails_the_run_and_the_agent_goes_on(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as rig:
            broken = add_run(rig, runner="not-installed")
            message = await rig.state(broken, StateType.FAILED)
            assert "not-installed" in message
            fine = add_run(rig)
            (await rig.handle(fine)).finish(RunResult(Outcome.COMPLETED, "done", 0))
            await rig.state(fine, StateType.COMPLETED)

    arun(scenario())


def _ids(runs: list[FlowRun]) -> set[UUID]:
    return {run.id for run in runs}


@pytest.mark.parametrize("limit", [1, 3])
def test_no_more_runs_at_once_than_the_limit(tmp_path: Path, limit: int) -> None:
    async def scenario() -> None:
        async with running(tmp_path, limit=limit) as rig:
            runs = [add_run(rig) for _ in range(limit + 2)]
            await until(lambda: len(rig.runner.handles) == limit, f"{limit} runs started")
            await asyncio.sleep(0.3)  # a claim loop with no free slot claims nothing more
            assert len(rig.runner.handles) == limit
            held = [r for r in rig.backend.runs.values() if r.state.type is not StateType.SCHEDULED]
            assert len(held) == limit
            # Finish what runs, again and again: never more than the limit at once.
            while len(rig.runner.handles) < len(runs) or not all(
                h.ended for h in rig.runner.handles.values()
            ):
                live = [h for h in rig.runner.handles.values() if not h.ended]
                assert len(live) <= limit
                for handle in live:
                    handle.finish(RunResult(Outcome.COMPLETED, "done", 0))
                await until(
                    lambda: (
                        any(not h.ended for h in rig.runner.handles.values())
                        or (
                            all(h.ended for h in rig.runner.handles.values())
                            and len(rig.runner.handles) == len(runs)
                        )
                    ),
                    "the next runs to start",
                )
            for run in runs:
                await rig.state(run, StateType.COMPLETED)
            assert _ids(runs) == set(rig.runner.handles)

    arun(scenario())


class OneQueueBackend(InMemoryBackend):
    """A backend like Prefect's: one queue per agent, queues named by UUID only."""

    several_queues = False


def start_on(tmp_path: Path, backend: InMemoryBackend, *queues: str) -> Agent:
    return Agent(
        Settings(home=tmp_path, startup_timeout_seconds=1.0),
        AgentOptions(queues=queues, name="unit", runner="fake"),
        backend,
        runners={"fake": FakeRunner()},
    )


def test_a_backend_of_one_queue_per_agent_refuses_two_at_start_up(tmp_path: Path) -> None:
    async def scenario() -> None:
        backend = OneQueueBackend()
        first, second = backend.add_queue("a"), backend.add_queue("b")
        agent = start_on(tmp_path, backend, str(first.id), str(second.id))
        with pytest.raises(ConfigError, match="several queues per agent"):
            await agent.run()
        assert "claim" not in {call.method for call in backend.calls}  # refused before any

    arun(scenario())


def test_a_queue_name_needs_a_backend_that_finds_queues_by_name(tmp_path: Path) -> None:
    async def scenario() -> None:
        backend = OneQueueBackend()
        backend.add_queue("etl")
        agent = start_on(tmp_path, backend, "etl")
        with pytest.raises(ConfigError, match="'etl' is not a work queue UUID"):
            await agent.run()

    arun(scenario())
