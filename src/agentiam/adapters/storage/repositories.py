"""SQL repositories over one connection (one transaction), for SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    String,
    and_,
    any_,
    bindparam,
    delete,
    exists,
    false,
    func,
    insert,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError

from agentiam.adapters.storage import tables as t
from agentiam.adapters.storage.batching import IN_LIST_SIZE, chunks
from agentiam.adapters.storage.bulk import BulkInsert
from agentiam.core.access.admin_keys import AdminKey, Role
from agentiam.core.audit.events import AuditEvent
from agentiam.core.audit.trail import canonical_text
from agentiam.core.credentials.revocations import Revocation, RevocationKind
from agentiam.core.credentials.signing_keys import SigningKey
from agentiam.core.delegation.models import DelegationGrant, TokenNode, TokenOrigin
from agentiam.core.detection.expectations import expectations_dict, parse_expectations
from agentiam.core.detection.model import Expectations
from agentiam.core.identities.lifecycle import AgentStatus, LifecycleAction
from agentiam.core.identities.models import (
    Agent,
    AgentKey,
    AutonomyLevel,
    ClientRecord,
    ExternalIdentity,
    Human,
    KeyStatus,
    RuntimeInfo,
    Transition,
)
from agentiam.core.normalize import plain
from agentiam.core.policy.model import (
    EntityRef,
    Mode,
    PolicyRecord,
    PolicySetVersion,
    ResourceRecord,
)
from agentiam.errors import Conflict, InvalidInput
from agentiam.ports import AgentQuery, AuditQuery, GrantQuery, HumanQuery, Page, ResourceQuery

__all__ = [
    "SqlAdminKeys",
    "SqlAgentKeys",
    "SqlAgents",
    "SqlAudit",
    "SqlGrants",
    "SqlHumans",
    "SqlPolicies",
    "SqlReplayGuard",
    "SqlResources",
    "SqlRevocations",
    "SqlSigningKeys",
    "SqlTokenGraph",
]


OWNER, SPONSOR = "owner", "sponsor"
SCOPE, AUDIENCE = "scope", "audience"


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _event_body(value: dict[str, Any]) -> str:
    """An audit event's stored body: its canonical JSON when that is proven cheaply
    (the trail then hashes it as it stands, :func:`canonical_text`), else sorted JSON."""
    text = canonical_text(value)
    return _dumps(value) if text is None else text


def _conflict(exc: IntegrityError, messages: dict[str, str], default: str) -> Conflict:
    """Map a unique-constraint violation to a domain Conflict. SQLite names the
    columns (``humans.email``) and PostgreSQL the constraint (``uq_humans_email``);
    both contain the column name the keys of ``messages`` look for."""
    text = str(exc.orig)
    for needle, message in messages.items():
        if needle in text:
            return Conflict(message)
    return Conflict(default)


def _page(rows: list[Any], limit: int, key: str) -> tuple[list[Any], str | None]:
    if len(rows) > limit:
        rows = rows[:limit]
        return rows, str(getattr(rows[-1], key))
    return rows, None


class SqlHumans:
    def __init__(self, conn: Connection) -> None:
        self._c = conn

    @staticmethod
    def _row(row: Row[Any]) -> Human:
        ext = (
            ExternalIdentity(row.external_issuer, row.external_subject)
            if row.external_issuer is not None
            else None
        )
        return Human(
            id=row.id,
            display_name=row.display_name,
            email=row.email,
            external_identity=ext,
            created_at=row.created_at,
            updated_at=row.updated_at,
            version=row.version,
        )

    @staticmethod
    def _values(h: Human) -> dict[str, Any]:
        return {
            "id": h.id,
            "display_name": h.display_name,
            "email": h.email,
            "external_issuer": h.external_identity.issuer if h.external_identity else None,
            "external_subject": h.external_identity.subject if h.external_identity else None,
            "created_at": h.created_at,
            "updated_at": h.updated_at,
            "version": h.version,
        }

    _CONFLICTS = {
        "email": "a human with this email already exists",
        "external": "this external identity is already linked to another human",
    }

    def add(self, human: Human) -> None:
        try:
            with self._c.begin_nested():
                self._c.execute(insert(t.humans).values(self._values(human)))
        except IntegrityError as exc:
            raise _conflict(exc, self._CONFLICTS, "human conflicts with an existing one") from None

    def get(self, human_id: str) -> Human | None:
        row = self._c.execute(select(t.humans).where(t.humans.c.id == human_id)).first()
        return self._row(row) if row else None

    def get_by_external(self, issuer: str, subject: str) -> Human | None:
        h = t.humans
        stmt = select(h).where(h.c.external_issuer == issuer, h.c.external_subject == subject)
        row = self._c.execute(stmt).first()
        return self._row(row) if row else None

    def update(self, human: Human, expected_version: int) -> None:
        try:
            with self._c.begin_nested():
                result = self._c.execute(
                    update(t.humans)
                    .where(t.humans.c.id == human.id, t.humans.c.version == expected_version)
                    .values(self._values(human))
                )
        except IntegrityError as exc:
            raise _conflict(exc, self._CONFLICTS, "human conflicts with an existing one") from None
        if result.rowcount != 1:
            raise Conflict("the human changed concurrently", hint="Read it again and retry.")

    def find(self, query: HumanQuery) -> Page[Human]:
        stmt = select(t.humans).order_by(t.humans.c.id).limit(query.limit + 1)
        if query.after:
            stmt = stmt.where(t.humans.c.id > query.after)
        if query.email:
            stmt = stmt.where(t.humans.c.email == query.email)
        rows, nxt = _page(list(self._c.execute(stmt)), query.limit, "id")
        return Page([self._row(r) for r in rows], nxt)

    def existing(self, human_ids: Sequence[str]) -> set[str]:
        if not human_ids:
            return set()
        rows = self._c.execute(select(t.humans.c.id).where(t.humans.c.id.in_(list(human_ids))))
        return {r.id for r in rows}


# The token endpoint's reads, built once: statement construction is a large share of a
# short query's cost.
_ak = t.agent_keys
_CLIENT_WITH_KEYS = (
    select(
        t.agents.c.id,
        t.agents.c.status,
        t.agents.c.expires_at,
        t.agents.c.dpop_required,
        t.agents.c.task_scope,
        _ak.c.id.label("key_id"),
        _ak.c.kid,
        _ak.c.alg,
        _ak.c.jwk,
        _ak.c.thumbprint,
        _ak.c.created_at.label("key_created_at"),
        _ak.c.created_by.label("key_created_by"),
    )
    .select_from(
        t.agents.outerjoin(
            _ak, and_(_ak.c.agent_id == t.agents.c.id, _ak.c.status == KeyStatus.ACTIVE.value)
        )
    )
    .where(t.agents.c.id == bindparam("agent_id"))
)
_CLIENT_GRANTS = (
    select(t.agent_entitlements.c.kind, t.agent_entitlements.c.value)
    .where(t.agent_entitlements.c.agent_id == bindparam("agent_id"))
    .order_by(t.agent_entitlements.c.value)
)


def _task_scope(text: str | None) -> tuple[dict[str, Any], ...]:
    return tuple(json.loads(text)) if text else ()


def _expectations(text: str | None) -> Expectations:
    return parse_expectations(json.loads(text)) if text else Expectations()


class SqlAgents:
    def __init__(self, conn: Connection) -> None:
        self._c = conn

    def _hydrate(self, rows: Sequence[Row[Any]]) -> list[Agent]:
        if not rows:
            return []
        ids = [r.id for r in rows]
        people: dict[tuple[str, str], list[str]] = defaultdict(list)
        ah = t.agent_humans
        for o in self._c.execute(
            select(ah).where(ah.c.agent_id.in_(ids)).order_by(ah.c.agent_id, ah.c.position)
        ):
            people[(o.agent_id, o.relation)].append(o.human_id)
        labels: dict[str, dict[str, str]] = defaultdict(dict)
        for lab in self._c.execute(
            select(t.agent_labels).where(t.agent_labels.c.agent_id.in_(ids))
        ):
            labels[lab.agent_id][lab.key] = lab.value
        granted: dict[tuple[str, str], list[str]] = defaultdict(list)
        ent = t.agent_entitlements
        for e in self._c.execute(select(ent).where(ent.c.agent_id.in_(ids)).order_by(ent.c.value)):
            granted[(e.agent_id, e.kind)].append(e.value)
        result = []
        for r in rows:
            runtime = json.loads(r.runtime)
            result.append(
                Agent(
                    id=r.id,
                    name=r.name,
                    owners=tuple(people[(r.id, OWNER)]),
                    sponsors=tuple(people[(r.id, SPONSOR)]),
                    purpose=r.purpose,
                    environment=r.environment,
                    autonomy=AutonomyLevel(r.autonomy),
                    runtime=RuntimeInfo(**runtime),
                    labels=dict(sorted(labels[r.id].items())),
                    status=AgentStatus(r.status),
                    next_access_review=r.next_access_review,
                    created_at=r.created_at,
                    updated_at=r.updated_at,
                    parent_id=r.parent_id,
                    expires_at=r.expires_at,
                    scopes=tuple(granted[(r.id, SCOPE)]),
                    audiences=tuple(granted[(r.id, AUDIENCE)]),
                    dpop_required=bool(r.dpop_required),
                    task_scope=_task_scope(r.task_scope),
                    expectations=_expectations(r.expectations),
                    version=r.version,
                )
            )
        return result

    @staticmethod
    def _values(a: Agent) -> dict[str, Any]:
        return {
            "id": a.id,
            "name": a.name,
            "purpose": a.purpose,
            "environment": a.environment,
            "autonomy": a.autonomy.value,
            "runtime": _dumps(
                {
                    "framework": a.runtime.framework,
                    "model": a.runtime.model,
                    "version": a.runtime.version,
                }
            ),
            "status": a.status.value,
            "parent_id": a.parent_id,
            "expires_at": a.expires_at,
            "next_access_review": a.next_access_review,
            "created_at": a.created_at,
            "updated_at": a.updated_at,
            "version": a.version,
            "dpop_required": a.dpop_required,
            "task_scope": _dumps([dict(d) for d in a.task_scope]) if a.task_scope else None,
            "expectations": (
                None if a.expectations.empty else _dumps(expectations_dict(a.expectations))
            ),
        }

    def _write_relations(self, agent: Agent) -> None:
        self._c.execute(delete(t.agent_humans).where(t.agent_humans.c.agent_id == agent.id))
        self._c.execute(delete(t.agent_labels).where(t.agent_labels.c.agent_id == agent.id))
        self._c.execute(
            insert(t.agent_humans),
            [
                {"agent_id": agent.id, "relation": relation, "human_id": h, "position": i}
                for relation, people in ((OWNER, agent.owners), (SPONSOR, agent.sponsors))
                for i, h in enumerate(people)
            ],
        )
        if agent.labels:
            self._c.execute(
                insert(t.agent_labels),
                [{"agent_id": agent.id, "key": k, "value": v} for k, v in agent.labels.items()],
            )
        ent = t.agent_entitlements
        self._c.execute(delete(ent).where(ent.c.agent_id == agent.id))
        granted = [(SCOPE, v) for v in agent.scopes] + [(AUDIENCE, v) for v in agent.audiences]
        if granted:
            self._c.execute(
                insert(ent), [{"agent_id": agent.id, "kind": k, "value": v} for k, v in granted]
            )

    def add(self, agent: Agent) -> None:
        try:
            with self._c.begin_nested():
                self._c.execute(insert(t.agents).values(self._values(agent)))
                self._write_relations(agent)
        except IntegrityError as exc:
            raise _conflict(
                exc,
                {"name": f"agent name {agent.name!r} is taken (names are never reused)"},
                "agent conflicts with an existing one",
            ) from None

    def get(self, agent_id: str) -> Agent | None:
        row = self._c.execute(select(t.agents).where(t.agents.c.id == agent_id)).first()
        return self._hydrate([row])[0] if row else None

    def client(self, agent_id: str) -> ClientRecord | None:
        rows = list(self._c.execute(_CLIENT_WITH_KEYS, {"agent_id": agent_id}))
        if not rows:
            return None
        first = rows[0]
        granted: dict[str, list[str]] = {SCOPE: [], AUDIENCE: []}
        for e in self._c.execute(_CLIENT_GRANTS, {"agent_id": agent_id}):
            granted.setdefault(e.kind, []).append(e.value)
        keys = tuple(
            AgentKey(
                id=r.key_id,
                agent_id=agent_id,
                kid=r.kid,
                alg=r.alg,
                jwk=json.loads(r.jwk),
                thumbprint=r.thumbprint,
                status=KeyStatus.ACTIVE,
                created_at=r.key_created_at,
                created_by=r.key_created_by,
            )
            for r in rows
            if r.key_id is not None
        )
        return ClientRecord(
            id=first.id,
            status=AgentStatus(first.status),
            expires_at=first.expires_at,
            dpop_required=bool(first.dpop_required),
            scopes=tuple(granted[SCOPE]),
            audiences=tuple(granted[AUDIENCE]),
            keys=keys,
            task_scope=_task_scope(first.task_scope),
        )

    def get_many(self, agent_ids: Sequence[str]) -> dict[str, Agent]:
        ids = list(dict.fromkeys(agent_ids))[:IN_LIST_SIZE]
        if not ids:
            return {}
        rows = list(self._c.execute(select(t.agents).where(t.agents.c.id.in_(ids))))
        return {a.id: a for a in self._hydrate(rows)}

    def get_by_name(self, name: str) -> Agent | None:
        row = self._c.execute(select(t.agents).where(t.agents.c.name == name)).first()
        return self._hydrate([row])[0] if row else None

    def update(self, agent: Agent, expected_version: int) -> None:
        values = self._values(agent)
        del values["id"], values["name"], values["created_at"]
        result = self._c.execute(
            update(t.agents)
            .where(t.agents.c.id == agent.id, t.agents.c.version == expected_version)
            .values(values)
        )
        if result.rowcount != 1:
            raise Conflict("the agent changed concurrently", hint="Read it again and retry.")
        self._write_relations(agent)

    def find(self, query: AgentQuery) -> Page[Agent]:
        a = t.agents
        stmt = select(a).order_by(a.c.id).limit(query.limit + 1)
        if query.after:
            stmt = stmt.where(a.c.id > query.after)
        if query.status is not None:
            stmt = stmt.where(a.c.status == query.status.value)
        if query.environment is not None:
            stmt = stmt.where(a.c.environment == query.environment)
        if query.parent_id is not None:
            stmt = stmt.where(a.c.parent_id == query.parent_id)
        for relation, human_id in ((OWNER, query.owner), (SPONSOR, query.sponsor)):
            if human_id is not None:
                ah = t.agent_humans
                stmt = stmt.where(
                    exists().where(
                        ah.c.agent_id == a.c.id,
                        ah.c.relation == relation,
                        ah.c.human_id == human_id,
                    )
                )
        for key, value in query.labels.items():
            lab = t.agent_labels
            cond = and_(lab.c.agent_id == a.c.id, lab.c.key == key)
            if value is not None:
                cond = and_(cond, lab.c.value == value)
            stmt = stmt.where(exists().where(cond))
        rows, nxt = _page(list(self._c.execute(stmt)), query.limit, "id")
        return Page(self._hydrate(rows), nxt)

    def children(self, parent_id: str) -> list[Agent]:
        rows = self._c.execute(
            select(t.agents)
            .where(
                t.agents.c.parent_id == parent_id,
                t.agents.c.status != AgentStatus.DECOMMISSIONED.value,
            )
            .order_by(t.agents.c.id)
        ).all()
        return self._hydrate(rows)

    def expired(self, now: datetime, limit: int) -> list[Agent]:
        rows = self._c.execute(
            select(t.agents)
            .where(
                t.agents.c.expires_at.is_not(None),
                t.agents.c.expires_at <= now,
                t.agents.c.status != AgentStatus.DECOMMISSIONED.value,
            )
            .order_by(t.agents.c.expires_at)
            .limit(limit)
        ).all()
        return self._hydrate(rows)

    def add_transition(self, transition: Transition) -> None:
        self._c.execute(
            insert(t.agent_transitions).values(
                id=transition.id,
                agent_id=transition.agent_id,
                action=transition.action.value,
                from_status=transition.from_status.value,
                to_status=transition.to_status.value,
                actor=transition.actor,
                reason=transition.reason,
                at=transition.at,
            )
        )

    def transitions(self, agent_id: str) -> list[Transition]:
        rows = self._c.execute(
            select(t.agent_transitions)
            .where(t.agent_transitions.c.agent_id == agent_id)
            .order_by(t.agent_transitions.c.seq)
        )
        return [
            Transition(
                id=r.id,
                agent_id=r.agent_id,
                action=LifecycleAction(r.action),
                from_status=AgentStatus(r.from_status),
                to_status=AgentStatus(r.to_status),
                actor=r.actor,
                reason=r.reason,
                at=r.at,
            )
            for r in rows
        ]


class SqlAgentKeys:
    def __init__(self, conn: Connection) -> None:
        self._c = conn

    @staticmethod
    def _row(r: Row[Any]) -> AgentKey:
        return AgentKey(
            id=r.id,
            agent_id=r.agent_id,
            kid=r.kid,
            alg=r.alg,
            jwk=json.loads(r.jwk),
            thumbprint=r.thumbprint,
            status=KeyStatus(r.status),
            created_at=r.created_at,
            created_by=r.created_by,
            retired_at=r.retired_at,
            retired_by=r.retired_by,
            retire_reason=r.retire_reason,
        )

    def add(self, key: AgentKey) -> None:
        try:
            with self._c.begin_nested():
                self._c.execute(
                    insert(t.agent_keys).values(
                        id=key.id,
                        agent_id=key.agent_id,
                        kid=key.kid,
                        alg=key.alg,
                        jwk=_dumps(dict(key.jwk)),
                        thumbprint=key.thumbprint,
                        status=key.status.value,
                        created_at=key.created_at,
                        created_by=key.created_by,
                    )
                )
        except IntegrityError as exc:
            raise _conflict(
                exc,
                {
                    "thumbprint": "this public key is already registered (keys are never shared "
                    "or reused)",
                    "kid": f"the agent already has a key with kid {key.kid!r}",
                },
                "key conflicts with an existing one",
            ) from None

    def get(self, agent_id: str, key_id: str) -> AgentKey | None:
        """Find by key id (``key_…``) first, then by kid: an id always wins."""
        k = t.agent_keys
        for column in (k.c.id, k.c.kid):
            row = self._c.execute(
                select(k).where(k.c.agent_id == agent_id, column == key_id)
            ).first()
            if row:
                return self._row(row)
        return None

    def list_for_agent(self, agent_id: str) -> list[AgentKey]:
        rows = self._c.execute(
            select(t.agent_keys)
            .where(t.agent_keys.c.agent_id == agent_id)
            .order_by(t.agent_keys.c.id)
        )
        return [self._row(r) for r in rows]

    def update(self, key: AgentKey) -> None:
        self._c.execute(
            update(t.agent_keys)
            .where(t.agent_keys.c.id == key.id)
            .values(
                status=key.status.value,
                retired_at=key.retired_at,
                retired_by=key.retired_by,
                retire_reason=key.retire_reason,
            )
        )


def _ingest_scope(text: str | None) -> dict[str, Any]:
    """The ``sources``, ``agents`` and ``any_source`` of an admin key's stored
    ``ingest_scope``. NULL (a key made before bindings, or not a verifier) is none of
    them: a verifier key stored so is :attr:`IngestBinding.LEGACY`."""
    scope = json.loads(text) if text else {}
    return {
        "sources": tuple(scope.get("sources") or ()),
        "agents": tuple(scope.get("agents") or ()),
        "any_source": scope.get("any_source") is True,
    }


def _dump_ingest_scope(key: AdminKey) -> str | None:
    """``ingest_scope`` as stored: JSON ``{"sources", "agents"}``, with ``"any_source":
    true`` for a key unbound by choice (read by older code as unbound too, so a
    rollback keeps the same behaviour); NULL when there is nothing to store."""
    if not (key.sources or key.agents or key.any_source):
        return None
    scope: dict[str, Any] = {"sources": list(key.sources), "agents": list(key.agents)}
    if key.any_source:
        scope["any_source"] = True
    return _dumps(scope)


class SqlAdminKeys:
    def __init__(self, conn: Connection) -> None:
        self._c = conn

    @staticmethod
    def _row(r: Row[Any]) -> AdminKey:
        return AdminKey(
            id=r.id,
            prefix=r.prefix,
            name=r.name,
            role=Role(r.role),
            key_hash=r.key_hash,
            created_at=r.created_at,
            created_by=r.created_by,
            expires_at=r.expires_at,
            revoked_at=r.revoked_at,
            revoked_by=r.revoked_by,
            **_ingest_scope(r.ingest_scope),
        )

    def add(self, key: AdminKey) -> None:
        self._c.execute(
            insert(t.admin_keys).values(
                id=key.id,
                prefix=key.prefix,
                name=key.name,
                role=key.role.value,
                key_hash=key.key_hash,
                created_at=key.created_at,
                created_by=key.created_by,
                expires_at=key.expires_at,
                ingest_scope=_dump_ingest_scope(key),
            )
        )

    def get(self, key_id: str) -> AdminKey | None:
        row = self._c.execute(select(t.admin_keys).where(t.admin_keys.c.id == key_id)).first()
        return self._row(row) if row else None

    def get_by_prefix(self, prefix: str) -> AdminKey | None:
        row = self._c.execute(select(t.admin_keys).where(t.admin_keys.c.prefix == prefix)).first()
        return self._row(row) if row else None

    def all(self) -> list[AdminKey]:
        return [
            self._row(r) for r in self._c.execute(select(t.admin_keys).order_by(t.admin_keys.c.id))
        ]

    def update(self, key: AdminKey) -> None:
        self._c.execute(
            update(t.admin_keys)
            .where(t.admin_keys.c.id == key.id)
            .values(revoked_at=key.revoked_at, revoked_by=key.revoked_by)
        )


class SqlAudit:
    """The event store. ``body`` is the record the trail hashes (canonical JSON); the
    other columns are derived copies of its members for indexed lookups. They are not
    covered by the trail, so queries select on them but always return ``body``."""

    def __init__(self, conn: Connection) -> None:
        self._c = conn

    # query column -> the AuditEvent value it holds (clipped to the column's length)
    _COLUMNS: dict[str, Callable[[AuditEvent], str | None]] = {
        "agent_id": lambda e: e.agent_id,
        "human_id": lambda e: e.initiating_human,
        "action": lambda e: e.action,
        "resource_type": lambda e: e.resource.type if e.resource else None,
        "resource_id": lambda e: e.resource.id if e.resource else None,
        "decision_id": lambda e: e.decision_id,
        "trace_id": lambda e: e.trace.trace_id,
        "outcome": lambda e: e.outcome.value,
    }
    _LENGTHS: dict[str, int] = {
        column: t.audit_events.c[column].type.length  # type: ignore[attr-defined]
        for column in _COLUMNS
    }
    _ROW = ("event_id", "time", "type", "body", *_COLUMNS)  # the order of _row's values

    @classmethod
    def _clip(cls, column: str, value: str | None) -> str | None:
        """A value longer than its column is stored cut (an append never fails on
        length); a lookup for it compares the cut value and then re-checks ``body``."""
        length = cls._LENGTHS[column]
        return value[:length] if value is not None and len(value) > length else value

    @classmethod
    def _row(cls, event: AuditEvent) -> tuple[Any, ...]:
        """The stored row of ``event``, in :attr:`_ROW` order."""
        return (
            event.event_id,
            event.time,
            event.type,
            _event_body(event.to_dict()),
            *[cls._clip(column, value(event)) for column, value in cls._COLUMNS.items()],
        )

    # One executemany (adapters/storage/bulk.py): rows keep their order, so seq follows it.
    _INSERT = BulkInsert(t.audit_events, _ROW)
    # INSERT … ON CONFLICT (event_id) DO NOTHING: a stored event is never touched
    # (no UPDATE, so the append-only triggers are not even asked), and a concurrent
    # writer storing the same id first makes this row a no-op instead of an error.
    _INSERT_ABSENT = BulkInsert(
        t.audit_events,
        _ROW,
        lambda dialect: (pg_insert if dialect == "postgresql" else sqlite_insert)(
            t.audit_events
        ).on_conflict_do_nothing(index_elements=["event_id"]),
    )

    def append(self, event: AuditEvent) -> None:
        self._INSERT.execute(self._c, [self._row(event)])

    def append_many(self, events: Sequence[AuditEvent]) -> None:
        self._INSERT.execute(self._c, [self._row(e) for e in events])

    def append_absent(self, events: Sequence[AuditEvent]) -> None:
        self._INSERT_ABSENT.execute(self._c, [self._row(e) for e in events])

    def existing_ids(self, event_ids: Sequence[str]) -> set[str]:
        e = t.audit_events
        found: set[str] = set()
        for chunk in chunks(list(dict.fromkeys(event_ids))):
            found.update(self._c.scalars(select(e.c.event_id).where(e.c.event_id.in_(chunk))))
        return found

    def find(self, query: AuditQuery) -> Page[AuditEvent]:
        e = t.audit_events
        stmt = select(e.c.seq, e.c.body).order_by(e.c.seq).limit(query.limit + 1)
        if query.after:
            stmt = stmt.where(e.c.seq > int(query.after))
        if query.after_event:  # an unknown event id compares with NULL: no rows
            mark = select(e.c.seq).where(e.c.event_id == query.after_event).scalar_subquery()
            stmt = stmt.where(e.c.seq > mark)
        if query.type:
            stmt = stmt.where(e.c.type == query.type)
        if query.since is not None:
            stmt = stmt.where(e.c.time >= query.since)
        if query.until is not None:
            stmt = stmt.where(e.c.time < query.until)
        recheck: list[tuple[str, str]] = []
        for column, wanted in (
            ("agent_id", query.agent_id),
            ("human_id", query.human_id),
            ("action", query.action),
            ("resource_type", query.resource_type),
            ("resource_id", query.resource_id),
            ("decision_id", query.decision_id),
            ("trace_id", query.trace_id),
            ("outcome", query.outcome),
        ):
            if wanted is None:
                continue
            clipped = self._clip(column, wanted)
            stmt = stmt.where(e.c[column] == clipped)
            if clipped != wanted:
                recheck.append((column, wanted))
        rows, nxt = _page(list(self._c.execute(stmt)), query.limit, "seq")
        events = [AuditEvent.from_dict(json.loads(r.body)) for r in rows]
        if recheck:  # a page may come out short; the cursor still moves past every row
            events = [
                ev for ev in events if all(self._COLUMNS[col](ev) == want for col, want in recheck)
            ]
        return Page(events, nxt)


class SqlSigningKeys:
    def __init__(self, conn: Connection) -> None:
        self._c = conn

    def all(self) -> list[SigningKey]:
        rows = self._c.execute(select(t.signing_keys).order_by(t.signing_keys.c.created_at))
        return [
            SigningKey(
                kid=r.kid,
                alg=r.alg,
                public_jwk=json.loads(r.public_jwk),
                sealed_private=r.sealed_private,
                created_at=r.created_at,
                activates_at=r.activates_at,
                deactivates_at=r.deactivates_at,
                unpublish_at=r.unpublish_at,
                created_by=r.created_by,
            )
            for r in rows
        ]

    def add(self, key: SigningKey) -> None:
        self._c.execute(
            insert(t.signing_keys).values(
                kid=key.kid,
                alg=key.alg,
                public_jwk=_dumps(dict(key.public_jwk)),
                sealed_private=key.sealed_private,
                created_at=key.created_at,
                activates_at=key.activates_at,
                deactivates_at=key.deactivates_at,
                unpublish_at=key.unpublish_at,
                created_by=key.created_by,
            )
        )

    def update_schedule(self, key: SigningKey) -> None:
        self._c.execute(
            update(t.signing_keys)
            .where(t.signing_keys.c.kid == key.kid)
            .values(deactivates_at=key.deactivates_at, unpublish_at=key.unpublish_at)
        )

    def lock(self) -> None:
        if self._c.dialect.name == "postgresql":
            # Blocks inserts and updates by others (not reads) until the commit.
            self._c.execute(text("LOCK TABLE signing_keys IN SHARE ROW EXCLUSIVE MODE"))

    def replace_sealed(self, kid: str, expected: str, sealed: str) -> bool:
        result = self._c.execute(
            update(t.signing_keys)
            .where(t.signing_keys.c.kid == kid, t.signing_keys.c.sealed_private == expected)
            .values(sealed_private=sealed)
        )
        return result.rowcount == 1


class SqlReplayGuard:
    """``INSERT ... ON CONFLICT DO NOTHING RETURNING``: the primary key decides,
    atomically, on both databases, without aborting the surrounding transaction on a
    replay. A returned row means first use (psycopg reports no rowcount here)."""

    _STATEMENTS = {
        "postgresql": pg_insert(t.replay_guard)
        .on_conflict_do_nothing()
        .returning(t.replay_guard.c.digest),
        "sqlite": sqlite_insert(t.replay_guard)
        .on_conflict_do_nothing()
        .returning(t.replay_guard.c.digest),
    }

    def __init__(self, conn: Connection) -> None:
        self._c = conn
        self._insert = self._STATEMENTS[conn.dialect.name]

    def first_use(self, purpose: str, value: str, expires_at: datetime) -> bool:
        digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
        params = {"purpose": purpose, "digest": digest, "expires_at": expires_at}
        return self._c.execute(self._insert, params).first() is not None

    def purge(self, now: datetime, limit: int) -> int:
        rg = t.replay_guard
        doomed = select(rg.c.purpose, rg.c.digest).where(rg.c.expires_at < now).limit(limit)
        keys = [(r.purpose, r.digest) for r in self._c.execute(doomed)]
        for purpose, digest in keys:
            self._c.execute(delete(rg).where(rg.c.purpose == purpose, rg.c.digest == digest))
        return len(keys)


# The PostgreSQL advisory-lock key that orders revocations (any constant shared by
# replicas). Readers of the feed move a cursor past the highest ``seq`` they saw, so
# entries must commit in ``seq`` order: an identity value is taken at INSERT, and a
# transaction that took a lower one but committed later would be skipped for good.
_REVOCATION_LOCK = 0x5245564F  # "REVO"


class SqlRevocations:
    def __init__(self, conn: Connection) -> None:
        self._c = conn
        self._pending: list[dict[str, Any]] = []

    def add(
        self, kind: RevocationKind, subject: str, *, cutoff: int, expires: int, now: datetime
    ) -> None:
        """Add one entry, inserted when the unit of work commits (:meth:`flush`)."""
        self._pending.append(
            {
                "kind": kind.value,
                "subject": subject,
                "cutoff": cutoff,
                "expires": expires,
                "created_at": now,
            }
        )

    def flush(self) -> None:
        """Insert the entries added in this transaction; called last before commit. On
        PostgreSQL the revocations' advisory lock is taken first and held to the
        commit, so concurrent revocations are numbered and committed one at a time
        (SQLite's single writer already is). Taken last, after every row lock the
        transaction holds, it cannot close a cycle with them (a deadlock)."""
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        if self._c.dialect.name == "postgresql":
            self._c.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _REVOCATION_LOCK})
        self._c.execute(insert(t.revocations), rows)

    @staticmethod
    def _entry(r: Row[Any]) -> Revocation:
        return Revocation(
            seq=r.seq,
            kind=RevocationKind(r.kind),
            subject=r.subject,
            cutoff=r.cutoff,
            expires=r.expires,
        )

    def after(
        self, seq: int, limit: int, kinds: Collection[RevocationKind] | None = None
    ) -> list[Revocation]:
        rv = t.revocations
        stmt = select(rv).where(rv.c.seq > seq)
        if kinds is not None:
            stmt = stmt.where(rv.c.kind.in_(sorted(k.value for k in kinds)))
        stmt = stmt.order_by(rv.c.seq).limit(limit)
        return [self._entry(r) for r in self._c.execute(stmt)]

    def active(self, now: int) -> list[Revocation]:
        rv = t.revocations
        stmt = select(rv).where(rv.c.expires > now).order_by(rv.c.seq)
        return [self._entry(r) for r in self._c.execute(stmt)]

    def purge(self, now: int, limit: int) -> int:
        rv = t.revocations
        doomed = [
            r.seq
            for r in self._c.execute(
                select(rv.c.seq).where(rv.c.expires <= now).order_by(rv.c.seq).limit(limit)
            )
        ]
        if doomed:
            self._c.execute(delete(rv).where(rv.c.seq.in_(doomed)))
        return len(doomed)


_LOST_RACE = "another change to the policy set was written first; retry"

# Versions are 32-bit integer columns. Numbers from outside (a ``before`` cursor, a
# version in a URL) are clamped to it rather than overflowing the database driver.
_MAX_VERSION = 2**31 - 1

_CLOSE_REVISIONS_PG = (
    update(t.policy_revisions)
    .where(
        t.policy_revisions.c.valid_to.is_(None),
        t.policy_revisions.c.policy_id == any_(bindparam("ids", type_=ARRAY(String(128)))),
    )
    .values(valid_to=bindparam("version"))
)


class SqlPolicies:
    """The policy set as a history of versions over revisions valid in a version range.

    The version number is the primary key of ``policy_versions`` and is written first,
    so of two writers that both computed ``head() + 1`` the second fails on that insert
    before it has changed anything else.
    """

    def __init__(self, conn: Connection) -> None:
        self._c = conn

    @staticmethod
    def _meta(r: Row[Any]) -> PolicySetVersion:
        return PolicySetVersion(
            version=r.version,
            created_at=r.created_at,
            created_by=r.created_by,
            change=r.change,
            comment=r.comment,
            schema_extension=r.schema_extension,
            policy_count=r.policy_count,
        )

    def head(self) -> int:
        pv = t.policy_versions
        return int(self._c.execute(select(func.coalesce(func.max(pv.c.version), 0))).scalar_one())

    def version(self, version: int) -> PolicySetVersion | None:
        if not 0 < version <= _MAX_VERSION:
            return None
        pv = t.policy_versions
        row = self._c.execute(select(pv).where(pv.c.version == version)).first()
        return self._meta(row) if row else None

    def versions(self, *, limit: int, before: int | None = None) -> list[PolicySetVersion]:
        pv = t.policy_versions
        stmt = select(pv).order_by(pv.c.version.desc()).limit(limit)
        if before is not None and before <= _MAX_VERSION:  # above it: every version
            stmt = stmt.where(pv.c.version < before)
        return [self._meta(r) for r in self._c.execute(stmt)]

    def policies(self, version: int) -> list[PolicyRecord]:
        version = min(version, _MAX_VERSION)
        pr = t.policy_revisions
        stmt = select(pr).where(
            pr.c.valid_from <= version, or_(pr.c.valid_to.is_(None), pr.c.valid_to > version)
        )
        records = [
            PolicyRecord(
                id=r.policy_id,
                text=r.text,
                mode=Mode(r.mode),
                description=r.description,
                template=r.template,
            )
            for r in self._c.execute(stmt)
        ]
        # Sorted here rather than by the database, whose collation may differ from
        # SQLite's byte order: both stores return the same order.
        records.sort(key=lambda r: r.id)
        return records

    def commit_version(
        self,
        meta: PolicySetVersion,
        *,
        put: Sequence[PolicyRecord] = (),
        delete: Sequence[str] = (),
    ) -> None:
        put_ids = [r.id for r in put]
        if len(set(put_ids)) != len(put_ids):
            raise ValueError("a policy id appears more than once in one version")
        head = self.head()
        if meta.version <= head:
            raise Conflict(_LOST_RACE)
        if meta.version != head + 1:
            raise ValueError(f"policy version {meta.version} does not follow version {head}")
        v = meta.version
        pv, pr = t.policy_versions, t.policy_revisions
        try:
            with self._c.begin_nested():
                self._c.execute(
                    insert(pv).values(
                        version=v,
                        created_at=meta.created_at,
                        created_by=meta.created_by,
                        change=meta.change,
                        comment=meta.comment,
                        schema_extension=meta.schema_extension,
                        policy_count=0,  # set below, once the change is written
                    )
                )
        except IntegrityError as exc:
            if "policy_versions" in str(exc.orig):
                raise Conflict(_LOST_RACE) from None
            raise
        # Close the current revision of every policy replaced or deleted ...
        closing = list(dict.fromkeys([*delete, *put_ids]))
        if closing and self._c.dialect.name == "postgresql":
            # One array parameter: PostgreSQL plans ``= ANY($1)`` once, where lists of
            # hundreds of bound parameters made a 10,000-policy import take seconds.
            self._c.execute(_CLOSE_REVISIONS_PG, {"version": v, "ids": closing})
        else:
            for chunk in chunks(closing):
                self._c.execute(
                    update(pr)
                    .where(pr.c.valid_to.is_(None), pr.c.policy_id.in_(chunk))
                    .values(valid_to=v)
                )
        # ... and open the new ones (one executemany).
        if put:
            self._c.execute(
                insert(pr),
                [
                    {
                        "policy_id": r.id,
                        "valid_from": v,
                        "valid_to": None,
                        "text": r.text,
                        "mode": Mode(r.mode).value,
                        "description": r.description,
                        "template": r.template,
                    }
                    for r in put
                ],
            )
        count = self._c.execute(
            select(func.count()).select_from(pr).where(pr.c.valid_to.is_(None))
        ).scalar_one()
        self._c.execute(update(pv).where(pv.c.version == v).values(policy_count=count))


_res = t.policy_resources
_res_prior = _res.alias("prior")
# The next value of the catalog's change counter. An alias keeps the subquery from
# being correlated to the row an UPDATE is changing.
_NEXT_REVISION = select(func.coalesce(func.max(_res_prior.c.revision), 0) + 1).scalar_subquery()


def _resource_upsert(dialect_insert: Any) -> Any:
    """Insert a resource at version 1, or replace it (reviving a tombstone) with its
    version bumped: one atomic statement on both databases."""
    stmt = dialect_insert(_res).values(
        type=bindparam("type"),
        id=bindparam("id"),
        attributes=bindparam("attributes"),
        parents=bindparam("parents"),
        tags=bindparam("tags"),
        updated_at=bindparam("updated_at", type_=t.UTCDateTime()),
        version=1,
        revision=_NEXT_REVISION,
        deleted=False,
    )
    return stmt.on_conflict_do_update(
        index_elements=[_res.c.type, _res.c.id],
        set_={
            "attributes": stmt.excluded.attributes,
            "parents": stmt.excluded.parents,
            "tags": stmt.excluded.tags,
            "updated_at": stmt.excluded.updated_at,
            "version": _res.c.version + 1,
            "revision": stmt.excluded.revision,
            "deleted": False,
        },
    ).returning(_res.c.version)


# Every count and sum the entity snapshot depends on, in one round trip. Agents and
# humans are never deleted and every change bumps their version, so count + sum of
# versions moves on each insert and update. For the catalog the sum of versions (a
# delete bumps the tombstone's version too) is what moves on every write even when two
# PostgreSQL writers race and store the same ``revision``.
_FINGERPRINT = select(
    select(func.count()).select_from(t.agents).scalar_subquery(),
    select(func.coalesce(func.sum(t.agents.c.version), 0)).scalar_subquery(),
    select(func.count()).select_from(t.humans).scalar_subquery(),
    select(func.coalesce(func.sum(t.humans.c.version), 0)).scalar_subquery(),
    select(func.count()).select_from(_res).scalar_subquery(),
    select(func.coalesce(func.sum(_res.c.version), 0)).scalar_subquery(),
    select(func.coalesce(func.max(_res.c.revision), 0)).scalar_subquery(),
)


class SqlResources:
    """The resource catalog. Deletes leave a tombstone (never returned) so that the
    change shows in :meth:`fingerprint`; a later put revives it."""

    _UPSERTS = {
        "postgresql": _resource_upsert(pg_insert),
        "sqlite": _resource_upsert(sqlite_insert),
    }

    def __init__(self, conn: Connection) -> None:
        self._c = conn
        self._upsert = self._UPSERTS[conn.dialect.name]

    @staticmethod
    def _record(
        type_: str,
        id_: str,
        attributes: str,
        parents: str,
        tags: str,
        updated_at: datetime,
        version: int,
    ) -> ResourceRecord:
        return ResourceRecord(
            type=type_,
            id=id_,
            attributes=json.loads(attributes),
            parents=tuple(EntityRef(p["type"], p["id"]) for p in json.loads(parents)),
            tags=json.loads(tags),
            updated_at=updated_at,
            version=version,
        )

    @classmethod
    def _row(cls, r: Row[Any]) -> ResourceRecord:
        return cls._record(r.type, r.id, r.attributes, r.parents, r.tags, r.updated_at, r.version)

    def put(self, record: ResourceRecord) -> ResourceRecord:
        if record.updated_at is None:
            raise ValueError("a resource is stored with its updated_at time")
        attributes = _dumps(dict(record.attributes))
        parents = _dumps([p.to_json() for p in record.parents])
        tags = _dumps(dict(record.tags))
        params = {
            "type": record.type,
            "id": record.id,
            "attributes": attributes,
            "parents": parents,
            "tags": tags,
            "updated_at": record.updated_at,
        }
        version = self._c.execute(self._upsert, params).scalar_one()
        return self._record(
            record.type, record.id, attributes, parents, tags, record.updated_at, version
        )

    def get(self, type_: str, id_: str) -> ResourceRecord | None:
        row = self._c.execute(
            select(_res).where(_res.c.type == type_, _res.c.id == id_, _res.c.deleted == false())
        ).first()
        return self._row(row) if row else None

    def delete(self, type_: str, id_: str) -> bool:
        result = self._c.execute(
            update(_res)
            .where(_res.c.type == type_, _res.c.id == id_, _res.c.deleted == false())
            .values(deleted=True, version=_res.c.version + 1, revision=_NEXT_REVISION)
        )
        return result.rowcount == 1

    def find(self, query: ResourceQuery) -> Page[ResourceRecord]:
        stmt = (
            select(_res)
            .where(_res.c.deleted == false())
            .order_by(_res.c.type, _res.c.id)
            .limit(query.limit + 1)
        )
        if query.type is not None:
            stmt = stmt.where(_res.c.type == query.type)
        if query.after:
            after_type, sep, after_id = query.after.partition("::")
            if not sep:
                raise InvalidInput(
                    f"page cursor {query.after!r} is not valid",
                    hint="Pass the next_after value of the previous page unchanged.",
                )
            stmt = stmt.where(tuple_(_res.c.type, _res.c.id) > tuple_(after_type, after_id))
        rows = list(self._c.execute(stmt))
        nxt = None
        if len(rows) > query.limit:
            rows = rows[: query.limit]
            nxt = f"{rows[-1].type}::{rows[-1].id}"
        return Page([self._row(r) for r in rows], nxt)

    def all(self) -> list[ResourceRecord]:
        stmt = select(_res).where(_res.c.deleted == false()).order_by(_res.c.type, _res.c.id)
        return [self._row(r) for r in self._c.execute(stmt)]

    def fingerprint(self) -> str:
        row = self._c.execute(_FINGERPRINT).one()
        return ":".join(str(int(x)) for x in row)


_gr = t.delegation_grants


class SqlGrants:
    """Delegation grants. Revoking stamps the row; grants are never deleted."""

    def __init__(self, conn: Connection) -> None:
        self._c = conn

    @staticmethod
    def _row(r: Row[Any]) -> DelegationGrant:
        return DelegationGrant(
            id=r.id,
            human_id=r.human_id,
            agent_id=r.agent_id,
            scopes=tuple(json.loads(r.scopes)),
            audiences=tuple(json.loads(r.audiences)),
            authorization_details=tuple(json.loads(r.authorization_details)),
            max_depth=r.max_depth,
            created_at=r.created_at,
            created_by=r.created_by,
            expires_at=r.expires_at,
            revoked_at=r.revoked_at,
            revoked_by=r.revoked_by,
            revoke_reason=r.revoke_reason,
        )

    def add(self, grant: DelegationGrant) -> None:
        self._c.execute(
            insert(_gr).values(
                id=grant.id,
                human_id=grant.human_id,
                agent_id=grant.agent_id,
                scopes=_dumps(list(grant.scopes)),
                audiences=_dumps(list(grant.audiences)),
                authorization_details=_dumps(plain(grant.authorization_details)),
                max_depth=grant.max_depth,
                created_at=grant.created_at,
                created_by=grant.created_by,
                expires_at=grant.expires_at,
                revoked_at=grant.revoked_at,
                revoked_by=grant.revoked_by,
                revoke_reason=grant.revoke_reason,
            )
        )

    def get(self, grant_id: str) -> DelegationGrant | None:
        row = self._c.execute(select(_gr).where(_gr.c.id == grant_id)).first()
        return self._row(row) if row else None

    def find(self, query: GrantQuery) -> Page[DelegationGrant]:
        stmt = select(_gr).order_by(_gr.c.id).limit(query.limit + 1)
        if query.after:
            stmt = stmt.where(_gr.c.id > query.after)
        if query.human_id is not None:
            stmt = stmt.where(_gr.c.human_id == query.human_id)
        if query.agent_id is not None:
            stmt = stmt.where(_gr.c.agent_id == query.agent_id)
        if query.active_at is not None:
            stmt = stmt.where(_gr.c.revoked_at.is_(None), _gr.c.expires_at > query.active_at)
        rows, nxt = _page(list(self._c.execute(stmt)), query.limit, "id")
        return Page([self._row(r) for r in rows], nxt)

    def revoke(self, grant_id: str, *, at: datetime, by: str, reason: str) -> bool:
        result = self._c.execute(
            update(_gr)
            .where(_gr.c.id == grant_id, _gr.c.revoked_at.is_(None))
            .values(revoked_at=at, revoked_by=by, revoke_reason=reason)
        )
        return result.rowcount == 1

    def revoke_for_human(self, human_id: str, *, at: datetime, by: str, reason: str) -> list[str]:
        # One statement: a grant added or revoked concurrently is either in it or not.
        result = self._c.execute(
            update(_gr)
            .where(_gr.c.human_id == human_id, _gr.c.revoked_at.is_(None))
            .values(revoked_at=at, revoked_by=by, revoke_reason=reason)
            .returning(_gr.c.id)
        )
        return sorted(r.id for r in result)


_tn = t.token_nodes


class SqlTokenGraph:
    """The delegation graph. Nodes are written once and purged after they expire."""

    def __init__(self, conn: Connection) -> None:
        self._c = conn

    _INSERT = insert(_tn)

    @staticmethod
    def _row(r: Row[Any]) -> TokenNode:
        return TokenNode(
            jti=r.jti,
            parent_jti=r.parent_jti,
            actor_jti=r.actor_jti,
            root_jti=r.root_jti,
            origin=TokenOrigin(r.origin),
            subject=r.subject,
            client_id=r.client_id,
            actors=tuple(json.loads(r.actors)),
            grant_id=r.grant_id,
            scope=tuple(json.loads(r.scope)),
            audience=r.audience,
            issued_at=r.issued_at,
            expires_at=r.expires_at,
            external_subject=r.external_subject,
        )

    def add(self, node: TokenNode) -> None:
        self._c.execute(
            self._INSERT,
            {
                "jti": node.jti,
                "parent_jti": node.parent_jti,
                "actor_jti": node.actor_jti,
                "root_jti": node.root_jti,
                "origin": TokenOrigin(node.origin).value,
                "subject": node.subject,
                "client_id": node.client_id,
                "actors": _dumps(list(node.actors)),
                "grant_id": node.grant_id,
                "scope": _dumps(list(node.scope)),
                "audience": node.audience,
                "issued_at": node.issued_at,
                "expires_at": node.expires_at,
                "external_subject": node.external_subject,
            },
        )

    def get(self, jti: str) -> TokenNode | None:
        row = self._c.execute(select(_tn).where(_tn.c.jti == jti)).first()
        return self._row(row) if row else None

    def children(self, jtis: Sequence[str]) -> list[TokenNode]:
        parents = list(dict.fromkeys(jtis))
        nodes = [
            self._row(r)
            for chunk in chunks(parents)
            for r in self._c.execute(select(_tn).where(_tn.c.parent_jti.in_(chunk)))
        ]
        # Sorted here, across chunks and whatever the database's collation.
        nodes.sort(key=lambda n: n.jti)
        return nodes

    def purge(self, before: datetime, limit: int) -> int:
        if limit <= 0:
            return 0
        doomed = [
            r.jti
            for r in self._c.execute(
                select(_tn.c.jti)
                .where(_tn.c.expires_at < before)
                .order_by(_tn.c.expires_at)
                .limit(limit)
            )
        ]
        # Counted from the deletes: a node another purger removed meanwhile is not counted.
        return sum(
            int(self._c.execute(delete(_tn).where(_tn.c.jti.in_(chunk))).rowcount)
            for chunk in chunks(doomed)
        )
