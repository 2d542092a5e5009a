"""Where an approval request's resource was placed: ``approval_requests.resource_parents``,
JSON ``[{"type": ..., "id": ...}]``, the parents the enforcement point decided the
call's resource in (the HTTP gateway's ``Api``, the MCP gateway's ``McpServer``;
core/approvals.py). Requests opened before have none (``[]``), as their fingerprints
bound none.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "approval_requests",
        sa.Column("resource_parents", sa.Text, nullable=False, server_default="[]"),
    )


def downgrade() -> None:
    with op.batch_alter_table("approval_requests") as batch:
        batch.drop_column("resource_parents")
