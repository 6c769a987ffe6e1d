"""The claim sweep: one look a second for due runs that no poke announced.

Routes wake the claims held on a queue after a commit that may have given it work
(:class:`~agent.server.claims.ClaimWakeups`), and on PostgreSQL the wake-ups travel to the other
replicas. What no poke announces is still found here: a run written by a process that pokes no
one, a wake-up lost between replicas or while the database was away, a run held back by a limit
whose slot freed elsewhere. Every server (each replica: it sweeps for its own waiters) asks the
database once per :data:`~agent.server.claims.RECHECK_SECONDS` which of the queues its claims
are held on have a run due within the longest lead asked for, and wakes those waiters; they
claim as they would after a poke.

Each held claim used to look again on its own once a second, so 1,000 idle agents cost 1,000
claim transactions a second; the sweep costs one query.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import anyio
import structlog
from sqlalchemy import func, select

from agent.models import StateType, utcnow
from agent.server.claims import RECHECK_SECONDS, ClaimWakeups
from agent.server.db import Database
from agent.server.orm import FlowRunRow

log = structlog.get_logger("agent.server.claim_sweep")


def due_queues(db: Database, held: dict[uuid.UUID, float]) -> set[uuid.UUID]:
    """The queues of ``held`` (queue id → lead in seconds) with a SCHEDULED run due within
    their lead."""
    with db.read() as session:
        now = utcnow()
        firsts = session.execute(
            select(FlowRunRow.work_queue_id, func.min(FlowRunRow.expected_start_time))
            .where(
                FlowRunRow.work_queue_id.in_(list(held)),
                FlowRunRow.state_type == StateType.SCHEDULED.value,
                FlowRunRow.expected_start_time <= now + timedelta(seconds=max(held.values())),
            )
            .group_by(FlowRunRow.work_queue_id)
        ).all()
    return {
        queue_id for queue_id, first in firsts if first <= now + timedelta(seconds=held[queue_id])
    }


async def claim_sweep(
    db: Database, notifier: ClaimWakeups, interval: float = RECHECK_SECONDS
) -> None:
    """Background task of every server: wake the held claims of queues with due runs, forever."""
    while True:
        await anyio.sleep(interval)
        held = notifier.held()
        if not held:
            continue
        try:
            due = await db.run(due_queues, db, held)
        except Exception:  # the database away for a while must not end the sweep
            log.warning("claim_sweep_failed", retry_in=interval, exc_info=True)
            continue
        # Not relayed: every replica sweeps for its own waiters.
        notifier.notify(due, relayed=True)
