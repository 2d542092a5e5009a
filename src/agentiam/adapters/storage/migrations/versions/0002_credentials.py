"""Credentials: agent entitlements and DPoP requirement, signing keys (sealed), the
replay guard for single-use values, and the revocation feed.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from agentiam.adapters.storage.tables import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ID = sa.String(40)
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.add_column(
            sa.Column("dpop_required", sa.Boolean, nullable=False, server_default=sa.true())
        )
    op.create_table(
        "agent_entitlements",
        sa.Column("agent_id", ID, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.String(512), nullable=False),
        sa.PrimaryKeyConstraint("agent_id", "kind", "value", name="pk_agent_entitlements"),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name="fk_agent_entitlements_agent_id_agents"
        ),
    )
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(64), nullable=False),
        sa.Column("alg", sa.String(16), nullable=False),
        sa.Column("public_jwk", sa.Text, nullable=False),
        sa.Column("sealed_private", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("activates_at", UTCDateTime, nullable=False),
        sa.Column("deactivates_at", UTCDateTime),
        sa.Column("unpublish_at", UTCDateTime),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("kid", name="pk_signing_keys"),
    )
    op.create_table(
        "replay_guard",
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("purpose", "digest", name="pk_replay_guard"),
    )
    op.create_index("ix_replay_guard_expires_at", "replay_guard", ["expires_at"])
    op.create_table(
        "revocations",
        sa.Column("seq", SEQ, nullable=False, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("subject", sa.String(256), nullable=False),
        sa.Column("cutoff", sa.BigInteger, nullable=False),
        sa.Column("expires", sa.BigInteger, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_revocations"),
    )
    op.create_index("ix_revocations_expires", "revocations", ["expires"])


def downgrade() -> None:
    op.drop_index("ix_revocations_expires", "revocations")
    op.drop_table("revocations")
    op.drop_index("ix_replay_guard_expires_at", "replay_guard")
    op.drop_table("replay_guard")
    op.drop_table("signing_keys")
    op.drop_table("agent_entitlements")
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("dpop_required")
