"""The decision every enforcement point makes for every call, in one place.

For one call (an MCP ``tools/call``, an HTTP request matched to a route, a guarded
Python function) :class:`Enforcer` runs, in this order, and stops at the first
refusal:

1. **Authenticate** (:meth:`Enforcer.authenticate`): a DPoP-bound access token
   (RFC 9449) whose audience is this gateway (RFC 8707), verified locally against
   the cached JWKS and revocation set. A refusal is 401 with ``WWW-Authenticate``
   naming the gateway's protected-resource metadata (RFC 9728 section 5.1).
2. **Rate limit** per agent and per (agent, tool), and, when configured, per human
   the token acts for and per delegation chain (``per_human``, ``per_chain``;
   :func:`~agentiam.core.delegation.enforcement.rate_parties`): 429 with
   ``Retry-After``, the reason naming a pooled limit that refused. A request that is
   not a call but costs work of its own (an MCP ``initialize`` or listing) takes a
   token from the agent's own buckets and the pooled ones
   (:meth:`Enforcer.admit_request`).
3. **Task scope**: a token carrying ``authorization_details`` (RFC 9396) permits only
   the calls one of its entries covers (``token_permits``): else 403.
4. **Policy**: the local Cedar authorizer, with the delegation chain and the token's
   authorization details in the context: 403 ``insufficient_scope``-style refusal on
   deny (RFC 6750 section 3.1), naming the reason. A deny that a human's approval
   would lift is marked ``approvable`` (:func:`agentiam.core.approvals.approvable`):
   the transport then opens an approval request (``approvals``); a call retried with
   an approval the control plane consumed for it is decided as approved.

Every outcome, allowed or refused, becomes an audit event that is **durable in the
local spool before the call goes on** (or is answered): if the spool cannot take it,
the call is refused with 503, so there is never an unlogged allow. An event loop runs
these methods inside :meth:`Enforcer.deferred` and awaits the spool's fsync instead of
blocking a thread on it (then it, not the method, waits before acting). After the upstream
answers, :meth:`Enforcer.record_outcome` adds a ``tool.call`` event with the status,
the brokered secret's ``name@version`` (never its value) and the duration.

A gateway's refusals of requests that name nobody (no verified access, and no token
that verifies on its own) are the exception to "every refusal its own event": with a
budget (``anonymous``, :class:`~agentiam.core.enforcement.anonymous.AnonymousRefusals`,
keyed by the network peer the transport passes as ``peer``), those past it are
counted in a summary (:meth:`Enforcer.record_refusal_summary`,
:data:`REFUSAL_SUMMARY_EVENT_TYPE`) instead. The refusal itself is the same.

Every refusal event, and every decision event, names that ``peer`` when the transport
passed it (``details.peer``: the connection's network address as the server saw it,
never a header), whoever the request named: OCSF exports it as ``src_endpoint.ip``,
CEF as ``src`` (IPv4) or ``c6a2`` (IPv6).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, NamedTuple, NoReturn, Protocol

from agentiam.adapters.gateway.approvals import ApprovalClient, ApprovedUse
from agentiam.adapters.gateway.link import ControlPlaneLink
from agentiam.adapters.gateway.mcp_visibility import Listed, listing_event
from agentiam.core.approvals import approvable, approved_context
from agentiam.core.audit.events import (
    Actor,
    ActorType,
    AuditEvent,
    Outcome,
    ResourceRef,
    TraceContext,
    event_time_text,
)
from agentiam.core.audit.redaction import Redactor
from agentiam.core.credentials.dpop import DPOP_PROFILE
from agentiam.core.credentials.jose import JoseRejected, import_public_jwk, parse_compact
from agentiam.core.credentials.verifier import ProofUse, VerifiedAccess
from agentiam.core.delegation.authorization_details import ApiCall, CustomCall, ToolCall
from agentiam.core.delegation.enforcement import (
    delegation_context,
    initiating_human,
    rate_parties,
    token_permits,
)
from agentiam.core.enforcement.anonymous import AnonymousRefusals, RefusalSummary
from agentiam.core.enforcement.ratelimit import (
    BucketKey,
    RateLimit,
    RateLimiter,
    RateRefusal,
    refusal_reason,
)
from agentiam.core.policy.authorizer import AuthzRequest
from agentiam.core.policy.model import EntityRef
from agentiam.errors import AgentIAMError, OAuthError, ServiceUnavailable
from agentiam.services.context import CallContext
from agentiam.services.decisions import decision_event

__all__ = [
    "REFUSAL_SUMMARY_EVENT_TYPE",
    "STREAM_OPENED_EVENT_TYPE",
    "Call",
    "DeferredSink",
    "Enforcer",
    "EventSink",
    "Pending",
    "SharedReplay",
    "Verdict",
]

REFUSAL_SUMMARY_EVENT_TYPE = "api.request.rejected.summary"
"""The event counting a peer's anonymous refusals past the budget
(:meth:`Enforcer.record_refusal_summary`), one of the types ingest takes from an
enforcement point (``services/enforcement_sync.py``); OCSF API Activity: Other, with
``count``, ``start_time`` and ``end_time`` (``core/audit/ocsf.py``)."""

STREAM_OPENED_EVENT_TYPE = "mcp.stream.opened"
"""The event of a long-lived stream the MCP gateway admitted (a ``subscriptions/listen``
stream, or a handshake-era session's GET stream: :meth:`Enforcer.record_stream_opened`),
one of the types ingest takes from an enforcement point
(``services/enforcement_sync.py``); OCSF API Activity: Read (``core/audit/ocsf.py``).
Its end, when the gateway ends it, is an ``api.request.rejected``."""


class EventSink(Protocol):
    """Where an enforcement point's audit events go: ``append`` returns only once they
    are durable (the gateway's local spool), and raises if they cannot be."""

    def append(self, events: list[dict[str, Any]]) -> None: ...


@dataclass(frozen=True, slots=True)
class Call:
    """One attempted call, as policy sees it."""

    action: str  # the Cedar action, e.g. "invoke_tool"
    resource: EntityRef  # e.g. Tool::"search" or Endpoint::"GET /v1/invoices"
    detail: ToolCall | ApiCall | CustomCall  # what token_permits checks
    tool: str  # the rate-limit key (tool or route name)
    args: Mapping[str, Any] | None = None  # tool arguments, for context.args
    # where the call goes, for the audit trail's ``details.target`` (e.g. the HTTP
    # gateway's ``{"host": <upstream host>}``); detection reads it
    target: Mapping[str, str] | None = None
    # parents the resource has whatever the catalog says (AuthzRequest.resource_parents)
    resource_parents: tuple[EntityRef, ...] = ()
    # attributes the enforcement point derived for the resource from its configuration
    # (AuthzRequest.resource_attributes: the MCP gateway's from a trusted server's tool
    # annotations, ListedTools.attributes), never from the agent's request
    resource_attributes: Mapping[str, Any] = field(default_factory=dict)

    def decided_in(self, parents: Sequence[EntityRef]) -> bool:
        """Whether this call's decision placed its resource in each of ``parents``
        (the gateway's own: the MCP gateway's ``McpServer``, the HTTP gateway's
        ``Api``). A transport forwards a call only to where it was decided: checked
        before forwarding, so a call built without its parents is never let through."""
        return all(p in self.resource_parents for p in parents)

    def context(self, access: VerifiedAccess) -> dict[str, Any]:
        ctx = delegation_context(access)
        if self.args is not None:
            ctx["args"] = dict(self.args)
        return ctx


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    status: int  # 200 when allowed; 401, 403, 429 or 503 when not
    error: str | None  # the wire error code of a refusal
    reason: str
    decision_id: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    approvable: bool = False  # a deny that a human's approval would lift


class ReplayRecord(NamedTuple):
    """A DPoP proof's record in the replicas' shared replay cache: its key, and for
    how many milliseconds it is kept (RFC 9449 section 11.1)."""

    key: str
    ttl_ms: int


class ProofReplayed(Exception):
    """The replicas' shared replay cache had recorded the proof already."""


class SharedReplay(Protocol):
    """A replay cache every replica of a gateway consults
    (:class:`~agentiam.adapters.gateway.shared_replay.SharedReplayCache`)."""

    def record(self, use: ProofUse, *, now: int) -> ReplayRecord: ...

    async def first_use(self, use: ProofUse, *, now: int) -> bool: ...

    async def aclose(self) -> None: ...


class SharedLimits(Protocol):
    """Rate-limit buckets every replica of a gateway takes from
    (:class:`~agentiam.adapters.gateway.shared_ratelimit.SharedRateLimits`), in the
    same store as the :class:`SharedReplay`, so that one request can record its proof
    and take its tokens in one round trip (``proof``; raises :class:`ProofReplayed`)."""

    async def take(
        self,
        buckets: Sequence[tuple[BucketKey, RateLimit]],
        *,
        proof: ReplayRecord | None = None,
    ) -> RateRefusal | None: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SharedLimit:
    """What the replicas' shared buckets answered for one call (or one request that
    is not a call, :meth:`Enforcer.admit_request`): None, a token was taken; else the
    ``Retry-After`` seconds, and ``limits`` the pooled limits (``per_human``,
    ``per_chain``) that refused, for the refusal's reason (empty when only the
    agent's own did)."""

    retry_after: int | None
    limits: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SharedAdmission:
    """What the replicas' shared store answered for one request
    (:meth:`Enforcer.shared_admit`). ``refusal``: the 401 for a replayed proof, or
    the 503 of a store that cannot answer, not yet audited
    (:meth:`Enforcer.refuse_shared`). ``limit``: for :meth:`Enforcer.decide` (or
    :meth:`Enforcer.admit`); None when no shared bucket was charged."""

    refusal: AgentIAMError | None = None
    limit: SharedLimit | None = None


class Enforcer:
    def __init__(
        self,
        name: str,
        link: ControlPlaneLink,
        sink: EventSink,
        *,
        resource_metadata: str,
        limiter: RateLimiter | None = None,
        redactor: Redactor | None = None,
        kind: str = "gateway",
        approvals: ApprovalClient | None = None,
        shared_replay: SharedReplay | None = None,
        shared_limits: SharedLimits | None = None,
        anonymous: AnonymousRefusals | None = None,
    ) -> None:
        """``name`` names this enforcement point in the audit trail (``source`` is
        ``<kind>/<name>``); ``resource_metadata`` is the URL of its RFC 9728
        metadata document, named in every 401 challenge. ``shared_replay`` and
        ``shared_limits``: the replicas' replay cache and rate-limit buckets, in one
        store, consulted by :meth:`shared_admit`. ``anonymous``: the budget of
        refusals naming nobody audited one by one (None: every refusal is)."""
        self.name = name
        self.source = f"{kind}/{name}"
        self.link = link
        self._sink = sink
        self._metadata = resource_metadata
        self._limiter = limiter
        self._redactor = redactor or Redactor()
        self.approvals = approvals  # None: no approvals; an approvable deny stays a deny
        self.shared_replay = shared_replay
        self.shared_limits = shared_limits
        self.anonymous = anonymous
        # RFC 6750 section 3.1 error code in an RFC 9449 section 7.1 challenge
        self._insufficient_scope = (
            f'DPoP error="insufficient_scope", resource_metadata="{resource_metadata}"'
        )

    # -- 1. authenticate ---------------------------------------------------------------

    def authenticate(
        self,
        *,
        authorization: Sequence[str],
        dpop: Sequence[str],
        method: str,
        url: str,
        trace: TraceContext,
        peer: str | None = None,
    ) -> VerifiedAccess:
        """Verify the request's DPoP-bound token; on failure the refusal is audited and
        the OAuthError (with its challenge) raised for the transport to render.
        ``peer``: the connection's network peer (its address), the key of the budget
        of refusals naming nobody."""
        try:
            return self.link.verifier.verify_request(
                authorization=authorization,
                dpop=dpop,
                method=method,
                url=url,
                now=int(time.time()),
            )
        except OAuthError as exc:
            self._name_metadata(exc)
            self._record_refusal(
                None,
                trace,
                status=exc.oauth_status,
                reason=f"{exc.error}: {exc.reason}",
                presented=self._presented(authorization, dpop),
                peer=peer,
            )
            raise

    def _name_metadata(self, exc: OAuthError) -> None:
        """RFC 9728 section 5.1: a challenge names this resource's metadata."""
        challenge = exc.headers.get("WWW-Authenticate")
        if challenge is not None:
            exc.headers["WWW-Authenticate"] = f'{challenge}, resource_metadata="{self._metadata}"'

    async def shared_admit(
        self, access: VerifiedAccess, *, charge: bool, tool: str | None = None
    ) -> SharedAdmission:
        """Step 1 and the rate limit across replicas, in one round trip to their
        shared store, after :meth:`authenticate` passed the request through this
        process's own replay cache:

        - the request's DPoP proof is recorded in the shared replay cache, and refused
          (401 ``invalid_dpop_proof``) when another request recorded it first;
        - ``charge`` (a call to decide): a token is taken from each of the call's
          buckets for ``tool`` in the shared store (the same buckets, limits and
          throttles this process's limiter would use). A replayed proof takes none.
          The answer goes to :meth:`decide` (or :meth:`admit`), which then charges
          nothing locally.
        - ``charge`` without a ``tool``: a request that is not a call
          (:meth:`admit_request`): a token is taken from the agent's own buckets
          (``per_agent``, a throttle in force) and the pooled ones (``per_human``,
          ``per_chain``), never a per-tool one.

        The shared store answering 503 (ServiceUnavailable) is a refusal too: an
        unrecorded proof is never accepted, a call never let through uncounted.
        Nothing to do (no shared store, no proof): an empty admission."""
        now, proof, replay = int(time.time()), access.proof, self.shared_replay
        try:
            if charge and self.shared_limits is not None and self._limiter is not None:
                record = None if replay is None or proof is None else replay.record(proof, now=now)
                human, chain = self._parties(access)
                buckets = self._limiter.buckets(access.client_id, tool, human=human, chain=chain)
                refused = await self.shared_limits.take(buckets, proof=record)
                limit = (
                    SharedLimit(None)
                    if refused is None
                    else SharedLimit(refused.retry_after, refused.pooled)
                )
                return SharedAdmission(limit=limit)
            if (
                replay is not None
                and proof is not None
                and not await replay.first_use(proof, now=now)
            ):
                raise ProofReplayed
        except ProofReplayed:
            error = self.link.verifier.replayed()
            self._name_metadata(error)
            return SharedAdmission(refusal=error)
        except ServiceUnavailable as exc:
            return SharedAdmission(refusal=exc)
        return SharedAdmission()

    def refuse_shared(
        self,
        access: VerifiedAccess,
        error: AgentIAMError,
        *,
        trace: TraceContext,
        peer: str | None = None,
    ) -> None:
        """Audit a :meth:`shared_admit` refusal (durable, or deferred)."""
        if isinstance(error, OAuthError):
            status, reason = error.oauth_status, f"{error.error}: {error.reason} (shared cache)"
        else:
            status, reason = 503, error.detail
        self._record_refusal(access, trace, status=status, reason=reason, peer=peer)

    def _presented(self, authorization: Sequence[str], dpop: Sequence[str]) -> dict[str, str]:
        """Who a refused request's credentials name, when its token verifies on its own
        (a stolen token shown with a proof by another key, or without its proof): the
        token's ``client_id`` and ``jti`` and the presented proof key's thumbprint
        (RFC 7638, as ``cnf.jkt`` in RFC 9449 section 6.1), never the token itself.
        Empty when the token does not verify (then nothing it claims is trusted)."""
        if len(authorization) != 1:
            return {}
        scheme, _, token = authorization[0].partition(" ")
        token = token.strip()
        if scheme.lower() not in ("dpop", "bearer") or not token:
            return {}
        try:  # the verified-token cache answers a token seen before
            access = self.link.verifier.verify_token(token, now=int(time.time()))
        except OAuthError:
            return {}
        out = {"client_id": access.client_id, "jti": access.jti}
        jkt = proof_thumbprint(dpop[0]) if len(dpop) == 1 else None
        if jkt is not None:
            out["jkt"] = jkt
        return out

    # -- 2-4. decide -------------------------------------------------------------------

    def request_for(self, access: VerifiedAccess, call: Call) -> AuthzRequest:
        """The policy request of a call: what is decided, and what an approval for it
        is bound to (the control plane computes the fingerprint from it)."""
        return AuthzRequest(
            EntityRef("Agent", access.client_id),
            call.action,
            call.resource,
            call.context(access),
            resource_parents=call.resource_parents,
            resource_attributes=call.resource_attributes,
        )

    def admit(
        self,
        access: VerifiedAccess,
        call: Call,
        *,
        trace: TraceContext,
        limit: SharedLimit | None = None,
        peer: str | None = None,
    ) -> Verdict | None:
        """The checks before policy: the rate limit (a token is taken when it passes)
        and the token's task scope. The refusal (429 with Retry-After, or 403), audited
        and durable, or None when both pass. An approval is used only after this, so a
        retry the rate limit refuses keeps its approval for the next try. ``limit``:
        the replicas' shared buckets already answered (:meth:`shared_admit`), so this
        process's own are not charged. ``peer``: the connection's network address,
        named in a refusal's event."""
        refused = self._rate_limit(access, call.tool, limit)
        if refused is not None:
            verdict = Verdict(
                False,
                429,
                "rate_limited",
                refusal_reason(call.tool, refused.pooled),
                headers={"Retry-After": str(refused.retry_after)},
            )
            self._record_refusal(
                access, trace, status=429, reason=verdict.reason, call=call, peer=peer
            )
            return verdict
        permits = token_permits(access, call.detail)
        if not permits.allowed:
            verdict = Verdict(
                False,
                403,
                "insufficient_scope",
                permits.reason,
                headers={"WWW-Authenticate": self._insufficient_scope},
            )
            self._record_refusal(
                access, trace, status=403, reason=permits.reason, call=call, peer=peer
            )
            return verdict
        return None

    def admit_request(
        self,
        access: VerifiedAccess,
        method: str,
        *,
        trace: TraceContext,
        limit: SharedLimit | None = None,
        peer: str | None = None,
    ) -> Verdict | None:
        """The rate limit of a request that is not a call but costs the gateway work
        of its own: an MCP ``initialize`` (it opens a session) or a listing (a policy
        question per item, and an audit event). It takes a token from the agent's own
        buckets (``per_agent`` and a throttle in force) and from the pooled ones
        that apply (``per_human``, ``per_chain``), never a per-tool one (it names no
        tool). The refusal (429 with ``Retry-After``), audited and durable
        with ``method`` as its action, or None when a token was taken. ``limit``: the
        replicas' shared buckets already answered (:meth:`shared_admit` with no
        ``tool``), so this process's are not charged. Listings still do not count in
        ``context.request_rate`` (that is the authorizer's, not the limiter's)."""
        refused = self._rate_limit(access, None, limit)
        if refused is None:
            return None
        reason = refusal_reason(method, refused.pooled)
        self._record_refusal(access, trace, status=429, reason=reason, action=method, peer=peer)
        return Verdict(
            False, 429, "rate_limited", reason, headers={"Retry-After": str(refused.retry_after)}
        )

    def _parties(self, access: VerifiedAccess) -> tuple[str | None, tuple[str, str] | None]:
        """The human and the chain whose pooled buckets a call of ``access`` takes
        from, each None when its limit is not configured (then it costs nothing)."""
        limiter = self._limiter
        if limiter is None or (limiter.per_human is None and limiter.per_chain is None):
            return None, None
        return rate_parties(
            access, human=limiter.per_human is not None, chain=limiter.per_chain is not None
        )

    def _rate_limit(
        self, access: VerifiedAccess, tool: str | None, limit: SharedLimit | None
    ) -> RateRefusal | None:
        """The rate limits' answer for a call to ``tool`` (None: a request that is not
        a call): the shared buckets' (``limit``, already charged; it names only the
        pooled limits that refused), else this process's limiter's (a token is taken
        from each bucket when it passes); None when allowed."""
        if limit is not None:
            if limit.retry_after is None:
                return None
            return RateRefusal(max(1, limit.retry_after), limit.limits)
        limiter = self._limiter
        if limiter is None:
            return None
        if limiter.per_human is None and limiter.per_chain is None:  # nothing more to read
            return limiter.take(access.client_id, tool, time.monotonic())
        human, chain = self._parties(access)
        return limiter.take(access.client_id, tool, time.monotonic(), human=human, chain=chain)

    def decide(
        self,
        access: VerifiedAccess,
        call: Call,
        *,
        trace: TraceContext,
        approval: ApprovedUse | None = None,
        admitted: bool = False,
        limit: SharedLimit | None = None,
        peer: str | None = None,
    ) -> Verdict:
        """Rate limit, task scope and policy, in that order; the verdict's event is
        durable before this returns (else ServiceUnavailable). With ``approval`` (one
        the control plane consumed for this call) the policy sees
        ``context.approval.state == "approved"`` and the decision carries the id the
        consumption recorded. ``admitted``: :meth:`admit` already passed this call (its
        rate-limit token is taken), so it is not charged twice. ``limit``: the shared
        buckets' answer (:meth:`admit`). ``peer``: the connection's network address,
        named in the decision's event (``details.peer``) as in a refusal's."""
        if not admitted:
            refused = self.admit(access, call, trace=trace, limit=limit, peer=peer)
            if refused is not None:
                return refused
        agent = access.client_id
        try:
            authorizer = self.link.authorizer()  # 503 past the outage bound
        except ServiceUnavailable as exc:
            self._record_refusal(access, trace, status=503, reason=exc.detail, call=call, peer=peer)
            raise
        request = self.request_for(access, call)
        if approval is not None:
            request = replace(request, context=approved_context(request.context, approval.approver))
        decision = authorizer.decide(request)
        if approval is not None:
            decision = replace(decision, decision_id=approval.decision_id)
        ctx = CallContext(actor=Actor(ActorType.AGENT, agent), source=self.source, trace=trace)
        event = decision_event(ctx, decision, now=_now(), redactor=self._redactor).to_dict()
        # the access token's id ties the decision to its tool.call (one session)
        event["details"]["jti"] = access.jti
        if call.target is not None:
            event["details"]["target"] = dict(call.target)
        if peer is not None:
            event["details"]["peer"] = peer
        self._durable([event])
        if decision.allowed:
            return Verdict(True, 200, None, "allowed", decision_id=decision.decision_id)
        reason = decision.reasons[0] if decision.reasons else "denied by policy"
        return Verdict(
            False,
            403,
            "insufficient_scope",
            reason,
            decision_id=decision.decision_id,
            headers={"WWW-Authenticate": self._insufficient_scope},
            approvable=(
                approval is None and self.approvals is not None and approvable(authorizer, decision)
            ),
        )

    def refuse(
        self,
        access: VerifiedAccess | None,
        *,
        trace: TraceContext,
        status: int,
        reason: str,
        call: Call | None = None,
        action: str | None = None,
        peer: str | None = None,
        authorization: Sequence[str] = (),
        dpop: Sequence[str] = (),
    ) -> None:
        """Audit a refusal the transport decided itself (no route for the request, a
        malformed request, a request that is not a call over the rate limit):
        durable before the refusal is answered, like every other (else
        ServiceUnavailable). ``action``: what was refused when it is not a ``call``
        (an MCP method, say; default ``authenticate``). A refusal before
        authentication (``access`` None) passes the request's ``authorization`` and
        ``dpop`` fields, so that one whose token verifies names its agent
        (:meth:`_presented`), and its network ``peer`` (:meth:`authenticate`)."""
        presented = self._presented(authorization, dpop) if access is None else None
        self._record_refusal(
            access,
            trace,
            status=status,
            reason=reason,
            call=call,
            action=action,
            presented=presented,
            peer=peer,
        )

    # -- after the call ----------------------------------------------------------------

    def record_outcome(
        self,
        access: VerifiedAccess,
        call: Call,
        verdict: Verdict,
        *,
        trace: TraceContext,
        outcome: Outcome,
        status: int | None,
        secret: str | None,
        duration_ms: float,
        error: str | None = None,
        reason: str | None = None,
        echoed: Mapping[str, int] | None = None,
    ) -> None:
        """The ``tool.call`` event of an allowed call once the upstream answered (or
        failed): its status, the brokered secret by ``name@version``, the time, and for
        an in-process call that raised, ``error`` (the exception's class name).
        ``reason``: why a call failed, in the gateway's words (never the upstream's);
        ``echoed``: how often the upstream echoed the brokered secret (``fields``
        dropped, ``body`` occurrences masked), recorded as ``details.echoed`` when
        given; never the secret itself."""
        ctx = CallContext(
            actor=Actor(ActorType.AGENT, access.client_id), source=self.source, trace=trace
        )
        event = AuditEvent.create(
            type="tool.call",
            actor=ctx.actor,
            action=call.action,
            source=self.source,
            trace=trace,
            now=_now(),
            outcome=outcome,
            resource=ResourceRef(call.resource.type, call.resource.id),
            agent_id=access.client_id,
            initiating_human=initiating_human(access),
            delegation_chain=tuple(access.chain.actors) or (access.client_id,),
            decision_id=verdict.decision_id,
            reason=reason or (None if error is None else f"raised {error}"),
            details={
                "tool": call.tool,
                "status": status,
                "error": error,
                # "secret" would be redacted by the event guard: the key names the
                # brokered secret by name@version, never its value
                "brokered": secret,
                **({"echoed": dict(echoed)} if echoed else {}),
                "duration_ms": round(duration_ms, 3),
                "jti": access.jti,
                **({"target": dict(call.target)} if call.target is not None else {}),
                "argument_names": sorted(call.args) if call.args else [],
                "arguments": self._redactor.arguments(
                    call.args or {},
                    {
                        "action": call.action,
                        "resource_type": call.resource.type,
                        "resource_id": call.resource.id,
                    },
                ),
            },
        )
        self._durable([event.to_dict()])

    # -- audit -----------------------------------------------------------------------

    def _record_refusal(
        self,
        access: VerifiedAccess | None,
        trace: TraceContext,
        *,
        status: int,
        reason: str,
        call: Call | None = None,
        presented: Mapping[str, str] | None = None,
        action: str | None = None,
        peer: str | None = None,
    ) -> None:
        """``presented``: what :meth:`_presented` learnt of an unauthenticated
        request's token (the agent it names, its ``jti``, the proof key's ``jkt``).
        ``action``: the event's action when there is no ``call``. A refusal that
        names nobody (no ``access``, nothing ``presented``) past the ``anonymous``
        budget for its ``peer`` is counted in a summary instead of recorded; one that
        is recorded names its ``peer`` (``details.peer``), whoever it names. Not a
        503: that is the gateway's own state (the control plane away past the
        outage bound, the spool full), in which it cannot tell an agent's call from
        an anonymous one, so each is recorded (the spool's bound bounds them)."""
        if (
            access is None
            and not presented
            and status != 503
            and self.anonymous is not None
            and not self.anonymous.admit(
                peer, status=status, reason=reason, trace_id=trace.trace_id
            )
        ):
            return
        actor = (
            Actor(ActorType.AGENT, access.client_id)
            if access is not None
            else Actor(ActorType.ANONYMOUS, "-")
        )
        details: dict[str, Any] = {"status": status, "tool": call.tool if call else None}
        if call is not None and call.target is not None:
            details["target"] = dict(call.target)
        if peer is not None:
            details["peer"] = peer
        agent_id = access.client_id if access is not None else None
        if access is not None:
            details["jti"] = access.jti
        elif presented:
            details.update(presented)
            agent_id = presented.get("client_id")
        event = AuditEvent.create(
            type="api.request.rejected",
            actor=actor,
            action=call.action if call is not None else (action or "authenticate"),
            source=self.source,
            trace=trace,
            now=_now(),
            outcome=Outcome.DENIED,
            resource=ResourceRef(call.resource.type, call.resource.id) if call else None,
            agent_id=agent_id,
            initiating_human=initiating_human(access) if access is not None else None,
            delegation_chain=tuple(access.chain.actors) if access is not None else (),
            reason=reason[:500],
            details=details,
        )
        self._durable([event.to_dict()])

    def record_refusal_summary(self, summary: RefusalSummary) -> None:
        """The :data:`REFUSAL_SUMMARY_EVENT_TYPE` event of one peer's anonymous
        refusals past the budget: actor anonymous, outcome denied; in ``details`` the
        peer, the count, the first and last time, counts by status and by reason code
        (lists, not mappings: a code is no member name the event guard could take for
        a secret's), and the trace ids of the first and last refusal. For an
        :class:`~agentiam.adapters.gateway.outcomes.OutcomeQueue`: nothing waits on
        it."""
        event = AuditEvent.create(
            type=REFUSAL_SUMMARY_EVENT_TYPE,
            actor=Actor(ActorType.ANONYMOUS, "-"),
            action="authenticate",
            source=self.source,
            trace=TraceContext.new(),
            now=_now(),
            outcome=Outcome.DENIED,
            reason=(
                f"{summary.count} refusals of requests naming nobody from {summary.peer} "
                "past the audit budget, counted here instead of recorded one by one"
            ),
            details={
                "peer": summary.peer,
                "count": summary.count,
                "first_time": event_time_text(summary.first),
                "last_time": event_time_text(summary.last),
                "statuses": [{"status": s, "count": n} for s, n in summary.statuses],
                "reasons": [{"reason": r, "count": n} for r, n in summary.reasons],
                "first_trace_id": summary.first_trace_id,
                "last_trace_id": summary.last_trace_id,
            },
        )
        self._durable([event.to_dict()])

    def record_stream_opened(
        self,
        access: VerifiedAccess,
        *,
        trace: TraceContext,
        action: str,
        stream: str,
        servers: Sequence[str],
    ) -> None:
        """The :data:`STREAM_OPENED_EVENT_TYPE` event of a stream the MCP gateway
        admitted, durable before the stream's first byte (else ServiceUnavailable):
        the agent (actor and ``agent_id``), the human a delegated token acts for
        (``initiating_human``) and the token's subject and ``jti``, ``action`` the
        request (``subscriptions/listen`` or ``GET``), ``stream`` its kind
        (``listen`` or ``session``), ``servers`` the upstream servers whose list
        changes it may carry, and the request's trace."""
        event = AuditEvent.create(
            type=STREAM_OPENED_EVENT_TYPE,
            actor=Actor(ActorType.AGENT, access.client_id),
            action=action,
            source=self.source,
            trace=trace,
            now=_now(),
            outcome=Outcome.SUCCESS,
            agent_id=access.client_id,
            initiating_human=initiating_human(access),
            delegation_chain=tuple(access.chain.actors) or (access.client_id,),
            details={
                "stream": stream,
                "status": 200,
                "subject": access.subject,
                "servers": list(servers),
                "jti": access.jti,
            },
        )
        self._durable([event.to_dict()])

    def record_listing(
        self,
        access: VerifiedAccess,
        method: str,
        items: Sequence[Listed],
        flags: Sequence[bool],
        *,
        trace: TraceContext,
        unavailable: Sequence[str] = (),
    ) -> None:
        """The ``mcp.list`` event of one MCP listing (``method``, the items listed and
        :meth:`Visibility.visible <agentiam.adapters.gateway.mcp_visibility.Visibility.
        visible>`'s flags for them: :func:`~agentiam.adapters.gateway.mcp_visibility.
        listing_event`), written to the sink and durable when this returns, also
        inside a :meth:`deferred` or :meth:`held` block: a listing is answered only
        once its event is (else ServiceUnavailable: the sink's own, a full spool's
        naming what is full and how to empty it, as for a call; :meth:`_durable`)."""
        event = listing_event(
            access,
            method,
            items,
            flags,
            source=self.source,
            trace=trace,
            now=_now(),
            unavailable=unavailable,
        )
        self._durable([event.to_dict()], now=True, what="listing")

    @contextmanager
    def deferred(self) -> Iterator[Pending]:
        """Within this block (on this thread or task), every method here hands its
        audit events to the sink without waiting for them to be durable, when the sink
        can (:class:`DeferredSink`). The caller **must** ``await pending.durable()``
        before it acts on anything decided in the block (forwards a call, answers a
        refusal): an event loop waits for the spool's fsync without blocking a thread.
        The pending writes are collected even when a method raises."""
        pending = Pending()
        token = _DEFERRED.set(pending.futures)
        try:
            yield pending
        finally:
            _DEFERRED.reset(token)

    @contextmanager
    def held(self) -> Iterator[list[dict[str, Any]]]:
        """Within this block (on this thread or task), every method here collects its
        audit events in the yielded list instead of handing them to the sink: the
        caller writes them later itself (the gateways' outcome events, which share
        the next call's group commit: adapters/gateway/outcomes.py). For events
        nothing waits on only."""
        held: list[dict[str, Any]] = []
        token = _HELD.set(held)
        try:
            yield held
        finally:
            _HELD.reset(token)

    def write_held(self, events: list[dict[str, Any]]) -> Future[None] | None:
        """Hand events collected in a :meth:`held` block to the sink without waiting
        for them, and without starting a write for them alone when the sink can
        (:class:`DeferredSink`: they go with the next write, or :meth:`flush`). The
        future completes once they are durable (None from a sink that writes at
        once). ServiceUnavailable if the sink refuses them now (:meth:`_durable`)."""
        return self._durable(events, quiet=True)

    def flush(self) -> None:
        """Write what :meth:`write_held` left queued now."""
        wake = getattr(self._sink, "wake", None)
        if wake is not None:
            wake()

    def _durable(
        self,
        events: list[dict[str, Any]],
        now: bool = False,  # not keyword-only: those defaults cost a dict look-up a call
        quiet: bool = False,
        what: str = "call",
    ) -> Future[None] | None:
        """The one place this enforcer's audit events go to its sink, and a sink that
        does not take them becomes the 503 the request is refused with
        (:func:`_unrecorded`, also :meth:`Pending.durable` for a write that fails
        later): one answer per failure, whichever method wrote.

        By default, as the block this runs in says: collected in a :meth:`held`
        block; handed over in a :meth:`deferred` block when the sink can
        (:class:`DeferredSink`; the future joins the block's :class:`Pending`);
        else appended, durable when this returns. ``now``: appended whatever the
        block (:meth:`record_listing`). ``quiet``: handed over without starting a
        write when the sink can, the future returned (:meth:`write_held`); else
        appended. ``what``: what is refused, in the 503 of a failure that is not the
        sink's own ServiceUnavailable.

        The hot path (every decision and refusal) takes the default: no call, await
        or allocation beyond the sink's own."""
        deferred: list[Future[None]] | None
        if now or quiet:
            deferred = None
        else:
            held = _HELD.get()
            if held is not None:
                held.extend(events)
                return None
            deferred = _DEFERRED.get()
        try:
            submit = None if deferred is None and not quiet else getattr(self._sink, "submit", None)
            if submit is None:
                self._sink.append(events)
            elif deferred is not None:
                deferred.append(submit(events))
            else:  # quiet
                future: Future[None] = submit(events, wake=False)
                return future
        except Exception as exc:
            _unrecorded(exc, what)
        return None


class DeferredSink(EventSink, Protocol):
    """A sink that can also take events without waiting: the future completes once
    they are durable (the gateway's spool, :meth:`AuditSpool.submit`)."""

    def submit(self, events: list[dict[str, Any]], *, wake: bool = True) -> Future[None]: ...

    def wake(self) -> None: ...


_DEFERRED: ContextVar[list[Future[None]] | None] = ContextVar(
    "agentiam_gateway_deferred", default=None
)
_HELD: ContextVar[list[dict[str, Any]] | None] = ContextVar("agentiam_gateway_held", default=None)


class Pending:
    """Audit events handed to the sink in an :meth:`Enforcer.deferred` block."""

    __slots__ = ("futures",)

    def __init__(self) -> None:
        self.futures: list[Future[None]] = []

    async def durable(self, timeout: float = 5.0) -> None:
        """Return once every event is durable; ServiceUnavailable if one cannot be
        made so within ``timeout`` seconds (the call must then be refused)."""
        for future in self.futures:
            try:
                if not future.done():
                    await _settled(future, timeout)
                future.result()
            except Exception as exc:
                _unrecorded(exc)

    def wait(self, timeout: float = 5.0) -> None:
        """:meth:`durable` for a thread that may block."""
        for future in self.futures:
            try:
                future.result(timeout=timeout)
            except Exception as exc:
                _unrecorded(exc)


async def _settled(future: Future[None], timeout: float) -> None:
    """Wait until ``future`` (completed on the spool's writer thread) is done, or
    TimeoutError after ``timeout`` seconds. One loop future woken by one thread-safe
    call, where ``asyncio.timeout(shield(wrap_future()))`` would chain three futures
    and a cancellation scope per call on the hot path. Giving up (or the caller's
    cancellation) never cancels the write itself."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake(_done: Future[None]) -> None:
        loop.call_soon_threadsafe(_resolve, waiter, None)

    expiry = loop.call_later(timeout, _resolve, waiter, TimeoutError())
    future.add_done_callback(wake)
    try:
        await waiter
    finally:
        expiry.cancel()


def _resolve(waiter: asyncio.Future[None], error: BaseException | None) -> None:
    if not waiter.done():
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(error)


def _unrecorded(exc: Exception, what: str = "call") -> NoReturn:
    """Raise the 503 (RFC 9110 section 15.6.4) a request whose audit events could not
    be made durable is refused with, ``exc`` being why. A ServiceUnavailable is the
    sink's own refusal and is raised as it is: a full spool's
    (:class:`~agentiam.adapters.gateway.spool.SpoolFull`) names what is full, and its
    hint says how to empty it; a closed or failing spool's names the spool. Anything
    else (a write not confirmed within the caller's timeout, an event the sink cannot
    encode) is this gateway's own 503 for the ``what`` (a call, a listing), with
    ``exc`` as its cause. Called in the ``except`` block of every write
    (:meth:`Enforcer._durable`, :class:`Pending`)."""
    if isinstance(exc, ServiceUnavailable):
        raise exc
    raise ServiceUnavailable(
        f"the gateway cannot record this {what} durably; it was refused",
        hint="Check the gateway's audit spool (disk space, permissions).",
    ) from exc


def proof_thumbprint(proof: str) -> str | None:
    """The RFC 7638 thumbprint of the key in a DPoP proof's ``jwk`` header (RFC 9449
    section 4.2), parsed within the proof's size and header limits but not verified:
    it names the key a request *presented*, for the audit trail. None if unreadable."""
    if len(proof) > DPOP_PROFILE.max_length:
        return None
    try:
        parsed = parse_compact(proof, DPOP_PROFILE)
        return import_public_jwk(parsed.header["jwk"], parsed.alg).thumbprint
    except (JoseRejected, KeyError, TypeError, ValueError):
        return None


def _now() -> datetime:
    return datetime.now(UTC)
