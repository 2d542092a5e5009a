"""JWT access tokens (RFC 9068) and the request values that shape them.

A token carries ``iss``, ``sub``, ``aud``, ``client_id``, ``exp``, ``iat``, ``jti`` and
``scope`` (RFC 9068 section 2.2), plus ``cnf.jkt`` when it is DPoP-bound (RFC 9449
section 6.1). Its header is ``typ: at+jwt`` (section 2.1) with the signing key's
``kid`` and pinned ``alg``. An agent's token has ``sub`` = ``client_id`` = the agent id;
a delegated token adds the chain claims of :mod:`agentiam.core.delegation.chain`.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from agentiam.core.credentials.jose import ALLOWED_ALGORITHMS, HeaderProfile
from agentiam.core.delegation.chain import ChainClaims

__all__ = [
    "ACCESS_TOKEN_PROFILE",
    "AccessTokenClaims",
    "granted_scopes",
    "parse_resource",
    "parse_scope",
]

ACCESS_TOKEN_PROFILE = HeaderProfile(
    name="access token",
    typ=frozenset({"at+jwt"}),
    algorithms=frozenset(ALLOWED_ALGORITHMS),
    kid_required=True,
    max_length=8192,
)

# RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN_RE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,128}$")
MAX_SCOPES = 64
MAX_RESOURCE_LENGTH = 512


def parse_scope(value: str | None) -> tuple[str, ...] | None:
    """Split a space-delimited ``scope`` (RFC 6749 section 3.3); ``None`` if absent.

    Raise ``ValueError`` on a malformed value."""
    if value is None:
        return None
    if len(value) > MAX_SCOPES * 129:
        raise ValueError("scope is too long")
    tokens = value.split(" ")
    if any(not _SCOPE_TOKEN_RE.match(t) for t in tokens):
        raise ValueError("scope must be space-separated scope tokens (RFC 6749 section 3.3)")
    if len(tokens) > MAX_SCOPES:
        raise ValueError(f"at most {MAX_SCOPES} scopes")
    return tuple(dict.fromkeys(tokens))


def parse_resource(value: str) -> str:
    """Check an RFC 8707 resource indicator: an absolute URI without a fragment
    (section 2). Raise ``ValueError`` otherwise."""
    if not value or len(value) > MAX_RESOURCE_LENGTH or any(ord(c) < 0x21 for c in value):
        raise ValueError(f"resource must be an absolute URI of at most {MAX_RESOURCE_LENGTH}")
    try:
        parts = urlsplit(value)
    except ValueError:
        raise ValueError("resource is not a valid URI") from None
    if not parts.scheme or not (parts.netloc or parts.path):
        raise ValueError("resource must be an absolute URI")
    if "#" in value:
        raise ValueError("resource must not contain a fragment")
    return value


@dataclass(frozen=True, slots=True)
class AccessTokenClaims:
    """The claims of one access token, before signing."""

    issuer: str
    subject: str
    audience: str
    client_id: str
    issued_at: int
    expires_at: int
    jti: str
    scope: tuple[str, ...]
    jkt: str | None = None
    chain: ChainClaims = field(default_factory=ChainClaims)

    def to_jwt_claims(self) -> dict[str, Any]:
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": self.subject,
            "aud": self.audience,
            "client_id": self.client_id,
            "iat": self.issued_at,
            "exp": self.expires_at,
            "jti": self.jti,
        }
        if self.scope:  # an empty scope is no claim, not an empty string
            claims["scope"] = " ".join(self.scope)
        if self.jkt is not None:
            claims["cnf"] = {"jkt": self.jkt}
        claims.update(self.chain.to_claims())
        return claims


def granted_scopes(
    requested: tuple[str, ...] | None, entitled: Collection[str]
) -> tuple[str, ...] | None:
    """The scopes to grant: all requested ones if every one is entitled, else ``None``.
    No request means the agent's whole entitlement (RFC 6749 section 3.3 default)."""
    if requested is None:
        return tuple(sorted(entitled))
    if not set(requested) <= set(entitled):
        return None
    return requested
