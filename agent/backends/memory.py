"""A work-queue server in memory: the :class:`Backend` for fast unit tests of the agent.

It keeps the rules the daemon relies on (atomic claims of due runs, the transitions the real
server allows, attempts as fencing tokens, cancellation through CANCELLING) and nothing else:
no schedules, leases, retries or persistence; the real server's own tests prove those. A test
adds runs, moves them (cancel), makes calls fail, and reads what the agent reported:

    backend = InMemoryBackend()
    queue = backend.add_queue("q")
    run = backend.add_run(queue, command=["true"])
    ...                                   # an Agent on ``backend`` claims and runs it
    assert backend.states(run.id) == ["SCHEDULED", "PENDING", "RUNNING", "COMPLETED"]
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar
from uuid import UUID, uuid4

from agent.backends.base import Backend
from agent.errors import Conflict, FlowAgentError, NotFound
from agent.models import (
    DEFAULT_LEASE_SECONDS,
    AgentRecord,
    AgentStatus,
    ClaimedRun,
    Deployment,
    FlowRun,
    Heartbeat,
    LogLineCreate,
    State,
    StateProposal,
    StateType,
    WorkQueue,
    transition_error,
    utcnow,
)

_HELD = (StateType.PENDING, StateType.RUNNING, StateType.CANCELLING)


@dataclass
class Call:
    """One call the agent made, in order: what it asked and about which run."""

    method: str
    run_id: UUID | None = None
    detail: Any = None


@dataclass
class InMemoryBackend:
    several_queues: ClassVar[bool] = True

    lease_seconds: float = DEFAULT_LEASE_SECONDS
    queues: dict[UUID, WorkQueue] = field(default_factory=dict)
    deployments: dict[UUID, Deployment] = field(default_factory=dict)
    runs: dict[UUID, FlowRun] = field(default_factory=dict)
    history: dict[UUID, list[State]] = field(default_factory=dict)
    logs: dict[UUID, list[LogLineCreate]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    #: method name -> the error each call of it raises, until removed (a server that is down)
    failing: dict[str, FlowAgentError] = field(default_factory=dict)
    _agents: dict[str, AgentRecord] = field(default_factory=dict)
    _claims: dict[UUID, list[ClaimedRun]] = field(default_factory=dict)
    _batches: set[UUID] = field(default_factory=set)
    _work: asyncio.Event = field(default_factory=asyncio.Event)

    # ------------------------------------------------------------------ what a test does

    def add_queue(self, name: str = "q") -> WorkQueue:
        queue = WorkQueue(
            id=uuid4(), name=name, tags=[], concurrency_limit=None, paused=False, created=utcnow()
        )
        self.queues[queue.id] = queue
        return queue

    def add_run(self, queue: WorkQueue, **deployment: Any) -> FlowRun:
        """A run due now of a new deployment with ``deployment``'s fields (a command: ["true"])."""
        now = utcnow()
        fields = {"command": ["true"]} | deployment
        made = Deployment(
            id=uuid4(), name=f"d-{len(self.deployments)}", work_queue_id=queue.id,
            created=now, updated=now, **fields,
        )  # fmt: skip
        self.deployments[made.id] = made
        run = FlowRun(
            id=uuid4(),
            name=f"run-{len(self.runs)}",
            deployment_id=made.id,
            deployment_name=made.name,
            work_queue_id=queue.id,
            parameters=made.parameters,
            tags=made.tags,
            env={},
            expected_start_time=now,
            state=State(type=StateType.SCHEDULED, name="Scheduled", timestamp=now),
            created=now,
        )
        self.runs[run.id] = run
        self.history[run.id] = [run.state]
        self._work.set()
        return run

    def cancel(self, run_id: UUID) -> None:
        """What `agent flow-run cancel` does to a running run."""
        self._move(run_id, StateType.CANCELLING, "cancel requested")

    def states(self, run_id: UUID) -> list[str]:
        return [state.type.value for state in self.history[run_id]]

    def lines(self, run_id: UUID) -> list[str]:
        return [line.line for line in self.logs.get(run_id, [])]

    def methods(self) -> list[str]:
        return [call.method for call in self.calls]

    # ------------------------------------------------------------------ the Backend Protocol

    async def get_queue(self, queue_id: UUID) -> WorkQueue:
        self._call("get_queue")
        if queue_id not in self.queues:
            raise NotFound(f"no work queue {queue_id}")
        return self.queues[queue_id]

    async def heartbeat(self, beat: Heartbeat) -> AgentRecord:
        self._call("heartbeat")
        known = self._agents.get(beat.name)
        record = AgentRecord(
            id=known.id if known else uuid4(),
            name=beat.name,
            work_queue_id=beat.work_queue_id,
            work_queue_ids=beat.work_queue_ids or [beat.work_queue_id],
            tags=list(beat.tags),
            hostname=beat.hostname,
            pid=beat.pid,
            version=beat.version,
            runs_in_flight=beat.runs_in_flight,
            heartbeat_interval_seconds=beat.heartbeat_interval_seconds,
            metrics=beat.metrics,
            last_heartbeat=utcnow(),
            status=AgentStatus.ONLINE,
            lease_seconds=self.lease_seconds,
        )
        self._agents[beat.name] = record
        return record

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
        self._call("claim")
        if claim_id is not None and claim_id in self._claims:
            return self._claims[claim_id]
        for queue_id in queue_ids:
            if queue_id not in self.queues:
                raise NotFound(f"no work queue {queue_id}")
        taken = self._take(queue_ids, agent_id, limit, lead_seconds)
        if not taken and wait_seconds > 0:
            self._work.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._work.wait(), wait_seconds)
            taken = self._take(queue_ids, agent_id, limit, lead_seconds)
        if claim_id is not None:
            self._claims[claim_id] = taken
        return taken

    async def set_state(self, run_id: UUID, proposal: StateProposal) -> FlowRun:
        self._call("set_state", run_id, proposal.type.value)
        run = self._run(run_id)
        if proposal.attempt is not None and proposal.attempt != run.attempt:
            raise Conflict(f"stale report: attempt {proposal.attempt} is over", status_code=409)
        if proposal.type is StateType.RUNNING and run.state.type is StateType.CANCELLING:
            raise Conflict("the run is being cancelled", status_code=409)
        self._move(run_id, proposal.type, proposal.message, proposal.runner_info)
        return self.runs[run_id]

    async def update_runner_info(self, run_id: UUID, info: dict[str, Any]) -> None:
        self._call("update_runner_info", run_id)
        run = self._run(run_id)
        self.runs[run_id] = run.model_copy(update={"runner_info": run.runner_info | info})

    async def send_logs(
        self, run_id: UUID, lines: Sequence[LogLineCreate], *, batch_id: UUID | None = None
    ) -> None:
        self._call("send_logs", run_id, len(lines))
        self._run(run_id)
        if batch_id is not None:
            if batch_id in self._batches:
                return
            self._batches.add(batch_id)
        self.logs.setdefault(run_id, []).extend(lines)

    async def get_run(self, run_id: UUID) -> FlowRun:
        self._call("get_run", run_id)
        return self._run(run_id)

    async def claimed_runs(self, agent_id: UUID) -> list[FlowRun]:
        self._call("claimed_runs")
        return [r for r in self.runs.values() if r.agent_id == agent_id and r.state.type in _HELD]

    async def cancelling_runs(self, agent_id: UUID) -> list[UUID]:
        self._call("cancelling_runs")
        return [
            r.id
            for r in self.runs.values()
            if r.agent_id == agent_id and r.state.type is StateType.CANCELLING
        ]

    async def aclose(self) -> None:
        self._call("aclose")

    # ------------------------------------------------------------------ inside

    def _call(self, method: str, run_id: UUID | None = None, detail: Any = None) -> None:
        self.calls.append(Call(method, run_id, detail))
        if method in self.failing:
            raise self.failing[method]

    def _run(self, run_id: UUID) -> FlowRun:
        if run_id not in self.runs:
            raise NotFound(f"no flow run {run_id}")
        return self.runs[run_id]

    def _take(
        self, queue_ids: Sequence[UUID], agent_id: UUID, limit: int, lead_seconds: float
    ) -> list[ClaimedRun]:
        """Due runs in strict queue priority, each queue's in expected-start order."""
        horizon = utcnow() + timedelta(seconds=lead_seconds)
        due = sorted(
            (
                r
                for r in self.runs.values()
                if r.work_queue_id in queue_ids
                and r.state.type is StateType.SCHEDULED
                and r.expected_start_time <= horizon
            ),
            key=lambda r: (list(queue_ids).index(r.work_queue_id), r.expected_start_time),
        )[:limit]
        taken = []
        for run in due:
            self.runs[run.id] = run.model_copy(update={"agent_id": agent_id})
            self._move(run.id, StateType.PENDING, None)
            deployment = self.deployments[run.deployment_id]
            taken.append(ClaimedRun(flow_run=self.runs[run.id], deployment=deployment))
        return taken

    def _move(
        self,
        run_id: UUID,
        to: StateType,
        message: str | None,
        runner_info: dict[str, Any] | None = None,
    ) -> None:
        run = self._run(run_id)
        problem = transition_error(run.state.type, to)
        if problem is not None:
            raise Conflict(problem, status_code=409)
        state = State(type=to, name=to.value.title(), message=message, timestamp=utcnow())
        update: dict[str, Any] = {"state": state}
        if runner_info:
            update["runner_info"] = run.runner_info | runner_info
        self.runs[run_id] = run.model_copy(update=update)
        self.history[run_id].append(state)


if TYPE_CHECKING:  # mypy proves the fake meets the protocol the daemon uses
    _backend: Backend = InMemoryBackend()
