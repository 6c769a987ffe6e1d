"""Many runs' reports (state proposals, runner-info merges) applied in one write transaction.

An agent running many short runs at once would otherwise make one request and one transaction
per report, and SQLite serialises the transactions: the batch is what lets the server keep up.
Each report is judged exactly as the single-run routes judge it (``lifecycle.set_state`` with
its attempt fencing and transition rules, ``lifecycle.update_runner_info``), inside a SAVEPOINT
of its own, so a refused report changes nothing while the others in the batch still apply.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from fastapi import HTTPException
from sqlalchemy.orm import Session

from agent.backends.base import RunReport, RunReportResult
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
        outcome = lifecycle.set_state(session, report.run_id, report.state)
        return outcome.run, outcome.wake_queues
    assert report.runner_info is not None  # RunReport's validator: one of the two
    return lifecycle.update_runner_info(session, report.run_id, report.runner_info), set()


def apply(session: Session, reports: list[RunReport]) -> Applied:
    """Apply ``reports`` in order; a refusal (404/409) is that report's result, not an error."""
    applied = Applied([])
    for report in reports:
        try:
            with session.begin_nested():
                run, wake = _apply_one(session, report)
        except HTTPException as exc:
            applied.results.append(RunReportResult(status=exc.status_code, detail=str(exc.detail)))
            continue
        applied.wake_queues |= wake
        applied.results.append(RunReportResult(status=200, flow_run=run_model(run)))
    return applied


def apply_batch(db: Database, reports: list[RunReport]) -> Applied:
    with db.write() as session:
        return apply(session, reports)
