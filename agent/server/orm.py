"""The server's tables. ``migrations/versions`` holds the same schema under Alembic.

UUIDs are stored as 36-character strings and timestamps as naive UTC text (SQLite has no
timezone type); the column types below convert both ways so Python code only ever sees
``uuid.UUID`` and timezone-aware UTC ``datetime`` values.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UUIDString(TypeDecorator[uuid.UUID]):
    """A UUID kept as its canonical 36-character text form."""

    impl = String(36)
    cache_ok = True

    def process_bind_param(self, value: uuid.UUID | None, dialect: Dialect) -> str | None:
        return None if value is None else str(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> uuid.UUID | None:
        return None if value is None else uuid.UUID(value)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as naive UTC and read back timezone-aware.

    Storing everything in UTC with one fixed format keeps SQLite's text comparison
    (``expected_start_time <= :now``) equal to chronological order.
    """

    impl = DateTime()
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:  # the API treats naive timestamps as UTC
            return value
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        uuid.UUID: UUIDString(),
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[str]: JSON(),
    }


class WorkQueueRow(Base):
    __tablename__ = "work_queues"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    tags: Mapped[list[str]]
    concurrency_limit: Mapped[int | None] = mapped_column(Integer)
    paused: Mapped[bool] = mapped_column(Boolean)
    created: Mapped[datetime]


class DeploymentRow(Base):
    __tablename__ = "deployments"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # RESTRICT: the API refuses to delete a queue that deployments still use.
    work_queue_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("work_queues.id", ondelete="RESTRICT"), index=True
    )
    entrypoint: Mapped[str | None] = mapped_column(Text)
    command: Mapped[list[str] | None] = mapped_column(JSON)
    working_dir: Mapped[str | None] = mapped_column(Text)
    parameters: Mapped[dict[str, Any]]
    tags: Mapped[list[str]]
    runner: Mapped[str | None] = mapped_column(String(200))
    runner_options: Mapped[dict[str, Any]]
    env: Mapped[dict[str, Any]]
    timeout_seconds: Mapped[float | None] = mapped_column(Float)
    retries: Mapped[int] = mapped_column(Integer)
    retry_delay_seconds: Mapped[float] = mapped_column(Float)
    created: Mapped[datetime]
    updated: Mapped[datetime]
    # Where agents fetch the code (models.GitSource); NULL: the code is at working_dir.
    source: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # At most this many runs active at once (None: no limit), enforced by the claim.
    concurrency_limit: Mapped[int | None] = mapped_column(Integer)
    collision_strategy: Mapped[str] = mapped_column(String(20), server_default="enqueue")


class AgentRow(Base):
    __tablename__ = "agents"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    work_queue_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("work_queues.id", ondelete="CASCADE"), index=True
    )
    # Every queue it serves, in priority order; work_queue_id is the first that still exists.
    work_queue_ids: Mapped[list[str]] = mapped_column(JSON, server_default="[]")
    tags: Mapped[list[str]]
    hostname: Mapped[str | None] = mapped_column(Text)
    pid: Mapped[int | None] = mapped_column(Integer)
    version: Mapped[str | None] = mapped_column(String(100))
    runs_in_flight: Mapped[int] = mapped_column(Integer)
    heartbeat_interval_seconds: Mapped[float] = mapped_column(Float)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    last_heartbeat: Mapped[datetime]
    created: Mapped[datetime]
    # The agent's last claim, so that a retried claim request answers the same runs.
    last_claim_id: Mapped[uuid.UUID | None] = mapped_column(UUIDString())
    last_claim_run_ids: Mapped[list[str]]


class FlowRunRow(Base):
    __tablename__ = "flow_runs"
    __table_args__ = (
        # The claim query: due SCHEDULED runs of one queue, soonest first.
        Index("ix_flow_runs_claim", "work_queue_id", "state_type", "expected_start_time"),
        Index("ix_flow_runs_agent_state", "agent_id", "state_type"),
        Index("ix_flow_runs_created", "created"),
        Index("ux_flow_runs_idempotency_key", "idempotency_key", unique=True),
        Index("ix_flow_runs_schedule", "schedule_id", "state_type", "expected_start_time"),
        # The runs list of one deployment, newest first (the UI's filter, keyset paging).
        Index("ix_flow_runs_deployment_created", "deployment_id", "created"),
        # The overview: runs due in a window counted by state, from the index alone.
        Index("ix_flow_runs_due_state", "expected_start_time", "state_type"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(300))
    # No foreign key: a run's history outlives its deployment (the name is kept beside it).
    deployment_id: Mapped[uuid.UUID] = mapped_column(index=True)
    deployment_name: Mapped[str] = mapped_column(String(200))
    # Deleting a queue takes its run history with it; the API refuses while runs are in flight.
    work_queue_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("work_queues.id", ondelete="CASCADE")
    )
    parameters: Mapped[dict[str, Any]]
    tags: Mapped[list[str]]
    env: Mapped[dict[str, Any]]
    expected_start_time: Mapped[datetime]
    state_type: Mapped[str] = mapped_column(String(20))
    state_name: Mapped[str] = mapped_column(String(200))
    state_message: Mapped[str | None] = mapped_column(Text)
    state_timestamp: Mapped[datetime]
    agent_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"))
    runner_info: Mapped[dict[str, Any]]
    attempt: Mapped[int] = mapped_column(Integer)
    created: Mapped[datetime]
    start_time: Mapped[datetime | None]
    end_time: Mapped[datetime | None]
    # Runs made by the scheduler: "schedule:<schedule id>:<time>", unique, so each (schedule,
    # time) exists once however many schedulers race; NULL for runs made any other way.
    idempotency_key: Mapped[str | None] = mapped_column(String(300))
    # No foreign key: the run's history outlives its schedule.
    schedule_id: Mapped[uuid.UUID | None] = mapped_column(UUIDString())
    # The commit the run executes (models.RunSource), set by its first attempt that starts and
    # kept across retries, so no attempt runs other code than the one before it.
    source: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The run a `rerun` repeated; no foreign key: the link outlives the run it names.
    rerun_of: Mapped[uuid.UUID | None] = mapped_column(UUIDString())


class ConcurrencyLimitRow(Base):
    """At most ``limit`` runs carrying ``tag`` active at once, whatever their queue."""

    __tablename__ = "concurrency_limits"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    tag: Mapped[str] = mapped_column(String(200), unique=True)
    limit: Mapped[int] = mapped_column(Integer)
    created: Mapped[datetime]
    updated: Mapped[datetime]


class FlowRunStateRow(Base):
    __tablename__ = "flow_run_states"
    __table_args__ = (Index("ix_flow_run_states_run", "flow_run_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    flow_run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("flow_runs.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(200))
    message: Mapped[str | None] = mapped_column(Text)
    timestamp: Mapped[datetime]


class LogRow(Base):
    __tablename__ = "logs"
    __table_args__ = (
        Index("ix_logs_run", "flow_run_id", "id"),
        Index("ix_logs_batch", "flow_run_id", "batch_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    flow_run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("flow_runs.id", ondelete="CASCADE"))
    timestamp: Mapped[datetime]
    stream: Mapped[str] = mapped_column(String(20))
    level: Mapped[str] = mapped_column(String(20))
    line: Mapped[str] = mapped_column(Text)
    # The agent's idempotency key for the batch the line came in: a resent batch is skipped.
    batch_id: Mapped[uuid.UUID | None] = mapped_column(UUIDString())


class ScheduleRow(Base):
    __tablename__ = "schedules"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    deployment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), index=True
    )
    cron: Mapped[str | None] = mapped_column(Text)
    interval_seconds: Mapped[float | None] = mapped_column(Float)
    anchor: Mapped[datetime | None]
    at: Mapped[datetime | None]
    timezone: Mapped[str] = mapped_column(String(100))
    catchup: Mapped[str] = mapped_column(String(10))
    active: Mapped[bool] = mapped_column(Boolean)
    # The latest time the scheduler has dealt with (made a run for, or skipped): the next tick
    # starts after it. NULL until the first tick; the schedule starts at ``created``.
    cursor: Mapped[datetime | None]
    created: Mapped[datetime]
    updated: Mapped[datetime]


class NotificationRow(Base):
    __tablename__ = "notifications"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    events: Mapped[list[str]]
    deployment_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE")
    )
    work_queue_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("work_queues.id", ondelete="CASCADE")
    )
    tag: Mapped[str | None] = mapped_column(String(200))
    webhook_url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str | None] = mapped_column(Text)
    created: Mapped[datetime]


class DeliveryRow(Base):
    """The notification outbox: one row per event to deliver, written in the transaction of
    the change it reports, so an event is neither lost nor made up."""

    __tablename__ = "notification_deliveries"
    __table_args__ = (
        Index("ix_notification_deliveries_due", "status", "next_attempt_at"),
        Index("ix_notification_deliveries_notification", "notification_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    notification_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("notifications.id", ondelete="CASCADE")
    )
    event: Mapped[str] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]]
    # For events found by a periodic check (an agent OFFLINE): the same event is queued once.
    dedupe_key: Mapped[str | None] = mapped_column(String(300), unique=True)
    status: Mapped[str] = mapped_column(String(20))
    attempts: Mapped[int] = mapped_column(Integer)
    # When a worker may take it next; a worker that takes it pushes this out (its lease).
    next_attempt_at: Mapped[datetime]
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created: Mapped[datetime]
    finished: Mapped[datetime | None]


class DeliveryAttemptRow(Base):
    __tablename__ = "notification_attempts"
    __table_args__ = (Index("ix_notification_attempts_delivery", "delivery_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("notification_deliveries.id", ondelete="CASCADE")
    )
    attempt: Mapped[int] = mapped_column(Integer)
    timestamp: Mapped[datetime]
    ok: Mapped[bool] = mapped_column(Boolean)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)


class BundleRow(Base):
    """An uploaded bundle (``deployment create --upload``), in the database so that every
    replica serves it; its bytes are in :class:`BundleChunkRow`, written in the same
    transaction, so a bundle row is never seen without all of its chunks."""

    __tablename__ = "bundles"

    # "sha256:<64 hex>" of the archive: content-addressed, so the same bytes are one row.
    digest: Mapped[str] = mapped_column(String(71), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created: Mapped[datetime]
    # Last uploaded or named by a deployment: garbage collection keeps a bundle that no
    # deployment or unfinished run names for bundle_retention after this.
    touched: Mapped[datetime]


class BundleChunkRow(Base):
    """One piece (about 1 MiB) of a bundle's bytes: neither an upload nor a download holds a
    whole bundle in memory."""

    __tablename__ = "bundle_chunks"

    digest: Mapped[str] = mapped_column(
        ForeignKey("bundles.digest", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
