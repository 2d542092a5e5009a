"""Agent public keys (JWK, RFC 7517): what an agent signs its private_key_jwt client
assertions with (RFC 7523; see ``core/credentials/assertions.py``).

Only two key types are accepted, each pinned to one algorithm:

* EC P-256 with ``alg`` ``ES256`` (RFC 7518 section 3.4);
* OKP Ed25519 with ``alg`` ``Ed25519``, the fully specified name of RFC 9864.
  The polymorphic ``EdDSA`` is refused so a key can never be used with another curve.

A key must be public: any private member (``d``, ``p``, ``q``, ``dp``, ``dq``,
``qi``, ``k``) is refused, so a private key pasted by mistake is rejected rather than
stored. Keys are identified by their RFC 7638 thumbprint, which is globally unique:
one key cannot stand for two agents.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from agentiam.core.credentials.jose import (
    ALLOWED_ALGORITHMS,
    PRIVATE_MEMBERS,
    PUBLIC_MEMBERS,
    JoseRejected,
    import_public_jwk,
)
from agentiam.errors import InvalidInput

__all__ = ["ALLOWED_KEY_TYPES", "ValidatedJwk", "validate_public_jwk"]

ALLOWED_KEY_TYPES = ALLOWED_ALGORITHMS
_KID_RE = re.compile(r"^[A-Za-z0-9._~-]{1,128}$")
_MAX_MEMBER_LENGTH = 512


@dataclass(frozen=True, slots=True)
class ValidatedJwk:
    """A public JWK that passed every check, reduced to its public members."""

    kid: str
    alg: str
    jwk: dict[str, str]
    thumbprint: str


def validate_public_jwk(raw: Any) -> ValidatedJwk:
    """Validate ``raw`` as a public ES256 or Ed25519 JWK and return its canonical form.

    ``kid`` defaults to the RFC 7638 thumbprint when the JWK carries none.
    """
    if not isinstance(raw, dict):
        raise InvalidInput("jwk must be a JSON object")
    for name, value in raw.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidInput("jwk members must be strings", hint="Send a single public JWK.")
        if len(value) > _MAX_MEMBER_LENGTH:
            raise InvalidInput(f"jwk member {name!r} is too long")
    private = PRIVATE_MEMBERS & raw.keys()
    if private:
        raise InvalidInput(
            "jwk contains private key material; only public keys are accepted",
            hint="Export the public key only (drop the 'd' member) and keep the private key "
            "with the agent.",
        )
    alg = raw.get("alg")
    if not isinstance(alg, str) or alg not in ALLOWED_KEY_TYPES:
        raise InvalidInput(
            f"jwk alg must be one of {', '.join(ALLOWED_KEY_TYPES)}",
            hint="Set 'alg' to ES256 for P-256 keys or Ed25519 for Ed25519 keys "
            "(the polymorphic 'EdDSA' is not accepted).",
        )
    kty, crv = ALLOWED_KEY_TYPES[alg]
    if raw.get("kty") != kty or raw.get("crv") != crv:
        raise InvalidInput(f"alg {alg} needs kty {kty} and crv {crv}")
    use = raw.get("use")
    if use is not None and use != "sig":
        raise InvalidInput("jwk 'use' must be 'sig' when present")
    public = {m: raw[m] for m in PUBLIC_MEMBERS[kty] if m in raw}
    if len(public) != len(PUBLIC_MEMBERS[kty]):
        raise InvalidInput(f"jwk for {alg} needs members {', '.join(PUBLIC_MEMBERS[kty])}")
    try:
        # Importing checks the encoding and, for EC, that the point is on the curve.
        key = import_public_jwk(public, alg).key
    except JoseRejected as exc:
        raise InvalidInput("jwk is not a valid public key", hint=str(exc)[:200]) from None
    thumbprint = key.thumbprint()
    kid = raw.get("kid", thumbprint)
    if not _KID_RE.match(kid):
        raise InvalidInput("jwk kid must be 1-128 characters of [A-Za-z0-9._~-]")
    return ValidatedJwk(
        kid=kid,
        alg=alg,
        jwk={**public, "kid": kid, "alg": alg, "use": "sig"},
        thumbprint=thumbprint,
    )
