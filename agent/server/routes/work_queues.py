"""Work queues: CRUD, preview, and the claim endpoint."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from agent.models import (
    ClaimedRun,
    ClaimRequest,
    FlowRun,
    StateType,
    WorkQueue,
    WorkQueueCreate,
    WorkQueueUpdate,
    utcnow,
)
from agent.server import claims
from agent.server.db import Database
from agent.server.deps import DB, Wakeups
from agent.server.lifecycle import ACTIVE_STATES
from agent.server.orm import AgentRow, DeploymentRow, FlowRunRow, WorkQueueRow
from agent.server.scheduler import shown_late
from agent.server.views import conflict, get_queue, not_found, queue_model, run_model

router = APIRouter(prefix="/work_queues", tags=["work queues"])


def _create(db: Database, body: WorkQueueCreate) -> WorkQueue:
    with db.write() as session:
        if session.scalar(select(WorkQueueRow.id).where(WorkQueueRow.name == body.name)):
            raise conflict(f"a work queue named {body.name!r} already exists")
        row = WorkQueueRow(
            id=uuid.uuid4(),
            name=body.name,
            tags=list(body.tags),
            concurrency_limit=body.concurrency_limit,
            paused=body.paused,
            created=utcnow(),
        )
        session.add(row)
        return queue_model(row)


def _list(db: Database) -> list[WorkQueue]:
    with db.read() as session:
        rows = session.scalars(select(WorkQueueRow).order_by(WorkQueueRow.name))
        return [queue_model(row) for row in rows]


def _get(db: Database, queue_id: uuid.UUID) -> WorkQueue:
    with db.read() as session:
        return queue_model(get_queue(session, queue_id))


def _get_by_name(db: Database, name: str) -> WorkQueue:
    with db.read() as session:
        row = session.scalar(select(WorkQueueRow).where(WorkQueueRow.name == name))
        if row is None:
            raise not_found("work queue", repr(name))
        return queue_model(row)


def _update(db: Database, queue_id: uuid.UUID, body: WorkQueueUpdate) -> WorkQueue:
    with db.write() as session:
        row = get_queue(session, queue_id)
        given = body.model_fields_set
        if "tags" in given and body.tags is not None:
            row.tags = list(body.tags)
        # An explicit null limit means "no limit"; a left-out one keeps the current limit.
        if "concurrency_limit" in given:
            row.concurrency_limit = body.concurrency_limit
        if "paused" in given and body.paused is not None:
            row.paused = body.paused
        return queue_model(row)


def _delete(db: Database, queue_id: uuid.UUID) -> None:
    with db.write() as session:
        row = get_queue(session, queue_id)
        users = list(
            session.scalars(
                select(DeploymentRow.name)
                .where(DeploymentRow.work_queue_id == queue_id)
                .order_by(DeploymentRow.name)
            )
        )
        if users:
            raise conflict(
                f"work queue {row.name!r} is used by {len(users)} deployment(s) "
                f"({', '.join(users)}); delete or move them first"
            )
        in_flight = session.scalar(
            select(func.count())
            .select_from(FlowRunRow)
            .where(FlowRunRow.work_queue_id == queue_id, FlowRunRow.state_type.in_(ACTIVE_STATES))
        )
        if in_flight:
            raise conflict(
                f"work queue {row.name!r} has {in_flight} run(s) in flight; "
                "wait for them to finish or cancel them first"
            )
        _move_agents_off(session, queue_id)
        session.delete(row)


def _move_agents_off(session: Session, queue_id: uuid.UUID) -> None:
    """Agents that serve the queue among others keep their row (and id, and runs): the
    deletion would cascade to an agent whose first queue it is, so it moves to its next."""
    for agent in session.scalars(select(AgentRow).where(AgentRow.work_queue_id == queue_id)):
        rest = [uuid.UUID(q) for q in agent.work_queue_ids if uuid.UUID(q) != queue_id]
        others = [q for q in rest if session.get(WorkQueueRow, q) is not None]
        if others:
            agent.work_queue_id = others[0]
            agent.work_queue_ids = [str(q) for q in others]


def _preview(
    db: Database, queue_id: uuid.UUID, hours: float, late_after: timedelta
) -> list[FlowRun]:
    with db.read() as session:
        queue = get_queue(session, queue_id)
        now = utcnow()
        horizon = now + timedelta(hours=hours)
        rows = session.scalars(
            select(FlowRunRow)
            .where(
                FlowRunRow.work_queue_id == queue_id,
                FlowRunRow.state_type == StateType.SCHEDULED.value,
                FlowRunRow.expected_start_time <= horizon,
            )
            .order_by(FlowRunRow.expected_start_time)
        )
        # Only what this queue would hand out: runs lacking one of its tags never leave it.
        required = set(queue.tags)
        return [
            shown_late(run_model(row), now, late_after)
            for row in rows
            if required.issubset(row.tags)
        ]


@router.post("/claim", summary="Atomically claim due runs from several queues in priority order")
async def claim_runs_from_queues(
    body: ClaimRequest, request: Request, db: DB, wakeups: Wakeups
) -> list[ClaimedRun]:
    if not body.work_queue_ids:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_ENTITY,
            "work_queue_ids is empty: list the queues to claim from, highest priority first",
        )
    if len(set(body.work_queue_ids)) != len(body.work_queue_ids):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_ENTITY,
            "work_queue_ids names a queue twice: list each queue once, in priority order",
        )
    return await claims.claim(db, wakeups, body.work_queue_ids, body, request.is_disconnected)


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create a work queue")
async def create_work_queue(body: WorkQueueCreate, db: DB) -> WorkQueue:
    return await db.run(_create, db, body)


@router.get("", summary="List work queues, sorted by name")
async def list_work_queues(db: DB) -> list[WorkQueue]:
    return await db.run(_list, db)


@router.get("/name/{name}", summary="Read a work queue by name")
async def read_work_queue_by_name(name: str, db: DB) -> WorkQueue:
    return await db.run(_get_by_name, db, name)


@router.get("/{queue_id}", summary="Read a work queue")
async def read_work_queue(queue_id: uuid.UUID, db: DB) -> WorkQueue:
    return await db.run(_get, db, queue_id)


@router.patch("/{queue_id}", summary="Pause/resume a queue, change its limit or tags")
async def update_work_queue(
    queue_id: uuid.UUID, body: WorkQueueUpdate, db: DB, wakeups: Wakeups
) -> WorkQueue:
    queue = await db.run(_update, db, queue_id, body)
    # Resumed, a higher limit or fewer tags: held claimers may now find work.
    wakeups.notify([queue_id])
    return queue


@router.delete(
    "/{queue_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete an unused work queue"
)
async def delete_work_queue(queue_id: uuid.UUID, db: DB) -> Response:
    await db.run(_delete, db, queue_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{queue_id}/preview", summary="SCHEDULED runs due within the next hours")
async def preview_work_queue(
    queue_id: uuid.UUID,
    db: DB,
    request: Request,
    hours: Annotated[float, Query(ge=0, le=24 * 366)] = 1,
) -> list[FlowRun]:
    late_after = request.app.state.scheduler.config.late_after
    return await db.run(_preview, db, queue_id, hours, late_after)


@router.post("/{queue_id}/claim", summary="Atomically claim due runs, long-polling for them")
async def claim_runs(
    queue_id: uuid.UUID, body: ClaimRequest, request: Request, db: DB, wakeups: Wakeups
) -> list[ClaimedRun]:
    return await claims.claim(db, wakeups, [queue_id], body, request.is_disconnected)
