"""The policy decision point as a service: keeps the compiled policy set and the
entity snapshot fresh in memory, decides requests, and writes every decision to the
audit trail before the answer leaves.

Freshness: :meth:`DecisionPoint.refresh` polls two cheap values, the policy set's head
version and the registry fingerprint, every ``policy_refresh_seconds`` (and at once
after a change made through this process). Only what changed is reloaded. If no
refresh has succeeded for ``policy_max_staleness_seconds`` (the database is gone, say),
decisions fail closed with 503 rather than decide from data of unknown age.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from agentiam.core.audit.events import AuditEvent, Outcome, ResourceRef
from agentiam.core.audit.redaction import Redactor
from agentiam.core.identities.models import Agent, Human
from agentiam.core.policy.authorizer import Authorizer, AuthzRequest, Decision, failed_policy
from agentiam.core.policy.engine import PolicyEngine
from agentiam.core.policy.entities import EntitySnapshot
from agentiam.core.policy.model import EntityRef
from agentiam.core.policy.schema import load_schema
from agentiam.errors import ServiceUnavailable
from agentiam.ports import AgentQuery, Clock, HumanQuery, Page, UnitOfWork, UnitOfWorkFactory
from agentiam.services.audit import AuditService
from agentiam.services.context import CallContext

__all__ = ["DecisionPoint", "decision_event"]

log = logging.getLogger("agentiam.policy")
_PAGE = 1000
DECISION_EVENT = "authz.decision"


T = TypeVar("T")


def _every(find: Callable[[str | None], Page[T]]) -> list[T]:
    """Every item of a keyset-paged list."""
    out: list[T] = []
    after: str | None = None
    while True:
        page = find(after)
        out.extend(page.items)
        if page.next_after is None:
            return out
        after = page.next_after


def _all_agents(uow: UnitOfWork) -> list[Agent]:
    return _every(lambda after: uow.agents.find(AgentQuery(limit=_PAGE, after=after)))


def _all_humans(uow: UnitOfWork) -> list[Human]:
    return _every(lambda after: uow.humans.find(HumanQuery(limit=_PAGE, after=after)))


def _error_summary(errors: Sequence[str]) -> list[str]:
    return [
        f"policy {name} failed to evaluate" if (name := failed_policy(m)) else "request error"
        for m in errors
    ]


_DEFAULT_REDACTOR = Redactor()


def decision_event(
    ctx: CallContext, decision: Decision, *, now: Any, redactor: Redactor | None = None
) -> AuditEvent:
    """The audit record of one decision, with the tool arguments as the redaction
    rules allow (:mod:`agentiam.core.audit.redaction`) and their names."""
    request = decision.request
    delegation = request.context.get("delegation") or {}
    actors = delegation.get("actors") if isinstance(delegation, dict) else None
    human = delegation.get("initiating_human") if isinstance(delegation, dict) else None
    args = request.context.get("args")
    placement: dict[str, Any] = {}  # only when the enforcement point set them
    if request.resource_parents:
        placement["resource_parents"] = [p.to_json() for p in request.resource_parents]
    if request.resource_attributes:
        placement["resource_attributes"] = dict(request.resource_attributes)
    return AuditEvent.create(
        type=DECISION_EVENT,
        actor=ctx.actor,
        action=request.action,
        source=ctx.source,
        trace=ctx.trace,
        now=now,
        outcome=Outcome.SUCCESS if decision.allowed else Outcome.DENIED,
        resource=ResourceRef(request.resource.type, request.resource.id),
        agent_id=request.principal.id if request.principal.type == "Agent" else None,
        initiating_human=human if isinstance(human, str) else None,
        delegation_chain=tuple(a for a in actors or () if isinstance(a, str)),
        decision_id=decision.decision_id,
        policy_version=str(decision.policy_version),
        risk_score=float(decision.risk_score),
        reason=decision.reasons[0] if decision.reasons else None,
        details={
            "decision": decision.decision,
            "principal": {"type": request.principal.type, "id": request.principal.id},
            "policies": list(decision.policies),
            "reasons": list(decision.reasons),
            # Cedar's messages quote request values; record which policies failed only.
            "errors": _error_summary(decision.errors),
            "dry_run": decision.to_dict()["dry_run"],
            # "would deny" / "would allow" when dry-run policies disagree with the outcome
            "dry_run_outcome": (
                f"would {decision.dry_run.decision}"
                if decision.dry_run is not None and decision.would_change
                else None
            ),
            "evaluation_us": round(decision.evaluation_us, 1),
            "argument_names": sorted(args) if isinstance(args, dict) else [],
            "arguments": (redactor or _DEFAULT_REDACTOR).arguments(
                args if isinstance(args, dict) else {},
                {
                    "action": request.action,
                    "resource_type": request.resource.type,
                    "resource_id": request.resource.id,
                },
            ),
            **placement,
        },
    )


class DecisionPoint:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        clock: Clock,
        *,
        zone: str = "UTC",
        max_staleness_seconds: float = 30.0,
        risk: Callable[[EntityRef], int] | None = None,
        audit: AuditService | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self._uow = uow
        self._redactor = redactor or _DEFAULT_REDACTOR
        # Decision logs are stand-alone events: group-committed through the audit
        # service's writer when it has one.
        self._audit = audit or AuditService(uow, clock)
        self._clock = clock
        self._zone = zone
        self._max_staleness = max_staleness_seconds
        self._risk = risk
        self._lock = threading.Lock()
        self._authorizer: Authorizer | None = None
        self._fingerprint: str | None = None
        self._refreshed_at: float | None = None
        self.on_decision: Callable[[Decision], None] = lambda _d: None
        # Called by the refresh that loads a new policy engine or entity snapshot (and
        # by the first), with the pair now in force: how changes are pushed to remote
        # enforcement points (services/enforcement_sync.py). Must be quick; its errors
        # are logged and never fail the refresh.
        self.on_change: Callable[[PolicyEngine, EntitySnapshot], None] = lambda _e, _s: None

    # -- freshness --------------------------------------------------------------------

    def refresh(self) -> None:
        """Reload the policy set and/or the entities if either changed."""
        with self._lock:
            with self._uow(read_only=True) as uow:
                head = uow.policies.head()
                fingerprint = uow.resources.fingerprint()
                current = self._authorizer
                engine = None
                if current is None or current.engine.version != head:
                    meta = uow.policies.version(head) if head else None
                    schema = load_schema(meta.schema_extension if meta else "")
                    records = uow.policies.policies(head) if head else []
                    engine = PolicyEngine(
                        head, schema, records, previous=current.engine if current else None
                    )
                    engine.warm()  # here, off the decision path
                else:
                    schema = current.engine.schema
                entities = None
                if (
                    current is None
                    or fingerprint != self._fingerprint
                    or schema is not current.entities.schema  # catalog re-checked
                ):
                    entities = EntitySnapshot(
                        schema,
                        agents=_all_agents(uow),
                        humans=_all_humans(uow),
                        resources=uow.resources.all(),
                        fingerprint=fingerprint,
                    )
            if current is None:
                assert engine is not None
                assert entities is not None
                self._authorizer = Authorizer(
                    engine,
                    entities,
                    clock=self._clock.now,
                    zone=self._zone,
                    risk=self._risk,
                )
            elif engine is not None or entities is not None:
                current.update(engine, entities)
                if engine is not None:
                    log.info("policy set version %s loaded (%s)", head, len(engine.policies))
            self._fingerprint = fingerprint
            self._refreshed_at = time.monotonic()
            if engine is not None or entities is not None:
                loaded = self._authorizer
                assert loaded is not None
                try:
                    self.on_change(loaded.engine, loaded.entities)
                except Exception:
                    log.warning("policy change listener failed", exc_info=True)

    @property
    def loaded_engine(self) -> PolicyEngine | None:
        """The policy engine in memory, if any (no refresh; for metrics)."""
        return self._authorizer.engine if self._authorizer is not None else None

    @property
    def authorizer(self) -> Authorizer:
        """The in-process authorizer, fresh within the staleness bound (else 503)."""
        refreshed = self._refreshed_at
        if (
            self._authorizer is None
            or refreshed is None
            or (time.monotonic() - refreshed > self._max_staleness)
        ):
            try:
                self.refresh()
            except Exception as exc:
                log.warning("policy refresh failed: %s", type(exc).__name__)
                raise ServiceUnavailable(
                    "policy data could not be refreshed; decisions are refused until it is",
                    hint="Check the database and retry.",
                ) from None
        assert self._authorizer is not None
        return self._authorizer

    # -- decisions --------------------------------------------------------------------

    def decide(
        self,
        ctx: CallContext,
        requests: Sequence[AuthzRequest],
        *,
        decision_ids: Sequence[str] | None = None,
    ) -> list[Decision]:
        """Decide each request and record every decision durably; if the audit trail
        cannot be written, nothing is answered (503), so no allow goes unlogged.
        ``decision_ids`` gives the decisions ids allocated beforehand (a used
        approval records the id of the decision it allows)."""
        authorizer = self.authorizer
        decisions = [authorizer.decide(r) for r in requests]
        if decision_ids is not None:
            decisions = [
                replace(d, decision_id=i) for d, i in zip(decisions, decision_ids, strict=True)
            ]
        now = self._clock.now()
        self._audit.append(
            [
                decision_event(ctx, decision, now=now, redactor=self._redactor)
                for decision in decisions
            ]
        )
        for decision in decisions:
            self.on_decision(decision)
        return decisions
