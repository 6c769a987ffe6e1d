"""uploaded bundles in the database (every replica serves every bundle), in ~1 MiB chunks

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Bundles still on a replica's disk ($AGENT_HOME/bundles) are imported by the server at
    # start (agent/server/bundle_upkeep.py), not here: each replica has its own directory.
    op.create_table(
        "bundles",
        sa.Column("digest", sa.String(71), primary_key=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("touched", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "bundle_chunks",
        sa.Column(
            "digest",
            sa.String(71),
            sa.ForeignKey("bundles.digest", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("seq", sa.Integer(), primary_key=True),
        sa.Column("data", sa.LargeBinary(), nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":
        # The chunks are gzip already: TOAST would try to compress every one for nothing.
        op.execute("ALTER TABLE bundle_chunks ALTER COLUMN data SET STORAGE EXTERNAL")


def downgrade() -> None:
    op.drop_table("bundle_chunks")
    op.drop_table("bundles")
