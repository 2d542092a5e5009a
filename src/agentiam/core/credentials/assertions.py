"""Client assertions for ``private_key_jwt`` (RFC 7523 sections 2.2 and 3; RFC 7521
section 4.2; OpenID Connect Core 1.0 section 9).

:func:`sign_client_assertion` makes one: the single implementation both an agent (the
SDK, toward this service) and a gateway (toward an upstream's token endpoint, the
credential broker) sign with.

Validation is split in two so the service can look up keys in between:
:func:`parse_assertion` applies the header profile and reads the claimed client
without trusting it; :func:`verify_assertion` checks the signature with one of that
client's registered keys and then every claim rule:

* ``iss`` and ``sub`` both equal the ``client_id`` (section 3, items 1-2);
* ``aud`` is the issuer or the token endpoint, as a string or a one-element array
  (section 3 item 3; a single audience avoids the audience-injection weakness);
* ``exp`` is required and at most ``max_lifetime`` seconds ahead (section 3 item 4);
* ``nbf`` and ``iat``, when present, are not in the future beyond the clock skew;
* ``jti`` is required; its single use is enforced by the caller's replay store.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey, RSAKey

from agentiam.core.credentials.claims import (
    check_not_before,
    check_not_expired,
    string_claim,
)
from agentiam.core.credentials.jose import (
    ALLOWED_ALGORITHMS,
    CompactJws,
    HeaderProfile,
    JoseRejected,
    VerificationKey,
    b64url_encode,
    parse_compact,
    verify_signature,
)

__all__ = [
    "ASSERTION_PROFILE",
    "CLIENT_ASSERTION_TYPE",
    "SIGNING_ALGORITHMS",
    "ClientAssertion",
    "certificate_thumbprints",
    "parse_assertion",
    "sign_client_assertion",
    "verify_assertion",
]

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

# typ may be absent or plain JWT; an access token or DPoP proof cannot pass as one.
ASSERTION_PROFILE = HeaderProfile(
    name="client assertion",
    typ=frozenset({None, "JWT", "client-authentication+jwt"}),
    algorithms=frozenset(ALLOWED_ALGORITHMS),
    max_length=4096,
)


# What a client may sign its assertion with: the algorithms this service accepts, and
# RSA for an upstream authorization server that takes no other (RFC 7518 section 3.3,
# RS256; section 3.5, PS256). Each is tied to its key type (and curve).
SIGNING_ALGORITHMS: Mapping[str, tuple[str, str | None]] = {
    **ALLOWED_ALGORITHMS,
    "PS256": ("RSA", None),
    "RS256": ("RSA", None),
}


_THUMBPRINT_HEADERS = frozenset({"x5t#S256", "x5t"})


def certificate_thumbprints(der: bytes, *, sha1: bool = False) -> dict[str, str]:
    """The JOSE header thumbprints of the X.509 certificate ``der`` (its DER
    encoding): ``x5t#S256``, base64url of its SHA-256 digest (RFC 7515 section
    4.1.8), and with ``sha1`` also ``x5t``, of its SHA-1 digest (section 4.1.7; some
    servers, Microsoft Entra ID among them, look a client's certificate up by it).
    SHA-1 is used here as a name for a certificate the server already holds, not to
    sign or verify anything."""
    prints = {"x5t#S256": b64url_encode(hashlib.sha256(der).digest())}
    if sha1:
        prints["x5t"] = b64url_encode(hashlib.sha1(der, usedforsecurity=False).digest())
    return prints


def sign_client_assertion(
    key: ECKey | OKPKey | RSAKey,
    *,
    alg: str,
    kid: str | None,
    client_id: str,
    audience: str,
    now: int,
    lifetime: int = 60,
    thumbprints: Mapping[str, str] | None = None,
) -> str:
    """A single-use client assertion (RFC 7523 section 3; OpenID Connect Core 1.0
    section 9, ``private_key_jwt``): ``iss`` = ``sub`` = ``client_id``, ``aud`` the
    authorization server (its issuer, or its token endpoint URL), ``iat`` = ``now``,
    ``exp`` ``lifetime`` seconds later, a random ``jti`` (144 bits), signed with
    ``key`` under ``alg`` (one of :data:`SIGNING_ALGORITHMS`, which must fit the key's
    type) and ``kid`` in the header when given, as are ``thumbprints`` (the
    certificate's ``x5t#S256`` and ``x5t``: :func:`certificate_thumbprints`)."""
    if thumbprints and not set(thumbprints) <= _THUMBPRINT_HEADERS:
        raise ValueError("thumbprints holds x5t#S256 and x5t only")
    pinned = SIGNING_ALGORITHMS.get(alg)
    if pinned is None:
        raise ValueError(f"alg must be one of {', '.join(SIGNING_ALGORITHMS)}")
    kty, curve = pinned
    public = key.as_dict(private=False)
    if key.key_type != kty or (curve is not None and public.get("crv") != curve):
        raise ValueError(f"{alg} needs a {kty} key{f' on {curve}' if curve else ''}")
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": now,
        "exp": now + lifetime,
        "jti": secrets.token_urlsafe(18),
    }
    header = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    header.update(thumbprints or {})
    return jwt.encode(header, claims, key, algorithms=[alg])


@dataclass(frozen=True, slots=True)
class ClientAssertion:
    """An assertion that passed every check except the single use of its ``jti``."""

    client_id: str
    jti: str
    exp: int
    kid: str | None


def parse_assertion(assertion: str) -> tuple[CompactJws, str]:
    """Parse and return the token with the client it claims to be (``iss``)."""
    token = parse_compact(assertion, ASSERTION_PROFILE)
    issuer = string_claim(token.claims, "iss", max_length=64)
    return token, issuer


def verify_assertion(
    token: CompactJws,
    keys: Sequence[VerificationKey],
    *,
    client_id: str,
    audiences: Collection[str],
    now: int,
    skew: int,
    max_lifetime: int,
) -> ClientAssertion:
    """Verify ``token`` for ``client_id`` against its registered ``keys``.

    With a ``kid`` only the key of that kid is tried; without one, each key whose
    pinned algorithm is the header's. Raise :class:`JoseRejected` on any failure.
    """
    kid = token.kid
    candidates = [k for k in keys if k.alg == token.alg and (kid is None or k.kid == kid)]
    if not candidates:
        raise JoseRejected("no registered, active key matches the assertion's kid and alg")
    for key in candidates:
        try:
            verify_signature(token, key)
            break
        except JoseRejected:
            continue
    else:
        raise JoseRejected("signature does not verify with any registered key")
    claims = token.claims
    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        raise JoseRejected("iss and sub must both be the client_id")
    aud = claims.get("aud")
    if isinstance(aud, list) and len(aud) == 1:
        aud = aud[0]
    if not isinstance(aud, str) or aud not in audiences:
        raise JoseRejected("aud is not this authorization server")
    exp = check_not_expired(claims, now, skew)
    if exp > now + max_lifetime + skew:
        raise JoseRejected(f"exp is more than {max_lifetime} s ahead")
    check_not_before(claims, now, skew)
    jti = string_claim(claims, "jti", max_length=256)
    return ClientAssertion(client_id=client_id, jti=jti, exp=exp, kid=kid)
