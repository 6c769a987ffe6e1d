"""Flow runs: listing, reading, state transitions, cancellation, runner info, logs."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body, Header, Query, status
from fastapi.responses import StreamingResponse
from sqlalchemy import String, cast, or_, select

from agent.models import (
    MAX_REPORTS,
    FlowRun,
    FlowRunRerun,
    LogLine,
    LogLineCreate,
    RunnerInfoUpdate,
    RunReport,
    RunReportResult,
    State,
    StateProposal,
    StateType,
)
from agent.server import lifecycle, log_stream, reports, reruns
from agent.server.db import Database
from agent.server.deps import DB, Wakeups
from agent.server.log_stream import Feed
from agent.server.orm import FlowRunRow, FlowRunStateRow, LogRow
from agent.server.views import as_utc, get_run, log_model, run_model, state_model

# A line id is a 64-bit integer in the database: a larger one is a 422 here, checked before a
# stream starts (inside it, the error could only cut the connection).
MAX_LINE_ID = 2**63 - 1


router = APIRouter(prefix="/flow_runs", tags=["flow runs"])


@dataclass(frozen=True)
class RunFilter:
    """Which runs a list shows; every field given must hold."""

    work_queue_id: uuid.UUID | None = None
    deployment_id: uuid.UUID | None = None
    agent_id: uuid.UUID | None = None
    states: tuple[StateType, ...] = ()
    tags: tuple[str, ...] = ()
    created_after: datetime | None = None
    created_before: datetime | None = None


def _list(db: Database, where: RunFilter, before: uuid.UUID | None, limit: int) -> list[FlowRun]:
    query = select(FlowRunRow)
    if where.work_queue_id is not None:
        query = query.where(FlowRunRow.work_queue_id == where.work_queue_id)
    if where.deployment_id is not None:
        query = query.where(FlowRunRow.deployment_id == where.deployment_id)
    if where.agent_id is not None:
        query = query.where(FlowRunRow.agent_id == where.agent_id)
    if where.states:
        query = query.where(FlowRunRow.state_type.in_([state.value for state in where.states]))
    for tag in where.tags:
        # The tags are a JSON list: match the tag's own JSON text, quotes included, so "a" does
        # not match "ab". Plain LIKE on the text works alike on SQLite and PostgreSQL.
        pattern = json.dumps(tag).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(cast(FlowRunRow.tags, String).like(f"%{pattern}%", escape="\\"))
    if where.created_after is not None:
        query = query.where(FlowRunRow.created >= as_utc(where.created_after))
    if where.created_before is not None:
        query = query.where(FlowRunRow.created < as_utc(where.created_before))
    with db.read() as session:
        if before is not None:
            # Keyset paging: the runs after the cursor in (created, id) order, newest first, so
            # a page costs the same at the 100,000th run as at the first and never repeats one.
            cursor = get_run(session, before)
            # `created <= c` first: a range SQLite reads from the index; the OR only settles ties.
            query = query.where(
                FlowRunRow.created <= cursor.created,
                or_(FlowRunRow.created < cursor.created, FlowRunRow.id < cursor.id),
            )
        query = query.order_by(FlowRunRow.created.desc(), FlowRunRow.id.desc()).limit(limit)
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


def _retry(db: Database, run_id: uuid.UUID) -> lifecycle.Transition:
    with db.write() as session:
        return reruns.retry(session, run_id)


def _rerun(db: Database, run_id: uuid.UUID, body: FlowRunRerun) -> FlowRun:
    with db.write() as session:
        return run_model(reruns.rerun(session, run_id, body.parameters))


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


def _run_and_logs(
    db: Database, run_id: uuid.UUID, after: int, limit: int
) -> tuple[FlowRun, list[LogLine]]:
    with db.read() as session:
        run = run_model(get_run(session, run_id))
    return run, _read_logs(db, run_id, after, limit)


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
    tag: Annotated[list[str] | None, Query(description="runs carrying every tag given")] = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    before: Annotated[
        uuid.UUID | None,
        Query(description="keyset paging: the runs older than this one (the last of a page)"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[FlowRun]:
    where = RunFilter(
        work_queue_id,
        deployment_id,
        agent_id,
        tuple(state or ()),
        tuple(tag or ()),
        created_after,
        created_before,
    )
    return await db.run(_list, db, where, before, limit)


@router.post("/reports", summary="Apply many runs' state and runner-info reports at once")
async def apply_reports(
    body: Annotated[list[RunReport], Body(max_length=MAX_REPORTS)], db: DB, wakeups: Wakeups
) -> list[RunReportResult]:
    applied = await db.run_small(reports.apply_batch, db, body)
    wakeups.notify(applied.wake_queues)
    return applied.results


@router.get("/{run_id}", summary="Read a run")
async def read_flow_run(run_id: uuid.UUID, db: DB) -> FlowRun:
    return await db.run_small(_get, db, run_id)


@router.get("/{run_id}/states", summary="A run's state history, oldest first")
async def read_flow_run_states(run_id: uuid.UUID, db: DB) -> list[State]:
    return await db.run(_states, db, run_id)


@router.post("/{run_id}/set_state", summary="Propose a new state for a run")
async def set_flow_run_state(
    run_id: uuid.UUID, proposal: StateProposal, db: DB, wakeups: Wakeups
) -> FlowRun:
    outcome = await db.run_small(_set_state, db, run_id, proposal)
    wakeups.notify(outcome.wake_queues)
    return run_model(outcome.run)


@router.patch("/{run_id}", summary="Merge into a run's runner_info")
async def update_flow_run(run_id: uuid.UUID, body: RunnerInfoUpdate, db: DB) -> FlowRun:
    return await db.run_small(_update_runner_info, db, run_id, body)


@router.post("/{run_id}/cancel", summary="Cancel a run")
async def cancel_flow_run(run_id: uuid.UUID, db: DB, wakeups: Wakeups) -> FlowRun:
    outcome = await db.run(_cancel, db, run_id)
    wakeups.notify(outcome.wake_queues)
    return run_model(outcome.run)


@router.post("/{run_id}/retry", summary="Schedule a failed, crashed or cancelled run again")
async def retry_flow_run(run_id: uuid.UUID, db: DB, wakeups: Wakeups) -> FlowRun:
    outcome = await db.run(_retry, db, run_id)
    wakeups.notify(outcome.wake_queues)
    return run_model(outcome.run)


@router.post(
    "/{run_id}/rerun",
    status_code=status.HTTP_201_CREATED,
    summary="A new run of the same deployment with this run's parameters",
)
async def rerun_flow_run(
    run_id: uuid.UUID, db: DB, wakeups: Wakeups, body: FlowRunRerun | None = None
) -> FlowRun:
    run = await db.run(_rerun, db, run_id, body or FlowRunRerun())
    wakeups.notify([run.work_queue_id])
    return run


@router.post("/{run_id}/logs", status_code=status.HTTP_201_CREATED, summary="Append log lines")
async def add_flow_run_logs(
    run_id: uuid.UUID,
    lines: list[LogLineCreate],
    db: DB,
    feed: Feed,
    batch_id: Annotated[
        uuid.UUID | None, Query(description="idempotency key: a resent batch is stored once")
    ] = None,
) -> dict[str, int]:
    count = await db.run_small(_add_logs, db, run_id, lines, batch_id)
    if count:
        feed.poke(run_id)
    return {"count": count}


@router.get("/{run_id}/logs", summary="Log lines after a given id, ascending")
async def read_flow_run_logs(
    run_id: uuid.UUID,
    db: DB,
    after: Annotated[int, Query(ge=0, le=MAX_LINE_ID)] = 0,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> list[LogLine]:
    return await db.run(_read_logs, db, run_id, after, limit)


@router.get(
    "/{run_id}/logs/stream",
    summary="Server-sent events: the run's state and log lines as they come, until it ends",
    response_class=StreamingResponse,
)
async def stream_flow_run_logs(
    run_id: uuid.UUID,
    db: DB,
    feed: Feed,
    after: Annotated[int, Query(ge=0, le=MAX_LINE_ID)] = 0,
    last_event_id: Annotated[int | None, Header(ge=0, le=MAX_LINE_ID)] = None,
) -> StreamingResponse:
    # Asked before the stream starts, so an unknown run is a plain 404, not an empty stream.
    await db.run_small(_get, db, run_id)
    start = max(after, last_event_id or 0)
    return StreamingResponse(
        log_stream.events(db, feed, run_id, start, _run_and_logs),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
