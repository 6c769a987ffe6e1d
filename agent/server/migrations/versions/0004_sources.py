"""deployment sources (git) and the commit each run executes

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch mode: SQLite cannot ALTER most things in place; adding a nullable column it can,
    # but batch keeps the migration the same on every dialect.
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("source", sa.JSON(), nullable=True))
    with op.batch_alter_table("flow_runs") as batch:
        batch.add_column(sa.Column("source", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("flow_runs") as batch:
        batch.drop_column("source")
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("source")
