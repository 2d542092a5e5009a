"""The broker's ``private_key_jwt`` client authentication (RFC 7523 section 2.2; OpenID
Connect Core 1.0 section 9) toward an upstream's token endpoint: an ``oauth_client_key``
secret (a client_id and a sealed private key), the client assertion signed by the one
implementation the agent SDK uses too, checked by a real token endpoint that verifies
it with joserfc (signature, aud, iss/sub, exp, jti), and the private key never shown."""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwt
from joserfc._rfc7517 import pem as joserfc_pem
from joserfc.jwk import ECKey, RSAKey
from tests.support.token_endpoint import ASSERTION_TYPE, KeyJwtEndpoint, serve

from agentiam.adapters.gateway.broker import (
    ApiKeyInjection,
    CredentialBroker,
    OAuthClientCredentials,
    OAuthClientKey,
    OAuthClientSecret,
    Secret,
    SecretKind,
    SecretStore,
    SecretStoreError,
    TokenEndpointError,
    credential_ref_from_config,
)
from agentiam.core.credentials.assertions import sign_client_assertion
from agentiam.core.credentials.sealing import MasterKey
from agentiam.sdk import AgentKey, client_assertion

CLIENT_ID = "gw-crm-client"


def _pem(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, *, traditional: bool = False
) -> bytes:
    form = (
        serialization.PrivateFormat.TraditionalOpenSSL
        if traditional
        else serialization.PrivateFormat.PKCS8
    )
    return key.private_bytes(serialization.Encoding.PEM, form, serialization.NoEncryption())


def _public(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> ECKey | RSAKey:
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return (
        ECKey.import_key(pem)
        if isinstance(key, ec.EllipticCurvePrivateKey)
        else (RSAKey.import_key(pem))
    )


def _body(pem: bytes) -> str:
    """The base64 body of a PEM: what must never show anywhere."""
    return "".join(line for line in pem.decode().splitlines() if "-----" not in line)


@pytest.fixture
def store(tmp_path: Path) -> SecretStore:
    key = MasterKey.from_text(MasterKey.generate_text())
    return SecretStore(tmp_path / "store.json", key, reload_interval=0.0)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def endpoint(ec_key: ec.EllipticCurvePrivateKey) -> Iterator[KeyJwtEndpoint]:
    with serve(KeyJwtEndpoint(CLIENT_ID, _public(ec_key), "ES256", kid="k-1")) as running:
        yield running


def _ref(url: str, **kw: Any) -> OAuthClientCredentials:
    return OAuthClientCredentials(
        "crm", url, auth_method="private_key_jwt", allow_private_network=True, **kw
    )


def test_the_broker_authenticates_with_a_signed_assertion(
    store: SecretStore, ec_key: ec.EllipticCurvePrivateKey, endpoint: KeyJwtEndpoint
) -> None:
    now = [0.0]
    store.put(
        "crm",
        SecretKind.OAUTH_CLIENT_KEY,
        OAuthClientKey.from_pem(CLIENT_ID, _pem(ec_key, traditional=True), kid="k-1"),
    )
    broker = CredentialBroker(store, clock=lambda: now[0])
    ref = _ref(endpoint.url, scope="contacts.read", resource="https://api.crm.example")
    assert broker.headers_for(ref) == ({"Authorization": "Bearer kjwt-at-1"}, "crm@1")
    assert endpoint.refusals == []
    [request] = endpoint.requests
    assert request["authorization"] is None  # no HTTP Basic: the assertion authenticates
    form = request["form"]
    assert set(form) == {"grant_type", "scope", "resource", "client_id",
                         "client_assertion_type", "client_assertion"}  # fmt: skip
    assert (form["client_id"], form["client_assertion_type"]) == (CLIENT_ID, ASSERTION_TYPE)
    [(header, claims)] = endpoint.assertions
    assert header == {"alg": "ES256", "kid": "k-1", "typ": "JWT"}
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert claims["aud"] == endpoint.url  # the token endpoint URL (OIDC Core section 9)
    assert claims["exp"] - claims["iat"] == 60
    # cached: no new assertion until the token is near its end; then a fresh one (jti)
    assert broker.headers_for(ref)[0] == {"Authorization": "Bearer kjwt-at-1"}
    now[0] = 300.0
    assert broker.headers_for(ref)[0] == {"Authorization": "Bearer kjwt-at-2"}
    assert endpoint.refusals == []  # the second jti was new: the server refuses a replay
    assert endpoint.assertions[0][1]["jti"] != endpoint.assertions[1][1]["jti"]


@pytest.mark.parametrize("alg", ["RS256", "PS256"])
def test_rsa_keys_sign_with_rs256_or_ps256(
    store: SecretStore, rsa_key: rsa.RSAPrivateKey, alg: str
) -> None:
    with serve(KeyJwtEndpoint(CLIENT_ID, _public(rsa_key), alg)) as endpoint:
        value = OAuthClientKey.from_pem(CLIENT_ID, _pem(rsa_key), alg=alg)
        store.put("crm", SecretKind.OAUTH_CLIENT_KEY, value)
        headers, _ = CredentialBroker(store).headers_for(_ref(endpoint.url))
    assert headers == {"Authorization": "Bearer kjwt-at-1"}
    assert endpoint.refusals == []
    assert endpoint.assertions[0][0] == {"alg": alg, "typ": "JWT"}  # no kid: none was given
    assert OAuthClientKey.from_pem(CLIENT_ID, _pem(rsa_key)).alg == "RS256"  # the default


def test_an_assertion_for_another_audience_is_refused_by_the_server(
    store: SecretStore, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    """The server is honest: an assertion whose aud is not its own is refused, so the
    broker's aud is what it checks in the other tests."""
    server = KeyJwtEndpoint(CLIENT_ID, _public(ec_key), "ES256", audience="https://as.example/t")
    with serve(server) as endpoint:
        store.put(
            "crm", SecretKind.OAUTH_CLIENT_KEY, OAuthClientKey.from_pem(CLIENT_ID, _pem(ec_key))
        )
        with pytest.raises(TokenEndpointError, match="invalid_client") as refused:
            CredentialBroker(store).headers_for(_ref(endpoint.url))
    assert endpoint.refusals == [f"aud {endpoint.url!r} is not this endpoint"]
    assert endpoint.requests[0]["form"]["client_assertion"] not in str(refused.value.detail)


def test_an_assertion_signed_by_another_key_is_refused_by_the_server(
    store: SecretStore, endpoint: KeyJwtEndpoint
) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    value = OAuthClientKey.from_pem(CLIENT_ID, _pem(other), kid="k-1")
    store.put("crm", SecretKind.OAUTH_CLIENT_KEY, value)
    with pytest.raises(TokenEndpointError, match="invalid_client"):
        CredentialBroker(store).headers_for(_ref(endpoint.url))
    assert endpoint.refusals == ["signature: BadSignatureError"]


def test_the_private_key_never_shows(
    store: SecretStore,
    ec_key: ec.EllipticCurvePrivateKey,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    pem = _pem(ec_key)
    value = OAuthClientKey.from_pem(CLIENT_ID, pem)
    info = store.put("crm", SecretKind.OAUTH_CLIENT_KEY, value)
    _, opened = store.get("crm")
    assert isinstance(opened, OAuthClientKey)
    with pytest.raises(TokenEndpointError):  # nothing listens there
        CredentialBroker(store).headers_for(_ref("http://127.0.0.1:9/token", timeout=0.5))
    shown = " ".join(
        [repr(value), str(value), repr(opened), repr(store.all()), json.dumps(info.to_dict()),
         (tmp_path / "store.json").read_text(), caplog.text]
    )  # fmt: skip
    assert _body(pem)[:40] not in shown
    assert _body(opened.private_key.reveal().encode())[:40] not in shown
    assert CLIENT_ID not in (tmp_path / "store.json").read_text()  # sealed with the key
    with pytest.raises(TypeError, match="not pickled"):
        pickle.dumps(opened)


def test_unusable_keys_are_refused_when_stored(
    store: SecretStore, ec_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    encrypted = ec_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    cases: list[tuple[bytes, dict[str, Any], str]] = [
        (encrypted, {}, "encrypted"),
        (b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n", {}, "PEM"),
        (_pem(ec.generate_private_key(ec.SECP384R1())), {}, "P-256"),
        (_pem(weak), {}, "2048"),
        (_pem(rsa_key), {"alg": "ES256"}, "does not fit"),
        (_pem(ec_key), {"alg": "RS256"}, "does not fit"),
        (_pem(ec_key), {"alg": "HS256"}, "ES256, RS256 or PS256"),
        (_pem(ec_key), {"kid": "bad kid"}, "kid"),
    ]
    for pem, options, message in cases:
        with pytest.raises(SecretStoreError, match=message) as refused:
            OAuthClientKey.from_pem(CLIENT_ID, pem, **options)
        assert _body(pem)[:40] not in str(refused.value.detail) + str(refused.value.hint)
    with pytest.raises(SecretStoreError, match="client_id"):
        OAuthClientKey.from_pem("bad\nclient", _pem(ec_key))
    with pytest.raises(SecretStoreError, match="oauth_client_key"):
        store.put("crm", SecretKind.OAUTH_CLIENT_KEY, OAuthClientSecret(CLIENT_ID, Secret("s")))
    with pytest.raises(SecretStoreError, match="does not fit"):  # not from_pem: checked too
        OAuthClientKey(CLIENT_ID, Secret(_pem(rsa_key).decode()), "ES256")
    assert store.all() == []


def test_the_secret_kind_must_fit_the_auth_method(
    store: SecretStore, ec_key: ec.EllipticCurvePrivateKey, endpoint: KeyJwtEndpoint
) -> None:
    store.put("crm", SecretKind.OAUTH_CLIENT_KEY, OAuthClientKey.from_pem(CLIENT_ID, _pem(ec_key)))
    store.put("basic", SecretKind.OAUTH_CLIENT, OAuthClientSecret(CLIENT_ID, Secret("cs")))
    broker = CredentialBroker(store)
    basic = OAuthClientCredentials("crm", endpoint.url, allow_private_network=True)
    with pytest.raises(SecretStoreError, match="expects oauth_client ") as refused:
        broker.headers_for(basic)
    assert "private_key_jwt" in str(refused.value.hint)
    keyed = OAuthClientCredentials(
        "basic", endpoint.url, auth_method="private_key_jwt", allow_private_network=True
    )
    with pytest.raises(SecretStoreError, match="expects oauth_client_key"):
        broker.headers_for(keyed)
    with pytest.raises(SecretStoreError, match="expects an api_key"):
        broker.headers_for(ApiKeyInjection("crm"))
    assert endpoint.requests == []  # nothing was sent with the wrong kind


def test_private_key_jwt_in_configuration() -> None:
    ref = credential_ref_from_config(
        {"secret": "crm", "token_endpoint": "https://auth.example/token",
         "auth_method": "private_key_jwt"}
    )  # fmt: skip
    assert isinstance(ref, OAuthClientCredentials)
    assert (ref.auth_method, ref.kind) == ("private_key_jwt", SecretKind.OAUTH_CLIENT_KEY)
    with pytest.raises(ValueError, match="auth_method"):
        credential_ref_from_config(
            {"secret": "crm", "token_endpoint": "https://auth.example/token",
             "auth_method": "tls_client_auth"}
        )  # fmt: skip


def test_one_implementation_signs_for_the_sdk_and_the_broker() -> None:
    """The SDK's client assertion is the core's: same header and claims shape."""
    key = AgentKey.generate()
    token = client_assertion(key, client_id="agt_1", audience="https://iam.example", now=1000)
    made = sign_client_assertion(
        key.key, alg="ES256", kid=key.kid, client_id="agt_1", audience="https://iam.example",
        now=1000,
    )  # fmt: skip
    one, two = jwt.decode(token, key.key, ["ES256"]), jwt.decode(made, key.key, ["ES256"])
    assert dict(one.header) == dict(two.header) == {"alg": "ES256", "kid": key.kid, "typ": "JWT"}
    drop = {"jti"}
    assert {k: v for k, v in one.claims.items() if k not in drop} == {
        k: v for k, v in two.claims.items() if k not in drop
    }
    with pytest.raises(ValueError, match="needs a RSA key"):
        sign_client_assertion(key.key, alg="PS256", kid=None, client_id="c", audience="a", now=1)
    with pytest.raises(ValueError, match="alg must be one of"):
        sign_client_assertion(key.key, alg="HS256", kid=None, client_id="c", audience="a", now=1)


def test_the_pem_is_parsed_once_on_put_and_once_per_unseal(
    store: SecretStore,
    ec_key: ec.EllipticCurvePrivateKey,
    endpoint: KeyJwtEndpoint,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Counted where PEM private keys are parsed (cryptography's loader, as the broker
    and joserfc call it): a put parses the key file once, each token fetch (which
    unseals the secret) once, and signing the assertion not at all: it uses the key
    loaded with the value. The broker keeps no opened value between fetches."""
    parses: list[int] = []
    real = serialization.load_pem_private_key

    def counting(data: bytes, *args: Any, **kwargs: Any) -> Any:
        parses.append(1)
        return real(data, *args, **kwargs)

    monkeypatch.setattr(serialization, "load_pem_private_key", counting)
    monkeypatch.setattr(joserfc_pem, "load_pem_private_key", counting)
    now = [0.0]
    value = OAuthClientKey.from_pem(CLIENT_ID, _pem(ec_key, traditional=True), kid="k-1")
    store.put("crm", SecretKind.OAUTH_CLIENT_KEY, value)
    assert len(parses) == 1
    assert value.signing_key() is value.signing_key()  # loaded once, kept with the value
    broker = CredentialBroker(store, clock=lambda: now[0])
    assert broker.headers_for(_ref(endpoint.url))[0] == {"Authorization": "Bearer kjwt-at-1"}
    assert len(parses) == 2  # the unseal; the assertion was signed without a parse
    now[0] = 300.0  # the token is near its end: a new fetch, a new unseal
    assert broker.headers_for(_ref(endpoint.url))[0] == {"Authorization": "Bearer kjwt-at-2"}
    assert len(parses) == 3
    assert endpoint.refusals == []


ISSUER = "https://as.crm.example"


def test_the_assertion_audience_can_be_the_issuer(
    store: SecretStore, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    """An authorization server that accepts only its issuer identifier as ``aud``
    (RFC 7523 section 3 point 3): with ``assertion_audience`` the broker's assertion
    carries it and the live endpoint accepts it; without, the same server refuses."""
    store.put("crm", SecretKind.OAUTH_CLIENT_KEY, OAuthClientKey.from_pem(CLIENT_ID, _pem(ec_key)))
    with serve(KeyJwtEndpoint(CLIENT_ID, _public(ec_key), "ES256", audience=ISSUER)) as endpoint:
        ref = credential_ref_from_config(
            {"secret": "crm", "token_endpoint": endpoint.url, "auth_method": "private_key_jwt",
             "allow_private_network": True, "assertion_audience": ISSUER}
        )  # fmt: skip
        assert CredentialBroker(store).headers_for(ref)[0] == {"Authorization": "Bearer kjwt-at-1"}
        assert endpoint.refusals == []
        assert endpoint.assertions[0][1]["aud"] == ISSUER
        with pytest.raises(TokenEndpointError, match="invalid_client"):
            CredentialBroker(store).headers_for(_ref(endpoint.url))  # the default aud
        assert endpoint.refusals == [f"aud {endpoint.url!r} is not this endpoint"]


def test_the_token_endpoint_as_the_assertion_audience_is_the_default(
    store: SecretStore, ec_key: ec.EllipticCurvePrivateKey, endpoint: KeyJwtEndpoint
) -> None:
    """Given explicitly, the token endpoint (here an http URL on the loopback, which
    only the token endpoint itself may be) is what the default sends."""
    store.put(
        "crm",
        SecretKind.OAUTH_CLIENT_KEY,
        OAuthClientKey.from_pem(CLIENT_ID, _pem(ec_key), kid="k-1"),
    )
    ref = _ref(endpoint.url, assertion_audience=endpoint.url)
    assert CredentialBroker(store).headers_for(ref)[0] == {"Authorization": "Bearer kjwt-at-1"}
    assert endpoint.assertions[0][1]["aud"] == endpoint.url
    assert endpoint.refusals == []


@pytest.mark.parametrize(
    ("audience", "message"),
    [
        ("http://as.crm.example", "https URL"),  # not https, and not the token endpoint
        ("https://as.crm.example/?tenant=1", "https URL"),  # RFC 8414: no query
        ("https://as.crm.example/#x", "https URL"),  # no fragment
        ("https://user@as.crm.example", "https URL"),  # no user information
        ("https://", "https URL"),  # no host
        ("https://as.crm.example:99999", "https URL"),  # not a port
        ("https://as.crm.example/a b", "https URL"),  # space
        ("https://as.crm.exämple", "https URL"),  # not ASCII
        ("as.crm.example", "https URL"),  # not a URL
        ("", "at most 2048"),
        ("https://as.crm.example/" + "a" * 2048, "at most 2048"),
    ],
)
def test_an_assertion_audience_that_is_no_issuer_is_refused_at_start(
    audience: str, message: str
) -> None:
    config = {"secret": "crm", "token_endpoint": "https://auth.crm.example/oauth/token",
              "auth_method": "private_key_jwt", "assertion_audience": audience}  # fmt: skip
    with pytest.raises(ValueError, match=message):
        credential_ref_from_config(config)


def test_an_assertion_audience_needs_private_key_jwt() -> None:
    """With a client secret there is no assertion: the option would be ignored."""
    with pytest.raises(ValueError, match="private_key_jwt only"):
        credential_ref_from_config(
            {"secret": "crm", "token_endpoint": "https://auth.crm.example/oauth/token",
             "assertion_audience": ISSUER}
        )  # fmt: skip
    ref = credential_ref_from_config(
        {"secret": "crm", "token_endpoint": "https://auth.crm.example/oauth/token",
         "auth_method": "private_key_jwt", "assertion_audience": ISSUER + "/tenant/1"}
    )  # fmt: skip
    assert isinstance(ref, OAuthClientCredentials)
    assert ref.assertion_audience == ISSUER + "/tenant/1"
