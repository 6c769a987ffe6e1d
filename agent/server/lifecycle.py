"""A flow run's life: creation, state transitions, cancellation, retries.

Every function here runs inside a write transaction (``Database.write``), so the checks and the
changes they guard happen under SQLite's write lock.
"""

from __future__ import annotations

import json
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from agent.models import StateProposal, StateType, transition_error, utcnow
from agent.server import notifications
from agent.server.limits import ANY_QUEUE, frees_tag_slot
from agent.server.orm import AgentRow, DeploymentRow, FlowRunRow, FlowRunStateRow
from agent.server.views import conflict, get_run, not_found

log = structlog.get_logger("agent.server.lifecycle")

DEFAULT_STATE_NAMES: dict[StateType, str] = {
    StateType.SCHEDULED: "Scheduled",
    StateType.PENDING: "Pending",
    StateType.RUNNING: "Running",
    StateType.COMPLETED: "Completed",
    StateType.FAILED: "Failed",
    StateType.CRASHED: "Crashed",
    StateType.CANCELLING: "Cancelling",
    StateType.CANCELLED: "Cancelled",
}

# Runs that hold one of their queue's concurrency slots.
ACTIVE_STATES: tuple[str, ...] = (
    StateType.PENDING.value,
    StateType.RUNNING.value,
    StateType.CANCELLING.value,
)
# The active runs an agent has held since before a time. Built once: it is asked at every
# heartbeat (agent/server/routes/agents.py says why).
_HELD_SINCE = (
    FlowRunRow.agent_id == bindparam("agent_id"),
    FlowRunRow.state_type.in_(ACTIVE_STATES),
    FlowRunRow.state_timestamp < bindparam("before"),
)
_HELD_IDS = select(FlowRunRow.id).where(*_HELD_SINCE)

CANCELLED_BY_USER = "cancelled by user"


@dataclass
class Transition:
    """What a lifecycle call changed: the run, and the queues whose waiting claimers may now
    find work (a run became SCHEDULED, or one left the active states and freed a slot)."""

    run: FlowRunRow
    wake_queues: set[uuid.UUID] = field(default_factory=set)


def wakes_claimers(state: StateType) -> bool:
    return state is StateType.SCHEDULED or state.is_terminal


def _woken_by(session: Session, run: FlowRunRow, state: StateType) -> set[uuid.UUID]:
    """The queues whose held claimers ``run`` reaching ``state`` may give work: its own, and
    every queue when it frees the slot of a tag with a limit (its waiting runs may be anywhere)."""
    if state.is_terminal and frees_tag_slot(session, run):
        return {run.work_queue_id, ANY_QUEUE}
    return {run.work_queue_id}


def record_state(
    session: Session,
    run: FlowRunRow,
    state: StateType,
    *,
    now: datetime,
    name: str | None = None,
    message: str | None = None,
) -> None:
    """Put ``run`` in ``state`` and append the state to its history (no rule checks here)."""
    run.state_type = state.value
    run.state_name = name or DEFAULT_STATE_NAMES[state]
    run.state_message = message
    run.state_timestamp = now
    if state is StateType.RUNNING and run.start_time is None:
        run.start_time = now
    if state.is_terminal:
        run.end_time = now
    session.add(
        FlowRunStateRow(
            flow_run_id=run.id,
            type=state.value,
            name=run.state_name,
            message=message,
            timestamp=now,
        )
    )
    # In this transaction: the event is queued if, and only if, the change commits.
    notifications.on_state(session, run, state, now)


def new_run(
    session: Session,
    deployment: DeploymentRow,
    *,
    parameters: dict[str, Any],
    tags: list[str],
    env: dict[str, str],
    expected_start_time: datetime,
    attempt: int = 1,
    name: str | None = None,
    message: str | None = None,
) -> FlowRunRow:
    """A new SCHEDULED run of ``deployment`` (the caller has merged parameters, tags, env)."""
    now = utcnow()
    run = FlowRunRow(
        id=uuid.uuid4(),
        name=name or f"{deployment.name}-{secrets.token_hex(3)}",
        deployment_id=deployment.id,
        deployment_name=deployment.name,
        work_queue_id=deployment.work_queue_id,
        parameters=parameters,
        tags=tags,
        env=env,
        expected_start_time=expected_start_time,
        runner_info={},
        attempt=attempt,
        created=now,
    )
    session.add(run)
    record_state(session, run, StateType.SCHEDULED, now=now, message=message)
    return run


def set_state(session: Session, run_id: uuid.UUID, proposal: StateProposal) -> Transition:
    """Apply an agent's (or a user's) proposed state, or raise 404/409 saying why not."""
    return apply_state(session, check_state(session, run_id, proposal), proposal)


def check_state(session: Session, run_id: uuid.UUID, proposal: StateProposal) -> FlowRunRow:
    """The run, if ``proposal`` may be applied to it; else raise 404/409 saying why not.

    Changes nothing: every refusal is decided here, so a batch of reports (server/reports.py)
    can refuse one without undoing anything.
    """
    run = get_run(session, run_id)
    current = StateType(run.state_type)
    if proposal.attempt is not None and proposal.attempt != run.attempt:
        # A report about an attempt that is over (its lease expired and the run moved on):
        # applying it would let a dead execution overwrite a live one.
        log.warning(
            "stale_report_refused",
            run_id=str(run.id),
            state=proposal.type.value,
            attempt=proposal.attempt,
            run_attempt=run.attempt,
        )
        raise conflict(
            f"stale report: attempt {proposal.attempt} of run {run.id} is over "
            f"(the run is on attempt {run.attempt}, {current.value})"
        )
    if (
        proposal.agent_id is not None
        and run.agent_id is not None
        and run.agent_id != proposal.agent_id
    ):
        raise conflict(f"run {run.id} is claimed by agent {run.agent_id}")
    if (
        proposal.agent_id is not None
        and run.agent_id is None
        and not _takes_ownership(run, proposal)
        and not current.is_terminal
    ):
        # The agent's claim is over (handed back, or released by the server) and the run is
        # free for anyone: a late report of it (a cancel, a failure) would end a run that no
        # one ran. The next claim decides what happens to it.
        raise conflict(f"run {run.id} is not held by agent {proposal.agent_id}: report dropped")
    reason = transition_error(current, proposal.type)
    if reason is not None:
        raise conflict(reason)
    if _takes_ownership(run, proposal) and session.get(AgentRow, proposal.agent_id) is None:
        raise not_found("agent", proposal.agent_id)
    return run


def _takes_ownership(run: FlowRunRow, proposal: StateProposal) -> bool:
    """An agent taking a run without a claim (e.g. `set_state PENDING`) becomes its owner."""
    return (
        proposal.agent_id is not None
        and run.agent_id is None
        and proposal.type in (StateType.PENDING, StateType.RUNNING)
    )


def apply_state(session: Session, run: FlowRunRow, proposal: StateProposal) -> Transition:
    """Apply a proposal :func:`check_state` has accepted; refuses nothing."""
    now = utcnow()
    if proposal.type is StateType.SCHEDULED:
        # A handed-back run is free for any agent to claim again.
        run.agent_id = None
    elif _takes_ownership(run, proposal):
        run.agent_id = proposal.agent_id
    info = dict(proposal.runner_info or {})
    if proposal.type is StateType.COMPLETED and "result" not in info:
        info |= result_from_message(proposal.message)
    if info:
        run.runner_info = {**run.runner_info, **keep_result(info)}
    if proposal.source is not None and run.source is None:
        # First writer wins: a retry (or a racing report) never changes the recorded commit.
        run.source = proposal.source.model_dump(mode="json")
    return finish_transition(
        session, run, proposal.type, now=now, name=proposal.name, message=proposal.message
    )


def update_runner_info(session: Session, run_id: uuid.UUID, info: dict[str, Any]) -> FlowRunRow:
    """Merge ``info`` into the run's runner_info (pid, exit code, container id…)."""
    run = get_run(session, run_id)
    run.runner_info = {**run.runner_info, **info}
    return run


# A flow's return value is kept in runner_info["result"] up to this size (as JSON); a larger
# one is cut there, with a marker, so that no result can break a run or bloat the database.
MAX_RESULT_BYTES = 64 * 1024
_NOT_SERIALISABLE = "completed; the result is not JSON-serialisable: "


def keep_result(info: dict[str, Any]) -> dict[str, Any]:
    """``info`` with its ``result`` made safe to store, and a ``result_note`` when it was not
    kept as it came: cut to :data:`MAX_RESULT_BYTES`, or only a repr (``result_repr``)."""
    if "result" in info:
        try:
            text = json.dumps(info["result"])
        except (TypeError, ValueError):
            text = repr(info["result"])
        size = len(text.encode())
        if size <= MAX_RESULT_BYTES:
            return info
        kept = text.encode()[:MAX_RESULT_BYTES].decode(errors="ignore")
        note = (
            f"truncated: the result is {size} bytes as JSON; the first {MAX_RESULT_BYTES} are kept"
        )
        return {**info, "result": f"{kept}…[{note}]", "result_note": note}
    if "result_repr" in info:
        rest = {k: v for k, v in info.items() if k != "result_repr"}
        text = str(info["result_repr"])[:MAX_RESULT_BYTES]
        return {**rest, "result": text, "result_note": "not JSON-serialisable: this is its repr"}
    return info


def result_from_message(message: str | None) -> dict[str, Any]:
    """The repr our runners put in a COMPLETED message when the value is not JSON."""
    if message and message.startswith(_NOT_SERIALISABLE):
        return {"result_repr": message.removeprefix(_NOT_SERIALISABLE)}
    return {}


def finish_transition(
    session: Session,
    run: FlowRunRow,
    state: StateType,
    *,
    now: datetime,
    name: str | None = None,
    message: str | None = None,
) -> Transition:
    """Record ``state`` and apply its consequences: wake claimers, schedule a retry."""
    record_state(session, run, state, now=now, name=name, message=message)
    outcome = Transition(run)
    if wakes_claimers(state):
        outcome.wake_queues |= _woken_by(session, run, state)
    if state in RETRIED_STATES:
        _schedule_retry(session, run, state, now)
    return outcome


# A run that failed or crashed is tried again when its deployment has retries left. A cancelled
# run is not: someone wanted it stopped.
RETRIED_STATES = frozenset({StateType.FAILED, StateType.CRASHED})


def _schedule_retry(session: Session, run: FlowRunRow, state: StateType, now: datetime) -> None:
    """Put the same run back to SCHEDULED ("AwaitingRetry") as its next attempt.

    The run keeps its id; ``attempt`` goes up by one, which is also the fencing token that
    makes any late report about the previous attempt a 409. The history keeps the FAILED or
    CRASHED state of the attempt that ended.
    """
    deployment = session.get(DeploymentRow, run.deployment_id)
    if deployment is None or run.attempt > deployment.retries:
        return
    attempt = run.attempt + 1
    delay = deployment.retry_delay_seconds
    run.attempt = attempt
    run.agent_id = None
    run.expected_start_time = now + timedelta(seconds=delay)
    run.start_time = None
    run.end_time = None
    run.runner_info = {}
    record_state(
        session,
        run,
        StateType.SCHEDULED,
        now=now,
        name="AwaitingRetry",
        message=(
            f"attempt {attempt - 1} {state.value.lower()}; attempt {attempt} of "
            f"{deployment.retries + 1} in {delay:g}s"
        ),
    )


def cancel(session: Session, run_id: uuid.UUID) -> Transition:
    """A user's cancel: at once when nothing runs yet, via CANCELLING when something does."""
    run = get_run(session, run_id)
    current = StateType(run.state_type)
    if current is StateType.CANCELLING:
        return Transition(run)
    reason = transition_error(current, StateType.CANCELLED)
    if reason is not None:
        raise conflict(reason)
    target = StateType.CANCELLING if current is StateType.RUNNING else StateType.CANCELLED
    record_state(session, run, target, now=utcnow(), message=CANCELLED_BY_USER)
    outcome = Transition(run)
    if wakes_claimers(target):
        outcome.wake_queues |= _woken_by(session, run, target)
    return outcome


def resolve_dropped_runs(
    session: Session,
    agent: AgentRow,
    held: set[uuid.UUID],
    now: datetime,
    *,
    listed_at: datetime | None = None,
) -> set[uuid.UUID]:
    """Runs the server thinks ``agent`` holds but its heartbeat no longer lists.

    A restarted agent has already stopped what its earlier life left running (it cannot
    supervise it again), so such a run is over: CRASHED (and maybe retried) if it had started,
    back to SCHEDULED if it never had. A claim answered a moment ago may not be listed yet, so
    only runs whose state is older than a few heartbeats count, older than when the heartbeat
    arrived (``listed_at``), not when it was processed: on a busy server a heartbeat can wait
    seconds for the database, and the runs claimed meanwhile are not in its list.
    Returns the queues to wake.
    """
    grace = timedelta(seconds=max(3 * agent.heartbeat_interval_seconds, 2.0))
    listed_at = min(listed_at or now, now)
    # Ids first, on every heartbeat of every agent; whole runs only for the few dropped.
    bound = {"agent_id": agent.id, "before": listed_at - grace}
    ids = session.connection().execute(_HELD_IDS, bound).scalars()
    dropped = [run_id for run_id in ids if run_id not in held]
    if not dropped:
        return set()
    still_held = select(FlowRunRow).where(FlowRunRow.id.in_(dropped), *_HELD_SINCE)
    rows = session.scalars(still_held, bound).all()
    wake: set[uuid.UUID] = set()
    for run in rows:
        current = StateType(run.state_type)
        if current is StateType.PENDING:
            run.agent_id = None
            target, message = StateType.SCHEDULED, f"agent {agent.name} no longer holds this claim"
        elif current is StateType.CANCELLING:
            target, message = StateType.CANCELLED, f"agent {agent.name} no longer runs it"
        else:
            target, message = StateType.CRASHED, f"agent {agent.name} no longer runs it"
        log.warning(
            "run_dropped",
            run_id=str(run.id),
            agent=agent.name,
            state=current.value,
            to=target.value,
        )
        wake |= finish_transition(session, run, target, now=now, message=message).wake_queues
    return wake
