"""Notifications: webhooks called when runs reach chosen states or agents go OFFLINE.

Events go through an outbox. :func:`on_state` runs inside the write transaction of every state
change (``lifecycle.record_state`` calls it) and adds one ``notification_deliveries`` row per
matching notification, so an event is queued exactly when its change commits, never for a
change that rolled back. :func:`queue_offline_events`, called now and then by the delivery
worker, queues one OFFLINE event per agent silence (keyed, so once). Sending them is
:mod:`agent.server.webhooks`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from agent.models import LATE_EVENT, OFFLINE_EVENT, AgentStatus, DeliveryStatus, StateType
from agent.server.db import Database
from agent.server.orm import AgentRow, DeliveryRow, FlowRunRow, NotificationRow, WorkQueueRow
from agent.server.views import agent_model

TEST_EVENT = "TEST"
_CACHE_KEY = "flowagent.notifications"


@dataclass(frozen=True)
class NotificationConfig:
    """How events are delivered.

    Attributes:
        poll_seconds: how often the outbox is looked at.
        max_attempts: attempts per event before it is given up (FAILED).
        backoff_seconds: wait before the second attempt; it doubles for each one after…
        backoff_max_seconds: …up to this.
        timeout_seconds: of one POST.
        concurrency: events sent at once.
        offline_check_seconds: how often agents are checked for stopped heartbeats.
        server_url: base of the links in events (``{server_url}/api/flow_runs/{id}/logs``);
            default: the address the server listens on.
    """

    poll_seconds: float = 1.0
    max_attempts: int = 5
    backoff_seconds: float = 1.0
    backoff_max_seconds: float = 60.0
    timeout_seconds: float = 10.0
    concurrency: int = 8
    offline_check_seconds: float = 5.0
    server_url: str | None = None

    @property
    def lease(self) -> timedelta:
        """Long enough for every attempt of one event, waits included."""
        per_attempt = self.timeout_seconds + self.backoff_max_seconds
        return timedelta(seconds=self.max_attempts * per_attempt + 60)


# --------------------------------------------------------------------------- queueing events


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _notifications(session: Session) -> list[NotificationRow]:
    """Every notification, read once per transaction (one state change may be many runs)."""
    cached: list[NotificationRow] | None = session.info.get(_CACHE_KEY)
    if cached is None:
        cached = list(session.scalars(select(NotificationRow)))
        session.info[_CACHE_KEY] = cached
    return cached


def queue_event(
    session: Session,
    notification: NotificationRow,
    event: str,
    payload: dict[str, Any],
    now: datetime,
    dedupe_key: str | None = None,
) -> DeliveryRow:
    body = {
        "event": event,
        "notification": {"id": str(notification.id), "name": notification.name},
        "timestamp": now.isoformat(),
        **payload,
    }
    row = DeliveryRow(
        notification_id=notification.id,
        event=event,
        payload=body,
        dedupe_key=dedupe_key,
        status=DeliveryStatus.PENDING.value,
        attempts=0,
        next_attempt_at=now,
        created=now,
    )
    session.add(row)
    return row


def on_state(session: Session, run: FlowRunRow, state: StateType, now: datetime) -> None:
    """Queue the events a run's new state (already set on ``run``) is the subject of."""
    notifications = _notifications(session)
    if not notifications:
        return
    event = LATE_EVENT if state is StateType.SCHEDULED and run.state_name == "Late" else state.value
    matching = [
        n
        for n in notifications
        if event in n.events
        and (n.deployment_id is None or n.deployment_id == run.deployment_id)
        and (n.work_queue_id is None or n.work_queue_id == run.work_queue_id)
        and (n.tag is None or n.tag in run.tags)
    ]
    if not matching:
        return
    queue = session.get(WorkQueueRow, run.work_queue_id)
    payload = {
        "flow_run": {
            "id": str(run.id),
            "name": run.name,
            "attempt": run.attempt,
            "tags": list(run.tags),
            "parameters": dict(run.parameters),
            "expected_start_time": _iso(run.expected_start_time),
            "start_time": _iso(run.start_time),
            "end_time": _iso(run.end_time),
            "agent_id": None if run.agent_id is None else str(run.agent_id),
        },
        "deployment": {"id": str(run.deployment_id), "name": run.deployment_name},
        "work_queue": {
            "id": str(run.work_queue_id),
            "name": None if queue is None else queue.name,
        },
        "state": {
            "type": state.value,
            "name": run.state_name,
            "message": run.state_message,
            "timestamp": _iso(run.state_timestamp),
        },
    }
    for notification in matching:
        queue_event(session, notification, event, payload, now)


def queue_offline_events(db: Database, now: datetime, server_started: datetime) -> int:
    """Queue an OFFLINE event per silent agent and matching notification, once per silence.

    An agent is OFFLINE by the rule of ``GET /api/agents``, and only once this server has been
    up long enough to have heard from it: time the server was down is not the agent's silence.
    A notification hears only of agents that went silent after it was created.
    """
    with db.read() as session:
        found = _offline_events(session, now, server_started)
        if found:
            known = _known_keys(session, list(found))
            found = {key: event for key, event in found.items() if key not in known}
    if not found:
        return 0
    with db.write() as session:  # checked again under the lock: another server may queue too
        known = _known_keys(session, list(found))
        queued = 0
        for key, (notification_id, payload) in found.items():
            notification = session.get(NotificationRow, notification_id)
            if key not in known and notification is not None:
                queue_event(session, notification, OFFLINE_EVENT, payload, now, dedupe_key=key)
                queued += 1
        return queued


def _known_keys(session: Session, keys: list[str]) -> set[str | None]:
    return set(
        session.scalars(select(DeliveryRow.dedupe_key).where(DeliveryRow.dedupe_key.in_(keys)))
    )


def _offline_events(
    session: Session, now: datetime, server_started: datetime
) -> dict[str, tuple[uuid.UUID, dict[str, Any]]]:
    watching = [n for n in _notifications(session) if OFFLINE_EVENT in n.events]
    found: dict[str, tuple[uuid.UUID, dict[str, Any]]] = {}
    if not watching:
        return found
    for agent in session.scalars(select(AgentRow)):
        window = _offline_after(agent)
        offline = agent_model(agent, now, 0).status is AgentStatus.OFFLINE
        if not offline or now - server_started < window:
            continue
        queue = session.get(WorkQueueRow, agent.work_queue_id)
        payload = {
            "agent": {
                "id": str(agent.id),
                "name": agent.name,
                "hostname": agent.hostname,
                "tags": list(agent.tags),
                "last_heartbeat": agent.last_heartbeat.isoformat(),
                "runs_in_flight": agent.runs_in_flight,
            },
            "work_queue": {
                "id": str(agent.work_queue_id),
                "name": None if queue is None else queue.name,
            },
            "message": f"agent {agent.name} stopped heartbeating at "
            f"{agent.last_heartbeat.isoformat(timespec='seconds')}",
        }
        for n in watching:
            if (
                agent.last_heartbeat + window > n.created
                and (n.work_queue_id is None or n.work_queue_id == agent.work_queue_id)
                and (n.tag is None or n.tag in agent.tags)
            ):
                key = f"offline:{n.id}:{agent.id}:{agent.last_heartbeat.isoformat()}"
                found[key] = (n.id, payload)
    return found


def _offline_after(agent: AgentRow) -> timedelta:
    """How long after its last heartbeat an agent turns OFFLINE: about three missed heartbeats
    and 5 s, as ``views.agent_model`` says (whose status is checked too)."""
    return 3 * timedelta(seconds=agent.heartbeat_interval_seconds) + timedelta(seconds=5)
