"""several queues per agent; deployment and tag concurrency limits

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Agents registered before this revision serve their one queue: the list starts empty and
    # the server reads an empty list as [work_queue_id].
    with op.batch_alter_table("agents") as batch:
        batch.add_column(
            sa.Column("work_queue_ids", sa.JSON(), server_default="[]", nullable=False)
        )
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("concurrency_limit", sa.Integer(), nullable=True))
        batch.add_column(
            sa.Column("collision_strategy", sa.String(20), server_default="enqueue", nullable=False)
        )
    op.create_table(
        "concurrency_limits",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("tag", sa.String(200), nullable=False),
        sa.Column("limit", sa.Integer(), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("updated", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("name"),
        sa.UniqueConstraint("tag"),
    )


def downgrade() -> None:
    op.drop_table("concurrency_limits")
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("collision_strategy")
        batch.drop_column("concurrency_limit")
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("work_queue_ids")
