"""a run made by `rerun` names the run it repeats; indexes for the UI's lists and overview

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # No foreign key: a rerun's link outlives the run it repeats (as deployment_id does).
    with op.batch_alter_table("flow_runs") as batch:
        batch.add_column(sa.Column("rerun_of", sa.String(36), nullable=True))
    op.create_index("ix_flow_runs_deployment_created", "flow_runs", ["deployment_id", "created"])
    op.create_index("ix_flow_runs_due_state", "flow_runs", ["expected_start_time", "state_type"])


def downgrade() -> None:
    op.drop_index("ix_flow_runs_due_state", table_name="flow_runs")
    op.drop_index("ix_flow_runs_deployment_created", table_name="flow_runs")
    with op.batch_alter_table("flow_runs") as batch:
        batch.drop_column("rerun_of")
