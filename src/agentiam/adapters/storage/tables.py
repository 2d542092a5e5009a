"""Table definitions shared by both databases. Alembic migrations create them; a test
checks that the migrated schema matches these definitions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
    true,
)

__all__ = [
    "admin_keys",
    "agent_entitlements",
    "agent_humans",
    "agent_keys",
    "agent_labels",
    "agent_transitions",
    "agents",
    "approval_requests",
    "assessments",
    "audit_checkpoints",
    "audit_events",
    "audit_export_cursors",
    "audit_log",
    "audit_tree_heads",
    "audit_tree_nodes",
    "delegation_grants",
    "humans",
    "metadata",
    "policy_resources",
    "policy_revisions",
    "policy_versions",
    "replay_guard",
    "revocations",
    "signing_keys",
    "token_nodes",
]


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both databases (SQLite has no time zones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


ID = String(40)
SeqType = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

humans = Table(
    "humans",
    metadata,
    Column("id", ID, primary_key=True),
    Column("display_name", String(200), nullable=False),
    Column("email", String(254), nullable=False, unique=True),
    Column("external_issuer", String(512)),
    Column("external_subject", String(255)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("version", Integer, nullable=False),
    UniqueConstraint("external_issuer", "external_subject"),
)

agents = Table(
    "agents",
    metadata,
    Column("id", ID, primary_key=True),
    Column("name", String(63), nullable=False, unique=True),
    Column("purpose", Text, nullable=False),
    Column("environment", String(63), nullable=False, index=True),
    Column("autonomy", String(32), nullable=False),
    Column("runtime", Text, nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("parent_id", ID, ForeignKey("agents.id"), index=True),
    Column("expires_at", UTCDateTime, index=True),
    Column("next_access_review", Date, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("version", Integer, nullable=False),
    Column("dpop_required", Boolean, nullable=False, server_default=true()),
    # RFC 9396 authorization_details every token of the agent carries (JSON; NULL:
    # not task-scoped). Set for just-in-time sub-agents.
    Column("task_scope", Text),
    # The owner's declared expectations for behavioural detection (JSON; NULL: none).
    Column("expectations", Text),
)

# What an agent may be granted: ``kind`` "scope" (OAuth scope) or "audience" (an RFC 8707
# resource indicator its tokens may name).
agent_entitlements = Table(
    "agent_entitlements",
    metadata,
    Column("agent_id", ID, ForeignKey("agents.id"), primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("value", String(512), primary_key=True),
)

# The humans accountable for an agent: ``relation`` is "owner" (one or more, required)
# or "sponsor" (optional).
agent_humans = Table(
    "agent_humans",
    metadata,
    Column("agent_id", ID, ForeignKey("agents.id"), primary_key=True),
    Column("relation", String(16), primary_key=True),
    Column("human_id", ID, ForeignKey("humans.id"), primary_key=True),
    Column("position", Integer, nullable=False),
    Index("ix_agent_humans_human_id_relation", "human_id", "relation"),
)

agent_labels = Table(
    "agent_labels",
    metadata,
    Column("agent_id", ID, ForeignKey("agents.id"), primary_key=True),
    Column("key", String(63), primary_key=True),
    Column("value", String(63), nullable=False),
    Index("ix_agent_labels_key_value", "key", "value"),
)

agent_keys = Table(
    "agent_keys",
    metadata,
    Column("id", ID, primary_key=True),
    Column("agent_id", ID, ForeignKey("agents.id"), nullable=False, index=True),
    Column("kid", String(128), nullable=False),
    Column("alg", String(16), nullable=False),
    Column("jwk", Text, nullable=False),
    Column("thumbprint", String(64), nullable=False, unique=True),
    Column("status", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("retired_at", UTCDateTime),
    Column("retired_by", String(128)),
    Column("retire_reason", Text),
    UniqueConstraint("agent_id", "kid"),
)

agent_transitions = Table(
    "agent_transitions",
    metadata,
    Column("seq", SeqType, primary_key=True, autoincrement=True),
    Column("id", ID, nullable=False, unique=True),
    Column("agent_id", ID, ForeignKey("agents.id"), nullable=False, index=True),
    Column("action", String(16), nullable=False),
    Column("from_status", String(16), nullable=False),
    Column("to_status", String(16), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("reason", Text, nullable=False),
    Column("at", UTCDateTime, nullable=False),
)

admin_keys = Table(
    "admin_keys",
    metadata,
    Column("id", ID, primary_key=True),
    Column("prefix", String(16), nullable=False, unique=True),
    Column("name", String(100), nullable=False),
    Column("role", String(16), nullable=False),
    Column("key_hash", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("expires_at", UTCDateTime),
    Column("revoked_at", UTCDateTime),
    Column("revoked_by", String(128)),
    Column("ingest_scope", Text),  # JSON {"sources": [...], "agents": [...]}; NULL: any
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("seq", SeqType, primary_key=True, autoincrement=True),
    Column("event_id", ID, nullable=False, unique=True),
    Column("time", UTCDateTime, nullable=False, index=True),
    Column("type", String(64), nullable=False, index=True),
    Column("agent_id", ID, index=True),
    Column("body", Text, nullable=False),
    # Query columns (migration 0005), copied from ``body`` when the row is written.
    # They are derived: the trail's leaf hash covers ``body`` only, so these columns
    # are NOT tamper-evident. They serve to find rows; queries return ``body``.
    Column("human_id", String(255), index=True),
    Column("action", String(128), index=True),
    Column("resource_type", String(64)),
    Column("resource_id", String(512)),
    Column("decision_id", String(64), index=True),
    Column("trace_id", String(32), index=True),
    Column("outcome", String(16), index=True),
    Index("ix_audit_events_resource", "resource_type", "resource_id"),
)

# The tamper-evident trail (migration 0005): events in integration order with their
# RFC 9162 leaf hash and the running hash chain; the hashes of every perfect subtree
# of the Merkle tree (level 0 = leaves); the signed tree heads. All append-only.
audit_log = Table(
    "audit_log",
    metadata,
    Column("log_index", SeqType, primary_key=True, autoincrement=False),
    Column("event_seq", SeqType, ForeignKey("audit_events.seq"), nullable=False, unique=True),
    Column("leaf_hash", String(64), nullable=False),
    Column("chain_hash", String(64), nullable=False),
)
audit_tree_nodes = Table(
    "audit_tree_nodes",
    metadata,
    Column("level", SmallInteger, primary_key=True, autoincrement=False),
    Column("node_index", SeqType, primary_key=True, autoincrement=False),
    Column("hash", String(64), nullable=False),
)
audit_tree_heads = Table(
    "audit_tree_heads",
    metadata,
    Column("tree_size", SeqType, primary_key=True, autoincrement=False),
    Column("root_hash", String(64), nullable=False),
    Column("chain_hash", String(64), nullable=False),
    Column("signed_at", UTCDateTime, nullable=False),
    Column("signature", Text, nullable=False),
)
# Retention checkpoints (migration 0006, append-only): a signed tree head at the size
# below which entries were archived and pruned, its compact range (JSON list of hex
# hashes), the highest event seq it pruned and the archive's "name sha256:…".
audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("tree_size", SeqType, primary_key=True, autoincrement=False),
    Column("root_hash", String(64), nullable=False),
    Column("chain_hash", String(64), nullable=False),
    Column("signed_at", UTCDateTime, nullable=False),
    Column("signature", Text, nullable=False),
    Column("compact_range", Text, nullable=False),
    Column("max_event_seq", SeqType, nullable=False),
    Column("archive", Text),
    Column("created_at", UTCDateTime, nullable=False),
)
# Each SIEM exporter's durable cursor (migration 0005): the next log index to deliver,
# and its consecutive failures and last error (redacted) for operators.
audit_export_cursors = Table(
    "audit_export_cursors",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("position", BigInteger, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("last_error", Text),
    Column("failures", Integer, nullable=False),
)

# The authorization server's signing keys; the private half is sealed (AES-GCM) under
# the master key, never stored in the clear.
signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("alg", String(16), nullable=False),
    Column("public_jwk", Text, nullable=False),
    Column("sealed_private", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("activates_at", UTCDateTime, nullable=False),
    Column("deactivates_at", UTCDateTime),
    Column("unpublish_at", UTCDateTime),
    Column("created_by", String(128), nullable=False),
)

# Single-use values (assertion and DPoP ``jti``), namespaced by purpose; ``digest`` is
# SHA-256 of the issuer and value, so rows have a fixed size whatever the caller sent.
replay_guard = Table(
    "replay_guard",
    metadata,
    Column("purpose", String(32), primary_key=True),
    Column("digest", String(64), primary_key=True),
    Column("expires_at", UTCDateTime, nullable=False, index=True),
)

# The revocation feed: verifiers read it in ``seq`` order.
revocations = Table(
    "revocations",
    metadata,
    Column("seq", SeqType, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("subject", String(256), nullable=False),
    Column("cutoff", BigInteger, nullable=False),
    Column("expires", BigInteger, nullable=False, index=True),
    Column("created_at", UTCDateTime, nullable=False),
)

# The policy set's history: one row per version. ``version`` is assigned by the writer
# (head + 1), not by the database, so two writers racing for the same number clash on
# the primary key and the second one learns it lost.
policy_versions = Table(
    "policy_versions",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("change", String(16), nullable=False),
    Column("comment", Text, nullable=False),
    Column("schema_extension", Text, nullable=False),
    Column("policy_count", Integer, nullable=False),
)

# Each revision of a policy is part of the set from version ``valid_from`` up to, not
# including, ``valid_to`` (NULL: still current).
policy_revisions = Table(
    "policy_revisions",
    metadata,
    Column("policy_id", String(128), primary_key=True),
    Column(
        "valid_from",
        Integer,
        ForeignKey("policy_versions.version"),
        primary_key=True,
        autoincrement=False,
        index=True,
    ),
    Column("valid_to", Integer, index=True),
    Column("text", Text, nullable=False),
    Column("mode", String(16), nullable=False),
    Column("description", Text, nullable=False),
    Column("template", String(64)),
)

# The resource catalog. A delete leaves a tombstone (``deleted``) so that the change is
# visible to :meth:`SqlResources.fingerprint`; ``revision`` is the table-wide change
# counter at the row's last write.
policy_resources = Table(
    "policy_resources",
    metadata,
    Column("type", String(63), primary_key=True),
    Column("id", String(512), primary_key=True),
    Column("attributes", Text, nullable=False),
    Column("parents", Text, nullable=False),
    Column("tags", Text, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("version", Integer, nullable=False),
    Column("revision", SeqType, nullable=False, index=True),
    Column("deleted", Boolean, nullable=False, server_default=false()),
)

# A human's standing permission for an agent to act on their behalf. ``scopes``,
# ``audiences`` and ``authorization_details`` are JSON arrays (the last of RFC 9396
# objects). Grants are revoked, never deleted.
delegation_grants = Table(
    "delegation_grants",
    metadata,
    Column("id", ID, primary_key=True),
    Column("human_id", ID, ForeignKey("humans.id"), nullable=False, index=True),
    Column("agent_id", ID, ForeignKey("agents.id"), nullable=False, index=True),
    Column("scopes", Text, nullable=False),
    Column("audiences", Text, nullable=False),
    Column("authorization_details", Text, nullable=False),
    Column("max_depth", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime),
    Column("revoked_by", String(128)),
    Column("revoke_reason", Text),
)

# The delegation graph: one row per delegated token, linked to the token it was
# exchanged from (``parent_jti``) and to the root of its chain. No foreign keys: rows
# are purged once expired, in any order. ``actors`` (current actor first) and ``scope``
# are JSON arrays.
token_nodes = Table(
    "token_nodes",
    metadata,
    Column("jti", ID, primary_key=True),
    Column("parent_jti", ID, index=True),
    Column("actor_jti", ID),
    Column("root_jti", ID, nullable=False, index=True),
    Column("origin", String(16), nullable=False),
    Column("subject", String(255), nullable=False),
    Column("client_id", ID, nullable=False, index=True),
    Column("actors", Text, nullable=False),
    Column("grant_id", ID, index=True),
    Column("scope", Text, nullable=False),
    Column("audience", String(512), nullable=False),
    Column("issued_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False, index=True),
    Column("external_subject", Text),
)

# Human approval (step-up) requests: core/approvals.py. ``policies``, ``delegation_chain``,
# ``argument_names`` and ``arguments`` (redacted, never raw) are JSON. At most one
# pending request per (agent, fingerprint): a retrying client finds the one it opened.
approval_requests = Table(
    "approval_requests",
    metadata,
    Column("id", ID, primary_key=True),
    Column("agent_id", ID, ForeignKey("agents.id"), nullable=False, index=True),
    Column("action", String(512), nullable=False),
    Column("resource_type", String(128), nullable=False),
    Column("resource_id", String(512), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False, index=True),
    Column("policies", Text, nullable=False),
    Column("initiating_human", ID),
    Column("delegation_chain", Text, nullable=False),
    Column("argument_names", Text, nullable=False),
    Column("arguments", Text, nullable=False),
    Column("decision_id", ID),
    Column("requested_by", String(128), nullable=False),
    Column("decided_by", String(140)),
    Column("decided_at", UTCDateTime),
    Column("decision_reason", Text),
    Column("consumed_at", UTCDateTime),
    Column("consumed_decision_id", ID),
    # JSON list of {type, id}: the parents the enforcement point placed the resource
    # in (migration 0011; "[]" for a request opened before, or placed nowhere)
    Column("resource_parents", Text, nullable=False, server_default="[]"),
    # JSON object: the attributes the enforcement point derived for the resource
    # (migration 0013; "{}" for a request opened before, or given none)
    Column("resource_attributes", Text, nullable=False, server_default="{}"),
    Index(
        "ux_approval_requests_pending",
        "agent_id",
        "fingerprint",
        unique=True,
        sqlite_where=text("state = 'pending'"),
        postgresql_where=text("state = 'pending'"),
    ),
)

# The assessment history (docs/assessment.md#stored-history). ``summary``, ``report``
# and ``inputs`` are JSON; ``inputs`` is what the report was scored from, so an old
# assessment can be rendered again (core/assessment/report.py). Written once.
assessments = Table(
    "assessments",
    metadata,
    Column("id", ID, primary_key=True),
    Column("assessed_at", UTCDateTime, nullable=False, index=True),
    Column("bank_version", String(32), nullable=False),
    Column("overall", Float, nullable=False),
    Column("requested_by", String(140), nullable=False),
    Column("summary", Text, nullable=False),
    Column("report", Text, nullable=False),
    Column("inputs", Text, nullable=False),
)

APPEND_ONLY_TABLES = ("audit_events", "agent_transitions")
