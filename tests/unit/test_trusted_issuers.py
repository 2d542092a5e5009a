"""Trusted external issuers: configuration and strict verification of subject tokens.

The subject token of an RFC 8693 token exchange may come from an external OpenID
Connect issuer. Every test here starts from a token that verifies (the baselines at the
top, signed by joserfc as a real IdP library would) and breaks one thing, asserting the
message that names the check which caught it, so a test cannot pass because some other
check happened to refuse the token.

References: RFC 8693 (token exchange), RFC 8725 (JWT BCP), RFC 7517 (JWK),
RFC 7518 (JWA), RFC 9068 (JWT access tokens), OIDC Core 1.0.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey, RSAKey

from agentiam.core.credentials.jose import JoseRejected
from agentiam.core.delegation.issuers import (
    ExternalSubject,
    IssuerKeySet,
    TrustedIssuer,
    load_trusted_issuers,
    parse_jwks,
    peek_issuer,
    verify_external_token,
)
from agentiam.errors import InvalidInput

ISSUER = "https://idp.example.com"
AUDIENCE = "https://agentiam.example"
NOW = 1_800_000_000
SKEW = 30
DROP = object()

# -- keys and signing ------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@pytest.fixture(scope="module")
def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048)


@pytest.fixture(scope="module")
def rsa_other() -> RSAKey:
    return RSAKey.generate_key(2048)


@pytest.fixture(scope="module")
def ec_key() -> ECKey:
    return ECKey.generate_key("P-256")


@pytest.fixture(scope="module")
def ed_key() -> OKPKey:
    return OKPKey.generate_key("Ed25519")


def public_jwk(key: RSAKey | ECKey | OKPKey, kid: str, **extra: Any) -> dict[str, Any]:
    jwk: dict[str, Any] = dict(key.as_dict(private=False))
    jwk.update({"kid": kid, "use": "sig", **extra})
    return jwk


@pytest.fixture(scope="module")
def jwks(rsa_key: RSAKey, ec_key: ECKey, ed_key: OKPKey) -> dict[str, Any]:
    return {
        "keys": [
            public_jwk(rsa_key, "rsa-1"),
            public_jwk(ec_key, "ec-1"),
            public_jwk(ed_key, "ed-1"),
        ]
    }


@pytest.fixture(scope="module")
def issuer(jwks: dict[str, Any]) -> TrustedIssuer:
    return TrustedIssuer(
        issuer=ISSUER,
        audiences=(AUDIENCE, "agentiam"),
        algorithms=("RS256", "PS256", "ES256", "EdDSA"),
        jwks=jwks,
    )


@pytest.fixture(scope="module")
def keys(issuer: TrustedIssuer) -> IssuerKeySet:
    assert issuer.static_keys is not None
    return issuer.static_keys


def _bytes(value: Mapping[str, Any] | bytes) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


def signature(key: Any, alg: str, data: bytes) -> bytes:
    private = key.private_key
    if alg == "RS256":
        return bytes(private.sign(data, padding.PKCS1v15(), hashes.SHA256()))
    if alg == "PS256":
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        return bytes(private.sign(data, pss, hashes.SHA256()))
    if alg == "ES256":
        r, s = decode_dss_signature(private.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    return private.sign(data)


def raw_jws(
    header: Mapping[str, Any] | bytes, claims: Mapping[str, Any] | bytes, key: Any, alg: str
) -> str:
    """A compact JWS built by hand, signed with ``key`` under ``alg``."""
    signing_input = f"{b64(_bytes(header))}.{b64(_bytes(claims))}"
    return f"{signing_input}.{b64(signature(key, alg, signing_input.encode()))}"


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "00u1human",
        "iat": NOW - 10,
        "exp": NOW + 600,
        "jti": "token-1",
        "email": "ada@example.com",
    }
    for name, value in overrides.items():
        if value is DROP:
            base.pop(name, None)
        else:
            base[name] = value
    return base


def header(alg: str = "RS256", kid: str | None = "rsa-1", **extra: Any) -> dict[str, Any]:
    h: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        h["kid"] = kid
    h.update(extra)
    return h


def rs256(key: RSAKey, **overrides: Any) -> str:
    return raw_jws(header(), claims(**overrides), key, "RS256")


def verify(token: str, issuer: TrustedIssuer, keys: Any, **kw: Any) -> ExternalSubject:
    return verify_external_token(token, issuer, keys, now=kw.pop("now", NOW), skew=SKEW, **kw)


def rejected(token: str, issuer: TrustedIssuer, keys: Any, match: str, **kw: Any) -> None:
    with pytest.raises(JoseRejected, match=match):
        verify(token, issuer, keys, **kw)


# -- baselines -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alg", "kid", "fixture"),
    [("RS256", "rsa-1", "rsa_key"), ("PS256", "rsa-1", "rsa_key"), ("ES256", "ec-1", "ec_key")],
)
def test_joserfc_signed_tokens_verify(
    request: pytest.FixtureRequest,
    issuer: TrustedIssuer,
    keys: IssuerKeySet,
    alg: str,
    kid: str,
    fixture: str,
) -> None:
    key = request.getfixturevalue(fixture)
    token = jwt.encode({"alg": alg, "kid": kid}, claims(), key, algorithms=[alg])
    subject = verify(token, issuer, keys)
    assert subject.issuer == ISSUER
    assert subject.subject == "00u1human"
    assert subject.jti == "token-1"
    assert (subject.issued_at, subject.expires_at) == (NOW - 10, NOW + 600)
    assert subject.may_act is None
    assert subject.claims["email"] == "ada@example.com"


@pytest.mark.parametrize("alg", ["EdDSA", "Ed25519"])
def test_ed25519_tokens_verify(ed_key: OKPKey, jwks: dict[str, Any], alg: str) -> None:
    issuer = TrustedIssuer(issuer=ISSUER, audiences=(AUDIENCE,), algorithms=(alg,), jwks=jwks)
    token = raw_jws(header(alg, "ed-1"), claims(), ed_key, alg)
    assert verify(token, issuer, issuer.static_keys).subject == "00u1human"


def test_raw_jwk_dicts_are_accepted_as_keys(
    rsa_key: RSAKey, issuer: TrustedIssuer, jwks: dict[str, Any]
) -> None:
    assert verify(rs256(rsa_key), issuer, jwks["keys"]).subject == "00u1human"


@pytest.mark.parametrize(
    "typ", [None, "JWT", "jwt", "application/jwt", "at+jwt", "AT+JWT", "application/at+jwt"]
)
def test_typ_absent_or_jwt_or_access_token(
    rsa_key: RSAKey, issuer: TrustedIssuer, keys: IssuerKeySet, typ: str | None
) -> None:
    h = header()
    h.pop("typ")
    if typ is not None:
        h["typ"] = typ
    token = raw_jws(h, claims(), rsa_key, "RS256")
    assert verify(token, issuer, keys).subject == "00u1human"


def test_audience_array_containing_ours(
    rsa_key: RSAKey, issuer: TrustedIssuer, keys: IssuerKeySet
) -> None:
    token = rs256(rsa_key, aud=["https://other.example", "agentiam"])
    assert verify(token, issuer, keys).subject == "00u1human"


def test_may_act_object_is_returned(
    rsa_key: RSAKey, issuer: TrustedIssuer, keys: IssuerKeySet
) -> None:
    may_act = {"sub": "agent_0123456789", "iss": "https://agentiam.example"}
    subject = verify(rs256(rsa_key, may_act=may_act), issuer, keys)
    assert subject.may_act == may_act


def test_custom_subject_claim(rsa_key: RSAKey, jwks: dict[str, Any]) -> None:
    issuer = TrustedIssuer(issuer=ISSUER, audiences=(AUDIENCE,), jwks=jwks, subject_claim="oid")
    subject = verify(rs256(rsa_key, oid="7f0c-oid"), issuer, issuer.static_keys)
    assert subject.subject == "7f0c-oid"
    rejected(rs256(rsa_key), issuer, issuer.static_keys, "claim oid missing")


def test_kid_may_be_omitted_when_one_key_fits(rsa_key: RSAKey, issuer: TrustedIssuer) -> None:
    only = parse_jwks({"keys": [public_jwk(rsa_key, "rsa-1")]}, strict=True)
    token = raw_jws(header(kid=None), claims(), rsa_key, "RS256")
    assert verify(token, issuer, only).subject == "00u1human"


def test_skew_tolerates_slightly_early_iat(
    rsa_key: RSAKey, issuer: TrustedIssuer, keys: IssuerKeySet
) -> None:
    assert verify(rs256(rsa_key, iat=NOW + SKEW), issuer, keys).subject == "00u1human"


# -- signature and key selection -------------------------------------------------------


def test_forged_signature_with_another_key(
    rsa_other: RSAKey, issuer: TrustedIssuer, keys: IssuerKeySet
) -> None:
    rejected(rs256(rsa_other), issuer, keys, "signature does not verify")


def test_tampered_claims(rsa_key: RSAKey, issuer: TrustedIssuer, keys: IssuerKeySet) -> None:
    h, _, s = rs256(rsa_key).split(".")
    forged = f"{h}.{b64(json.dumps(claims(sub='admin')).encode())}.{s}"
    rejected(forged, issuer, keys, "signature does not verify")


def test_unknown_kid(rsa_key: RSAKey, issuer: TrustedIssuer, keys: IssuerKeySet) -> None:
    token = raw_jws(header(kid="rotated-away"), claims(), rsa_key, "RS256")
    rejected(token, issuer, keys, "no RS256 key with this kid")


def test_kid_of_another_key_type(ec_key: ECKey, issuer: TrustedIssuer, keys: IssuerKeySet) -> None:
    """An ES256 token naming the RSA key's kid: the key cannot verify that algorithm."""
    token = raw_jws(header("ES256", "rsa-1"), claims(), ec_key, "ES256")
    rejected(token, issuer, keys, "no ES256 key with this kid")


def test_missing_kid_with_several_keys(
    rsa_key: RSAKey, rsa_other: RSAKey, issuer: TrustedIssuer
) -> None:
    two = parse_jwks(
        {"keys": [public_jwk(rsa_key, "rsa-1"), public_jwk(rsa_other, "rsa-2")]}, strict=True
    )
    token = raw_jws(header(kid=None), claims(), rsa_key, "RS256")
    rejected(token, issuer, two, "kid missing and the issuer has several keys")


def test_jwk_alg_pins_the_algorithm(rsa_key: RSAKey, issuer: TrustedIssuer) -> None:
    """A key published with ``alg: RS256`` does not verify a PS256 token."""
    pinned = parse_jwks({"keys": [public_jwk(rsa_key, "rsa-1", alg="RS256")]}, strict=True)
    token = raw_jws(header("PS256"), claims(), rsa_key, "PS256")
    rejected(token, issuer, pinned, "no PS256 key with this kid")


def test_encryption_keys_are_not_used(rsa_key: RSAKey, ec_key: ECKey) -> None:
    fetched = parse_jwks(
        {"keys": [public_jwk(rsa_key, "rsa-1", use="enc"), public_jwk(ec_key, "ec-1")]},
        strict=False,
    )
    assert fetched.kids == {"ec-1"}
    with pytest.raises(JoseRejected, match="use is not 'sig'"):
        parse_jwks({"keys": [public_jwk(rsa_key, "rsa-1", use="enc")]}, strict=True)


def test_alg_none(issuer: TrustedIssuer, keys: IssuerKeySet) -> None:
    token = f"{b64(json.dumps({'alg': 'none'}).encode())}.{b64(json.dumps(claims()).encode())}."
    rejected(token, issuer, keys, "unsigned|alg 'none' is not allowed")
    token += b64(b"x")
    rejected(token, issuer, keys, "alg 'none' is not allowed")


def test_hs256_with_the_rsa_public_key_as_secret(
    rsa_key: RSAKey, issuer: TrustedIssuer, keys: IssuerKeySet
) -> None:
    """The classic algorithm confusion (RFC 8725 section 2.1): HMAC keyed with the
    issuer's public key, which the attacker knows."""
    public = rsa_key.private_key.public_key() if rsa_key.private_key else None
    assert isinstance(public, rsa.RSAPublicKey)
    for secret in (
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        json.dumps(public_jwk(rsa_key, "rsa-1")).encode(),
    ):
        signing_input = (
            f"{b64(json.dumps(header('HS256')).encode())}.{b64(json.dumps(claims()).encode())}"
        )
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        rejected(f"{signing_input}.{b64(mac)}", issuer, keys, "alg 'HS256' is not allowed")


def test_alg_not_allowed_for_this_issuer(rsa_key: RSAKey, jwks: dict[str, Any]) -> None:
    rs_only = TrustedIssuer(issuer=ISSUER, audiences=(AUDIENCE,), algorithms=("RS256",), jwks=jwks)
    token = raw_jws(header("PS256"), claims(), rsa_key, "PS256")
    rejected(token, rs_only, rs_only.static_keys, "alg 'PS256' is not allowed")


def test_es256_signature_of_wrong_length(
    ec_key: ECKey, issuer: TrustedIssuer, keys: IssuerKeySet
) -> None:
    h, p, s = raw_jws(header("ES256", "ec-1"), claims(), ec_key, "ES256").split(".")
    longer = b64(base64.urlsafe_b64decode(s + "==") + b"\x00")
    rejected(f"{h}.{p}.{longer}", issuer, keys, "signature does not verify")


# -- header ----------------------------------------------------------------------------


def test_crit_header(rsa_key: RSAKey, issuer: TrustedIssuer, keys: IssuerKeySet) -> None:
    token = raw_jws(header(crit=["exp"], exp=1), claims(), rsa_key, "RS256")
    rejected(token, issuer, keys, "crit")


@pytest.mark.parametrize("name", ["jwk", "jku", "x5u", "x5c"])
def test_key_carrying_headers(
    rsa_key: RSAKey, issuer: TrustedIssuer, keys: IssuerKeySet, name: str
) -> None:
    value: Any = {
        "jwk": public_jwk(rsa_key, "rsa-1"),
        "jku": "https://attacker.example/jwks",
        "x5u": "https://attacker.example/cert.pem",
        "x5c": ["MIIB"],
    }[name]
    token = raw_jws(header(**{name: value}), claims(), rsa_key, "RS256")
    rejected(token, issuer, keys, f"key-carrying header '{name}' refused")


@pytest.mark.parametrize("typ", ["dpop+jwt", "logout+jwt", "secevent+jwt", "JOSE", 7])
def test_other_token_types(
    rsa_key: RSAKey, issuer: TrustedIssuer, keys: IssuerKeySet, typ: Any
) -> None:
    token = raw_jws(header(typ=typ), claims(), rsa_key, "RS256")
    rejected(token, issuer, keys, "typ .* is not accepted")


def test_security_event_token_claims(
    rsa_key: RSAKey, issuer: TrustedIssuer, keys: IssuerKeySet
) -> None:
    token = rs256(rsa_key, events={"http://schemas.openid.net/event/backchannel-logout": {}})
    rejected(token, issuer, keys, "Security Event Token")


def test_oversized_token_is_refused_before_decoding(
    rsa_key: RSAKey, issuer: TrustedIssuer, keys: IssuerKeySet
) -> None:
    token = rs256(rsa_key, padding="x" * 9000)
    rejected(token, issuer, keys, "longer than 8192")
    rejected("!" * 9000, issuer, keys, "longer than 8192")  # not even base64url
    assert peek_issuer(token) is None


def test_max_length_is_configurable(
    rsa_key: RSAKey, issuer: TrustedIssuer, keys: IssuerKeySet
) -> None:
    token = rs256(rsa_key)
    rejected(token, issuer, keys, "longer than 100", max_length=100)


@pytest.mark.parametrize("part", ["header", "claims"])
def test_duplicate_json_members(
    rsa_key: RSAKey, issuer: TrustedIssuer, keys: IssuerKeySet, part: str
) -> None:
    if part == "header":
        h = b'{"alg":"RS256","kid":"rsa-1","alg":"RS256"}'
        token = raw_jws(h, claims(), rsa_key, "RS256")
    else:
        body = json.dumps(claims())[:-1] + ', "sub": "admin"}'
        token = raw_jws(header(), body.encode(), rsa_key, "RS256")
    rejected(token, issuer, keys, "duplicate member")
    assert peek_issuer(token) is None


def test_not_three_segments(issuer: TrustedIssuer, keys: IssuerKeySet) -> None:
    rejected("a.b", issuer, keys, "three segments")
    rejected("a.b.c.d.e", issuer, keys, "three segments")


# -- claims ----------------------------------------------------------------------------


def test_wrong_issuer(rsa_key: RSAKey, issuer: TrustedIssuer, keys: IssuerKeySet) -> None:
    rejected(rs256(rsa_key, iss="https://idp.example.com/"), issuer, keys, "iss is not")
    rejected(rs256(rsa_key, iss=DROP), issuer, keys, "claim iss missing")


@pytest.mark.parametrize("aud", ["https://other.example", ["a", "b"], [], 7, [AUDIENCE, 7], DROP])
def test_audience_mismatch(
    rsa_key: RSAKey, issuer: TrustedIssuer, keys: IssuerKeySet, aud: Any
) -> None:
    rejected(rs256(rsa_key, aud=aud), issuer, keys, "aud")


def test_expired(rsa_key: RSAKey, issuer: TrustedIssuer, keys: IssuerKeySet) -> None:
    token = rs256(rsa_key, iat=NOW - 700, exp=NOW - SKEW)
    rejected(token, issuer, keys, "token expired")
    rejected(rs256(rsa_key, exp=DROP), issuer, keys, "claim exp missing")
    rejected(rs256(rsa_key, exp="soon"), issuer, keys, "exp is not a NumericDate")


def test_future_iat_and_nbf(rsa_key: RSAKey, issuer: TrustedIssuer, keys: IssuerKeySet) -> None:
    rejected(rs256(rsa_key, iat=NOW + SKEW + 1), issuer, keys, "iat is in the future")
    rejected(rs256(rsa_key, nbf=NOW + SKEW + 1), issuer, keys, "nbf is in the future")


def test_token_too_old(rsa_key: RSAKey, issuer: TrustedIssuer, keys: IssuerKeySet) -> None:
    """Issued more than max_token_age ago, though ``exp`` has not passed."""
    token = rs256(rsa_key, iat=NOW - 3600 - SKEW - 1, exp=NOW + 10)
    rejected(token, issuer, keys, "lifetime exceeds|issued longer ago")


def test_lifetime_too_long(rsa_key: RSAKey, issuer: TrustedIssuer, keys: IssuerKeySet) -> None:
    rejected(rs256(rsa_key, exp=NOW - 10 + 3601), issuer, keys, "lifetime exceeds")
    assert verify(rs256(rsa_key, exp=NOW - 10 + 3600), issuer, keys)


def test_iat_required_and_before_exp(
    rsa_key: RSAKey, issuer: TrustedIssuer, keys: IssuerKeySet
) -> None:
    rejected(rs256(rsa_key, iat=DROP), issuer, keys, "claim iat missing")
    rejected(rs256(rsa_key, iat=NOW + 5, exp=NOW + 5), issuer, keys, "exp is not after iat")


@pytest.mark.parametrize("sub", [DROP, "", 42, "x" * 257, None])
def test_missing_or_bad_subject(
    rsa_key: RSAKey, issuer: TrustedIssuer, keys: IssuerKeySet, sub: Any
) -> None:
    rejected(rs256(rsa_key, sub=sub), issuer, keys, "claim sub")


@pytest.mark.parametrize("may_act", ["agent_1", ["agent_1"], 1, True])
def test_may_act_must_be_an_object(
    rsa_key: RSAKey, issuer: TrustedIssuer, keys: IssuerKeySet, may_act: Any
) -> None:
    rejected(rs256(rsa_key, may_act=may_act), issuer, keys, "may_act is not a JSON object")


def test_bad_jti(rsa_key: RSAKey, issuer: TrustedIssuer, keys: IssuerKeySet) -> None:
    rejected(rs256(rsa_key, jti=12), issuer, keys, "claim jti")


def test_claims_are_read_only(rsa_key: RSAKey, issuer: TrustedIssuer, keys: IssuerKeySet) -> None:
    subject = verify(rs256(rsa_key, may_act={"sub": "a"}), issuer, keys)
    with pytest.raises(TypeError):
        subject.claims["sub"] = "admin"  # type: ignore[index]
    with pytest.raises(TypeError):
        subject.may_act["sub"] = "admin"  # type: ignore[index]


# -- peek_issuer -----------------------------------------------------------------------


def test_peek_issuer(rsa_key: RSAKey) -> None:
    assert peek_issuer(rs256(rsa_key)) == ISSUER
    assert peek_issuer(rs256(rsa_key, iss=DROP)) is None
    assert peek_issuer(rs256(rsa_key, iss=["a"])) is None
    assert peek_issuer("not a token") is None
    assert peek_issuer("a.b.c") is None
    assert peek_issuer(raw_jws(header(crit=["x"]), claims(), rsa_key, "RS256")) is None
    h = b64(json.dumps({"alg": "RS256"}).encode())
    assert peek_issuer(f"{h}.{b64(b'[1]')}.c2ln") is None  # claims not an object


# -- configuration ---------------------------------------------------------------------


def entry(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "jwks_uri": "https://idp.example.com/.well-known/jwks.json",
    }
    for name, value in overrides.items():
        if value is DROP:
            base.pop(name, None)
        else:
            base[name] = value
    return base


def test_load_valid_configuration(jwks: dict[str, Any]) -> None:
    loaded = load_trusted_issuers(
        [
            entry(),
            entry(
                issuer="https://login.corp.internal",
                jwks_uri=DROP,
                jwks=jwks,
                algorithms=["PS256", "EdDSA"],
                max_token_age=600,
                subject_claim="oid",
            ),
            entry(
                issuer="http://127.0.0.1:8080/realms/test",
                jwks_uri="http://127.0.0.1:8080/realms/test/certs",
                allow_private_network=True,
            ),
        ]
    )
    first, second, third = loaded
    assert first.algorithms == ("RS256", "ES256")
    assert first.audiences == (AUDIENCE,)
    assert first.max_token_age == 3600
    assert first.subject_claim == "sub"
    assert first.static_keys is None
    assert second.static_keys is not None
    assert second.static_keys.kids == {"rsa-1", "ec-1", "ed-1"}
    assert second.algorithms == ("PS256", "EdDSA")
    assert third.allow_private_network
    assert load_trusted_issuers(None) == ()
    assert load_trusted_issuers([]) == ()
    hash(first)  # usable as a dict key


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"issuer": ISSUER}, "must be a list"),
        (["x"], "trusted issuer 0: must be an object"),
        ([entry(audience=[AUDIENCE])], "unknown key"),
        ([entry(issuer=DROP)], "issuer is required"),
        ([entry(audiences=DROP)], "audiences is required"),
        ([entry(audiences=AUDIENCE)], "audiences must be a list"),
        ([entry(audiences=[])], "at least one"),
        ([entry(audiences=[AUDIENCE, 3])], "audiences entries"),
        ([entry(algorithms=["none"])], "'none' is not allowed"),
        ([entry(algorithms=["HS256"])], "'HS256' is not allowed"),
        ([entry(algorithms=["RS384"])], "'RS384' is not allowed"),
        ([entry(algorithms=[])], "at least one"),
        ([entry(jwks_uri="http://idp.example.com/jwks")], "must use https"),
        ([entry(jwks_uri="ftp://idp.example.com/jwks")], "must use https"),
        ([entry(jwks_uri="https://user:pw@idp.example.com/jwks")], "user information"),
        ([entry(jwks_uri="https:///jwks")], "no host"),
        ([entry(jwks_uri="https://idp.example.com:99999/")], "invalid port"),
        ([entry(jwks_uri="https://idp.example.com/a b")], "without spaces"),
        ([entry(jwks_uri=DROP)], "exactly one of jwks_uri and jwks"),
        ([entry(jwks={"keys": []})], "exactly one of jwks_uri and jwks"),
        ([entry(jwks_uri=DROP, jwks={"keys": []})], "no usable signature key"),
        ([entry(jwks_uri=DROP, jwks=[])], "jwks must be a JWK Set object"),
        ([entry(allow_private_network="yes")], "true or false"),
        ([entry(max_token_age=0)], "max_token_age"),
        ([entry(max_token_age=True)], "max_token_age"),
        ([entry(max_token_age=10**9)], "max_token_age"),
        ([entry(subject_claim="a b")], "subject_claim"),
        ([entry(issuer="")], "issuer must be a string"),
        ([entry(), entry()], "trusted issuer 1: issuer 'https://idp.example.com' is listed twice"),
    ],
)
def test_load_refuses_bad_configuration(data: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        load_trusted_issuers(data)


def test_static_jwks_must_hold_public_strong_keys(rsa_key: RSAKey, ec_key: ECKey) -> None:
    private = dict(rsa_key.as_dict(private=True), kid="rsa-1")
    numbers = rsa.generate_private_key(65537, 1024).public_key().public_numbers()  # noqa: S505
    weak = {
        "kty": "RSA",
        "kid": "weak",
        "e": b64(b"\x01\x00\x01"),
        "n": b64(numbers.n.to_bytes(128, "big")),
    }
    symmetric = {"kty": "oct", "k": b64(b"secret"), "kid": "hmac"}
    p384 = dict(ECKey.generate_key("P-384").as_dict(private=False), kid="p384")
    cases: list[tuple[list[Any], str]] = [
        ([private], "private or symmetric"),
        ([symmetric], "private or symmetric"),
        ([weak], "1024 bits; at least 2048"),
        ([p384], "not supported"),
        ([public_jwk(ec_key, "a"), public_jwk(ec_key, "a")], "same kid"),
        ([public_jwk(ec_key, "a", alg="RS256")], "not usable with a EC key"),
        ([dict(public_jwk(ec_key, "a"), y=b64(b"\x01" * 32))], "not a valid EC public key"),
        (["not a key"], "not a JSON object"),
    ]
    for keys_, message in cases:
        with pytest.raises(InvalidInput, match=message):
            load_trusted_issuers([entry(jwks_uri=DROP, jwks={"keys": keys_})])
    # A fetched set skips what it cannot use, but never tolerates private material.
    with pytest.raises(JoseRejected, match="private or symmetric"):
        parse_jwks({"keys": [public_jwk(ec_key, "ok"), private]}, strict=False)
    lenient = parse_jwks({"keys": [public_jwk(ec_key, "ok"), p384]}, strict=False)
    assert lenient.kids == {"ok"}


def test_direct_construction_is_validated(jwks: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput, match="audiences must be a list"):
        TrustedIssuer(issuer=ISSUER, audiences=AUDIENCE, jwks=jwks)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="HS256"):
        TrustedIssuer(issuer=ISSUER, audiences=(AUDIENCE,), algorithms=("HS256",), jwks=jwks)


def test_entra_style_x5t_hint_is_tolerated_but_never_picks_the_key(
    rsa_key: RSAKey, rsa_other: RSAKey, issuer: TrustedIssuer, keys: IssuerKeySet
) -> None:
    """Entra ID puts x5t beside kid. The hint is ignored: the kid chooses the key, so a
    token signed by another key with a plausible x5t still fails."""
    hint = {"x5t": "bm90LWEtdGh1bWJwcmludA", "x5t#S256": "aGludA"}
    token = raw_jws(header(**hint), claims(), rsa_key, "RS256")
    assert verify(token, issuer, keys).subject == "00u1human"
    forged = raw_jws(header(**hint), claims(), rsa_other, "RS256")
    rejected(forged, issuer, keys, "signature")


def test_cognito_style_kid_characters_are_accepted_for_subject_tokens(
    rsa_key: RSAKey,
) -> None:
    kid = "AbC+dEf/GhI=jK="
    static = {"keys": [public_jwk(rsa_key, kid)]}
    trusted = TrustedIssuer(issuer=ISSUER, audiences=(AUDIENCE,), jwks=static)
    token = raw_jws(header(kid=kid), claims(), rsa_key, "RS256")
    assert verify(token, trusted, trusted.static_keys).subject == "00u1human"
    # Still bounded: no control characters or spaces.
    bad = raw_jws(header(kid="a b"), claims(), rsa_key, "RS256")
    rejected(bad, trusted, trusted.static_keys, "malformed kid")
