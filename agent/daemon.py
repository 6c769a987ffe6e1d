"""The agent daemon: poll → claim → launch → supervise → report, with side tasks.

One asyncio loop. The claim loop long-polls the server for due runs while slots are free; each
claimed run gets a :class:`agent.supervisor.RunSupervisor` task; side tasks (heartbeats, the
cancellation watch, log shipping) run in one TaskGroup, so if one dies the agent stops loudly
instead of limping on.

Shutdown (SIGTERM/SIGINT): stop claiming, keep heartbeats going, let runs finish up to the drain
timeout, then cancel what is left ("agent shut down"). A second signal cancels runs now; a third
exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

import structlog

from agent.adoption import Leftover, Stage, find_leftovers, lost_message, still_ours
from agent.backends.base import Backend, NamedQueues
from agent.config import Settings
from agent.errors import (
    AuthError,
    ConfigError,
    FlowAgentError,
    NotFound,
    RunnerError,
    ServerUnavailable,
)
from agent.fence import FenceDir
from agent.heartbeat import Heartbeater
from agent.logs import LogShipper
from agent.models import ClaimedRun, StateProposal, StateType, WorkQueue
from agent.ops import Operations
from agent.outbox import Outbox
from agent.sources.cache import BundleDownloader, SourceCache
from agent.sources.inventory import prune as prune_sources
from agent.spool import Spool
from agent.supervisor import RunContext, RunSupervisor, StopReason, SupervisionPolicy
from runners.base import Runner, starts_held
from runners.registry import load_runner, validate_options

log = structlog.get_logger("agent.daemon")

EXIT_OK = 0
EXIT_FORCED = 130
#: How often the agent checks that its fence process lives (and restarts it if not).
FENCE_CHECK_SECONDS = 1.0


@dataclass(frozen=True)
class AgentOptions:
    """What `agent start` was asked to do (settings hold everything else)."""

    # The work queues to serve, highest priority first: UUIDs, or names (the embedded server).
    queues: tuple[str, ...]
    name: str
    tags: tuple[str, ...] = ()
    run_once: bool = False
    # `--runner` / `--runner-option`: the runner for deployments that name none, and default
    # options for runs on it (a deployment's own options win). A Prefect server's runs have no
    # deployment of ours, so these are theirs (see make_backend).
    runner: str = "subprocess"
    runner_options: dict[str, Any] = field(default_factory=dict)


class Agent:
    def __init__(
        self,
        settings: Settings,
        options: AgentOptions,
        backend: Backend,
        *,
        runners: Mapping[str, Runner] | None = None,
    ) -> None:
        """``runners``: instances to use by name instead of the installed ones (a test's)."""
        self.settings = settings
        self.options = options
        self.backend = backend
        self.runs: dict[UUID, RunContext] = {}
        self.fence = FenceDir.for_agent(settings.home, options.name)
        self.outbox = Outbox(backend, Spool(self.fence.directory / "spool"))
        self.shipper = LogShipper(self.outbox.send_logs)
        self.sources = SourceCache(
            settings.home,
            self.fence.directory / "checkouts",
            # A Prefect server keeps no bundles: its runs bring their code with pull steps.
            downloader=backend if isinstance(backend, BundleDownloader) else None,
        )
        self.stopping = asyncio.Event()  # first signal: stop claiming
        self._slot_freed = asyncio.Event()
        self._runners: dict[str, Runner | RunnerError] = dict(runners or {})
        self._signals = 0
        self._startup: asyncio.Task[Heartbeater] | None = None
        self._adopted: list[RunSupervisor] = []  # taken over at start-up, not yet supervised
        # Runs an earlier life left that the server still has RUNNING under us, but that cannot
        # be taken over: the message each is CRASHED with, exactly as it happened.
        self._lost: dict[UUID, str] = {}
        self.agent_id: UUID | None = None
        # The queues served, in priority order; one deleted meanwhile is dropped from here.
        self.queues: list[WorkQueue] = []
        # systemd notifications, /healthz and /metrics, the resource gate, secret redaction.
        self.ops = Operations(
            settings,
            runs_in_flight=lambda: len(self.runs),
            spooled=lambda: self.outbox.spooled,
            stopping=self.stopping.is_set,
        )

    # ------------------------------------------------------------------ start-up

    async def _resolve_queues(self) -> list[WorkQueue]:
        try:
            queues = [await self._resolve_queue(ref) for ref in self.options.queues]
        except ServerUnavailable as exc:
            raise ServerUnavailable(
                f"{exc.message}; gave up after {self.settings.startup_timeout_seconds:g}s",
                hint="start the server with `agent server start`, or point --api-url / "
                "AGENT_API_URL at it",
            ) from exc
        if len(queues) > 1 and not self.backend.several_queues:
            raise ConfigError(
                "several queues per agent need the embedded server (agent server start)",
                hint="start one agent per queue on this server",
            )
        seen: set[UUID] = set()
        for queue in queues:
            if queue.id in seen:
                raise ConfigError(
                    f"work queue {queue.name} ({queue.id}) is given twice",
                    hint="name each queue once, highest priority first",
                )
            seen.add(queue.id)
        return queues

    async def _resolve_queue(self, ref: str) -> WorkQueue:
        try:
            queue_id = UUID(ref)
        except ValueError:
            queue_id = None  # a name
        if queue_id is not None:
            return await self.backend.get_queue(queue_id)
        if not isinstance(self.backend, NamedQueues):
            raise ConfigError(
                f"{ref!r} is not a work queue UUID",
                hint="this server's queues are named by UUID: give the queue's UUID",
            )
        try:
            queue = await self.backend.get_queue_by_name(ref)
        except NotFound:
            raise NotFound(
                f"no work queue named {ref!r}", hint="list the queues with `agent work-queue ls`"
            ) from None
        return queue

    def _runner(self, name: str) -> Runner | RunnerError:
        if name not in self._runners:
            try:
                self._runners[name] = load_runner(name)
            except RunnerError as exc:
                self._runners[name] = exc
        return self._runners[name]

    # ------------------------------------------------------------------ main loop

    async def _start_up(self) -> Heartbeater:
        """Resolve the queues, register, clean up after an earlier life; nothing claimed yet."""
        self.queues = await self._resolve_queues()
        heartbeater = Heartbeater(
            self.backend,
            name=self.options.name,
            queues=lambda: [queue.id for queue in self.queues],
            tags=self.options.tags,
            interval=self.settings.heartbeat_seconds,
            runs_in_flight=lambda: len(self.runs),
            host=self.ops.sampler.latest,
            held_runs=lambda: [*self.runs, *self.outbox.spool.run_ids()],
        )
        # Read before this life renews the lease: its age dates what was left behind.
        leftovers = find_leftovers(self.fence)
        self.agent_id = await heartbeater.register()
        self.fence.prepare(fence_after=heartbeater.lease_seconds / 2)
        heartbeater.on_renewed = self.fence.touch_lease
        self.fence.ensure_fence()
        self.ops.monitor.attach_fence(self.fence.fence_running)
        structlog.contextvars.bind_contextvars(agent=self.options.name)
        log.info(
            "agent_started",
            agent_id=str(self.agent_id),
            queues=[queue.name for queue in self.queues],
            queue_ids=[str(queue.id) for queue in self.queues],
            tags=list(self.options.tags),
            limit=self.settings.limit,
        )
        # Reports an earlier life of this agent could not deliver go first, in order.
        await self.outbox.drain()
        await self._take_over(leftovers)
        # What an earlier life (SIGKILLed, say) left on disk of runs no one takes over.
        # Off the loop, like every deletion of a tree: it may be large.
        adopted = {s.ctx.run_id for s in self._adopted}
        await asyncio.to_thread(self.sources.checkouts.remove_all_but, adopted)
        await asyncio.to_thread(self.sources.spares.clear)
        # Mirrors and bundles of the host no run used for long (never one a run is reading).
        try:
            await asyncio.to_thread(
                prune_sources, self.settings.home, self.settings.source_max_idle
            )
        except OSError as exc:
            log.warning("sources_not_pruned", error=str(exc))
        await self._release_orphans()
        self.ops.ready(self.queues, heartbeater)
        return heartbeater

    async def run(self) -> int:
        # First of all: a second live agent under this name would take this one's runs over.
        self.fence.lock(self.options.name)
        self._install_signal_handlers()
        # A signal while starting (say, retrying an unreachable server) just stops: nothing
        # has been claimed yet, so there is nothing to drain.
        self._startup = asyncio.create_task(self._start_up(), name="start-up")
        try:
            heartbeater = await self._startup
        except asyncio.CancelledError:
            self._remove_signal_handlers()
            self.ops.close()
            if self._signals:
                log.info("agent_stopped", during="start-up")
                return EXIT_OK
            raise
        except BaseException:
            self._remove_signal_handlers()
            self.ops.close()
            raise
        try:
            async with asyncio.TaskGroup() as side:
                side_tasks = [
                    side.create_task(heartbeater.run(), name="heartbeat"),
                    side.create_task(self._watch_cancellations(), name="cancel-watch"),
                    side.create_task(self.shipper.run(), name="log-shipper"),
                    side.create_task(self.outbox.run(), name="spool"),
                    side.create_task(self._guard_lease(heartbeater), name="lease-guard"),
                    side.create_task(self._guard_fence(), name="fence-guard"),
                    side.create_task(self.ops.monitor_task(), name="health-monitor"),
                ]
                self.ops.supervise(side_tasks)
                try:
                    async with asyncio.TaskGroup() as runs:
                        for supervisor in self._adopted:
                            self._supervise(runs, supervisor)
                        self._adopted.clear()
                        await self._claim_loop(runs)
                        await self._drain()
                    # A long poll cancelled at shutdown may have claimed runs we never saw.
                    await self._release_orphans()
                    await self.outbox.drain()
                finally:
                    for task in side_tasks:
                        task.cancel()
                    await self.sources.close()  # spare copies in the making: stop, remove
        except* AuthError as group:
            raise group.exceptions[0] from None
        finally:
            self._remove_signal_handlers()
            self.ops.close()
        self.fence.stop_fence()
        log.info("agent_stopped")
        return EXIT_OK

    async def _claim_loop(self, runs: asyncio.TaskGroup) -> None:
        assert self.queues and self.agent_id is not None
        backoff = 0.5
        claim_id = uuid4()
        while not self.stopping.is_set():
            free = self.settings.limit - len(self.runs)
            if free <= 0:
                self._slot_freed.clear()
                await self._wait_or_stop(self._slot_freed.wait())
                continue
            if self.ops.gate.check() is not None:  # host too busy: claim nothing for now
                await self._wait_or_stop(self.ops.gate.wait_open())
                continue
            wait = 0.0 if self.options.run_once else self.settings.claim_wait_seconds
            claim = asyncio.create_task(
                self.backend.claim(
                    [queue.id for queue in self.queues],
                    self.agent_id,
                    self.options.tags,
                    free,
                    wait,
                    claim_id,
                    lead_seconds=self.settings.start_lead_seconds,
                ),
                name="claim",
            )
            try:
                claimed = await self._wait_or_stop(claim)
            except AuthError:
                raise
            except NotFound as exc:
                if await self._drop_deleted_queues(exc):
                    continue
                log.warning("claim_failed", error=str(exc), retry_in=backoff)
                await self._wait_or_stop(asyncio.sleep(backoff))
                backoff = min(backoff * 2, 10.0)
                continue
            except FlowAgentError as exc:
                log.warning("claim_failed", error=str(exc), retry_in=backoff)
                await self._wait_or_stop(asyncio.sleep(backoff))
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 0.5
            if claimed is None:  # stopping while the long poll was held
                break
            # Only an answered claim gets a new id: a claim that failed on the way is asked
            # again under its old id, and the server answers what it took, if anything.
            claim_id = uuid4()
            for item in claimed:
                self._launch(runs, item)
            if self.options.run_once and not claimed:
                break

    async def _drop_deleted_queues(self, exc: NotFound) -> bool:
        """After a claim's 404: stop serving the queues that are gone (each said once); True
        when some were. When all are gone the agent has nothing to do: it stops, saying so."""
        gone: list[WorkQueue] = []
        for queue in self.queues:
            try:
                await self.backend.get_queue(queue.id)
            except NotFound:
                gone.append(queue)
        if not gone:
            return False  # not a queue of ours (the agent's row?): retried like any failure
        self.queues = [queue for queue in self.queues if queue not in gone]
        for queue in gone:
            log.error(
                "queue_deleted",
                queue=queue.name,
                queue_id=str(queue.id),
                serving=[q.name for q in self.queues],
            )
        if not self.queues:
            names = ", ".join(f"{q.name} ({q.id})" for q in gone)
            raise NotFound(
                f"every work queue of this agent is gone ({names}): {exc.message}",
                hint="list the queues with `agent work-queue ls` and start the agent on one",
            ) from exc
        return True

    async def _wait_or_stop(self, awaitable: Any) -> Any:
        """Await ``awaitable`` unless a stop is requested first (then cancel it, return None)."""
        task = (
            awaitable if isinstance(awaitable, asyncio.Task) else asyncio.ensure_future(awaitable)
        )
        stop = asyncio.create_task(self.stopping.wait())
        done, _ = await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            stop.cancel()
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return None

    def _launch(self, runs: asyncio.TaskGroup, claimed: ClaimedRun) -> None:
        supervisor = self._prepare(claimed)
        queue = next(
            (q.name for q in self.queues if q.id == claimed.flow_run.work_queue_id),
            str(claimed.flow_run.work_queue_id),
        )
        self.ops.metrics.runs_claimed.labels(queue=queue).inc()
        log.info("run_claimed", run_id=str(claimed.flow_run.id), deployment=claimed.deployment.name)
        self._supervise(runs, supervisor)

    def _prepare(self, claimed: ClaimedRun, adopted: Leftover | None = None) -> RunSupervisor:
        """A supervisor for ``claimed``, counted among this agent's runs from now on."""
        assert self.agent_id is not None
        run_id = claimed.flow_run.id
        ctx = RunContext(claimed, adopted=adopted)
        self.runs[run_id] = ctx
        name = claimed.deployment.runner or self.options.runner
        defaults = self.options.runner_options if name == self.options.runner else {}
        deployment = claimed.deployment.model_copy(
            update={"runner": name, "runner_options": defaults | claimed.deployment.runner_options}
        )
        claimed = claimed.model_copy(update={"deployment": deployment})
        ctx.claimed = claimed
        runner = self._runner(name)
        options: dict[str, Any] = {}
        if not isinstance(runner, RunnerError):
            try:
                options = validate_options(name, deployment.runner_options, type(runner))
            except FlowAgentError as exc:
                runner = RunnerError(exc.message)
        return RunSupervisor(
            ctx,
            self.backend,
            runner,
            options,
            self.shipper,
            self.outbox,
            self.fence,
            SupervisionPolicy(
                agent_id=self.agent_id,
                agent_name=self.options.name,
                cancel_grace_seconds=self.settings.cancel_grace_seconds,
                base_env=flow_environment(os.environ),
                redactor=self.ops.redactor,
                metrics=self.ops.metrics,
                start_lead_seconds=self.settings.start_lead_seconds,
                sources=self.sources,
            ),
        )

    def _supervise(self, runs: asyncio.TaskGroup, supervisor: RunSupervisor) -> None:
        run_id = supervisor.ctx.run_id

        async def supervise() -> None:
            try:
                await supervisor.supervise()
            finally:
                self.runs.pop(run_id, None)
                self._slot_freed.set()

        runs.create_task(supervise(), name=f"run-{run_id}")

    async def _drain(self) -> None:
        """Wait for runs in flight; on shutdown, cancel what is left after the drain timeout."""
        if not self.runs:
            return
        if not self.stopping.is_set():
            return  # run-once: the TaskGroup waits for every run
        log.info("agent_draining", runs=len(self.runs), timeout=self.settings.drain_timeout_seconds)
        deadline = asyncio.get_running_loop().time() + self.settings.drain_timeout_seconds
        while self.runs and asyncio.get_running_loop().time() < deadline:
            self._slot_freed.clear()
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                await asyncio.wait_for(self._slot_freed.wait(), max(remaining, 0))
            except TimeoutError:
                break
        self._cancel_all(StopReason.SHUTDOWN)

    def _cancel_all(self, reason: StopReason) -> None:
        for ctx in list(self.runs.values()):
            ctx.request_stop(reason)

    async def _watch_cancellations(self) -> None:
        assert self.agent_id is not None
        while True:
            await asyncio.sleep(self.settings.cancel_poll_seconds)
            if not self.runs:
                continue
            try:
                ids = await self.backend.cancelling_runs(self.agent_id)
            except AuthError:
                raise
            except FlowAgentError as exc:
                log.warning("cancel_watch_failed", error=str(exc))
                continue
            for run_id in ids:
                ctx = self.runs.get(run_id)
                if ctx is not None and not ctx.stop_requested.is_set():
                    log.info("run_cancel_requested", run_id=str(run_id))
                    ctx.request_stop(StopReason.CANCELLED)

    async def _guard_lease(self, heartbeater: Heartbeater) -> None:
        """Stop every run once the lease has gone unrenewed for half its length.

        The server resolves the runs when the whole lease is gone and may hand a retry to
        another agent; by then these executions must be dead (see agent/fence.py).
        """
        while True:
            await asyncio.sleep(min(1.0, self.settings.heartbeat_seconds))
            silent = heartbeater.since_renewed()
            if self.runs and silent > heartbeater.lease_seconds / 2:
                log.error(
                    "lease_lost",
                    silent_seconds=round(silent, 1),
                    runs=len(self.runs),
                    lease_seconds=heartbeater.lease_seconds,
                )
                for ctx in list(self.runs.values()):
                    ctx.request_stop(StopReason.LEASE_LOST)

    async def _guard_fence(self) -> None:
        """Keep the fence process alive: without it a SIGKILLed agent's runs would go on while
        the server retries them elsewhere (an OOM killer picks small processes too)."""
        while True:
            await self._fence_ended(FENCE_CHECK_SECONDS)
            try:
                restarted = self.fence.ensure_fence()
            except OSError as exc:  # /healthz says so: fence_running() stays False
                log.error("fence_not_started", error=str(exc))
                continue
            if restarted:
                log.warning("fence_restarted", reason="the fence process was not running")

    async def _fence_ended(self, timeout: float) -> None:
        """Return the instant the fence process ends (its pidfd turns readable), or after
        ``timeout`` at the latest: each moment without a fence is one in which a SIGKILL of the
        agent would leave its runs unguarded."""
        fd = self.fence.fence_pidfd()
        if fd is None:
            await asyncio.sleep(timeout)
            return
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not ended.done():
                ended.set_result(None)

        loop.add_reader(fd, wake)
        try:
            await asyncio.wait_for(ended, timeout)
        except TimeoutError:
            pass
        finally:
            loop.remove_reader(fd)
            os.close(fd)

    async def _take_over(self, leftovers: list[Leftover]) -> None:
        """Adopt what an earlier life of this agent left executing, or stop it (agent/adoption.py).

        Runs taken over count as this agent's before its next heartbeat, which lists what it
        holds: the server resolves whatever is not listed.
        """
        if not leftovers:
            return
        assert self.agent_id is not None
        try:
            held = {run.id: run for run in await self.backend.claimed_runs(self.agent_id)}
        except FlowAgentError as exc:
            log.warning("leftovers_not_checked", error=str(exc))
            held = {}  # cannot tell whether they are still ours: stop them, never run twice
        for leftover in leftovers:
            run_id = leftover.run_id
            why_not = still_ours(leftover, held)
            if why_not is None and leftover.stage is Stage.EXECUTING:
                assert leftover.claimed is not None
                self._adopted.append(self._prepare(leftover.claimed, leftover))
                log.info("leftover_adopting", run_id=str(run_id))
                continue
            outcome = leftover.outcome
            if why_not is None and outcome is not None:
                # It ended before the server heard: report it as it ended, never run it again.
                await self.outbox.set_state(run_id, outcome)  # delivered, or spooled
                self.fence.unregister(run_id)
                log.info("leftover_reported", run_id=str(run_id), state=outcome.type.value)
                continue
            killed = self.fence.kill(run_id, leftover.listed)
            if why_not is None:
                deployment_runner = leftover.claimed.deployment.runner if leftover.claimed else None
                runner = self._runner(deployment_runner or self.options.runner)
                self._lost[run_id] = lost_message(
                    leftover, self.options.name, killed=killed, held_start=starts_held(runner)
                )
            log.warning(
                "leftover_stopped" if killed else "leftover_gone",
                run_id=str(run_id),
                stage=leftover.stage.value,
                reason=why_not or self._lost.get(run_id),
            )

    async def _release_orphans(self) -> None:
        """Runs the server says we hold but we do not (a previous life of this agent)."""
        assert self.agent_id is not None
        try:
            held = await self.backend.claimed_runs(self.agent_id)
        except FlowAgentError as exc:
            log.warning("orphan_check_failed", error=str(exc))
            return
        for run in held:
            if run.id in self.runs or self.outbox.spool.holds(run.id):
                continue
            if run.state.type is StateType.PENDING:
                proposal = StateProposal(
                    type=StateType.SCHEDULED,
                    agent_id=self.agent_id,
                    message="released: claimed by an earlier life of this agent, never started",
                )
            else:
                message = self._lost.pop(run.id, None) or (
                    f"agent {self.options.name} restarted with no record of the run on this host"
                )
                proposal = StateProposal(
                    type=StateType.CRASHED,
                    agent_id=self.agent_id,
                    attempt=run.attempt,
                    message=message,
                )
            try:
                await self.backend.set_state(run.id, proposal)
                log.warning("orphan_resolved", run_id=str(run.id), state=proposal.type.value)
            except FlowAgentError as exc:
                log.warning("orphan_not_resolved", run_id=str(run.id), error=str(exc))

    # ------------------------------------------------------------------ signals

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.on_signal, sig)

    def _remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)

    def on_signal(self, sig: signal.Signals) -> None:
        """What SIGTERM or SIGINT does: stop claiming and drain; the 2nd cancels runs now; the
        3rd exits at once."""
        self._signals += 1
        if self._startup is not None and not self._startup.done():
            log.info("agent_stopping", signal=sig.name, during="start-up")
            self._startup.cancel()
            return
        if self._signals == 1:
            log.info("agent_stopping", signal=sig.name, runs=len(self.runs))
            self.stopping.set()
            self.ops.stopping()
        elif self._signals == 2:
            log.warning("agent_cancelling_runs", signal=sig.name, runs=len(self.runs))
            self._cancel_all(StopReason.SHUTDOWN)
        else:
            log.error("agent_exiting_now", signal=sig.name, runs=len(self.runs))
            os._exit(EXIT_FORCED)


async def _main(settings: Settings, options: AgentOptions) -> int:
    from agent.backends import make_backend

    # Telling the kind of server apart may wait out an unreachable one: a signal meanwhile
    # just stops (nothing has been claimed).
    loop = asyncio.get_running_loop()
    detecting = asyncio.create_task(make_backend(settings, runner_options=options.runner_options))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, detecting.cancel)
    try:
        backend = await detecting
    except asyncio.CancelledError:
        log.info("agent_stopped", during="start-up")
        return EXIT_OK
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    try:
        return await Agent(settings, options, backend).run()
    finally:
        await backend.aclose()


# The agent's credentials are the agent's: a flow has no business with them.
PRIVATE_ENV = ("AGENT_API_KEY", "AGENT_API_AUTH_STRING")


def flow_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The agent's environment as its flows inherit it."""
    return {k: v for k, v in environ.items() if k not in PRIVATE_ENV}


def raise_open_file_limit() -> None:
    """Each run holds a few descriptors (pipes, a pidfd): 1,024 is too few for 1,000 runs."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def run_agent(settings: Settings, options: AgentOptions) -> int:
    """Run the daemon until it is stopped; returns the process exit code.

    Raises :class:`agent.errors.FlowAgentError` for problems the user must fix (no such queue,
    server unreachable after the startup bound, credentials refused).
    """
    from agent.logs import configure_logging
    from agent.ops import settings_redactor

    configure_logging(
        settings.log_level, settings.log_format, settings_redactor(settings, os.environ)
    )
    raise_open_file_limit()
    return asyncio.run(_main(settings, options))
