"""schedules, scheduled-run idempotency keys, notifications and their delivery outbox

Revision ID: 0002
Revises: 0001
Create Date: 2024-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _uuid() -> sa.String:
    return sa.String(36)


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", _uuid(), primary_key=True),
        sa.Column(
            "deployment_id",
            _uuid(),
            sa.ForeignKey("deployments.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("cron", sa.Text(), nullable=True),
        sa.Column("interval_seconds", sa.Float(), nullable=True),
        sa.Column("anchor", sa.DateTime(), nullable=True),
        sa.Column("at", sa.DateTime(), nullable=True),
        sa.Column("timezone", sa.String(100), nullable=False),
        sa.Column("catchup", sa.String(10), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("cursor", sa.DateTime(), nullable=True),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("updated", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_schedules_deployment_id", "schedules", ["deployment_id"])

    # A scheduled run is made once per (schedule, time), however many schedulers race for it.
    op.add_column("flow_runs", sa.Column("idempotency_key", sa.String(300), nullable=True))
    op.add_column("flow_runs", sa.Column("schedule_id", _uuid(), nullable=True))
    op.create_index("ux_flow_runs_idempotency_key", "flow_runs", ["idempotency_key"], unique=True)
    op.create_index(
        "ix_flow_runs_schedule", "flow_runs", ["schedule_id", "state_type", "expected_start_time"]
    )

    op.create_table(
        "notifications",
        sa.Column("id", _uuid(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column(
            "deployment_id",
            _uuid(),
            sa.ForeignKey("deployments.id", ondelete="CASCADE"),
            nullable=True,
        ),
        sa.Column(
            "work_queue_id",
            _uuid(),
            sa.ForeignKey("work_queues.id", ondelete="CASCADE"),
            nullable=True,
        ),
        sa.Column("tag", sa.String(200), nullable=True),
        sa.Column("webhook_url", sa.Text(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=True),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "notification_deliveries",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "notification_id",
            _uuid(),
            sa.ForeignKey("notifications.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("event", sa.String(40), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("dedupe_key", sa.String(300), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=False),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("finished", sa.DateTime(), nullable=True),
        sa.UniqueConstraint("dedupe_key"),
    )
    op.create_index(
        "ix_notification_deliveries_due",
        "notification_deliveries",
        ["status", "next_attempt_at"],
    )
    op.create_index(
        "ix_notification_deliveries_notification",
        "notification_deliveries",
        ["notification_id", "id"],
    )
    op.create_table(
        "notification_attempts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "delivery_id",
            sa.Integer(),
            sa.ForeignKey("notification_deliveries.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("timestamp", sa.DateTime(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
    )
    op.create_index(
        "ix_notification_attempts_delivery", "notification_attempts", ["delivery_id", "id"]
    )


def downgrade() -> None:
    op.drop_table("notification_attempts")
    op.drop_table("notification_deliveries")
    op.drop_table("notifications")
    op.drop_index("ix_flow_runs_schedule", "flow_runs")
    op.drop_index("ux_flow_runs_idempotency_key", "flow_runs")
    with op.batch_alter_table("flow_runs") as batch:
        batch.drop_column("schedule_id")
        batch.drop_column("idempotency_key")
    op.drop_table("schedules")
