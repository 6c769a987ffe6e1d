"""Many runs' reports (state proposals, runner-info merges) applied in one write transaction.

An agent running many short runs at once would otherwise make one request and one transaction
per report, and SQLite serialises the transactions: the batch is what lets the server keep up.
Each report is judged exactly as the single-run routes judge it (``lifecycle.check_state``:
attempt fencing, ownership, transition rules; a run that exists, for runner info), and every
refusal is decided before anything changes, so a refused report changes nothing while the others
in the batch still apply. (A SAVEPOINT per report would say the same more loudly, but it makes
the ORM flush once per report, which cost a quarter of the batch's time.)
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from fastapi import HTTPException
from sqlalchemy import select
from sqlalchemy.orm import Session

from agent.models import RunReport, RunReportResult
from agent.server import lifecycle
from agent.server.db import Database
from agent.server.orm import FlowRunRow
from agent.server.views import run_model


@dataclass
class Applied:
    results: list[RunReportResult]
    wake_queues: set[uuid.UUID] = field(default_factory=set)


def _apply_one(session: Session, report: RunReport) -> tuple[FlowRunRow, set[uuid.UUID]]:
    if report.state is not None:
        run = lifecycle.check_state(session, report.run_id, report.state)  # may refuse
        outcome = lifecycle.apply_state(session, run, report.state)  # refuses nothing
        return outcome.run, outcome.wake_queues
    assert report.runner_info is not None  # RunReport's validator: one of the two
    return lifecycle.update_runner_info(session, report.run_id, report.runner_info), set()


def apply(session: Session, reports: list[RunReport]) -> Applied:
    """Apply ``reports`` in order; a refusal (404/409) is that report's result, not an error."""
    applied = Applied([])
    # One SELECT for every run of the batch: each report's own lookup (Session.get) then finds
    # its run in the session's identity map instead of asking SQLite again. The identity map
    # holds objects weakly, so the list keeps them there until the batch is done.
    ids = list({report.run_id for report in reports})
    # In id order: two batches that share runs lock them in one order (PostgreSQL).
    loaded = session.scalars(
        select(FlowRunRow).where(FlowRunRow.id.in_(ids)).order_by(FlowRunRow.id)
    ).all()
    for report in reports:
        try:
            run, wake = _apply_one(session, report)
        except HTTPException as exc:
            applied.results.append(RunReportResult(status=exc.status_code, detail=str(exc.detail)))
            continue
        applied.wake_queues |= wake
        applied.results.append(RunReportResult(status=200, flow_run=run_model(run)))
    del loaded
    return applied


def apply_batch(db: Database, reports: list[RunReport]) -> Applied:
    # Its runs' row locks are all it needs (agent/server/db.py): not behind every other write.
    with db.write(serialized=False) as session:
        return apply(session, reports)
