"""Human approval (step-up) requests (core/approvals.py, docs/approvals.md).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from agentiam.adapters.storage.tables import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

ID = sa.String(40)
_PENDING = sa.text("state = 'pending'")


def upgrade() -> None:
    op.create_table(
        "approval_requests",
        sa.Column("id", ID, nullable=False),
        sa.Column("agent_id", ID, nullable=False),
        sa.Column("action", sa.String(512), nullable=False),
        sa.Column("resource_type", sa.String(128), nullable=False),
        sa.Column("resource_id", sa.String(512), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.Column("policies", sa.Text, nullable=False),
        sa.Column("initiating_human", ID),
        sa.Column("delegation_chain", sa.Text, nullable=False),
        sa.Column("argument_names", sa.Text, nullable=False),
        sa.Column("arguments", sa.Text, nullable=False),
        sa.Column("decision_id", ID),
        sa.Column("requested_by", sa.String(128), nullable=False),
        sa.Column("decided_by", sa.String(140)),
        sa.Column("decided_at", UTCDateTime),
        sa.Column("decision_reason", sa.Text),
        sa.Column("consumed_at", UTCDateTime),
        sa.Column("consumed_decision_id", ID),
        sa.PrimaryKeyConstraint("id", name="pk_approval_requests"),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name="fk_approval_requests_agent_id_agents"
        ),
    )
    for column in ("agent_id", "state", "expires_at"):
        op.create_index(f"ix_approval_requests_{column}", "approval_requests", [column])
    # One pending request per (agent, fingerprint): opening is idempotent.
    op.create_index(
        "ux_approval_requests_pending",
        "approval_requests",
        ["agent_id", "fingerprint"],
        unique=True,
        sqlite_where=_PENDING,
        postgresql_where=_PENDING,
    )


def downgrade() -> None:
    op.drop_index("ux_approval_requests_pending", "approval_requests")
    for column in ("expires_at", "state", "agent_id"):
        op.drop_index(f"ix_approval_requests_{column}", "approval_requests")
    op.drop_table("approval_requests")
