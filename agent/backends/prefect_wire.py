"""The slice of Prefect's REST payloads the Prefect backend reads, and their translation.

Prefect's objects carry dozens of fields that change between versions; these models read only
what the agent needs and ignore the rest, so a newer server does not break an older agent. The
same models read Prefect 3.x and 2.x (>= 2.10, API version 0.8.x) answers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from agent.models import FlowRun, State, StateType, WorkQueue, utcnow

#: Prefect's state types that have no counterpart of ours, mapped for display. A PAUSED run
#: waits to be resumed and rescheduled; no process holds it, like a SCHEDULED one.
_STATE_TYPES = {t.value: t for t in StateType} | {"PAUSED": StateType.SCHEDULED}


class _Prefect(BaseModel):
    model_config = ConfigDict(extra="ignore")


class PState(_Prefect):
    type: str
    name: str | None = None
    message: str | None = None
    timestamp: datetime = Field(default_factory=utcnow)
    state_details: dict[str, Any] = Field(default_factory=dict)

    @property
    def transition_id(self) -> str | None:
        value = self.state_details.get("transition_id")
        return str(value) if value is not None else None


class PRun(_Prefect):
    id: UUID
    name: str = ""
    flow_id: UUID | None = None
    deployment_id: UUID | None = None
    work_queue_id: UUID | None = None
    work_queue_name: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    job_variables: dict[str, Any] | None = None
    expected_start_time: datetime | None = None
    created: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    state: PState | None = None
    infrastructure_pid: str | None = None
    run_count: int = 0

    @property
    def progress(self) -> tuple[int, datetime | None]:
        """What only running or ending changes: RUNNING counts a run, a final state ends it."""
        return self.run_count, self.end_time

    @property
    def state_type(self) -> str:
        return self.state.type if self.state else "SCHEDULED"


class PScheduled(_Prefect):
    """One answer of ``get_scheduled_flow_runs``."""

    work_queue_id: UUID
    flow_run: PRun


class PDeployment(_Prefect):
    id: UUID
    name: str
    created: datetime | None = None
    updated: datetime | None = None
    tags: list[str] = Field(default_factory=list)
    job_variables: dict[str, Any] | None = None
    # Prefect 2 called job variables infra_overrides.
    infra_overrides: dict[str, Any] | None = None
    pull_steps: list[dict[str, Any]] | None = None
    # Prefect 2 agents: the deployment's infrastructure block (a Process block's document).
    infrastructure_document_id: UUID | None = None

    @property
    def variables(self) -> dict[str, Any]:
        return self.job_variables or self.infra_overrides or {}


class PQueue(_Prefect):
    id: UUID
    name: str
    work_pool_name: str | None = None
    is_paused: bool = False
    concurrency_limit: int | None = None
    created: datetime | None = None
    # A Prefect 2 tag-filter queue's {"tags": [...], "deployment_ids": [...]} (prefect_tagqueues)
    filter: dict[str, Any] | None = None


class PResult(_Prefect):
    """The answer to a state proposal: ACCEPT, REJECT, ABORT or WAIT, and the run's state."""

    status: str
    state: PState | None = None
    details: dict[str, Any] = Field(default_factory=dict)

    @property
    def reason(self) -> str:
        return str(self.details.get("reason") or self.status)


# --------------------------------------------------------------------------- translation


def work_queue(queue: PQueue) -> WorkQueue:
    return WorkQueue(
        id=queue.id,
        name=f"{queue.work_pool_name}/{queue.name}",
        tags=[],
        concurrency_limit=queue.concurrency_limit,
        paused=queue.is_paused,
        created=queue.created or utcnow(),
    )


def state(s: PState | None) -> State:
    if s is None:
        return State(type=StateType.SCHEDULED, name="Scheduled", timestamp=utcnow())
    return State(
        type=_STATE_TYPES.get(s.type, StateType.RUNNING),
        name=s.name or s.type.title(),
        message=s.message,
        timestamp=s.timestamp,
    )


def env_of(variables: dict[str, Any] | None) -> dict[str, str]:
    """The ``env`` job variable as strings (Prefect allows any JSON value; null unsets)."""
    env = (variables or {}).get("env") or {}
    if not isinstance(env, dict):
        return {}
    return {
        str(k): v if isinstance(v, str) else json.dumps(v) for k, v in env.items() if v is not None
    }


def flow_run(
    run: PRun, *, deployment_name: str, queue_id: UUID, extra_env: dict[str, str] | None = None
) -> FlowRun:
    info: dict[str, Any] = {}
    if run.infrastructure_pid:
        info["infrastructure_pid"] = run.infrastructure_pid
    created = run.created or utcnow()
    return FlowRun(
        id=run.id,
        name=run.name,
        deployment_id=run.deployment_id or UUID(int=0),
        deployment_name=deployment_name,
        work_queue_id=run.work_queue_id or queue_id,
        parameters=run.parameters,
        tags=run.tags,
        env=env_of(run.job_variables) | (extra_env or {}),
        expected_start_time=run.expected_start_time or created,
        state=state(run.state),
        runner_info=info,
        # Prefect retries a flow inside one engine process: to the agent, each claim is one
        # attempt, and reports are fenced by the claim's transition id instead.
        attempt=1,
        created=created,
        start_time=run.start_time,
        end_time=run.end_time,
    )


def working_directory(deployment: PDeployment, run: PRun) -> str | None:
    """Where the engine should start: the last ``set_working_directory`` pull step, else the
    process work pool's ``working_dir`` job variable (the run's over the deployment's)."""
    directory: str | None = None
    for step in deployment.pull_steps or []:
        for name, args in step.items():
            if name.endswith("set_working_directory") and isinstance(args, dict):
                value = args.get("directory")
                if isinstance(value, str) and "{{" not in value:
                    directory = value
    if directory:
        return directory
    for variables in ((run.job_variables or {}), deployment.variables):
        value = variables.get("working_dir")
        if isinstance(value, str) and value and "{{" not in value:
            return value
    return None


# --------------------------------------------------------------------------- who claimed a run


@dataclass(frozen=True)
class Claimer:
    """The agent process that moved a run to PENDING, read back from the state's message."""

    name: str
    host: str
    pid: int

    def message(self) -> str:
        return f"claimed by flowagent agent {self.name} on {self.host} (pid {self.pid})"


_CLAIM = re.compile(
    r"^claimed by flowagent agent (?P<name>.+) on (?P<host>\S+) \(pid (?P<pid>\d+)\)$"
)


def claimer_of(pending: PState | None) -> Claimer | None:
    if pending is None or pending.type != "PENDING" or not pending.message:
        return None
    match = _CLAIM.match(pending.message)
    if match is None:
        return None
    return Claimer(match["name"], match["host"], int(match["pid"]))


def split_infrastructure_pid(value: str | None) -> tuple[str, int] | None:
    """``"host:pid"`` (what Prefect's workers and this agent record) → (host, pid)."""
    if not value:
        return None
    host, sep, pid = value.rpartition(":")
    if not sep or not pid.isdigit():
        return None
    return host, int(pid)


def is_ours(state: PState | None, kind: str, transition: UUID) -> bool:
    """Whether ``state`` is the ``kind`` state we proposed under ``transition``."""
    return state is not None and state.type == kind and state.transition_id == str(transition)
