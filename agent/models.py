"""Wire models: what the daemon, the backends and the embedded server say to each other.

These are the only types the server shares with the daemon. They are plain pydantic models so
they validate on both ends of the HTTP conversation and print the same JSON everywhere.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)


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


# A year: a bound on every duration, far beyond any real one, well within what datetime and
# asyncio can represent.
MAX_SECONDS = 365 * 24 * 3600.0


# An interval schedule fires at most this often. Each run is a claim, a process, state reports
# and rows kept for it; the agent's pickup and heartbeats work in seconds, and a run is Late after
# 15 s. Something that must happen every few seconds is a service (a loop in one long run), not a
# schedule: a 1 ms interval once made 800 runs in 40 s.
MIN_INTERVAL_SECONDS = 10.0


def _nul_free(value: str) -> str:
    # NUL ends a string in C, in file names (an agent's directory) and in PostgreSQL text.
    if "\x00" in value:
        raise ValueError("must not contain a NUL byte (\\x00)")
    return value


def _min_interval(value: float | None) -> float | None:
    if value is not None and value < MIN_INTERVAL_SECONDS:
        raise ValueError(
            f"must be at least {MIN_INTERVAL_SECONDS:g} seconds (got {value:g}); for work "
            "every few seconds, loop inside one long-running flow instead"
        )
    return value


# Names and tags given by users. The models of what the server answers redeclare them as plain
# str: a row stored before this check must still be readable.
NameText = Annotated[str, AfterValidator(_nul_free), Field(min_length=1, max_length=200)]
TagText = Annotated[str, AfterValidator(_nul_free)]


class _Model(BaseModel):
    # No NaN or infinity: they would poison durations and deadlines downstream.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# What the server answers: a field a newer server adds is ignored, not refused, so agents and
# CLIs of the release before keep working while a fleet is upgraded server first. What clients
# send stays strict (a misspelt field is a 422, not silently dropped).
_ANSWER = ConfigDict(extra="ignore", allow_inf_nan=False)


class _Answer(BaseModel):
    model_config = _ANSWER


# --------------------------------------------------------------------------- work queues


class WorkQueueCreate(_Model):
    name: NameText
    tags: list[TagText] = Field(default_factory=list, description="a run must carry all of these")
    concurrency_limit: int | None = Field(default=None, ge=0)
    paused: bool = False


class WorkQueueUpdate(_Model):
    tags: list[TagText] | None = None
    concurrency_limit: int | None = Field(default=None, ge=0)
    paused: bool | None = None


class WorkQueue(_Answer):
    id: UUID
    name: str
    tags: list[str]
    concurrency_limit: int | None
    paused: bool
    created: datetime


# --------------------------------------------------------------------------- schedules

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> Any:
    """``"30s"``, ``"15m"``, ``"2h"``, ``"1d"`` or a plain number → seconds (a float).

    Anything else is returned as it is, for the field's own validation to refuse.
    """
    if isinstance(value, str):
        match = _DURATION.match(value.lower())
        if match is None:
            raise ValueError(f"{value!r} is not a duration (examples: 30s, 15m, 2h, 1d, 900)")
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return value


class Catchup(StrEnum):
    """What happens to a schedule's runs missed by more than the server's bound (downtime)."""

    ONE = "one"  # a single catch-up run, for the latest missed time
    NONE = "none"  # skip them all; the schedule goes on from now


class ScheduleKind(StrEnum):
    CRON = "cron"
    INTERVAL = "interval"
    ONCE = "once"


class ScheduleCreate(_Model):
    """When a deployment runs: exactly one of ``cron``, ``interval_seconds`` or ``at``."""

    cron: str | None = Field(
        default=None, description="cron expression (5 fields; 6 with seconds), read in timezone"
    )
    interval_seconds: Annotated[
        float | None, BeforeValidator(parse_duration), AfterValidator(_min_interval)
    ] = Field(
        default=None,
        gt=0,
        le=MAX_SECONDS,
        description="every this many seconds (also accepts 30s, 15m, 2h, 1d)",
    )
    anchor: datetime | None = Field(
        default=None,
        description="interval: runs fall at anchor + k * interval (default: the creation time)",
    )
    at: datetime | None = Field(default=None, description="one-off: run once at this time")
    timezone: str = Field(default="UTC", description="IANA time zone the cron fields are read in")
    catchup: Catchup = Catchup.ONE
    active: bool | None = Field(
        default=None,
        description="false: paused; left out: active when new, as it was when redeployed",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> ScheduleCreate:
        given = [
            name for name in ("cron", "interval_seconds", "at") if getattr(self, name) is not None
        ]
        if len(given) != 1:
            raise ValueError("give exactly one of 'cron', 'interval_seconds' or 'at'")
        if self.anchor is not None and self.interval_seconds is None:
            raise ValueError("'anchor' goes with 'interval_seconds' only")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {self.timezone!r} (use an IANA name like Europe/Paris)"
            ) from None
        return self

    @property
    def kind(self) -> ScheduleKind:
        if self.cron is not None:
            return ScheduleKind.CRON
        if self.interval_seconds is not None:
            return ScheduleKind.INTERVAL
        return ScheduleKind.ONCE


class ScheduleUpdate(_Model):
    active: bool | None = Field(default=None, description="false pauses, true resumes")
    catchup: Catchup | None = None


class Schedule(ScheduleCreate):
    model_config = _ANSWER

    # As stored: one made before the minimum existed is still shown.
    interval_seconds: float | None = None
    id: UUID
    deployment_id: UUID
    deployment_name: str
    active: bool = True
    created: datetime
    updated: datetime
    next_run_time: datetime | None = Field(
        default=None, description="the next time it fires (none when paused or over)"
    )


# --------------------------------------------------------------------------- deployments

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# user:password@ in a URL: a credential that would be stored by the server and shown to all.
_URL_CREDENTIALS = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@]*:[^/@]*@", re.IGNORECASE)


class GitSource(_Model):
    """Where an agent fetches a deployment's code: a git repository, at a ref, from a path."""

    git: str = Field(
        min_length=1, description="repository URL: https://, ssh://, user@host:path or file://"
    )
    ref: str | None = Field(
        default=None, description="branch, tag or commit; default: the repository's HEAD"
    )
    path: str | None = Field(
        default=None,
        description="directory inside the repository the run works in (entrypoint relative to it)",
    )
    token_env: str | None = Field(
        default=None,
        description="name of an environment variable of the AGENT holding an https token; "
        "the token itself never reaches the server",
    )

    @model_validator(mode="after")
    def _check(self) -> GitSource:
        _nul_free(self.git)
        if _URL_CREDENTIALS.match(self.git):
            raise ValueError(
                "the git URL holds a password or token; the server would store it: remove it "
                "and name an environment variable of the agent with token_env instead"
            )
        if self.ref is not None and (not self.ref.strip() or self.ref.startswith("-")):
            raise ValueError(f"ref {self.ref!r} is not a branch, tag or commit")
        if self.path is not None:
            parts = self.path.replace("\\", "/").split("/")
            if self.path.startswith("/") or ".." in parts:
                raise ValueError(
                    f"path {self.path!r} must be a directory inside the repository "
                    "(relative, without '..')"
                )
        if self.token_env is not None and not _ENV_NAME.match(self.token_env):
            raise ValueError(
                f"token_env {self.token_env!r} must be an environment variable NAME "
                "(like GIT_TOKEN), not the token"
            )
        return self


class BundleSource(_Model):
    """Code uploaded to the server (``deployment create --upload DIR``), named by its digest."""

    bundle: str = Field(
        pattern=r"^sha256:[0-9a-f]{64}$", description="sha256:<hex> of the uploaded archive"
    )


class Bundle(_Answer):
    """An uploaded bundle as the server keeps it."""

    digest: str
    size: int
    created: bool = Field(description="false: the same content was stored already")


class RunSource(_Answer):
    """The code one run executes, recorded when its first attempt starts: a git commit, or a
    bundle's digest."""

    git: str | None = None
    ref: str | None = None
    commit: str | None = Field(default=None, pattern=r"^[0-9a-f]{40}([0-9a-f]{24})?$")
    path: str | None = None
    bundle: str | None = None


# --------------------------------------------------------------------------- sizes

#: A run's parameters as JSON, at most. The subprocess and Docker runners hand them to the flow in
#: one environment variable, and Linux takes at most 128 KiB for one (MAX_ARG_STRLEN, name
#: included): larger parameters could be stored but never run. Pass large data by reference.
MAX_PARAMETERS_BYTES = 128 * 1024 - 64
#: One env value, at most (the same kernel limit), and all of a deployment's or a run's env
#: together (a process's whole environment and argv share about 2 MiB).
MAX_ENV_VALUE_BYTES = 128 * 1024 - 256
MAX_ENV_BYTES = 1024 * 1024


def _json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), default=str).encode())


def _check_parameters(value: dict[str, Any]) -> dict[str, Any]:
    size = _json_size(value)
    if size > MAX_PARAMETERS_BYTES:
        raise ValueError(
            f"parameters are {size:,} bytes as JSON; at most {MAX_PARAMETERS_BYTES:,} are "
            "accepted (they reach the flow in one environment variable): pass large data by "
            "reference, a path or a URL"
        )
    return value


def _check_env(value: dict[str, str]) -> dict[str, str]:
    total = 0
    for name, text in value.items():
        size = len(name.encode()) + len(text.encode()) + 2
        if size > MAX_ENV_VALUE_BYTES:
            raise ValueError(
                f"env {name} is {size:,} bytes; one variable may hold at most "
                f"{MAX_ENV_VALUE_BYTES:,} (a kernel limit): pass large data by reference"
            )
        total += size
    if total > MAX_ENV_BYTES:
        raise ValueError(f"env is {total:,} bytes in all; at most {MAX_ENV_BYTES:,} are accepted")
    return value


#: What a deployment or a run may be given; stored ones are read back as plain dicts.
Parameters = Annotated[dict[str, Any], AfterValidator(_check_parameters)]
Env = Annotated[dict[str, str], AfterValidator(_check_env)]


class Collision(StrEnum):
    """What happens to a run over its deployment's concurrency limit."""

    ENQUEUE = "enqueue"  # it waits, SCHEDULED ("AwaitingConcurrencySlot"), for a slot
    CANCEL_NEW = "cancel-new"  # it is CANCELLED at once


#: The state name of a SCHEDULED run that is due but waits for a concurrency slot.
AWAITING_SLOT = "AwaitingConcurrencySlot"


class DeploymentCreate(_Model):
    """A deployment says what to run: a Python entrypoint or a command argv, and how."""

    name: NameText
    work_queue_id: UUID
    entrypoint: str | None = Field(
        default=None, description="path/to/file.py:func or package.module:func"
    )
    command: list[str] | None = Field(default=None, description="an argv to run instead")
    working_dir: str | None = None
    parameters: Parameters = Field(default_factory=dict)
    tags: list[TagText] = Field(default_factory=list)
    runner: str | None = Field(
        default=None, description="None: the agent's default runner (agent start --runner)"
    )
    runner_options: dict[str, Any] = Field(default_factory=dict)
    env: Env = Field(default_factory=dict)
    timeout_seconds: float | None = Field(default=None, gt=0, le=MAX_SECONDS)
    retries: int = Field(default=0, ge=0, le=1000)
    retry_delay_seconds: float = Field(default=0, ge=0, le=MAX_SECONDS)
    concurrency_limit: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="at most this many of its runs PENDING, RUNNING or CANCELLING at once "
        "(None: no limit); to stop it running at all, pause its queue",
    )
    collision_strategy: Collision = Field(
        default=Collision.ENQUEUE,
        description="a run over the limit: enqueue (waits for a slot) or cancel-new",
    )
    schedules: Sequence[ScheduleCreate] | None = Field(
        default=None,
        description="when given, the deployment's schedules become these (an unchanged one "
        "keeps its id and its runs); left out, they stay as they are",
    )
    source: GitSource | BundleSource | None = Field(
        default=None,
        description="where agents get the code: git, or an uploaded bundle (docs/SOURCES.md)",
    )

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
        if self.source is not None:
            check_source_target(self.entrypoint, self.working_dir)
        return self


def check_source_target(entrypoint: str | None, working_dir: str | None) -> None:
    """A deployment with a source runs in its checkout: nothing may point outside it."""
    if working_dir is not None:
        raise ValueError(
            "a deployment with a source works in its checkout: give source.path (a directory "
            "inside the repository), not working_dir"
        )
    if entrypoint is not None and entrypoint.startswith("/"):
        raise ValueError(
            f"entrypoint {entrypoint!r} is an absolute path; with a source it must be relative "
            "to the source's path inside the repository"
        )


class Deployment(DeploymentCreate):
    model_config = _ANSWER

    name: str  # as stored (see NameText)
    tags: list[str] = Field(default_factory=list)
    parameters: dict[str, Any] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)
    id: UUID
    created: datetime
    updated: datetime
    schedules: Sequence[Schedule] = Field(default_factory=list)


# --------------------------------------------------------------------------- flow runs


class State(_Answer):
    type: StateType
    name: str
    message: str | None = None
    timestamp: datetime


class FlowRunCreate(_Model):
    parameters: Parameters = Field(default_factory=dict, description="over the deployment's")
    tags: list[TagText] = Field(default_factory=list, description="added to the deployment's")
    env: Env = Field(default_factory=dict, description="over the deployment's")
    expected_start_time: datetime | None = Field(default=None, description="default: now")


class FlowRun(_Answer):
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
    source: RunSource | None = Field(
        default=None, description="the commit the run executes; kept by every retry attempt"
    )
    rerun_of: UUID | None = Field(default=None, description="the run this one is a rerun of")
    created: datetime
    start_time: datetime | None = None
    end_time: datetime | None = None


class FlowRunRerun(_Model):
    parameters: Parameters = Field(
        default_factory=dict, description="over the parameters of the run that is repeated"
    )


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
    source: RunSource | None = Field(
        default=None,
        description="the code the attempt runs; recorded when the run has none yet (a retry "
        "keeps the first attempt's)",
    )

    @model_serializer(mode="wrap")
    def _without_empty_source(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A server from before sources refuses unknown fields: say nothing when there is none.
        data: dict[str, Any] = handler(self)
        if self.source is None:
            data.pop("source", None)
        return data


#: The most reports one ``POST /api/flow_runs/reports`` may carry.
MAX_REPORTS = 1000


class RunReport(_Model):
    """One item of a batched report: a state proposal *or* a runner-info merge for one run."""

    run_id: UUID
    state: StateProposal | None = Field(default=None, description="as for set_state")
    runner_info: dict[str, Any] | None = Field(default=None, description="as for PATCH")

    @model_validator(mode="after")
    def _one_kind(self) -> RunReport:
        if (self.state is None) == (self.runner_info is None):
            raise ValueError("a report carries exactly one of 'state' and 'runner_info'")
        return self


class RunReportResult(_Answer):
    """What became of one report: the status the single-run route would have answered."""

    status: int = Field(description="200 applied; 404 no such run (or agent); 409 refused")
    flow_run: FlowRun | None = Field(default=None, description="the run after it (200 only)")
    detail: str | None = Field(default=None, description="why not (404/409)")


class RunnerInfoUpdate(_Model):
    runner_info: dict[str, Any]


#: The most queues one agent serves (one claim request covers them all).
MAX_AGENT_QUEUES = 50


class ClaimRequest(_Model):
    agent_id: UUID
    work_queue_ids: list[UUID] = Field(
        default_factory=list,
        max_length=MAX_AGENT_QUEUES,
        description="POST /work_queues/claim: the queues to take runs from, in strict priority "
        "order (every due run of the first before any of the next); ignored by the per-queue "
        "route, whose queue is in its path",
    )
    tags: list[TagText] = Field(default_factory=list, description="the agent's --tag filters")
    limit: int = Field(default=1, ge=0, le=1000)
    wait_seconds: float = Field(default=0, ge=0, le=60, description="long-poll bound")
    claim_id: UUID | None = Field(
        default=None,
        description="idempotency key: a retried claim with the same id answers the runs the "
        "first one took instead of taking more",
    )
    lead_seconds: float = Field(
        default=0,
        ge=0,
        le=60,
        description="also hand over runs due within this many seconds: the agent gets them "
        "early and starts them on time",
    )


class ClaimedRun(_Answer):
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
    name: NameText
    work_queue_id: UUID = Field(description="the agent's first (highest priority) queue")
    work_queue_ids: list[UUID] | None = Field(
        default=None,
        max_length=MAX_AGENT_QUEUES,
        description="every queue the agent serves, in priority order (None: work_queue_id "
        "alone); a deleted one is left out, and the agent is refused only when all are gone",
    )
    tags: list[TagText] = Field(default_factory=list)
    hostname: str | None = None
    pid: int | None = None
    version: str | None = None
    runs_in_flight: int = 0
    heartbeat_interval_seconds: float = Field(default=5, gt=0, le=3600)
    metrics: HostMetrics | None = None
    run_ids: list[UUID] | None = Field(
        default=None,
        description="the runs this agent holds right now; the server resolves the agent's "
        "other claimed runs (None: not known yet, e.g. the first heartbeat after a start)",
    )


#: How long after an agent's last heartbeat the server resolves its runs, unless the server says
#: otherwise (its setting ``lease_seconds``, answered with every heartbeat). Agents fence their
#: runs at half of it.
DEFAULT_LEASE_SECONDS = 30.0


class AgentRecord(_Answer):
    id: UUID
    name: str
    work_queue_id: UUID
    work_queue_ids: list[UUID] = Field(
        default_factory=list, description="every queue it serves, in priority order"
    )
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
        default=DEFAULT_LEASE_SECONDS,
        description="the agent's runs are resolved (CRASHED) this long after its last heartbeat",
    )


# --------------------------------------------------------------------------- concurrency limits


class ConcurrencyLimitCreate(_Model):
    """At most ``limit`` runs carrying ``tag`` active at once, across deployments and queues."""

    name: NameText | None = Field(default=None, description="unique; default: the tag")
    tag: Annotated[TagText, Field(min_length=1, max_length=200)]
    limit: int = Field(ge=1, le=100_000)


class ConcurrencyLimitUpdate(_Model):
    limit: int = Field(ge=1, le=100_000)


class ConcurrencyLimit(_Answer):
    id: UUID
    name: str
    tag: str
    limit: int
    created: datetime
    updated: datetime
    active_run_ids: list[UUID] = Field(
        default_factory=list, description="the runs holding its slots (PENDING/RUNNING/CANCELLING)"
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
    model_config = _ANSWER

    id: int
    flow_run_id: UUID


# --------------------------------------------------------------------------- notifications

# What a notification can be for: a run reaching a state type, a run marked Late (due but not
# started in time), or an agent going OFFLINE (its heartbeats stopped).
LATE_EVENT = "LATE"
OFFLINE_EVENT = "OFFLINE"
NOTIFICATION_EVENTS: tuple[str, ...] = (*(s.value for s in StateType), LATE_EVENT, OFFLINE_EVENT)


class NotificationCreate(_Model):
    """A webhook called when a matching run reaches one of ``on`` (or an agent goes OFFLINE).

    Filters narrow what matches; every filter given must match.
    """

    name: NameText | None = Field(default=None, description="unique; default: generated")
    on: list[str] = Field(min_length=1, description=f"any of {', '.join(NOTIFICATION_EVENTS)}")
    deployment_id: UUID | None = Field(default=None, description="only runs of this deployment")
    work_queue_id: UUID | None = Field(default=None, description="only this queue's runs/agents")
    tag: TagText | None = Field(default=None, description="only runs (or agents) with this tag")
    webhook_url: str = Field(description="http(s) URL the server POSTs the JSON event to")
    secret: str | None = Field(
        default=None,
        repr=False,
        description="signs each body: X-Flowagent-Signature: sha256=<HMAC-SHA256 hex>",
    )

    @model_validator(mode="after")
    def _check(self) -> NotificationCreate:
        events = list(dict.fromkeys(event.strip().upper() for event in self.on))
        unknown = [event for event in events if event not in NOTIFICATION_EVENTS]
        if unknown:
            raise ValueError(
                f"unknown event(s) {', '.join(unknown)}; use {', '.join(NOTIFICATION_EVENTS)}"
            )
        self.on = events
        if OFFLINE_EVENT in events and self.deployment_id is not None:
            raise ValueError("OFFLINE is about agents: it cannot be filtered by deployment")
        if not self.webhook_url.startswith(("http://", "https://")):
            raise ValueError("webhook_url must start with http:// or https://")
        return self


class DeliveryStatus(StrEnum):
    PENDING = "PENDING"  # waiting for (another) attempt
    DELIVERED = "DELIVERED"  # the webhook answered 2xx
    FAILED = "FAILED"  # given up: out of attempts, or a 4xx that retrying cannot fix


class NotificationAttempt(_Answer):
    attempt: int
    timestamp: datetime
    ok: bool
    status_code: int | None = None
    error: str | None = None


class NotificationDelivery(_Answer):
    id: int
    notification_id: UUID
    event: str
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None = None
    last_error: str | None = None
    created: datetime
    finished: datetime | None = None
    payload: dict[str, Any] = Field(default_factory=dict)
    history: list[NotificationAttempt] = Field(default_factory=list)


class Notification(_Answer):
    id: UUID
    name: str
    on: list[str]
    deployment_id: UUID | None
    work_queue_id: UUID | None
    tag: str | None
    webhook_url: str
    has_secret: bool
    created: datetime
    last_delivery: NotificationDelivery | None = None


# --------------------------------------------------------------------------- health


class Health(_Answer):
    status: str
    server: str = "flowagent"
    version: str
    #: Whether this replica runs the background work (scheduler, lease reaper, Late marks,
    #: webhooks): always on SQLite; on PostgreSQL the one replica holding the leader lock.
    leader: bool = True


# --------------------------------------------------------------------------- overview (the UI)


class StateCounts(_Answer):
    start: datetime = Field(description="the bucket's start; it lasts `bucket_seconds`")
    counts: dict[StateType, int] = Field(description="runs due in the bucket, by current state")


class QueueBacklog(_Answer):
    id: UUID
    name: str
    paused: bool
    concurrency_limit: int | None
    scheduled: int = Field(description="runs waiting (SCHEDULED), due or not")
    late: int = Field(description="of those, the ones marked Late")
    active: int = Field(description="runs PENDING, RUNNING or CANCELLING")


class Overview(_Answer):
    since: datetime
    until: datetime
    bucket_seconds: float
    buckets: list[StateCounts]
    totals: dict[StateType, int]
    late: list[FlowRun] = Field(description="SCHEDULED runs marked Late, most overdue first")
    failed: list[FlowRun] = Field(
        description="runs that FAILED or CRASHED in the window, newest first"
    )
    queues: list[QueueBacklog]
