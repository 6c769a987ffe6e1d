"""Client of a Prefect server's REST API: the daemon's Backend for a Prefect work queue.

``agent start <queue-uuid>`` against a Prefect 3 server (2.x >= 2.10 speaks the same calls)
runs the same daemon, runners and policies as against our own server. This module maps the
daemon's conversation onto Prefect's; docs/PREFECT_BACKEND.md tells the user's side.

    get_queue           GET work_queues/{id}, then GET work_pools/{pool}: its type (one the
                        agent cannot run is refused) and base job template; with ``pool`` set
                        (``agent start --pool``), the pool's queues by priority instead
                        (:mod:`agent.backends.prefect_pools`); checks that the engine's
                        interpreter (runner option ``python``) has prefect installed
    heartbeat           POST work_pools/{pool}/workers/heartbeat: the agent is a worker of the
                        pool, ONLINE in Prefect's UI and API
    claim               POST work_pools/{pool}/get_scheduled_flow_runs for runs due within
                        ``prefetch_seconds`` (pool-scoped, by queue id; runs of a same-named
                        queue elsewhere and runs without our tags are dropped here), then a
                        non-forced PENDING proposal per run under the
                        default name, with one transition id per run: a retried proposal comes
                        back REJECTed with our own state, which is a claim. Prefect has no long
                        poll, so a claim polls every ``poll_seconds`` up to ``wait_seconds``.
    set_state           the engine in the child reports RUNNING and the final state itself:
                        RUNNING only checks that the run is still ours to start; a final state
                        is proposed only where the engine left none (CRASHED, with the reason)
    update_runner_info  PATCH flow_runs/{id} infrastructure_pid: the pid on Prefect 3, "host:pid"
                        on Prefect 2, as each version's own consumer writes it
    send_logs           the agent's own lines (stream "agent") as Prefect logs; the engine ships
                        the flow's (kept, and shipped by the agent if it has to end the run)
    before_interrupt    a cancel: tell a 3.x engine first, or kill an engine that cannot be told
    cancelling_runs     POST flow_runs/filter: the runs we launched that are CANCELLING
    claimed_runs        our queue's PENDING/RUNNING/CANCELLING runs this agent (name and host)
                        claimed in a life that is over, or claimed and never handed out

A run whose deployment names no working directory runs in a fresh one of its own, as under
Prefect's worker (:mod:`agent.backends.prefect_workdirs`): made when it is claimed, removed
when the daemon reports its end (the process is over by then) or hands it back, and, for runs
that ended while the agent was down, before the first claim of its next life.

Scheduled runs are claimed up to ``prefetch_seconds`` (10) early, as Prefect's worker does
(PREFECT_WORKER_PREFETCH_SECONDS), and handed to the daemon as due now: their engine starts at
once, loads the flow, and proposes RUNNING, which the server answers with WAIT until the run's
scheduled time. So the flow begins on time instead of one engine start-up (~2 s) late.

Prefect's worker's labels, environment, log lines and hooks: agent/backends/prefect_labels.py,
prefect_hooks.py and prefect_control.py; Prefect 2 tag-filter queues: prefect_tagqueues.py.

Who claimed a run is written into its PENDING state's message ("claimed by flowagent agent
NAME on HOST (pid N)"), so a restarted agent finds the runs its earlier life left behind.
Claiming itself is in :mod:`agent.backends.prefect_claims`, what a claimed run is launched
with in :mod:`agent.backends.prefect_launch`, and Prefect's payloads in
:mod:`agent.backends.prefect_wire`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

import structlog
from pydantic import TypeAdapter

from agent.backends.http import HttpClient
from agent.backends.prefect_claims import PAGE, Claims, pool_path
from agent.backends.prefect_control import ControlChannel
from agent.backends.prefect_hooks import HOOKS_SWITCH, Hooks, Launch, Output
from agent.backends.prefect_labels import WorkerIdentity, exit_lines
from agent.backends.prefect_launch import Launcher
from agent.backends.prefect_pools import Served, pool_queue_id, pool_queues, read_pool
from agent.backends.prefect_tagqueues import check_served, is_tag_queue, tag_queue_runs_filter
from agent.backends.prefect_wire import (
    Claimer,
    PDeployment,
    PQueue,
    PResult,
    PRun,
    PState,
    claimer_of,
    flow_run,
    is_ours,
    split_infrastructure_pid,
    work_queue,
)
from agent.backends.prefect_workdirs import LIVE_STATES, RunDirs
from agent.errors import ConfigError, Conflict, FlowAgentError, NotFound
from agent.models import (
    AgentRecord,
    AgentStatus,
    ClaimedRun,
    FlowRun,
    Heartbeat,
    LogLineCreate,
    LogStream,
    StateProposal,
    StateType,
    WorkQueue,
    utcnow,
)

log = structlog.get_logger("agent.prefect")

#: How often a claim asks for due runs while it waits. A run is claimed ~0.3 s (median) after
#: it is due; Prefect's engine then takes 2-3 s (idle machine) to start it.
POLL_SECONDS = 0.5
#: Sent as X-PREFECT-API-VERSION: the API version of the servers this was tested against
#: (Prefect 3.9.1 and 2.20.27 both report 0.8.4; below 0.8.0 the server answers 400).
API_VERSION = "0.8.4"
#: Prefect never hands a silent worker's runs to anyone else, so there is nothing to fence
#: against: the daemon's lease guard and fence must not kill a run that the engine will finish
#: and report by itself (killing it would leave it RUNNING in Prefect forever).
NO_LEASE_SECONDS = 10 * 365 * 24 * 3600.0
LOGGER_NAME = "flowagent.agent"
_AGENT_NAMESPACE = uuid5(NAMESPACE_URL, "https://flowagent/prefect-worker")


class PrefectBackend:
    """Talks to a Prefect server. Implements :class:`agent.backends.base.Backend`."""

    several_queues: ClassVar[bool] = False  # one queue, or one --pool, per agent (see claim)

    def __init__(
        self,
        http: HttpClient,
        *,
        api_url: str,
        api_key: str | None = None,
        auth_string: str | None = None,
        runner_options: Mapping[str, Any] | None = None,
        poll_seconds: float = POLL_SECONDS,
        hostname: str | None = None,
        home: Path,
        prefetch_seconds: float = 0.0,
        pool: str | None = None,
        work_queues: Sequence[str] = (),
    ) -> None:
        self.http = http
        self.api_url = api_url.rstrip("/")
        self.workdirs = RunDirs(home)
        self._workdirs_swept = False
        self.launcher = Launcher(
            http,
            api_url=self.api_url,
            api_key=api_key,
            auth_string=auth_string,
            runner_options=runner_options,
            workdirs=self.workdirs,
        )
        self.poll_seconds = poll_seconds
        self.prefetch_seconds = prefetch_seconds
        self.hostname = hostname or socket.gethostname()
        self.pid = os.getpid()
        self._queue: PQueue | None = None
        # `agent start --pool`: the pool and queue names to serve instead of one queue by id.
        self.pool_name = pool
        self.work_queue_names = tuple(work_queues)
        self._served: Served | None = None
        self._agent_name: str | None = None
        self.claims = Claims(http)
        self._engine_checked = False
        # Issue 13, items 7-8: hooks, the cancel intent, labels and attribution.
        self.control = ControlChannel()
        self.hooks = Hooks()
        self.output = Output()
        self.identity = WorkerIdentity(http)

    async def aclose(self) -> None:
        await self.control.aclose()
        await self.http.aclose()

    # ------------------------------------------------------------------ the queue and the engine

    async def get_queue(self, queue_id: UUID) -> WorkQueue:
        if self.pool_name is not None:
            return await self._get_pool(queue_id, self.pool_name)
        try:
            response = await self.http.request("GET", f"work_queues/{queue_id}")
        except NotFound as exc:
            raise NotFound(
                f"no work queue with id {queue_id}",
                status_code=404,
                hint="a queue's id: `prefect work-queue inspect QUEUE --pool POOL -o json`",
            ) from exc
        queue = PQueue.model_validate(response.json())
        if not queue.work_pool_name:
            raise ConfigError(
                f"work queue {queue.name} ({queue_id}) belongs to no work pool",
                hint="is --api-url a Prefect server (2.10 or later)? `--backend auto` tells",
            )
        pool = await read_pool(self.http, queue.work_pool_name)
        self._queue = queue
        self._served = Served(queue.id, pool, [queue])
        await self.control.start()
        await self.identity.resolve(queue)
        check_served(queue, self.identity.major)
        if not self._engine_checked and self._served.runner == "subprocess":
            await self.launcher.check_engine()
            self._engine_checked = True
        log.info(
            "prefect_queue",
            pool=queue.work_pool_name,
            queue=queue.name,
            python=self.launcher.python,
        )
        return work_queue(queue)

    async def _get_pool(self, queue_id: UUID, name: str) -> WorkQueue:
        """``agent start --pool``: the pool's queues (those named, else all) by priority."""
        if queue_id != pool_queue_id(name):
            raise NotFound(f"work queue {queue_id} is not the pool {name!r} this agent serves")
        pool = await read_pool(self.http, name)
        queues = await pool_queues(self.http, pool, self.work_queue_names)
        self._queue = queues[0]
        self._served = Served(queue_id, pool, queues, every_queue=not self.work_queue_names)
        await self.control.start()
        await self.identity.resolve(queues[0])
        if not self._engine_checked and self._served.runner == "subprocess":
            await self.launcher.check_engine()
            self._engine_checked = True
        log.info(
            "prefect_pool",
            pool=pool.name,
            type=pool.type,
            queues=[q.name for q in queues],
            python=self.launcher.python,
        )
        return WorkQueue(
            id=queue_id,
            name=f"{pool.name}/{','.join(q.name for q in queues)}",
            tags=[],
            concurrency_limit=None,
            paused=pool.is_paused,
            created=utcnow(),
        )

    def _require_queue(self, queue_id: UUID) -> PQueue:
        return self._require_served(queue_id).queues[0]

    def _require_served(self, queue_id: UUID) -> Served:
        if self._served is None or self._served.id != queue_id:
            raise NotFound(f"work queue {queue_id} was not resolved (call get_queue first)")
        return self._served

    # ------------------------------------------------------------------ heartbeats

    async def heartbeat(self, beat: Heartbeat) -> AgentRecord:
        queue = self._require_queue(beat.work_queue_id)
        self._agent_name = beat.name
        self.workdirs.bind(beat.name)
        await self.http.request(
            "POST",
            f"{pool_path(queue)}/workers/heartbeat",
            # Prefect takes whole seconds here; 0.5 would be a 422.
            json={
                "name": beat.name,
                "heartbeat_interval_seconds": max(1, round(beat.heartbeat_interval_seconds)),
            },
        )
        return AgentRecord(
            id=uuid5(_AGENT_NAMESPACE, f"{queue.work_pool_name}/{beat.name}"),
            name=beat.name,
            work_queue_id=beat.work_queue_id,
            tags=beat.tags,
            hostname=beat.hostname,
            pid=beat.pid,
            version=beat.version,
            runs_in_flight=beat.runs_in_flight,
            heartbeat_interval_seconds=beat.heartbeat_interval_seconds,
            metrics=beat.metrics,
            last_heartbeat=utcnow(),
            status=AgentStatus.ONLINE,
            lease_seconds=NO_LEASE_SECONDS,
        )

    def _claimer(self) -> Claimer:
        return Claimer(self._agent_name or "agent", self.hostname, self.pid)

    # ------------------------------------------------------------------ claiming

    async def claim(
        self,
        queue_ids: Sequence[UUID],
        agent_id: UUID,
        tags: Sequence[str],
        limit: int,
        wait_seconds: float,
        claim_id: UUID | None = None,
        lead_seconds: float = 0.0,
    ) -> list[ClaimedRun]:
        """Poll for due runs until one is ours or ``wait_seconds`` pass.

        ``lead_seconds`` is ignored: a Prefect run is claimed up to ``prefetch_seconds`` early
        instead, as Prefect's worker claims up to PREFECT_WORKER_PREFETCH_SECONDS early, and
        its flow is held to its time by the server (see the module's docstring).

        Runs taken by a call that failed on the way (``claim_id`` or not) are answered by the
        next call: every claim starts with the runs we proposed for and never handed out.
        """
        if len(queue_ids) != 1:
            raise ConfigError(
                "an agent serves one queue (or one --pool) of a Prefect server",
                hint="start one agent per queue, or serve a pool's queues with --pool",
            )
        served = self._require_served(queue_ids[0])
        if not self._workdirs_swept:
            await self._sweep_workdirs()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while True:
            claimed = await self._claim_once(served, tags, limit)
            left = deadline - loop.time()
            if claimed or left <= 0:
                return claimed
            await asyncio.sleep(min(self.poll_seconds, left))

    async def _sweep_workdirs(self) -> None:
        """Remove what an earlier life left of runs that are over (the daemon has taken over
        or reported those it could by now). Kept: runs Prefect has PENDING, RUNNING,
        CANCELLING or PAUSED (their process may be at work; their end removes them) and
        directories a live process works in. A server that cannot answer now is asked at the next claim."""
        leftovers = [r for r in self.workdirs.leftovers() if r not in self.claims.held]
        live: set[UUID] = set()
        try:
            for start in range(0, len(leftovers), PAGE):
                page = leftovers[start : start + PAGE]
                runs = await self._filter({"id": {"any_": [str(i) for i in page]}})
                live.update(run.id for run in runs if run.state_type in LIVE_STATES)
        except FlowAgentError as exc:
            log.warning("workdirs_not_swept", error=str(exc))
            return
        ended = [r for r in leftovers if r not in live]
        kept = await asyncio.to_thread(self.workdirs.in_use, ended)
        for run_id in ended:
            if run_id not in kept:
                await self._remove_workdir(run_id)
        self._workdirs_swept = True
        if leftovers:
            log.info(
                "workdirs_swept",
                removed=len(ended) - len(kept),
                kept=len(leftovers) - len(ended) + len(kept),
            )

    async def _remove_workdir(self, run_id: UUID) -> None:
        # Off the event loop: a large clone takes a while to delete, and heartbeats must not wait.
        await asyncio.to_thread(self.workdirs.remove, run_id)

    async def _claim_once(
        self, served: Served, tags: Sequence[str], limit: int
    ) -> list[ClaimedRun]:
        ours = await self.claims.take(
            served.queues,
            tags,
            limit,
            self._claimer().message(),
            self.prefetch_seconds,
            every_queue=served.every_queue,
        )
        if not ours:
            return []
        deployments: dict[UUID, PDeployment | None] = {}
        claimed: list[ClaimedRun] = []
        submitted: list[PRun] = []
        for run in ours:
            try:
                claimed.append(await self.launcher.claimed_run(served, run, deployments))
            except ConfigError as exc:
                await self._not_submitted(run, exc)
            else:
                submitted.append(run)
        now = utcnow()
        for item in claimed:
            if item.flow_run.expected_start_time > now:
                # Due now to the daemon, which starts a run when it is due: Prefect's engine
                # takes ~2 s to start, and the server, not the daemon, holds its flow to the
                # scheduled time (RUNNING is answered WAIT until then).
                item.flow_run.expected_start_time = now
        for item, run in zip(claimed, submitted, strict=True):
            await self._attribute(item, run, deployments)
        for item in claimed:
            held = self.claims.held[item.flow_run.id]
            held.handed_out = True
            held.deployment_name = item.deployment.name
        return claimed

    async def _not_submitted(self, run: PRun, exc: ConfigError) -> None:
        """A run whose job configuration cannot be built (a bad template or override) is
        CRASHED with the reason, as Prefect's worker does (3.9.1: "Failed to submit flow run to
        infrastructure: …"), instead of staying claimed and failing again at every claim."""
        message = f"flow run could not be submitted to infrastructure: {exc.message}"
        if exc.hint:
            message += f" ({exc.hint})"
        log.warning("run_not_submitted", run_id=str(run.id), error=exc.message)
        try:
            await self._propose(run, "CRASHED", message)
        finally:
            self.claims.held.pop(run.id, None)
            await self._remove_workdir(run.id)

    async def _attribute(
        self, item: ClaimedRun, run: PRun, deployments: dict[UUID, PDeployment | None]
    ) -> None:
        """What Prefect's worker gives a run it takes (agent/backends/prefect_labels.py), the
        cancel channel of a 3.x engine, and what its hooks will need
        (agent/backends/prefect_hooks.py)."""
        worker = self._agent_name or "agent"
        deployment = deployments.get(item.deployment.id) or PDeployment(
            id=item.deployment.id, name=item.deployment.name
        )
        extra = await self.identity.env(run, deployment, worker)
        if self.identity.major >= 3:
            # The worker runs cancellation and crash hooks, as Prefect 3's does; 2.x engines
            # keep those of the crashes they see, as under `prefect agent`.
            extra[HOOKS_SWITCH] = "false"
            extra |= self.control.register(run.id)
        item.flow_run.env = item.flow_run.env | extra
        self.hooks.remember(
            run.id,
            Launch(
                python=self.launcher.python,
                cwd=item.deployment.working_dir or os.getcwd(),
                env=item.deployment.env | item.flow_run.env,
            ),
        )
        self.identity.run_names[run.id] = run.name
        await self.identity.label(run.id, worker)
        await self.identity.say(
            run.id, [(logging.INFO, f"Worker '{worker}' submitting flow run '{run.id}'")]
        )

    async def before_interrupt(self, run_id: UUID, *, cancel: bool) -> bool:
        """Whether the daemon may SIGTERM the run's process (else it kills it at once).

        A cancel (or a shutdown that cancels) must not look like a crash: Prefect's engine
        answers a bare SIGTERM with CRASHED and its ``on_crashed`` hooks. A 3.x engine told
        over its control channel first takes the SIGTERM as a cancel and exits 0; one that
        cannot be told (Prefect 2, or a 3.x engine not at its flow yet) is killed instead,
        and the agent runs the cancellation hooks and reports CANCELLED either way.
        """
        if not cancel:
            return True
        return await self.control.cancel(run_id)

    # ------------------------------------------------------------------ states

    async def set_state(self, run_id: UUID, proposal: StateProposal) -> FlowRun:
        """Map the daemon's reports onto a run whose engine reports its own states.

        RUNNING (before the process starts): the run must still be PENDING under our claim;
        else Conflict, and the daemon does not start it. A final state: left alone when the
        engine reported one; otherwise proposed (CRASHED with the reason once the process
        ran). CANCELLED: proposed unless the run already ended on its own (COMPLETED/FAILED).
        SCHEDULED: hands a claimed, never started run back.
        """
        if proposal.type is StateType.RUNNING:
            return await self._confirm_start(await self._read(run_id))
        try:
            run = await self._read(run_id)
            await self._report(run, proposal)
        finally:
            # This claim is over whatever the answer: a report retried later (the daemon's
            # spool) is checked against the run's history instead.
            self.claims.held.pop(run_id, None)
            if proposal.type.is_terminal or proposal.type is StateType.SCHEDULED:
                # The daemon reports an end (or hands a run back) once its process is over.
                await self._remove_workdir(run_id)
                self.control.unregister(run_id)
                self.hooks.forget(run_id)
                self.output.forget(run_id)
                self.identity.run_names.pop(run_id, None)
        return self._flow_run(run)

    async def _report(self, run: PRun, proposal: StateProposal) -> None:
        kind = proposal.type
        if kind is StateType.SCHEDULED:
            await self._check_ours(run)
            await self._propose(run, "SCHEDULED", proposal.message, {"scheduled_time": _now()})
        elif kind is StateType.CANCELLED:
            if run.state_type not in ("COMPLETED", "FAILED", "CANCELLED"):
                await self._check_ours(run)
                await self._cancelled(run, proposal, proposal.message)
        elif kind.is_terminal:
            if run.state_type == "CANCELLING":
                await self._check_ours(run)
                await self._cancelled(run, proposal, "the flow's process ended while cancelling")
            elif run.state_type in ("PENDING", "RUNNING"):
                await self._check_ours(run)
                await self._report_end(run, proposal)
            # Terminal: the engine reported it. SCHEDULED or PAUSED: the engine handed the run
            # back (a pause with reschedule); it will be claimed again when it is due.
        else:
            await self._propose(run, kind.value, proposal.message)

    async def _confirm_start(self, run: PRun) -> FlowRun:
        held = self.claims.held.get(run.id)
        ours = run.state_type == "PENDING" and (
            held is None
            or (run.state is not None and is_ours(run.state, "PENDING", held.transition_id))
        )
        if ours:
            return self._flow_run(run)
        self.claims.held.pop(run.id, None)
        await self._remove_workdir(run.id)  # the daemon will not start it
        if run.state_type == "CANCELLING" and held is not None:
            # Cancelled while PENDING: nobody else will finish the cancel.
            with contextlib.suppress(Conflict):
                await self._propose(run, "CANCELLED", "cancelled before it started")
        raise Conflict(
            f"run {run.id} is {run.state_type}, no longer claimed by this agent: not starting it",
            status_code=409,
        )

    async def _report_end(self, run: PRun, proposal: StateProposal) -> None:
        info = proposal.runner_info or {}
        code = info.get("exit_code")
        if not isinstance(code, int):
            # The process never ran (runner missing, bad working directory…): say why.
            await self._propose(run, proposal.type.value, proposal.message)
            return
        if code < 0:
            how = f"was killed by signal {_signal_name(-code)}"
        else:
            how = f"exited with code {code}"
        message = f"flow process {how} without reporting a final state"
        headline = (proposal.message or "").split("\n", 1)[0]
        if headline.startswith("out of memory"):
            message += f": {headline}"  # a container's OOM kill (Docker runner)
        if proposal.message and "\n" in proposal.message:
            message += "\n" + proposal.message.split("\n", 1)[1]  # the stderr tail
        await self._propose(run, "CRASHED", message)
        # As Prefect's worker: CRASHED first, then the why, then the crash hooks.
        await self.identity.say(run.id, exit_lines(code))
        await self.output.ship(self.http, run.id)
        await self.hooks.run("crashed", run.id)

    async def _cancelled(self, run: PRun, proposal: StateProposal, message: str | None) -> None:
        """End a cancelled run: its process is gone; CANCELLED (never CRASHED on the way), then
        the cancellation hooks. Prefect's worker runs the hooks first; loading the flow for them
        takes seconds, and the cancel is not held back by them here (as for crashes)."""
        await self._propose(run, "CANCELLED", message)
        code = (proposal.runner_info or {}).get("exit_code")
        if isinstance(code, int) and code != 0:
            await self.output.ship(self.http, run.id)  # killed: the engine shipped nothing more
        await self.hooks.run("cancellation", run.id, message)

    async def _check_ours(self, run: PRun) -> None:
        """Refuse a report about a claim that is over: the run's last PENDING must be ours (our
        transition id, or for a run of an earlier life, our name and host in its message)."""
        pending = run.state if run.state_type == "PENDING" else await self._last_pending(run)
        held = self.claims.held.get(run.id)
        if held is not None:
            ours = pending is not None and pending.transition_id == str(held.transition_id)
        else:
            claimer = claimer_of(pending)
            ours = claimer is not None and self._is_us(claimer, any_life=True)
        if not ours:
            raise Conflict(f"run {run.id} was claimed again since: report dropped", status_code=409)

    async def _propose(
        self, run: PRun, kind: str, message: str | None, details: dict[str, Any] | None = None
    ) -> None:
        transition = uuid4()
        body = {
            "state": {
                "type": kind,
                "message": message,
                "state_details": {"transition_id": str(transition), **(details or {})},
            },
            "force": False,
        }
        response = await self.http.request("POST", f"flow_runs/{run.id}/set_state", json=body)
        result = PResult.model_validate(response.json())
        if result.status == "ACCEPT" or is_ours(result.state, kind, transition):
            run.state = result.state or run.state
            return
        if result.state is not None:
            run.state = result.state
        raise Conflict(
            f"Prefect refused {kind} ({result.status}): {result.reason}", status_code=409
        )

    async def get_run(self, run_id: UUID) -> FlowRun:
        return self._flow_run(await self._read(run_id))

    async def _read(self, run_id: UUID) -> PRun:
        return await self.claims.read(run_id)

    def _flow_run(self, run: PRun) -> FlowRun:
        held = self.claims.held.get(run.id)
        return flow_run(
            run,
            deployment_name=held.deployment_name if held else "",
            queue_id=self._served.id if self._served else UUID(int=0),
        )

    # ------------------------------------------------------------------ the running process

    async def update_runner_info(self, run_id: UUID, info: dict[str, Any]) -> None:
        pid = info.get("pid")
        if pid is None:
            return
        await self.http.request(
            "PATCH",
            f"flow_runs/{run_id}",
            json={"infrastructure_pid": self.identity.infrastructure_pid(self.hostname, pid)},
        )
        name = self.identity.run_names.get(run_id, str(run_id))
        await self.identity.say(
            run_id, [(logging.INFO, f"Flow run '{name}' submitted to infrastructure")]
        )

    async def send_logs(
        self, run_id: UUID, lines: Sequence[LogLineCreate], *, batch_id: UUID | None = None
    ) -> None:
        """Ship the agent's own lines; the flow's output reaches Prefect through the engine.

        Prefect has no batch ids: a batch resent after a lost answer may show up twice. The
        flow's own lines are kept, to be shipped if the agent has to end the run.
        """
        self.output.keep(run_id, lines)
        logs = [
            {
                "flow_run_id": str(run_id),
                "level": _level(line.level),
                "message": line.line,
                "name": LOGGER_NAME,
                "timestamp": line.timestamp.isoformat(),
            }
            for line in lines
            if line.stream is LogStream.AGENT
        ]
        if logs:
            await self.http.request("POST", "logs/", json=logs)

    async def cancelling_runs(self, agent_id: UUID) -> list[UUID]:
        """Our launched runs that someone asked to cancel (CANCELLING) or marked CANCELLED.

        Prefect's engine answers the daemon's SIGTERM with a forced CRASHED ("Execution was
        aborted by a termination signal"); the daemon's CANCELLED then replaces it (set_state).
        """
        launched = [run_id for run_id, held in self.claims.held.items() if held.handed_out]
        found: list[UUID] = []
        for start in range(0, len(launched), PAGE):
            page = launched[start : start + PAGE]
            runs = await self._filter(
                {
                    "id": {"any_": [str(i) for i in page]},
                    "state": {"type": {"any_": ["CANCELLING", "CANCELLED"]}},
                }
            )
            found.extend(run.id for run in runs)
        return found

    async def claimed_runs(self, agent_id: UUID) -> list[FlowRun]:
        """Runs of our queue this agent claimed and does not run now (the daemon skips those it
        runs): claimed by an earlier life (same name, same host, a dead pid), or by this one
        and never handed out (a claim cancelled at shutdown)."""
        if self._served is None:
            return []
        found: list[FlowRun] = []
        offset = 0
        while True:
            live = {"state": {"type": {"any_": ["PENDING", "RUNNING", "CANCELLING"]}}}
            served = self._served
            if len(served.queues) == 1 and is_tag_queue(served.queues[0]):
                # A tag-filter queue's runs are other queues' (prefect_tagqueues).
                runs = await self._filter(
                    live | tag_queue_runs_filter(served.queues[0]), offset=offset
                )
            else:
                runs = await self._filter(
                    live,
                    work_queue_ids=() if served.every_queue else served.ids,
                    work_pool=served.pool.name if served.every_queue else None,
                    offset=offset,
                )
            for run in runs:
                held = self.claims.held.get(run.id)
                if held is not None and held.handed_out:
                    found.append(self._flow_run(run))
                    continue
                claimer = await self._claimer_of(run)
                if claimer is not None and self._is_us(claimer, any_life=False):
                    found.append(self._flow_run(run))
            if len(runs) < PAGE:
                return found
            offset += PAGE

    async def _claimer_of(self, run: PRun) -> Claimer | None:
        if run.state_type == "PENDING":
            return claimer_of(run.state)
        location = split_infrastructure_pid(run.infrastructure_pid)
        if location is not None and location[0] != self.hostname:
            return None  # launched on another host: not ours, no need to read its history
        return claimer_of(await self._last_pending(run))

    async def _last_pending(self, run: PRun) -> PState | None:
        response = await self.http.request(
            "GET", "flow_run_states/", params={"flow_run_id": str(run.id)}
        )
        states = TypeAdapter(list[PState]).validate_python(response.json())
        pending = [s for s in states if s.type == "PENDING"]
        return max(pending, key=lambda s: s.timestamp) if pending else None

    def _is_us(self, claimer: Claimer, *, any_life: bool) -> bool:
        """Claimed by this agent: same name and host, and this process or a dead one (a live
        other process of the same name is a second agent with our name: leave its runs)."""
        if claimer.name != self._agent_name or claimer.host != self.hostname:
            return False
        return any_life or claimer.pid == self.pid or not _pid_alive(claimer.pid)

    async def _filter(
        self,
        flow_runs: dict[str, Any],
        *,
        work_queue_ids: Collection[UUID] = (),
        work_pool: str | None = None,
        offset: int = 0,
    ) -> list[PRun]:
        body: dict[str, Any] = {"flow_runs": flow_runs, "limit": PAGE, "offset": offset}
        if work_queue_ids:
            body["work_queues"] = {"id": {"any_": [str(i) for i in work_queue_ids]}}
        if work_pool is not None:
            body["work_pools"] = {"name": {"any_": [work_pool]}}
        response = await self.http.request("POST", "flow_runs/filter", json=body)
        return TypeAdapter(list[PRun]).validate_python(response.json())


def _now() -> str:
    return utcnow().isoformat()


def _level(name: str) -> int:
    level = logging.getLevelName(name.upper())
    return level if isinstance(level, int) else logging.INFO


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
