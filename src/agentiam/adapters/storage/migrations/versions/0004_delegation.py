"""Delegation: humans' grants to agents, and the delegation graph of exchanged tokens.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from agentiam.adapters.storage.tables import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

ID = sa.String(40)


def upgrade() -> None:
    # A just-in-time sub-agent's task scope (RFC 9396 authorization_details, JSON);
    # NULL for an agent that is not task-scoped.
    # A plain ADD COLUMN (no table rebuild, which other tables' foreign keys forbid).
    op.add_column("agents", sa.Column("task_scope", sa.Text, nullable=True))
    op.create_table(
        "delegation_grants",
        sa.Column("id", ID, nullable=False),
        sa.Column("human_id", ID, nullable=False),
        sa.Column("agent_id", ID, nullable=False),
        sa.Column("scopes", sa.Text, nullable=False),
        sa.Column("audiences", sa.Text, nullable=False),
        sa.Column("authorization_details", sa.Text, nullable=False),
        sa.Column("max_depth", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.Column("revoked_at", UTCDateTime),
        sa.Column("revoked_by", sa.String(128)),
        sa.Column("revoke_reason", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_delegation_grants"),
        sa.ForeignKeyConstraint(
            ["human_id"], ["humans.id"], name="fk_delegation_grants_human_id_humans"
        ),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name="fk_delegation_grants_agent_id_agents"
        ),
    )
    op.create_index("ix_delegation_grants_human_id", "delegation_grants", ["human_id"])
    op.create_index("ix_delegation_grants_agent_id", "delegation_grants", ["agent_id"])
    op.create_table(
        "token_nodes",
        sa.Column("jti", ID, nullable=False),
        sa.Column("parent_jti", ID),
        sa.Column("actor_jti", ID),
        sa.Column("root_jti", ID, nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("client_id", ID, nullable=False),
        sa.Column("actors", sa.Text, nullable=False),
        sa.Column("grant_id", ID),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("audience", sa.String(512), nullable=False),
        sa.Column("issued_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.Column("external_subject", sa.Text),
        sa.PrimaryKeyConstraint("jti", name="pk_token_nodes"),
    )
    for column in ("parent_jti", "root_jti", "client_id", "grant_id", "expires_at"):
        op.create_index(f"ix_token_nodes_{column}", "token_nodes", [column])


def downgrade() -> None:
    for column in ("expires_at", "grant_id", "client_id", "root_jti", "parent_jti"):
        op.drop_index(f"ix_token_nodes_{column}", "token_nodes")
    op.drop_table("token_nodes")
    op.drop_index("ix_delegation_grants_agent_id", "delegation_grants")
    op.drop_index("ix_delegation_grants_human_id", "delegation_grants")
    op.drop_table("delegation_grants")
    op.drop_column("agents", "task_scope")  # SQLite 3.35+ drops a column in place
