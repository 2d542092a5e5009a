"""Register agents, change them, move them through their lifecycle, manage their keys,
and expire ephemeral agents."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any

from agentiam.config import Limits
from agentiam.core.audit.events import ResourceRef
from agentiam.core.detection.expectations import expectations_dict, parse_expectations
from agentiam.core.identities.keys import ValidatedJwk, validate_public_jwk
from agentiam.core.identities.lifecycle import AgentStatus, LifecycleAction, next_status
from agentiam.core.identities.models import Agent, AgentKey, KeyStatus, Transition
from agentiam.core.identities.validation import (
    entitlements_beyond,
    validate_access_review,
    validate_audiences,
    validate_autonomy,
    validate_labels,
    validate_reason,
    validate_runtime,
    validate_scopes,
)
from agentiam.core.ids import is_id, new_id
from agentiam.core.normalize import normalize_display_text, normalize_identifier
from agentiam.errors import Conflict, InvalidInput, InvalidTransition, NotFound
from agentiam.ports import AgentQuery, Clock, Page, UnitOfWork, UnitOfWorkFactory
from agentiam.services.context import SYSTEM, CallContext
from agentiam.services.revocations import revoke_agent_tokens

__all__ = ["AgentChanges", "AgentService", "NewAgent", "agent_summary"]


@dataclass(frozen=True, slots=True)
class NewAgent:
    name: str
    owners: Sequence[str]
    purpose: str
    environment: str
    autonomy: str = "approve_each"
    runtime: Mapping[str, Any] | None = None
    labels: Mapping[str, str] | None = None
    next_access_review: date | None = None
    parent_id: str | None = None
    ttl_seconds: int | None = None
    activate: bool = False
    keys: Sequence[Mapping[str, Any]] = field(default_factory=tuple)
    sponsors: Sequence[str] = field(default_factory=tuple)
    scopes: Sequence[str] = field(default_factory=tuple)
    audiences: Sequence[str] = field(default_factory=tuple)
    dpop_required: bool = True
    # Already-validated authorization_details (see DelegationService.spawn).
    task_scope: Sequence[Mapping[str, Any]] = field(default_factory=tuple)
    # The owner's declaration for behavioural detection (core/detection/expectations.py).
    expectations: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class AgentChanges:
    """Fields to change; None leaves a field as it is. The name is immutable."""

    owners: Sequence[str] | None = None
    purpose: str | None = None
    environment: str | None = None
    autonomy: str | None = None
    runtime: Mapping[str, Any] | None = None
    labels: Mapping[str, str] | None = None
    next_access_review: date | None = None
    sponsors: Sequence[str] | None = None
    scopes: Sequence[str] | None = None
    audiences: Sequence[str] | None = None
    dpop_required: bool | None = None
    expectations: Mapping[str, Any] | None = None  # {} clears the declaration


def agent_summary(agent: Agent) -> dict[str, Any]:
    """The audit-friendly description of an agent (no secrets exist on an agent)."""
    return {
        "name": agent.name,
        "owners": list(agent.owners),
        "sponsors": list(agent.sponsors),
        "purpose": agent.purpose,
        "environment": agent.environment,
        "autonomy": agent.autonomy.value,
        "runtime": {
            "framework": agent.runtime.framework,
            "model": agent.runtime.model,
            "version": agent.runtime.version,
        },
        "labels": dict(agent.labels),
        "status": agent.status.value,
        "parent_id": agent.parent_id,
        "expires_at": agent.expires_at.isoformat() if agent.expires_at else None,
        "next_access_review": agent.next_access_review.isoformat(),
        "scopes": list(agent.scopes),
        "audiences": list(agent.audiences),
        "dpop_required": agent.dpop_required,
        "task_scope": [dict(d) for d in agent.task_scope],
        "expectations": expectations_dict(agent.expectations),
    }


def _check_attenuated(parent: Agent, scopes: tuple[str, ...], audiences: tuple[str, ...]) -> None:
    """A child agent is entitled to no more than its parent."""
    wider = entitlements_beyond(parent, scopes, audiences)
    if wider:
        raise InvalidInput(
            f"a child agent cannot hold entitlements its parent lacks: {', '.join(wider)}",
            hint="Give the child a subset of the parent's scopes and audiences.",
        )


class AgentService:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        clock: Clock,
        limits: Limits,
        *,
        access_review_interval_days: int = 90,
    ) -> None:
        self._uow = uow
        self._clock = clock
        self._limits = limits
        self._review_days = access_review_interval_days

    # -- registration ------------------------------------------------------------------

    def register(self, ctx: CallContext, spec: NewAgent) -> Agent:
        """Register an agent (``pending``, or ``active`` when ``spec.activate``).

        An ephemeral agent names a ``parent_id`` and a ``ttl_seconds`` of at most 24 h;
        its parent must be usable, it lives in the parent's environment, it cannot
        outlive an ephemeral parent, and it inherits the parent's owners if none are given.
        """
        now = self._clock.now()
        lim = self._limits
        name = normalize_identifier(spec.name, field="name", max_length=lim.max_name_length)
        purpose = normalize_display_text(
            spec.purpose, field="purpose", max_length=lim.max_purpose_length
        )
        environment = normalize_identifier(
            spec.environment, field="environment", max_length=lim.max_name_length
        )
        autonomy = validate_autonomy(spec.autonomy)
        runtime = validate_runtime(spec.runtime, lim)
        labels = validate_labels(spec.labels, lim)
        review = validate_access_review(spec.next_access_review, now, self._review_days)
        scopes = validate_scopes(spec.scopes)
        audiences = validate_audiences(spec.audiences, lim)
        keys = [validate_public_jwk(k) for k in spec.keys]
        if len(keys) > lim.max_active_keys_per_agent:
            raise InvalidInput(f"at most {lim.max_active_keys_per_agent} keys per agent")
        if (spec.parent_id is None) != (spec.ttl_seconds is None):
            raise InvalidInput(
                "an ephemeral agent needs both parent_id and ttl_seconds",
                hint="Pass both to create a child agent, or neither for a standing agent.",
            )
        expectations = parse_expectations(spec.expectations)
        with self._uow() as uow:
            owners = list(spec.owners)
            expires_at: datetime | None = None
            task_scope: tuple[Mapping[str, Any], ...] = tuple(dict(d) for d in spec.task_scope)
            if spec.parent_id is not None and spec.ttl_seconds is not None:
                parent = self._ephemeral_parent(uow, spec.parent_id, now)
                if parent.environment != environment:
                    raise InvalidInput(
                        f"a child agent must live in its parent's environment "
                        f"({parent.environment})"
                    )
                if not 1 <= spec.ttl_seconds <= lim.max_ephemeral_ttl_seconds:
                    raise InvalidInput(
                        f"ttl_seconds must be between 1 and {lim.max_ephemeral_ttl_seconds}"
                    )
                expires_at = now + timedelta(seconds=spec.ttl_seconds)
                if parent.expires_at is not None and expires_at > parent.expires_at:
                    raise InvalidInput(
                        "a child agent cannot outlive its ephemeral parent",
                        hint=f"Use a ttl that ends before {parent.expires_at.isoformat()}.",
                    )
                if not owners:
                    owners = list(parent.owners)
                _check_attenuated(parent, scopes, audiences)
                # A child of a task-scoped agent is at least as task-scoped.
                task_scope = task_scope or parent.task_scope
            owners_t = self._check_humans(uow, owners, "owners", required=True)
            sponsors_t = self._check_humans(uow, spec.sponsors, "sponsors", required=False)
            agent = Agent(
                id=new_id("agent"),
                name=name,
                owners=owners_t,
                sponsors=sponsors_t,
                purpose=purpose,
                environment=environment,
                autonomy=autonomy,
                runtime=runtime,
                labels=labels,
                status=AgentStatus.PENDING,
                next_access_review=review,
                created_at=now,
                updated_at=now,
                parent_id=spec.parent_id,
                expires_at=expires_at,
                scopes=scopes,
                audiences=audiences,
                dpop_required=bool(spec.dpop_required),
                task_scope=task_scope,
                expectations=expectations,
            )
            uow.agents.add(agent)  # Conflict if the name was ever used
            uow.audit.append(
                ctx.event(
                    "agent.created",
                    now=now,
                    resource=ResourceRef("agent", agent.id),
                    details=agent_summary(agent),
                )
            )
            for jwk in keys:
                self._insert_key(uow, ctx, agent, jwk)
            if spec.activate:
                agent = self._apply(
                    uow, ctx, agent, LifecycleAction.ACTIVATE, "activated at registration", now
                )
            uow.commit()
        return agent

    def _ephemeral_parent(self, uow: UnitOfWork, parent_id: str, now: datetime) -> Agent:
        parent = uow.agents.get(parent_id)
        if parent is None:
            raise NotFound(f"parent agent {parent_id} does not exist")
        if not parent.is_usable(now):
            raise InvalidTransition(
                f"parent agent {parent_id} is {parent.status.value}; only an active agent can "
                "have children"
            )
        depth = 1
        ancestor = parent
        while ancestor.parent_id is not None:
            depth += 1
            found = uow.agents.get(ancestor.parent_id)
            if found is None:
                break
            ancestor = found
        if depth >= self._limits.max_agent_depth:
            raise InvalidInput(f"agent nesting is capped at depth {self._limits.max_agent_depth}")
        return parent

    def _check_humans(
        self, uow: UnitOfWork, human_ids: Sequence[str], role: str, *, required: bool
    ) -> tuple[str, ...]:
        """Owners (at least one) and sponsors (optional) must be existing humans."""
        unique = tuple(dict.fromkeys(human_ids))
        if required and not unique:
            raise InvalidInput(
                "an agent needs at least one human owner",
                hint="Create the owner with 'agentiam humans create' and pass its id.",
            )
        if len(unique) > self._limits.max_owners:
            raise InvalidInput(f"at most {self._limits.max_owners} {role} are allowed")
        missing = set(unique) - uow.humans.existing(unique)
        if missing:
            raise InvalidInput(
                f"{role} do not exist: {', '.join(sorted(missing))}",
                hint="Owners are human ids (hum_…); list them with 'agentiam humans list'.",
            )
        return unique

    # -- reads ---------------------------------------------------------------------------

    def get(self, agent_id: str) -> Agent:
        with self._uow(read_only=True) as uow:
            return self._require(uow, agent_id)

    def resolve(self, ref: str) -> Agent:
        """Find an agent by id (``agt_…``) or by name (normalised before lookup)."""
        if is_id(ref, "agent"):
            return self.get(ref)
        name = normalize_identifier(ref, field="name", max_length=self._limits.max_name_length)
        with self._uow(read_only=True) as uow:
            agent = uow.agents.get_by_name(name)
        if agent is None:
            raise NotFound(f"no agent is named {name!r}", hint="List agents to find it.")
        return agent

    def find(self, query: AgentQuery) -> Page[Agent]:
        with self._uow(read_only=True) as uow:
            return uow.agents.find(query)

    def keys(self, agent_id: str) -> list[AgentKey]:
        with self._uow(read_only=True) as uow:
            self._require(uow, agent_id)
            return uow.agent_keys.list_for_agent(agent_id)

    def transitions(self, agent_id: str) -> list[Transition]:
        with self._uow(read_only=True) as uow:
            self._require(uow, agent_id)
            return uow.agents.transitions(agent_id)

    @staticmethod
    def _require(uow: UnitOfWork, agent_id: str) -> Agent:
        agent = uow.agents.get(agent_id)
        if agent is None:
            raise NotFound(f"agent {agent_id} does not exist", hint="List agents to find the id.")
        return agent

    # -- changes -------------------------------------------------------------------------

    def update(self, ctx: CallContext, agent_id: str, changes: AgentChanges) -> Agent:
        now = self._clock.now()
        lim = self._limits
        with self._uow() as uow:
            current = self._require(uow, agent_id)
            if current.status is AgentStatus.DECOMMISSIONED:
                raise InvalidTransition(f"agent {agent_id} is decommissioned and cannot change")
            updated = current
            if changes.owners is not None:
                updated = replace(
                    updated,
                    owners=self._check_humans(uow, changes.owners, "owners", required=True),
                )
            if changes.sponsors is not None:
                updated = replace(
                    updated,
                    sponsors=self._check_humans(uow, changes.sponsors, "sponsors", required=False),
                )
            if changes.purpose is not None:
                updated = replace(
                    updated,
                    purpose=normalize_display_text(
                        changes.purpose, field="purpose", max_length=lim.max_purpose_length
                    ),
                )
            if changes.environment is not None:
                env = normalize_identifier(
                    changes.environment, field="environment", max_length=lim.max_name_length
                )
                if current.parent_id is not None and env != current.environment:
                    raise InvalidInput("a child agent stays in its parent's environment")
                updated = replace(updated, environment=env)
            if changes.autonomy is not None:
                updated = replace(updated, autonomy=validate_autonomy(changes.autonomy))
            if changes.runtime is not None:
                updated = replace(updated, runtime=validate_runtime(changes.runtime, lim))
            if changes.labels is not None:
                updated = replace(updated, labels=validate_labels(changes.labels, lim))
            if changes.next_access_review is not None:
                updated = replace(
                    updated,
                    next_access_review=validate_access_review(
                        changes.next_access_review, now, self._review_days
                    ),
                )
            if changes.scopes is not None:
                updated = replace(updated, scopes=validate_scopes(changes.scopes))
            if changes.audiences is not None:
                updated = replace(updated, audiences=validate_audiences(changes.audiences, lim))
            if changes.dpop_required is not None:
                updated = replace(updated, dpop_required=bool(changes.dpop_required))
            if changes.expectations is not None:
                updated = replace(updated, expectations=parse_expectations(changes.expectations))
            if current.parent_id is not None:
                parent = uow.agents.get(current.parent_id)
                if parent is not None:
                    _check_attenuated(parent, updated.scopes, updated.audiences)
            if updated == current:
                return current
            updated = replace(updated, updated_at=now, version=current.version + 1)
            uow.agents.update(updated, expected_version=current.version)
            narrowed = (
                not set(current.scopes) <= set(updated.scopes)
                or not set(current.audiences) <= set(updated.audiences)
                or (updated.dpop_required and not current.dpop_required)
            )
            if narrowed:  # tokens minted under the wider rights stop working now
                revoke_agent_tokens(uow, agent_id, now)
            before, after = agent_summary(current), agent_summary(updated)
            diff = {k: {"from": before[k], "to": after[k]} for k in after if before[k] != after[k]}
            uow.audit.append(
                ctx.event(
                    "agent.updated",
                    now=now,
                    resource=ResourceRef("agent", agent_id),
                    details={"changes": diff},
                )
            )
            uow.commit()
        return updated

    def transition(
        self, ctx: CallContext, agent_id: str, action: LifecycleAction, reason: str | None
    ) -> Agent:
        """Apply a lifecycle action (409 if the state machine forbids it)."""
        now = self._clock.now()
        why = validate_reason(reason, self._limits, required=action is not LifecycleAction.ACTIVATE)
        with self._uow() as uow:
            agent = self._require(uow, agent_id)
            if action in (LifecycleAction.ACTIVATE, LifecycleAction.RESUME) and agent.is_expired(
                now
            ):
                raise InvalidTransition(f"agent {agent_id} is past its TTL and cannot be active")
            agent = self._apply(uow, ctx, agent, action, why or "activated", now)
            uow.commit()
        return agent

    def _apply(
        self,
        uow: UnitOfWork,
        ctx: CallContext,
        agent: Agent,
        action: LifecycleAction,
        reason: str,
        now: datetime,
    ) -> Agent:
        """Move one agent and cascade to its descendants; all in ``uow``'s transaction.

        Suspending or decommissioning an agent decommissions every ephemeral child,
        grandchild and so on. Decommissioning retires every key.
        """
        target = next_status(agent.status, action)
        updated = replace(agent, status=target, updated_at=now, version=agent.version + 1)
        uow.agents.update(updated, expected_version=agent.version)
        uow.agents.add_transition(
            Transition(
                id=new_id("transition"),
                agent_id=agent.id,
                action=action,
                from_status=agent.status,
                to_status=target,
                actor=ctx.actor.label,
                reason=reason,
                at=now,
            )
        )
        uow.audit.append(
            ctx.event(
                f"agent.{action.value}",
                resource=ResourceRef("agent", updated.id),
                details={"from": agent.status.value, "to": target.value},
                now=now,
                reason=reason,
            )
        )
        if target is AgentStatus.DECOMMISSIONED:
            for key in uow.agent_keys.list_for_agent(agent.id):
                if key.status is KeyStatus.ACTIVE:
                    self._retire(uow, ctx, updated, key, "agent decommissioned", now)
        if target in (AgentStatus.SUSPENDED, AgentStatus.DECOMMISSIONED):
            revoke_agent_tokens(uow, agent.id, now)
            cascade = replace(ctx, actor=SYSTEM)
            for child in uow.agents.children(agent.id):
                self._apply(
                    uow,
                    cascade,
                    child,
                    LifecycleAction.DECOMMISSION,
                    f"parent {agent.id} was {target.value} by {ctx.actor.label}",
                    now,
                )
        return updated

    def expire_due(self, ctx: CallContext, *, batch: int = 100) -> list[str]:
        """Decommission ephemeral agents whose TTL has run out. Returns their ids."""
        now = self._clock.now()
        expired: list[str] = []
        with self._uow() as uow:
            for agent in uow.agents.expired(now, batch):
                current = uow.agents.get(agent.id)
                if current is None or current.status is AgentStatus.DECOMMISSIONED:
                    continue  # already taken down by a parent's cascade in this batch
                self._apply(uow, ctx, current, LifecycleAction.DECOMMISSION, "ttl expired", now)
                expired.append(agent.id)
            uow.commit()
        return expired

    # -- keys ----------------------------------------------------------------------------

    def add_key(self, ctx: CallContext, agent_id: str, jwk: Mapping[str, Any]) -> AgentKey:
        validated = validate_public_jwk(jwk)
        with self._uow() as uow:
            agent = self._require(uow, agent_id)
            if agent.status is AgentStatus.DECOMMISSIONED:
                raise InvalidTransition(f"agent {agent_id} is decommissioned; keys are closed")
            active = [
                k for k in uow.agent_keys.list_for_agent(agent_id) if k.status is KeyStatus.ACTIVE
            ]
            if len(active) >= self._limits.max_active_keys_per_agent:
                raise Conflict(
                    f"agent has {len(active)} active keys, the maximum",
                    hint="Retire an old key before adding a new one.",
                )
            key = self._insert_key(uow, ctx, agent, validated)
            uow.commit()
        return key

    def _insert_key(
        self,
        uow: UnitOfWork,
        ctx: CallContext,
        agent: Agent,
        jwk: ValidatedJwk,
    ) -> AgentKey:
        now = self._clock.now()
        key = AgentKey(
            id=new_id("agent_key"),
            agent_id=agent.id,
            kid=jwk.kid,
            alg=jwk.alg,
            jwk=dict(jwk.jwk),
            thumbprint=jwk.thumbprint,
            status=KeyStatus.ACTIVE,
            created_at=now,
            created_by=ctx.actor.label,
        )
        uow.agent_keys.add(key)
        uow.audit.append(
            ctx.event(
                "agent.key.added",
                resource=ResourceRef("agent", agent.id),
                details={"key_id": key.id, "kid": key.kid, "alg": key.alg, "jkt": key.thumbprint},
                now=now,
            )
        )
        return key

    def retire_key(
        self, ctx: CallContext, agent_id: str, key_id: str, reason: str | None
    ) -> AgentKey:
        why = validate_reason(reason, self._limits)
        now = self._clock.now()
        with self._uow() as uow:
            agent = self._require(uow, agent_id)
            key = uow.agent_keys.get(agent_id, key_id)
            if key is None:
                raise NotFound(f"agent {agent_id} has no key {key_id}")
            if key.status is KeyStatus.RETIRED:
                raise Conflict(f"key {key_id} is already retired")
            retired = self._retire(uow, ctx, agent, key, why, now)
            uow.commit()
        return retired

    def _retire(
        self,
        uow: UnitOfWork,
        ctx: CallContext,
        agent: Agent,
        key: AgentKey,
        reason: str,
        now: datetime,
    ) -> AgentKey:
        retired = replace(
            key,
            status=KeyStatus.RETIRED,
            retired_at=now,
            retired_by=ctx.actor.label,
            retire_reason=reason,
        )
        uow.agent_keys.update(retired)
        uow.audit.append(
            ctx.event(
                "agent.key.retired",
                resource=ResourceRef("agent", agent.id),
                details={"key_id": key.id, "kid": key.kid},
                now=now,
                reason=reason,
            )
        )
        return retired
