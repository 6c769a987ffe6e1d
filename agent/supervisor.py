"""Supervising one claimed run: launch it, enforce timeout and cancellation, report its end.

The daemon owns the policies; runners only know start / wait / interrupt / terminate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import structlog

from agent.adoption import Leftover, adoption_record
from agent.backends.base import Backend, InterruptAware
from agent.errors import (
    AuthError,
    Conflict,
    FlowAgentError,
    RunnerError,
    ServerUnavailable,
    SourceError,
)
from agent.fence import FenceDir
from agent.logs import LogShipper
from agent.metrics import AgentMetrics
from agent.models import ClaimedRun, Deployment, FlowRun, StateProposal, StateType
from agent.outbox import Outbox
from agent.redaction import Redactor
from agent.sources.cache import PreparedSource, SourceCache
from runners.base import (
    LINE_PIECE,
    AdoptingRunner,
    Outcome,
    OutputSink,
    RunHandle,
    Runner,
    RunResult,
    RunSpec,
    starts_held,
)
from runners.threads import in_thread

H = TypeVar("H", bound=RunHandle)

log = structlog.get_logger("agent.supervisor")


class StopReason(StrEnum):
    CANCELLED = "cancelled by user"
    SHUTDOWN = "agent shut down"
    TIMEOUT = "timed out"
    LEASE_LOST = "agent lost contact with the server"


@dataclass
class RunContext:
    """The daemon's handle on one supervised run."""

    claimed: ClaimedRun
    # Set when this life takes over a run an earlier life of the agent started.
    adopted: Leftover | None = None
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)
    stop_reason: StopReason | None = None
    claimed_at: float = field(default_factory=time.monotonic)
    started_at: float = 0.0  # Unix time its flow began (or will, for a run started early)

    @property
    def run_id(self) -> UUID:
        return self.claimed.flow_run.id

    def request_stop(self, reason: StopReason) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.stop_requested.set()


OUTCOME_STATE = {
    Outcome.COMPLETED: StateType.COMPLETED,
    Outcome.FAILED: StateType.FAILED,
    Outcome.CRASHED: StateType.CRASHED,
}


@dataclass(frozen=True)
class SupervisionPolicy:
    agent_id: UUID
    agent_name: str
    cancel_grace_seconds: float
    base_env: dict[str, str]
    # A run stopped because the lease is lost gets a short grace: it must be dead before the
    # server's lease runs out.
    fence_grace_seconds: float = 2.0
    # Masks secrets in shipped output and state messages; counts runs (agent/ops.py).
    redactor: Redactor = field(default_factory=Redactor)
    metrics: AgentMetrics | None = None
    # How long before a scheduled run is due a runner that starts runs held gets it, so its
    # interpreter or container is up when the flow is due (runners/base.py, RunSpec.held).
    start_lead_seconds: float = 0.5
    # Fetches and checks out the code of deployments with a source (agent/sources/).
    sources: SourceCache | None = None


class RunSupervisor:
    """Runs one claimed flow run from PENDING to a terminal state."""

    def __init__(
        self,
        ctx: RunContext,
        backend: Backend,
        runner: Runner | RunnerError,
        options: dict[str, Any],
        shipper: LogShipper,
        outbox: Outbox,
        fence: FenceDir,
        policy: SupervisionPolicy,
    ) -> None:
        self.ctx = ctx
        self.backend = backend
        self.runner = runner
        self.options = options
        self.shipper = shipper
        self.outbox = outbox
        self.fence = fence
        self.policy = policy
        claimed = ctx.claimed
        self.redactor = policy.redactor.with_env(claimed.deployment.env | claimed.flow_run.env)
        self.source: PreparedSource | None = None
        self._source_released = False

    @property
    def _run(self) -> FlowRun:
        return self.ctx.claimed.flow_run

    @property
    def _deployment(self) -> Deployment:
        return self.ctx.claimed.deployment

    @property
    def _runner_name(self) -> str:
        # The daemon has put the agent's default in place when the deployment named none.
        return self._deployment.runner or "subprocess"

    def _spec(self, held: bool = False) -> RunSpec:
        run, deployment = self._run, self._deployment
        env = self.policy.base_env | deployment.env | run.env
        inherited = frozenset(self.policy.base_env) - deployment.env.keys() - run.env.keys()
        env["FLOWAGENT_RUN_ID"] = str(run.id)
        env["FLOWAGENT_DEPLOYMENT"] = deployment.name
        env["FLOWAGENT_ATTEMPT"] = str(run.attempt)
        return RunSpec(
            run_id=run.id,
            working_dir=self._working_dir(),
            entrypoint=deployment.entrypoint,
            command=deployment.command,
            parameters=dict(run.parameters),
            env=env,
            options=self.options,
            labels={
                "flowagent.run-id": str(run.id),
                "flowagent.agent-id": str(self.policy.agent_id),
                "flowagent.deployment": deployment.name,
            },
            inherited_env=inherited,
            held=held,
        )

    def _working_dir(self) -> Path:
        if self.source is not None:
            return self.source.working_dir
        source, sources = self._deployment.source, self.policy.sources
        if source is not None and sources is not None:  # adopted: its checkout is still there
            return sources.working_dir(self._run.id, source)
        return Path(self._deployment.working_dir or os.getcwd())

    async def _prepare_source(self) -> bool:
        """Fetch and check out the run's code when its deployment has a source; False (and
        the run FAILED with why) when that cannot be done."""
        source, sources = self._deployment.source, self.policy.sources
        if source is None:
            return True
        if sources is None:
            await self._report(
                StateType.FAILED, "this agent cannot fetch deployment sources (no source cache)"
            )
            return False
        try:
            self.source = await sources.prepare(self._run, source)
        except SourceError as exc:
            message = exc.message if exc.hint is None else f"{exc.message} ({exc.hint})"
            log.warning("source_failed", error=self.redactor.redact(message))
            self._agent_line(message)
            await self._report(StateType.FAILED, message)
            return False
        self.redactor = self.redactor.with_secrets(self.source.secrets)
        self._agent_line(self.source.summary)
        return True

    async def _release_source(self) -> None:
        """The run is over: its checkout goes, once, off the event loop (a large tree takes a
        while to delete, and heartbeats and other runs must not wait for it)."""
        sources = self.policy.sources
        if self._deployment.source is None or sources is None or self._source_released:
            return
        self._source_released = True
        await asyncio.to_thread(sources.release, self._run.id)

    def _agent_line(self, message: str) -> None:
        self.shipper.add(self._run.id, "agent", message)

    async def supervise(self) -> None:
        """Never raises (but for bad credentials): every failure becomes the run's state."""
        run_id = self._run.id
        structlog.contextvars.bind_contextvars(run_id=str(run_id))
        keep_checkout = False
        try:
            await self._supervise()
        except AuthError:
            raise
        except asyncio.CancelledError:
            # The agent is going down, maybe with the run alive: its next life adopts it (and
            # its checkout) or removes the checkout.
            keep_checkout = True
            raise
        except Exception as exc:  # a bug of ours must not leave the run RUNNING
            log.exception("run_supervision_failed")
            await self._report(StateType.CRASHED, f"agent error while supervising: {exc!r}")
        finally:
            if not keep_checkout:
                await self._release_source()
            await self.shipper.flush(run_id)
            self.shipper.forget(run_id)
            structlog.contextvars.unbind_contextvars("run_id")

    async def _supervise(self) -> None:
        adopted = self.ctx.adopted
        handle = await (self._start() if adopted is None else self._adopt(adopted))
        if handle is None:  # never started, or over: its state says why
            await self._forget()
            return
        try:
            if adopted is None:
                shown = _shown(handle.info)
                log.info("run_started", runner=self._runner_name, **shown)
                if self.policy.metrics is not None:
                    latency = time.monotonic() - self.ctx.claimed_at
                    self.policy.metrics.run_started(self._runner_name, latency)
                await self._update_info(shown)
            result, stopped = await self._wait(handle)
        except asyncio.CancelledError:
            # The agent is going down with the run alive: its fence entry stays, for the fence
            # to kill it or the agent's next life to take it over.
            raise
        except BaseException:
            # Whatever went wrong here, the run is reported ended next: it must be.
            with contextlib.suppress(Exception):
                await handle.terminate()
                await asyncio.wait_for(handle.wait(), self.policy.cancel_grace_seconds)
            await self._forget()
            raise
        await self._finish(result, stopped)
        # Only now: until the server has the outcome (or the spool does), the entry keeps it.
        await self._forget()

    async def _forget(self) -> None:
        """Unlist the run, and have its runner discard what it left (a container's removal
        asks dockerd, so not on the loop, where it would hold up heartbeats)."""
        run_id = self._run.id
        await in_thread(lambda: self.fence.unregister(run_id), f"run-{run_id}-forget")

    async def _adopt(self, leftover: Leftover) -> RunHandle | None:
        """Take over a run an earlier life started; None once it is reported CRASHED."""
        assert leftover.info is not None
        name = self.policy.agent_name
        runner = self.runner
        if isinstance(runner, RunnerError):
            reason = runner.message
        elif not isinstance(runner, AdoptingRunner):
            reason = f"the {runner.name} runner cannot take over runs"
        else:
            sink = self.shipper.sink_for(self._run.id, self.redactor.lines(LINE_PIECE))
            try:
                handle = await runner.adopt(self._spec(), leftover.info, sink)
            except RunnerError as exc:
                reason = exc.message
            else:
                self._agent_line(f"agent {name} restarted and took the run over")
                log.info("run_adopted", runner=runner.name, **_shown(handle.info))
                self.ctx.started_at = leftover.started_at
                return handle
        # Whatever is left of it must be dead before the run can be retried elsewhere.
        self.fence.kill(self._run.id, leftover.listed)
        log.warning("run_not_adopted", reason=self.redactor.redact(reason))
        await self._report(
            StateType.CRASHED, f"agent {name} restarted and could not take the run over: {reason}"
        )
        return None

    async def _start(self) -> RunHandle | None:
        """Launch the run; None when it was not started (and its state says why).

        A runner that starts runs held (all of ours) gets the run at once: its interpreter is
        loaded or its container created, and the run is listed with the fence, while it is
        PENDING. Only then is it proposed RUNNING (at its time, for a scheduled run handed
        over early) and, once accepted, released. So its flow never begins early, never begins
        after a cancel (the server refuses RUNNING), and never begins unlisted: an agent killed
        at any instant leaves no flow executing that its fence cannot find. A runner that cannot
        hold a run is started once RUNNING is accepted, and listed right after.
        """
        due = self._run.expected_start_time.timestamp()
        runner = self.runner
        if not starts_held(runner):
            await self._until(due)
        if self.ctx.stop_requested.is_set():
            await self._stopped_before_start()
            return None
        if isinstance(runner, RunnerError):
            await self._report(StateType.FAILED, runner.message)
            return None
        if not await self._prepare_source():
            return None
        if self.ctx.stop_requested.is_set():  # stopped while the code was fetched
            await self._stopped_before_start()
            return None
        self.fence.register_starting(self._run.id, adoption_record(self.ctx.claimed))
        if not starts_held(runner):
            refused = await self._propose_running()
            if refused is not None:
                await self._not_started(refused)
                return None
            return await self._launch(runner, runner.start, held=False)
        handle = await self._launch(runner, runner.start, held=True)
        if handle is None:
            return None
        await self._until(due)
        refused = None if self.ctx.stop_requested.is_set() else await self._propose_running()
        failed = None
        if not self.ctx.stop_requested.is_set() and refused is None:
            try:
                await handle.release()
                return handle
            except RunnerError as exc:
                failed = exc
        # Dead before the run can be handed back or retried: it must not run twice.
        await handle.terminate()
        await handle.wait()
        if failed is not None:
            await self._report(StateType.FAILED, failed.message)
        elif refused is not None:
            await self._not_started(refused)
        else:
            await self._stopped_before_start()
        return None

    async def _stopped_before_start(self) -> None:
        """A stop came before the flow began. A user's cancel ends the run; the agent shutting
        down or losing its lease hands it back: it never executed, and must not be lost."""
        if self.ctx.stop_reason is StopReason.CANCELLED:
            await self._report(StateType.CANCELLED, self._stop_message())
            return
        log.info("run_handed_back", reason=self._stop_message())
        await self._report(
            StateType.SCHEDULED, f"{self._stop_message()} before the run started: handed back"
        )

    async def _until(self, moment: float) -> None:
        """Sleep until ``moment`` (Unix time) unless a stop is requested first."""
        delay = moment - time.time()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ctx.stop_requested.wait(), delay)

    async def _propose_running(self) -> Conflict | ServerUnavailable | None:
        """None once the server has the run RUNNING; else why it does not."""
        try:
            await self.backend.set_state(
                self._run.id,
                StateProposal(
                    type=StateType.RUNNING,
                    agent_id=self.policy.agent_id,
                    attempt=self._run.attempt,
                    message=f"started by agent {self.policy.agent_name}",
                    source=None if self.source is None else self.source.record,
                ),
            )
        except (Conflict, ServerUnavailable) as exc:
            return exc
        return None

    async def _not_started(self, why: Conflict | ServerUnavailable) -> None:
        if isinstance(why, Conflict):  # cancelled meanwhile, or no longer ours
            log.info("run_not_started", reason=why.message)
            return
        # The server cannot hear it now: hand the run back (spooled if need be) rather than
        # leave it PENDING under a live agent's lease forever.
        log.warning("run_not_started", reason=why.message)
        await self._report(StateType.SCHEDULED, "agent could not reach the server to start it")

    async def _launch(
        self, runner: Runner, start: Callable[[RunSpec, OutputSink], Awaitable[H]], *, held: bool
    ) -> H | None:
        """Start the run's process (or container) with ``start`` (``runner``'s, typed as the
        runner says: held or not) and list it with the fence at once."""
        try:
            sink = self.shipper.sink_for(self._run.id, self.redactor.lines(LINE_PIECE))
            handle = await start(self._spec(held), sink)
        except RunnerError as exc:
            log.warning("run_start_failed", error=self.redactor.redact(exc.message))
            await self._report(StateType.FAILED, exc.message)
            return None
        # Its timeout runs from its flow's start (a held run's, from when it is due).
        started_at = max(time.time(), self._run.expected_start_time.timestamp())
        record = adoption_record(self.ctx.claimed, handle.info, started_at)
        self.fence.register(self._run.id, handle.info, record, runner=runner)
        self.ctx.started_at = started_at
        return handle

    async def _wait(self, handle: RunHandle) -> tuple[RunResult, StopReason | None]:
        timeout = self._deployment.timeout_seconds
        if timeout is not None:  # an adopted run has used part of it already
            timeout = max(0.0, timeout - (time.time() - self.ctx.started_at))
        waiting = asyncio.create_task(handle.wait(), name=f"wait-{self._run.id}")
        stopping = asyncio.create_task(self.ctx.stop_requested.wait(), name=f"stop-{self._run.id}")
        try:
            done, _ = await asyncio.wait(
                {waiting, stopping}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stopping.cancel()
        if waiting in done:
            return waiting.result(), None
        reason = self.ctx.stop_reason if stopping in done else StopReason.TIMEOUT
        assert reason is not None
        if reason is StopReason.TIMEOUT:
            self.ctx.request_stop(reason)
        grace = (
            self.policy.fence_grace_seconds
            if reason is StopReason.LEASE_LOST
            else self.policy.cancel_grace_seconds
        )
        if not await self._may_interrupt(reason):
            self._agent_line(f"{self._stop_message()}: terminating")
            log.info("run_terminating", reason=reason.value)
            await handle.terminate()
            return await waiting, reason
        self._agent_line(f"{self._stop_message()}: interrupting, {grace:g}s grace")
        log.info("run_interrupting", reason=reason.value, grace=grace)
        await handle.interrupt()
        try:
            return await asyncio.wait_for(asyncio.shield(waiting), grace), reason
        except TimeoutError:
            self._agent_line(f"still running after {grace:g}s grace: terminating")
            log.info("run_terminating", reason=reason.value)
            await handle.terminate()
            return await waiting, reason

    async def _may_interrupt(self, reason: StopReason) -> bool:
        """Whether the backend lets the run be interrupted (else it is killed at once)."""
        if not isinstance(self.backend, InterruptAware):
            return True
        cancel = reason in (StopReason.CANCELLED, StopReason.SHUTDOWN)
        try:
            return await self.backend.before_interrupt(self._run.id, cancel=cancel)
        except FlowAgentError as exc:
            log.warning("before_interrupt_failed", error=str(exc))
            return True

    def _stop_message(self) -> str:
        reason = self.ctx.stop_reason
        if reason is StopReason.TIMEOUT:
            return f"timed out after {self._deployment.timeout_seconds:g}s"
        return reason.value if reason else "stopped"

    async def _finish(self, result: RunResult, stopped: StopReason | None) -> None:
        info: dict[str, Any] = {"exit_code": result.exit_code}
        if stopped is StopReason.LEASE_LOST and result.outcome is Outcome.COMPLETED:
            # It completed as the stop came (its process had exited before the interrupt could
            # reach it; an interrupted flow does not complete): its work is done, and a CRASHED
            # here would have it done again by a retry.
            log.info("run_completed_as_stopped", reason=stopped.value)
            stopped = None
        if stopped is StopReason.TIMEOUT:
            state, message = StateType.FAILED, self._stop_message()
        elif stopped is StopReason.LEASE_LOST:
            state, message = (
                StateType.CRASHED,
                f"{self._stop_message()}; stopped so it cannot run twice",
            )
        elif stopped is not None:
            state, message = StateType.CANCELLED, self._stop_message()
        else:
            state, message = OUTCOME_STATE[result.outcome], result.message
        if result.result is not None:
            info["result"] = result.result
        proposal = self._proposal(state, message, info)
        # Before anything else can fail: an agent that dies from here on reports this outcome
        # in its next life (agent/adoption.py), instead of executing the run again.
        self.fence.record_outcome(
            self._run.id, adoption_record(self.ctx.claimed), proposal.model_dump(mode="json")
        )
        log.info(
            "run_finished", state=state.value, message=proposal.message, exit_code=result.exit_code
        )
        # Its code goes before its end is reported: whoever sees the run over sees it gone.
        await self._release_source()
        await self.shipper.flush(self._run.id)
        await self._deliver(proposal)

    async def _update_info(self, info: dict[str, Any]) -> None:
        try:
            await self.backend.update_runner_info(self._run.id, info)
        except AuthError:
            raise
        except FlowAgentError as exc:
            log.warning("runner_info_not_sent", error=str(exc))

    async def _report(
        self, state: StateType, message: str | None, info: dict[str, Any] | None = None
    ) -> None:
        await self._deliver(self._proposal(state, message, info))

    def _proposal(
        self, state: StateType, message: str | None, info: dict[str, Any] | None = None
    ) -> StateProposal:
        return StateProposal(
            type=state,
            message=None if message is None else self.redactor.redact(message),  # quotes stderr
            agent_id=self.policy.agent_id,
            attempt=self._run.attempt,
            runner_info=self.redactor.redact_value(info),
        )

    async def _deliver(self, proposal: StateProposal) -> None:
        if proposal.type.is_terminal and self.policy.metrics is not None:
            self.policy.metrics.run_finished(proposal.type.value, self._runner_name)
        await self.outbox.set_state(self._run.id, proposal)


def _shown(info: dict[str, Any]) -> dict[str, Any]:
    """What of a handle's info is reported: keys starting with "_" are the runner's own
    (runners/base.py, RunHandle)."""
    return {k: v for k, v in info.items() if not k.startswith("_")}
