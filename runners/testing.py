"""A runner whose runs do what a test tells them: for fast unit tests of code that drives runners.

The agent's own unit tests use it (tests/unit/test_daemon.py), and so can a third party's:

    runner = FakeRunner()
    ...                                   # the agent claims a run and starts it
    handle = await runner.started(run_id) # the run's handle, once the agent has started it
    handle.print("stdout", "hello")       # output, through the agent's sink
    handle.finish(RunResult(Outcome.COMPLETED, "done", 0, {"answer": 42}))

A run ends when the test finishes it, or when it is interrupted (unless told to ignore that, as
a flow that traps SIGTERM does) or terminated. Runs start held when asked, as ours do.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, ClassVar
from uuid import UUID

from runners.base import HoldingRunner, Outcome, OutputSink, RunResult, RunSpec

#: What an interrupted run ends with when it obeys (a process exiting on SIGTERM).
INTERRUPTED = RunResult(Outcome.CRASHED, "killed by signal SIGTERM", -15)
#: What a terminated run ends with.
TERMINATED = RunResult(Outcome.CRASHED, "killed by signal SIGKILL", -9)


class FakeHandle:
    """One fake run. ``ignore_interrupt``: interrupt() is noted but the run goes on."""

    def __init__(self, spec: RunSpec, sink: OutputSink, *, ignore_interrupt: bool) -> None:
        self.spec = spec
        self.sink = sink
        self.ignore_interrupt = ignore_interrupt
        self.interrupted = False
        self.terminated = False
        self.began = asyncio.Event()  # the flow began: released, or never held
        self._done: asyncio.Future[RunResult] = asyncio.get_running_loop().create_future()
        if not spec.held:
            self.began.set()

    @property
    def info(self) -> dict[str, Any]:
        return {"fake": True}

    @property
    def ended(self) -> bool:
        return self._done.done()

    async def release(self) -> None:
        self.began.set()

    def print(self, stream: str, line: str) -> None:
        self.sink(stream, line)

    def finish(self, result: RunResult) -> None:
        if not self._done.done():
            self._done.set_result(result)

    async def wait(self) -> RunResult:
        return await asyncio.shield(self._done)

    async def interrupt(self) -> None:
        self.interrupted = True
        if not self.ignore_interrupt:
            self.finish(INTERRUPTED)

    async def terminate(self) -> None:
        self.terminated = True
        self.finish(TERMINATED)


class FakeRunner:
    """Starts :class:`FakeHandle` runs and keeps them by run id."""

    name: ClassVar[str] = "fake"
    starts_held: ClassVar[bool] = True

    def __init__(self, *, ignore_interrupt: bool = False) -> None:
        self.ignore_interrupt = ignore_interrupt
        self.handles: dict[UUID, FakeHandle] = {}
        self._changed = asyncio.Condition()

    async def start(self, spec: RunSpec, sink: OutputSink) -> FakeHandle:
        handle = FakeHandle(spec, sink, ignore_interrupt=self.ignore_interrupt)
        self.handles[spec.run_id] = handle
        async with self._changed:
            self._changed.notify_all()
        return handle

    async def started(self, run_id: UUID) -> FakeHandle:
        """The run's handle, once it has been started (waits for that)."""
        async with self._changed:
            await self._changed.wait_for(lambda: run_id in self.handles)
        return self.handles[run_id]


if TYPE_CHECKING:  # mypy proves the fake meets the protocols it stands in for
    _runner: HoldingRunner = FakeRunner()
