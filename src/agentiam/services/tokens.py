"""The token service: the ``client_credentials`` grant with ``private_key_jwt`` and
DPoP (RFC 6749 section 4.4, RFC 7523, RFC 9449), introspection (RFC 7662) and
revocation (RFC 7009).

One issuance is one write transaction: the agent and its keys are read, the
assertion's ``jti`` and the DPoP proof's ``jti`` are recorded as used (which refuses a
replay on any replica sharing the database), and the ``token.issued`` audit event is
appended. The token is signed only after that commit, so no token exists that the
audit trail does not record. Refusals are audited too (``token.denied``), with the
precise reason, while the client gets the RFC error code and a generic description.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from agentiam.core.audit.events import Actor, ActorType, AuditEvent, Outcome, ResourceRef
from agentiam.core.credentials.access_tokens import (
    AccessTokenClaims,
    granted_scopes,
    parse_resource,
    parse_scope,
)
from agentiam.core.credentials.assertions import (
    CLIENT_ASSERTION_TYPE,
    ClientAssertion,
    parse_assertion,
    verify_assertion,
)
from agentiam.core.credentials.dpop import DpopProof, DpopWindow, validate_proof
from agentiam.core.credentials.jose import JoseRejected, VerificationKey, import_public_jwk
from agentiam.core.credentials.nonces import NonceIssuer
from agentiam.core.credentials.verifier import AccessTokenVerifier, VerifiedAccess
from agentiam.core.delegation.chain import ChainClaims
from agentiam.core.identities.models import AgentKey, ClientRecord, KeyStatus
from agentiam.core.ids import is_id, new_id
from agentiam.errors import OAuthError
from agentiam.ports import Clock, UnitOfWork, UnitOfWorkFactory
from agentiam.services.audit import AuditService
from agentiam.services.context import CallContext
from agentiam.services.revocations import RevocationService
from agentiam.services.signing_keys import SigningKeyService

__all__ = [
    "GRANT_TOKEN_EXCHANGE",
    "TOKEN_PATH",
    "ExchangeHandler",
    "SingleUse",
    "TokenPolicy",
    "TokenResponse",
    "TokenService",
    "claimed_client",
    "single",
]

TOKEN_PATH = "/oauth2/token"  # noqa: S105 - a path, not a secret
MAX_ASSERTION_LIFETIME = 300  # RFC 7523 assertions: exp at most 5 minutes ahead
GRANT_CLIENT_CREDENTIALS = "client_credentials"
GRANT_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105


@dataclass(frozen=True, slots=True)
class TokenPolicy:
    issuer: str
    access_token_ttl: int = 300
    skew: int = 30
    dpop_window: DpopWindow = field(default_factory=DpopWindow)
    nonce_required: bool = False

    @property
    def token_endpoint(self) -> str:
        return self.issuer + TOKEN_PATH


@dataclass(frozen=True, slots=True)
class SingleUse:
    purpose: str
    value: str
    expires_at: datetime
    replay_error: OAuthError


@dataclass(frozen=True, slots=True)
class TokenResponse:
    body: dict[str, Any]
    headers: dict[str, str]


def _invalid_client(reason: str) -> OAuthError:
    # One description for every client-authentication failure (RFC 6749 section 5.2).
    return OAuthError("invalid_client", "client authentication failed", status=401, reason=reason)


class ExchangeHandler(Protocol):
    def exchange(
        self, ctx: CallContext, form: Mapping[str, Sequence[str]], dpop: Sequence[str]
    ) -> TokenResponse:
        """Answer an RFC 8693 token-exchange request."""


def single(form: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = form.get(name)
    if not values:
        return None
    return values[0]


class TokenService:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        clock: Clock,
        *,
        policy: TokenPolicy,
        keys: SigningKeyService,
        revocations: RevocationService,
        audit: AuditService,
        verifier: AccessTokenVerifier,
        nonces: NonceIssuer,
    ) -> None:
        self._uow = uow
        self._clock = clock
        self.policy = policy
        self._keys = keys
        self._revocations = revocations
        self._audit = audit
        self._verifier = verifier
        self.nonces = nonces
        # Token exchange (RFC 8693) is answered by the delegation service, wired in by
        # the composition root; without one the grant type is unsupported.
        self.exchange_handler: ExchangeHandler | None = None

    def sign(self, claims: AccessTokenClaims) -> str:
        return self._keys.sign(claims.to_jwt_claims(), typ="at+jwt")

    def response(self, body: dict[str, Any], epoch: int) -> TokenResponse:
        """A successful token response with RFC 6749 section 5.1 cache headers."""
        headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
        headers.update(self.nonce_headers(epoch))
        return TokenResponse(body=body, headers=headers)

    # -- shared -------------------------------------------------------------------------

    def _now(self) -> tuple[datetime, int]:
        now = self._clock.now()
        return now, int(now.timestamp())

    def nonce_headers(self, epoch: int) -> dict[str, str]:
        return {"DPoP-Nonce": self.nonces.issue(epoch)} if self.policy.nonce_required else {}

    def deny(
        self,
        ctx: CallContext,
        exc: OAuthError,
        client_id: str | None,
        *,
        authenticated: bool = False,
    ) -> None:
        """Audit a refused request (best effort is not enough: 503 if it cannot be
        written, like every other audited call). ``authenticated`` says the client was
        proven (its assertion, or a token issued to it, verified) before the refusal;
        otherwise ``client_id`` is only what the request claimed, and behavioural
        detection does not charge the refusal to that agent (anyone can claim an id)."""
        actor = (
            Actor(type=ActorType.AGENT, id=client_id[:64])
            if client_id and is_id(client_id, "agent")
            else ctx.actor
        )
        self._audit.record(
            CallContext(actor=actor, source=ctx.source, trace=ctx.trace),
            type="token.denied",
            action="token",
            outcome=Outcome.DENIED,
            resource=ResourceRef("agent", actor.id) if actor.type is ActorType.AGENT else None,
            reason=f"{exc.error}: {exc.reason}"[:500],
            details={"authenticated": authenticated},
        )

    @staticmethod
    def check_form(form: Mapping[str, Sequence[str]]) -> None:
        for name, values in form.items():
            if len(values) > 1:
                if name == "resource":
                    raise OAuthError("invalid_target", "one resource per token")
                raise OAuthError("invalid_request", f"parameter {name[:40]} repeated")
        if "client_secret" in form:
            raise _invalid_client("client_secret sent; only private_key_jwt is accepted")

    @staticmethod
    def _client_keys(agent: ClientRecord) -> list[VerificationKey]:
        keys = []
        for key in agent.keys:
            if key.status is not KeyStatus.ACTIVE:
                continue
            imported = _imported(key)
            if imported is not None:
                keys.append(imported)
        return keys

    def authenticate(
        self, uow: UnitOfWork, form: Mapping[str, Sequence[str]], epoch: int, now: datetime
    ) -> tuple[ClientRecord, ClientAssertion]:
        """RFC 7523 section 3 client authentication. The assertion's ``jti`` is consumed
        later, in the write transaction (see :meth:`_single_use`)."""
        if single(form, "client_assertion_type") != CLIENT_ASSERTION_TYPE:
            raise _invalid_client("client_assertion_type is not jwt-bearer")
        raw = single(form, "client_assertion")
        if not raw:
            raise _invalid_client("client_assertion missing")
        try:
            token, claimed = parse_assertion(raw)
        except JoseRejected as exc:
            raise _invalid_client(str(exc)) from None
        client_id = single(form, "client_id")
        if client_id is not None and client_id != claimed:
            raise _invalid_client("client_id does not match the assertion's iss")
        agent = uow.agents.client(claimed) if is_id(claimed, "agent") else None
        if agent is None:
            raise _invalid_client("unknown client")
        if not agent.is_usable(now):
            raise _invalid_client(f"agent is {agent.status.value}")
        try:
            assertion = verify_assertion(
                token,
                self._client_keys(agent),
                client_id=agent.id,
                audiences={self.policy.issuer, self.policy.token_endpoint},
                now=epoch,
                skew=self.policy.skew,
                max_lifetime=MAX_ASSERTION_LIFETIME,
            )
        except JoseRejected as exc:
            raise _invalid_client(str(exc)) from None
        return agent, assertion

    def single_use(
        self,
        agent: ClientRecord,
        assertion: ClientAssertion,
        proof: DpopProof | None,
        now: datetime,
    ) -> list[SingleUse]:
        """The values this request consumes, each with the error a replay earns."""
        skew = self.policy.skew
        uses = [
            SingleUse(
                "client_assertion",
                f"{agent.id}\0{assertion.jti}",
                datetime.fromtimestamp(assertion.exp + skew, now.tzinfo),
                _invalid_client("assertion jti already used"),
            )
        ]
        if proof is not None:
            uses.append(self.proof_use(proof, now))
        return uses

    def proof_use(self, proof: DpopProof, now: datetime) -> SingleUse:
        """A DPoP proof's ``jti``, single use across replicas until the proof is too
        old to be accepted anyway (RFC 9449 section 11.1)."""
        return SingleUse(
            "dpop_proof",
            f"{proof.jkt}\0{proof.jti}",
            datetime.fromtimestamp(
                proof.iat + self.policy.dpop_window.max_age + self.policy.skew, now.tzinfo
            ),
            OAuthError(
                "invalid_dpop_proof",
                "the DPoP proof is not valid",
                reason="DPoP proof jti already used",
            ),
        )

    @staticmethod
    def consume(uow: UnitOfWork, uses: Sequence[SingleUse]) -> None:
        for use in uses:
            if not uow.replay.first_use(use.purpose, use.value, use.expires_at):
                raise use.replay_error

    # -- the token endpoint -------------------------------------------------------------

    def token(
        self, ctx: CallContext, form: Mapping[str, Sequence[str]], dpop: Sequence[str]
    ) -> TokenResponse:
        """Answer one token request (RFC 6749 section 4.4.2); raise OAuthError."""
        grants = form.get("grant_type") or ()
        if list(grants) == [GRANT_TOKEN_EXCHANGE] and self.exchange_handler is not None:
            # Its own path end to end, auditing its own refusals: a failed exchange
            # never falls back to another grant.
            return self.exchange_handler.exchange(ctx, form, dpop)
        now, epoch = self._now()
        proven: str | None = None  # the client, once its assertion verified
        try:
            self.check_form(form)
            grant = single(form, "grant_type")
            if grant is None:
                raise OAuthError("invalid_request", "grant_type is required")
            if grant != GRANT_CLIENT_CREDENTIALS:
                raise OAuthError("unsupported_grant_type", "this grant type is not supported")
            proof = self.proof(dpop, epoch)
            # Read and verify outside the write transaction, so the database's write lock
            # is held only for the inserts below.
            with self._uow(read_only=True) as uow:
                agent, assertion = self.authenticate(uow, form, epoch, now)
            proven = agent.id
            response, claims, issued = self._grant(ctx, agent, form, proof, now, epoch)
            with self._uow() as uow:
                # A suspension committed since the read above is caught by verifiers: it
                # revokes every token issued at or before its own second.
                self.consume(uow, self.single_use(agent, assertion, proof, now))
                uow.audit.append(issued)
                uow.commit()
        except OAuthError as exc:
            _, epoch = self._now()
            exc.headers.update(self.nonce_headers(epoch))
            self.deny(ctx, exc, proven or claimed_client(form), authenticated=proven is not None)
            raise
        response.body["access_token"] = self.sign(claims)
        return response

    def proof(self, dpop: Sequence[str], epoch: int) -> DpopProof | None:
        if not dpop:
            return None
        if len(dpop) > 1:
            raise OAuthError("invalid_dpop_proof", "send exactly one DPoP header")
        try:
            proof = validate_proof(
                dpop[0],
                method="POST",
                url=self.policy.token_endpoint,
                now=epoch,
                window=self.policy.dpop_window,
            )
        except JoseRejected as exc:
            raise OAuthError(
                "invalid_dpop_proof", "the DPoP proof is not valid", reason=str(exc)
            ) from None
        if self.policy.nonce_required and not self.nonces.is_valid(proof.nonce, epoch):
            raise OAuthError(
                "use_dpop_nonce",
                "a current server nonce is required in the DPoP proof",
                reason="DPoP nonce missing or stale",
            )
        return proof

    def _grant(
        self,
        ctx: CallContext,
        agent: ClientRecord,
        form: Mapping[str, Sequence[str]],
        proof: DpopProof | None,
        now: datetime,
        epoch: int,
    ) -> tuple[TokenResponse, AccessTokenClaims, AuditEvent]:
        if proof is None and agent.dpop_required:
            raise OAuthError(
                "invalid_dpop_proof",
                "this client must present a DPoP proof",
                reason="DPoP required for this agent but no proof sent",
            )
        try:
            requested = parse_scope(single(form, "scope"))
        except ValueError as exc:
            raise OAuthError("invalid_scope", str(exc)) from None
        scope = granted_scopes(requested, agent.scopes)
        if scope is None:
            assert requested is not None
            beyond = sorted(set(requested) - set(agent.scopes))
            raise OAuthError(
                "invalid_scope",
                "the requested scope exceeds what this client is entitled to",
                reason=f"not entitled to {' '.join(beyond)[:300]}",
            )
        audience = self._audience(agent, single(form, "resource"))
        expires = epoch + self.policy.access_token_ttl
        if agent.expires_at is not None:  # never outlive an ephemeral agent
            expires = min(expires, int(agent.expires_at.timestamp()))
        claims = AccessTokenClaims(
            issuer=self.policy.issuer,
            subject=agent.id,
            audience=audience,
            client_id=agent.id,
            issued_at=epoch,
            expires_at=expires,
            jti=new_id("token"),
            scope=scope,
            jkt=proof.jkt if proof else None,
            # A task-scoped agent (a JIT sub-agent) never holds an unscoped token.
            chain=ChainClaims(authorization_details=agent.task_scope),
        )
        issued = CallContext(
            actor=Actor(ActorType.AGENT, agent.id), source=ctx.source, trace=ctx.trace
        ).event(
            "token.issued",
            now=now,
            action="token",
            resource=ResourceRef("agent", agent.id),
            details={
                "grant_type": GRANT_CLIENT_CREDENTIALS,
                "jti": claims.jti,
                "aud": audience,
                "scope": " ".join(scope),
                "exp": expires,
                "token_type": "DPoP" if proof else "Bearer",
                "jkt": claims.jkt,
                "authorization_details": [dict(d) for d in agent.task_scope] or None,
            },
        )
        body: dict[str, Any] = {
            "token_type": "DPoP" if proof else "Bearer",
            "expires_in": expires - epoch,
            "scope": " ".join(scope),
        }
        if agent.task_scope:
            body["authorization_details"] = [dict(d) for d in agent.task_scope]
        return self.response(body, epoch), claims, issued

    @staticmethod
    def _audience(agent: ClientRecord, resource: str | None) -> str:
        """RFC 8707: the audience is the requested resource, which must be one the agent
        is entitled to; with none requested, the agent's only audience."""
        if resource is None:
            if len(agent.audiences) == 1:
                return agent.audiences[0]
            raise OAuthError(
                "invalid_target",
                "name the resource the token is for (RFC 8707 'resource')",
                reason=f"no resource and {len(agent.audiences)} entitled audiences",
            )
        try:
            parse_resource(resource)
        except ValueError as exc:
            raise OAuthError("invalid_target", str(exc)) from None
        if resource not in agent.audiences:
            raise OAuthError(
                "invalid_target",
                "this client may not obtain tokens for that resource",
                reason=f"not entitled to audience {resource[:200]}",
            )
        return resource

    # -- introspection (RFC 7662) --------------------------------------------------------

    def introspect(self, ctx: CallContext, token: str | None) -> dict[str, Any]:
        """RFC 7662 section 2.2: ``{"active": false}`` for anything not currently valid,
        else the token's claims. The agent's current status is read from the database,
        so a suspension shows at once here even before the feed reaches a replica."""
        if not token:
            raise OAuthError("invalid_request", "token is required")
        now, epoch = self._now()
        self._revocations.ensure_fresh()
        try:
            access = self._verifier.verify_token(token, now=epoch, any_audience=True)
        except OAuthError as exc:
            if exc.error == "temporarily_unavailable":
                raise
            access = None
        active = access is not None and self._agent_usable(access.client_id, now)
        self._audit.record(
            ctx,
            type="token.introspected",
            action="introspect",
            outcome=Outcome.SUCCESS,
            resource=ResourceRef("agent", access.client_id) if access else None,
            details={"active": active, "jti": access.jti if access else None},
            initiating_human=(
                access.subject if access and is_id(access.subject, "human") else None
            ),
            delegation_chain=tuple(access.chain.actors) if access else (),
        )
        if not active or access is None:
            return {"active": False}
        return _introspection(access)

    def _agent_usable(self, client_id: str, now: datetime) -> bool:
        """The token's client still exists and may act: an active agent, or (for a
        human's subject token) a registered human."""
        with self._uow(read_only=True) as uow:
            if is_id(client_id, "human"):
                return uow.humans.get(client_id) is not None
            agent = uow.agents.get(client_id) if is_id(client_id, "agent") else None
        return agent is not None and agent.is_usable(now)

    # -- revocation (RFC 7009) ------------------------------------------------------------

    def revoke(self, ctx: CallContext, form: Mapping[str, Sequence[str]]) -> None:
        """The client authenticates with ``private_key_jwt`` and may revoke only its own
        tokens. An invalid or expired token is not an error (section 2.2)."""
        now, epoch = self._now()
        try:
            self.check_form(form)
            hint = single(form, "token_type_hint")
            if hint is not None and hint != "access_token":
                raise OAuthError("unsupported_token_type", "only access tokens can be revoked here")
            token = single(form, "token")
            if not token:
                raise OAuthError("invalid_request", "token is required")
            with self._uow(read_only=True) as uow:
                agent, assertion = self.authenticate(uow, form, epoch, now)
            with self._uow() as uow:
                self.consume(uow, self.single_use(agent, assertion, None, now))
                uow.commit()
            self._revocations.ensure_fresh()
            try:
                access: VerifiedAccess | None = self._verifier.verify_token(
                    token, now=epoch, any_audience=True
                )
            except OAuthError:
                access = None
            if access is not None and access.client_id != agent.id:
                raise OAuthError(
                    "unauthorized_client",
                    "a client may revoke only tokens issued to it",
                    reason=f"token belongs to {access.client_id}",
                )
        except OAuthError as exc:
            self.deny(ctx, exc, claimed_client(form))
            raise
        if access is not None:
            self._revocations.revoke_token(
                CallContext(
                    actor=Actor(ActorType.AGENT, agent.id), source=ctx.source, trace=ctx.trace
                ),
                access.jti,
                expires=access.expires_at,
                agent_id=agent.id,
                reason="revoked by its client (RFC 7009)",
            )

    def revoke_as_admin(self, ctx: CallContext, token: str, reason: str) -> VerifiedAccess | None:
        """Revoke a presented token on an operator's behalf; None if it was not valid."""
        _, epoch = self._now()
        self._revocations.ensure_fresh()
        try:
            access = self._verifier.verify_token(token, now=epoch, any_audience=True)
        except OAuthError:
            return None
        self._revocations.revoke_token(
            ctx, access.jti, expires=access.expires_at, agent_id=access.client_id, reason=reason
        )
        return access


def _imported(key: AgentKey) -> VerificationKey | None:
    """The registered key as a verification key (imports are memoised in
    ``import_public_jwk``); None for a stored row whose thumbprint does not match."""
    try:
        imported = import_public_jwk(key.jwk, key.alg, kid=key.kid)
    except JoseRejected:
        return None
    return imported if imported.thumbprint == key.thumbprint else None


def claimed_client(form: Mapping[str, Sequence[str]]) -> str | None:
    """The client a request claims to be, unverified, for the audit record only."""
    client_id = single(form, "client_id")
    if client_id:
        return client_id[:64]
    raw = single(form, "client_assertion")
    if raw:
        try:
            return parse_assertion(raw)[1]
        except JoseRejected:
            return None
    return None


def _introspection(access: VerifiedAccess) -> dict[str, Any]:
    claims = access.claims
    body: dict[str, Any] = {
        "active": True,
        "scope": " ".join(access.scope),
        "client_id": access.client_id,
        "sub": access.subject,
        "aud": claims.get("aud"),
        "iss": claims.get("iss"),
        "exp": access.expires_at,
        "iat": access.issued_at,
        "jti": access.jti,
        "token_type": access.token_type,
    }
    if access.jkt:
        body["cnf"] = {"jkt": access.jkt}
    # The delegation chain (RFC 8693 section 4.1) and task scope (RFC 9396 section 9.2).
    for name in ("act", "may_act", "authorization_details", "delegation"):
        if name in claims:
            body[name] = claims[name]
    return body
