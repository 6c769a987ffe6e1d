"""A finished run done again, on a user's request: retried as its next attempt, or rerun anew.

Both run inside a write transaction (``Database.write``) and put a run in SCHEDULED, so it goes
through the normal claim (compare-and-set, lease, attempt fencing) like any other: nothing here
starts anything.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from agent.models import StateType, utcnow
from agent.server import lifecycle
from agent.server.orm import DeploymentRow, FlowRunRow
from agent.server.views import conflict, get_run, not_found

# A user may retry a run that ended without success. A COMPLETED run is not retried (its work
# is done: rerun it to do it again); an active one is not over yet.
RETRYABLE = frozenset({StateType.FAILED, StateType.CRASHED, StateType.CANCELLED})


def retry(session: Session, run_id: uuid.UUID) -> lifecycle.Transition:
    """Schedule ``run_id`` again as its next attempt (same id), or raise 409 saying why not.

    The attempt number goes up by one: it is the fencing token, so a late report about the
    attempt that ended is refused, and the state history keeps every attempt's states.
    """
    run = get_run(session, run_id)
    current = StateType(run.state_type)
    if current not in RETRYABLE:
        if current is StateType.COMPLETED:
            why = "it COMPLETED; rerun it to run it again as a new run"
        else:
            why = f"it is still {current.value}; cancel it first, or wait for it to end"
        raise conflict(
            f"run {run.id} cannot be retried: {why} (only a FAILED, CRASHED or CANCELLED run can)"
        )
    _deployment_of(session, run)
    now = utcnow()
    attempt = run.attempt + 1
    run.attempt = attempt
    run.agent_id = None
    run.expected_start_time = now
    run.start_time = None
    run.end_time = None
    run.runner_info = {}
    message = f"attempt {attempt - 1} {current.value.lower()}; attempt {attempt} retried by user"
    return lifecycle.finish_transition(
        session, run, StateType.SCHEDULED, now=now, name="AwaitingRetry", message=message
    )


def rerun(session: Session, run_id: uuid.UUID, parameters: dict[str, Any]) -> FlowRunRow:
    """A new SCHEDULED run of ``run_id``'s deployment with its parameters, tags and env,
    ``parameters`` over them, linked back by ``rerun_of``."""
    original = get_run(session, run_id)
    deployment = _deployment_of(session, original)
    run = lifecycle.new_run(
        session,
        deployment,
        parameters={**original.parameters, **parameters},
        tags=list(original.tags),
        env=dict(original.env),
        expected_start_time=utcnow(),
        message=f"rerun of {original.name} ({original.id})",
    )
    run.rerun_of = original.id
    return run


def _deployment_of(session: Session, run: FlowRunRow) -> DeploymentRow:
    deployment = session.get(DeploymentRow, run.deployment_id)
    if deployment is None:
        raise not_found(f"deployment {run.deployment_name!r} of run", run.id)
    return deployment
