"""Leases: an agent's heartbeats keep its claimed runs; when they stop, the server resolves them.

A run claimed by an agent stays PENDING/RUNNING/CANCELLING only while that agent heartbeats.
Once ``lease_seconds`` pass after its last heartbeat, the run is CRASHED ("agent … stopped
heartbeating at …") — and retried if its deployment allows — or CANCELLED if someone had asked
to cancel it. The agent side fences itself well before that deadline (see ``agent/fence.py``),
so by the time the server hands a retry to someone else, the old execution is dead.

Time the server itself was down does not count against an agent: a lease runs from the later
of the agent's last heartbeat and the moment this server process started.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import anyio
import structlog
from sqlalchemy import select

from agent.models import StateType, utcnow
from agent.server.claims import ClaimWakeups
from agent.server.db import Database
from agent.server.lifecycle import ACTIVE_STATES, finish_transition
from agent.server.orm import AgentRow, FlowRunRow

log = structlog.get_logger("agent.server.leases")


def expire_leases(db: Database, lease_seconds: float, server_started: datetime) -> set[uuid.UUID]:
    """Resolve every run whose agent's lease ran out; returns the queues to wake."""
    now = utcnow()
    cutoff = now - timedelta(seconds=lease_seconds)
    if server_started > cutoff:
        return set()  # every agent gets a full lease after a server (re)start
    wake: set[uuid.UUID] = set()
    with db.write() as session:
        rows = session.execute(
            select(FlowRunRow, AgentRow)
            .join(AgentRow, AgentRow.id == FlowRunRow.agent_id)
            .where(FlowRunRow.state_type.in_(ACTIVE_STATES), AgentRow.last_heartbeat < cutoff)
        ).all()
        for run, agent in rows:
            current = StateType(run.state_type)
            target = StateType.CANCELLED if current is StateType.CANCELLING else StateType.CRASHED
            message = (
                f"agent {agent.name} stopped heartbeating at "
                f"{agent.last_heartbeat.isoformat(timespec='seconds')}"
            )
            log.warning(
                "lease_expired",
                run_id=str(run.id),
                agent=agent.name,
                state=current.value,
                to=target.value,
                message=message,
            )
            outcome = finish_transition(session, run, target, now=now, message=message)
            wake |= outcome.wake_queues
    return wake


async def lease_keeper(
    db: Database, notifier: ClaimWakeups, lease_seconds: float, interval: float
) -> None:
    """Background task of the server: expire leases every ``interval`` seconds, forever."""
    started = utcnow()
    while True:
        await anyio.sleep(interval)
        try:
            wake = await db.run(expire_leases, db, lease_seconds, started)
        except Exception:  # a locked database now and then must not end lease keeping
            log.exception("lease_check_failed", retry_in=interval)
            continue
        notifier.notify(wake)
