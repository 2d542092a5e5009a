"""RFC 8693 token exchange along delegation chains human → agent → sub-agent, and
just-in-time sub-agents. Grants live in :mod:`agentiam.services.grants`, the graph in
:mod:`agentiam.services.delegation_graph`.

**One exchange** (``grant_type=urn:ietf:params:oauth:grant-type:token-exchange``):

* the *actor token* is the acting agent's own DPoP-bound access token, and the
  request carries a DPoP proof by that token's key (RFC 9449 section 5); this is how
  the actor authenticates. A ``private_key_jwt`` assertion may be sent as well, and
  must then name the same agent;
* the *subject token* says whom the agent acts for:

  - a human's token from a trusted external OpenID Connect issuer, or one AgentIAM
    minted for a registered human (:meth:`DelegationService.human_token`): the human
    must hold an active :class:`DelegationGrant` for the actor;
  - a delegated token from an earlier hop (or the parent agent's own token): the
    actor must be a sub-agent of the current holder (its ``parent_id``), or be named
    by the token's ``may_act`` (RFC 8693 section 4.4);

* the new token has ``sub`` = the party acted for, ``client_id`` = the actor, ``act``
  nesting every actor (current first), and can only narrow: its scope lies within the
  subject token's, the grant's and the actor's own entitlement; its audience is one
  they all allow; its ``authorization_details`` narrow theirs (RFC 9396); it expires
  no later than any of them; the chain is at most ``delegation_max_depth`` agents
  (and the grant's ``max_depth``);
* errors are RFC 8693 section 2.2.2 / RFC 6749 section 5.2 codes: ``invalid_request``
  (malformed), ``invalid_grant`` (a subject or actor token, grant or agent that does
  not allow it), ``invalid_scope``, ``invalid_target`` and RFC 9396 section 5
  ``invalid_authorization_details``; ``invalid_dpop_proof`` when the actor token's
  proof is missing or wrong. Every refusal is audited with its precise reason.

**Cascade revocation** needs no fan-out: every delegated token lists the tokens it was
derived from and names its grant, human and actors, and verifiers refuse it when any of
those is revoked (see :class:`~agentiam.core.credentials.revocations.RevocationSet`).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from agentiam.config import Limits
from agentiam.core.audit.events import Actor, ActorType, ResourceRef
from agentiam.core.credentials.access_tokens import (
    AccessTokenClaims,
    parse_resource,
    parse_scope,
)
from agentiam.core.credentials.dpop import DpopProof, validate_proof
from agentiam.core.credentials.jose import JoseRejected, import_public_jwk
from agentiam.core.credentials.verifier import AccessTokenVerifier, VerifiedAccess
from agentiam.core.delegation.authorization_details import DetailsRejected, DetailTypeRegistry
from agentiam.core.delegation.chain import ChainClaims, narrow_scope
from agentiam.core.delegation.issuers import ExternalSubject, TrustedIssuer, peek_issuer
from agentiam.core.delegation.models import DelegationGrant, TokenNode, TokenOrigin
from agentiam.core.identities.models import Agent
from agentiam.core.ids import is_id, new_id
from agentiam.errors import AgentIAMError, OAuthError, ServiceUnavailable
from agentiam.ports import Clock, GrantQuery, UnitOfWork, UnitOfWorkFactory
from agentiam.services.agents import AgentService, NewAgent
from agentiam.services.context import CallContext
from agentiam.services.revocations import RevocationService
from agentiam.services.tokens import (
    GRANT_TOKEN_EXCHANGE,
    SingleUse,
    TokenResponse,
    TokenService,
    claimed_client,
    single,
)

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "ID_TOKEN_TYPE",
    "JWT_TOKEN_TYPE",
    "DelegationPolicy",
    "DelegationService",
    "ExternalTokens",
    "SubAgentSpec",
]

ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"  # noqa: S105
_SUBJECT_TYPES = frozenset({ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE, ID_TOKEN_TYPE})
# RFC 8693 section 2.1 parameters, plus client authentication and RFC 9396.
_EXCHANGE_PARAMS = frozenset(
    {
        "grant_type",
        "subject_token",
        "subject_token_type",
        "actor_token",
        "actor_token_type",
        "requested_token_type",
        "audience",
        "resource",
        "scope",
        "authorization_details",
        "client_id",
        "client_assertion",
        "client_assertion_type",
    }
)


class ExternalTokens(Protocol):
    """Verifies tokens from trusted external OpenID Connect issuers (adapters/jwks)."""

    def verify(self, token: str, *, now: int) -> tuple[TrustedIssuer, ExternalSubject]: ...


@dataclass(frozen=True, slots=True)
class DelegationPolicy:
    issuer: str
    max_depth: int = 4
    access_token_ttl: int = 300
    skew: int = 30
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True, slots=True)
class SubAgentSpec:
    """A just-in-time sub-agent: its public key (``jwk``) and a DPoP-style proof by the
    matching private key (``key_proof``) over this request, so the server knows the
    caller holds the key it registers."""

    jwk: Mapping[str, Any]
    key_proof: str
    ttl_seconds: int
    name: str | None = None
    purpose: str | None = None
    scope: str | None = None
    resource: str | None = None
    authorization_details: Any = None
    labels: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class _Subject:
    """What a verified subject token establishes for the next hop."""

    party: str  # the new token's sub: a human id, or the agent whose authority flows
    actors: tuple[str, ...]  # the chain so far, current holder first
    expires_at: int
    scope: tuple[str, ...] | None = None  # None: no bound from the subject token
    audience: str | None = None
    details: tuple[Mapping[str, Any], ...] | None = None
    jti: str | None = None  # an AgentIAM token's jti
    lineage: tuple[str, ...] = ()
    grant_id: str | None = None
    may_act: Mapping[str, Any] | None = None
    external: str | None = None  # "iss sub" of an external IdP token

    @property
    def human(self) -> str | None:
        return self.party if is_id(self.party, "human") else None

    @property
    def holder(self) -> str | None:
        """The agent that holds the subject token (None for a human's own token)."""
        if self.actors:
            return self.actors[0]
        return self.party if is_id(self.party, "agent") else None


@dataclass(frozen=True, slots=True)
class _Request:
    scope: tuple[str, ...] | None
    audience: str | None
    details: tuple[dict[str, Any], ...] | None


def _invalid_grant(reason: str, description: str = "the grant is not valid") -> OAuthError:
    return OAuthError("invalid_grant", description, reason=reason)


class DelegationService:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        clock: Clock,
        *,
        policy: DelegationPolicy,
        tokens: TokenService,
        verifier: AccessTokenVerifier,
        revocations: RevocationService,
        agents: AgentService,
        details: DetailTypeRegistry,
        external: ExternalTokens | None = None,
        on_agent_created: Callable[[], None] | None = None,
    ) -> None:
        self._uow = uow
        self._clock = clock
        self.policy = policy
        self._tokens = tokens
        self._verifier = verifier
        self._revocations = revocations
        self._agents = agents
        self.details = details
        self._external = external
        # A JIT sub-agent acts at once: let this replica's decision point see it now.
        self._on_agent_created = on_agent_created

    def _now(self) -> tuple[datetime, int]:
        now = self._clock.now()
        return now, int(now.timestamp())

    # -- token exchange (RFC 8693) -----------------------------------------------------

    def exchange(
        self, ctx: CallContext, form: Mapping[str, Sequence[str]], dpop: Sequence[str]
    ) -> TokenResponse:
        """Answer one RFC 8693 section 2.1 request; raise OAuthError."""
        now, epoch = self._now()
        actor_id: str | None = None
        try:
            self._check_exchange_form(form)
            proof = self._tokens.proof(dpop, epoch)
            if proof is None:
                raise OAuthError(
                    "invalid_dpop_proof",
                    "token exchange requires a DPoP proof by the actor token's key",
                    reason="no DPoP proof",
                )
            actor = self._actor(form, epoch)
            # proven by the actor token's signature: a refusal from here on is charged
            # to that agent (a stolen token shown with another key included)
            actor_id = actor.client_id
            _bound_to_proof(actor, proof)
            uses = self._client_auth(form, actor.client_id, epoch, now)
            uses.append(self._tokens.proof_use(proof, now))
            subject = self._subject(form, epoch)
            request = self._request(form)
            response = self._issue(
                ctx,
                subject,
                actor_id=actor.client_id,
                jkt=proof.jkt,
                actor_jti=actor.jti,
                actor_expires=actor.expires_at,
                request=request,
                origin=TokenOrigin.EXCHANGE,
                uses=uses,
                now=now,
            )
        except OAuthError as exc:
            _, epoch = self._now()
            exc.headers.update(self._tokens.nonce_headers(epoch))
            self._tokens.deny(
                ctx, exc, actor_id or claimed_client(form), authenticated=actor_id is not None
            )
            raise
        return response

    def _check_exchange_form(self, form: Mapping[str, Sequence[str]]) -> None:
        unknown = sorted(set(form) - _EXCHANGE_PARAMS)
        if unknown:
            raise OAuthError(
                "invalid_request", f"unknown parameter {unknown[0][:40]} for token exchange"
            )
        for name in ("audience", "resource"):
            if len(form.get(name, ())) > 1:
                raise OAuthError("invalid_target", "one audience per token")
        self._tokens.check_form(form)
        if single(form, "grant_type") != GRANT_TOKEN_EXCHANGE:
            raise OAuthError("invalid_request", "grant_type must be token-exchange")
        requested = single(form, "requested_token_type")
        if requested is not None and requested != ACCESS_TOKEN_TYPE:
            raise OAuthError("invalid_request", "only access tokens can be requested")
        limit = self.policy.limits.max_subject_token_bytes
        for name in ("subject_token", "actor_token"):
            value = single(form, name)
            if value is not None and len(value) > limit:
                raise OAuthError("invalid_request", f"{name} is larger than {limit} bytes")
        if not single(form, "subject_token") or not single(form, "subject_token_type"):
            raise OAuthError("invalid_request", "subject_token and subject_token_type are required")
        if single(form, "subject_token_type") not in _SUBJECT_TYPES:
            raise OAuthError("invalid_request", "unsupported subject_token_type")
        if not single(form, "actor_token"):
            raise OAuthError(
                "invalid_request",
                "actor_token is required: the acting agent presents its own token",
            )
        if single(form, "actor_token_type") != ACCESS_TOKEN_TYPE:
            raise OAuthError("invalid_request", "actor_token_type must be an access token")

    def _verify_own(self, token: str, epoch: int, what: str) -> VerifiedAccess:
        """Verify a token AgentIAM issued (any audience); refusals are invalid_grant."""
        self._revocations.ensure_fresh()
        try:
            return self._verifier.verify_token(token, now=epoch, any_audience=True)
        except OAuthError as exc:
            if exc.error == "temporarily_unavailable":
                raise
            raise _invalid_grant(f"{what}: {exc.reason}", f"the {what} is not valid") from None

    def _actor(self, form: Mapping[str, Sequence[str]], epoch: int) -> VerifiedAccess:
        token = single(form, "actor_token") or ""
        actor = self._verify_own(token, epoch, "actor token")
        if actor.chain.delegated or actor.subject != actor.client_id:
            raise OAuthError(
                "invalid_request",
                "actor_token must be the acting agent's own access token",
                reason="actor token is delegated or not an agent's own token",
            )
        if not is_id(actor.client_id, "agent"):
            raise OAuthError("invalid_request", "actor_token must belong to an agent")
        return actor

    def _client_auth(
        self, form: Mapping[str, Sequence[str]], actor_id: str, epoch: int, now: datetime
    ) -> list[SingleUse]:
        """Optional ``private_key_jwt`` authentication; it must name the actor."""
        if single(form, "client_assertion") is None and single(form, "client_id") is None:
            return []
        with self._uow(read_only=True) as uow:
            agent, assertion = self._tokens.authenticate(uow, form, epoch, now)
        if agent.id != actor_id:
            raise OAuthError(
                "invalid_request",
                "the authenticated client is not the actor",
                reason=f"client {agent.id} presented the actor token of {actor_id}",
            )
        return self._tokens.single_use(agent, assertion, None, now)

    def _subject(self, form: Mapping[str, Sequence[str]], epoch: int) -> _Subject:
        token = single(form, "subject_token") or ""
        issuer = peek_issuer(token)
        if issuer == self.policy.issuer:
            if single(form, "subject_token_type") != ACCESS_TOKEN_TYPE:
                raise OAuthError(
                    "invalid_request", "an AgentIAM subject token has the access_token type"
                )
            access = self._verify_own(token, epoch, "subject token")
            if (
                is_id(access.subject, "human")
                and not access.chain.delegated
                and access.audience != self.policy.issuer
            ):
                # a human's token for another purpose (deciding approvals) starts no chain
                raise _invalid_grant(
                    "subject token: a human's token not minted for delegation",
                    "the subject token is not valid",
                )
            return self._own_subject(access)
        return self._external_subject(token, epoch)

    @staticmethod
    def _own_subject(access: VerifiedAccess) -> _Subject:
        chain = access.chain
        human_token = is_id(access.subject, "human") and not chain.delegated
        return _Subject(
            party=access.subject,
            actors=chain.actors,
            expires_at=access.expires_at,
            # A human's own token bounds nothing: the grant does.
            scope=None if human_token else access.scope,
            audience=None if human_token else access.audience,
            details=None if human_token else tuple(chain.authorization_details),
            jti=access.jti,
            lineage=(*chain.lineage, access.jti),
            grant_id=chain.grant_id,
            may_act=chain.may_act,
        )

    def _external_subject(self, token: str, epoch: int) -> _Subject:
        if self._external is None:
            raise _invalid_grant("no trusted external issuers are configured")
        try:
            issuer, subject = self._external.verify(token, now=epoch)
        except JoseRejected as exc:
            raise _invalid_grant(
                f"subject token: {exc}", "the subject token is not valid"
            ) from None
        except ServiceUnavailable as exc:
            raise OAuthError(
                "temporarily_unavailable",
                "the subject token's issuer keys are unavailable; try again shortly",
                status=503,
                reason=exc.detail,
            ) from None
        with self._uow(read_only=True) as uow:
            human = uow.humans.get_by_external(issuer.issuer, subject.subject)
        if human is None:
            raise _invalid_grant(
                "the subject token's identity is not linked to a registered human",
                "the subject token is not valid",
            )
        return _Subject(
            party=human.id,
            actors=(),
            expires_at=subject.expires_at,
            may_act=subject.may_act,
            external=f"{issuer.issuer} {subject.subject}"[:512],
        )

    def _request(self, form: Mapping[str, Sequence[str]]) -> _Request:
        try:
            scope = parse_scope(single(form, "scope"))
        except ValueError as exc:
            raise OAuthError("invalid_scope", str(exc)) from None
        audience = single(form, "audience")
        resource = single(form, "resource")
        if resource is not None:
            try:
                parse_resource(resource)
            except ValueError as exc:
                raise OAuthError("invalid_target", str(exc)) from None
            if audience is not None and audience != resource:
                raise OAuthError("invalid_target", "audience and resource name different targets")
            audience = resource
        elif audience is not None and not 0 < len(audience) <= 512:
            raise OAuthError("invalid_target", "audience is too long")
        details = self._parse_details(single(form, "authorization_details"))
        return _Request(scope=scope, audience=audience, details=details)

    # -- issuing one hop -----------------------------------------------------------------

    def _issue(
        self,
        ctx: CallContext,
        subject: _Subject,
        *,
        actor_id: str,
        jkt: str,
        actor_jti: str | None,
        actor_expires: int | None,
        request: _Request,
        origin: TokenOrigin,
        uses: Sequence[SingleUse],
        now: datetime,
    ) -> TokenResponse:
        epoch = int(now.timestamp())
        with self._uow(read_only=True) as uow:
            actor, grant = self._authorize_hop(uow, subject, actor_id, now)
            # One tree per initiating token, however deep: the parent's root is ours.
            parent = uow.token_graph.get(subject.jti) if subject.jti else None
        claims, node = self._hop_claims(
            subject,
            actor,
            grant,
            jkt,
            actor_jti,
            actor_expires,
            request,
            origin,
            now,
            root_jti=parent.root_jti if parent else None,
        )
        issued = CallContext(
            actor=Actor(ActorType.AGENT, actor.id), source=ctx.source, trace=ctx.trace
        ).event(
            "token.exchanged" if origin is TokenOrigin.EXCHANGE else "token.issued",
            now=now,
            action="token",
            resource=ResourceRef("agent", actor.id),
            initiating_human=subject.human,
            delegation_chain=node.actors,
            details={
                "grant_type": GRANT_TOKEN_EXCHANGE if origin is TokenOrigin.EXCHANGE else "jit",
                "jti": claims.jti,
                "parent_jti": subject.jti,
                "root_jti": node.root_jti,
                "actor_jti": actor_jti,
                "sub": subject.party,
                "initiating_human": subject.human,
                "actors": list(node.actors),
                "grant_id": node.grant_id,
                "aud": claims.audience,
                "scope": " ".join(claims.scope),
                "authorization_details": [dict(d) for d in claims.chain.authorization_details],
                "exp": claims.expires_at,
                "jkt": jkt,
                "external_subject": subject.external,
            },
        )
        with self._uow() as uow:
            self._tokens.consume(uow, uses)
            uow.token_graph.add(node)
            uow.audit.append(issued)
            uow.commit()
        body: dict[str, Any] = {
            "access_token": self._tokens.sign(claims),
            "issued_token_type": ACCESS_TOKEN_TYPE,
            "token_type": "DPoP",
            "expires_in": claims.expires_at - epoch,
            "scope": " ".join(claims.scope),
        }
        if claims.chain.authorization_details:
            body["authorization_details"] = [dict(d) for d in claims.chain.authorization_details]
        return self._tokens.response(body, epoch)

    def _authorize_hop(
        self, uow: UnitOfWork, subject: _Subject, actor_id: str, now: datetime
    ) -> tuple[Agent, DelegationGrant | None]:
        """May ``actor_id`` act on ``subject`` now? Returns the actor and the grant.
        The actor and every earlier agent of the chain are read in one batch."""
        agents = uow.agents.get_many([actor_id, *subject.actors])
        actor = agents.get(actor_id)
        if actor is None or not actor.is_usable(now):
            state = "unknown" if actor is None else actor.status.value
            raise _invalid_grant(f"actor agent is {state}", "the acting agent may not act")
        return actor, self._check_hop(uow, subject, actor, now, agents)

    def _check_hop(
        self,
        uow: UnitOfWork,
        subject: _Subject,
        actor: Agent,
        now: datetime,
        agents: Mapping[str, Agent] | None = None,
    ) -> DelegationGrant | None:
        """The rules of one hop for a usable ``actor``; returns the grant it runs under.

        The chain is at most ``max_depth`` agents (and the grant's ``max_depth``), every
        earlier agent is still usable, an agent appears once, ``may_act`` names the
        actor if present (RFC 8693 section 4.4), and otherwise the actor is a sub-agent
        of the holder; a human's chain needs an active grant."""
        actor_id = actor.id
        if actor_id == subject.party or actor_id in subject.actors:
            raise _invalid_grant("the actor already appears in the chain")
        depth = len(subject.actors) + 1
        if depth > self.policy.max_depth:
            raise _invalid_grant(
                f"chain depth {depth} exceeds the cap {self.policy.max_depth}",
                "the delegation chain is too deep",
            )
        if subject.may_act is not None and not self._may_act(subject.may_act, actor_id):
            raise _invalid_grant("may_act does not name this actor")
        if agents is None:
            agents = uow.agents.get_many(subject.actors)
        for earlier in subject.actors:
            agent = agents.get(earlier)
            if agent is None or not agent.is_usable(now):
                raise _invalid_grant(f"agent {earlier} in the chain is no longer active")
        human = subject.human
        if human is not None and uow.humans.get(human) is None:
            raise _invalid_grant("the human acted for is not registered")
        holder = subject.holder
        if holder is not None and subject.may_act is None and actor.parent_id != holder:
            raise _invalid_grant(
                f"{actor_id} is not a sub-agent of {holder}",
                "the actor is not a sub-agent of the token's holder",
            )
        grant: DelegationGrant | None = None
        if subject.grant_id is not None:
            grant = uow.grants.get(subject.grant_id)
            if grant is None or not grant.is_active(now):
                raise _invalid_grant("the delegation grant is revoked or expired")
        elif human is not None and not subject.actors:
            grant = self._grant_for(uow, human, actor_id, now)
        if grant is not None and depth > grant.max_depth:
            raise _invalid_grant(
                f"chain depth {depth} exceeds the grant's max_depth {grant.max_depth}",
                "the delegation chain is too deep",
            )
        if human is not None and grant is None:
            raise _invalid_grant("no delegation grant", "the human has not granted delegation")
        return grant

    def _may_act(self, may_act: Mapping[str, Any], actor_id: str) -> bool:
        """RFC 8693 section 4.4: the claims in ``may_act`` identify the one party
        allowed to act; an ``iss`` in it must be this server."""
        if set(may_act) - {"sub", "iss"}:
            return False
        issuer = may_act.get("iss", self.policy.issuer)
        return bool(may_act.get("sub") == actor_id and issuer == self.policy.issuer)

    @staticmethod
    def _grant_for(
        uow: UnitOfWork, human_id: str, agent_id: str, now: datetime
    ) -> DelegationGrant | None:
        """The human's newest active grant to the agent."""
        page = uow.grants.find(
            GrantQuery(limit=100, human_id=human_id, agent_id=agent_id, active_at=now)
        )
        return page.items[-1] if page.items else None

    def _hop_claims(
        self,
        subject: _Subject,
        actor: Agent,
        grant: DelegationGrant | None,
        jkt: str,
        actor_jti: str | None,
        actor_expires: int | None,
        request: _Request,
        origin: TokenOrigin,
        now: datetime,
        root_jti: str | None = None,
    ) -> tuple[AccessTokenClaims, TokenNode]:
        epoch = int(now.timestamp())
        bounds: list[Sequence[str]] = [actor.scopes]
        if subject.scope is not None:
            bounds.append(subject.scope)
        if grant is not None:
            bounds.append(grant.scopes)
        scope, beyond = narrow_scope(request.scope, *bounds)
        if beyond:
            raise OAuthError(
                "invalid_scope",
                "the requested scope exceeds what the subject token and grant allow",
                reason=f"widening to {' '.join(beyond)[:300]}",
            )
        audience = self._audience(subject, actor, grant, request.audience)
        details = self._details(subject, actor, grant, request.details)
        expiry = [epoch + self.policy.access_token_ttl, subject.expires_at]
        if actor_expires is not None:
            expiry.append(actor_expires)
        if grant is not None:
            expiry.append(int(grant.expires_at.timestamp()))
        if actor.expires_at is not None:
            expiry.append(int(actor.expires_at.timestamp()))
        expires = min(expiry)
        if expires <= epoch:
            raise _invalid_grant("the chain expires now")
        actors = (actor.id, *subject.actors)
        lineage = (*subject.lineage, *((actor_jti,) if actor_jti else ()))
        grant_id = grant.id if grant is not None else subject.grant_id
        jti = new_id("token")
        claims = AccessTokenClaims(
            issuer=self.policy.issuer,
            subject=subject.party,
            audience=audience,
            client_id=actor.id,
            issued_at=epoch,
            expires_at=expires,
            jti=jti,
            scope=scope,
            jkt=jkt,
            chain=ChainClaims(
                actors=actors, grant_id=grant_id, lineage=lineage, authorization_details=details
            ),
        )
        node = TokenNode(
            jti=jti,
            parent_jti=subject.jti,
            actor_jti=actor_jti,
            root_jti=root_jti or subject.jti or jti,
            origin=origin,
            subject=subject.party,
            client_id=actor.id,
            actors=actors,
            grant_id=grant_id,
            scope=scope,
            audience=audience,
            issued_at=now,
            expires_at=datetime.fromtimestamp(expires, now.tzinfo),
            external_subject=subject.external,
        )
        return claims, node

    @staticmethod
    def _audience(
        subject: _Subject, actor: Agent, grant: DelegationGrant | None, requested: str | None
    ) -> str:
        """RFC 8693 section 2.1 ``audience`` / RFC 8707 ``resource``: one the actor,
        the grant and the subject token all allow."""
        allowed = set(actor.audiences)
        if grant is not None:
            allowed &= set(grant.audiences)
        if subject.audience is not None:
            allowed &= {subject.audience}
        if requested is None:
            if len(allowed) == 1:
                return next(iter(allowed))
            raise OAuthError(
                "invalid_target",
                "name the audience or resource the token is for",
                reason=f"no audience requested and {len(allowed)} allowed",
            )
        if requested not in allowed:
            raise OAuthError(
                "invalid_target",
                "the requested audience is not allowed for this chain",
                reason=f"widening to audience {requested[:200]}",
            )
        return requested

    def _details(
        self,
        subject: _Subject,
        actor: Agent,
        grant: DelegationGrant | None,
        requested: tuple[dict[str, Any], ...] | None,
    ) -> tuple[Mapping[str, Any], ...]:
        """RFC 9396 section 7 on exchange: the new token's details narrow both what the
        subject token holds (on the first hop, the grant's) and the actor's own task
        scope. Nothing held means unrestricted by details (scope still applies), so
        requested details only narrow. With nothing requested the token keeps the
        narrower of the two; if neither contains the other the caller must say."""
        held: tuple[Mapping[str, Any], ...] = ()
        if subject.details is not None:
            held = subject.details
        elif grant is not None:
            held = grant.authorization_details
        bounds = [b for b in (held, actor.task_scope) if b]
        if requested is None:
            if len(bounds) < 2:
                return bounds[0] if bounds else ()
            for narrower, wider in ((bounds[1], bounds[0]), (bounds[0], bounds[1])):
                if self.details.narrowing_problem(list(narrower), list(wider)) is None:
                    return narrower
            raise OAuthError(
                "invalid_authorization_details",
                "name authorization_details within both the subject token's and the actor's",
                reason="the subject token's and the actor's task scopes overlap only in part",
            )
        for bound in bounds:
            problem = self.details.narrowing_problem(list(requested), list(bound))
            if problem is not None:
                raise OAuthError(
                    "invalid_authorization_details",
                    "the requested authorization_details exceed what is held",
                    reason=f"widening: {problem}"[:500],
                )
        return requested

    # -- just-in-time sub-agents ---------------------------------------------------------

    def spawn_request(
        self,
        ctx: CallContext,
        *,
        authorization: Sequence[str],
        dpop: Sequence[str],
        url: str,
        body: Any,
    ) -> tuple[Agent, TokenResponse]:
        """``POST /v1/sub-agents``: verify the parent's DPoP-bound token and proof for
        this request (RFC 9449 section 7), read the body, and :meth:`spawn`."""
        _, epoch = self._now()
        self._revocations.ensure_fresh()
        try:
            parent = self._verifier.verify_request(
                authorization=authorization,
                dpop=dpop,
                method="POST",
                url=url,
                now=epoch,
                any_audience=True,
            )
            if parent.jkt is None:
                raise OAuthError("invalid_token", "a DPoP-bound token is required", status=401)
            spec = _sub_agent_spec(body, self.policy.limits)
        except OAuthError as exc:
            self._tokens.deny(ctx, exc, None)
            raise
        token = authorization[0].partition(" ")[2].strip()
        return self.spawn(ctx, parent=parent, parent_token=token, url=url, spec=spec)

    def spawn(
        self,
        ctx: CallContext,
        *,
        parent: VerifiedAccess,
        parent_token: str,
        url: str,
        spec: SubAgentSpec,
    ) -> tuple[Agent, TokenResponse]:
        """Register an ephemeral sub-agent of the token's holder and issue its first
        token, which continues the parent token's chain.

        The caller (the HTTP layer) has verified ``parent`` with its DPoP proof. The
        sub-agent's key was generated by the caller; ``spec.key_proof`` proves it holds
        the private key and binds the proof to ``parent_token`` (``ath``)."""
        now, epoch = self._now()
        try:
            jwk = dict(spec.jwk)
            try:
                key = import_public_jwk(
                    {k: v for k, v in jwk.items() if k not in ("kid", "alg", "use")},
                    str(jwk.get("alg", "ES256")),
                )
                proof = validate_proof(
                    spec.key_proof,
                    method="POST",
                    url=url,
                    now=epoch,
                    window=self._tokens.policy.dpop_window,
                    access_token=parent_token,
                    expected_jkt=key.thumbprint,
                )
            except JoseRejected as exc:
                raise OAuthError(
                    "invalid_request",
                    "key_proof must be a DPoP proof for this request by the new key",
                    reason=f"key proof: {exc}",
                ) from None
            subject = self._own_subject(parent)
            holder = subject.holder
            if holder is None or holder != parent.client_id:
                raise OAuthError("invalid_request", "only an agent can spawn a sub-agent")
            request = _Request(
                scope=_scope(spec.scope),
                audience=spec.resource,
                details=self._parse_details(spec.authorization_details),
            )
            # Every rule of the hop is checked against a stand-in for the child before
            # anything is written, so a refused spawn registers nothing.
            with self._uow(read_only=True) as uow:
                holder_agent = uow.agents.get(holder)
                if holder_agent is None or not holder_agent.is_usable(now):
                    raise _invalid_grant("the parent agent is not active")
                stand_in = _stand_in(holder_agent, now, spec.ttl_seconds)
                grant = self._check_hop(uow, subject, stand_in, now)
            planned, _ = self._hop_claims(
                subject, stand_in, grant, proof.jkt, None, None, request, TokenOrigin.JIT, now
            )
            child = self._register_child(
                CallContext(
                    actor=Actor(ActorType.AGENT, holder), source=ctx.source, trace=ctx.trace
                ),
                NewAgent(
                    name=spec.name or _jit_name(holder_agent.name),
                    owners=(),
                    purpose=spec.purpose or f"just-in-time sub-agent of {holder_agent.name}",
                    environment=holder_agent.environment,
                    autonomy=holder_agent.autonomy.value,
                    labels=spec.labels,
                    parent_id=holder,
                    ttl_seconds=spec.ttl_seconds,
                    activate=True,
                    keys=(jwk,),
                    scopes=planned.scope,
                    audiences=(planned.audience,),
                    dpop_required=True,
                    task_scope=planned.chain.authorization_details,
                ),
            )
            if self._on_agent_created is not None:
                self._on_agent_created()
            response = self._issue(
                ctx,
                subject,
                actor_id=child.id,
                jkt=proof.jkt,
                actor_jti=None,
                actor_expires=None,
                request=_Request(
                    scope=planned.scope,
                    audience=planned.audience,
                    details=tuple(dict(d) for d in planned.chain.authorization_details) or None,
                ),
                origin=TokenOrigin.JIT,
                uses=[self._tokens.proof_use(proof, now)],
                now=now,
            )
        except OAuthError as exc:
            self._tokens.deny(ctx, exc, parent.client_id, authenticated=True)
            raise
        return child, response

    def _register_child(self, ctx: CallContext, spec: NewAgent) -> Agent:
        """Register the sub-agent; a refusal (a key already registered, a name taken)
        becomes an OAuth ``invalid_request`` so it is audited like every other."""
        try:
            return self._agents.register(ctx, spec)
        except AgentIAMError as exc:
            if exc.status >= 500:
                raise
            raise OAuthError(
                "invalid_request", exc.detail, reason=f"sub-agent registration: {exc.detail}"
            ) from None

    def _parse_details(self, raw: Any) -> tuple[dict[str, Any], ...] | None:
        """Requested ``authorization_details``; None when absent. An empty list asks for
        nothing more specific, so it too keeps what is held: it must never read as
        "not task-scoped" and so drop the task scope."""
        if raw is None:
            return None
        try:
            return self.details.parse(raw) or None
        except DetailsRejected as exc:
            raise OAuthError("invalid_authorization_details", str(exc)) from None


_SPEC_FIELDS = frozenset(
    {
        "jwk",
        "key_proof",
        "ttl_seconds",
        "name",
        "purpose",
        "scope",
        "resource",
        "authorization_details",
        "labels",
    }
)


def _sub_agent_spec(body: Any, limits: Limits) -> SubAgentSpec:
    """Read a ``POST /v1/sub-agents`` body; refuse anything unexpected."""
    if not isinstance(body, Mapping):
        raise OAuthError("invalid_request", "the body must be a JSON object")
    unknown = sorted(set(body) - _SPEC_FIELDS)
    if unknown:
        raise OAuthError("invalid_request", f"unknown member {unknown[0][:40]}")
    jwk, proof, ttl = body.get("jwk"), body.get("key_proof"), body.get("ttl_seconds")
    if not isinstance(jwk, Mapping) or len(jwk) > 12:
        raise OAuthError("invalid_request", "jwk must be the sub-agent's public JWK")
    if not isinstance(proof, str) or not 0 < len(proof) <= 4096:
        raise OAuthError("invalid_request", "key_proof must be a DPoP proof JWT")
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise OAuthError("invalid_request", "ttl_seconds must be an integer")
    if not 1 <= ttl <= limits.max_ephemeral_ttl_seconds:
        raise OAuthError(
            "invalid_request", f"ttl_seconds must be 1-{limits.max_ephemeral_ttl_seconds}"
        )
    text: dict[str, str | None] = {}
    for name, limit in (("name", 63), ("purpose", 1000), ("scope", 8192), ("resource", 512)):
        value = body.get(name)
        if value is not None and (not isinstance(value, str) or not 0 < len(value) <= limit):
            raise OAuthError("invalid_request", f"{name} must be a string of 1-{limit}")
        text[name] = value
    labels = body.get("labels")
    if labels is not None and (
        not isinstance(labels, Mapping)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())
    ):
        raise OAuthError("invalid_request", "labels must map strings to strings")
    return SubAgentSpec(
        jwk=jwk,
        key_proof=proof,
        ttl_seconds=ttl,
        name=text["name"],
        purpose=text["purpose"],
        scope=text["scope"],
        resource=text["resource"],
        authorization_details=body.get("authorization_details"),
        labels=labels,
    )


def _scope(value: str | None) -> tuple[str, ...] | None:
    try:
        return parse_scope(value)
    except ValueError as exc:
        raise OAuthError("invalid_scope", str(exc)) from None


def _jit_name(parent_name: str) -> str:
    return f"{parent_name[:40]}-jit-{secrets.token_hex(4)}"


def _stand_in(parent: Agent, now: datetime, ttl_seconds: int) -> Agent:
    """The sub-agent as it will be registered, to plan its first token before any
    write: it holds at most its parent's entitlements and lives ``ttl_seconds``."""
    return replace(
        parent,
        id=new_id("agent"),
        parent_id=parent.id,
        expires_at=now + timedelta(seconds=max(ttl_seconds, 1)),
    )


def _bound_to_proof(actor: VerifiedAccess, proof: DpopProof) -> None:
    """RFC 9449 section 7.1: the proof must be signed by the key the actor token is
    bound to (``cnf.jkt``); otherwise whoever holds the token does not hold its key."""
    if actor.jkt is None or actor.jkt != proof.jkt:
        raise OAuthError(
            "invalid_dpop_proof",
            "the DPoP proof must be signed by the actor token's key",
            reason="actor token not bound to the proof key",
        )
