"""Admin API keys: format, hashing, roles and permissions.

A key looks like ``aiam_<prefix>_<secret>``: the 8-character prefix is stored in the
clear so a key can be identified in lists and logs; the secret (256 bits) is never
stored. Only the SHA-256 digest of the whole key is kept. A fast hash is right for a
uniformly random 256-bit secret (no dictionary to guess from), and it keeps every
request's authentication cheap. Comparison is constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

__all__ = [
    "KEY_PREFIX",
    "AdminKey",
    "IngestBinding",
    "IssuedAdminKey",
    "Permission",
    "Role",
    "generate_admin_key",
    "hash_admin_key",
    "parse_admin_key",
    "permissions_of",
    "verify_admin_key",
]

KEY_PREFIX = "aiam"
_PREFIX_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"
_KEY_RE = re.compile(r"^aiam_([a-z2-9]{8})_([A-Za-z0-9_-]{43})$")


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    AUDITOR = "auditor"
    # An enforcement point: reads revocations and the policy bundle, introspects tokens,
    # asks for decisions, ships its audit events.
    VERIFIER = "verifier"


class Permission(StrEnum):
    HUMANS_READ = "humans:read"
    HUMANS_WRITE = "humans:write"
    AGENTS_READ = "agents:read"
    AGENTS_WRITE = "agents:write"
    AGENTS_LIFECYCLE = "agents:lifecycle"
    AGENT_KEYS_WRITE = "agent_keys:write"
    ADMIN_KEYS_READ = "admin_keys:read"
    ADMIN_KEYS_MANAGE = "admin_keys:manage"
    AUDIT_READ = "audit:read"
    METRICS_READ = "metrics:read"
    TOKENS_INTROSPECT = "tokens:introspect"
    TOKENS_REVOKE = "tokens:revoke"
    REVOCATIONS_READ = "revocations:read"
    SIGNING_KEYS_READ = "signing_keys:read"
    SIGNING_KEYS_MANAGE = "signing_keys:manage"
    POLICIES_READ = "policies:read"  # policies, versions, schema, catalog, analysis
    POLICIES_WRITE = "policies:write"  # policy changes, rollback, schema, catalog
    AUTHZ_DECIDE = "authz:decide"  # POST /v1/authorize (enforcement points)
    DELEGATIONS_READ = "delegations:read"  # grants and the delegation graph
    DELEGATIONS_WRITE = "delegations:write"  # create and revoke grants
    # Mint a subject token for a registered human: lets the key holder start a chain in
    # that human's name, so only the admin role has it.
    HUMAN_TOKENS_ISSUE = "human_tokens:issue"
    # GET /v1/enforcement/bundle: the policy set and entity data, to decide locally.
    ENFORCEMENT_SYNC = "enforcement:sync"
    # POST /v1/audit/ingest: add an enforcement point's events to the trail. Writing
    # events in a gateway's name is for enforcement points (and admin) only.
    AUDIT_INGEST = "audit:ingest"
    # Human approval (step-up; docs/approvals.md): read the queue, decide a request
    # (operators; an agent's owner or sponsor decides with their own token instead),
    # and, for enforcement points, open a request and use an approved one.
    APPROVALS_READ = "approvals:read"
    APPROVALS_DECIDE = "approvals:decide"
    APPROVALS_REQUEST = "approvals:request"
    # The maturity assessment (docs/assessment.md): read the stored history, and run
    # one (it reads the registry and verifies the whole trail, so not for auditors).
    ASSESSMENTS_READ = "assessments:read"
    ASSESSMENTS_RUN = "assessments:run"


_READ = frozenset(
    {
        Permission.HUMANS_READ,
        Permission.AGENTS_READ,
        Permission.ADMIN_KEYS_READ,
        Permission.AUDIT_READ,
        Permission.METRICS_READ,
        Permission.TOKENS_INTROSPECT,
        Permission.REVOCATIONS_READ,
        Permission.SIGNING_KEYS_READ,
        Permission.POLICIES_READ,
        Permission.DELEGATIONS_READ,
        Permission.APPROVALS_READ,
        Permission.ASSESSMENTS_READ,
    }
)
_ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.OPERATOR: frozenset(Permission)
    - {
        Permission.ADMIN_KEYS_MANAGE,
        Permission.SIGNING_KEYS_MANAGE,
        Permission.HUMAN_TOKENS_ISSUE,
        Permission.ENFORCEMENT_SYNC,
        Permission.AUDIT_INGEST,
    },
    Role.AUDITOR: _READ,
    Role.VERIFIER: frozenset(
        {
            Permission.TOKENS_INTROSPECT,
            Permission.REVOCATIONS_READ,
            Permission.AUTHZ_DECIDE,
            Permission.ENFORCEMENT_SYNC,
            Permission.AUDIT_INGEST,
            Permission.APPROVALS_READ,
            Permission.APPROVALS_REQUEST,
        }
    ),
}


def permissions_of(role: Role) -> frozenset[Permission]:
    return _ROLE_PERMISSIONS[role]


class IngestBinding(StrEnum):
    """How a verifier key's audit ingest is bound (see :attr:`AdminKey.binding`).

    A verifier key is what an enforcement point holds, and an in-process guard holds
    it inside the agent's own process, which may be hijacked: unbound, it may ship
    decisions in any gateway's name about any agent, and detection then charges an
    innocent agent. So a new verifier key is bound unless its creator asks otherwise.
    """

    # Bound to named enforcement points (``sources``; perhaps also to ``agents``).
    BOUND = "bound"
    # Unbound because its creator asked for it explicitly (``any_source``).
    ANY_SOURCE = "any_source"
    # Unbound because it was made before a binding was required: re-issue it bound.
    LEGACY = "legacy"


@dataclass(frozen=True, slots=True)
class AdminKey:
    """A stored admin key: everything but the secret."""

    id: str
    prefix: str
    name: str
    role: Role
    key_hash: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    # What audit events a key may ingest (POST /v1/audit/ingest): only those of these
    # enforcement points (``source``) and naming no agent but these (``agent_id``, an
    # agent actor, ``details.client_id``: whom detection charges an event to; events
    # naming no agent pass). Empty: any. A new verifier key names at least one source
    # unless ``any_source`` says its creator chose an unbound key (:attr:`binding`).
    sources: tuple[str, ...] = ()
    agents: tuple[str, ...] = ()
    any_source: bool = False

    @property
    def binding(self) -> IngestBinding | None:
        """How this key's ingest is bound; None for a role other than verifier (the
        admin role ingests too, but holds every permission and no enforcement point
        should hold it). A verifier key with no source and no ``any_source`` is
        :attr:`IngestBinding.LEGACY`: made before bindings were required."""
        if self.role is not Role.VERIFIER:
            return None
        if self.sources:
            return IngestBinding.BOUND
        return IngestBinding.ANY_SOURCE if self.any_source else IngestBinding.LEGACY

    def is_valid(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def may_report(self, source: str, agents: Iterable[str]) -> bool:
        """May an event of ``source`` that names ``agents`` be ingested with this key?"""
        if self.sources and source not in self.sources:
            return False
        return not self.agents or all(agent in self.agents for agent in agents)


@dataclass(frozen=True, slots=True)
class IssuedAdminKey:
    """A key just created: ``secret`` is the full key, shown once and never stored."""

    key: AdminKey
    secret: str


def generate_admin_key() -> tuple[str, str]:
    """Return ``(prefix, full_key)`` for a fresh key."""
    prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(8))
    return prefix, f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"


def hash_admin_key(full_key: str) -> str:
    return hashlib.sha256(full_key.encode("ascii")).hexdigest()


def parse_admin_key(presented: str) -> str | None:
    """Return the prefix of a well-formed key, or None."""
    match = _KEY_RE.match(presented)
    return match.group(1) if match else None


def verify_admin_key(presented: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_admin_key(presented), stored_hash)
