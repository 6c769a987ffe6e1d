"""Agents: heartbeats (which register them), listing, and their runs to cancel."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter
from sqlalchemy import Table, bindparam, or_, select, update
from sqlalchemy.orm import Session

from agent.models import AgentRecord, Heartbeat, StateType, utcnow
from agent.server import lifecycle
from agent.server.db import Database
from agent.server.deps import DB, ServerSettingsDep, Wakeups
from agent.server.orm import AgentRow, FlowRunRow, WorkQueueRow
from agent.server.views import agent_model, conflict, get_agent, not_found

router = APIRouter(prefix="/agents", tags=["agents"])
_AGENTS: Table = AgentRow.__table__  # type: ignore[assignment]  # a Table, typed loosely

# A heartbeat's statements are built once, their values bound at each beat: a fleet's beats are
# most of a server's writes, and building a statement and its cache key anew was a third of a
# beat's database work (docs/PERFORMANCE.md, "A server's one core").
_QUEUES_FOUND = select(WorkQueueRow.id).where(
    WorkQueueRow.id.in_(bindparam("queue_ids", expanding=True))
)
_BEAT_VALUES = (
    "work_queue_id",
    "work_queue_ids",
    "tags",
    "hostname",
    "pid",
    "version",
    "runs_in_flight",
    "heartbeat_interval_seconds",
    "metrics",
    "last_heartbeat",
)
# The beat of a known agent is one statement; registering, and refusing a name held
# elsewhere, read the row first (_register).
_BEAT = (
    update(_AGENTS)
    .where(
        _AGENTS.c.name == bindparam("beat_name"),
        or_(
            _AGENTS.c.hostname.is_not_distinct_from(bindparam("beat_hostname")),
            _AGENTS.c.last_heartbeat <= bindparam("lease_ended"),
        ),
    )
    .values({name: bindparam(f"new_{name}", type_=_AGENTS.c[name].type) for name in _BEAT_VALUES})
    .returning(*_AGENTS.c)
)


def _heartbeat(
    db: Database, beat: Heartbeat, lease_seconds: float, arrived: datetime
) -> tuple[AgentRecord, set[uuid.UUID]]:
    # Not behind every other write (see agent/server/db.py): the agent's row, locked, is all
    # a heartbeat needs to be alone with.
    with db.write(serialized=False) as session:
        queues = _existing_queues(session, beat)
        now = utcnow()
        values = {
            "work_queue_id": queues[0],
            "work_queue_ids": [str(queue_id) for queue_id in queues],
            "tags": list(beat.tags),
            "hostname": beat.hostname,
            "pid": beat.pid,
            "version": beat.version,
            "runs_in_flight": beat.runs_in_flight,
            "heartbeat_interval_seconds": beat.heartbeat_interval_seconds,
            "metrics": None if beat.metrics is None else beat.metrics.model_dump(mode="json"),
            "last_heartbeat": now,
        }
        bound = {f"new_{name}": value for name, value in values.items()}
        bound |= {
            "beat_name": beat.name,
            "beat_hostname": beat.hostname,
            "lease_ended": now - timedelta(seconds=lease_seconds),
        }
        row: Any = session.connection().execute(_BEAT, bound).one_or_none()
        if row is None:
            row = _register(session, beat, values, now, lease_seconds)
        wake: set[uuid.UUID] = set()
        if beat.run_ids is not None:
            wake = lifecycle.resolve_dropped_runs(
                session, row, set(beat.run_ids), now, listed_at=arrived
            )
        return agent_model(row, now, lease_seconds), wake


def _register(
    session: Session, beat: Heartbeat, values: dict[str, Any], now: datetime, lease_seconds: float
) -> AgentRow:
    """A new agent's row, or a 409 when another live agent holds the name."""
    row = session.scalar(select(AgentRow).where(AgentRow.name == beat.name).with_for_update())
    if row is not None:
        # Two live agents under one name would each take the other's runs for its own
        # (on one host the agent's own lock refuses the second; across hosts, this does).
        age = (now - row.last_heartbeat).total_seconds()
        raise conflict(
            f"agent name {beat.name!r} is held by a live agent on host {row.hostname} "
            f"(last heartbeat {age:.0f}s ago): give this agent a name of its own with --name"
        )
    # The name is the agent's identity: a restarted agent keeps its id and its runs.
    row = AgentRow(id=uuid.uuid4(), name=beat.name, created=now, last_claim_run_ids=[], **values)
    session.add(row)
    session.flush()
    return row


def _existing_queues(session: Session, beat: Heartbeat) -> list[uuid.UUID]:
    """The agent's queues that still exist, in its order; 404 when none does.

    One deleted queue among several is the agent's to notice (its claim says so) and not a
    reason to refuse the heartbeat that keeps its other queues' runs leased.
    """
    wanted = beat.work_queue_ids or [beat.work_queue_id]
    existing = set(session.connection().execute(_QUEUES_FOUND, {"queue_ids": wanted}).scalars())
    found = [queue_id for queue_id in wanted if queue_id in existing]
    if not found:
        raise not_found("work queue", ", ".join(str(queue_id) for queue_id in wanted))
    return found


def _list(db: Database, lease_seconds: float) -> list[AgentRecord]:
    with db.read() as session:
        now = utcnow()
        rows = session.scalars(select(AgentRow).order_by(AgentRow.name))
        return [agent_model(row, now, lease_seconds) for row in rows]


def _cancelling(db: Database, agent_id: uuid.UUID) -> list[uuid.UUID]:
    with db.read() as session:
        get_agent(session, agent_id)
        return list(
            session.scalars(
                select(FlowRunRow.id)
                .where(
                    FlowRunRow.agent_id == agent_id,
                    FlowRunRow.state_type == StateType.CANCELLING.value,
                )
                .order_by(FlowRunRow.state_timestamp)
            )
        )


@router.post("/heartbeat", summary="Register or refresh an agent (upsert by name)")
async def heartbeat(
    beat: Heartbeat, db: DB, settings: ServerSettingsDep, wakeups: Wakeups
) -> AgentRecord:
    # Before it waits for a worker thread and the database: its run list is as of now.
    arrived = utcnow()
    record, wake = await db.run_small(_heartbeat, db, beat, settings.lease_seconds, arrived)
    wakeups.notify(wake)
    return record


@router.get("", summary="List agents with their ONLINE/OFFLINE status")
async def list_agents(db: DB, settings: ServerSettingsDep) -> list[AgentRecord]:
    return await db.run(_list, db, settings.lease_seconds)


@router.get("/{agent_id}/cancelling", summary="Ids of this agent's runs in CANCELLING")
async def cancelling_runs(agent_id: uuid.UUID, db: DB) -> list[uuid.UUID]:
    return await db.run_small(_cancelling, db, agent_id)
