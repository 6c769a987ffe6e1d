"""Handing runs to agents: the atomic claim and the long poll around it.

The claim is one write transaction (``BEGIN IMMEDIATE``), and each run moves to PENDING with a
compare-and-set ``UPDATE … WHERE state_type = 'SCHEDULED'``: a run is handed out once even when
two server processes share the database.

The long poll waits on a :class:`Notifier`, which the routes poke after a commit that may have
made work available to a queue. Writes from another process poke nobody, so a waiter also
re-checks every :data:`RECHECK_SECONDS`, and wakes on its own when the queue's next future run
becomes due.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import anyio
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from agent.models import ClaimedRun, ClaimRequest, StateType, utcnow
from agent.server.db import Database
from agent.server.lifecycle import ACTIVE_STATES, record_state
from agent.server.orm import AgentRow, DeploymentRow, FlowRunRow, WorkQueueRow
from agent.server.views import deployment_model, get_agent, get_queue, run_model

RECHECK_SECONDS = 1.0
# Due runs are scanned in pages because tag matching happens in Python.
_SCAN_PAGE = 200
# Wake a hair after a future run's start time so that it is due when we look.
_DUE_SLACK_SECONDS = 0.002


class Notifier:
    """Wakes claimers held in a long poll when their queue may have work for them.

    Used only from the event loop thread: routes call :meth:`notify` after their write
    transaction has committed, so a woken claimer always sees the change. A waiter takes its
    event *before* it looks at the database, so a change committed between its look and its
    wait still wakes it.
    """

    def __init__(self) -> None:
        self._events: dict[uuid.UUID, asyncio.Event] = {}
        self.closed = False

    def waiter(self, queue_id: uuid.UUID) -> asyncio.Event:
        event = self._events.get(queue_id)
        if event is None:
            event = self._events[queue_id] = asyncio.Event()
        return event

    def notify(self, queue_ids: Iterable[uuid.UUID]) -> None:
        for queue_id in queue_ids:
            event = self._events.pop(queue_id, None)
            if event is not None:
                event.set()

    def close(self) -> None:
        """Release every waiter for good: the server is shutting down."""
        self.closed = True
        self.notify(list(self._events))


@dataclass(frozen=True)
class ClaimAttempt:
    claimed: list[ClaimedRun]
    # The earliest expected_start_time of the queue's SCHEDULED runs that are not due yet.
    next_due: datetime | None


def _free_slots(session: Session, queue: WorkQueueRow) -> int | None:
    if queue.concurrency_limit is None:
        return None
    active = session.scalar(
        select(func.count())
        .select_from(FlowRunRow)
        .where(FlowRunRow.work_queue_id == queue.id, FlowRunRow.state_type.in_(ACTIVE_STATES))
    )
    return max(0, queue.concurrency_limit - (active or 0))


def _due_matching(
    session: Session, queue_id: uuid.UUID, required: set[str], due_by: datetime, wanted: int
) -> list[tuple[FlowRunRow, DeploymentRow]]:
    """Up to ``wanted`` due runs of the queue carrying every ``required`` tag, soonest first.

    Runs whose deployment was deleted are skipped: there is nothing left to launch them with.
    """
    found: list[tuple[FlowRunRow, DeploymentRow]] = []
    deployments: dict[uuid.UUID, DeploymentRow | None] = {}
    offset = 0
    while len(found) < wanted:
        # Without tags to match every due run is taken, so read no more rows than are wanted;
        # the deployments are read once each rather than joined onto every run's row.
        page_size = _SCAN_PAGE if required else wanted - len(found)
        page = session.scalars(
            select(FlowRunRow)
            .where(
                FlowRunRow.work_queue_id == queue_id,
                FlowRunRow.state_type == StateType.SCHEDULED.value,
                FlowRunRow.expected_start_time <= due_by,
            )
            .order_by(FlowRunRow.expected_start_time)
            .limit(page_size)
            .offset(offset)
        ).all()
        for run in page:
            if not required.issubset(run.tags):
                continue
            if run.deployment_id not in deployments:
                deployments[run.deployment_id] = session.get(DeploymentRow, run.deployment_id)
            deployment = deployments[run.deployment_id]
            if deployment is not None:
                found.append((run, deployment))
                if len(found) == wanted:
                    break
        if len(page) < page_size:
            break
        offset += page_size
    return found


def claim_once(db: Database, queue_id: uuid.UUID, request: ClaimRequest) -> ClaimAttempt:
    """One claim transaction: move due, matching runs to PENDING for the agent."""
    with db.write() as session:
        queue = get_queue(session, queue_id)
        agent = get_agent(session, request.agent_id)
        # Runs due within the agent's lead are handed over early, so it can start them on time.
        now = utcnow()
        due_by = now + timedelta(seconds=request.lead_seconds)
        next_due = session.scalar(
            select(func.min(FlowRunRow.expected_start_time)).where(
                FlowRunRow.work_queue_id == queue_id,
                FlowRunRow.state_type == StateType.SCHEDULED.value,
                FlowRunRow.expected_start_time > due_by,
            )
        )
        if request.claim_id is not None and request.claim_id == agent.last_claim_id:
            # The same claim again: its answer was lost on the way. Answer what it took.
            return ClaimAttempt(_replay(session, agent), next_due)
        if queue.paused:
            return ClaimAttempt([], next_due)
        wanted = request.limit
        free = _free_slots(session, queue)
        if free is not None:
            wanted = min(wanted, free)
        if wanted <= 0:
            return ClaimAttempt([], next_due)

        required = set(queue.tags) | set(request.tags)
        claimed: list[ClaimedRun] = []
        candidates = _due_matching(session, queue_id, required, due_by, wanted)
        taken = _take(session, [run.id for run, _ in candidates], agent.id)
        for run, deployment in candidates:
            if run.id not in taken:
                continue
            run.agent_id = agent.id
            record_state(session, run, StateType.PENDING, now=now)
            claimed.append(
                ClaimedRun(flow_run=run_model(run), deployment=deployment_model(deployment))
            )
        if request.claim_id is not None and claimed:
            agent.last_claim_id = request.claim_id
            agent.last_claim_run_ids = [str(c.flow_run.id) for c in claimed]
        return ClaimAttempt(claimed, next_due)


def _take(session: Session, run_ids: list[uuid.UUID], agent_id: uuid.UUID) -> set[uuid.UUID]:
    """Move the runs that are still SCHEDULED to PENDING for the agent; their ids.

    The write lock already keeps other claimers out; this compare-and-set (one UPDATE for the
    whole claim) is the guarantee that does not depend on every writer of the file taking it.
    The ORM objects are updated by the caller, so the session is not synchronised here.
    """
    if not run_ids:
        return set()
    session.execute(
        update(FlowRunRow)
        .where(FlowRunRow.id.in_(run_ids), FlowRunRow.state_type == StateType.SCHEDULED.value)
        .values(state_type=StateType.PENDING.value, agent_id=agent_id)
        .execution_options(synchronize_session=False)
    )
    return set(
        session.scalars(
            select(FlowRunRow.id).where(
                FlowRunRow.id.in_(run_ids),
                FlowRunRow.agent_id == agent_id,
                FlowRunRow.state_type == StateType.PENDING.value,
            )
        )
    )


def _replay(session: Session, agent: AgentRow) -> list[ClaimedRun]:
    """The runs of the agent's last claim that it still holds, unstarted."""
    replayed: list[ClaimedRun] = []
    for raw_id in agent.last_claim_run_ids:
        run = session.get(FlowRunRow, uuid.UUID(raw_id))
        if run is None or run.agent_id != agent.id or run.state_type != StateType.PENDING.value:
            continue
        deployment = session.get(DeploymentRow, run.deployment_id)
        if deployment is not None:
            replayed.append(
                ClaimedRun(flow_run=run_model(run), deployment=deployment_model(deployment))
            )
    return replayed


async def claim(
    db: Database,
    notifier: Notifier,
    queue_id: uuid.UUID,
    request: ClaimRequest,
    client_gone: Callable[[], Awaitable[bool]],
) -> list[ClaimedRun]:
    """Claim now, or hold the request until runs can be claimed or ``wait_seconds`` pass."""
    deadline = anyio.current_time() + request.wait_seconds
    while True:
        wake = notifier.waiter(queue_id)
        attempt = await db.run(claim_once, db, queue_id, request)
        if attempt.claimed or request.limit == 0 or notifier.closed:
            return attempt.claimed
        timeout = min(deadline - anyio.current_time(), RECHECK_SECONDS)
        if timeout <= 0:
            return []
        if attempt.next_due is not None:
            until_due = (attempt.next_due - utcnow()).total_seconds() - request.lead_seconds
            until_due += _DUE_SLACK_SECONDS
            timeout = min(timeout, max(until_due, 0.0))
        with anyio.move_on_after(timeout):
            await wake.wait()
        # Runs claimed for a client that hung up would sit in PENDING until someone noticed.
        if await client_gone():
            return []
