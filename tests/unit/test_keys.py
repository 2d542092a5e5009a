"""Agent public key validation (JWK, RFC 7517/7518/7638; Ed25519 per RFC 9864)."""

from __future__ import annotations

from typing import Any

import pytest
from joserfc.jwk import ECKey, OKPKey

from agentiam.core.identities.keys import validate_public_jwk
from agentiam.errors import InvalidInput


def es256_public(**extra: str) -> dict[str, Any]:
    jwk = ECKey.generate_key("P-256").as_dict(private=False)
    return {**jwk, "alg": "ES256", **extra}


def ed25519_public(**extra: str) -> dict[str, Any]:
    jwk = OKPKey.generate_key("Ed25519").as_dict(private=False)
    return {**jwk, "alg": "Ed25519", **extra}


def test_es256_key_is_accepted_with_thumbprint_kid() -> None:
    raw = es256_public()
    raw.pop("kid", None)
    key = validate_public_jwk(raw)
    assert key.alg == "ES256"
    assert key.kid == key.thumbprint
    assert set(key.jwk) == {"kty", "crv", "x", "y", "kid", "alg", "use"}


def test_ed25519_key_keeps_given_kid() -> None:
    key = validate_public_jwk(ed25519_public(kid="agent-key-1"))
    assert (key.kid, key.alg) == ("agent-key-1", "Ed25519")


def test_private_key_material_is_refused() -> None:
    private = {**ECKey.generate_key("P-256").as_dict(private=True), "alg": "ES256"}
    with pytest.raises(InvalidInput, match="private key material"):
        validate_public_jwk(private)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda j: {**j, "alg": "EdDSA"},  # polymorphic name refused
        lambda j: {**j, "alg": "HS256"},
        lambda j: {**j, "alg": "none"},
        lambda j: {**j, "crv": "P-384"},
        lambda j: {**j, "use": "enc"},
        lambda j: {**j, "kid": "bad kid with spaces"},
        lambda j: {k: v for k, v in j.items() if k != "y"},
        lambda j: {**j, "x": "AAAA"},  # not a point on the curve
        lambda j: {**j, "x": 5},
    ],
)
def test_unsafe_or_malformed_keys_are_refused(mutate: Any) -> None:
    with pytest.raises(InvalidInput):
        validate_public_jwk(mutate(es256_public()))


def test_symmetric_key_is_refused() -> None:
    with pytest.raises(InvalidInput):
        validate_public_jwk({"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"})
