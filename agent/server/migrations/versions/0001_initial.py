"""initial schema: work queues, deployments, agents, flow runs, their states, logs

Revision ID: 0001
Revises:
Create Date: 2024-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _uuid() -> sa.String:
    return sa.String(36)


def upgrade() -> None:
    op.create_table(
        "work_queues",
        sa.Column("id", _uuid(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("concurrency_limit", sa.Integer(), nullable=True),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "deployments",
        sa.Column("id", _uuid(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column(
            "work_queue_id",
            _uuid(),
            sa.ForeignKey("work_queues.id", ondelete="RESTRICT"),
            nullable=False,
        ),
        sa.Column("entrypoint", sa.Text(), nullable=True),
        sa.Column("command", sa.JSON(), nullable=True),
        sa.Column("working_dir", sa.Text(), nullable=True),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("runner", sa.String(200), nullable=True),
        sa.Column("runner_options", sa.JSON(), nullable=False),
        sa.Column("env", sa.JSON(), nullable=False),
        sa.Column("timeout_seconds", sa.Float(), nullable=True),
        sa.Column("retries", sa.Integer(), nullable=False),
        sa.Column("retry_delay_seconds", sa.Float(), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("updated", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("name"),
    )
    op.create_index("ix_deployments_work_queue_id", "deployments", ["work_queue_id"])
    op.create_table(
        "agents",
        sa.Column("id", _uuid(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column(
            "work_queue_id",
            _uuid(),
            sa.ForeignKey("work_queues.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("hostname", sa.Text(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("version", sa.String(100), nullable=True),
        sa.Column("runs_in_flight", sa.Integer(), nullable=False),
        sa.Column("heartbeat_interval_seconds", sa.Float(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("last_heartbeat", sa.DateTime(), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("last_claim_id", _uuid(), nullable=True),
        sa.Column("last_claim_run_ids", sa.JSON(), nullable=False),
        sa.UniqueConstraint("name"),
    )
    op.create_index("ix_agents_work_queue_id", "agents", ["work_queue_id"])
    op.create_table(
        "flow_runs",
        sa.Column("id", _uuid(), primary_key=True),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("deployment_id", _uuid(), nullable=False),
        sa.Column("deployment_name", sa.String(200), nullable=False),
        sa.Column(
            "work_queue_id",
            _uuid(),
            sa.ForeignKey("work_queues.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("env", sa.JSON(), nullable=False),
        sa.Column("expected_start_time", sa.DateTime(), nullable=False),
        sa.Column("state_type", sa.String(20), nullable=False),
        sa.Column("state_name", sa.String(200), nullable=False),
        sa.Column("state_message", sa.Text(), nullable=True),
        sa.Column("state_timestamp", sa.DateTime(), nullable=False),
        sa.Column(
            "agent_id",
            _uuid(),
            sa.ForeignKey("agents.id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column("runner_info", sa.JSON(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("start_time", sa.DateTime(), nullable=True),
        sa.Column("end_time", sa.DateTime(), nullable=True),
    )
    op.create_index(
        "ix_flow_runs_claim", "flow_runs", ["work_queue_id", "state_type", "expected_start_time"]
    )
    op.create_index("ix_flow_runs_agent_state", "flow_runs", ["agent_id", "state_type"])
    op.create_index("ix_flow_runs_created", "flow_runs", ["created"])
    op.create_index("ix_flow_runs_deployment_id", "flow_runs", ["deployment_id"])
    op.create_table(
        "flow_run_states",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "flow_run_id",
            _uuid(),
            sa.ForeignKey("flow_runs.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("type", sa.String(20), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("timestamp", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_flow_run_states_run", "flow_run_states", ["flow_run_id", "id"])
    op.create_table(
        "logs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "flow_run_id",
            _uuid(),
            sa.ForeignKey("flow_runs.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("timestamp", sa.DateTime(), nullable=False),
        sa.Column("stream", sa.String(20), nullable=False),
        sa.Column("level", sa.String(20), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.Column("batch_id", _uuid(), nullable=True),
    )
    op.create_index("ix_logs_run", "logs", ["flow_run_id", "id"])
    op.create_index("ix_logs_batch", "logs", ["flow_run_id", "batch_id"])


def downgrade() -> None:
    op.drop_table("logs")
    op.drop_table("flow_run_states")
    op.drop_table("flow_runs")
    op.drop_table("agents")
    op.drop_table("deployments")
    op.drop_table("work_queues")
