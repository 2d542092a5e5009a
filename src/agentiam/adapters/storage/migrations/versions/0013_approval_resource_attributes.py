"""What an approval request's enforcement point derived of its resource:
``approval_requests.resource_attributes``, a JSON object, the attributes it gave the
resource as a derived record's (the MCP gateway's ``read_only`` / ``destructive`` from
a trusted server's tool annotations; core/approvals.py). Requests opened before have
none (``{}``), as their fingerprints bound none.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "approval_requests",
        sa.Column("resource_attributes", sa.Text, nullable=False, server_default="{}"),
    )


def downgrade() -> None:
    with op.batch_alter_table("approval_requests") as batch:
        batch.drop_column("resource_attributes")
