"""The tamper-evident audit trail: the log (one entry per event, in integration order,
with its RFC 9162 leaf hash and the running hash chain), the hashes of the Merkle
tree's perfect subtrees, and the signed tree heads. All three are append-only.

Also each SIEM exporter's durable cursor (``audit_export_cursors``): the next log
index it delivers, with its consecutive failures and last error. Not append-only.

Also the query columns of ``audit_events`` (human, action, resource, decision, trace
id, outcome), indexed and backfilled from each row's ``body``. They are derived copies
for lookups: the trail hashes ``body`` only, so they are not covered by it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from agentiam.adapters.storage.tables import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TABLES = ("audit_log", "audit_tree_nodes", "audit_tree_heads")

# audit_events query column -> (type, JSON path in body, index name or None)
QUERY_COLUMNS: dict[str, tuple[sa.String, tuple[str, ...], str | None]] = {
    "human_id": (sa.String(255), ("initiating_human",), "ix_audit_events_human_id"),
    "action": (sa.String(128), ("action",), "ix_audit_events_action"),
    "resource_type": (sa.String(64), ("resource", "type"), None),
    "resource_id": (sa.String(512), ("resource", "id"), None),
    "decision_id": (sa.String(64), ("decision_id",), "ix_audit_events_decision_id"),
    "trace_id": (sa.String(32), ("trace", "trace_id"), "ix_audit_events_trace_id"),
    "outcome": (sa.String(16), ("outcome",), "ix_audit_events_outcome"),
}
RESOURCE_INDEX = "ix_audit_events_resource"


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("log_index", SEQ, nullable=False, autoincrement=False),
        sa.Column("event_seq", SEQ, nullable=False),
        sa.Column("leaf_hash", sa.String(64), nullable=False),
        sa.Column("chain_hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("log_index", name="pk_audit_log"),
        sa.UniqueConstraint("event_seq", name="uq_audit_log_event_seq"),
        sa.ForeignKeyConstraint(
            ["event_seq"], ["audit_events.seq"], name="fk_audit_log_event_seq_audit_events"
        ),
    )
    op.create_table(
        "audit_tree_nodes",
        sa.Column("level", sa.SmallInteger, nullable=False, autoincrement=False),
        sa.Column("node_index", SEQ, nullable=False, autoincrement=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("level", "node_index", name="pk_audit_tree_nodes"),
    )
    op.create_table(
        "audit_tree_heads",
        sa.Column("tree_size", SEQ, nullable=False, autoincrement=False),
        sa.Column("root_hash", sa.String(64), nullable=False),
        sa.Column("chain_hash", sa.String(64), nullable=False),
        sa.Column("signed_at", UTCDateTime, nullable=False),
        sa.Column("signature", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("tree_size", name="pk_audit_tree_heads"),
    )
    op.create_table(
        "audit_export_cursors",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_audit_export_cursors"),
    )
    dialect = op.get_bind().dialect.name
    _append_only(dialect)
    _query_columns(dialect)


def _query_columns(dialect: str) -> None:
    """Add the indexed query columns to audit_events and fill them from ``body``."""
    for name, (type_, _, _) in QUERY_COLUMNS.items():
        op.add_column("audit_events", sa.Column(name, type_, nullable=True))
    for name, (_, _, index) in QUERY_COLUMNS.items():
        if index is not None:
            op.create_index(index, "audit_events", [name])
    op.create_index(RESOURCE_INDEX, "audit_events", ["resource_type", "resource_id"])
    # The append-only guard refuses UPDATE: lift it for the backfill only, inside this
    # migration's transaction (SQLite: drop and recreate the triggers of 0001).
    if dialect == "sqlite":
        op.execute("DROP TRIGGER audit_events_no_update")
        op.execute("DROP TRIGGER audit_events_no_delete")
    else:
        op.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
    sets = ", ".join(
        f"{name} = substr({_json_text(dialect, path)}, 1, {type_.length})"
        for name, (type_, path, _) in QUERY_COLUMNS.items()
    )
    op.execute(f"UPDATE audit_events SET {sets}")  # noqa: S608 (constants only)
    if dialect == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_events_no_{verb.lower()} BEFORE {verb} ON audit_events "
                "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END"
            )
    else:
        op.execute("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only")


def _json_text(dialect: str, path: tuple[str, ...]) -> str:
    """SQL for the text at ``path`` in the JSON ``body`` (NULL for JSON null)."""
    if dialect == "sqlite":
        return "json_extract(body, '$." + ".".join(path) + "')"
    *parents, leaf = path
    return "(body::jsonb" + "".join(f" -> '{p}'" for p in parents) + f" ->> '{leaf}')"


def _append_only(dialect: str) -> None:
    """The same guards as the events table (migration 0001)."""
    for table in TABLES:
        if dialect == "sqlite":
            for verb in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
                )
            continue
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION agentiam_append_only()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION agentiam_append_only()"
        )


def downgrade() -> None:
    op.drop_table("audit_export_cursors")
    op.drop_index(RESOURCE_INDEX, "audit_events")
    for _, _, index in QUERY_COLUMNS.values():
        if index is not None:
            op.drop_index(index, "audit_events")
    for name in QUERY_COLUMNS:
        # a plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35): no batch copy, so the
        # append-only triggers stay as they are
        op.execute(f"ALTER TABLE audit_events DROP COLUMN {name}")
    for table in reversed(TABLES):
        op.drop_table(table)  # drops its triggers with it
