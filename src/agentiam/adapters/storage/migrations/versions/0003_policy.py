"""Policy: the versioned policy set (history and policy revisions) and the resource
catalog; an index on the audit trail's time for ``since`` queries.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from agentiam.adapters.storage.tables import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "policy_versions",
        sa.Column("version", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("change", sa.String(16), nullable=False),
        sa.Column("comment", sa.Text, nullable=False),
        sa.Column("schema_extension", sa.Text, nullable=False),
        sa.Column("policy_count", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("version", name="pk_policy_versions"),
    )
    op.create_table(
        "policy_revisions",
        sa.Column("policy_id", sa.String(128), nullable=False),
        sa.Column("valid_from", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("valid_to", sa.Integer),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("template", sa.String(64)),
        sa.PrimaryKeyConstraint("policy_id", "valid_from", name="pk_policy_revisions"),
        sa.ForeignKeyConstraint(
            ["valid_from"],
            ["policy_versions.version"],
            name="fk_policy_revisions_valid_from_policy_versions",
        ),
    )
    op.create_index("ix_policy_revisions_valid_from", "policy_revisions", ["valid_from"])
    op.create_index("ix_policy_revisions_valid_to", "policy_revisions", ["valid_to"])
    op.create_table(
        "policy_resources",
        sa.Column("type", sa.String(63), nullable=False),
        sa.Column("id", sa.String(512), nullable=False),
        sa.Column("attributes", sa.Text, nullable=False),
        sa.Column("parents", sa.Text, nullable=False),
        sa.Column("tags", sa.Text, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("revision", SEQ, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.PrimaryKeyConstraint("type", "id", name="pk_policy_resources"),
    )
    op.create_index("ix_policy_resources_revision", "policy_resources", ["revision"])
    op.create_index("ix_audit_events_time", "audit_events", ["time"])


def downgrade() -> None:
    op.drop_index("ix_audit_events_time", "audit_events")
    op.drop_index("ix_policy_resources_revision", "policy_resources")
    op.drop_table("policy_resources")
    op.drop_index("ix_policy_revisions_valid_to", "policy_revisions")
    op.drop_index("ix_policy_revisions_valid_from", "policy_revisions")
    op.drop_table("policy_revisions")
    op.drop_table("policy_versions")
