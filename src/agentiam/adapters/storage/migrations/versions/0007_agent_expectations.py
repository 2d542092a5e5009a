"""Agent expectations: what an agent's owner declared it does.

``agents.expectations`` holds the declaration as JSON (NULL: nothing declared);
behavioural detection holds the agent to it (docs/detection.md).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("agents", sa.Column("expectations", sa.Text, nullable=True))


def downgrade() -> None:
    op.drop_column("agents", "expectations")  # SQLite 3.35+ drops a column in place
