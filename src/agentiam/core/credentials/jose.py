"""Strict parsing of compact JWS tokens before any signature is checked.

Every JWT this service accepts (client assertions, DPoP proofs, access tokens) goes
through :func:`parse_compact` first. It applies the JWT BCP (RFC 8725) before a
single key is looked up:

* size limits on the whole token and on the header, checked before decoding;
* exactly three base64url segments (RFC 7515 section 7.1); no JWE, no unencoded payload;
* header and claims must be JSON objects with no duplicate member names (RFC 7515
  section 5.2 step 4 lets a parser reject duplicates; we always do);
* ``alg`` must be on an explicit allowlist (RFC 8725 section 3.1): never ``none``, never
  an HMAC, which stops the "public key as HMAC secret" confusion;
* ``typ`` is checked exactly per token kind (RFC 8725 section 3.11), so one kind of JWT
  cannot stand in for another;
* ``crit`` is refused: we implement no extension (RFC 7515 section 4.1.11);
* key-carrying headers (``jwk``, ``jku``, ``x5u``, ``x5c``, ``x5t``, ``x5t#S256``) are
  refused unless the profile needs ``jwk`` (DPoP), so a token cannot bring its own key;
* ``kid`` must match a short, plain alphabet: no path traversal, SQL or 10 kB strings.

Signatures are then verified by joserfc against one key, with the algorithm pinned for
that key. Failures raise :class:`JoseRejected` whose message is for logs and tests;
callers map it to their own opaque wire error.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey

__all__ = [
    "ALLOWED_ALGORITHMS",
    "KEY_HEADERS",
    "PRIVATE_MEMBERS",
    "PUBLIC_MEMBERS",
    "CompactJws",
    "HeaderProfile",
    "JoseRejected",
    "PublicKey",
    "VerificationKey",
    "b64url_decode",
    "b64url_encode",
    "import_public_jwk",
    "parse_compact",
    "verify_signature",
]

PublicKey = ECKey | OKPKey

# The only signature algorithms accepted anywhere: ES256 and the fully specified
# Ed25519 (RFC 9864). Each is tied to one key type and curve.
ALLOWED_ALGORITHMS: Mapping[str, tuple[str, str]] = {
    "ES256": ("EC", "P-256"),
    "Ed25519": ("OKP", "Ed25519"),
}
KEY_HEADERS = frozenset({"jwk", "jku", "x5u", "x5c", "x5t", "x5t#S256"})
_KID_RE = re.compile(r"^[A-Za-z0-9._~-]{1,128}$")
_PRINTABLE_KID_RE = re.compile(r"^[\x21-\x7e]{1,256}$")
# Key hints that only ever name a key (never carry or locate one).
_HINT_HEADERS = frozenset({"x5t", "x5t#S256"})
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_-]*$")
_MAX_HEADER_SEGMENT = 2048
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


class JoseRejected(Exception):
    """A token failed a structural, header or signature check. The message names the
    check for logs and tests; it is never sent to a client as is."""


@dataclass(frozen=True, slots=True)
class HeaderProfile:
    """What one kind of token may carry in its JOSE header.

    ``typ`` lists the accepted values (compared case-insensitively, with an optional
    ``application/`` prefix, RFC 7515 section 4.1.9); ``None`` in the set allows the
    header to be absent. ``jwk_required`` is for DPoP proofs (RFC 9449 section 4.2).

    ``tolerated_headers`` are key hints an external issuer may send but that are never
    used to find a key (``x5t``, ``x5t#S256`` from Entra ID); ``printable_kid`` widens
    ``kid`` to any printable ASCII (Cognito kids hold ``+``, ``/`` and ``=``). Both are
    for external subject tokens only; our own tokens keep the strict rules.
    """

    name: str
    typ: frozenset[str | None]
    algorithms: frozenset[str]
    jwk_required: bool = False
    kid_required: bool = False
    max_length: int = 8192
    tolerated_headers: frozenset[str] = frozenset()
    printable_kid: bool = False


@dataclass(frozen=True, slots=True)
class CompactJws:
    """A parsed, not yet verified, compact JWS."""

    raw: str
    header: Mapping[str, Any]
    claims: Mapping[str, Any]

    @property
    def alg(self) -> str:
        return str(self.header["alg"])

    @property
    def kid(self) -> str | None:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) else None


def b64url_decode(segment: str) -> bytes:
    """Decode unpadded base64url (RFC 7515 section 2); padding or other alphabets fail."""
    if not _SEGMENT_RE.match(segment) or len(segment) % 4 == 1:
        raise JoseRejected("segment is not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise JoseRejected("segment is not unpadded base64url") from None


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise JoseRejected(f"duplicate member {key!r}")
        result[key] = value
    return result


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates)


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = _DECODER.decode(data.decode("utf-8"))
    except JoseRejected as exc:
        raise JoseRejected(f"{what}: {exc}") from None
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise JoseRejected(f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise JoseRejected(f"{what} is not a JSON object")
    return value


def _typ_matches(typ: Any, accepted: frozenset[str | None]) -> bool:
    if typ is None:
        return None in accepted
    if not isinstance(typ, str):
        return False
    value = typ.lower()
    if value.startswith("application/"):
        value = value[len("application/") :]
    return value in {t.lower() for t in accepted if t is not None}


def parse_compact(token: str, profile: HeaderProfile) -> CompactJws:
    """Parse ``token`` under ``profile``; raise :class:`JoseRejected` on any violation."""
    if not isinstance(token, str) or not token:
        raise JoseRejected(f"{profile.name}: empty")
    if len(token) > profile.max_length:
        raise JoseRejected(f"{profile.name}: longer than {profile.max_length} characters")
    parts = token.split(".")
    if len(parts) != 3:
        raise JoseRejected(f"{profile.name}: not a compact JWS with three segments")
    header_segment, payload_segment, signature_segment = parts
    if len(header_segment) > _MAX_HEADER_SEGMENT:
        raise JoseRejected(f"{profile.name}: header longer than {_MAX_HEADER_SEGMENT}")
    if not signature_segment:
        raise JoseRejected(f"{profile.name}: unsigned")
    header = _json_object(b64url_decode(header_segment), f"{profile.name} header")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in profile.algorithms:
        raise JoseRejected(f"{profile.name}: alg {str(alg)[:20]!r} is not allowed")
    if "crit" in header:
        raise JoseRejected(f"{profile.name}: crit names extensions this service does not support")
    if "b64" in header or "zip" in header or "enc" in header:
        raise JoseRejected(f"{profile.name}: unsupported JOSE header member")
    if not _typ_matches(header.get("typ"), profile.typ):
        raise JoseRejected(f"{profile.name}: typ {str(header.get('typ'))[:40]!r} is not accepted")
    carried = KEY_HEADERS & header.keys() - (profile.tolerated_headers & _HINT_HEADERS)
    if profile.jwk_required:
        if "jwk" not in header:
            raise JoseRejected(f"{profile.name}: jwk header missing")
        carried = carried - {"jwk"}
    if carried:
        raise JoseRejected(f"{profile.name}: key-carrying header {sorted(carried)[0]!r} refused")
    if "kid" in header:
        kid = header["kid"]
        pattern = _PRINTABLE_KID_RE if profile.printable_kid else _KID_RE
        if not isinstance(kid, str) or not pattern.match(kid):
            raise JoseRejected(f"{profile.name}: malformed kid")
    elif profile.kid_required:
        raise JoseRejected(f"{profile.name}: kid missing")
    claims = _json_object(b64url_decode(payload_segment), f"{profile.name} claims")
    return CompactJws(raw=token, header=header, claims=claims)


PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
PUBLIC_MEMBERS: Mapping[str, tuple[str, ...]] = {
    "EC": ("kty", "crv", "x", "y"),
    "OKP": ("kty", "crv", "x"),
}


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A public key with its algorithm pinned (RFC 8725 section 3.1) and its RFC 7638
    thumbprint (the ``cnf.jkt`` of DPoP, RFC 9449 section 6.1)."""

    alg: str
    key: PublicKey
    thumbprint: str
    kid: str | None = None


def import_public_jwk(jwk: Any, alg: str, *, kid: str | None = None) -> VerificationKey:
    """Import ``jwk`` as a public key for ``alg``; refuse private members, another key
    type or curve, and malformed points. Raise :class:`JoseRejected`.

    Members other than the key's public ones (``use``, ``kid``, WebCrypto's ``ext`` and
    ``key_ops``) are ignored. Imports are memoised per key: agents present the same
    DPoP and client keys on every request."""
    if alg not in ALLOWED_ALGORITHMS:
        raise JoseRejected(f"alg {str(alg)[:20]!r} is not allowed")
    if not isinstance(jwk, Mapping):
        raise JoseRejected("jwk is not a JSON object")
    if PRIVATE_MEMBERS & jwk.keys():
        raise JoseRejected("jwk contains private key material")
    kty, crv = ALLOWED_ALGORITHMS[alg]
    if jwk.get("kty") != kty or jwk.get("crv") != crv:
        raise JoseRejected(f"jwk is not a {kty} {crv} key as alg {alg} needs")
    members = PUBLIC_MEMBERS[kty]
    values = tuple(jwk.get(member) for member in members)
    if not all(isinstance(v, str) and 0 < len(v) <= 512 for v in values):
        raise JoseRejected(f"jwk needs string members {', '.join(members)}")
    return _import(alg, values, kid)


@functools.lru_cache(maxsize=8192)
def _import(alg: str, values: tuple[str, ...], kid: str | None) -> VerificationKey:
    kty = ALLOWED_ALGORITHMS[alg][0]
    public: dict[str, str | list[str]] = dict(zip(PUBLIC_MEMBERS[kty], values, strict=True))
    try:
        key: PublicKey = ECKey.import_key(public) if kty == "EC" else OKPKey.import_key(public)
    except (JoseError, ValueError, TypeError):
        raise JoseRejected("jwk is not a valid public key") from None
    if key.is_private:
        raise JoseRejected("jwk contains private key material")
    return VerificationKey(alg=alg, key=key, thumbprint=key.thumbprint(), kid=kid)


def verify_signature(token: CompactJws, key: VerificationKey) -> None:
    """Verify ``token``'s signature with ``key`` under the key's pinned algorithm only
    (RFC 7515 section 5.2 steps 8-9; RFC 7518 section 3.4 for ES256, RFC 8037 section
    3.1 for Ed25519). Raise :class:`JoseRejected` if the algorithms differ or the
    signature fails.

    The check is made with pyca/cryptography on the segments :func:`parse_compact`
    already split and validated, rather than by re-parsing the token (ADR 0004)."""
    if token.alg != key.alg:
        raise JoseRejected(f"alg {token.alg!r} is not the algorithm pinned for this key")
    signing_input, _, signature_segment = token.raw.rpartition(".")
    signature = b64url_decode(signature_segment)
    public = key.key.public_key
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            if len(signature) != 64:  # R || S, 32 octets each (RFC 7518 section 3.4)
                raise JoseRejected("ES256 signature is not 64 octets")
            der = encode_dss_signature(
                int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            )
            public.verify(der, signing_input.encode("ascii"), _ECDSA_SHA256)
        elif isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(signature, signing_input.encode("ascii"))
        else:
            raise JoseRejected("unsupported key type")
    except InvalidSignature:
        raise JoseRejected("signature does not verify") from None
