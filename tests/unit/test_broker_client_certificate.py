"""An ``oauth_client_key`` secret with its X.509 certificate (``secrets put
--certificate-file``): the client assertion's header names the certificate by
``x5t#S256`` (RFC 7515 section 4.1.8) and, only when the secret asks for it (``--x5t``,
Microsoft Entra ID), by its SHA-1 ``x5t`` (section 4.1.7), as the live token endpoint
receives them. A certificate for another key, one that is not a certificate, or
``x5t`` without a certificate is refused when the secret is made; the certificate is
sealed with the secret (the store file does not show it)."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from joserfc.jwk import ECKey, RSAKey
from tests.support.token_endpoint import KeyJwtEndpoint, serve
from typer.testing import CliRunner

from agentiam.adapters.gateway.broker import (
    KEY_ENV,
    CredentialBroker,
    OAuthClientCredentials,
    OAuthClientKey,
    Secret,
    SecretKind,
    SecretStore,
    SecretStoreError,
)
from agentiam.cli.main import app
from agentiam.core.credentials.sealing import MasterKey

CLIENT_ID = "gw-cert-client"
Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _pem(key: Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _certificate(key: Key) -> x509.Certificate:
    """A self-signed certificate for ``key`` (what a client registers with Entra ID)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CLIENT_ID)])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )


def _cert_pem(key: Key) -> bytes:
    return _certificate(key).public_bytes(serialization.Encoding.PEM)


def _b64(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _prints(cert_pem: bytes) -> tuple[str, str]:
    """The certificate's SHA-256 and SHA-1 thumbprints, computed here independently."""
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return _b64(hashlib.sha256(der).digest()), _b64(hashlib.sha1(der).digest())  # noqa: S324


def _public(key: Key) -> ECKey | RSAKey:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return ECKey.import_key(key.public_key())
    return RSAKey.import_key(key.public_key())


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def key_text() -> str:
    return MasterKey.generate_text()


@pytest.fixture
def store(tmp_path: Path, key_text: str) -> SecretStore:
    return SecretStore(tmp_path / "store.json", MasterKey.from_text(key_text), reload_interval=0.0)


def _header(store: SecretStore, key: Key, alg: str) -> dict[str, object]:
    """The header of the assertion the broker sends, as the live endpoint saw it."""
    with serve(KeyJwtEndpoint(CLIENT_ID, _public(key), alg)) as endpoint:
        ref = OAuthClientCredentials(
            "crm", endpoint.url, auth_method="private_key_jwt", allow_private_network=True
        )
        assert CredentialBroker(store).headers_for(ref)[0] == {"Authorization": "Bearer kjwt-at-1"}
        assert endpoint.refusals == []
    return endpoint.assertions[0][0]


def test_the_assertion_names_the_certificate_by_x5t_s256_only(
    store: SecretStore, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    cert = _cert_pem(ec_key)
    value = OAuthClientKey.from_pem(CLIENT_ID, _pem(ec_key), certificate=cert)
    store.put("crm", SecretKind.OAUTH_CLIENT_KEY, value)
    s256, _ = _prints(cert)
    assert _header(store, ec_key, "ES256") == {"alg": "ES256", "typ": "JWT", "x5t#S256": s256}
    # sealed with the secret: the file holds neither the certificate nor its prints
    text = store.path.read_text()
    assert cert.decode().splitlines()[1] not in text
    assert s256 not in text


@pytest.mark.parametrize("alg", ["RS256", "PS256"])
def test_x5t_is_sent_too_when_the_secret_asks_for_it(
    store: SecretStore, rsa_key: rsa.RSAPrivateKey, alg: str
) -> None:
    """Microsoft Entra ID's certificate credentials: RSA, and the SHA-1 x5t."""
    cert = _cert_pem(rsa_key)
    chain = cert + _cert_pem(ec.generate_private_key(ec.SECP256R1()))  # the leaf first
    value = OAuthClientKey.from_pem(
        CLIENT_ID, _pem(rsa_key), alg=alg, kid="k-9", certificate=chain, x5t=True
    )
    store.put("crm", SecretKind.OAUTH_CLIENT_KEY, value)
    s256, sha1 = _prints(cert)
    assert _header(store, rsa_key, alg) == {
        "alg": alg, "typ": "JWT", "kid": "k-9", "x5t#S256": s256, "x5t": sha1
    }  # fmt: skip


def test_a_secret_without_a_certificate_sends_no_thumbprint(
    store: SecretStore, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    store.put("crm", SecretKind.OAUTH_CLIENT_KEY, OAuthClientKey.from_pem(CLIENT_ID, _pem(ec_key)))
    assert _header(store, ec_key, "ES256") == {"alg": "ES256", "typ": "JWT"}


def test_a_certificate_that_does_not_fit_is_refused_when_the_secret_is_made(
    store: SecretStore, ec_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    pem = _pem(ec_key)
    other = _cert_pem(ec.generate_private_key(ec.SECP256R1()))
    cases: list[tuple[bytes | None, bool, str]] = [
        (other, False, "not for this private key"),  # another key's certificate
        (_cert_pem(rsa_key), False, "not for this private key"),  # another key type
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", False, "PEM"),
        (pem, False, "not a PEM certificate"),  # the private key given as the certificate
        ("caf\u00e9".encode(), False, "not a PEM certificate"),
        (None, True, "x5t needs the certificate"),
    ]
    for cert, x5t, message in cases:
        with pytest.raises(SecretStoreError, match=message) as refused:
            OAuthClientKey.from_pem(CLIENT_ID, pem, certificate=cert, x5t=x5t)
        shown = str(refused.value.detail) + str(refused.value.hint)
        assert pem.decode().splitlines()[1] not in shown
    with pytest.raises(SecretStoreError, match="not for this private key"):  # not from_pem
        OAuthClientKey(CLIENT_ID, Secret(pem.decode()), "ES256", certificate=other.decode())
    assert store.all() == []


def test_the_cli_seals_the_certificate_and_refuses_a_wrong_one(
    key_text: str, tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    key_file, cert_file, wrong_file = (tmp_path / n for n in ("k.pem", "c.pem", "w.pem"))
    key_file.write_bytes(_pem(ec_key))
    cert_file.write_bytes(_cert_pem(ec_key))
    wrong_file.write_bytes(_cert_pem(ec.generate_private_key(ec.SECP256R1())))
    store_path = tmp_path / "store.json"
    runner = CliRunner()
    env = {KEY_ENV: key_text, "AGENTIAM_GATEWAY_SECRETS_FILE": str(store_path)}
    base = ["gateway", "secrets", "put", "crm", "--kind", "oauth_client_key",
            "--client-id", CLIENT_ID, "--private-key-file", str(key_file)]  # fmt: skip

    refused = runner.invoke(app, [*base, "--certificate-file", str(wrong_file)], env=env)
    assert refused.exit_code == 1
    assert "not for this private key" in " ".join(refused.output.split())
    refused = runner.invoke(app, [*base, "--x5t"], env=env)
    assert refused.exit_code == 1
    assert "x5t needs the certificate" in " ".join(refused.output.split())
    assert not store_path.exists()

    done = runner.invoke(
        app, [*base, "--certificate-file", str(cert_file), "--x5t", "--json"], env=env
    )
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["version"] == 1
    _, value = SecretStore(store_path, MasterKey.from_text(key_text)).get("crm")
    assert isinstance(value, OAuthClientKey)
    assert (value.certificate, value.x5t) == (cert_file.read_text(), True)
    assert dict(value.thumbprints()) == dict(
        zip(("x5t#S256", "x5t"), _prints(cert_file.read_bytes()), strict=True)
    )
    wrong_kind = runner.invoke(
        app,
        ["gateway", "secrets", "put", "gh", "--kind", "api_key", "--certificate-file",
         str(cert_file)],
        env=env,
        input="sk-x",
    )  # fmt: skip
    assert wrong_kind.exit_code == 1
    assert "for oauth_client_key" in " ".join(wrong_kind.output.split())
