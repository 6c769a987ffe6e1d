"""Rows to wire models, and the small lookups every route needs.

The lookups raise ``HTTPException`` so that a route's blocking function, run in a worker
thread, can stop with the right answer from anywhere inside its transaction.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import HTTPException, status
from sqlalchemy.orm import Session

from agent.models import (
    AgentRecord,
    AgentStatus,
    BundleSource,
    Collision,
    Deployment,
    FlowRun,
    GitSource,
    HostMetrics,
    LogLine,
    LogStream,
    RunSource,
    State,
    StateType,
    WorkQueue,
)
from agent.server.orm import (
    AgentRow,
    DeploymentRow,
    FlowRunRow,
    FlowRunStateRow,
    LogRow,
    WorkQueueRow,
)

# An agent counts as ONLINE until it has missed about three heartbeats.
_MISSED_HEARTBEATS = 3
_HEARTBEAT_GRACE = timedelta(seconds=5)


def as_utc(value: datetime) -> datetime:
    """Timezone-aware UTC; a naive timestamp from a client is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def not_found(what: str, ident: object) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"{what} {ident} not found")


def conflict(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_409_CONFLICT, detail)


def get_queue(session: Session, queue_id: uuid.UUID) -> WorkQueueRow:
    row = session.get(WorkQueueRow, queue_id)
    if row is None:
        raise not_found("work queue", queue_id)
    return row


def get_deployment(session: Session, deployment_id: uuid.UUID) -> DeploymentRow:
    row = session.get(DeploymentRow, deployment_id)
    if row is None:
        raise not_found("deployment", deployment_id)
    return row


def get_run(session: Session, run_id: uuid.UUID) -> FlowRunRow:
    row = session.get(FlowRunRow, run_id)
    if row is None:
        raise not_found("flow run", run_id)
    return row


def get_agent(session: Session, agent_id: uuid.UUID, *, lock: bool = False) -> AgentRow:
    """The agent's row (``lock``: ``FOR UPDATE``, where the database has row locks), or a 404."""
    row = session.get(AgentRow, agent_id, with_for_update=lock)
    if row is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"agent {agent_id} not found; an agent gets its id from POST /api/agents/heartbeat",
        )
    return row


def queue_model(row: WorkQueueRow) -> WorkQueue:
    return WorkQueue(
        id=row.id,
        name=row.name,
        tags=list(row.tags),
        concurrency_limit=row.concurrency_limit,
        paused=row.paused,
        created=row.created,
    )


def deployment_model(row: DeploymentRow) -> Deployment:
    return Deployment(
        id=row.id,
        name=row.name,
        work_queue_id=row.work_queue_id,
        entrypoint=row.entrypoint,
        command=None if row.command is None else list(row.command),
        working_dir=row.working_dir,
        parameters=dict(row.parameters),
        tags=list(row.tags),
        runner=row.runner,
        runner_options=dict(row.runner_options),
        env=dict(row.env),
        timeout_seconds=row.timeout_seconds,
        retries=row.retries,
        retry_delay_seconds=row.retry_delay_seconds,
        source=source_model(row.source),
        concurrency_limit=row.concurrency_limit,
        collision_strategy=Collision(row.collision_strategy),
        created=row.created,
        updated=row.updated,
    )


def source_model(data: dict[str, Any] | None) -> GitSource | BundleSource | None:
    if data is None:
        return None
    if "bundle" in data:
        return BundleSource.model_validate(data)
    return GitSource.model_validate(data)


def run_model(row: FlowRunRow) -> FlowRun:
    return FlowRun(
        id=row.id,
        name=row.name,
        deployment_id=row.deployment_id,
        deployment_name=row.deployment_name,
        work_queue_id=row.work_queue_id,
        parameters=dict(row.parameters),
        tags=list(row.tags),
        env=dict(row.env),
        expected_start_time=row.expected_start_time,
        state=State(
            type=StateType(row.state_type),
            name=row.state_name,
            message=row.state_message,
            timestamp=row.state_timestamp,
        ),
        agent_id=row.agent_id,
        runner_info=dict(row.runner_info),
        attempt=row.attempt,
        source=None if row.source is None else RunSource.model_validate(row.source),
        rerun_of=row.rerun_of,
        created=row.created,
        start_time=row.start_time,
        end_time=row.end_time,
    )


def state_model(row: FlowRunStateRow) -> State:
    return State(
        type=StateType(row.type), name=row.name, message=row.message, timestamp=row.timestamp
    )


def agent_model(row: AgentRow, now: datetime, lease_seconds: float) -> AgentRecord:
    deadline = row.last_heartbeat + (
        _MISSED_HEARTBEATS * timedelta(seconds=row.heartbeat_interval_seconds) + _HEARTBEAT_GRACE
    )
    return AgentRecord(
        id=row.id,
        name=row.name,
        work_queue_id=row.work_queue_id,
        # An agent from before several queues per agent has an empty list: its one queue.
        work_queue_ids=[uuid.UUID(q) for q in row.work_queue_ids or ()] or [row.work_queue_id],
        tags=list(row.tags),
        hostname=row.hostname,
        pid=row.pid,
        version=row.version,
        runs_in_flight=row.runs_in_flight,
        heartbeat_interval_seconds=row.heartbeat_interval_seconds,
        metrics=None if row.metrics is None else HostMetrics.model_validate(row.metrics),
        last_heartbeat=row.last_heartbeat,
        status=AgentStatus.ONLINE if now < deadline else AgentStatus.OFFLINE,
        lease_seconds=lease_seconds,
    )


def log_model(row: LogRow) -> LogLine:
    return LogLine(
        id=row.id,
        flow_run_id=row.flow_run_id,
        timestamp=row.timestamp,
        stream=LogStream(row.stream),
        level=row.level,
        line=row.line,
    )
