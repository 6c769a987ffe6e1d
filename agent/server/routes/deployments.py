"""Deployments: upsert by name, read, delete, and creating runs of them."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, HTTPException, Response, status
from sqlalchemy import select

from agent.models import (
    BundleSource,
    Deployment,
    DeploymentCreate,
    FlowRun,
    FlowRunCreate,
    StateType,
    utcnow,
)
from agent.server.bundles import touch
from agent.server.db import Database
from agent.server.deps import DB, Wakeups
from agent.server.lifecycle import new_run, record_state
from agent.server.orm import DeploymentRow, FlowRunRow
from agent.server.routes.schedules import Ticker, poke, replace_schedules, with_schedules
from agent.server.views import as_utc, get_deployment, get_queue, not_found, run_model

router = APIRouter(prefix="/deployments", tags=["deployments"])


def _upsert(db: Database, body: DeploymentCreate) -> tuple[Deployment, bool]:
    """Create the deployment or replace the one of that name; True when it was created."""
    with db.write() as session:
        get_queue(session, body.work_queue_id)
        # In the deployment's own transaction, which also marks the bundle used: the garbage
        # collector (behind the same write lock) cannot delete it between check and write.
        if isinstance(body.source, BundleSource) and not touch(session, body.source.bundle):
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_ENTITY,
                f"no bundle {body.source.bundle} on this server: upload it first "
                "(agent deployment create --upload DIR does both)",
            )
        now = utcnow()
        row = session.scalar(select(DeploymentRow).where(DeploymentRow.name == body.name))
        created = row is None
        if row is None:
            row = DeploymentRow(id=uuid.uuid4(), name=body.name, created=now)
            session.add(row)
        row.work_queue_id = body.work_queue_id
        row.entrypoint = body.entrypoint
        row.command = None if body.command is None else list(body.command)
        row.working_dir = body.working_dir
        row.parameters = dict(body.parameters)
        row.tags = list(body.tags)
        row.runner = body.runner
        row.runner_options = dict(body.runner_options)
        row.env = dict(body.env)
        row.timeout_seconds = body.timeout_seconds
        row.retries = body.retries
        row.retry_delay_seconds = body.retry_delay_seconds
        row.source = None if body.source is None else body.source.model_dump(mode="json")
        row.concurrency_limit = body.concurrency_limit
        row.collision_strategy = body.collision_strategy.value
        row.updated = now
        if body.schedules is not None:
            session.flush()  # the deployment's row first: schedules point at it
            replace_schedules(session, row, body.schedules, now)
        return with_schedules(session, row), created


def _list(db: Database) -> list[Deployment]:
    with db.read() as session:
        rows = session.scalars(select(DeploymentRow).order_by(DeploymentRow.name))
        return [with_schedules(session, row) for row in rows]


def _get(db: Database, deployment_id: uuid.UUID) -> Deployment:
    with db.read() as session:
        return with_schedules(session, get_deployment(session, deployment_id))


def _get_by_name(db: Database, name: str) -> Deployment:
    with db.read() as session:
        row = session.scalar(select(DeploymentRow).where(DeploymentRow.name == name))
        if row is None:
            raise not_found("deployment", repr(name))
        return with_schedules(session, row)


def _delete(db: Database, deployment_id: uuid.UUID) -> None:
    """Delete the deployment and cancel its SCHEDULED runs, which nothing could launch now.

    Runs already handed out keep going and keep their history. Its bundle, if it has one, is
    not deleted here: garbage collection deletes it once no deployment or unfinished run names
    it and ``bundle_retention`` has passed (an agent may not have downloaded it yet).
    """
    with db.write() as session:
        row = get_deployment(session, deployment_id)
        now = utcnow()
        waiting = session.scalars(
            select(FlowRunRow).where(
                FlowRunRow.deployment_id == deployment_id,
                FlowRunRow.state_type == StateType.SCHEDULED.value,
            )
        )
        for run in waiting:
            record_state(
                session,
                run,
                StateType.CANCELLED,
                now=now,
                message=f"deployment {row.name!r} was deleted",
            )
        session.delete(row)


def _create_run(db: Database, deployment_id: uuid.UUID, body: FlowRunCreate) -> FlowRun:
    with db.write() as session:
        deployment = get_deployment(session, deployment_id)
        tags = list(deployment.tags)
        tags += [tag for tag in body.tags if tag not in tags]
        start = utcnow() if body.expected_start_time is None else as_utc(body.expected_start_time)
        run = new_run(
            session,
            deployment,
            parameters={**deployment.parameters, **body.parameters},
            tags=tags,
            env={**deployment.env, **body.env},
            expected_start_time=start,
        )
        return run_model(run)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Create a deployment, or update the one with that name (200)",
)
async def upsert_deployment(
    body: DeploymentCreate,
    response: Response,
    db: DB,
    scheduler: Ticker,
    wakeups: Wakeups,
) -> Deployment:
    deployment, created = await db.run(_upsert, db, body)
    if body.schedules:
        poke(scheduler)
    # A raised (or removed) concurrency limit lets runs waiting for a slot go at once.
    wakeups.notify([deployment.work_queue_id])
    if not created:
        response.status_code = status.HTTP_200_OK
    return deployment


@router.get("", summary="List deployments, sorted by name")
async def list_deployments(db: DB) -> list[Deployment]:
    return await db.run(_list, db)


@router.get("/name/{name}", summary="Read a deployment by name")
async def read_deployment_by_name(name: str, db: DB) -> Deployment:
    return await db.run(_get_by_name, db, name)


@router.get("/{deployment_id}", summary="Read a deployment")
async def read_deployment(deployment_id: uuid.UUID, db: DB) -> Deployment:
    return await db.run(_get, db, deployment_id)


@router.delete(
    "/{deployment_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a deployment; its SCHEDULED runs are cancelled",
)
async def delete_deployment(deployment_id: uuid.UUID, db: DB) -> Response:
    await db.run(_delete, db, deployment_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{deployment_id}/runs",
    status_code=status.HTTP_201_CREATED,
    summary="Schedule a run of the deployment",
)
async def create_flow_run(
    deployment_id: uuid.UUID, body: FlowRunCreate, db: DB, wakeups: Wakeups
) -> FlowRun:
    run = await db.run(_create_run, db, deployment_id, body)
    wakeups.notify([run.work_queue_id])
    return run
