"""The two JWTs an agent signs: the ``private_key_jwt`` client assertion (RFC 7523
section 3) and the DPoP proof (RFC 9449 section 4.2)."""

from __future__ import annotations

import secrets
import time

from joserfc import jwt

from agentiam.core.credentials.assertions import sign_client_assertion
from agentiam.core.credentials.dpop import access_token_hash
from agentiam.sdk.keys import AgentKey

__all__ = ["client_assertion", "dpop_proof"]


def client_assertion(
    key: AgentKey, *, client_id: str, audience: str, lifetime: int = 60, now: int | None = None
) -> str:
    """A single-use assertion: iss = sub = client_id, aud = the issuer, short exp
    (:func:`~agentiam.core.credentials.assertions.sign_client_assertion`)."""
    return sign_client_assertion(
        key.key,
        alg=key.alg,
        kid=key.kid,
        client_id=client_id,
        audience=audience,
        now=int(time.time()) if now is None else now,
        lifetime=lifetime,
    )


def dpop_proof(
    key: AgentKey,
    *,
    method: str,
    url: str,
    access_token: str | None = None,
    nonce: str | None = None,
    now: int | None = None,
) -> str:
    """A proof for one request. ``url`` may carry a query; the server ignores it."""
    claims: dict[str, object] = {
        "jti": secrets.token_urlsafe(18),
        "htm": method.upper(),
        "htu": url.split("?", 1)[0].split("#", 1)[0],
        "iat": int(time.time()) if now is None else now,
    }
    if access_token is not None:
        claims["ath"] = access_token_hash(access_token)
    if nonce is not None:
        claims["nonce"] = nonce
    public = {k: v for k, v in key.public_jwk().items() if k not in ("kid", "use", "alg")}
    header = {"typ": "dpop+jwt", "alg": key.alg, "jwk": public}
    return jwt.encode(header, claims, key.key, algorithms=[key.alg])
