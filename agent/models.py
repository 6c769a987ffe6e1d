"""Wire models: what the daemon, the backends and the embedded server say to each other.

These are the only types the server shares with the daemon. They are plain pydantic models so
they validate on both ends of the HTTP conversation and print the same JSON everywhere.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator


def utcnow() -> datetime:
    return datetime.now(UTC)


class StateType(StrEnum):
    SCHEDULED = "SCHEDULED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CRASHED = "CRASHED"
    CANCELLING = "CANCELLING"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}
)

# Every transition the server accepts; anything else is a 409. Terminal states have no exits:
# a retry is a new attempt scheduled by the server, not a transition out of FAILED.
ALLOWED_TRANSITIONS: dict[StateType, frozenset[StateType]] = {
    StateType.SCHEDULED: frozenset({StateType.PENDING, StateType.CANCELLED}),
    StateType.PENDING: frozenset(
        {
            StateType.RUNNING,
            StateType.SCHEDULED,  # an agent hands a claimed run back (e.g. runner not installed)
            StateType.FAILED,
            StateType.CRASHED,
            StateType.CANCELLED,
        }
    ),
    StateType.RUNNING: frozenset(
        {
            StateType.COMPLETED,
            StateType.FAILED,
            StateType.CRASHED,
            StateType.CANCELLING,
            StateType.CANCELLED,
        }
    ),
    StateType.CANCELLING: frozenset(
        {
            StateType.CANCELLED,
            # the run may finish on its own before the interrupt lands
            StateType.COMPLETED,
            StateType.FAILED,
            StateType.CRASHED,
        }
    ),
    StateType.COMPLETED: frozenset(),
    StateType.FAILED: frozenset(),
    StateType.CRASHED: frozenset(),
    StateType.CANCELLED: frozenset(),
}


def transition_error(current: StateType, proposed: StateType) -> str | None:
    """Why ``current → proposed`` is impossible, or None when it is allowed."""
    if proposed in ALLOWED_TRANSITIONS[current]:
        return None
    if current.is_terminal:
        return (
            f"run is already {current.value}, a terminal state; it cannot become {proposed.value}"
        )
    allowed = ", ".join(sorted(s.value for s in ALLOWED_TRANSITIONS[current]))
    return f"cannot go from {current.value} to {proposed.value} (allowed: {allowed})"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- work queues


class WorkQueueCreate(_Model):
    name: str = Field(min_length=1, max_length=200)
    tags: list[str] = Field(default_factory=list, description="a run must carry all of these")
    concurrency_limit: int | None = Field(default=None, ge=0)
    paused: bool = False


class WorkQueueUpdate(_Model):
    tags: list[str] | None = None
    concurrency_limit: int | None = Field(default=None, ge=0)
    paused: bool | None = None


class WorkQueue(_Model):
    id: UUID
    name: str
    tags: list[str]
    concurrency_limit: int | None
    paused: bool
    created: datetime


# --------------------------------------------------------------------------- deployments


class DeploymentCreate(_Model):
    """A deployment says what to run: a Python entrypoint or a command argv, and how."""

    name: str = Field(min_length=1, max_length=200)
    work_queue_id: UUID
    entrypoint: str | None = Field(
        default=None, description="path/to/file.py:func or package.module:func"
    )
    command: list[str] | None = Field(default=None, description="an argv to run instead")
    working_dir: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    runner: str = "subprocess"
    runner_options: dict[str, Any] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)
    timeout_seconds: float | None = Field(default=None, gt=0)
    retries: int = Field(default=0, ge=0)
    retry_delay_seconds: float = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _one_target(self) -> DeploymentCreate:
        if (self.entrypoint is None) == (self.command is None):
            raise ValueError("give exactly one of 'entrypoint' or 'command'")
        if self.entrypoint is not None and ":" not in self.entrypoint:
            raise ValueError(
                "entrypoint must look like 'path/to/file.py:func' or 'package.module:func'"
            )
        if self.command is not None and not self.command:
            raise ValueError("command must not be empty")
        return self


class Deployment(DeploymentCreate):
    id: UUID
    created: datetime
    updated: datetime


# --------------------------------------------------------------------------- flow runs


class State(_Model):
    type: StateType
    name: str
    message: str | None = None
    timestamp: datetime


class FlowRunCreate(_Model):
    parameters: dict[str, Any] = Field(default_factory=dict, description="over the deployment's")
    tags: list[str] = Field(default_factory=list, description="added to the deployment's")
    env: dict[str, str] = Field(default_factory=dict, description="over the deployment's")
    expected_start_time: datetime | None = Field(default=None, description="default: now")


class FlowRun(_Model):
    id: UUID
    name: str
    deployment_id: UUID
    deployment_name: str
    work_queue_id: UUID
    parameters: dict[str, Any]
    tags: list[str]
    env: dict[str, str]
    expected_start_time: datetime
    state: State
    agent_id: UUID | None = None
    runner_info: dict[str, Any] = Field(default_factory=dict)
    attempt: int = 1
    created: datetime
    start_time: datetime | None = None
    end_time: datetime | None = None


class StateProposal(_Model):
    type: StateType
    name: str | None = None
    message: str | None = None
    agent_id: UUID | None = Field(default=None, description="the agent making the report")
    attempt: int | None = Field(
        default=None,
        description="the attempt the report is about: a fencing token; a report about an "
        "attempt that is over is refused (409)",
    )
    runner_info: dict[str, Any] | None = Field(default=None, description="merged into the run's")


class RunnerInfoUpdate(_Model):
    runner_info: dict[str, Any]


class ClaimRequest(_Model):
    agent_id: UUID
    tags: list[str] = Field(default_factory=list, description="the agent's --tag filters")
    limit: int = Field(default=1, ge=0, le=1000)
    wait_seconds: float = Field(default=0, ge=0, le=60, description="long-poll bound")
    claim_id: UUID | None = Field(
        default=None,
        description="idempotency key: a retried claim with the same id answers the runs the "
        "first one took instead of taking more",
    )


class ClaimedRun(_Model):
    """A run handed to one agent, with the deployment it needs to launch it."""

    flow_run: FlowRun
    deployment: Deployment


# --------------------------------------------------------------------------- agents


class HostMetrics(_Model):
    cpu_percent: float
    memory_percent: float
    load_1m: float | None = None
    memory_available_bytes: int | None = None


class AgentStatus(StrEnum):
    ONLINE = "ONLINE"
    OFFLINE = "OFFLINE"


class Heartbeat(_Model):
    name: str = Field(min_length=1, max_length=200)
    work_queue_id: UUID
    tags: list[str] = Field(default_factory=list)
    hostname: str | None = None
    pid: int | None = None
    version: str | None = None
    runs_in_flight: int = 0
    heartbeat_interval_seconds: float = Field(default=5, gt=0)
    metrics: HostMetrics | None = None


class AgentRecord(_Model):
    id: UUID
    name: str
    work_queue_id: UUID
    tags: list[str]
    hostname: str | None
    pid: int | None
    version: str | None
    runs_in_flight: int
    heartbeat_interval_seconds: float
    metrics: HostMetrics | None
    last_heartbeat: datetime
    status: AgentStatus
    lease_seconds: float = Field(
        default=30.0,
        description="the agent's runs are resolved (CRASHED) this long after its last heartbeat",
    )


# --------------------------------------------------------------------------- logs


class LogStream(StrEnum):
    STDOUT = "stdout"
    STDERR = "stderr"
    AGENT = "agent"


class LogLineCreate(_Model):
    timestamp: datetime
    stream: LogStream
    level: str = "INFO"
    line: str


class LogLine(LogLineCreate):
    id: int
    flow_run_id: UUID


class Health(_Model):
    status: str
    server: str = "flowagent"
    version: str
