"""The maturity assessment history (core/assessment/report.py, docs/assessment.md).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from agentiam.adapters.storage.tables import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "assessments",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("assessed_at", UTCDateTime, nullable=False),
        sa.Column("bank_version", sa.String(32), nullable=False),
        sa.Column("overall", sa.Float, nullable=False),
        sa.Column("requested_by", sa.String(140), nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("report", sa.Text, nullable=False),
        sa.Column("inputs", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_assessments"),
    )
    op.create_index("ix_assessments_assessed_at", "assessments", ["assessed_at"])


def downgrade() -> None:
    op.drop_index("ix_assessments_assessed_at", "assessments")
    op.drop_table("assessments")
