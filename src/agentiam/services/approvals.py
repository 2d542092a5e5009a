"""Human approval (step-up) as a use case: open a request for a denied call that a
human could allow, let an operator or the agent's owner or sponsor decide it, use it
once for exactly that call, expire what nobody decided in time.

The rule for *when* lives in :func:`agentiam.core.approvals.approvable`; this module
keeps the queue. Every transition is a compare-and-set in storage and is written to the
audit trail in the same transaction (``approval.requested``, ``approval.approved``,
``approval.denied``, ``approval.expired``, ``approval.consumed``), naming the agent,
the initiating human and the approver. The semantics are compared with OpenID CIBA in
docs/approvals.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from agentiam.config import Limits
from agentiam.core.approvals import (
    APPROVAL_EVENTS,
    ApprovalRequest,
    ApprovalState,
    Approver,
    approvable,
    approved_context,
    placement,
    request_fingerprint,
)
from agentiam.core.audit.events import ActorType, AuditEvent, Outcome, ResourceRef
from agentiam.core.audit.redaction import Redactor
from agentiam.core.credentials.verifier import AccessTokenVerifier
from agentiam.core.delegation.issuers import ExternalSubject, TrustedIssuer, peek_issuer
from agentiam.core.ids import is_id, new_id
from agentiam.core.normalize import normalize_display_text
from agentiam.core.policy.authorizer import AuthzRequest, Decision
from agentiam.errors import (
    AuthenticationRequired,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    OAuthError,
)
from agentiam.ports import ApprovalQuery, Clock, Page, UnitOfWork, UnitOfWorkFactory
from agentiam.services.context import CallContext
from agentiam.services.decisions import DecisionPoint

__all__ = [
    "ApprovalPolicy",
    "ApprovalService",
    "ApproverTokens",
    "Authorized",
    "Use",
]

log = logging.getLogger("agentiam.approvals")
_SWEEP_BATCH = 500


@dataclass(frozen=True, slots=True)
class ApprovalPolicy:
    """``timeout_seconds``: how long a request waits for a decision (then it is
    expired, which denies); ``use_seconds``: how long an approved request may wait to
    be used; ``max_pending_per_agent``: open requests an agent may have at once (past
    it, opening is refused); ``max_wait_seconds``: the longest a caller may block
    waiting for a decision."""

    timeout_seconds: float = 300.0
    use_seconds: float = 300.0
    max_pending_per_agent: int = 20
    max_wait_seconds: float = 60.0


class ExternalTokens(Protocol):
    def verify(self, token: str, *, now: int) -> tuple[TrustedIssuer, ExternalSubject]: ...


@dataclass(frozen=True, slots=True)
class Use:
    """The outcome of using an approval for a call: ``consumed`` (it is now used up,
    and ``decision_id`` is the id the decision it allows must carry), or not, with
    the request as it stands (pending, denied, expired or already consumed)."""

    approval: ApprovalRequest
    consumed: bool
    decision_id: str | None = None


@dataclass(frozen=True, slots=True)
class Authorized:
    """A decision of ``POST /v1/authorize`` and the approval it opened or used."""

    decision: Decision
    approval: ApprovalRequest | None = None


class ApproverTokens:
    """Authenticates a human who decides with their own bearer token: a token from a
    trusted external OpenID Connect issuer (the same verifier token exchange uses)
    linked to a registered human, or a human subject token AgentIAM minted.

    A token made to be handed to an agent cannot approve. Every approver token must
    name this service's approvals API (``<issuer>/v1/approvals``) in ``aud``: an
    AgentIAM token is minted for that purpose (``purpose: approval``) and is never a
    delegation subject token (those carry the authorization server's audience), and an
    external one is issued by the IdP for approving. A token naming an actor in
    ``may_act`` (RFC 8693 section 4.4) or already exchanged for an agent is refused as
    well. One opaque 401 for every refusal."""

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        *,
        issuer: str,
        verifier: AccessTokenVerifier,
        ensure_fresh: Callable[[], None],
        external: ExternalTokens | None,
    ) -> None:
        self._uow = uow
        self._issuer = issuer
        self.audience = issuer.rstrip("/") + "/v1/approvals"
        self._verifier = verifier
        self._ensure_fresh = ensure_fresh
        self._external = external

    def authenticate(self, token: str) -> str:
        """The id of the registered human the token is for, or AuthenticationRequired."""
        refused = AuthenticationRequired(
            "the token is not a valid approver token",
            hint="Present an admin key with approvals:decide, or your own token from "
            "the identity provider issued for the approvals API.",
        )
        epoch = int(time.time())
        issuer = peek_issuer(token)
        if issuer is None:
            raise refused
        if issuer == self._issuer:
            self._ensure_fresh()
            try:
                access = self._verifier.verify_token(token, now=epoch, any_audience=True)
            except OAuthError:
                raise refused from None
            audience = access.claims.get("aud")
            if (
                # minted for approving (purpose "approval"), never a delegation subject
                # token: one of those may be in an agent's hands
                audience != self.audience
                or not is_id(access.subject, "human")
                or access.client_id != access.subject
                or access.chain.delegated
                or access.chain.may_act is not None
            ):
                raise refused
            with self._uow(read_only=True) as uow:
                if uow.humans.get(access.subject) is None:
                    raise refused
                if uow.token_graph.children([access.jti]):
                    raise refused  # handed to an agent already
            return access.subject
        if self._external is None:
            raise refused
        try:
            trusted, subject = self._external.verify(token, now=epoch)
        except Exception:
            raise refused from None
        audience = subject.claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if self.audience not in audiences or subject.may_act is not None:
            raise refused
        with self._uow(read_only=True) as uow:
            human = uow.humans.get_by_external(trusted.issuer, subject.subject)
        if human is None:
            raise refused
        return human.id


def approver_of(ctx: CallContext) -> Approver:
    """The approver an admin key's or the CLI's caller is: an operator, or the human
    a human actor is."""
    if ctx.actor.type is ActorType.HUMAN:
        return Approver("human", ctx.actor.id)
    return Approver("operator", f"{ctx.actor.type.value}:{ctx.actor.id}")


class ApprovalService:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        clock: Clock,
        *,
        decisions: DecisionPoint,
        policy: ApprovalPolicy | None = None,
        limits: Limits | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self._uow = uow
        self._clock = clock
        self._decisions = decisions
        self.policy = policy or ApprovalPolicy()
        self._limits = limits or Limits()
        self._redactor = redactor or Redactor()
        self._listeners: list[Callable[[], None]] = []
        self._listeners_lock = threading.Lock()
        self.changes = 0  # bumped on every change this process makes

    # -- change notifications (adapters/http/longpoll.py Signals) ---------------------

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None]:
        with self._listeners_lock:
            self._listeners.append(wake)

        def unsubscribe() -> None:
            with self._listeners_lock:
                if wake in self._listeners:
                    self._listeners.remove(wake)

        return unsubscribe

    def _changed(self) -> None:
        self.changes += 1
        with self._listeners_lock:
            listeners = list(self._listeners)
        for wake in listeners:
            try:
                wake()
            except Exception:
                log.warning("approval listener failed", exc_info=True)

    # -- reads --------------------------------------------------------------------------

    def get(self, approval_id: str) -> ApprovalRequest:
        with self._uow(read_only=True) as uow:
            found = uow.approvals.get(approval_id)
        if found is None:
            raise NotFound(f"approval request {approval_id} does not exist")
        return found.as_of(self._clock.now())

    def find(self, query: ApprovalQuery) -> Page[ApprovalRequest]:
        with self._uow(read_only=True) as uow:
            page = uow.approvals.find(query)
        now = self._clock.now()
        return Page([a.as_of(now) for a in page.items], page.next_after)

    # -- opening ------------------------------------------------------------------------

    def open(
        self, ctx: CallContext, request: AuthzRequest, *, decision_id: str | None = None
    ) -> ApprovalRequest:
        """For an enforcement point (``POST /v1/approvals``): open, or find the pending,
        request for a call it denied. The control plane decides the call again with
        its own policy: one that is allowed, or that approval would not allow, is
        refused (409), so nothing but an approvable deny reaches the queue."""
        authorizer = self._decisions.authorizer
        decision = authorizer.decide(request, count=False)
        if decision.allowed:
            raise Conflict("the call is allowed without approval")
        if not approvable(authorizer, decision):
            raise Conflict(
                "a human's approval would not allow this call; it stays denied",
                hint="Only a deny from a policy that asks for approval can be approved.",
            )
        return self._open(ctx, request, decision.policies, decision_id or decision.decision_id)

    def _open(
        self,
        ctx: CallContext,
        request: AuthzRequest,
        policies: tuple[str, ...],
        decision_id: str | None,
    ) -> ApprovalRequest:
        agent_id = request.principal.id
        args = request.context.get("args")
        args = args if isinstance(args, Mapping) else {}
        fingerprint = _fingerprint(request)
        delegation = request.context.get("delegation")
        delegation = delegation if isinstance(delegation, Mapping) else {}
        human = delegation.get("initiating_human")
        actors = delegation.get("actors")
        now = self._clock.now()
        with self._uow() as uow:
            uow.approvals.lock_agent(agent_id)
            existing = uow.approvals.pending_for(agent_id, fingerprint)
            if existing is not None and existing.expires_at > now:
                return existing  # a retry: the same request, no new one
            events: list[AuditEvent] = []
            if existing is not None:  # past its deadline, not yet swept
                expired = uow.approvals.transition(
                    existing.id, expect=[ApprovalState.PENDING], to=ApprovalState.EXPIRED
                )
                if expired is not None:
                    events.append(self._event(ctx, expired, now))
            if uow.approvals.count_pending(agent_id, now) >= self.policy.max_pending_per_agent:
                raise Conflict(
                    f"agent {agent_id} already has {self.policy.max_pending_per_agent} "
                    "approval requests waiting; no more are opened until they are decided",
                    hint="Decide or let the pending requests expire (agentiam approvals list).",
                )
            call = {
                "action": request.action,
                "resource_type": request.resource.type,
                "resource_id": request.resource.id,
            }
            approval = ApprovalRequest(
                id=new_id("approval"),
                agent_id=agent_id,
                action=request.action,
                resource=request.resource,
                fingerprint=fingerprint,
                state=ApprovalState.PENDING,
                created_at=now,
                expires_at=now + timedelta(seconds=self.policy.timeout_seconds),
                policies=tuple(policies),
                initiating_human=human if isinstance(human, str) else None,
                delegation_chain=tuple(a for a in actors or () if isinstance(a, str))
                if isinstance(actors, list)
                else (agent_id,),
                argument_names=tuple(sorted(str(k) for k in args)),
                arguments=self._redactor.arguments(args, call),
                decision_id=decision_id,
                requested_by=ctx.source[:128],
                resource_parents=placement(request.resource_parents),
                resource_attributes=dict(request.resource_attributes),
            )
            uow.approvals.add(approval)
            events.append(self._event(ctx, approval, now))
            uow.audit.append_many(events)
            uow.commit()
        self._changed()
        return approval

    # -- deciding -----------------------------------------------------------------------

    def decide(
        self,
        ctx: CallContext,
        approval_id: str,
        *,
        approve: bool,
        reason: str,
        approver: Approver | None = None,
    ) -> ApprovalRequest:
        """Approve or deny a pending request, with a reason. ``approver`` defaults to
        the caller (:func:`approver_of`). A human must be an owner or sponsor of the
        agent (403 otherwise); a request already decided, or past its deadline, is
        409 (and one past its deadline is recorded expired)."""
        who = approver or approver_of(ctx)
        text = normalize_display_text(
            reason, field="reason", max_length=self._limits.max_reason_length
        )
        now = self._clock.now()
        with self._uow() as uow:
            current = uow.approvals.get(approval_id)
            if current is None:
                raise NotFound(f"approval request {approval_id} does not exist")
            if who.kind == "human":
                self._check_human(uow, who.id, current.agent_id)
            elif who.kind != "operator":
                raise Forbidden("only an operator or a human may decide an approval request")
            to = ApprovalState.APPROVED if approve else ApprovalState.DENIED
            values: dict[str, object] = {
                "decided_by": who.label[:140],
                "decided_at": now,
                "decision_reason": text,
            }
            if approve:
                values["expires_at"] = now + timedelta(seconds=self.policy.use_seconds)
            updated = uow.approvals.transition(
                approval_id, expect=[ApprovalState.PENDING], to=to, live_at=now, values=values
            )
            if updated is None:
                if current.state is ApprovalState.PENDING and current.expires_at <= now:
                    expired = uow.approvals.transition(
                        approval_id, expect=[ApprovalState.PENDING], to=ApprovalState.EXPIRED
                    )
                    if expired is not None:
                        uow.audit.append(self._event(ctx, expired, now))
                        uow.commit()
                        self._changed()
                    raise Conflict(
                        "the approval request expired before it was decided; it is denied"
                    )
                state = current.as_of(now).state.value
                raise Conflict(f"the approval request is {state} already")
            uow.audit.append(self._event(ctx, updated, now))
            uow.commit()
        self._changed()
        return updated

    @staticmethod
    def _check_human(uow: UnitOfWork, human_id: str, agent_id: str) -> None:
        agent = uow.agents.get(agent_id)
        if agent is None or human_id not in (*agent.owners, *agent.sponsors):
            raise Forbidden(
                "only an owner or sponsor of the agent, or an operator, may decide this "
                "approval request"
            )

    # -- using --------------------------------------------------------------------------

    def use(self, ctx: CallContext, approval_id: str, request: AuthzRequest) -> Use:
        """Use an approval for ``request``: consumed (single use) when it is approved,
        unexpired, for this agent and for exactly this call (fingerprint, which binds
        the parents the call's resource is placed in and the attributes derived for it
        too); a request for another agent or another call is refused (403) and left
        as it is."""
        fingerprint = _fingerprint(request)
        now = self._clock.now()
        decision_id = new_id("decision")
        with self._uow() as uow:
            current = uow.approvals.get(approval_id)
            if (
                current is None
                or request.principal.type != "Agent"
                or current.agent_id != request.principal.id
                or current.fingerprint != fingerprint
            ):
                raise Forbidden(
                    "the approval is not for this call",
                    hint="An approval holds for exactly the call it was requested for: "
                    "same agent, action, resource and arguments.",
                )
            used = uow.approvals.transition(
                approval_id,
                expect=[ApprovalState.APPROVED],
                to=ApprovalState.CONSUMED,
                live_at=now,
                agent_id=current.agent_id,
                fingerprint=fingerprint,
                values={"consumed_at": now, "consumed_decision_id": decision_id},
            )
            if used is None:
                return Use(current.as_of(now), consumed=False)
            uow.audit.append(self._event(ctx, used, now))
            uow.commit()
        self._changed()
        return Use(used, consumed=True, decision_id=decision_id)

    # -- the decision point, with approvals --------------------------------------------

    def authorize(
        self, ctx: CallContext, request: AuthzRequest, *, approval_id: str | None = None
    ) -> Authorized:
        """``POST /v1/authorize`` for one request. With ``approval_id``: the approval
        is used for exactly this call and, when consumed, the call is decided as
        approved by its approver (the decision carries the id the consumption
        recorded); otherwise the call is decided as is. Without: a deny that a human
        could lift opens (or finds) an approval request."""
        if approval_id is not None:
            if "approval" in request.context:
                raise InvalidInput("context.approval and context.approval_id are exclusive")
            use = self.use(ctx, approval_id, request)
            if not use.consumed:
                decision = self._decisions.decide(ctx, [request])[0]
                return Authorized(decision, use.approval)
            # the same request, placed alike: only the context says approved
            approved = replace(
                request, context=approved_context(request.context, use.approval.approver)
            )
            assert use.decision_id is not None
            decision = self._decisions.decide(ctx, [approved], decision_ids=[use.decision_id])[0]
            return Authorized(decision, use.approval)
        decision = self._decisions.decide(ctx, [request])[0]
        if decision.allowed or not approvable(self._decisions.authorizer, decision):
            return Authorized(decision)
        approval = self._open(ctx, request, decision.policies, decision.decision_id)
        return Authorized(decision, approval)

    # -- expiry -------------------------------------------------------------------------

    def expire_due(self, ctx: CallContext) -> list[ApprovalRequest]:
        """Mark every request past its deadline expired (a pending one is thereby
        denied; an approved one was not used in time), each audited."""
        out: list[ApprovalRequest] = []
        while True:
            now = self._clock.now()
            with self._uow() as uow:
                expired = uow.approvals.expire_due(now, _SWEEP_BATCH)
                if not expired:
                    break
                uow.audit.append_many([self._event(ctx, a, now) for a in expired])
                uow.commit()
            out.extend(expired)
            if len(expired) < _SWEEP_BATCH:
                break
        if out:
            self._changed()
        return out

    # -- audit ------------------------------------------------------------------------

    @staticmethod
    def _event(ctx: CallContext, approval: ApprovalRequest, now: datetime) -> AuditEvent:
        state = approval.state.value
        type_ = APPROVAL_EVENTS[state]
        outcome = Outcome.DENIED if state in ("denied", "expired") else Outcome.SUCCESS
        decision_id = (
            approval.consumed_decision_id
            if approval.state is ApprovalState.CONSUMED
            else approval.decision_id
        )
        details: dict[str, Any] = {
            "approval_id": approval.id,
            "state": state,
            "fingerprint": approval.fingerprint,
            "expires_at": approval.expires_at.isoformat(),
            "policies": list(approval.policies),
            "approver": approval.decided_by,
            "requested_by": approval.requested_by,
            "resource_parents": [p.to_json() for p in approval.resource_parents],
            "resource_attributes": dict(approval.resource_attributes),
        }
        if approval.state is ApprovalState.PENDING:
            details["argument_names"] = list(approval.argument_names)
            details["arguments"] = dict(approval.arguments)
        if approval.state is ApprovalState.CONSUMED:
            details["opened_by_decision"] = approval.decision_id
        return AuditEvent.create(
            type=type_,
            actor=ctx.actor,
            action=approval.action,
            source=ctx.source,
            trace=ctx.trace,
            now=now,
            outcome=outcome,
            resource=ResourceRef(approval.resource.type, approval.resource.id),
            agent_id=approval.agent_id,
            initiating_human=approval.initiating_human,
            delegation_chain=approval.delegation_chain,
            decision_id=decision_id,
            reason=(approval.decision_reason or ", ".join(approval.policies) or None),
            details=details,
        )


def _fingerprint(request: AuthzRequest) -> str:
    """The call's fingerprint (:func:`request_fingerprint`): its agent, action,
    resource, the parents its enforcement point placed the resource in and the
    attributes it derived for it, and its complete ``context.args``; InvalidInput for
    arguments that cannot be bound."""
    args = request.context.get("args")
    try:
        return request_fingerprint(
            request.principal,
            request.action,
            request.resource,
            args if isinstance(args, Mapping) else {},
            request.resource_parents,
            request.resource_attributes,
        )
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
