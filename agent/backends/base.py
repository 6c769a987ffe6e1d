"""The Backend Protocol: the conversation the daemon has with a work-queue API."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable
from uuid import UUID

from agent.models import (
    AgentRecord,
    ClaimedRun,
    FlowRun,
    Heartbeat,
    LogLineCreate,
    StateProposal,
    WorkQueue,
)


class Backend(Protocol):
    """What the daemon needs from a work-queue server (ours or Prefect's)."""

    several_queues: ClassVar[bool]
    """Whether one agent may serve several queues (one claim covering them all)."""

    async def get_queue(self, queue_id: UUID) -> WorkQueue:
        """Resolve the queue; raises NotFound when there is no such queue."""
        ...

    async def heartbeat(self, beat: Heartbeat) -> AgentRecord:
        """Register or refresh this agent; the first call gives the agent its id."""
        ...

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
        """Atomically take up to ``limit`` due runs; may wait up to ``wait_seconds`` for one.

        ``queue_ids`` in strict priority order: one request covers them all. A backend that
        serves one queue per agent refuses more with a ConfigError.

        ``claim_id`` is an idempotency key: the same id again answers what the first call took.
        ``lead_seconds``: runs due that soon may be handed over early (a backend may ignore it).
        """
        ...

    async def set_state(self, run_id: UUID, proposal: StateProposal) -> FlowRun:
        """Propose a state; raises Conflict when the server refuses the transition."""
        ...

    async def update_runner_info(self, run_id: UUID, info: dict[str, Any]) -> None: ...

    async def send_logs(
        self, run_id: UUID, lines: Sequence[LogLineCreate], *, batch_id: UUID | None = None
    ) -> None:
        """Append lines; a batch resent with the same ``batch_id`` is stored once."""
        ...

    async def get_run(self, run_id: UUID) -> FlowRun: ...

    async def claimed_runs(self, agent_id: UUID) -> list[FlowRun]:
        """This agent's runs the server thinks are PENDING, RUNNING or CANCELLING."""
        ...

    async def cancelling_runs(self, agent_id: UUID) -> list[UUID]:
        """Ids of this agent's runs that someone asked to cancel."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class NamedQueues(Protocol):
    """A backend whose queues can be found by name as well as by UUID (ours)."""

    async def get_queue_by_name(self, name: str) -> WorkQueue:
        """Raises NotFound when no queue has that name."""
        ...


@runtime_checkable
class InterruptAware(Protocol):
    """A backend that has a say before the daemon interrupts a run's process (Prefect's)."""

    async def before_interrupt(self, run_id: UUID, *, cancel: bool) -> bool:
        """Called before SIGTERM; ``cancel`` when the run is being cancelled (by a user or at
        shutdown). False: the daemon kills the process at once instead of interrupting it
        (an interrupt would be taken for a crash)."""
        ...
