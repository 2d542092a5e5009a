"""What the services need from the world, as Protocols.

One repository per domain. A :class:`UnitOfWork` groups them into one transaction, so
a change and the audit event that records it are written together or not at all.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Protocol, Self, TypeVar

from agentiam.core.access.admin_keys import AdminKey
from agentiam.core.approvals import ApprovalRequest, ApprovalState
from agentiam.core.audit.events import AuditEvent
from agentiam.core.audit.trail import Checkpoint, LogEntry, TreeHead
from agentiam.core.credentials.revocations import Revocation, RevocationKind
from agentiam.core.credentials.signing_keys import SigningKey
from agentiam.core.delegation.models import DelegationGrant, TokenNode
from agentiam.core.identities.lifecycle import AgentStatus
from agentiam.core.identities.models import Agent, AgentKey, ClientRecord, Human, Transition
from agentiam.core.policy.model import PolicyRecord, PolicySetVersion, ResourceRecord

__all__ = [
    "AdminKeyRepository",
    "AgentKeyRepository",
    "AgentQuery",
    "AgentRepository",
    "ApprovalQuery",
    "ApprovalRepository",
    "AssessmentQuery",
    "AssessmentRepository",
    "AuditAppender",
    "AuditLog",
    "AuditQuery",
    "AuditTrailRepository",
    "Clock",
    "DelegationGrantRepository",
    "GrantQuery",
    "HumanQuery",
    "HumanRepository",
    "Page",
    "PolicyRepository",
    "ReplayGuard",
    "ResourceQuery",
    "ResourceRepository",
    "RevocationRepository",
    "SigningKeyRepository",
    "StoredAssessment",
    "TokenGraphRepository",
    "UnitOfWork",
    "UnitOfWorkFactory",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a keyset-paged list; ``next_after`` is the last id, if more exist."""

    items: Sequence[T]
    next_after: str | None


@dataclass(frozen=True, slots=True)
class HumanQuery:
    limit: int
    after: str | None = None
    email: str | None = None


@dataclass(frozen=True, slots=True)
class AgentQuery:
    limit: int
    after: str | None = None
    owner: str | None = None
    sponsor: str | None = None
    status: AgentStatus | None = None
    environment: str | None = None
    labels: dict[str, str | None] = field(default_factory=dict)
    parent_id: str | None = None


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters over the event store, all optional and combined with AND; events come
    in append order (``seq``), ``after`` being the seq of the previous page's last."""

    limit: int
    after: str | None = None
    agent_id: str | None = None
    type: str | None = None
    since: datetime | None = None  # events at or after this time
    until: datetime | None = None  # events strictly before this time
    human_id: str | None = None  # the initiating human
    action: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    decision_id: str | None = None
    trace_id: str | None = None  # W3C trace id, 32 lowercase hex digits
    outcome: str | None = None  # success, failure or denied
    after_event: str | None = None  # events appended after this event id (resume)


@dataclass(frozen=True, slots=True)
class ResourceQuery:
    limit: int
    after: str | None = None  # the "type::id" key of the last item of the previous page
    type: str | None = None


@dataclass(frozen=True, slots=True)
class GrantQuery:
    limit: int
    after: str | None = None  # the id of the last grant of the previous page
    human_id: str | None = None
    agent_id: str | None = None
    active_at: datetime | None = None  # only grants neither revoked nor expired then


@dataclass(frozen=True, slots=True)
class ApprovalQuery:
    limit: int
    after: str | None = None  # the id of the last request of the previous page
    state: ApprovalState | None = None
    agent_id: str | None = None


@dataclass(frozen=True, slots=True)
class AssessmentQuery:
    limit: int
    # Newest first: the next page holds the assessments made before the one with this id.
    before: str | None = None


@dataclass(frozen=True, slots=True)
class StoredAssessment:
    """One assessment in the history (docs/assessment.md#stored-history).

    ``summary`` is what lists and trends show (scores, ladder stages); ``report`` (the
    JSON report) and ``inputs`` (what it was scored from) are loaded only by ``get``."""

    id: str
    assessed_at: datetime
    bank_version: str
    overall: float
    requested_by: str
    summary: Mapping[str, Any]
    report: Mapping[str, Any] | None = None
    inputs: Mapping[str, Any] | None = None


class Clock(Protocol):
    def now(self) -> datetime: ...


class HumanRepository(Protocol):
    def add(self, human: Human) -> None:
        """Insert; raise Conflict if the email or external identity is taken."""

    def get(self, human_id: str) -> Human | None: ...

    def get_by_external(self, issuer: str, subject: str) -> Human | None:
        """The human linked to this external IdP identity (OIDC ``iss`` and ``sub``)."""

    def update(self, human: Human, expected_version: int) -> None:
        """Replace; raise Conflict if the stored version is not ``expected_version``."""

    def find(self, query: HumanQuery) -> Page[Human]: ...

    def existing(self, human_ids: Sequence[str]) -> set[str]:
        """The subset of ``human_ids`` that exist."""


class AgentRepository(Protocol):
    def add(self, agent: Agent) -> None:
        """Insert; raise Conflict if the normalised name was ever used."""

    def get(self, agent_id: str) -> Agent | None: ...

    def get_by_name(self, name: str) -> Agent | None: ...

    def get_many(self, agent_ids: Sequence[str]) -> dict[str, Agent]:
        """The agents that exist among ``agent_ids``, by id, in one round of queries."""

    def client(self, agent_id: str) -> ClientRecord | None:
        """The agent as an OAuth client, with its active keys only."""

    def update(self, agent: Agent, expected_version: int) -> None:
        """Replace; raise Conflict if the stored version is not ``expected_version``."""

    def find(self, query: AgentQuery) -> Page[Agent]: ...

    def children(self, parent_id: str) -> list[Agent]:
        """Direct children that are not decommissioned."""

    def expired(self, now: datetime, limit: int) -> list[Agent]:
        """Ephemeral agents past their TTL that are not yet decommissioned."""

    def add_transition(self, transition: Transition) -> None: ...

    def transitions(self, agent_id: str) -> list[Transition]: ...


class AgentKeyRepository(Protocol):
    def add(self, key: AgentKey) -> None:
        """Insert; raise Conflict if the kid is taken for this agent or the key's
        thumbprint is registered anywhere."""

    def get(self, agent_id: str, key_id: str) -> AgentKey | None: ...

    def list_for_agent(self, agent_id: str) -> list[AgentKey]: ...

    def update(self, key: AgentKey) -> None: ...


class AdminKeyRepository(Protocol):
    def add(self, key: AdminKey) -> None: ...

    def get(self, key_id: str) -> AdminKey | None: ...

    def get_by_prefix(self, prefix: str) -> AdminKey | None: ...

    def all(self) -> list[AdminKey]: ...

    def update(self, key: AdminKey) -> None: ...


class AuditAppender(Protocol):
    """Makes stand-alone audit events durable (group commit); raises
    ``ServiceUnavailable`` when it cannot, so the caller refuses its action."""

    def append(self, events: Sequence[AuditEvent]) -> None: ...


class AuditLog(Protocol):
    def append_many(self, events: Sequence[AuditEvent]) -> None:
        """Append several events in one statement, in order."""

    def append_absent(self, events: Sequence[AuditEvent]) -> None:
        """Append, in order, those of ``events`` whose ``event_id`` is not stored yet;
        the others are skipped (never updated), even when a concurrent writer stores
        the same id first. For batches an enforcement point may send more than once."""

    def existing_ids(self, event_ids: Sequence[str]) -> set[str]:
        """Those of ``event_ids`` that are stored."""

    def append(self, event: AuditEvent) -> None:
        """Append within the current transaction; the store refuses edits and deletes."""

    def find(self, query: AuditQuery) -> Page[AuditEvent]: ...


class SigningKeyRepository(Protocol):
    def all(self) -> list[SigningKey]: ...

    def add(self, key: SigningKey) -> None: ...

    def update_schedule(self, key: SigningKey) -> None:
        """Store ``key``'s ``deactivates_at`` and ``unpublish_at``."""

    def lock(self) -> None:
        """Hold off every other writer of signing keys (a new key included) until
        this unit of work ends (PostgreSQL: a table lock; SQLite: its one writer)."""

    def replace_sealed(self, kid: str, expected: str, sealed: str) -> bool:
        """Store ``sealed`` as ``kid``'s sealed private half if it is still
        ``expected``; False (nothing changed) if it is not."""


class ReplayGuard(Protocol):
    def first_use(self, purpose: str, value: str, expires_at: datetime) -> bool:
        """Record ``value`` under ``purpose`` until ``expires_at``; False if it was
        already recorded (a replay). Safe across replicas sharing the database."""

    def purge(self, now: datetime, limit: int) -> int:
        """Forget up to ``limit`` expired values; return how many."""


class RevocationRepository(Protocol):
    def add(
        self, kind: RevocationKind, subject: str, *, cutoff: int, expires: int, now: datetime
    ) -> None:
        """Add an entry; it is stored when the unit of work commits, in the order
        entries commit (the feed's readers rely on it)."""

    def after(
        self, seq: int, limit: int, kinds: Collection[RevocationKind] | None = None
    ) -> list[Revocation]:
        """Unexpired and expired entries with ``seq`` above ``seq``, in order; only
        those of ``kinds`` when given."""

    def active(self, now: int) -> list[Revocation]:
        """Every entry not yet expired (to seed a verifier)."""

    def purge(self, now: int, limit: int) -> int: ...


class PolicyRepository(Protocol):
    """The versioned policy set. A version is a row in the history; each policy
    revision is valid from the version that wrote it until the version that replaced
    or deleted it, so any version's set can be read back (and rolled back to)."""

    def head(self) -> int:
        """The newest version number; 0 before the first version."""

    def version(self, version: int) -> PolicySetVersion | None: ...

    def versions(self, *, limit: int, before: int | None = None) -> list[PolicySetVersion]:
        """History, newest first; ``before`` pages back."""

    def policies(self, version: int) -> list[PolicyRecord]:
        """The policy set as it was at ``version``, ordered by id."""

    def commit_version(
        self,
        meta: PolicySetVersion,
        *,
        put: Sequence[PolicyRecord] = (),
        delete: Sequence[str] = (),
    ) -> None:
        """Write version ``meta.version`` (which must be ``head() + 1``) with the given
        changes to the previous version's set. Raise Conflict if another writer took
        that version number first."""


class ResourceRepository(Protocol):
    """The resource catalog: entities policies can name, with their attributes."""

    def put(self, record: ResourceRecord) -> ResourceRecord:
        """Insert or replace; returns the stored record (its version bumped)."""

    def get(self, type_: str, id_: str) -> ResourceRecord | None: ...

    def delete(self, type_: str, id_: str) -> bool:
        """Remove; False if it did not exist."""

    def find(self, query: ResourceQuery) -> Page[ResourceRecord]: ...

    def all(self) -> list[ResourceRecord]: ...

    def fingerprint(self) -> str:
        """Changes whenever an agent, human or catalog resource changes: the policy
        decision point polls it to know when to rebuild its entity snapshot."""


class AuditTrailRepository(Protocol):
    """The tamper-evident trail over the event store (see core/audit/trail.py)."""

    def lock(self) -> bool:
        """Take the integrator's lock until this transaction ends; False if another
        replica holds it (PostgreSQL advisory lock; SQLite's writer lock suffices)."""

    def head(self) -> tuple[int, bytes]:
        """The number of entries and the last chain hash (GENESIS when empty)."""

    def pending(self, limit: int, *, lookback: int | None) -> list[tuple[int, str]]:
        """Events not yet in the log, in ``seq`` order, as (seq, body JSON). With a
        ``lookback``, only those whose ``seq`` is within it of the highest one logged."""

    def append(self, entries: Sequence[LogEntry], nodes: Sequence[tuple[int, int, bytes]]) -> None:
        """Add log entries and the Merkle tree nodes they completed."""

    def nodes(self, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """Stored perfect-subtree hashes by (level, index); absent keys are left out."""

    def entries(self, start: int, limit: int) -> list[tuple[LogEntry, str]]:
        """Log entries from index ``start`` with their event bodies, in index order."""

    def index_of(self, event_id: str) -> int | None: ...

    def add_tree_head(self, head: TreeHead) -> None: ...

    def tree_head(self, tree_size: int) -> TreeHead | None: ...

    def tree_heads(self, *, limit: int, before: int | None = None) -> list[TreeHead]:
        """Signed tree heads, largest first."""

    def unlogged_before(self, time: datetime) -> int:
        """How many events stored before ``time`` are not in the log."""

    def checkpoint(self) -> Checkpoint | None:
        """The latest retention checkpoint (the pruned trail starts there), or None."""

    def checkpoints(self, *, limit: int) -> list[Checkpoint]:
        """Retention checkpoints, latest first."""

    def prune_point(self, before: datetime) -> int:
        """The log index of the first entry whose event was recorded at or after
        ``before`` (the log's size when there is none)."""

    def prune(self, checkpoint: Checkpoint, *, tree_head: TreeHead, now: datetime) -> int:
        """Record ``checkpoint`` (and ``tree_head``, the ordinary signed head of the
        same size, if that size has none) and delete what it covers: the log entries
        and their events before its size, the tree heads before it, and the Merkle
        nodes no later root or proof needs (``merkle.prunable_nodes``). Returns the
        entries removed."""

    def min_cursor(self) -> tuple[str, int] | None:
        """The exporter cursor furthest behind (name, position), over every cursor
        row, configured here or not; None when there is none."""

    def cursor(self, name: str) -> int:
        """The next log index the exporter ``name`` delivers (0 if it never did)."""

    def advance(self, name: str, position: int, now: datetime) -> None:
        """Move the exporter's cursor to ``position`` (never backwards) and clear its
        failures; creates the cursor on first use."""

    def record_failure(self, name: str, error: str, now: datetime) -> None:
        """Count one more consecutive failure of the exporter and keep ``error``."""


class DelegationGrantRepository(Protocol):
    def add(self, grant: DelegationGrant) -> None: ...

    def get(self, grant_id: str) -> DelegationGrant | None: ...

    def find(self, query: GrantQuery) -> Page[DelegationGrant]:
        """Grants in id order, filtered by ``query``."""

    def revoke(self, grant_id: str, *, at: datetime, by: str, reason: str) -> bool:
        """Mark one grant revoked; False if it does not exist or was already revoked."""

    def revoke_for_human(self, human_id: str, *, at: datetime, by: str, reason: str) -> list[str]:
        """Revoke every unrevoked grant of a human; return their ids."""


class TokenGraphRepository(Protocol):
    """The delegation graph: one node per delegated token, linked to its parent."""

    def add(self, node: TokenNode) -> None: ...

    def get(self, jti: str) -> TokenNode | None: ...

    def children(self, jtis: Sequence[str]) -> list[TokenNode]:
        """The nodes whose ``parent_jti`` is one of ``jtis``, in ``jti`` order."""

    def purge(self, before: datetime, limit: int) -> int:
        """Forget up to ``limit`` nodes that expired before ``before``."""


class ApprovalRepository(Protocol):
    """Human approval requests (core/approvals.py). Every state change is a
    compare-and-set: it happens only from the states named, so racing deciders cannot
    both win."""

    def add(self, request: ApprovalRequest) -> None: ...

    def get(self, approval_id: str) -> ApprovalRequest | None: ...

    def find(self, query: ApprovalQuery) -> Page[ApprovalRequest]:
        """Requests in id (creation) order, filtered by ``query``."""

    def pending_for(self, agent_id: str, fingerprint: str) -> ApprovalRequest | None:
        """The agent's pending request for this call, if any (whatever its deadline)."""

    def count_pending(self, agent_id: str, now: datetime) -> int:
        """The agent's pending requests whose deadline is after ``now``."""

    def lock_agent(self, agent_id: str) -> None:
        """Serialise openings for one agent until the transaction ends."""

    def transition(
        self,
        approval_id: str,
        *,
        expect: Sequence[ApprovalState],
        to: ApprovalState,
        live_at: datetime | None = None,
        agent_id: str | None = None,
        fingerprint: str | None = None,
        values: Mapping[str, object] | None = None,
    ) -> ApprovalRequest | None:
        """Move the request to ``to`` (setting ``values``) if it is in one of
        ``expect`` (and, when given, its deadline is after ``live_at`` and it is for
        ``agent_id`` and ``fingerprint``); the updated request, or None if not."""

    def expire_due(self, now: datetime, limit: int) -> list[ApprovalRequest]:
        """Mark up to ``limit`` pending or approved requests past their deadline
        expired; return them."""


class AssessmentRepository(Protocol):
    """The assessment history. Records are written once and never changed."""

    def add(self, record: StoredAssessment) -> None:
        """Store ``record``, which must carry its report and inputs."""

    def get(self, assessment_id: str) -> StoredAssessment | None:
        """The record with its report and inputs."""

    def find(self, query: AssessmentQuery) -> Page[StoredAssessment]:
        """Records newest first, without report or inputs."""


class UnitOfWork(Protocol):
    @property
    def humans(self) -> HumanRepository: ...

    @property
    def agents(self) -> AgentRepository: ...

    @property
    def agent_keys(self) -> AgentKeyRepository: ...

    @property
    def admin_keys(self) -> AdminKeyRepository: ...

    @property
    def audit(self) -> AuditLog: ...

    @property
    def signing_keys(self) -> SigningKeyRepository: ...

    @property
    def replay(self) -> ReplayGuard: ...

    @property
    def revocations(self) -> RevocationRepository: ...

    @property
    def policies(self) -> PolicyRepository: ...

    @property
    def resources(self) -> ResourceRepository: ...

    @property
    def grants(self) -> DelegationGrantRepository: ...

    @property
    def trail(self) -> AuditTrailRepository: ...

    @property
    def token_graph(self) -> TokenGraphRepository: ...

    @property
    def approvals(self) -> ApprovalRepository: ...

    @property
    def assessments(self) -> AssessmentRepository: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None:
        """Roll back whatever was not committed."""

    def commit(self) -> None: ...


class UnitOfWorkFactory(Protocol):
    def __call__(self, *, read_only: bool = False) -> UnitOfWork:
        """A new unit of work; ``read_only`` lets the store skip write locks."""
