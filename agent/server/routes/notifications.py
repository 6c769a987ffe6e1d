"""Notifications: webhooks on run states and agents going OFFLINE, and their deliveries."""

from __future__ import annotations

import secrets
import uuid
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, HTTPException, Query, Response, status
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from agent.models import (
    DeliveryStatus,
    Notification,
    NotificationAttempt,
    NotificationCreate,
    NotificationDelivery,
    utcnow,
)
from agent.server.db import Database
from agent.server.deps import DB, ServerSettingsDep
from agent.server.notifications import TEST_EVENT, queue_event
from agent.server.orm import DeliveryAttemptRow, DeliveryRow, NotificationRow
from agent.server.views import conflict, get_deployment, get_queue, not_found
from agent.server.webhooks import PRIVATE_HINT, refused_destination

router = APIRouter(prefix="/notifications", tags=["notifications"])


def _delivery_model(
    row: DeliveryRow, history: list[DeliveryAttemptRow] | None = None
) -> NotificationDelivery:
    return NotificationDelivery(
        id=row.id,
        notification_id=row.notification_id,
        event=row.event,
        status=DeliveryStatus(row.status),
        attempts=row.attempts,
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        created=row.created,
        finished=row.finished,
        payload=dict(row.payload),
        history=[
            NotificationAttempt(
                attempt=a.attempt,
                timestamp=a.timestamp,
                ok=a.ok,
                status_code=a.status_code,
                error=a.error,
            )
            for a in history or []
        ],
    )


def _model(row: NotificationRow, last: DeliveryRow | None) -> Notification:
    return Notification(
        id=row.id,
        name=row.name,
        on=list(row.events),
        deployment_id=row.deployment_id,
        work_queue_id=row.work_queue_id,
        tag=row.tag,
        webhook_url=row.webhook_url,
        has_secret=bool(row.secret),
        created=row.created,
        last_delivery=None if last is None else _delivery_model(last),
    )


def _last_delivery(session: Session, notification_id: uuid.UUID) -> DeliveryRow | None:
    return session.scalar(
        select(DeliveryRow)
        .where(DeliveryRow.notification_id == notification_id)
        .order_by(DeliveryRow.id.desc())
        .limit(1)
    )


def _get(session: Session, notification_id: uuid.UUID) -> NotificationRow:
    row = session.get(NotificationRow, notification_id)
    if row is None:
        raise not_found("notification", notification_id)
    return row


def _create(db: Database, body: NotificationCreate) -> Notification:
    with db.write() as session:
        name = body.name or f"notify-{secrets.token_hex(3)}"
        if session.scalar(select(NotificationRow.id).where(NotificationRow.name == name)):
            raise conflict(f"a notification named {name!r} already exists")
        if body.deployment_id is not None:
            get_deployment(session, body.deployment_id)
        if body.work_queue_id is not None:
            get_queue(session, body.work_queue_id)
        row = NotificationRow(
            id=uuid.uuid4(),
            name=name,
            events=list(body.on),
            deployment_id=body.deployment_id,
            work_queue_id=body.work_queue_id,
            tag=body.tag,
            webhook_url=body.webhook_url,
            secret=body.secret,
            created=utcnow(),
        )
        session.add(row)
        return _model(row, None)


def _list(db: Database) -> list[Notification]:
    with db.read() as session:
        latest = (
            select(func.max(DeliveryRow.id)).group_by(DeliveryRow.notification_id).scalar_subquery()
        )
        last = {
            row.notification_id: row
            for row in session.scalars(select(DeliveryRow).where(DeliveryRow.id.in_(latest)))
        }
        rows = session.scalars(select(NotificationRow).order_by(NotificationRow.name))
        return [_model(row, last.get(row.id)) for row in rows]


def _read(db: Database, notification_id: uuid.UUID) -> Notification:
    with db.read() as session:
        row = _get(session, notification_id)
        return _model(row, _last_delivery(session, row.id))


def _read_by_name(db: Database, name: str) -> Notification:
    with db.read() as session:
        row = session.scalar(select(NotificationRow).where(NotificationRow.name == name))
        if row is None:
            raise not_found("notification", repr(name))
        return _model(row, _last_delivery(session, row.id))


def _delete(db: Database, notification_id: uuid.UUID) -> None:
    with db.write() as session:
        session.delete(_get(session, notification_id))


def _deliveries(db: Database, notification_id: uuid.UUID, limit: int) -> list[NotificationDelivery]:
    with db.read() as session:
        _get(session, notification_id)
        rows = list(
            session.scalars(
                select(DeliveryRow)
                .where(DeliveryRow.notification_id == notification_id)
                .order_by(DeliveryRow.id.desc())
                .limit(limit)
            )
        )
        attempts: dict[int, list[DeliveryAttemptRow]] = {row.id: [] for row in rows}
        for attempt in session.scalars(
            select(DeliveryAttemptRow)
            .where(DeliveryAttemptRow.delivery_id.in_(list(attempts)))
            .order_by(DeliveryAttemptRow.id)
        ):
            attempts[attempt.delivery_id].append(attempt)
        return [_delivery_model(row, attempts[row.id]) for row in rows]


def _test(db: Database, notification_id: uuid.UUID) -> NotificationDelivery:
    with db.write() as session:
        row = _get(session, notification_id)
        message = f"a test of notification {row.name!r}, sent by request"
        delivery = queue_event(session, row, TEST_EVENT, {"message": message}, utcnow())
        session.flush()
        return _delivery_model(delivery)


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create a notification")
async def create_notification(
    body: NotificationCreate, db: DB, settings: ServerSettingsDep
) -> Notification:
    if not settings.webhook_allow_private:
        # Checked again before every delivery: the name may resolve elsewhere by then.
        why = await anyio.to_thread.run_sync(refused_destination, body.webhook_url)
        if why is not None:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"webhook_url {body.webhook_url!r} is refused: {why}; {PRIVATE_HINT}",
            )
    return await db.run(_create, db, body)


@router.get("", summary="List notifications, each with its last delivery")
async def list_notifications(db: DB) -> list[Notification]:
    return await db.run(_list, db)


@router.get("/name/{name}", summary="Read a notification by name")
async def read_notification_by_name(name: str, db: DB) -> Notification:
    return await db.run(_read_by_name, db, name)


@router.get("/{notification_id}", summary="Read a notification")
async def read_notification(notification_id: uuid.UUID, db: DB) -> Notification:
    return await db.run(_read, db, notification_id)


@router.delete(
    "/{notification_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a notification and its delivery history",
)
async def delete_notification(notification_id: uuid.UUID, db: DB) -> Response:
    await db.run(_delete, db, notification_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{notification_id}/deliveries", summary="Its deliveries, newest first, with attempts")
async def list_deliveries(
    notification_id: uuid.UUID, db: DB, limit: Annotated[int, Query(ge=1, le=1000)] = 50
) -> list[NotificationDelivery]:
    return await db.run(_deliveries, db, notification_id, limit)


@router.post(
    "/{notification_id}/test",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Queue a TEST event to the webhook",
)
async def test_notification(notification_id: uuid.UUID, db: DB) -> NotificationDelivery:
    return await db.run(_test, db, notification_id)
