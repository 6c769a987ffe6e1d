"""Flow runs: listing, reading, state transitions, cancellation, runner info, logs."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Query, status
from sqlalchemy import select

from agent.models import (
    MAX_REPORTS,
    FlowRun,
    LogLine,
    LogLineCreate,
    RunnerInfoUpdate,
    RunReport,
    RunReportResult,
    State,
    StateProposal,
    StateType,
)
from agent.server import lifecycle, reports
from agent.server.db import Database
from agent.server.deps import DB, Wakeups
from agent.server.orm import FlowRunRow, FlowRunStateRow, LogRow
from agent.server.views import as_utc, get_run, log_model, run_model, state_model

router = APIRouter(prefix="/flow_runs", tags=["flow runs"])


def _list(
    db: Database,
    work_queue_id: uuid.UUID | None,
    deployment_id: uuid.UUID | None,
    agent_id: uuid.UUID | None,
    states: list[StateType],
    limit: int,
) -> list[FlowRun]:
    query = select(FlowRunRow)
    if work_queue_id is not None:
        query = query.where(FlowRunRow.work_queue_id == work_queue_id)
    if deployment_id is not None:
        query = query.where(FlowRunRow.deployment_id == deployment_id)
    if agent_id is not None:
        query = query.where(FlowRunRow.agent_id == agent_id)
    if states:
        query = query.where(FlowRunRow.state_type.in_([state.value for state in states]))
    query = query.order_by(FlowRunRow.created.desc()).limit(limit)
    with db.read() as session:
        return [run_model(row) for row in session.scalars(query)]


def _get(db: Database, run_id: uuid.UUID) -> FlowRun:
    with db.read() as session:
        return run_model(get_run(session, run_id))


def _states(db: Database, run_id: uuid.UUID) -> list[State]:
    with db.read() as session:
        get_run(session, run_id)
        rows = session.scalars(
            select(FlowRunStateRow)
            .where(FlowRunStateRow.flow_run_id == run_id)
            .order_by(FlowRunStateRow.id)
        )
        return [state_model(row) for row in rows]


def _set_state(db: Database, run_id: uuid.UUID, proposal: StateProposal) -> lifecycle.Transition:
    with db.write(serialized=False) as session:  # the run's row lock is enough
        return lifecycle.set_state(session, run_id, proposal)


def _cancel(db: Database, run_id: uuid.UUID) -> lifecycle.Transition:
    with db.write(serialized=False) as session:  # the run's row lock is enough
        return lifecycle.cancel(session, run_id)


def _update_runner_info(db: Database, run_id: uuid.UUID, body: RunnerInfoUpdate) -> FlowRun:
    with db.write(serialized=False) as session:  # the run's row lock is enough
        return run_model(lifecycle.update_runner_info(session, run_id, body.runner_info))


def _add_logs(
    db: Database, run_id: uuid.UUID, lines: list[LogLineCreate], batch_id: uuid.UUID | None
) -> int:
    with db.write(serialized=False) as session:  # the run's row lock is enough
        get_run(session, run_id)
        if batch_id is not None and session.scalar(
            select(LogRow.id).where(LogRow.flow_run_id == run_id, LogRow.batch_id == batch_id)
        ):
            return 0  # a resent batch (its first delivery's answer was lost): already stored
        session.add_all(
            LogRow(
                flow_run_id=run_id,
                timestamp=as_utc(line.timestamp),
                stream=line.stream.value,
                level=line.level,
                line=line.line,
                batch_id=batch_id,
            )
            for line in lines
        )
        return len(lines)


def _read_logs(db: Database, run_id: uuid.UUID, after: int, limit: int) -> list[LogLine]:
    with db.read() as session:
        get_run(session, run_id)
        rows = session.scalars(
            select(LogRow)
            .where(LogRow.flow_run_id == run_id, LogRow.id > after)
            .order_by(LogRow.id)
            .limit(limit)
        )
        return [log_model(row) for row in rows]


@router.get("", summary="List runs, newest first")
async def list_flow_runs(
    db: DB,
    work_queue_id: uuid.UUID | None = None,
    deployment_id: uuid.UUID | None = None,
    agent_id: uuid.UUID | None = None,
    state: Annotated[list[StateType] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[FlowRun]:
    return await db.run(_list, db, work_queue_id, deployment_id, agent_id, list(state or []), limit)


@router.post("/reports", summary="Apply many runs' state and runner-info reports at once")
async def apply_reports(
    body: Annotated[list[RunReport], Body(max_length=MAX_REPORTS)], db: DB, wakeups: Wakeups
) -> list[RunReportResult]:
    applied = await db.run(reports.apply_batch, db, body)
    wakeups.notify(applied.wake_queues)
    return applied.results


@router.get("/{run_id}", summary="Read a run")
async def read_flow_run(run_id: uuid.UUID, db: DB) -> FlowRun:
    return await db.run(_get, db, run_id)


@router.get("/{run_id}/states", summary="A run's state history, oldest first")
async def read_flow_run_states(run_id: uuid.UUID, db: DB) -> list[State]:
    return await db.run(_states, db, run_id)


@router.post("/{run_id}/set_state", summary="Propose a new state for a run")
async def set_flow_run_state(
    run_id: uuid.UUID, proposal: StateProposal, db: DB, wakeups: Wakeups
) -> FlowRun:
    outcome = await db.run(_set_state, db, run_id, proposal)
    wakeups.notify(outcome.wake_queues)
    return run_model(outcome.run)


@router.patch("/{run_id}", summary="Merge into a run's runner_info")
async def update_flow_run(run_id: uuid.UUID, body: RunnerInfoUpdate, db: DB) -> FlowRun:
    return await db.run(_update_runner_info, db, run_id, body)


@router.post("/{run_id}/cancel", summary="Cancel a run")
async def cancel_flow_run(run_id: uuid.UUID, db: DB, wakeups: Wakeups) -> FlowRun:
    outcome = await db.run(_cancel, db, run_id)
    wakeups.notify(outcome.wake_queues)
    return run_model(outcome.run)


@router.post("/{run_id}/logs", status_code=status.HTTP_201_CREATED, summary="Append log lines")
async def add_flow_run_logs(
    run_id: uuid.UUID,
    lines: list[LogLineCreate],
    db: DB,
    batch_id: Annotated[
        uuid.UUID | None, Query(description="idempotency key: a resent batch is stored once")
    ] = None,
) -> dict[str, int]:
    return {"count": await db.run(_add_logs, db, run_id, lines, batch_id)}


@router.get("/{run_id}/logs", summary="Log lines after a given id, ascending")
async def read_flow_run_logs(
    run_id: uuid.UUID,
    db: DB,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> list[LogLine]:
    return await db.run(_read_logs, db, run_id, after, limit)
