"""Schedules: a deployment's cron, interval and one-off schedules; pause, resume, delete.

Pausing or deleting a schedule removes its runs that were made ahead and never started (they
are the scheduler's, made to be replaced); resuming starts it again from now, with no catch-up
for the paused time. Every change pokes the scheduler, so new runs appear at once.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from agent.models import (
    Catchup,
    Deployment,
    Schedule,
    ScheduleCreate,
    ScheduleUpdate,
    StateType,
    utcnow,
)
from agent.server.db import Database
from agent.server.deps import DB
from agent.server.orm import DeploymentRow, FlowRunRow, ScheduleRow
from agent.server.scheduler import Scheduler, is_valid_cron, next_time, spec_of
from agent.server.views import as_utc, deployment_model, get_deployment, not_found

router = APIRouter(tags=["schedules"])


async def _get_scheduler(request: Request) -> Scheduler | None:
    scheduler: Scheduler | None = getattr(request.app.state, "scheduler", None)
    return scheduler


Ticker = Annotated[Scheduler | None, Depends(_get_scheduler)]


def poke(scheduler: Scheduler | None) -> None:
    if scheduler is not None:
        scheduler.poke()


# --------------------------------------------------------------------------- in a transaction


def schedule_model(row: ScheduleRow, deployment_name: str, now: datetime) -> Schedule:
    return Schedule(
        id=row.id,
        deployment_id=row.deployment_id,
        deployment_name=deployment_name,
        cron=row.cron,
        interval_seconds=row.interval_seconds,
        anchor=row.anchor,
        at=row.at,
        timezone=row.timezone,
        catchup=Catchup(row.catchup),
        active=row.active,
        created=row.created,
        updated=row.updated,
        next_run_time=next_time(spec_of(row), now) if row.active else None,
    )


def _timing(body: ScheduleCreate) -> tuple[object, ...]:
    """What makes two schedules the same schedule (everything but catchup and active)."""
    anchor = None if body.anchor is None else as_utc(body.anchor)
    at = None if body.at is None else as_utc(body.at)
    return (body.cron, body.interval_seconds, anchor, at, body.timezone)


def _row_timing(row: ScheduleRow) -> tuple[object, ...]:
    return (row.cron, row.interval_seconds, row.anchor, row.at, row.timezone)


def add_schedule(
    session: Session, deployment: DeploymentRow, body: ScheduleCreate, now: datetime
) -> ScheduleRow:
    if body.cron is not None and not is_valid_cron(body.cron):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"invalid cron expression {body.cron!r} (5 fields: minute hour day month weekday, "
            "e.g. '0 * * * *'; or 6 with seconds)",
        )
    cron, interval, anchor, at, timezone = _timing(body)
    row = ScheduleRow(
        id=uuid.uuid4(),
        deployment_id=deployment.id,
        cron=cron,
        interval_seconds=interval,
        anchor=anchor,
        at=at,
        timezone=timezone,
        catchup=body.catchup.value,
        active=body.active is not False,
        cursor=None,
        created=now,
        updated=now,
    )
    session.add(row)
    return row


def drop_waiting_runs(session: Session, schedule_id: uuid.UUID) -> None:
    """Delete the schedule's runs made ahead that never started (their states go with them)."""
    session.execute(
        delete(FlowRunRow).where(
            FlowRunRow.schedule_id == schedule_id,
            FlowRunRow.state_type == StateType.SCHEDULED.value,
            FlowRunRow.attempt == 1,
        )
    )


def replace_schedules(
    session: Session, deployment: DeploymentRow, bodies: Sequence[ScheduleCreate], now: datetime
) -> None:
    """Make the deployment's schedules ``bodies``: one with the same timing is kept (with its
    runs), taking the new catchup (and ``active`` when given: a paused schedule stays paused
    across redeploys that do not say); the others are replaced."""
    existing = list(
        session.scalars(select(ScheduleRow).where(ScheduleRow.deployment_id == deployment.id))
    )
    for index, body in enumerate(bodies):
        same = next((row for row in existing if _row_timing(row) == _timing(body)), None)
        if same is None:
            # a microsecond apart: listed in the order they were given
            add_schedule(session, deployment, body, now + timedelta(microseconds=index))
            continue
        existing.remove(same)
        same.catchup = body.catchup.value
        if body.active is not None and same.active != body.active:
            set_active(session, same, body.active, now)
        same.updated = now
    for row in existing:
        drop_waiting_runs(session, row.id)
        session.delete(row)


def set_active(session: Session, row: ScheduleRow, active: bool, now: datetime) -> None:
    if active and not row.active:
        row.cursor = now - timedelta(microseconds=1)  # from now on: no catch-up for the pause
    elif not active:
        drop_waiting_runs(session, row.id)
    row.active = active
    row.updated = now


def schedules_of(session: Session, deployment: DeploymentRow, now: datetime) -> list[Schedule]:
    rows = session.scalars(
        select(ScheduleRow)
        .where(ScheduleRow.deployment_id == deployment.id)
        .order_by(ScheduleRow.created, ScheduleRow.id)
    )
    return [schedule_model(row, deployment.name, now) for row in rows]


def with_schedules(session: Session, deployment: DeploymentRow) -> Deployment:
    """The deployment as the API shows it: with its schedules."""
    schedules = schedules_of(session, deployment, utcnow())
    return deployment_model(deployment).model_copy(update={"schedules": schedules})


def _get_schedule(session: Session, schedule_id: uuid.UUID) -> tuple[ScheduleRow, DeploymentRow]:
    row = session.get(ScheduleRow, schedule_id)
    deployment = None if row is None else session.get(DeploymentRow, row.deployment_id)
    if row is None or deployment is None:
        raise not_found("schedule", schedule_id)
    return row, deployment


# --------------------------------------------------------------------------- blocking bodies


def _list(db: Database, deployment_id: uuid.UUID | None) -> list[Schedule]:
    with db.read() as session:
        now = utcnow()
        if deployment_id is not None:
            return schedules_of(session, get_deployment(session, deployment_id), now)
        rows = session.execute(
            select(ScheduleRow, DeploymentRow)
            .join(DeploymentRow, DeploymentRow.id == ScheduleRow.deployment_id)
            .order_by(DeploymentRow.name, ScheduleRow.created, ScheduleRow.id)
        ).all()
        return [schedule_model(row, deployment.name, now) for row, deployment in rows]


def _create(db: Database, deployment_id: uuid.UUID, body: ScheduleCreate) -> Schedule:
    with db.write() as session:
        deployment = get_deployment(session, deployment_id)
        now = utcnow()
        return schedule_model(add_schedule(session, deployment, body, now), deployment.name, now)


def _read(db: Database, schedule_id: uuid.UUID) -> Schedule:
    with db.read() as session:
        row, deployment = _get_schedule(session, schedule_id)
        return schedule_model(row, deployment.name, utcnow())


def _update(db: Database, schedule_id: uuid.UUID, body: ScheduleUpdate) -> Schedule:
    with db.write() as session:
        row, deployment = _get_schedule(session, schedule_id)
        now = utcnow()
        if body.catchup is not None:
            row.catchup = body.catchup.value
            row.updated = now
        if body.active is not None:
            set_active(session, row, body.active, now)
        return schedule_model(row, deployment.name, now)


def _delete(db: Database, schedule_id: uuid.UUID) -> None:
    with db.write() as session:
        row, _ = _get_schedule(session, schedule_id)
        drop_waiting_runs(session, row.id)
        session.delete(row)


# --------------------------------------------------------------------------- routes


@router.get("/deployments/{deployment_id}/schedules", summary="A deployment's schedules")
async def list_deployment_schedules(deployment_id: uuid.UUID, db: DB) -> list[Schedule]:
    return await db.run(_list, db, deployment_id)


@router.post(
    "/deployments/{deployment_id}/schedules",
    status_code=status.HTTP_201_CREATED,
    summary="Add a schedule to a deployment",
)
async def create_schedule(
    deployment_id: uuid.UUID, body: ScheduleCreate, db: DB, scheduler: Ticker
) -> Schedule:
    schedule = await db.run(_create, db, deployment_id, body)
    poke(scheduler)
    return schedule


@router.get("/schedules", summary="Every schedule, by deployment name")
async def list_schedules(db: DB, deployment_id: uuid.UUID | None = None) -> list[Schedule]:
    return await db.run(_list, db, deployment_id)


@router.get("/schedules/{schedule_id}", summary="Read a schedule")
async def read_schedule(schedule_id: uuid.UUID, db: DB) -> Schedule:
    return await db.run(_read, db, schedule_id)


@router.patch("/schedules/{schedule_id}", summary="Pause or resume a schedule, or change catchup")
async def update_schedule(
    schedule_id: uuid.UUID, body: ScheduleUpdate, db: DB, scheduler: Ticker
) -> Schedule:
    schedule = await db.run(_update, db, schedule_id, body)
    poke(scheduler)
    return schedule


@router.delete(
    "/schedules/{schedule_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a schedule and its runs that have not started",
)
async def delete_schedule(schedule_id: uuid.UUID, db: DB) -> Response:
    await db.run(_delete, db, schedule_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
