"""The overview the UI's first page shows: runs by state over time, what is late or failing,
and each queue's backlog, in one request."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import case, func, literal, select
from sqlalchemy.orm import Session

from agent.models import Overview, QueueBacklog, StateCounts, StateType, utcnow
from agent.server.db import Database
from agent.server.deps import DB
from agent.server.lifecycle import ACTIVE_STATES
from agent.server.orm import FlowRunRow, WorkQueueRow
from agent.server.scheduler import LATE
from agent.server.views import run_model

router = APIRouter(tags=["overview"])

# The lists of late and failed runs are a call-out, not a listing: the runs page pages them all.
_CALLOUT = 20


def _overview(db: Database, hours: float, buckets: int) -> Overview:
    until = utcnow()
    since = until - timedelta(hours=hours)
    width = (until - since) / buckets
    counts = [dict.fromkeys(StateType, 0) for _ in range(buckets)]
    edges = [since + i * width for i in range(1, buckets)]
    # One query counts every (bucket, state) from the index on (expected_start_time, state):
    # a CASE over the bucket edges is plain SQL, the same on SQLite and PostgreSQL (their date
    # arithmetic differs), and no run is read into Python.
    whens = [(FlowRunRow.expected_start_time < edge, i) for i, edge in enumerate(edges)]
    # One bucket has no edge, and a CASE needs at least one WHEN.
    slot = (case(*whens, else_=buckets - 1) if whens else literal(0)).label("bucket")
    with db.read() as session:
        rows = session.execute(
            select(slot, FlowRunRow.state_type, func.count())
            .where(FlowRunRow.expected_start_time >= since, FlowRunRow.expected_start_time <= until)
            .group_by(slot, FlowRunRow.state_type)
        )
        for index, state, n in rows:
            counts[index][StateType(state)] += n
        late = session.scalars(
            select(FlowRunRow)
            .where(
                FlowRunRow.state_type == StateType.SCHEDULED.value, FlowRunRow.state_name == LATE
            )
            .order_by(FlowRunRow.expected_start_time)
            .limit(_CALLOUT)
        )
        late_runs = [run_model(row) for row in late]
        failed = session.scalars(
            select(FlowRunRow)
            .where(
                FlowRunRow.state_type.in_([StateType.FAILED.value, StateType.CRASHED.value]),
                FlowRunRow.state_timestamp >= since,
            )
            .order_by(FlowRunRow.state_timestamp.desc())
            .limit(_CALLOUT)
        )
        failed_runs = [run_model(row) for row in failed]
        queues = _backlogs(session)
    totals = dict.fromkeys(StateType, 0)
    for bucket in counts:
        for state, n in bucket.items():
            totals[state] += n
    return Overview(
        since=since,
        until=until,
        bucket_seconds=width.total_seconds(),
        buckets=[
            StateCounts(start=since + i * width, counts=bucket) for i, bucket in enumerate(counts)
        ],
        totals=totals,
        late=late_runs,
        failed=failed_runs,
        queues=queues,
    )


def _backlogs(session: Session) -> list[QueueBacklog]:
    waiting = (StateType.SCHEDULED.value, *ACTIVE_STATES)
    per_queue: dict[uuid.UUID, dict[str, int]] = {}
    rows = session.execute(
        # By name, not by ``state_name = 'Late'``: PostgreSQL refuses a GROUP BY expression
        # whose bound parameter is not the select list's own.
        select(FlowRunRow.work_queue_id, FlowRunRow.state_type, FlowRunRow.state_name, func.count())
        .where(FlowRunRow.state_type.in_(waiting))
        .group_by(FlowRunRow.work_queue_id, FlowRunRow.state_type, FlowRunRow.state_name)
    )
    for queue_id, state, name, n in rows:
        tally = per_queue.setdefault(queue_id, {"scheduled": 0, "late": 0, "active": 0})
        if state == StateType.SCHEDULED.value:
            tally["scheduled"] += n
            if name == LATE:
                tally["late"] += n
        else:
            tally["active"] += n
    return [
        QueueBacklog(
            id=queue.id,
            name=queue.name,
            paused=queue.paused,
            concurrency_limit=queue.concurrency_limit,
            **per_queue.get(queue.id, {"scheduled": 0, "late": 0, "active": 0}),
        )
        for queue in session.scalars(select(WorkQueueRow).order_by(WorkQueueRow.name))
    ]


@router.get("/overview", summary="Runs by state over a window, late and failed runs, backlogs")
async def overview(
    db: DB,
    hours: Annotated[float, Query(gt=0, le=24 * 31)] = 24,
    buckets: Annotated[int, Query(ge=1, le=200)] = 24,
) -> Overview:
    return await db.run(_overview, db, hours, buckets)
