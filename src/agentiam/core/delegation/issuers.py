"""Trusted external OpenID Connect issuers and strict verification of their tokens.

A human's ``subject_token`` in an RFC 8693 token exchange (section 2.1) may be an ID
token (OIDC Core section 2) or a JWT access token (RFC 9068) minted by an external IdP
the operator trusts. This module is the pure half of accepting one:

* :class:`TrustedIssuer` and :func:`load_trusted_issuers`: the operator's allowlist of
  issuers, each with the audiences it must name, the asymmetric algorithms it may use
  and where its keys come from (a static JWK Set or a ``jwks_uri``, OIDC Discovery
  section 3). Bad configuration raises :class:`~agentiam.errors.InvalidInput`.
* :func:`parse_jwks`: an RFC 7517 JWK Set (section 5) read into an :class:`IssuerKeySet`
  of public keys, each pinned to the algorithms its type allows (RFC 8725 section 3.1).
* :func:`peek_issuer`: the unverified ``iss``, after the structural checks, so a caller
  can route the token to the right issuer's configuration (RFC 8725 section 3.10 warns
  that the value is attacker-controlled: it only selects which keys to try).
* :func:`verify_external_token`: the full check, returning an :class:`ExternalSubject`.

The JOSE header is checked by :func:`~agentiam.core.credentials.jose.parse_compact`
(size limits before decoding, three segments, JSON objects without duplicate members,
``alg`` allowlisted per issuer, no ``crit``, no key-carrying header). ``typ`` is
explicit typing (RFC 8725 section 3.11): it may be absent (many IdPs omit it on ID
tokens) or name a JWT (``JWT``, RFC 7519 section 5.1) or a JWT access token
(``at+jwt``, RFC 9068 section 2.1). As RFC 7515 section 4.1.9 prescribes for media
types, it is compared case-insensitively and the ``application/`` prefix is optional,
so ``jwt``, ``application/jwt`` and ``application/at+jwt`` are accepted too. Every other
type is refused, in particular ``logout+jwt`` (OIDC Back-Channel Logout section 2.4),
``secevent+jwt`` (RFC 8417) and ``dpop+jwt`` (RFC 9449), whose purpose is different.
A token carrying an ``events`` claim (a Security Event Token, RFC 8417 section 2.2) is
refused whatever its ``typ``.

Every failure raises :class:`~agentiam.core.credentials.jose.JoseRejected`; its message
names the failed check and never echoes more than a few characters of token content.
Time is passed in; nothing here reads a clock or touches the network.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from agentiam.core.credentials.claims import (
    check_not_before,
    check_not_expired,
    numeric_date,
    optional_string_claim,
    string_claim,
)
from agentiam.core.credentials.jose import (
    PRIVATE_MEMBERS,
    CompactJws,
    HeaderProfile,
    JoseRejected,
    b64url_decode,
    parse_compact,
)
from agentiam.errors import InvalidInput

__all__ = [
    "DEFAULT_ALGORITHMS",
    "MAX_TOKEN_LENGTH",
    "SUBJECT_TOKEN_ALGORITHMS",
    "SUBJECT_TOKEN_PROFILE",
    "ExternalSubject",
    "IssuerKey",
    "IssuerKeySet",
    "TrustedIssuer",
    "load_trusted_issuers",
    "parse_jwks",
    "parse_subject_token",
    "peek_issuer",
    "subject_token_profile",
    "verify_external_token",
]

# Asymmetric algorithms only (RFC 8725 section 3.1): never "none", never an HMAC, so a
# public key can never be used as a shared secret. "EdDSA" (RFC 8037 section 3.1) and
# the fully specified "Ed25519" (RFC 9864) both mean Ed25519 here; Ed448 is not taken.
SUBJECT_TOKEN_ALGORITHMS = frozenset({"RS256", "PS256", "ES256", "EdDSA", "Ed25519"})
DEFAULT_ALGORITHMS: tuple[str, ...] = ("RS256", "ES256")
MAX_TOKEN_LENGTH = 8192

# Which algorithms each key type can verify (RFC 7518 sections 3.3-3.5, RFC 8037).
_KEY_ALGORITHMS: Mapping[tuple[str, str | None], frozenset[str]] = {
    ("RSA", None): frozenset({"RS256", "PS256"}),
    ("EC", "P-256"): frozenset({"ES256"}),
    ("OKP", "Ed25519"): frozenset({"EdDSA", "Ed25519"}),
}
_EDDSA = frozenset({"EdDSA", "Ed25519"})
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192  # bounds the cost of one verification
MAX_KEYS = 64
_MAX_KID = 256
_MAX_URI = 2048
_MAX_ISSUER = 1024
_MAX_AUDIENCES = 32
_MAX_TOKEN_AUDIENCES = 64
_MAX_TOKEN_AGE = 86_400
_CLAIM_NAME_RE = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")
_NO_SPACE_RE = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces or controls

SUBJECT_TOKEN_PROFILE = HeaderProfile(
    name="subject token",
    typ=frozenset({None, "JWT", "at+jwt"}),
    algorithms=SUBJECT_TOKEN_ALGORITHMS,
    max_length=MAX_TOKEN_LENGTH,
    # Real IdPs: Entra ID adds x5t (ignored; the kid picks the key), Cognito kids hold
    # + / = characters.
    tolerated_headers=frozenset({"x5t", "x5t#S256"}),
    printable_kid=True,
)
"""The header profile for any external subject token; :func:`subject_token_profile`
narrows ``algorithms`` to one issuer's list."""

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


# -- keys ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IssuerKey:
    """One public verification key from an issuer's JWK Set (RFC 7517 section 4).

    ``algorithms`` is the set of JWS algorithms this key may verify: those of its key
    type, narrowed to the JWK's ``alg`` member when it has one (RFC 7517 section 4.4;
    RFC 8725 section 3.1: a key is used with one algorithm family only)."""

    kid: str | None
    kty: str
    algorithms: frozenset[str]
    public_key: PublicKey


@dataclass(frozen=True, slots=True)
class IssuerKeySet:
    """The usable signature keys of one issuer. Immutable; safe to share across threads."""

    keys: tuple[IssuerKey, ...]

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(k.kid for k in self.keys if k.kid is not None)

    def candidates(self, kid: str | None, alg: str) -> tuple[IssuerKey, ...]:
        """Keys that may verify a token with header ``kid`` and ``alg``.

        With a ``kid``, only keys with that ``kid``. Without one, every key for ``alg``;
        :func:`verify_external_token` accepts that only when there is exactly one
        (OIDC Core section 10.1: with several keys in the set a ``kid`` is required)."""
        return tuple(k for k in self.keys if alg in k.algorithms and (kid is None or k.kid == kid))


def _b64_member(jwk: Mapping[str, Any], name: str, *, max_length: int = 2048) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= max_length:
        raise JoseRejected(f"jwk member {name!r} is not a base64url string")
    return b64url_decode(value)


def _public_key(jwk: Mapping[str, Any], kty: str) -> PublicKey:
    try:
        if kty == "RSA":
            n = int.from_bytes(_b64_member(jwk, "n"), "big")
            e = int.from_bytes(_b64_member(jwk, "e", max_length=12), "big")
            bits = n.bit_length()
            if bits < MIN_RSA_BITS:
                raise JoseRejected(f"RSA key has {bits} bits; at least {MIN_RSA_BITS} needed")
            if bits > MAX_RSA_BITS:
                raise JoseRejected(f"RSA key has {bits} bits; at most {MAX_RSA_BITS} allowed")
            return rsa.RSAPublicNumbers(e, n).public_key()
        if kty == "EC":
            x = _b64_member(jwk, "x", max_length=64)
            y = _b64_member(jwk, "y", max_length=64)
            if len(x) != 32 or len(y) != 32:
                raise JoseRejected("P-256 coordinates must be 32 octets")
            return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + x + y)
        x = _b64_member(jwk, "x", max_length=64)
        return ed25519.Ed25519PublicKey.from_public_bytes(x)
    except ValueError:  # not on the curve, wrong length, even exponent, ...
        raise JoseRejected(f"jwk is not a valid {kty} public key") from None


def _parse_key(jwk: Any) -> IssuerKey:
    if not isinstance(jwk, Mapping):
        raise JoseRejected("jwk is not a JSON object")
    if PRIVATE_MEMBERS & jwk.keys():
        raise JoseRejected("jwk contains private or symmetric key material")
    kty = jwk.get("kty")
    crv = jwk.get("crv") if kty != "RSA" else None
    if not isinstance(kty, str) or not isinstance(crv, str | None):
        raise JoseRejected("jwk kty/crv must be strings")
    allowed = _KEY_ALGORITHMS.get((kty, crv))
    if allowed is None:
        raise JoseRejected(f"jwk type {kty[:10]!r} {str(crv)[:10]!r} is not supported")
    kid = jwk.get("kid")
    if kid is not None and (not isinstance(kid, str) or not 0 < len(kid) <= _MAX_KID):
        raise JoseRejected("jwk kid must be a string of 1-256 characters")
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise JoseRejected("jwk use is not 'sig'")
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise JoseRejected("jwk key_ops does not include 'verify'")
    alg = jwk.get("alg")
    if alg is not None:
        if not isinstance(alg, str) or alg not in allowed:
            raise JoseRejected(f"jwk alg {str(alg)[:20]!r} is not usable with a {kty} key")
        algorithms = _EDDSA if alg in _EDDSA else frozenset({alg})
    else:
        algorithms = allowed
    return IssuerKey(kid=kid, kty=kty, algorithms=algorithms, public_key=_public_key(jwk, kty))


def parse_jwks(document: Any, *, strict: bool) -> IssuerKeySet:
    """Read an RFC 7517 JWK Set (section 5) into an :class:`IssuerKeySet`.

    A key holding private or symmetric material (``d``, ``p``, ``k``, ...) always
    rejects the whole set: an issuer that publishes one is broken. Otherwise, with
    ``strict`` (operator configuration) any unusable key is an error; without it (a
    set fetched from an IdP, which may also publish encryption keys or algorithms we
    do not take) unusable keys are skipped. Supported keys: RSA of 2048-8192 bits, EC
    P-256 and OKP Ed25519. Raise :class:`JoseRejected` if no usable key remains or, in
    strict mode, if two keys share a ``kid`` (RFC 7517 section 4.5)."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise JoseRejected("JWK Set is not an object with a 'keys' array")
    entries: list[Any] = document["keys"]
    if len(entries) > MAX_KEYS:
        raise JoseRejected(f"JWK Set holds more than {MAX_KEYS} keys")
    keys: list[IssuerKey] = []
    for index, entry in enumerate(entries):
        if isinstance(entry, Mapping) and PRIVATE_MEMBERS & entry.keys():
            raise JoseRejected(f"JWK Set key {index} contains private or symmetric material")
        try:
            keys.append(_parse_key(entry))
        except JoseRejected as exc:
            if strict:
                raise JoseRejected(f"JWK Set key {index}: {exc}") from None
    if strict:
        kids = [k.kid for k in keys if k.kid is not None]
        if len(kids) != len(set(kids)):
            raise JoseRejected("JWK Set has two keys with the same kid")
    if not keys:
        raise JoseRejected("JWK Set holds no usable signature key")
    return IssuerKeySet(tuple(keys))


# -- configuration ---------------------------------------------------------------------


def _check_jwks_uri(uri: str, allow_private_network: bool) -> None:
    """Syntax only; the adapter resolves and vets the host before every fetch."""
    if len(uri) > _MAX_URI or not _NO_SPACE_RE.match(uri):
        raise InvalidInput("jwks_uri must be an absolute URL without spaces")
    parts = urlsplit(uri)
    schemes = ("https", "http") if allow_private_network else ("https",)
    if parts.scheme not in schemes:
        raise InvalidInput(
            f"jwks_uri must use https (got {parts.scheme[:10]!r})",
            hint="Plain http is allowed only together with allow_private_network: true.",
        )
    if "@" in parts.netloc:
        raise InvalidInput("jwks_uri must not contain user information")
    if not parts.hostname:
        raise InvalidInput("jwks_uri has no host")
    if parts.fragment:
        raise InvalidInput("jwks_uri must not have a fragment")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise InvalidInput("jwks_uri has an invalid port") from None


def _string_tuple(value: Any, name: str, *, max_items: int, max_length: int) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise InvalidInput(f"{name} must be a list of strings")
    if not value:
        raise InvalidInput(f"{name} must name at least one value")
    if len(value) > max_items:
        raise InvalidInput(f"{name} lists more than {max_items} values")
    for item in value:
        if not isinstance(item, str) or not 0 < len(item) <= max_length:
            raise InvalidInput(f"{name} entries must be strings of 1-{max_length} characters")
        if not _NO_SPACE_RE.match(item):
            raise InvalidInput(f"{name} entries must not contain spaces or control characters")
    if len(set(value)) != len(value):
        raise InvalidInput(f"{name} lists a value twice")
    return tuple(value)


@dataclass(frozen=True)
class TrustedIssuer:
    """An external token issuer whose tokens may serve as an RFC 8693 subject token.

    ``issuer`` is compared exactly with the token's ``iss`` (OIDC Core section
    3.1.3.7 step 2). The token's ``aud`` must contain one of ``audiences`` (RFC 7519
    section 4.1.3; RFC 8725 section 3.9). ``algorithms`` is this issuer's JWS
    allowlist, drawn from :data:`SUBJECT_TOKEN_ALGORITHMS`. Keys come from exactly one
    of ``jwks_uri`` (fetched by the adapter; https unless ``allow_private_network``)
    or ``jwks`` (a static JWK Set, RFC 7517 section 5). ``allow_private_network`` lets
    the JWKS host resolve to loopback, private or link-local addresses (tests and
    on-premises IdPs) and then permits plain http too. Tokens whose lifetime
    (``exp - iat``) exceeds ``max_token_age`` seconds, or issued longer ago than that,
    are refused. ``subject_claim`` names the claim holding the subject (``sub`` by
    default, OIDC Core section 2; e.g. ``oid`` for Entra ID).

    Construction validates every field and raises :class:`~agentiam.errors.InvalidInput`.
    """

    issuer: str
    audiences: tuple[str, ...]
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    jwks_uri: str | None = None
    jwks: Mapping[str, Any] | None = field(default=None, hash=False)
    allow_private_network: bool = False
    max_token_age: int = 3600
    subject_claim: str = "sub"
    _static_keys: IssuerKeySet | None = field(
        default=None, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        if not isinstance(self.issuer, str) or not 0 < len(self.issuer) <= _MAX_ISSUER:
            raise InvalidInput(f"issuer must be a string of 1-{_MAX_ISSUER} characters")
        if not _NO_SPACE_RE.match(self.issuer):
            raise InvalidInput("issuer must not contain spaces or control characters")
        audiences = _string_tuple(
            self.audiences, "audiences", max_items=_MAX_AUDIENCES, max_length=_MAX_ISSUER
        )
        object.__setattr__(self, "audiences", audiences)
        algorithms = _string_tuple(self.algorithms, "algorithms", max_items=8, max_length=32)
        for alg in algorithms:
            if alg not in SUBJECT_TOKEN_ALGORITHMS:
                raise InvalidInput(
                    f"algorithm {alg[:20]!r} is not allowed for subject tokens",
                    hint="Use asymmetric algorithms only: "
                    + ", ".join(sorted(SUBJECT_TOKEN_ALGORITHMS))
                    + " (RFC 8725 section 3.1); never none or HS*.",
                )
        object.__setattr__(self, "algorithms", algorithms)
        if not isinstance(self.allow_private_network, bool):
            raise InvalidInput("allow_private_network must be true or false")
        age = self.max_token_age
        if isinstance(age, bool) or not isinstance(age, int) or not 0 < age <= _MAX_TOKEN_AGE:
            raise InvalidInput(f"max_token_age must be whole seconds in 1-{_MAX_TOKEN_AGE}")
        if not isinstance(self.subject_claim, str) or not _CLAIM_NAME_RE.match(self.subject_claim):
            raise InvalidInput("subject_claim must be a claim name of 1-64 plain characters")
        if (self.jwks_uri is None) == (self.jwks is None):
            raise InvalidInput("give exactly one of jwks_uri and jwks")
        if self.jwks_uri is not None:
            if not isinstance(self.jwks_uri, str):
                raise InvalidInput("jwks_uri must be a string")
            _check_jwks_uri(self.jwks_uri, self.allow_private_network)
        else:
            try:
                keys = parse_jwks(self.jwks, strict=True)
            except JoseRejected as exc:
                raise InvalidInput(f"jwks: {exc}") from None
            object.__setattr__(self, "_static_keys", keys)

    @property
    def static_keys(self) -> IssuerKeySet | None:
        """The parsed static ``jwks``; ``None`` when keys come from ``jwks_uri``."""
        return self._static_keys


_ISSUER_FIELDS = frozenset(
    {
        "issuer",
        "audiences",
        "algorithms",
        "jwks_uri",
        "jwks",
        "allow_private_network",
        "max_token_age",
        "subject_claim",
    }
)
_MAX_ISSUERS = 100


def load_trusted_issuers(data: Any) -> tuple[TrustedIssuer, ...]:
    """Validate a decoded YAML/JSON list of issuer objects (the fields of
    :class:`TrustedIssuer`; ``issuer`` and ``audiences`` required). Unknown keys,
    wrong types and duplicate issuers are refused with
    :class:`~agentiam.errors.InvalidInput` naming the entry. ``None`` or ``[]`` means
    no external issuer is trusted."""
    if data is None:
        return ()
    if not isinstance(data, list | tuple):
        raise InvalidInput("trusted issuers must be a list of issuer objects")
    if len(data) > _MAX_ISSUERS:
        raise InvalidInput(f"at most {_MAX_ISSUERS} trusted issuers may be configured")
    issuers: list[TrustedIssuer] = []
    seen: set[str] = set()
    for index, entry in enumerate(data):
        where = f"trusted issuer {index}"
        if not isinstance(entry, Mapping):
            raise InvalidInput(f"{where}: must be an object")
        if not all(isinstance(k, str) for k in entry):
            raise InvalidInput(f"{where}: keys must be strings")
        unknown = sorted(set(entry) - _ISSUER_FIELDS)
        if unknown:
            raise InvalidInput(
                f"{where}: unknown key(s) {', '.join(repr(k[:40]) for k in unknown[:5])}",
                hint="Allowed keys: " + ", ".join(sorted(_ISSUER_FIELDS)) + ".",
            )
        for required in ("issuer", "audiences"):
            if required not in entry:
                raise InvalidInput(f"{where}: {required} is required")
        jwks = entry.get("jwks")
        if jwks is not None and not isinstance(jwks, Mapping):
            raise InvalidInput(f"{where}: jwks must be a JWK Set object")
        kwargs: dict[str, Any] = {k: v for k, v in entry.items() if k != "jwks"}
        for name in ("audiences", "algorithms"):
            if name in kwargs:
                value = kwargs[name]
                if isinstance(value, str) or not isinstance(value, list | tuple):
                    raise InvalidInput(f"{where}: {name} must be a list of strings")
                kwargs[name] = tuple(value)
        try:
            issuer = TrustedIssuer(**kwargs, jwks=jwks)
        except InvalidInput as exc:
            raise InvalidInput(f"{where}: {exc.detail}", hint=exc.hint) from None
        if issuer.issuer in seen:
            raise InvalidInput(f"{where}: issuer {issuer.issuer[:80]!r} is listed twice")
        seen.add(issuer.issuer)
        issuers.append(issuer)
    return tuple(issuers)


# -- tokens ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExternalSubject:
    """A verified external subject token.

    ``subject`` is the value of the issuer's ``subject_claim``; (``issuer``,
    ``subject``) is what :class:`~agentiam.core.identities.models.ExternalIdentity`
    links to a registered human. ``may_act`` is the RFC 8693 section 4.4 claim naming
    who may act for the subject, when present. ``claims`` is the whole, read-only,
    claims set."""

    issuer: str
    subject: str
    jti: str | None
    issued_at: int
    expires_at: int
    may_act: Mapping[str, Any] | None
    claims: Mapping[str, Any]


def subject_token_profile(
    issuer: TrustedIssuer, *, max_length: int = MAX_TOKEN_LENGTH
) -> HeaderProfile:
    """:data:`SUBJECT_TOKEN_PROFILE` narrowed to ``issuer.algorithms``."""
    return replace(
        SUBJECT_TOKEN_PROFILE, algorithms=frozenset(issuer.algorithms), max_length=max_length
    )


def parse_subject_token(
    token: str, issuer: TrustedIssuer, *, max_length: int = MAX_TOKEN_LENGTH
) -> CompactJws:
    """Parse ``token``'s structure and header for ``issuer`` (no signature check).
    The caller may use the ``kid`` to fetch keys before :func:`verify_external_token`."""
    return parse_compact(token, subject_token_profile(issuer, max_length=max_length))


def peek_issuer(token: str, *, max_length: int = MAX_TOKEN_LENGTH) -> str | None:
    """The unverified ``iss`` of ``token`` after the structural and header checks of
    :data:`SUBJECT_TOKEN_PROFILE` (size, three segments, JSON objects, no duplicate
    members, allowed ``alg`` and ``typ``); ``None`` if any fails or ``iss`` is not a
    string. Use it only to choose the :class:`TrustedIssuer` whose keys to try."""
    try:
        parsed = parse_compact(token, replace(SUBJECT_TOKEN_PROFILE, max_length=max_length))
    except JoseRejected:
        return None
    iss = parsed.claims.get("iss")
    if not isinstance(iss, str) or not 0 < len(iss) <= _MAX_ISSUER:
        return None
    return iss


_PKCS1 = padding.PKCS1v15()
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)  # RFC 7518 s. 3.5
_ECDSA = ec.ECDSA(hashes.SHA256())


def _signature_verifies(token: CompactJws, key: IssuerKey) -> bool:
    """RFC 7515 section 5.2 steps 8-9 with the algorithm pinned: the token's ``alg``
    must be one the key allows (checked by the caller via
    :meth:`IssuerKeySet.candidates`), and the verification follows that ``alg`` only."""
    alg = token.alg
    if alg not in key.algorithms:
        return False
    signing_input, _, signature_segment = token.raw.rpartition(".")
    signature = b64url_decode(signature_segment)
    data = signing_input.encode("ascii")
    public = key.public_key
    try:
        if alg in ("RS256", "PS256") and isinstance(public, rsa.RSAPublicKey):
            if len(signature) != (public.key_size + 7) // 8:
                return False
            public.verify(signature, data, _PKCS1 if alg == "RS256" else _PSS, hashes.SHA256())
        elif alg == "ES256" and isinstance(public, ec.EllipticCurvePublicKey):
            if len(signature) != 64:  # R || S, 32 octets each (RFC 7518 section 3.4)
                return False
            r = int.from_bytes(signature[:32], "big")
            s = int.from_bytes(signature[32:], "big")
            public.verify(encode_dss_signature(r, s), data, _ECDSA)
        elif alg in _EDDSA and isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(signature, data)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _audiences(claims: Mapping[str, Any]) -> tuple[str, ...]:
    """``aud`` as a string or an array of strings (RFC 7519 section 4.1.3)."""
    aud = claims.get("aud")
    if aud is None:
        raise JoseRejected("claim aud missing")
    values = [aud] if isinstance(aud, str) else aud
    if not isinstance(values, list) or not 0 < len(values) <= _MAX_TOKEN_AUDIENCES:
        raise JoseRejected("claim aud is not a string or a short array of strings")
    if not all(isinstance(v, str) and 0 < len(v) <= _MAX_ISSUER for v in values):
        raise JoseRejected("claim aud is not a string or a short array of strings")
    return tuple(values)


def verify_external_token(
    token: str,
    issuer: TrustedIssuer,
    keys: IssuerKeySet | Sequence[Mapping[str, Any]],
    *,
    now: int,
    skew: int,
    max_length: int = MAX_TOKEN_LENGTH,
) -> ExternalSubject:
    """Verify an external subject token (RFC 8693 section 2.1) from ``issuer``.

    ``keys`` is the issuer's key set (an :class:`IssuerKeySet`, or raw JWKs read with
    :func:`parse_jwks` leniently). The checks, in order:

    1. size (before any decoding) and header, by :func:`parse_subject_token`;
    2. ``iss`` equals ``issuer.issuer`` exactly (RFC 8725 section 3.8);
    3. the key: with a ``kid``, the key(s) with that ``kid`` whose type allows ``alg``;
       without, the only key for ``alg`` (OIDC Core section 10.1); then the signature
       with that algorithm pinned (RFC 8725 sections 2.1 and 3.1);
    4. ``aud`` contains one of ``issuer.audiences`` (RFC 8725 section 3.9);
    5. ``exp`` required and not passed, ``nbf``/``iat`` not in the future, each with
       ``skew`` (RFC 7519 sections 4.1.4-4.1.6); ``iat`` required, ``exp - iat`` and
       ``now - iat`` at most ``issuer.max_token_age``;
    6. no ``events`` claim (RFC 8417 section 2.2: not a Security Event Token);
    7. the subject claim is a string of 1-256 characters; ``jti``, when present, a
       string of 1-256; ``may_act``, when present, a JSON object (RFC 8693 section 4.4).

    Raise :class:`JoseRejected` with a log-safe message on any failure."""
    parsed = parse_subject_token(token, issuer, max_length=max_length)
    claims = parsed.claims
    iss = string_claim(claims, "iss", max_length=_MAX_ISSUER)
    if iss != issuer.issuer:
        raise JoseRejected("iss is not the trusted issuer this token was routed to")
    key_set = (
        keys if isinstance(keys, IssuerKeySet) else parse_jwks({"keys": list(keys)}, strict=False)
    )
    candidates = key_set.candidates(parsed.kid, parsed.alg)
    if parsed.kid is None and len(candidates) > 1:
        raise JoseRejected("kid missing and the issuer has several keys for this alg")
    if not candidates:
        raise JoseRejected(
            f"no {parsed.alg} key with this kid" if parsed.kid else f"no {parsed.alg} key"
        )
    if not any(_signature_verifies(parsed, key) for key in candidates):
        raise JoseRejected("signature does not verify")

    if not set(_audiences(claims)) & set(issuer.audiences):
        raise JoseRejected("aud does not name this service")
    expires_at = check_not_expired(claims, now, skew)
    check_not_before(claims, now, skew)
    issued_at = numeric_date(claims, "iat")
    if expires_at <= issued_at:
        raise JoseRejected("exp is not after iat")
    if expires_at - issued_at > issuer.max_token_age:
        raise JoseRejected("token lifetime exceeds the issuer's max_token_age")
    if now - issued_at > issuer.max_token_age + skew:
        raise JoseRejected("token was issued longer ago than the issuer's max_token_age")
    if "events" in claims:
        raise JoseRejected("token is a Security Event Token (events claim)")
    subject = string_claim(claims, issuer.subject_claim, max_length=256)
    jti = optional_string_claim(claims, "jti", max_length=256)
    may_act = claims.get("may_act")
    if may_act is not None and not isinstance(may_act, dict):
        raise JoseRejected("claim may_act is not a JSON object")
    return ExternalSubject(
        issuer=iss,
        subject=subject,
        jti=jti,
        issued_at=issued_at,
        expires_at=expires_at,
        may_act=MappingProxyType(may_act) if may_act is not None else None,
        claims=MappingProxyType(dict(claims)),
    )
