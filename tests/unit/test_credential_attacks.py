"""Attacks on the credential layer: access tokens, DPoP proofs and client assertions.

Every test presents one forged or abused credential to the real verification code
(no database) and asserts that it is refused, with the wire error code a client sees
and the internal ``reason`` that names the check which caught it, so a test cannot
pass because some other check happened to refuse the token. Each attack starts from a
credential that is otherwise valid: the baseline tests at the top prove those are
accepted.

References: RFC 8725 (JWT BCP), RFC 9068 (JWT access tokens), RFC 9449 (DPoP),
RFC 7523 (client assertions), RFC 6750 (Bearer).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from joserfc import jwt

from agentiam.core.credentials import jose
from agentiam.core.credentials import verifier as verifier_module
from agentiam.core.credentials.assertions import parse_assertion, verify_assertion
from agentiam.core.credentials.dpop import (
    DpopWindow,
    access_token_hash,
    validate_proof,
)
from agentiam.core.credentials.jose import JoseRejected, VerificationKey, import_public_jwk
from agentiam.core.credentials.nonces import NonceIssuer
from agentiam.core.credentials.replay import ReplayCache
from agentiam.core.credentials.revocations import Revocation, RevocationKind, RevocationSet
from agentiam.core.credentials.verifier import (
    AccessTokenVerifier,
    VerifiedAccess,
    VerifierConfig,
)
from agentiam.errors import OAuthError
from agentiam.sdk.keys import AgentKey
from agentiam.sdk.proofs import client_assertion, dpop_proof

ISSUER = "https://as.example"
AUDIENCE = "https://rs.example"
TOKEN_ENDPOINT = "https://as.example/token"
URL = "https://rs.example/api/things"
NOW = 1_800_000_000
KID = "as-key-1"
CLIENT = "agent_0123456789"
SKEW = 30
ASSERTION_LIFETIME = 300
CONFIG = VerifierConfig(issuer=ISSUER, audience=AUDIENCE)
DROP = object()  # a claim override that removes the claim


# -- keys and helpers -------------------------------------------------------------


class Keys:
    """A KeyLookup that records every kid it is asked for."""

    def __init__(self, entries: Mapping[str, VerificationKey]) -> None:
        self.entries = dict(entries)
        self.lookups: list[str] = []

    def get(self, kid: str) -> VerificationKey | None:
        self.lookups.append(kid)
        return self.entries.get(kid)


class FakeMonotonic:
    def __init__(self) -> None:
        self.value = 1000.0

    def __call__(self) -> float:
        return self.value


class DecodedTooEarly(Exception):
    """Raised by a decoder that a size check should have kept from running."""


def _boom(*_args: Any, **_kwargs: Any) -> Any:
    raise DecodedTooEarly


@pytest.fixture(scope="module")
def as_key() -> AgentKey:
    """The authorization server's ES256 signing key."""
    return AgentKey.generate("ES256")


@pytest.fixture(scope="module")
def agent() -> AgentKey:
    """The agent's key: signs its client assertions and DPoP proofs."""
    return AgentKey.generate("ES256")


@pytest.fixture(scope="module")
def attacker() -> AgentKey:
    return AgentKey.generate("ES256")


@pytest.fixture
def keys(as_key: AgentKey) -> Keys:
    return Keys({KID: import_public_jwk(as_key.public_jwk(), "ES256", kid=KID)})


@pytest.fixture
def revocations() -> RevocationSet:
    revoked = RevocationSet(max_staleness=10)
    revoked.mark_fresh()
    return revoked


@pytest.fixture
def verifier(keys: Keys, revocations: RevocationSet) -> AccessTokenVerifier:
    return AccessTokenVerifier(CONFIG, keys, revocations)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json(value: Mapping[str, Any] | bytes) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


def _sign(key: AgentKey, signing_input: bytes) -> bytes:
    private = key.key.private_key
    if isinstance(private, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(private.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return private.sign(signing_input)  # type: ignore[union-attr]


def raw_jws(
    header: Mapping[str, Any] | bytes,
    claims: Mapping[str, Any] | bytes,
    key: AgentKey | None,
    *,
    signature: str | None = None,
) -> str:
    """A compact JWS built by hand, signed with ``key`` whatever the header claims
    (ES256 for an EC key, Ed25519 for an OKP key), or carrying ``signature`` as is."""
    signing_input = f"{b64(_json(header))}.{b64(_json(claims))}"
    if signature is None:
        assert key is not None
        signature = b64(_sign(key, signing_input.encode("ascii")))
    return f"{signing_input}.{signature}"


def hs256_jws(header: Mapping[str, Any], claims: Mapping[str, Any], secret: bytes) -> str:
    signing_input = f"{b64(_json(header))}.{b64(_json(claims))}"
    mac = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def _apply(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    for name, value in overrides.items():
        if value is DROP:
            base.pop(name, None)
        else:
            base[name] = value
    return base


def at_claims(bound_to: AgentKey | None, **overrides: Any) -> dict[str, Any]:
    """Valid access-token claims, DPoP-bound to ``bound_to`` when given."""
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": CLIENT,
        "aud": AUDIENCE,
        "client_id": CLIENT,
        "iat": NOW,
        "exp": NOW + 300,
        "jti": secrets.token_urlsafe(12),
        "scope": "read write",
    }
    if bound_to is not None:
        claims["cnf"] = {"jkt": bound_to.key.thumbprint()}
    return _apply(claims, overrides)


def issue(signer: AgentKey, claims: Mapping[str, Any], *, kid: str = KID) -> str:
    """An access token signed the way the authorization server signs one."""
    header = {"typ": "at+jwt", "alg": signer.alg, "kid": kid}
    return jwt.encode(header, dict(claims), signer.key, algorithms=[signer.alg])


def at_header(**overrides: Any) -> dict[str, Any]:
    return _apply({"typ": "at+jwt", "alg": "ES256", "kid": KID}, overrides)


def public_members(key: AgentKey) -> dict[str, str]:
    return {k: v for k, v in key.public_jwk().items() if k not in ("kid", "use", "alg")}


def proof_claims(access_token: str | None, **overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "jti": secrets.token_urlsafe(12),
        "htm": "GET",
        "htu": URL,
        "iat": NOW,
    }
    if access_token is not None:
        claims["ath"] = access_token_hash(access_token)
    return _apply(claims, overrides)


def make_proof(key: AgentKey, access_token: str | None, **overrides: Any) -> str:
    header = {"typ": "dpop+jwt", "alg": key.alg, "jwk": public_members(key)}
    claims = proof_claims(access_token, **overrides)
    return jwt.encode(header, claims, key.key, algorithms=[key.alg])


def send(
    verifier: AccessTokenVerifier,
    token: str,
    proofs: list[str],
    *,
    scheme: str = "DPoP",
    method: str = "GET",
    url: str = URL,
    now: int = NOW,
) -> VerifiedAccess:
    return verifier.verify_request(
        authorization=[f"{scheme} {token}"], dpop=proofs, method=method, url=url, now=now
    )


def refused(error: str, reason: str, call: Callable[[], object]) -> OAuthError:
    """Run ``call``; it must raise OAuthError ``error`` whose reason matches ``reason``."""
    with pytest.raises(OAuthError) as info:
        call()
    err = info.value
    assert err.error == error, f"{err.error}: {err.reason}"
    assert re.search(reason, err.reason), err.reason
    return err


def assertion_claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": CLIENT,
        "sub": CLIENT,
        "aud": ISSUER,
        "iat": NOW,
        "exp": NOW + 60,
        "jti": secrets.token_urlsafe(12),
    }
    return _apply(claims, overrides)


def sign_assertion(key: AgentKey, claims: Mapping[str, Any]) -> str:
    header = {"alg": key.alg, "kid": key.kid, "typ": "JWT"}
    return jwt.encode(header, dict(claims), key.key, algorithms=[key.alg])


def check_assertion(raw: str, agent: AgentKey, *, now: int = NOW) -> object:
    """What the token endpoint does with an assertion once it has found the client."""
    token, claimed = parse_assertion(raw)
    registered = [import_public_jwk(agent.public_jwk(), agent.alg, kid=agent.kid)]
    return verify_assertion(
        token,
        registered,
        client_id=claimed,
        audiences={ISSUER, TOKEN_ENDPOINT},
        now=now,
        skew=SKEW,
        max_lifetime=ASSERTION_LIFETIME,
    )


# -- baselines: the unaltered credentials are accepted ----------------------------


def test_baseline_dpop_bound_token_with_sdk_proof_is_accepted(
    verifier: AccessTokenVerifier, as_key: AgentKey, agent: AgentKey
) -> None:
    token = issue(as_key, at_claims(agent))
    proof = dpop_proof(agent, method="GET", url=URL, access_token=token, now=NOW)
    access = send(verifier, token, [proof])
    assert (access.subject, access.client_id, access.scope) == (CLIENT, CLIENT, ("read", "write"))
    assert access.jkt == agent.kid
    assert access.token_type == "DPoP"


def test_baseline_client_assertion_from_sdk_is_accepted(agent: AgentKey) -> None:
    raw = client_assertion(agent, client_id=CLIENT, audience=ISSUER, now=NOW)
    result = check_assertion(raw, agent)
    assert result.client_id == CLIENT  # type: ignore[attr-defined]


def test_baseline_hand_built_token_and_proof_are_accepted(
    verifier: AccessTokenVerifier, as_key: AgentKey, agent: AgentKey
) -> None:
    """The hand-built JWS helper makes tokens the verifier accepts, so when a test
    uses it to build an attack, only the attack can be what is refused."""
    token = raw_jws(at_header(), at_claims(agent), as_key)
    proof = raw_jws(
        {"typ": "dpop+jwt", "alg": "ES256", "jwk": public_members(agent)},
        proof_claims(token),
        agent,
    )
    assert send(verifier, token, [proof]).jkt == agent.kid


# -- algorithm confusion ----------------------------------------------------------


@pytest.mark.parametrize(
    ("alg", "signature", "reason"),
    [
        ("none", "", "unsigned"),
        ("None", "", "unsigned"),
        ("none", "AAAA", r"alg 'none' is not allowed"),
        ("None", "AAAA", r"alg 'None' is not allowed"),
        ("NONE", "AAAA", r"alg 'NONE' is not allowed"),
    ],
)
def test_access_token_with_alg_none_is_refused(
    verifier: AccessTokenVerifier, alg: str, signature: str, reason: str
) -> None:
    token = raw_jws(at_header(alg=alg), at_claims(None), None, signature=signature)
    refused("invalid_token", reason, lambda: verifier.verify_token(token, now=NOW))


def _public_key_secrets(key: AgentKey) -> list[bytes]:
    public = key.key.public_key
    return [
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        json.dumps(key.public_jwk()).encode(),
    ]


@pytest.mark.parametrize("secret_form", [0, 1, 2], ids=["pem", "der", "jwk-json"])
def test_access_token_hs256_signed_with_our_public_key_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey, secret_form: int
) -> None:
    secret = _public_key_secrets(as_key)[secret_form]
    token = hs256_jws(at_header(alg="HS256"), at_claims(None), secret)
    refused(
        "invalid_token",
        r"alg 'HS256' is not allowed",
        lambda: verifier.verify_token(token, now=NOW),
    )


@pytest.mark.parametrize("alg", ["HS384", "HS512", "RS256", "PS256", "ES384", "ES256K", "EdDSA"])
def test_access_token_with_other_algorithms_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey, alg: str
) -> None:
    token = raw_jws(at_header(alg=alg), at_claims(None), as_key)
    refused(
        "invalid_token",
        rf"alg '{alg}' is not allowed",
        lambda: verifier.verify_token(token, now=NOW),
    )


def test_client_assertion_hs256_signed_with_agent_public_key_is_refused(agent: AgentKey) -> None:
    secret = _public_key_secrets(agent)[0]
    raw = hs256_jws({"alg": "HS256", "typ": "JWT", "kid": agent.kid}, assertion_claims(), secret)
    with pytest.raises(JoseRejected, match=r"alg 'HS256' is not allowed"):
        check_assertion(raw, agent)


@pytest.mark.parametrize("alg", ["none", "None"])
def test_client_assertion_with_alg_none_is_refused(agent: AgentKey, alg: str) -> None:
    raw = raw_jws({"alg": alg, "typ": "JWT"}, assertion_claims(), None, signature="AAAA")
    with pytest.raises(JoseRejected, match=rf"alg '{alg}' is not allowed"):
        check_assertion(raw, agent)


def test_dpop_proof_with_hs256_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey, agent: AgentKey
) -> None:
    token = issue(as_key, at_claims(agent))
    header = {"typ": "dpop+jwt", "alg": "HS256", "jwk": public_members(agent)}
    proof = hs256_jws(header, proof_claims(token), _public_key_secrets(agent)[0])
    refused(
        "invalid_dpop_proof", r"alg 'HS256' is not allowed", lambda: send(verifier, token, [proof])
    )


@pytest.mark.parametrize(
    "signature",
    [
        bytes(64),  # r = s = 0: CVE-2022-21449, "psychic signatures"
        (0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551).to_bytes(32, "big")
        * 2,  # r = s = n, the P-256 group order
    ],
    ids=["r=s=0", "r=s=n"],
)
def test_access_token_with_degenerate_ecdsa_signature_is_refused(
    verifier: AccessTokenVerifier, signature: bytes
) -> None:
    token = raw_jws(at_header(), at_claims(None), None, signature=b64(signature))
    refused(
        "invalid_token", "signature does not verify", lambda: verifier.verify_token(token, now=NOW)
    )


def test_access_token_signed_by_another_key_under_our_kid_is_refused(
    verifier: AccessTokenVerifier, attacker: AgentKey
) -> None:
    token = issue(attacker, at_claims(None))
    refused(
        "invalid_token", "signature does not verify", lambda: verifier.verify_token(token, now=NOW)
    )


def test_access_token_with_payload_altered_after_signing_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey
) -> None:
    header, _, signature = issue(as_key, at_claims(None, scope="read")).split(".")
    forged = f"{header}.{b64(json.dumps(at_claims(None, scope='admin')).encode())}.{signature}"
    refused(
        "invalid_token", "signature does not verify", lambda: verifier.verify_token(forged, now=NOW)
    )


# -- headers that carry keys, crit, kid -------------------------------------------

KEY_HEADER_ATTACKS: list[tuple[str, Any]] = [
    ("jku", "https://attacker.example/jwks.json"),
    ("x5u", "https://attacker.example/cert.pem"),
    ("x5c", ["MIIBszCCAVmgAwIBAgIUQ2Y="]),
    ("x5t", "dGh1bWJwcmludA"),
    ("x5t#S256", "dGh1bWJwcmludA"),
]


def test_access_token_carrying_its_own_jwk_is_refused(
    verifier: AccessTokenVerifier, attacker: AgentKey
) -> None:
    header = at_header(jwk=public_members(attacker))
    token = raw_jws(header, at_claims(None), attacker)
    refused(
        "invalid_token", "key-carrying header 'jwk'", lambda: verifier.verify_token(token, now=NOW)
    )


@pytest.mark.parametrize(
    ("name", "value"), KEY_HEADER_ATTACKS, ids=[n for n, _ in KEY_HEADER_ATTACKS]
)
def test_access_token_with_key_url_or_certificate_header_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey, name: str, value: Any
) -> None:
    # Signed by the real key: only the header check can refuse this token.
    token = raw_jws(at_header(**{name: value}), at_claims(None), as_key)
    refused(
        "invalid_token",
        re.escape(f"key-carrying header '{name}'"),
        lambda: verifier.verify_token(token, now=NOW),
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [("jwk", None), *KEY_HEADER_ATTACKS],
    ids=["jwk", *[n for n, _ in KEY_HEADER_ATTACKS]],
)
def test_client_assertion_with_key_carrying_header_is_refused(
    agent: AgentKey, attacker: AgentKey, name: str, value: Any
) -> None:
    header = {
        "alg": "ES256",
        "typ": "JWT",
        "kid": agent.kid,
        name: value or public_members(attacker),
    }
    raw = raw_jws(header, assertion_claims(), agent)
    with pytest.raises(JoseRejected, match=re.escape(f"key-carrying header '{name}'")):
        check_assertion(raw, agent)


@pytest.mark.parametrize(
    ("name", "value"), KEY_HEADER_ATTACKS, ids=[n for n, _ in KEY_HEADER_ATTACKS]
)
def test_dpop_proof_with_key_header_other_than_jwk_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey, agent: AgentKey, name: str, value: Any
) -> None:
    token = issue(as_key, at_claims(agent))
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": public_members(agent), name: value}
    proof = raw_jws(header, proof_claims(token), agent)
    refused(
        "invalid_dpop_proof",
        re.escape(f"key-carrying header '{name}'"),
        lambda: send(verifier, token, [proof]),
    )


def test_access_token_with_unknown_crit_header_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey
) -> None:
    header = at_header(crit=["urn:attacker:ext"], **{"urn:attacker:ext": True})
    token = raw_jws(header, at_claims(None), as_key)
    refused("invalid_token", "crit", lambda: verifier.verify_token(token, now=NOW))


def test_client_assertion_with_unknown_crit_header_is_refused(agent: AgentKey) -> None:
    header = {"alg": "ES256", "typ": "JWT", "kid": agent.kid, "crit": ["exp"]}
    raw = raw_jws(header, assertion_claims(), agent)
    with pytest.raises(JoseRejected, match="crit"):
        check_assertion(raw, agent)


@pytest.mark.parametrize(
    "kid",
    [
        "../../etc/passwd",
        "1' OR '1'='1",
        "k" * 129,
        "as-key-1\x00",
        "as-key-1/..",
        "",
        123,
        None,
        ["as-key-1"],
    ],
    ids=["traversal", "sql", "129-chars", "nul", "slash", "empty", "int", "null", "list"],
)
def test_access_token_with_malformed_kid_never_reaches_key_lookup(
    verifier: AccessTokenVerifier, keys: Keys, as_key: AgentKey, kid: Any
) -> None:
    token = raw_jws(at_header(kid=kid), at_claims(None), as_key)
    refused("invalid_token", "malformed kid", lambda: verifier.verify_token(token, now=NOW))
    assert keys.lookups == []


def test_access_token_with_10kb_kid_is_refused_by_size(
    verifier: AccessTokenVerifier, keys: Keys, as_key: AgentKey
) -> None:
    token = raw_jws(at_header(kid="A" * 10_240), at_claims(None), as_key)
    refused("invalid_token", "longer than", lambda: verifier.verify_token(token, now=NOW))
    assert keys.lookups == []


def test_access_token_with_oversized_header_segment_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey
) -> None:
    # Under the token limit, over the 2048-character header limit.
    token = raw_jws(at_header(pad="p" * 1600), at_claims(None), as_key)
    assert len(token) < 8192
    refused(
        "invalid_token", "header longer than 2048", lambda: verifier.verify_token(token, now=NOW)
    )


def test_access_token_with_unknown_kid_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey
) -> None:
    token = issue(as_key, at_claims(None), kid="as-key-2")
    refused("invalid_token", "unknown kid", lambda: verifier.verify_token(token, now=NOW))


def test_access_token_without_kid_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey
) -> None:
    token = raw_jws(at_header(kid=DROP), at_claims(None), as_key)
    refused("invalid_token", "kid missing", lambda: verifier.verify_token(token, now=NOW))


# -- time --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"exp": NOW - SKEW - 1}, "token expired"),
        ({"exp": NOW - 3600, "iat": NOW - 3900}, "token expired"),
        ({"exp": DROP}, "claim exp missing"),
        ({"exp": str(NOW + 300)}, "claim exp is not a NumericDate"),
        ({"exp": True}, "claim exp is not a NumericDate"),
        ({"nbf": NOW + SKEW + 1}, "claim nbf is in the future"),
        ({"nbf": NOW + 3600}, "claim nbf is in the future"),
        ({"iat": NOW + SKEW + 1}, "claim iat is in the future"),
        ({"iat": NOW + 3600, "exp": NOW + 7200}, "claim iat is in the future"),
        ({"iat": DROP}, "claim iat missing"),
        ({"exp": 2**53}, "claim exp is out of range"),
    ],
    ids=[
        "expired-by-skew+1",
        "expired-1h",
        "no-exp",
        "exp-string",
        "exp-bool",
        "nbf-skew+1",
        "nbf-1h",
        "iat-skew+1",
        "iat-1h",
        "no-iat",
        "exp-huge",
    ],
)
def test_access_token_outside_its_validity_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey, overrides: dict[str, Any], reason: str
) -> None:
    token = issue(as_key, at_claims(None, **overrides))
    refused("invalid_token", reason, lambda: verifier.verify_token(token, now=NOW))


def test_access_token_within_clock_skew_is_accepted(
    verifier: AccessTokenVerifier, as_key: AgentKey
) -> None:
    token = issue(as_key, at_claims(None, exp=NOW - SKEW + 1, iat=NOW + SKEW, nbf=NOW + SKEW))
    assert verifier.verify_token(token, now=NOW).expires_at == NOW - SKEW + 1


def test_cached_token_is_refused_once_it_expires(
    verifier: AccessTokenVerifier, as_key: AgentKey
) -> None:
    token = issue(as_key, at_claims(None, exp=NOW + 60))
    verifier.verify_token(token, now=NOW)
    refused(
        "invalid_token", "token expired", lambda: verifier.verify_token(token, now=NOW + 60 + SKEW)
    )


# -- issuer, audience, typ ---------------------------------------------------------


@pytest.mark.parametrize(
    "issuer",
    [
        "https://as.example.evil",
        "https://as.exampl",
        "https://as.example/",
        "http://as.example",
        "",
    ],
)
def test_access_token_from_lookalike_issuer_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey, issuer: str
) -> None:
    token = issue(as_key, at_claims(None, iss=issuer))
    refused(
        "invalid_token", "iss is not this issuer", lambda: verifier.verify_token(token, now=NOW)
    )


def test_access_token_without_issuer_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey
) -> None:
    token = issue(as_key, at_claims(None, iss=DROP))
    refused(
        "invalid_token", "iss is not this issuer", lambda: verifier.verify_token(token, now=NOW)
    )


@pytest.mark.parametrize(
    "audience",
    [
        "https://other",
        "https://rs.example.evil",
        "https://rs.example/",
        ["https://other"],
        [AUDIENCE, "https://other"],
        ["https://other", AUDIENCE],
        [AUDIENCE, AUDIENCE],
        [],
        DROP,
    ],
    ids=[
        "other",
        "suffix",
        "slash",
        "[other]",
        "[ours,other]",
        "[other,ours]",
        "[ours,ours]",
        "[]",
        "none",
    ],
)
def test_access_token_for_another_audience_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey, audience: Any
) -> None:
    token = issue(as_key, at_claims(None, aud=audience))
    refused(
        "invalid_token", "aud is not this resource", lambda: verifier.verify_token(token, now=NOW)
    )


def test_access_token_with_audience_array_of_only_ours_is_accepted(
    verifier: AccessTokenVerifier, as_key: AgentKey
) -> None:
    token = issue(as_key, at_claims(None, aud=[AUDIENCE]))
    assert verifier.verify_token(token, now=NOW).subject == CLIENT


def test_token_verified_for_introspection_is_still_refused_at_another_resource(
    verifier: AccessTokenVerifier, as_key: AgentKey, agent: AgentKey
) -> None:
    """``any_audience`` verification fills the verified-token cache; the audience must
    still be checked when the same token is later presented to this resource."""
    token = issue(as_key, at_claims(agent, aud="https://other"))
    verifier.verify_token(token, now=NOW, any_audience=True)
    proof = make_proof(agent, token)
    refused("invalid_token", "aud is not this resource", lambda: send(verifier, token, [proof]))


@pytest.mark.parametrize(
    "typ",
    ["JWT", "jwt", "dpop+jwt", "application/dpop+jwt", "at+jwt+x", "JOSE", 1, DROP],
    ids=["JWT", "jwt", "dpop+jwt", "app-dpop", "suffixed", "JOSE", "int", "missing"],
)
def test_token_of_another_type_presented_as_access_token_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey, typ: Any
) -> None:
    token = raw_jws(at_header(typ=typ), at_claims(None), as_key)
    refused(
        "invalid_token", "typ .* is not accepted", lambda: verifier.verify_token(token, now=NOW)
    )


@pytest.mark.parametrize("typ", ["AT+JWT", "application/at+jwt"])
def test_access_token_typ_compares_case_insensitively_with_media_prefix(
    verifier: AccessTokenVerifier, as_key: AgentKey, typ: str
) -> None:
    token = raw_jws(at_header(typ=typ), at_claims(None), as_key)
    assert verifier.verify_token(token, now=NOW).subject == CLIENT


def test_client_assertion_presented_as_access_token_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey
) -> None:
    # Signed by the AS key with our kid and every access-token claim, but typ JWT.
    header = {"alg": "ES256", "kid": KID, "typ": "JWT"}
    token = jwt.encode(header, at_claims(None), as_key.key, algorithms=["ES256"])
    refused(
        "invalid_token", "typ 'JWT' is not accepted", lambda: verifier.verify_token(token, now=NOW)
    )


def test_dpop_proof_presented_as_access_token_is_refused(
    verifier: AccessTokenVerifier, agent: AgentKey
) -> None:
    proof = make_proof(agent, None)
    refused(
        "invalid_token",
        "typ 'dpop\\+jwt' is not accepted",
        lambda: verifier.verify_token(proof, now=NOW),
    )


@pytest.mark.parametrize("typ", ["at+jwt", "dpop+jwt"])
def test_other_token_kinds_presented_as_client_assertion_are_refused(
    agent: AgentKey, typ: str
) -> None:
    header = {"alg": "ES256", "typ": typ, "kid": agent.kid}
    raw = raw_jws(header, assertion_claims(), agent)
    with pytest.raises(JoseRejected, match=r"typ .* is not accepted"):
        check_assertion(raw, agent)


@pytest.mark.parametrize(
    ("typ", "reason"),
    [("JWT", "typ 'JWT'"), ("at+jwt", "typ 'at\\+jwt'"), (DROP, "typ 'None'")],
    ids=["JWT", "at+jwt", "missing"],
)
def test_dpop_proof_of_wrong_typ_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey, agent: AgentKey, typ: Any, reason: str
) -> None:
    token = issue(as_key, at_claims(agent))
    header = _apply({"typ": "dpop+jwt", "alg": "ES256", "jwk": public_members(agent)}, {"typ": typ})
    proof = raw_jws(header, proof_claims(token), agent)
    refused("invalid_dpop_proof", reason, lambda: send(verifier, token, [proof]))


# -- required claims and binding shape --------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"sub": DROP}, "claim sub missing"),
        ({"client_id": DROP}, "claim client_id missing"),
        ({"jti": DROP}, "claim jti missing"),
        ({"jti": ""}, "claim jti is not a string"),
        ({"sub": ["a", "b"]}, "claim sub is not a string"),
        ({"cnf": {"jkt": "x", "x5t#S256": "y"}}, "cnf must be"),
        ({"cnf": "thumbprint"}, "cnf must be"),
        ({"cnf": {"jkt": 1}}, "cnf must be"),
        ({"cnf": {"jwk": {"kty": "EC"}}}, "cnf must be"),
    ],
    ids=[
        "no-sub",
        "no-client_id",
        "no-jti",
        "empty-jti",
        "sub-list",
        "cnf-extra",
        "cnf-str",
        "jkt-int",
        "cnf-jwk",
    ],
)
def test_access_token_with_missing_or_malformed_claim_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey, overrides: dict[str, Any], reason: str
) -> None:
    token = issue(as_key, at_claims(None, **overrides))
    refused("invalid_token", reason, lambda: verifier.verify_token(token, now=NOW))


# -- size limits, checked before anything is decoded ------------------------------


def _padded_token(as_key: AgentKey, agent: AgentKey | None, length_at_least: int) -> str:
    """A validly signed token made long by an extra claim (which the verifier would
    otherwise ignore), so only a size limit can refuse it."""
    token = issue(as_key, at_claims(agent, pad="x" * (length_at_least * 3 // 4)))
    assert len(token) >= length_at_least
    return token


def test_oversized_access_token_is_refused_before_decoding(
    verifier: AccessTokenVerifier, as_key: AgentKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = _padded_token(as_key, None, 8193)
    monkeypatch.setattr(jose, "b64url_decode", _boom)
    monkeypatch.setattr(jose, "_json_object", _boom)
    refused("invalid_token", "longer than 8192", lambda: verifier.verify_token(token, now=NOW))


def test_access_token_just_under_the_size_limit_is_accepted(
    verifier: AccessTokenVerifier, as_key: AgentKey
) -> None:
    token = issue(as_key, at_claims(None, pad="x" * 5600))
    assert 7000 < len(token) <= 8192
    assert verifier.verify_token(token, now=NOW).subject == CLIENT


def test_oversized_authorization_header_is_refused_before_decoding(
    verifier: AccessTokenVerifier,
    as_key: AgentKey,
    agent: AgentKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = _padded_token(as_key, agent, 8300)
    monkeypatch.setattr(verifier_module, "parse_compact", _boom)
    monkeypatch.setattr(jose, "b64url_decode", _boom)
    refused("invalid_token", "Authorization header too large", lambda: send(verifier, token, []))


def test_oversized_dpop_header_is_refused_before_the_proof_is_decoded(
    verifier: AccessTokenVerifier,
    as_key: AgentKey,
    agent: AgentKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = issue(as_key, at_claims(agent))
    proof = make_proof(agent, token, pad="x" * 4000)  # validly signed, just too long
    assert len(proof) > 4096
    monkeypatch.setattr(verifier_module, "validate_proof", _boom)
    refused("invalid_dpop_proof", "DPoP proof too large", lambda: send(verifier, token, [proof]))


def test_oversized_dpop_header_is_refused_before_the_access_token_is_decoded(
    verifier: AccessTokenVerifier,
    as_key: AgentKey,
    agent: AgentKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = issue(as_key, at_claims(agent))
    monkeypatch.setattr(verifier_module, "parse_compact", _boom)
    monkeypatch.setattr(verifier_module, "validate_proof", _boom)
    refused(
        "invalid_dpop_proof", "DPoP proof too large", lambda: send(verifier, token, ["x" * 5000])
    )


def test_oversized_dpop_proof_is_refused_by_validate_proof_before_decoding(
    agent: AgentKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    proof = make_proof(agent, None, pad="x" * 4000)
    monkeypatch.setattr(jose, "b64url_decode", _boom)
    monkeypatch.setattr(jose, "_json_object", _boom)
    with pytest.raises(JoseRejected, match="longer than 4096"):
        validate_proof(proof, method="GET", url=URL, now=NOW, window=DpopWindow())


def test_oversized_client_assertion_is_refused_before_decoding(
    agent: AgentKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = sign_assertion(agent, assertion_claims(pad="x" * 4000))
    monkeypatch.setattr(jose, "b64url_decode", _boom)
    monkeypatch.setattr(jose, "_json_object", _boom)
    with pytest.raises(JoseRejected, match="longer than 4096"):
        parse_assertion(raw)


# -- duplicate JSON members --------------------------------------------------------


def _members(*pairs: tuple[str, Any]) -> bytes:
    return ("{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs) + "}").encode()


@pytest.mark.parametrize(
    ("pairs", "reason"),
    [
        (
            (("typ", "at+jwt"), ("alg", "ES256"), ("kid", KID), ("alg", "none")),
            "duplicate member 'alg'",
        ),
        (
            (("typ", "JWT"), ("alg", "ES256"), ("kid", KID), ("typ", "at+jwt")),
            "duplicate member 'typ'",
        ),
        (
            (("typ", "at+jwt"), ("alg", "ES256"), ("kid", "../x"), ("kid", KID)),
            "duplicate member 'kid'",
        ),
    ],
    ids=["alg", "typ", "kid"],
)
def test_access_token_with_duplicate_header_member_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey, pairs: tuple[tuple[str, Any], ...], reason: str
) -> None:
    token = raw_jws(_members(*pairs), at_claims(None), as_key)
    refused("invalid_token", "header: " + reason, lambda: verifier.verify_token(token, now=NOW))


@pytest.mark.parametrize("name", ["aud", "sub", "iss", "exp", "scope"])
def test_access_token_with_duplicate_claim_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey, name: str
) -> None:
    claims = at_claims(None)
    pairs = [*claims.items(), (name, claims[name])]  # even an identical repeat is refused
    token = raw_jws(at_header(), _members(*pairs), as_key)
    refused(
        "invalid_token",
        f"claims: duplicate member '{name}'",
        lambda: verifier.verify_token(token, now=NOW),
    )


def test_access_token_with_duplicate_member_inside_cnf_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey, agent: AgentKey, attacker: AgentKey
) -> None:
    claims = at_claims(None)
    cnf = _members(("jkt", agent.kid), ("jkt", attacker.kid)).decode()
    payload = _members(*claims.items())[:-1] + f',"cnf":{cnf}}}'.encode()
    token = raw_jws(at_header(), payload, as_key)
    refused(
        "invalid_token", "duplicate member 'jkt'", lambda: verifier.verify_token(token, now=NOW)
    )


def test_client_assertion_with_duplicate_sub_is_refused(agent: AgentKey) -> None:
    pairs = [*assertion_claims(sub="agent_victim").items(), ("sub", CLIENT)]
    raw = raw_jws({"alg": "ES256", "typ": "JWT", "kid": agent.kid}, _members(*pairs), agent)
    with pytest.raises(JoseRejected, match="duplicate member 'sub'"):
        check_assertion(raw, agent)


def test_dpop_proof_with_duplicate_htu_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey, agent: AgentKey
) -> None:
    token = issue(as_key, at_claims(agent))
    pairs = [*proof_claims(token, htu="https://evil.example/").items(), ("htu", URL)]
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": public_members(agent)}
    proof = raw_jws(header, _members(*pairs), agent)
    refused("invalid_dpop_proof", "duplicate member 'htu'", lambda: send(verifier, token, [proof]))


# -- client assertions: claim rules -----------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"sub": "agent_victim"}, "iss and sub must both be the client_id"),
        ({"sub": DROP}, "iss and sub must both be the client_id"),
        ({"aud": AUDIENCE}, "aud is not this authorization server"),
        ({"aud": "https://as.example.evil"}, "aud is not this authorization server"),
        ({"aud": [ISSUER, AUDIENCE]}, "aud is not this authorization server"),
        ({"aud": [ISSUER, TOKEN_ENDPOINT]}, "aud is not this authorization server"),
        ({"aud": DROP}, "aud is not this authorization server"),
        ({"exp": NOW + ASSERTION_LIFETIME + SKEW + 1}, "exp is more than 300 s ahead"),
        ({"exp": NOW + 86_400}, "exp is more than 300 s ahead"),
        ({"exp": NOW - SKEW - 1}, "token expired"),
        ({"exp": DROP}, "claim exp missing"),
        ({"jti": DROP}, "claim jti missing"),
        ({"iat": NOW + 3600}, "claim iat is in the future"),
        ({"nbf": NOW + 3600}, "claim nbf is in the future"),
    ],
    ids=[
        "sub-other",
        "no-sub",
        "aud-resource",
        "aud-lookalike",
        "aud-two",
        "aud-both-ours",
        "no-aud",
        "exp-5min+",
        "exp-1day",
        "expired",
        "no-exp",
        "no-jti",
        "iat-future",
        "nbf-future",
    ],
)
def test_client_assertion_breaking_a_claim_rule_is_refused(
    agent: AgentKey, overrides: dict[str, Any], reason: str
) -> None:
    raw = sign_assertion(agent, assertion_claims(**overrides))
    with pytest.raises(JoseRejected, match=re.escape(reason)):
        check_assertion(raw, agent)


@pytest.mark.parametrize("audience", [ISSUER, TOKEN_ENDPOINT, [ISSUER], [TOKEN_ENDPOINT]])
def test_client_assertion_audience_may_be_issuer_or_token_endpoint(
    agent: AgentKey, audience: Any
) -> None:
    raw = sign_assertion(agent, assertion_claims(aud=audience, exp=NOW + ASSERTION_LIFETIME))
    assert check_assertion(raw, agent).client_id == CLIENT  # type: ignore[attr-defined]


def test_client_assertion_signed_by_another_key_with_the_agents_kid_is_refused(
    agent: AgentKey, attacker: AgentKey
) -> None:
    header = {"alg": "ES256", "typ": "JWT", "kid": agent.kid}
    raw = jwt.encode(header, assertion_claims(), attacker.key, algorithms=["ES256"])
    with pytest.raises(JoseRejected, match="signature does not verify"):
        check_assertion(raw, agent)


def test_client_assertion_naming_an_unregistered_kid_is_refused(
    agent: AgentKey, attacker: AgentKey
) -> None:
    raw = sign_assertion(attacker, assertion_claims())
    with pytest.raises(JoseRejected, match="no registered, active key"):
        check_assertion(raw, agent)


# -- DPoP: presence, shape, key ---------------------------------------------------


def test_dpop_bound_token_without_proof_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey, agent: AgentKey
) -> None:
    token = issue(as_key, at_claims(agent))
    refused("invalid_dpop_proof", "DPoP proof missing", lambda: send(verifier, token, []))


def test_two_dpop_headers_are_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey, agent: AgentKey
) -> None:
    token = issue(as_key, at_claims(agent))
    proofs = [make_proof(agent, token), make_proof(agent, token)]
    refused(
        "invalid_dpop_proof", "more than one DPoP header", lambda: send(verifier, token, proofs)
    )


def test_two_authorization_headers_are_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey, agent: AgentKey
) -> None:
    token = issue(as_key, at_claims(agent))
    err = refused(
        "invalid_request",
        "more than one Authorization header",
        lambda: verifier.verify_request(
            authorization=[f"DPoP {token}", f"DPoP {token}"],
            dpop=[make_proof(agent, token)],
            method="GET",
            url=URL,
            now=NOW,
        ),
    )
    assert err.oauth_status == 400


def test_missing_authorization_header_gets_a_bare_challenge(
    verifier: AccessTokenVerifier,
) -> None:
    err = refused(
        "invalid_token",
        "no Authorization header",
        lambda: verifier.verify_request(authorization=[], dpop=[], method="GET", url=URL, now=NOW),
    )
    assert err.oauth_status == 401
    assert err.headers["WWW-Authenticate"].startswith("DPoP algs=")
    assert "error=" not in err.headers["WWW-Authenticate"]


@pytest.mark.parametrize("scheme", ["Basic", "MAC", "DPoPx", ""])
def test_unknown_authorization_scheme_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey, agent: AgentKey, scheme: str
) -> None:
    token = issue(as_key, at_claims(agent))
    refused(
        "invalid_token",
        "unsupported authorization scheme",
        lambda: send(verifier, token, [make_proof(agent, token)], scheme=scheme),
    )


def test_dpop_proof_carrying_a_private_key_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey, agent: AgentKey
) -> None:
    token = issue(as_key, at_claims(agent))
    private = {k: str(v) for k, v in agent.key.as_dict(private=True).items()}
    assert "d" in private
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": private}
    proof = raw_jws(header, proof_claims(token), agent)
    refused("invalid_dpop_proof", "private key material", lambda: send(verifier, token, [proof]))


def test_dpop_proof_with_symmetric_jwk_is_refused(agent: AgentKey) -> None:
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": {"kty": "oct", "k": "c2VjcmV0"}}
    proof = raw_jws(header, proof_claims(None), agent)
    with pytest.raises(JoseRejected, match="private key material"):
        validate_proof(proof, method="GET", url=URL, now=NOW, window=DpopWindow())


def test_dpop_proof_signed_by_attacker_naming_the_victims_jwk_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey, agent: AgentKey, attacker: AgentKey
) -> None:
    token = issue(as_key, at_claims(agent))
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": public_members(agent)}
    proof = raw_jws(header, proof_claims(token), attacker)
    refused(
        "invalid_dpop_proof", "signature does not verify", lambda: send(verifier, token, [proof])
    )


def test_dpop_proof_signed_by_another_key_than_cnf_jkt_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey, agent: AgentKey, attacker: AgentKey
) -> None:
    token = issue(as_key, at_claims(agent))  # stolen token, bound to the agent
    proof = make_proof(attacker, token)  # a perfectly valid proof, by the wrong key
    refused(
        "invalid_dpop_proof",
        "proof key does not match the token's cnf.jkt",
        lambda: send(verifier, token, [proof]),
    )


def test_dpop_proof_for_another_token_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey, agent: AgentKey
) -> None:
    token = issue(as_key, at_claims(agent))
    other = issue(as_key, at_claims(agent))
    proof = make_proof(agent, other)
    refused("invalid_dpop_proof", "ath does not match", lambda: send(verifier, token, [proof]))


def test_dpop_proof_without_ath_is_refused_at_a_resource(
    verifier: AccessTokenVerifier, as_key: AgentKey, agent: AgentKey
) -> None:
    token = issue(as_key, at_claims(agent))
    proof = make_proof(agent, None)  # a token-endpoint proof carries no ath
    refused("invalid_dpop_proof", "claim ath missing", lambda: send(verifier, token, [proof]))


@pytest.mark.parametrize("method", ["POST", "get", "DELETE"])
def test_dpop_proof_for_another_method_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey, agent: AgentKey, method: str
) -> None:
    token = issue(as_key, at_claims(agent))
    proof = make_proof(agent, token, htm=method)
    refused("invalid_dpop_proof", "htm does not match", lambda: send(verifier, token, [proof]))


@pytest.mark.parametrize(
    "htu",
    [
        "https://evil.example/api/things",
        "https://rs.example.evil/api/things",
        "https://rs.example/api/other",
        "https://rs.example/api",
        "https://rs.example/api/things/",
        "https://rs.example/API/things",
        "http://rs.example/api/things",
        "https://rs.example:8443/api/things",
    ],
    ids=[
        "host",
        "host-suffix",
        "path",
        "path-prefix",
        "trailing-slash",
        "path-case",
        "scheme",
        "port",
    ],
)
def test_dpop_proof_for_another_uri_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey, agent: AgentKey, htu: str
) -> None:
    token = issue(as_key, at_claims(agent))
    proof = make_proof(agent, token, htu=htu)
    refused("invalid_dpop_proof", "htu does not match", lambda: send(verifier, token, [proof]))


@pytest.mark.parametrize(
    "htu",
    [
        "https://user@rs.example/api/things",
        "https://rs.example:99999/api/things",
        "ftp://rs.example/api/things",
        "/api/things",
        "https:///api/things",
    ],
    ids=["userinfo", "bad-port", "ftp", "relative", "no-host"],
)
def test_dpop_proof_with_unusable_htu_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey, agent: AgentKey, htu: str
) -> None:
    token = issue(as_key, at_claims(agent))
    proof = make_proof(agent, token, htu=htu)
    refused("invalid_dpop_proof", "htu", lambda: send(verifier, token, [proof]))


@pytest.mark.parametrize(
    ("htu", "request_url"),
    [
        ("https://rs.example:443/api/things", URL),
        (URL, "https://rs.example:443/api/things"),
        ("https://RS.EXAMPLE/api/things", URL),
        ("HTTPS://Rs.Example/api/things", URL),
        (URL, URL + "?page=2&sort=asc"),
        (URL + "?page=2", URL),
        (URL + "#section", URL),
        ("https://rs.example/api/%74hings", URL),
        ("https://rs.example/api/th%69ngs", URL),
    ],
    ids=[
        "port-443",
        "request-port-443",
        "upper-host",
        "upper-scheme",
        "request-query",
        "proof-query",
        "fragment",
        "pct-t",
        "pct-i",
    ],
)
def test_dpop_htu_normalisation_accepts_equivalent_uris(
    verifier: AccessTokenVerifier, as_key: AgentKey, agent: AgentKey, htu: str, request_url: str
) -> None:
    token = issue(as_key, at_claims(agent))
    proof = make_proof(agent, token, htu=htu)
    assert send(verifier, token, [proof], url=request_url).jkt == agent.kid


@pytest.mark.parametrize(
    ("iat", "accepted"),
    [
        (NOW + 3600, False),
        (NOW - 3600, False),
        (NOW + 6, False),
        (NOW - 61, False),
        (NOW + 5, True),
        (NOW - 60, True),
    ],
    ids=["+1h", "-1h", "+6s", "-61s", "+5s", "-60s"],
)
def test_dpop_proof_iat_window(
    verifier: AccessTokenVerifier, as_key: AgentKey, agent: AgentKey, iat: int, accepted: bool
) -> None:
    token = issue(as_key, at_claims(agent))
    proof = make_proof(agent, token, iat=iat)
    if accepted:
        assert send(verifier, token, [proof]).jkt == agent.kid
    else:
        refused(
            "invalid_dpop_proof",
            "iat is outside the accepted window",
            lambda: send(verifier, token, [proof]),
        )


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"jti": DROP}, "claim jti missing"),
        ({"htm": DROP}, "claim htm missing"),
        ({"htu": DROP}, "claim htu missing"),
        ({"iat": DROP}, "claim iat missing"),
        ({"iat": str(NOW)}, "claim iat is not a NumericDate"),
    ],
    ids=["no-jti", "no-htm", "no-htu", "no-iat", "iat-string"],
)
def test_dpop_proof_missing_a_claim_is_refused(
    verifier: AccessTokenVerifier,
    as_key: AgentKey,
    agent: AgentKey,
    overrides: dict[str, Any],
    reason: str,
) -> None:
    token = issue(as_key, at_claims(agent))
    proof = make_proof(agent, token, **overrides)
    refused("invalid_dpop_proof", reason, lambda: send(verifier, token, [proof]))


def test_replayed_dpop_proof_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey, agent: AgentKey
) -> None:
    token = issue(as_key, at_claims(agent))
    proof = make_proof(agent, token)
    send(verifier, token, [proof])
    refused(
        "invalid_dpop_proof",
        "DPoP proof jti replayed",
        lambda: send(verifier, token, [proof], now=NOW + 1),
    )


def test_new_proof_reusing_a_jti_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey, agent: AgentKey
) -> None:
    token = issue(as_key, at_claims(agent))
    send(verifier, token, [make_proof(agent, token, jti="fixed-jti")])
    again = make_proof(agent, token, jti="fixed-jti", iat=NOW + 1)
    refused(
        "invalid_dpop_proof",
        "DPoP proof jti replayed",
        lambda: send(verifier, token, [again], now=NOW + 1),
    )


def test_full_replay_cache_refuses_new_proofs(
    keys: Keys, revocations: RevocationSet, as_key: AgentKey, agent: AgentKey
) -> None:
    replay = ReplayCache(max_entries=1)
    assert replay.first_use("earlier-proof", expires=NOW + 60, now=NOW)
    verifier = AccessTokenVerifier(CONFIG, keys, revocations, replay=replay)
    token = issue(as_key, at_claims(agent, exp=NOW + 600))
    refused(
        "invalid_dpop_proof", "replayed", lambda: send(verifier, token, [make_proof(agent, token)])
    )
    # Once the earlier entry has expired, room is made and a new proof passes.
    later = NOW + 60
    assert send(verifier, token, [make_proof(agent, token, iat=later)], now=later).jkt == agent.kid


def test_injected_empty_replay_cache_is_used(
    keys: Keys, revocations: RevocationSet, as_key: AgentKey, agent: AgentKey
) -> None:
    replay = ReplayCache(max_entries=1)
    verifier = AccessTokenVerifier(CONFIG, keys, revocations, replay=replay)
    token = issue(as_key, at_claims(agent, exp=NOW + 600))
    send(verifier, token, [make_proof(agent, token)])
    assert len(replay) == 1
    fresh = make_proof(agent, token, iat=NOW + 1)
    refused("invalid_dpop_proof", "replayed", lambda: send(verifier, token, [fresh], now=NOW + 1))


def test_replay_cache_shared_by_two_verifiers_catches_cross_replay(
    keys: Keys, revocations: RevocationSet, as_key: AgentKey, agent: AgentKey
) -> None:
    replay = ReplayCache()
    first = AccessTokenVerifier(CONFIG, keys, revocations, replay=replay)
    second = AccessTokenVerifier(CONFIG, keys, revocations, replay=replay)
    token = issue(as_key, at_claims(agent))
    proof = make_proof(agent, token)
    send(first, token, [proof])
    refused("invalid_dpop_proof", "replayed", lambda: send(second, token, [proof]))


def test_replay_cache_refuses_when_full_of_unexpired_entries() -> None:
    cache = ReplayCache(max_entries=2)
    assert cache.first_use("a", expires=NOW + 10, now=NOW)
    assert cache.first_use("b", expires=NOW + 10, now=NOW)
    assert not cache.first_use("c", expires=NOW + 10, now=NOW)
    assert not cache.first_use("a", expires=NOW + 10, now=NOW)
    assert cache.first_use("c", expires=NOW + 20, now=NOW + 10)


# -- scheme versus binding --------------------------------------------------------


@pytest.mark.parametrize("accept_bearer", [False, True])
def test_dpop_bound_token_presented_as_bearer_is_refused(
    keys: Keys, revocations: RevocationSet, as_key: AgentKey, agent: AgentKey, accept_bearer: bool
) -> None:
    config = VerifierConfig(issuer=ISSUER, audience=AUDIENCE, accept_bearer=accept_bearer)
    verifier = AccessTokenVerifier(config, keys, revocations)
    token = issue(as_key, at_claims(agent))
    refused(
        "invalid_token",
        "DPoP-bound token presented as Bearer",
        lambda: send(verifier, token, [], scheme="Bearer"),
    )


def test_unbound_token_under_dpop_scheme_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey, agent: AgentKey
) -> None:
    token = issue(as_key, at_claims(None))
    proof = make_proof(agent, token)
    refused("invalid_token", "token is not DPoP-bound", lambda: send(verifier, token, [proof]))


def test_bearer_token_is_refused_where_bearer_is_not_accepted(
    verifier: AccessTokenVerifier, as_key: AgentKey
) -> None:
    token = issue(as_key, at_claims(None))
    refused(
        "invalid_token",
        "Bearer tokens are not accepted here",
        lambda: send(verifier, token, [], scheme="Bearer"),
    )


def test_bearer_token_is_accepted_where_bearer_is_allowed(
    keys: Keys, revocations: RevocationSet, as_key: AgentKey
) -> None:
    config = VerifierConfig(issuer=ISSUER, audience=AUDIENCE, accept_bearer=True)
    verifier = AccessTokenVerifier(config, keys, revocations)
    token = issue(as_key, at_claims(None))
    access = send(verifier, token, [], scheme="Bearer")
    assert (access.token_type, access.jkt) == ("Bearer", None)


def test_bearer_token_with_a_dpop_header_is_refused(
    keys: Keys, revocations: RevocationSet, as_key: AgentKey, agent: AgentKey
) -> None:
    config = VerifierConfig(issuer=ISSUER, audience=AUDIENCE, accept_bearer=True)
    verifier = AccessTokenVerifier(config, keys, revocations)
    token = issue(as_key, at_claims(None))
    refused(
        "invalid_request",
        "DPoP proof sent with a Bearer token",
        lambda: send(verifier, token, [make_proof(agent, token)], scheme="Bearer"),
    )


# -- revocation --------------------------------------------------------------------


def _revoke_token(revocations: RevocationSet, jti: str, seq: int = 1) -> None:
    entry = Revocation(
        seq=seq, kind=RevocationKind.TOKEN, subject=jti, cutoff=0, expires=NOW + 3600
    )
    revocations.apply([entry], now=NOW)


def _cut_off_agent(revocations: RevocationSet, agent_id: str, cutoff: int, seq: int = 1) -> None:
    entry = Revocation(
        seq=seq, kind=RevocationKind.AGENT, subject=agent_id, cutoff=cutoff, expires=NOW + 3600
    )
    revocations.apply([entry], now=NOW)


def test_token_revoked_by_jti_is_refused(
    verifier: AccessTokenVerifier, revocations: RevocationSet, as_key: AgentKey, agent: AgentKey
) -> None:
    claims = at_claims(agent)
    token = issue(as_key, claims)
    _revoke_token(revocations, claims["jti"])
    refused(
        "invalid_token", "token revoked", lambda: send(verifier, token, [make_proof(agent, token)])
    )


def test_revoking_one_jti_leaves_other_tokens_valid(
    verifier: AccessTokenVerifier, revocations: RevocationSet, as_key: AgentKey
) -> None:
    _revoke_token(revocations, "some-other-jti")
    assert verifier.verify_token(issue(as_key, at_claims(None)), now=NOW).subject == CLIENT


def test_token_revoked_after_it_was_accepted_is_refused(
    verifier: AccessTokenVerifier, revocations: RevocationSet, as_key: AgentKey
) -> None:
    """The verified-token cache must not outlive a revocation."""
    claims = at_claims(None)
    token = issue(as_key, claims)
    verifier.verify_token(token, now=NOW)
    _revoke_token(revocations, claims["jti"])
    refused("invalid_token", "token revoked", lambda: verifier.verify_token(token, now=NOW + 1))


@pytest.mark.parametrize(
    ("iat", "revoked"),
    [(NOW - 100, True), (NOW - 1, True), (NOW, True), (NOW + 1, False), (NOW + 10, False)],
    ids=["long-before", "just-before", "at-cutoff", "just-after", "after"],
)
def test_agent_cutoff_revokes_tokens_issued_at_or_before_it(
    verifier: AccessTokenVerifier,
    revocations: RevocationSet,
    as_key: AgentKey,
    iat: int,
    revoked: bool,
) -> None:
    _cut_off_agent(revocations, CLIENT, cutoff=NOW)
    token = issue(as_key, at_claims(None, iat=iat, exp=iat + 300))
    now = NOW + 10
    if revoked:
        refused("invalid_token", "token revoked", lambda: verifier.verify_token(token, now=now))
    else:
        assert verifier.verify_token(token, now=now).issued_at == iat


def test_agent_cutoff_applies_to_tokens_already_accepted(
    verifier: AccessTokenVerifier, revocations: RevocationSet, as_key: AgentKey
) -> None:
    token = issue(as_key, at_claims(None))
    verifier.verify_token(token, now=NOW)
    _cut_off_agent(revocations, CLIENT, cutoff=NOW + 5)
    refused("invalid_token", "token revoked", lambda: verifier.verify_token(token, now=NOW + 6))


def test_agent_cutoff_does_not_touch_other_agents(
    verifier: AccessTokenVerifier, revocations: RevocationSet, as_key: AgentKey
) -> None:
    _cut_off_agent(revocations, "agent_someone_else", cutoff=NOW + 100)
    assert verifier.verify_token(issue(as_key, at_claims(None)), now=NOW).client_id == CLIENT


def test_never_refreshed_revocation_set_fails_closed(
    keys: Keys, as_key: AgentKey, agent: AgentKey
) -> None:
    verifier = AccessTokenVerifier(CONFIG, keys, RevocationSet(max_staleness=10))
    token = issue(as_key, at_claims(agent))
    err = refused(
        "temporarily_unavailable",
        "revocation feed stale",
        lambda: send(verifier, token, [make_proof(agent, token)]),
    )
    assert err.oauth_status == 503


def test_revocation_set_past_max_staleness_fails_closed(
    keys: Keys, as_key: AgentKey, agent: AgentKey
) -> None:
    clock = FakeMonotonic()
    revocations = RevocationSet(max_staleness=10, monotonic=clock)
    revocations.mark_fresh()
    verifier = AccessTokenVerifier(CONFIG, keys, revocations)
    token = issue(as_key, at_claims(agent))
    clock.value += 10  # exactly at the limit: still fresh
    assert send(verifier, token, [make_proof(agent, token)]).jkt == agent.kid
    clock.value += 0.5
    # Even the token just verified (and cached) is refused, as is any other.
    refused("temporarily_unavailable", "stale", lambda: verifier.verify_token(token, now=NOW))
    other = issue(as_key, at_claims(None))
    refused("temporarily_unavailable", "stale", lambda: verifier.verify_token(other, now=NOW))
    revocations.mark_fresh()
    assert verifier.verify_token(other, now=NOW).subject == CLIENT


def test_stale_revocation_set_fails_closed_even_for_introspection(
    keys: Keys, as_key: AgentKey
) -> None:
    verifier = AccessTokenVerifier(CONFIG, keys, RevocationSet(max_staleness=10))
    token = issue(as_key, at_claims(None))
    refused(
        "temporarily_unavailable",
        "stale",
        lambda: verifier.verify_token(token, now=NOW, any_audience=True),
    )


# -- signing keys leaving the JWKS -------------------------------------------------


def test_token_is_refused_once_its_signing_key_is_unpublished(
    verifier: AccessTokenVerifier, keys: Keys, as_key: AgentKey
) -> None:
    token = issue(as_key, at_claims(None))
    verifier.verify_token(token, now=NOW)
    del keys.entries[KID]
    refused(
        "invalid_token",
        "signing key no longer published",
        lambda: verifier.verify_token(token, now=NOW),
    )


def test_a_stream_is_refused_once_its_tokens_signing_key_is_unpublished(
    verifier: AccessTokenVerifier, keys: Keys, as_key: AgentKey
) -> None:
    """``still_valid`` (the check of a stream's token every 0.1 s) refuses a token
    whose key left the key set with the error a request gets, by a lookup in the key
    set held, not a second signature check."""
    token = issue(as_key, at_claims(None))
    access = verifier.verify_token(token, now=NOW)
    assert access.kid == KID
    verifier.still_valid(access, now=NOW)
    keys.lookups.clear()
    del keys.entries[KID]
    refused(
        "invalid_token",
        "signing key no longer published",
        lambda: verifier.still_valid(access, now=NOW),
    )
    assert keys.lookups == [KID]
    # the error a request with that token gets now
    refused(
        "invalid_token",
        "signing key no longer published",
        lambda: verifier.verify_token(token, now=NOW),
    )


def test_a_stream_whose_access_names_no_key_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey
) -> None:
    """An access this verifier did not accept (no ``kid``) names no published key:
    ``still_valid`` fails closed."""
    access = verifier.verify_token(issue(as_key, at_claims(None)), now=NOW)
    refused(
        "invalid_token",
        "signing key no longer published",
        lambda: verifier.still_valid(replace(access, kid=""), now=NOW),
    )


def test_a_key_the_feed_retires_is_refused_while_the_key_set_still_holds_it(
    verifier: AccessTokenVerifier, keys: Keys, revocations: RevocationSet, as_key: AgentKey
) -> None:
    """Fail closed: once the revocation feed names a signing key as retired, every
    token it signed is refused (new requests, the verified-token cache, open
    streams), although the key set held (a JWKS copy that could not be re-read, or a
    replica's that has not caught up) still has the key; a token with another kid
    is not affected. The key set is not even asked."""
    cached = issue(as_key, at_claims(None))
    access = verifier.verify_token(cached, now=NOW)
    fresh = issue(as_key, at_claims(None))  # never verified: not in the cache
    entry = Revocation(
        seq=1, kind=RevocationKind.SIGNING_KEY, subject=KID, cutoff=NOW, expires=NOW + 3600
    )
    revocations.apply([entry], now=NOW)
    assert keys.entries[KID] is not None  # the key set still holds the key
    keys.lookups.clear()
    for call in (
        lambda: verifier.verify_token(fresh, now=NOW),
        lambda: verifier.verify_token(cached, now=NOW),
        lambda: verifier.still_valid(access, now=NOW),
    ):
        refused("invalid_token", "signing key no longer published", call)
    assert keys.lookups == []
    # another key's tokens still verify
    keys.entries["as-key-2"] = keys.entries[KID]
    assert verifier.verify_token(issue(as_key, at_claims(None), kid="as-key-2"), now=NOW)
    # the entry is kept as long as the key's tokens may live, then forgotten
    revocations.apply([], now=NOW + 3600)
    assert not revocations.is_key_retired(KID)


# -- server nonces -----------------------------------------------------------------

NONCE_KEY = bytes(range(32))


@pytest.fixture
def nonces() -> NonceIssuer:
    return NonceIssuer(NONCE_KEY)


@pytest.fixture
def nonce_verifier(
    keys: Keys, revocations: RevocationSet, nonces: NonceIssuer
) -> AccessTokenVerifier:
    config = VerifierConfig(issuer=ISSUER, audience=AUDIENCE, require_nonce=True)
    return AccessTokenVerifier(config, keys, revocations, nonces=nonces)


def _forged_nonce() -> str:
    stamp = NOW.to_bytes(8, "big")
    return b64(stamp + secrets.token_bytes(16))


@pytest.mark.parametrize(
    "nonce",
    [
        None,
        "not-a-nonce",
        "forged",
        "other-key",
        "expired",
        "future",
        "padded",
        "too-long",
    ],
)
def test_missing_forged_or_expired_nonce_gets_use_dpop_nonce(
    nonce_verifier: AccessTokenVerifier,
    nonces: NonceIssuer,
    as_key: AgentKey,
    agent: AgentKey,
    nonce: str | None,
) -> None:
    value = {
        None: None,
        "": "",
        "not-a-nonce": "not-a-nonce",
        "forged": _forged_nonce(),
        "other-key": NonceIssuer(b"\x01" * 32).issue(NOW),
        "expired": nonces.issue(NOW - nonces.lifetime - 1),
        "future": nonces.issue(NOW + 60),
        "padded": nonces.issue(NOW) + "==",
        "too-long": nonces.issue(NOW) * 3,
    }[nonce]
    token = issue(as_key, at_claims(agent))
    overrides = {} if value is None else {"nonce": value}
    proof = make_proof(agent, token, **overrides)
    err = refused("use_dpop_nonce", "nonce", lambda: send(nonce_verifier, token, [proof]))
    assert err.oauth_status == 401
    assert 'error="use_dpop_nonce"' in err.headers["WWW-Authenticate"]
    assert nonces.is_valid(err.headers["DPoP-Nonce"], NOW)


def test_current_nonce_is_accepted(
    nonce_verifier: AccessTokenVerifier, nonces: NonceIssuer, as_key: AgentKey, agent: AgentKey
) -> None:
    token = issue(as_key, at_claims(agent))
    for issued in (NOW, NOW - nonces.lifetime, NOW + 5):
        proof = make_proof(agent, token, nonce=nonces.issue(issued))
        assert send(nonce_verifier, token, [proof]).jkt == agent.kid


def test_nonce_from_challenge_completes_the_retry(
    nonce_verifier: AccessTokenVerifier, as_key: AgentKey, agent: AgentKey
) -> None:
    token = issue(as_key, at_claims(agent))
    err = refused(
        "use_dpop_nonce", "nonce", lambda: send(nonce_verifier, token, [make_proof(agent, token)])
    )
    retry = make_proof(agent, token, nonce=err.headers["DPoP-Nonce"])
    assert send(nonce_verifier, token, [retry]).jkt == agent.kid


def test_require_nonce_without_issuer_is_a_configuration_error(
    keys: Keys, revocations: RevocationSet
) -> None:
    config = VerifierConfig(issuer=ISSUER, audience=AUDIENCE, require_nonce=True)
    with pytest.raises(ValueError, match="NonceIssuer"):
        AccessTokenVerifier(config, keys, revocations)


def test_short_nonce_key_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        NonceIssuer(b"k" * 31)


# -- Ed25519 and per-kid algorithm pinning -----------------------------------------

ED_KID = "as-ed-1"


@pytest.fixture(scope="module")
def ed_key() -> AgentKey:
    return AgentKey.generate("Ed25519")


@pytest.fixture
def ed_verifier(
    ed_key: AgentKey, as_key: AgentKey, revocations: RevocationSet
) -> AccessTokenVerifier:
    keys = Keys(
        {
            ED_KID: import_public_jwk(ed_key.public_jwk(), "Ed25519", kid=ED_KID),
            KID: import_public_jwk(as_key.public_jwk(), "ES256", kid=KID),
        }
    )
    return AccessTokenVerifier(CONFIG, keys, revocations)


def test_ed25519_token_verifies_under_its_pinned_kid(
    ed_verifier: AccessTokenVerifier, ed_key: AgentKey, agent: AgentKey
) -> None:
    token = issue(ed_key, at_claims(agent), kid=ED_KID)
    assert json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))["alg"] == "Ed25519"
    assert send(ed_verifier, token, [make_proof(agent, token)]).jkt == agent.kid


def test_ed25519_signature_under_es256_header_is_refused(
    ed_verifier: AccessTokenVerifier, ed_key: AgentKey
) -> None:
    token = raw_jws(at_header(alg="ES256", kid=ED_KID), at_claims(None), ed_key)
    refused(
        "invalid_token",
        "alg 'ES256' is not the algorithm pinned for this key",
        lambda: ed_verifier.verify_token(token, now=NOW),
    )


def test_ed25519_token_naming_the_es256_kid_is_refused(
    ed_verifier: AccessTokenVerifier, ed_key: AgentKey
) -> None:
    token = issue(ed_key, at_claims(None), kid=KID)
    refused(
        "invalid_token",
        "alg 'Ed25519' is not the algorithm pinned for this key",
        lambda: ed_verifier.verify_token(token, now=NOW),
    )


def test_eddsa_alg_name_is_refused_for_an_ed25519_key(
    ed_verifier: AccessTokenVerifier, ed_key: AgentKey
) -> None:
    token = raw_jws(at_header(alg="EdDSA", kid=ED_KID), at_claims(None), ed_key)
    refused(
        "invalid_token",
        "alg 'EdDSA' is not allowed",
        lambda: ed_verifier.verify_token(token, now=NOW),
    )


def test_ed25519_dpop_proof_is_accepted(
    verifier: AccessTokenVerifier, as_key: AgentKey, ed_key: AgentKey
) -> None:
    token = issue(as_key, at_claims(ed_key))
    assert send(verifier, token, [make_proof(ed_key, token)]).jkt == ed_key.key.thumbprint()


def test_dpop_proof_with_es256_header_and_ed25519_jwk_is_refused(
    verifier: AccessTokenVerifier, as_key: AgentKey, ed_key: AgentKey
) -> None:
    token = issue(as_key, at_claims(ed_key))
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": public_members(ed_key)}
    proof = raw_jws(header, proof_claims(token), ed_key)
    refused("invalid_dpop_proof", "not a EC P-256 key", lambda: send(verifier, token, [proof]))


def test_client_assertion_alg_must_match_the_registered_key(
    agent: AgentKey, ed_key: AgentKey
) -> None:
    # An Ed25519 signature claiming to be ES256 by the agent's registered ES256 kid.
    header = {"alg": "Ed25519", "typ": "JWT", "kid": agent.kid}
    raw = raw_jws(header, assertion_claims(), ed_key)
    with pytest.raises(JoseRejected, match="no registered, active key"):
        check_assertion(raw, agent)


# -- error responses do not leak the failed check ---------------------------------


def test_invalid_token_description_is_generic(
    verifier: AccessTokenVerifier, as_key: AgentKey
) -> None:
    token = issue(as_key, at_claims(None, iss="https://as.example.evil"))
    err = refused("invalid_token", "iss", lambda: verifier.verify_token(token, now=NOW))
    assert err.to_oauth() == {
        "error": "invalid_token",
        "error_description": "the access token is not valid",
    }
    assert 'error="invalid_token"' in err.headers["WWW-Authenticate"]


def test_use_dpop_nonce_challenge_describes_the_error_and_the_reason_tells_the_cases(
    nonce_verifier: AccessTokenVerifier, nonces: NonceIssuer, as_key: AgentKey, agent: AgentKey
) -> None:
    """RFC 9449 section 9 (and 7.1): the challenge carries ``error_description``; the
    audit reason tells a missing nonce from a wrong one without quoting it."""
    token = issue(as_key, at_claims(agent))
    missing = refused(
        "use_dpop_nonce",
        "^DPoP proof without a nonce$",
        lambda: send(nonce_verifier, token, [make_proof(agent, token)]),
    )
    challenge = missing.headers["WWW-Authenticate"]
    assert challenge.startswith('DPoP algs="')
    assert challenge.endswith(
        'error="use_dpop_nonce", '
        'error_description="a current server nonce is required in the DPoP proof"'
    )
    stale = nonces.issue(NOW - nonces.lifetime - 1)
    wrong = refused(
        "use_dpop_nonce",
        "^DPoP nonce not current",
        lambda: send(nonce_verifier, token, [make_proof(agent, token, nonce=stale)]),
    )
    assert stale not in wrong.reason
