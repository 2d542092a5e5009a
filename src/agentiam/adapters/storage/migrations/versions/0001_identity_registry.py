"""Identity registry: humans, agents, owners and sponsors, labels, keys, transitions, admin keys,
append-only audit events.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from agentiam.adapters.storage.tables import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.String(40)
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
APPEND_ONLY = ("audit_events", "agent_transitions")


def upgrade() -> None:
    op.create_table(
        "humans",
        sa.Column("id", ID, nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("external_issuer", sa.String(512)),
        sa.Column("external_subject", sa.String(255)),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_humans"),
        sa.UniqueConstraint("email", name="uq_humans_email"),
        sa.UniqueConstraint(
            "external_issuer", "external_subject", name="uq_humans_external_issuer_external_subject"
        ),
    )
    op.create_table(
        "agents",
        sa.Column("id", ID, nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("purpose", sa.Text, nullable=False),
        sa.Column("environment", sa.String(63), nullable=False),
        sa.Column("autonomy", sa.String(32), nullable=False),
        sa.Column("runtime", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("parent_id", ID),
        sa.Column("expires_at", UTCDateTime),
        sa.Column("next_access_review", sa.Date, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_agents"),
        sa.UniqueConstraint("name", name="uq_agents_name"),
        sa.ForeignKeyConstraint(["parent_id"], ["agents.id"], name="fk_agents_parent_id_agents"),
    )
    op.create_index("ix_agents_environment", "agents", ["environment"])
    op.create_index("ix_agents_status", "agents", ["status"])
    op.create_index("ix_agents_parent_id", "agents", ["parent_id"])
    op.create_index("ix_agents_expires_at", "agents", ["expires_at"])
    op.create_table(
        "agent_humans",
        sa.Column("agent_id", ID, nullable=False),
        sa.Column("relation", sa.String(16), nullable=False),
        sa.Column("human_id", ID, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("agent_id", "relation", "human_id", name="pk_agent_humans"),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name="fk_agent_humans_agent_id_agents"
        ),
        sa.ForeignKeyConstraint(
            ["human_id"], ["humans.id"], name="fk_agent_humans_human_id_humans"
        ),
    )
    op.create_index("ix_agent_humans_human_id_relation", "agent_humans", ["human_id", "relation"])
    op.create_table(
        "agent_labels",
        sa.Column("agent_id", ID, nullable=False),
        sa.Column("key", sa.String(63), nullable=False),
        sa.Column("value", sa.String(63), nullable=False),
        sa.PrimaryKeyConstraint("agent_id", "key", name="pk_agent_labels"),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name="fk_agent_labels_agent_id_agents"
        ),
    )
    op.create_index("ix_agent_labels_key_value", "agent_labels", ["key", "value"])
    op.create_table(
        "agent_keys",
        sa.Column("id", ID, nullable=False),
        sa.Column("agent_id", ID, nullable=False),
        sa.Column("kid", sa.String(128), nullable=False),
        sa.Column("alg", sa.String(16), nullable=False),
        sa.Column("jwk", sa.Text, nullable=False),
        sa.Column("thumbprint", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("retired_at", UTCDateTime),
        sa.Column("retired_by", sa.String(128)),
        sa.Column("retire_reason", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_agent_keys"),
        sa.UniqueConstraint("thumbprint", name="uq_agent_keys_thumbprint"),
        sa.UniqueConstraint("agent_id", "kid", name="uq_agent_keys_agent_id_kid"),
        sa.ForeignKeyConstraint(["agent_id"], ["agents.id"], name="fk_agent_keys_agent_id_agents"),
    )
    op.create_index("ix_agent_keys_agent_id", "agent_keys", ["agent_id"])
    op.create_table(
        "agent_transitions",
        sa.Column("seq", SEQ, autoincrement=True, nullable=False),
        sa.Column("id", ID, nullable=False),
        sa.Column("agent_id", ID, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("from_status", sa.String(16), nullable=False),
        sa.Column("to_status", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_agent_transitions"),
        sa.UniqueConstraint("id", name="uq_agent_transitions_id"),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name="fk_agent_transitions_agent_id_agents"
        ),
    )
    op.create_index("ix_agent_transitions_agent_id", "agent_transitions", ["agent_id"])
    op.create_table(
        "admin_keys",
        sa.Column("id", ID, nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("expires_at", UTCDateTime),
        sa.Column("revoked_at", UTCDateTime),
        sa.Column("revoked_by", sa.String(128)),
        sa.PrimaryKeyConstraint("id", name="pk_admin_keys"),
        sa.UniqueConstraint("prefix", name="uq_admin_keys_prefix"),
    )
    op.create_table(
        "audit_events",
        sa.Column("seq", SEQ, autoincrement=True, nullable=False),
        sa.Column("event_id", ID, nullable=False),
        sa.Column("time", UTCDateTime, nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("agent_id", ID),
        sa.Column("body", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_events"),
        sa.UniqueConstraint("event_id", name="uq_audit_events_event_id"),
    )
    op.create_index("ix_audit_events_type", "audit_events", ["type"])
    op.create_index("ix_audit_events_agent_id", "audit_events", ["agent_id"])
    _append_only_guards()


def _append_only_guards() -> None:
    """Refuse UPDATE, DELETE (and on PostgreSQL TRUNCATE) on the append-only tables."""
    if op.get_bind().dialect.name == "sqlite":
        for table in APPEND_ONLY:
            for verb in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
                )
        return
    op.execute(
        "CREATE FUNCTION agentiam_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME; END $$"
    )
    for table in APPEND_ONLY:
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION agentiam_append_only()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION agentiam_append_only()"
        )


def downgrade() -> None:
    raise NotImplementedError("the identity registry cannot be downgraded; restore a backup")
