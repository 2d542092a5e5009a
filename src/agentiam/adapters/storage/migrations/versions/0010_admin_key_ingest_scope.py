"""What audit events an admin key may ingest: ``admin_keys.ingest_scope``, JSON
``{"sources": [...], "agents": [...]}`` (core/access/admin_keys.py), NULL for any.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("admin_keys", sa.Column("ingest_scope", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("admin_keys") as batch:
        batch.drop_column("ingest_scope")
