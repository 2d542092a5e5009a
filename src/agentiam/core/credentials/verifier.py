"""Access-token and DPoP verification for resource servers and enforcement points.

This is the library every enforcement point calls on every request. It is pure: keys
come from a :class:`KeyLookup` (a cache the caller keeps fresh), revocations from an
in-memory :class:`~agentiam.core.credentials.revocations.RevocationSet`, and time is
passed in. It never touches a database.

Checks, in order (RFC 9068 section 4, RFC 9449 section 7, RFC 8725):

1. exactly one ``Authorization`` header, at most one ``DPoP`` header, both within size
   limits before anything is decoded;
2. the revocation set is fresh, else every token is refused (fail closed);
3. the token's header: ``typ`` ``at+jwt``, allowed ``alg``, a well-formed ``kid``, no
   key-carrying or ``crit`` headers, no duplicate JSON members;
4. the ``kid`` is not retired (the revocation feed), and the signature verifies with
   the algorithm pinned for it;
5. ``iss`` and ``aud`` exactly (an audience array must be exactly ``[ours]``), ``exp``,
   ``nbf`` and ``iat`` within the clock skew, ``sub``, ``client_id`` and ``jti``
   present;
6. not revoked: by its ``jti`` or that of any token it was derived from, nor by a
   cut-off for its client, any actor in its delegation chain, the human it acts for,
   or the grant it was issued under;
7. the scheme matches the binding: a token with ``cnf.jkt`` is accepted only under the
   ``DPoP`` scheme with a valid proof for this request whose key is ``cnf.jkt`` and
   whose ``ath`` is this token's hash; a Bearer token only where allowed;
8. the proof's ``jti`` is single use, and its nonce current when nonces are required.

Every failure raises :class:`~agentiam.errors.OAuthError` with the RFC 6750 / RFC 9449
code and a ``WWW-Authenticate`` challenge. The description is deliberately generic;
``reason`` names the failed check for the audit trail.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from agentiam.core.credentials.access_tokens import ACCESS_TOKEN_PROFILE
from agentiam.core.credentials.claims import (
    check_not_before,
    check_not_expired,
    numeric_date,
    optional_string_claim,
    string_claim,
)
from agentiam.core.credentials.dpop import DPOP_PROFILE, DpopWindow, validate_proof
from agentiam.core.credentials.jose import (
    ALLOWED_ALGORITHMS,
    JoseRejected,
    VerificationKey,
    parse_compact,
    verify_signature,
)
from agentiam.core.credentials.nonces import NonceIssuer
from agentiam.core.credentials.replay import ReplayCache
from agentiam.core.credentials.revocations import RevocationSet, parties_of
from agentiam.core.delegation.chain import ChainClaims, parse_chain
from agentiam.errors import OAuthError

__all__ = ["AccessTokenVerifier", "KeyLookup", "ProofUse", "VerifiedAccess", "VerifierConfig"]

_ALGS = " ".join(ALLOWED_ALGORITHMS)
# The refusal's reason (audit trail) for a token whose signing key was retired.
_RETIRED = "signing key no longer published"


class KeyLookup(Protocol):
    def get(self, kid: str) -> VerificationKey | None:
        """The published key for ``kid`` with its pinned algorithm, or None."""


@dataclass(frozen=True, slots=True)
class VerifierConfig:
    issuer: str
    audience: str
    skew: int = 30
    dpop_window: DpopWindow = field(default_factory=DpopWindow)
    accept_bearer: bool = False
    require_nonce: bool = False
    max_token_length: int = ACCESS_TOKEN_PROFILE.max_length


@dataclass(frozen=True, slots=True)
class ProofUse:
    """The DPoP proof a request was verified with, as a replay cache records it: the
    proof key's thumbprint and the proof's ``jti``, and until when (Unix seconds) the
    proof would be accepted, hence remembered (RFC 9449 section 11.1)."""

    key: str
    expires: int


@dataclass(frozen=True, slots=True)
class VerifiedAccess:
    """What a verified request may act on (``proof``: the DPoP proof it came with, or
    None for a token verified alone or sent as Bearer; ``kid``: the key that signed
    the token, as its JOSE header named it, so that a check made later can tell
    whether that key is still published)."""

    subject: str
    client_id: str
    scope: tuple[str, ...]
    jti: str
    issued_at: int
    expires_at: int
    jkt: str | None
    claims: Mapping[str, Any]
    chain: ChainClaims = field(default_factory=ChainClaims)
    proof: ProofUse | None = None
    kid: str = ""

    @property
    def token_type(self) -> str:
        return "DPoP" if self.jkt else "Bearer"

    @property
    def audience(self) -> str | None:
        aud = self.claims.get("aud")
        if isinstance(aud, list):
            return aud[0] if len(aud) == 1 and isinstance(aud[0], str) else None
        return aud if isinstance(aud, str) else None

    @property
    def parties(self) -> tuple[str, ...]:
        """Everyone whose cut-off revokes this token besides its client: the subject,
        every actor, and the grant it was issued under."""
        return parties_of(self.subject, self.chain.actors, self.chain.grant_id)


class AccessTokenVerifier:
    def __init__(
        self,
        config: VerifierConfig,
        keys: KeyLookup,
        revocations: RevocationSet,
        *,
        replay: ReplayCache | None = None,
        nonces: NonceIssuer | None = None,
        verified_cache_size: int = 10_000,
    ) -> None:
        if config.require_nonce and nonces is None:
            raise ValueError("require_nonce needs a NonceIssuer")
        self.config = config
        self._keys = keys
        self._revocations = revocations
        self._replay = replay if replay is not None else ReplayCache()
        self._nonces = nonces
        # Tokens whose signature and claims already verified: an agent presents one token
        # for many requests. Expiry, revocation and the key's publication are re-checked
        # on every hit; only the signature and claim parsing are skipped.
        self._verified: OrderedDict[str, VerifiedAccess] = OrderedDict()
        self._verified_max = verified_cache_size

    # -- errors --------------------------------------------------------------------

    def _challenge(self, error: str | None, description: str | None = None) -> str:
        """RFC 9449 section 7.1 challenge (plus RFC 6750 Bearer where accepted), with
        an ``error_description`` when given (a fixed text, never a client's input)."""
        challenge = f'DPoP algs="{_ALGS}"' + (f', error="{error}"' if error else "")
        if description is not None:
            challenge += f', error_description="{description}"'
        return challenge + (", Bearer" if self.config.accept_bearer else "")

    def _invalid_token(self, reason: str) -> OAuthError:
        return OAuthError(
            "invalid_token",
            "the access token is not valid",
            status=401,
            reason=reason,
            headers={"WWW-Authenticate": self._challenge("invalid_token")},
        )

    def _invalid_proof(self, reason: str) -> OAuthError:
        return OAuthError(
            "invalid_dpop_proof",
            "the DPoP proof is not valid",
            status=401,
            reason=reason,
            headers={"WWW-Authenticate": self._challenge("invalid_dpop_proof")},
        )

    def _use_nonce(self, presented: str | None, now: int) -> OAuthError:
        """RFC 9449 section 9: 401 with ``error="use_dpop_nonce"`` (and its
        ``error_description``, section 7.1) in the challenge and a fresh nonce in
        ``DPoP-Nonce``. The proof was not recorded as used: the client signs a new one
        with the nonce. ``reason`` (the audit trail's) tells a missing nonce from one
        that is forged, expired or another server's, without quoting it."""
        description = "a current server nonce is required in the DPoP proof"
        challenge = self._challenge("use_dpop_nonce", description)
        assert self._nonces is not None
        return OAuthError(
            "use_dpop_nonce",
            description,
            status=401,
            reason="DPoP proof without a nonce"
            if presented is None
            else "DPoP nonce not current (expired, or not issued with this server's key)",
            headers={"WWW-Authenticate": challenge, "DPoP-Nonce": self._nonces.issue(now)},
        )

    def _invalid_request(self, reason: str) -> OAuthError:
        return OAuthError(
            "invalid_request",
            reason,
            status=400,
            reason=reason,
            headers={"WWW-Authenticate": self._challenge("invalid_request")},
        )

    # -- verification --------------------------------------------------------------

    def verify_request(
        self,
        *,
        authorization: Sequence[str],
        dpop: Sequence[str],
        method: str,
        url: str,
        now: int,
        any_audience: bool = False,
    ) -> VerifiedAccess:
        """Verify the credentials of one HTTP request to ``method`` ``url``
        (``any_audience``: see :meth:`verify_token`)."""
        if not authorization:
            raise OAuthError(
                "invalid_token",
                "an access token is required",
                status=401,
                reason="no Authorization header",
                headers={"WWW-Authenticate": self._challenge(None)},
            )
        if len(authorization) > 1:
            raise self._invalid_request("more than one Authorization header")
        if len(dpop) > 1:
            raise self._invalid_proof("more than one DPoP header")
        if dpop and len(dpop[0]) > DPOP_PROFILE.max_length:
            raise self._invalid_proof("DPoP proof too large")
        header = authorization[0]
        if len(header) > self.config.max_token_length + 16:
            raise self._invalid_token("Authorization header too large")
        scheme, _, token = header.partition(" ")
        scheme = scheme.lower()
        token = token.strip()
        if scheme not in ("dpop", "bearer") or not token:
            raise self._invalid_token("unsupported authorization scheme")
        access = self.verify_token(token, now=now, any_audience=any_audience)
        if scheme == "bearer":
            if access.jkt is not None:
                raise self._invalid_token("DPoP-bound token presented as Bearer")
            if not self.config.accept_bearer:
                raise self._invalid_token("Bearer tokens are not accepted here")
            if dpop:
                raise self._invalid_request("DPoP proof sent with a Bearer token")
            return access
        if access.jkt is None:
            raise self._invalid_token("token is not DPoP-bound")
        if not dpop:
            raise self._invalid_proof("DPoP proof missing")
        try:
            proof = validate_proof(
                dpop[0],
                method=method,
                url=url,
                now=now,
                window=self.config.dpop_window,
                access_token=token,
                expected_jkt=access.jkt,
            )
        except JoseRejected as exc:
            raise self._invalid_proof(str(exc)) from None
        if self.config.require_nonce:
            assert self._nonces is not None
            if not self._nonces.is_valid(proof.nonce, now):
                raise self._use_nonce(proof.nonce, now)
        use = ProofUse(
            f"{proof.jkt}:{proof.jti}",
            proof.iat + self.config.dpop_window.max_age + self.config.skew,
        )
        if not self._replay.first_use(use.key, expires=use.expires, now=now):
            raise self.replayed()
        return replace(access, proof=use)

    def replayed(self) -> OAuthError:
        """The refusal of a proof seen before (here, or by a shared replay cache that
        the enforcement point consults after this verifier's own)."""
        return self._invalid_proof("DPoP proof jti replayed")

    def verify_token(self, token: str, *, now: int, any_audience: bool = False) -> VerifiedAccess:
        """Verify an access token alone (signature, claims, revocation).

        ``any_audience`` skips the audience check; only the authorization server's own
        endpoints (introspection, revocation, token exchange, sub-agents), which serve
        every audience, use it."""
        if len(token) > self.config.max_token_length:
            raise self._invalid_token(
                f"access token: longer than {self.config.max_token_length} characters"
            )
        if self._revocations.is_stale():
            raise self._stale()
        access = self._verified.get(token)
        if access is not None:
            if now - self.config.skew >= access.expires_at:
                raise self._invalid_token("token expired")
            self._check_published(access.kid)
            if not any_audience and access.claims.get("aud") not in (
                self.config.audience,
                [self.config.audience],
            ):
                raise self._invalid_token("aud is not this resource")
            self._check_revoked(access)
            return access
        try:
            parsed = parse_compact(token, ACCESS_TOKEN_PROFILE)
            if self._revocations.is_key_retired(parsed.kid or ""):
                raise JoseRejected(_RETIRED)
            key = self._keys.get(parsed.kid or "")
            if key is None:
                raise JoseRejected("unknown kid")
            verify_signature(parsed, key)
            claims = parsed.claims
            if claims.get("iss") != self.config.issuer:
                raise JoseRejected("iss is not this issuer")
            aud = claims.get("aud")
            if not any_audience and aud not in (self.config.audience, [self.config.audience]):
                raise JoseRejected("aud is not this resource")
            exp = check_not_expired(claims, now, self.config.skew)
            check_not_before(claims, now, self.config.skew)
            iat = numeric_date(claims, "iat")
            subject = string_claim(claims, "sub")
            client_id = string_claim(claims, "client_id")
            jti = string_claim(claims, "jti")
            scope = optional_string_claim(claims, "scope", max_length=8192) or ""
            jkt = _jkt(claims)
            chain = parse_chain(claims, client_id=client_id)
        except JoseRejected as exc:
            raise self._invalid_token(str(exc)) from None
        access = VerifiedAccess(
            subject=subject,
            client_id=client_id,
            scope=tuple(scope.split()) if scope else (),
            jti=jti,
            issued_at=iat,
            expires_at=exp,
            jkt=jkt,
            claims=claims,
            chain=chain,
            kid=parsed.kid or "",
        )
        self._check_revoked(access)
        self._verified[token] = access
        if len(self._verified) > self._verified_max:
            self._verified.popitem(last=False)
        return access

    def still_valid(self, access: VerifiedAccess, *, now: float) -> None:
        """Check again, at ``now``, a token this verifier accepted earlier, for a
        request that outlives its verification (a stream): the same OAuthError
        :meth:`verify_token` would raise now for a stale revocation set (503), an
        expired token (past ``exp`` plus the clock skew, as requests are judged), a
        token whose signing key is retired (say after a compromise: the revocation
        feed names its ``kid``) or no longer in the key set (RFC 7517 section 5, the
        JWK Set the verifier holds now), or a
        revoked one (RFC 7009; the token, its lineage, or a cut-off for a party).
        The key check is a lookup in the key set held, not a new signature check:
        the signature verified with that key when the token was accepted, and a
        ``kid`` names one key (RFC 7515 section 4.1.4). The issuer and audience
        were checked then too and do not change."""
        if self._revocations.is_stale():
            raise self._stale()
        if now - self.config.skew >= access.expires_at:
            raise self._invalid_token("token expired")
        self._check_published(access.kid)
        self._check_revoked(access)

    @staticmethod
    def _stale() -> OAuthError:
        return OAuthError(
            "temporarily_unavailable",
            "token revocation state is not current; try again shortly",
            status=503,
            reason="revocation feed stale",
        )

    def _check_published(self, kid: str) -> None:
        """Refuse a token accepted earlier whose signing key ``kid`` the revocation
        feed says is retired, or the key set no longer holds (an empty ``kid``, of an
        access this verifier did not accept, names no key: refused too). The feed is
        asked first and alone suffices: a retirement is refused at once, whatever
        the copy of the JWKS held says and whether or not it could be re-read."""
        if not kid or self._revocations.is_key_retired(kid) or self._keys.get(kid) is None:
            raise self._invalid_token(_RETIRED)

    def _check_revoked(self, access: VerifiedAccess) -> None:
        if self._revocations.is_revoked(
            jti=access.jti,
            agent_id=access.client_id,
            issued_at=access.issued_at,
            lineage=access.chain.lineage,
            parties=access.parties,
        ):
            raise self._invalid_token("token revoked")


def _jkt(claims: Mapping[str, Any]) -> str | None:
    cnf = claims.get("cnf")
    if cnf is None:
        return None
    if not isinstance(cnf, dict) or set(cnf) != {"jkt"} or not isinstance(cnf["jkt"], str):
        raise JoseRejected("cnf must be {jkt: <thumbprint>}")
    return cnf["jkt"]
