"""Audit retention: signed checkpoints, and pruning below the latest one only.

``audit_checkpoints`` (append-only) records each checkpoint: a signed tree head at the
size below which entries were archived and removed, the compact range of that tree
(the hashes the log after it still needs) and the archive's name and SHA-256.

The append-only guards of ``audit_events``, ``audit_log``, ``audit_tree_nodes`` and
``audit_tree_heads`` keep refusing UPDATE (and TRUNCATE), and now refuse a DELETE
unless the row lies wholly below the latest checkpoint: a log entry or tree head
before its size, a Merkle node whose leaves all come before it, an event no longer in
the log whose ``seq`` is at most the highest one the checkpoints pruned. Deleting
anything newer still fails in the database, whoever asks.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from agentiam.adapters.storage.tables import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_HORIZON = "(SELECT coalesce(max(tree_size), 0) FROM audit_checkpoints)"
_EVENT_HORIZON = "(SELECT coalesce(max(max_event_seq), -1) FROM audit_checkpoints)"
_IN_LOG = "SELECT 1 FROM audit_log WHERE audit_log.event_seq = OLD.seq"
# table -> the condition (over OLD) under which a DELETE is allowed
PRUNABLE: dict[str, str] = {
    "audit_log": f"OLD.log_index < {_HORIZON}",
    "audit_tree_heads": f"OLD.tree_size < {_HORIZON}",
    "audit_tree_nodes": f"((OLD.node_index + 1) << OLD.level) <= {_HORIZON}",
    "audit_events": f"OLD.seq <= {_EVENT_HORIZON} AND NOT EXISTS ({_IN_LOG})",
}


def upgrade() -> None:
    op.create_table(
        "audit_checkpoints",
        sa.Column("tree_size", SEQ, nullable=False, autoincrement=False),
        sa.Column("root_hash", sa.String(64), nullable=False),
        sa.Column("chain_hash", sa.String(64), nullable=False),
        sa.Column("signed_at", UTCDateTime, nullable=False),
        sa.Column("signature", sa.Text, nullable=False),
        sa.Column("compact_range", sa.Text, nullable=False),
        sa.Column("max_event_seq", SEQ, nullable=False),
        sa.Column("archive", sa.Text, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("tree_size", name="pk_audit_checkpoints"),
    )
    if op.get_bind().dialect.name == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_checkpoints_no_{verb.lower()} BEFORE {verb} "
                "ON audit_checkpoints "
                "BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only'); END"
            )
        for table, allowed in PRUNABLE.items():
            op.execute(f"DROP TRIGGER {table}_no_delete")
            op.execute(
                f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} "
                f"WHEN NOT ({allowed}) BEGIN SELECT RAISE(ABORT, "
                f"'{table} is append-only: only what the latest checkpoint covers may be "
                "pruned'); END"
            )
        return
    op.execute(
        "CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE "
        "ON audit_checkpoints FOR EACH ROW EXECUTE FUNCTION agentiam_append_only()"
    )
    op.execute(
        "CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints "
        "FOR EACH STATEMENT EXECUTE FUNCTION agentiam_append_only()"
    )
    for table, allowed in PRUNABLE.items():
        op.execute(f"DROP TRIGGER {table}_append_only ON {table}")
        op.execute(
            f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION agentiam_append_only()"
        )
        op.execute(
            f"CREATE FUNCTION {table}_prune_guard() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN IF {allowed} THEN RETURN OLD; END IF; "
            f"RAISE EXCEPTION '{table} is append-only: only what the latest checkpoint "
            "covers may be pruned'; END $$"
        )
        op.execute(
            f"CREATE TRIGGER {table}_prune_only BEFORE DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {table}_prune_guard()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table in PRUNABLE:
            op.execute(f"DROP TRIGGER {table}_no_delete")
            op.execute(
                f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
            )
    else:
        for table in PRUNABLE:
            op.execute(f"DROP TRIGGER {table}_prune_only ON {table}")
            op.execute(f"DROP FUNCTION {table}_prune_guard()")
            op.execute(f"DROP TRIGGER {table}_no_update ON {table}")
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION agentiam_append_only()"
            )
    op.drop_table("audit_checkpoints")
