"""Tag concurrency limits: at most N runs carrying a tag active at once, across queues."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from agent.models import (
    ConcurrencyLimit,
    ConcurrencyLimitCreate,
    ConcurrencyLimitUpdate,
    utcnow,
)
from agent.server.db import Database
from agent.server.deps import DB, Wakeups
from agent.server.limits import ANY_QUEUE, SLOT_STATES
from agent.server.orm import ConcurrencyLimitRow, FlowRunRow
from agent.server.views import conflict, not_found

router = APIRouter(prefix="/concurrency_limits", tags=["concurrency limits"])


def _model(session: Session, row: ConcurrencyLimitRow) -> ConcurrencyLimit:
    # Active runs are few (each holds a slot somewhere), so their tags are matched here.
    holders = session.execute(
        select(FlowRunRow.id, FlowRunRow.tags)
        .where(FlowRunRow.state_type.in_(SLOT_STATES))
        .order_by(FlowRunRow.state_timestamp)
    ).all()
    return ConcurrencyLimit(
        id=row.id,
        name=row.name,
        tag=row.tag,
        limit=row.limit,
        created=row.created,
        updated=row.updated,
        active_run_ids=[run_id for run_id, tags in holders if row.tag in tags],
    )


def _get(session: Session, limit_id: uuid.UUID) -> ConcurrencyLimitRow:
    row = session.get(ConcurrencyLimitRow, limit_id)
    if row is None:
        raise not_found("concurrency limit", limit_id)
    return row


def _create(db: Database, body: ConcurrencyLimitCreate) -> ConcurrencyLimit:
    name = body.name or body.tag
    with db.write() as session:
        taken = session.scalar(
            select(ConcurrencyLimitRow).where(
                or_(ConcurrencyLimitRow.name == name, ConcurrencyLimitRow.tag == body.tag)
            )
        )
        if taken is not None:
            what = f"tag {body.tag!r}" if taken.tag == body.tag else f"the name {name!r}"
            raise conflict(
                f"concurrency limit {taken.name!r} already has {what}; change its limit with "
                "`agent concurrency-limit update` instead"
            )
        now = utcnow()
        row = ConcurrencyLimitRow(
            id=uuid.uuid4(), name=name, tag=body.tag, limit=body.limit, created=now, updated=now
        )
        session.add(row)
        return _model(session, row)


def _list(db: Database) -> list[ConcurrencyLimit]:
    with db.read() as session:
        rows = session.scalars(select(ConcurrencyLimitRow).order_by(ConcurrencyLimitRow.name))
        return [_model(session, row) for row in rows]


def _read(db: Database, limit_id: uuid.UUID) -> ConcurrencyLimit:
    with db.read() as session:
        return _model(session, _get(session, limit_id))


def _read_by_name(db: Database, name: str) -> ConcurrencyLimit:
    with db.read() as session:
        row = session.scalar(select(ConcurrencyLimitRow).where(ConcurrencyLimitRow.name == name))
        if row is None:
            raise not_found("concurrency limit", repr(name))
        return _model(session, row)


def _update(db: Database, limit_id: uuid.UUID, body: ConcurrencyLimitUpdate) -> ConcurrencyLimit:
    with db.write() as session:
        row = _get(session, limit_id)
        row.limit = body.limit
        row.updated = utcnow()
        return _model(session, row)


def _delete(db: Database, limit_id: uuid.UUID) -> None:
    with db.write() as session:
        session.delete(_get(session, limit_id))


@router.post("", status_code=status.HTTP_201_CREATED, summary="Limit the runs carrying a tag")
async def create_limit(body: ConcurrencyLimitCreate, db: DB) -> ConcurrencyLimit:
    return await db.run(_create, db, body)


@router.get("", summary="List tag concurrency limits with the runs holding their slots")
async def list_limits(db: DB) -> list[ConcurrencyLimit]:
    return await db.run(_list, db)


@router.get("/name/{name}", summary="Read a tag concurrency limit by name")
async def read_limit_by_name(name: str, db: DB) -> ConcurrencyLimit:
    return await db.run(_read_by_name, db, name)


@router.get("/{limit_id}", summary="Read a tag concurrency limit")
async def read_limit(limit_id: uuid.UUID, db: DB) -> ConcurrencyLimit:
    return await db.run(_read, db, limit_id)


@router.patch("/{limit_id}", summary="Change a limit (binds the next claim)")
async def update_limit(
    limit_id: uuid.UUID, body: ConcurrencyLimitUpdate, db: DB, wakeups: Wakeups
) -> ConcurrencyLimit:
    updated = await db.run(_update, db, limit_id, body)
    # A raised limit lets runs waiting in any queue go at once.
    wakeups.notify([ANY_QUEUE])
    return updated


@router.delete("/{limit_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete a tag limit")
async def delete_limit(limit_id: uuid.UUID, db: DB, wakeups: Wakeups) -> Response:
    await db.run(_delete, db, limit_id)
    wakeups.notify([ANY_QUEUE])
    return Response(status_code=status.HTTP_204_NO_CONTENT)
