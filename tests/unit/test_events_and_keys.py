"""Audit event schema v1 and admin key rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agentiam.core.access.admin_keys import (
    AdminKey,
    Permission,
    Role,
    generate_admin_key,
    hash_admin_key,
    parse_admin_key,
    permissions_of,
    verify_admin_key,
)
from agentiam.core.audit.events import (
    Actor,
    ActorType,
    AuditEvent,
    ResourceRef,
    TraceContext,
    redact,
)

NOW = datetime(2026, 11, 23, tzinfo=UTC)


def test_event_round_trips_with_every_field_present() -> None:
    event = AuditEvent.create(
        type="agent.created",
        actor=Actor(ActorType.ADMIN_KEY, "abcdefgh", "admin"),
        action="agent.created",
        source="control-plane/admin-api",
        trace=TraceContext.new(),
        now=NOW,
        resource=ResourceRef("agent", "agt_1"),
        agent_id="agt_1",
        details={"name": "x"},
    )
    body = event.to_dict()
    assert body["schema_version"] == "1"
    for key in (
        "event_id", "time", "type", "outcome", "actor", "action", "resource", "source",
        "agent_id", "initiating_human", "delegation_chain", "decision_id", "policy_version",
        "risk_score", "trace", "reason", "details",
    ):  # fmt: skip
        assert key in body
    assert AuditEvent.from_dict(body) == event


def test_secrets_are_redacted_from_details() -> None:
    cleaned = redact(
        {
            "name": "ok",
            "client_secret": "s3cr3t",
            "nested": {"Authorization": "Bearer x", "token": "t", "d": "private-key"},
            "items": [{"password": "p"}],
        }
    )
    assert cleaned["name"] == "ok"
    text = repr(cleaned)
    for secret in ("s3cr3t", "Bearer x", "private-key", "'p'"):
        assert secret not in text


def test_traceparent_is_continued_and_invalid_one_is_ignored() -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    continued = TraceContext.from_traceparent(f"00-{trace_id}-00f067aa0ba902b7-01")
    assert continued.trace_id == trace_id
    assert continued.span_id != "00f067aa0ba902b7"
    for bad in ("garbage", f"00-{'0' * 32}-00f067aa0ba902b7-01", "ff-" + trace_id + "-x-01"):
        assert TraceContext.from_traceparent(bad).trace_id != trace_id


def test_admin_key_format_hash_and_verification() -> None:
    prefix, secret = generate_admin_key()
    assert parse_admin_key(secret) == prefix
    stored = hash_admin_key(secret)
    assert secret not in stored
    assert verify_admin_key(secret, stored)
    tampered = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert not verify_admin_key(tampered, stored)
    assert parse_admin_key("aiam_short_x") is None
    assert parse_admin_key(secret + "x") is None


def test_admin_key_validity_window() -> None:
    key = AdminKey("adk_1", "abcdefgh", "k", Role.ADMIN, "h", NOW, "cli:x", NOW + timedelta(1))
    assert key.is_valid(NOW)
    assert not key.is_valid(NOW + timedelta(days=2))
    revoked = AdminKey("adk_1", "abcdefgh", "k", Role.ADMIN, "h", NOW, "cli:x", None, NOW)
    assert not revoked.is_valid(NOW)


def test_roles_bound_permissions() -> None:
    assert Permission.ADMIN_KEYS_MANAGE in permissions_of(Role.ADMIN)
    assert Permission.ADMIN_KEYS_MANAGE not in permissions_of(Role.OPERATOR)
    auditor = permissions_of(Role.AUDITOR)
    assert all(p.value.endswith((":read", ":introspect")) for p in auditor)  # read-only
    assert permissions_of(Role.VERIFIER) == {
        Permission.TOKENS_INTROSPECT,
        Permission.REVOCATIONS_READ,
        Permission.AUTHZ_DECIDE,  # an enforcement point asks for decisions
        Permission.ENFORCEMENT_SYNC,  # and decides locally from the policy bundle
        Permission.AUDIT_INGEST,  # and ships its audit events
        Permission.APPROVALS_READ,  # and opens, follows and uses approval requests
        Permission.APPROVALS_REQUEST,
    }
    # Writing events in an enforcement point's name: enforcement points and admin only.
    assert Permission.AUDIT_INGEST not in permissions_of(Role.OPERATOR)
    assert Permission.AUDIT_INGEST in permissions_of(Role.ADMIN)
    assert Permission.POLICIES_WRITE not in auditor
    assert Permission.POLICIES_READ in auditor
    assert Permission.AUTHZ_DECIDE not in auditor
    assert Permission.AGENTS_WRITE not in auditor
