"""The Runner Protocol: the contract every flow runner (ours or a third party's) implements."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeGuard, runtime_checkable
from uuid import UUID

#: Called for every line a run prints: ``sink(stream, line)`` with stream "stdout" or "stderr".
OutputSink = Callable[[str, str], None]

#: A line longer than this (bytes of a byte stream, characters of a text stream) reaches the sink
#: in pieces of this size, the last one shorter, so that no line can take the agent's memory. A
#: sink can tell a piece that a line continues after by its size (secrets are masked across
#: the cut: agent/redaction.py).
LINE_PIECE = 64 * 1024


@dataclass(frozen=True)
class RunSpec:
    """Everything a runner needs to start one flow run, and nothing about where it came from."""

    run_id: UUID
    working_dir: Path
    entrypoint: str | None = None  # "path/to/file.py:func" or "package.module:func"
    command: list[str] | None = None  # an argv, for command deployments
    parameters: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # already merged: agent < deployment < run
    options: dict[str, Any] = field(default_factory=dict)  # runner options, validated
    labels: dict[str, str] = field(default_factory=dict)  # run id, agent id, deployment…
    # Keys of ``env`` that came only from the agent's own environment (not the deployment's or
    # the run's): a runner that starts the flow on another host or image may leave them out.
    inherited_env: frozenset[str] = frozenset()
    # Start what takes time (an interpreter, a container) but hold the flow itself until
    # ``handle.release()``: the agent releases it once the run is listed with its fence and
    # RUNNING (at its time, for a scheduled run handed over early). Only runners whose class
    # sets ``starts_held = True`` get held runs (their handles are HeldRunHandles); others are
    # started when the run is due and RUNNING.
    held: bool = False


class Outcome(StrEnum):
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"  # the flow raised, or exited non-zero
    CRASHED = "CRASHED"  # killed by a signal, out of memory, the infrastructure failed


@dataclass(frozen=True)
class RunResult:
    outcome: Outcome
    message: str
    exit_code: int | None = None
    result: Any = None  # the flow's return value, when the runner can get it


class RunHandle(Protocol):
    """A started run. ``info`` is reported to the server (pid, container id…), but for keys
    starting with "_": what the runner keeps for itself (to adopt the run after a restart)."""

    @property
    def info(self) -> dict[str, Any]: ...

    async def wait(self) -> RunResult:
        """Wait for the run to end and say how it ended. Safe to call more than once."""
        ...

    async def interrupt(self) -> None:
        """Ask the run to stop gracefully (SIGTERM to the process group, docker stop)."""
        ...

    async def terminate(self) -> None:
        """Stop the run now (SIGKILL to the whole process tree, docker kill)."""
        ...


@runtime_checkable
class HeldRunHandle(RunHandle, Protocol):
    """A run started with ``spec.held``: its flow begins only once released."""

    async def release(self) -> None:
        """Let the flow begin now. If the agent dies first, the flow never begins."""
        ...


@runtime_checkable
class Runner(Protocol):
    name: ClassVar[str]

    async def start(self, spec: RunSpec, sink: OutputSink) -> RunHandle:
        """Start the run and return at once; output lines go to ``sink`` as they appear.

        Raises :class:`agent.errors.RunnerError` when the run cannot be started at all.
        """
        ...


@runtime_checkable
class HoldingRunner(Runner, Protocol):
    """A runner that starts a run held when ``spec.held`` is set (its class says
    ``starts_held = True``): the run's process or container exists, its flow has not begun, and
    the handle is a :class:`HeldRunHandle`.

    The agent starts every run of such a runner held, and lets it begin only once it is listed
    with the agent's fence: no flow can then execute unseen by the fence (agent/supervisor.py).
    """

    starts_held: ClassVar[bool]

    async def start(self, spec: RunSpec, sink: OutputSink) -> HeldRunHandle: ...


def starts_held(runner: object) -> TypeGuard[HoldingRunner]:
    """Whether ``runner`` is a :class:`HoldingRunner` (and says so: ``starts_held`` is True)."""
    return isinstance(runner, HoldingRunner) and runner.starts_held is True


@runtime_checkable
class OrphanKiller(Protocol):
    """A runner class that can kill what one of its runs started from another process, with no
    event loop and no instance: the agent's fence does so once the agent is gone
    (agent/fence.py). A runner whose runs die with the agent (in-process) does not implement
    it."""

    @staticmethod
    def kill_orphan(info: dict[str, Any]) -> bool:
        """SIGKILL what ``info`` (a started handle's :attr:`RunHandle.info`) names, with all it
        started; False if it was gone already (or cannot be reached)."""
        ...


@runtime_checkable
class RemainsKeeper(Protocol):
    """A runner class whose ended runs leave behind what says how they ended (a result file, the
    exited container), so that an agent killed between a run's end and recording its outcome
    still learns the outcome in its next life instead of running finished work again. The
    agent's fence discards the remains once the outcome is recorded, or the run forgotten
    (agent/fence.py); a caller with no fence calls :meth:`discard_remains` itself."""

    @staticmethod
    def discard_remains(info: dict[str, Any], *, keep_outcome: bool = False) -> None:
        """Remove what the run ``info`` names left behind (blocking; idempotent; never raises).
        ``keep_outcome``: only if it holds no outcome (the fence, after killing the run: a run
        that recorded its outcome as it was killed keeps it for its agent)."""
        ...


@runtime_checkable
class AdoptingRunner(Runner, Protocol):
    """A runner whose runs outlive the agent, so a restarted agent can supervise them again.

    ``info`` is the started handle's :attr:`RunHandle.info`, kept on disk by the agent, plus
    ``output_since``: the Unix time before which the earlier life had surely shipped the run's
    output. A runner that replays output (Docker logs) replays from there: a line may be shipped
    twice, none is lost. A runner that cannot adopt (in-process runs die with the agent) simply
    does not implement this.
    """

    async def adopt(self, spec: RunSpec, info: dict[str, Any], sink: OutputSink) -> RunHandle:
        """Take over a run an earlier life of the agent started, from ``info``.

        Output printed from now on goes to ``sink``. If the run has ended meanwhile, the handle's
        ``wait()`` says how, when the runner can still tell. Raises
        :class:`agent.errors.RunnerError` when the run is gone without a trace of its outcome.
        """
        ...
