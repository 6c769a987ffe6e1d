"""Handing runs to agents: the atomic claim and the long poll around it.

The claim is one transaction, and each run moves to PENDING with a compare-and-set
``UPDATE … WHERE state_type = 'SCHEDULED'``: a run is handed out once even when several server
processes share the database. On SQLite the transaction is a write transaction
(``BEGIN IMMEDIATE``): claims go one at a time. On PostgreSQL claimers do not wait for each
other: each locks its agent's row (so that one agent's retried claim, same ``claim_id``, sees
the first one's answer) and reads the due runs ``FOR UPDATE SKIP LOCKED``, passing over the runs
another claim is taking; only when a concurrency limit could apply does it take the write lock,
so that the counts it checks are the counts it changes.

One claim covers every queue an agent serves, in its priority order, and checks the
concurrency limits of ``agent/server/limits.py`` in the same transaction.

The long poll waits on a :class:`ClaimWakeups`, which the routes poke after a commit that may have
made work available to a queue. On PostgreSQL the pokes travel to the other replicas too
(``agent/server/wakeup_relay.py``). A waiter wakes on its own when the queue's next future run
becomes due. Writes from a process that pokes nobody (or a poke lost on the way) are still
seen: one sweep per server (``agent/server/claim_sweep.py``) looks every
:data:`RECHECK_SECONDS` for due runs in the queues someone waits on and wakes their waiters, so
an idle fleet costs the database one query a second, not one claim per held poll.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import anyio
from sqlalchemy import and_, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from agent.models import AWAITING_SLOT, ClaimedRun, ClaimRequest, StateType, utcnow
from agent.server.db import Database
from agent.server.lifecycle import ACTIVE_STATES, finish_transition, record_state
from agent.server.limits import ANY_QUEUE, Blocked, ClaimLimits, any_limits
from agent.server.orm import AgentRow, DeploymentRow, FlowRunRow, WorkQueueRow
from agent.server.views import deployment_model, get_agent, not_found, run_model

# How often the sweep looks for due runs no one was woken for.
RECHECK_SECONDS = 1.0
# Due runs are scanned in pages because tag matching happens in Python.
_SCAN_PAGE = 200
# Wake a hair after a future run's start time so that it is due when we look.
_DUE_SLACK_SECONDS = 0.002


class ClaimWakeups:
    """Wakes claimers held in a long poll when one of their queues may have work for them.

    Used only from the event loop thread: routes call :meth:`notify` after their write
    transaction has committed, so a woken claimer always sees the change. A waiter takes its
    queues' wake-ups (futures, one per queue, shared by its waiters) *before* it looks at the
    database, so a change committed between its look and its wait still wakes it. Notifying
    :data:`ANY_QUEUE` wakes every waiter.
    """

    def __init__(self) -> None:
        # Futures rather than events: a held claim waits on its queues' futures themselves,
        # where an event needs a task per wait (a held poll's objects are what a full garbage
        # collection goes through: docs/PERFORMANCE.md).
        self._wakeups: dict[uuid.UUID, asyncio.Future[None]] = {}
        # The leads (seconds) of the claims held on each queue, one entry per held claim.
        self._holding: dict[uuid.UUID, list[float]] = {}
        self.closed = False
        # Told of every wake-up of this process, to pass on to other replicas
        # (agent/server/wakeup_relay.py).
        self.relays: list[Callable[[frozenset[uuid.UUID]], None]] = []

    def waiter(self, queue_id: uuid.UUID) -> asyncio.Future[None]:
        wakeup = self._wakeups.get(queue_id)
        if wakeup is None:
            wakeup = self._wakeups[queue_id] = asyncio.get_running_loop().create_future()
        return wakeup

    def waiters(self, queue_ids: Sequence[uuid.UUID]) -> list[asyncio.Future[None]]:
        """The futures done when any of ``queue_ids`` (or every queue) is notified."""
        return [self.waiter(queue_id) for queue_id in (*queue_ids, ANY_QUEUE)]

    @contextmanager
    def holding(self, queue_ids: Sequence[uuid.UUID], lead_seconds: float) -> Iterator[None]:
        """Count a claim held on ``queue_ids`` (with its lead) for the sweep, while it is."""
        for queue_id in queue_ids:
            self._holding.setdefault(queue_id, []).append(lead_seconds)
        try:
            yield
        finally:
            for queue_id in queue_ids:
                leads = self._holding[queue_id]
                leads.remove(lead_seconds)
                if not leads:
                    del self._holding[queue_id]

    def held(self) -> dict[uuid.UUID, float]:
        """The queues claims are held on, each with the longest lead one of them asked for."""
        return {queue_id: max(leads) for queue_id, leads in self._holding.items()}

    def notify(self, queue_ids: Iterable[uuid.UUID], *, relayed: bool = False) -> None:
        """Wake the waiters of ``queue_ids``; pass them on to the relays unless ``relayed``
        (they came from another replica)."""
        wanted = set(queue_ids)
        if not relayed and wanted:
            for relay in self.relays:
                relay(frozenset(wanted))
        if ANY_QUEUE in wanted:
            wanted = set(self._wakeups)
        for queue_id in wanted:
            wakeup = self._wakeups.pop(queue_id, None)
            if wakeup is not None and not wakeup.done():
                wakeup.set_result(None)

    def close(self) -> None:
        """Release every waiter for good: the server is shutting down (this one: the other
        replicas' waiters have nothing new to look at)."""
        self.closed = True
        self.notify([ANY_QUEUE], relayed=True)


async def _first_done(wakeups: Sequence[asyncio.Future[None]], timeout: float) -> None:
    """Return once any of ``wakeups`` is done, or after ``timeout`` seconds. The wake-ups are
    shared with other waiters: waiting here never cancels them."""
    await asyncio.wait(wakeups, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)


@dataclass(frozen=True)
class ClaimAttempt:
    claimed: list[ClaimedRun]
    # The earliest expected_start_time of the queues' SCHEDULED runs that are not due yet.
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


def _hold_back(session: Session, run: FlowRunRow, blocked: Blocked, now: datetime) -> None:
    """A due run over a limit: cancelled (cancel-new), or marked as waiting for a slot."""
    if blocked.cancel:
        finish_transition(session, run, StateType.CANCELLED, now=now, message=blocked.reason)
    elif run.state_name != AWAITING_SLOT or run.state_message != blocked.reason:
        record_state(
            session, run, StateType.SCHEDULED, now=now, name=AWAITING_SLOT, message=blocked.reason
        )


def _due_matching(
    session: Session,
    queue_id: uuid.UUID,
    required: set[str],
    due_by: datetime,
    wanted: int,
    limits: ClaimLimits,
    now: datetime,
) -> list[tuple[FlowRunRow, DeploymentRow]]:
    """Up to ``wanted`` due runs of the queue carrying every ``required`` tag, soonest first,
    that every concurrency limit lets go; those a limit holds back are marked (or cancelled)
    and passed over, so they hold up no one behind them.

    Runs whose deployment was deleted are skipped: there is nothing left to launch them with.
    """
    found: list[tuple[FlowRunRow, DeploymentRow]] = []
    deployments: dict[uuid.UUID, DeploymentRow | None] = {}
    # Deployments found at their own limit (enqueue): the rest of their runs wait too, so the
    # next pages leave them out rather than read a long backlog of them on every claim.
    full: set[uuid.UUID] = set()
    # Keyset paging: a run cancelled (cancel-new) while scanning must not shift the pages.
    after: tuple[datetime, uuid.UUID] | None = None
    while len(found) < wanted:
        # Without tags or limits every due run is taken, so read no more rows than are
        # wanted; the deployments are read once each rather than joined onto every run's row.
        page_size = _SCAN_PAGE if required or limits.any else wanted - len(found)
        query = select(FlowRunRow).where(
            FlowRunRow.work_queue_id == queue_id,
            FlowRunRow.state_type == StateType.SCHEDULED.value,
            FlowRunRow.expected_start_time <= due_by,
        )
        if full:
            query = query.where(FlowRunRow.deployment_id.not_in(full))
        if after is not None:
            query = query.where(
                or_(
                    FlowRunRow.expected_start_time > after[0],
                    and_(FlowRunRow.expected_start_time == after[0], FlowRunRow.id > after[1]),
                )
            )
        page = session.scalars(
            query.order_by(FlowRunRow.expected_start_time, FlowRunRow.id)
            .limit(page_size)
            # PostgreSQL: runs another claim is taking are passed over, not waited for.
            .with_for_update(skip_locked=True)
        ).all()
        for run in page:
            after = (run.expected_start_time, run.id)
            if not required.issubset(run.tags):
                continue
            if run.deployment_id not in deployments:
                deployments[run.deployment_id] = session.get(DeploymentRow, run.deployment_id)
            deployment = deployments[run.deployment_id]
            if deployment is None:
                continue
            blocked = limits.blocked(run, deployment) if limits.any else None
            if blocked is not None:
                _hold_back(session, run, blocked, now)
                if blocked.deployment_full and not blocked.cancel:
                    full.add(deployment.id)
                continue
            limits.hold(run, deployment)
            found.append((run, deployment))
            if len(found) == wanted:
                break
        if len(page) < page_size:
            break
    return found


# The most runs one claim marks as waiting for a slot; the scheduler's pass marks the rest.
_MARK_BATCH = 200


def _mark_held_back(
    session: Session, queue_id: uuid.UUID, due_by: datetime, limits: ClaimLimits, now: datetime
) -> None:
    """Show the due runs of deployments now at their limit as waiting, at once: the scan
    stops when the agent's slots are filled and would not reach them."""
    full = limits.full_deployments()
    if not full:
        return
    rows = session.scalars(
        select(FlowRunRow)
        .where(
            FlowRunRow.work_queue_id == queue_id,
            FlowRunRow.deployment_id.in_(full),
            FlowRunRow.state_type == StateType.SCHEDULED.value,
            FlowRunRow.expected_start_time <= due_by,
            FlowRunRow.state_name != AWAITING_SLOT,
        )
        .order_by(FlowRunRow.expected_start_time)
        .limit(_MARK_BATCH)
        .with_for_update(skip_locked=True)
    ).all()
    for run in rows:
        deployment = session.get(DeploymentRow, run.deployment_id)
        blocked = None if deployment is None else limits.blocked(run, deployment)
        if blocked is not None:
            _hold_back(session, run, blocked, now)


# The statements of every claim, built once: an idle fleet's long polls are, with its
# heartbeats, most of a server's work (agent/server/routes/agents.py says why).
_QUEUES_PAUSED = select(WorkQueueRow.id, WorkQueueRow.paused).where(
    WorkQueueRow.id.in_(bindparam("queue_ids", expanding=True))
)
_LAST_CLAIM = select(AgentRow.last_claim_id).where(AgentRow.id == bindparam("agent_id"))
# When the soonest SCHEDULED run of some queues is expected.
_SOONEST = select(func.min(FlowRunRow.expected_start_time)).where(
    FlowRunRow.work_queue_id.in_(bindparam("queue_ids", expanding=True)),
    FlowRunRow.state_type == StateType.SCHEDULED.value,
)
# ...of those not due by a time.
_SOONEST_AFTER = _SOONEST.where(FlowRunRow.expected_start_time > bindparam("due_by"))


def claim_once(db: Database, queue_ids: Sequence[uuid.UUID], request: ClaimRequest) -> ClaimAttempt:
    """A claim's answer: the runs it took, or (when none is due) when to look again."""
    return _nothing_due(db, queue_ids, request) or _claim(db, queue_ids, request)


def _nothing_due(
    db: Database, queue_ids: Sequence[uuid.UUID], request: ClaimRequest
) -> ClaimAttempt | None:
    """The answer of a claim that would find no run due, read without the write lock; None
    when a run may be due, or anything else (a missing queue or agent, a retried claim) needs
    the claim transaction.

    Most claims are long polls of idle agents: on SQLite each would otherwise take the one
    write lock, and a fleet's polls would queue its heartbeats behind them. A run made due
    after this look wakes the poll as it would wake one that claimed nothing (the waiter's
    events are taken before either look).
    """
    with db.read() as session:
        queues = session.execute(_QUEUES_PAUSED, {"queue_ids": list(queue_ids)}).all()
        agent = session.execute(_LAST_CLAIM, {"agent_id": request.agent_id}).one_or_none()
        if len(queues) < len(set(queue_ids)) or agent is None or request.limit <= 0:
            return None
        if request.claim_id is not None and request.claim_id == agent.last_claim_id:
            return None
        serving = [queue.id for queue in queues if not queue.paused]
        if not serving:
            return ClaimAttempt([], None)
        soonest = session.scalar(_SOONEST, {"queue_ids": serving})
    if soonest is not None and soonest <= utcnow() + timedelta(seconds=request.lead_seconds):
        return None
    return ClaimAttempt([], soonest)


def _claim(db: Database, queue_ids: Sequence[uuid.UUID], request: ClaimRequest) -> ClaimAttempt:
    """One claim transaction: move due, matching runs to PENDING for the agent.

    The queues are served in strict priority: every run the first may hand out now goes
    before any of the second's, and so on. A paused queue is passed over; a missing one is a
    404 naming it (the agent drops it and goes on with the rest).
    """
    with db.claim() as session:
        queues = [session.get(WorkQueueRow, queue_id) for queue_id in queue_ids]
        missing = [str(q) for q, row in zip(queue_ids, queues, strict=True) if row is None]
        if missing:
            raise not_found("work queue", ", ".join(missing))
        serving = [row for row in queues if row is not None and not row.paused]
        serialized = db.is_postgres and (
            any(row.concurrency_limit is not None for row in serving) or any_limits(session)
        )
        if serialized:
            # Before the agent's row, in the order writers take them: no deadlock.
            db.lock_writes(session)
        agent = get_agent(session, request.agent_id, lock=True)
        # Runs due within the agent's lead are handed over early, so it can start them on time.
        now = utcnow()
        due_by = now + timedelta(seconds=request.lead_seconds)
        next_due = None
        if serving:
            bound = {"queue_ids": [row.id for row in serving], "due_by": due_by}
            next_due = session.scalar(_SOONEST_AFTER, bound)
        if request.claim_id is not None and request.claim_id == agent.last_claim_id:
            # The same claim again: its answer was lost on the way. Answer what it took.
            return ClaimAttempt(_replay(session, agent), next_due)
        claimed: list[ClaimedRun] = []
        if not serving or request.limit <= 0:
            return ClaimAttempt(claimed, next_due)
        limits = ClaimLimits(session)
        if db.is_postgres and limits.any and not serialized:
            # A limit was made since we looked: its counts need the write lock, which cannot
            # be taken after the agent's row. Nothing now; the waiter looks again shortly.
            return ClaimAttempt(claimed, next_due)
        for queue in serving:
            wanted = request.limit - len(claimed)
            free = _free_slots(session, queue)
            if free is not None:
                wanted = min(wanted, free)
            if wanted <= 0:
                continue
            required = set(queue.tags) | set(request.tags)
            candidates = _due_matching(session, queue.id, required, due_by, wanted, limits, now)
            taken = _take(session, [run.id for run, _ in candidates], agent.id)
            for run, deployment in candidates:
                if run.id not in taken:
                    continue
                run.agent_id = agent.id
                record_state(session, run, StateType.PENDING, now=now)
                claimed.append(
                    ClaimedRun(flow_run=run_model(run), deployment=deployment_model(deployment))
                )
            if limits.any:  # after the take: the runs taken are PENDING now, not passed over
                _mark_held_back(session, queue.id, due_by, limits, now)
            if len(claimed) >= request.limit:
                break
        if request.claim_id is not None and claimed:
            agent.last_claim_id = request.claim_id
            agent.last_claim_run_ids = [str(c.flow_run.id) for c in claimed]
        return ClaimAttempt(claimed, next_due)


def _take(session: Session, run_ids: list[uuid.UUID], agent_id: uuid.UUID) -> set[uuid.UUID]:
    """Move the runs that are still SCHEDULED to PENDING for the agent; their ids.

    The write lock (SQLite) or the rows' locks (PostgreSQL) already keep other claimers out;
    this compare-and-set (one UPDATE for the whole claim) is the guarantee that does not depend
    on every writer taking them.
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
    notifier: ClaimWakeups,
    queue_ids: Sequence[uuid.UUID],
    request: ClaimRequest,
    client_gone: Callable[[], Awaitable[bool]],
) -> list[ClaimedRun]:
    """Claim now, or hold the request until runs can be claimed or ``wait_seconds`` pass.

    Held, it wakes as soon as any of the queues may have work (or a tag's slot frees).
    """
    deadline = anyio.current_time() + request.wait_seconds
    with notifier.holding(queue_ids, request.lead_seconds):
        while True:
            wake = notifier.waiters(queue_ids)
            attempt = await db.run_small(claim_once, db, queue_ids, request)
            if attempt.claimed or request.limit == 0 or notifier.closed:
                return attempt.claimed
            timeout = deadline - anyio.current_time()
            if timeout <= 0:
                return []
            if attempt.next_due is not None:
                until_due = (attempt.next_due - utcnow()).total_seconds() - request.lead_seconds
                until_due += _DUE_SLACK_SECONDS
                timeout = min(timeout, max(until_due, 0.0))
            await _first_done(wake, timeout)
            # Runs claimed for a client that hung up would sit in PENDING until someone noticed.
            if await client_gone():
                return []
            if anyio.current_time() >= deadline and not any(wakeup.done() for wakeup in wake):
                # Not a last look: nothing woke it, and the agent asks again at once.
                return []
