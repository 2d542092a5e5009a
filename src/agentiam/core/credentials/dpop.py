"""DPoP proof validation (RFC 9449 section 4.3) and the helpers both sides need.

:func:`validate_proof` runs every check of section 4.3 that needs no state: one
well-formed JWT, ``typ`` ``dpop+jwt``, an allowed asymmetric ``alg``, a public-only
``jwk`` that verifies the signature, ``htm`` and ``htu`` (normalised per RFC 3986
sections 6.2.2 and 6.2.3, query and fragment ignored), ``iat`` inside the window, and,
when an access token comes with it, ``ath`` and the ``cnf.jkt`` binding (section 6.1).
The ``jti`` replay check and the server nonce are the caller's, since they need state;
:class:`DpopProof` carries what they need.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from agentiam.core.credentials.claims import numeric_date, optional_string_claim, string_claim
from agentiam.core.credentials.jose import (
    ALLOWED_ALGORITHMS,
    HeaderProfile,
    JoseRejected,
    b64url_encode,
    import_public_jwk,
    parse_compact,
    verify_signature,
)

__all__ = [
    "DPOP_PROFILE",
    "DpopProof",
    "DpopWindow",
    "access_token_hash",
    "normalize_htu",
    "validate_proof",
]

DPOP_PROFILE = HeaderProfile(
    name="DPoP proof",
    typ=frozenset({"dpop+jwt"}),
    algorithms=frozenset(ALLOWED_ALGORITHMS),
    jwk_required=True,
    max_length=4096,
)
_DEFAULT_PORTS = {"http": 80, "https": 443}
_PERCENT_RE = re.compile(r"%[0-9A-Fa-f]{2}")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


@dataclass(frozen=True, slots=True)
class DpopWindow:
    """How old (``max_age``) or how far ahead (``max_future``) a proof's ``iat`` may be,
    in seconds (RFC 9449 section 11.1)."""

    max_age: int = 60
    max_future: int = 5


@dataclass(frozen=True, slots=True)
class DpopProof:
    """A proof that passed the stateless checks."""

    jkt: str
    jti: str
    iat: int
    nonce: str | None


def access_token_hash(access_token: str) -> str:
    """``ath``: base64url of the SHA-256 of the ASCII access token (section 4.2)."""
    return b64url_encode(hashlib.sha256(access_token.encode("ascii")).digest())


def _normalize_percent(text: str) -> str:
    def fix(match: re.Match[str]) -> str:
        char = chr(int(match.group(0)[1:], 16))
        return char if char in _UNRESERVED else match.group(0).upper()

    return _PERCENT_RE.sub(fix, text)


@functools.lru_cache(maxsize=1024)
def normalize_htu(url: str) -> str:
    """Normalise an HTTP URI for comparison: lower-case scheme and host, default port
    dropped, empty path as ``/``, percent-encodings normalised, query and fragment
    removed (RFC 9449 section 4.3 step 9; RFC 3986 sections 6.2.2-6.2.3)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise JoseRejected("htu is not a valid URI") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.username or parts.password:
        raise JoseRejected("htu must be an absolute http(s) URI without user info")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    path = _normalize_percent(parts.path) or "/"
    return f"{scheme}://{netloc}{path}"


def validate_proof(
    proof: str,
    *,
    method: str,
    url: str,
    now: int,
    window: DpopWindow,
    access_token: str | None = None,
    expected_jkt: str | None = None,
) -> DpopProof:
    """Check ``proof`` for a request of ``method`` to ``url`` (section 4.3).

    Pass ``access_token`` at a resource server: ``ath`` must then match it, and
    ``expected_jkt`` (the token's ``cnf.jkt``) must be the proof key's thumbprint.
    Raise :class:`JoseRejected` naming the failed check.
    """
    token = parse_compact(proof, DPOP_PROFILE)
    key = import_public_jwk(token.header["jwk"], token.alg)
    jkt = key.thumbprint
    verify_signature(token, key)
    claims = token.claims
    jti = string_claim(claims, "jti", max_length=256)
    htm = string_claim(claims, "htm", max_length=16)
    htu = string_claim(claims, "htu", max_length=2048)
    iat = numeric_date(claims, "iat")
    if htm != method:
        raise JoseRejected("htm does not match the request method")
    if normalize_htu(htu) != normalize_htu(url):
        raise JoseRejected("htu does not match the request URI")
    if iat < now - window.max_age or iat > now + window.max_future:
        raise JoseRejected("iat is outside the accepted window")
    nonce = optional_string_claim(claims, "nonce", max_length=512)
    if access_token is not None:
        ath = string_claim(claims, "ath", max_length=128)
        if not hmac.compare_digest(ath, access_token_hash(access_token)):
            raise JoseRejected("ath does not match the access token")
    if expected_jkt is not None and not hmac.compare_digest(jkt, expected_jkt):
        raise JoseRejected("proof key does not match the token's cnf.jkt")
    return DpopProof(jkt=jkt, jti=jti, iat=iat, nonce=nonce)
