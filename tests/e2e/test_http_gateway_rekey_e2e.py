"""The gateway secret store's key rotated under a running HTTP gateway (real
processes: the control plane, the gateway, the echo upstream, and a token endpoint
that verifies the client assertion with joserfc), with the world of
``test_http_gateway_e2e``.

An ``oauth_client_key`` secret with its certificate (``--certificate-file --x5t``)
authenticates the gateway to the token endpoint by ``private_key_jwt`` with
``assertion_audience`` set to the authorization server's issuer, which is the only
``aud`` that endpoint accepts. Then ``gateway secrets rekey`` seals the store under a
new key: the gateway still running with the old key refuses the brokered call (502,
never forwarded); restarted with the new key it serves it again, with a new token
fetched with the same sealed key and certificate; started with the old key it does
not start, with an error naming the two key ids and no key material."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from joserfc.jwk import ECKey
from tests.e2e.test_http_gateway_e2e import (
    World,
    _fresh_call,
    _gateway_config,
    _header,
    _running,
    world,
)
from tests.e2e.test_quickstart import AGENTIAM, cli
from tests.support.token_endpoint import KeyJwtEndpoint, serve

from agentiam.core.credentials.sealing import MasterKey

__all__ = ["world"]  # the fixture, imported from the module that builds it

pytestmark = pytest.mark.e2e

ISSUER = "https://auth.billing.example"
CLIENT_ID = "billing-client"


def _b64(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _client_files(tmp: Path) -> tuple[ECKey, str, dict[str, str]]:
    """A private key and a self-signed certificate for it, written to ``tmp``; the
    public JWK, the private PEM's body (which must never show) and the certificate's
    thumbprints (x5t#S256, x5t) computed here."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())  # fmt: skip
    (tmp / "client.pem").write_bytes(pem)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CLIENT_ID)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    (tmp / "client.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    der = cert.public_bytes(serialization.Encoding.DER)
    prints = {"x5t#S256": _b64(hashlib.sha256(der).digest()),
              "x5t": _b64(hashlib.sha1(der).digest())}  # noqa: S324  # fmt: skip
    body = "".join(line for line in pem.decode().splitlines() if "-----" not in line)
    return ECKey.import_key(key.public_key()), body, prints


def test_a_rekey_under_a_running_gateway(world: World, tmp_path: Path) -> None:
    public, body, prints = _client_files(tmp_path)
    old_text, new_text = MasterKey.generate_text(), MasterKey.generate_text()
    old, new = MasterKey.from_text(old_text), MasterKey.from_text(new_text)
    old_file, new_file = tmp_path / "old.key", tmp_path / "new.key"
    old_file.write_text(old_text + "\n")
    new_file.write_text(new_text + "\n")
    base = {k: v for k, v in world.gw_env.items() if k != "AGENTIAM_GATEWAY_SECRETS_KEY"}
    old_env = {**base, "AGENTIAM_GATEWAY_SECRETS_KEY_FILE": str(old_file)}
    new_env = {**base, "AGENTIAM_GATEWAY_SECRETS_KEY_FILE": str(new_file)}
    store = tmp_path / "rekey-secrets.json"
    cli(old_env, "gateway", "secrets", "put", "billing-rekey", "--kind", "oauth_client_key",
        "--client-id", CLIENT_ID, "--private-key-file", str(tmp_path / "client.pem"),
        "--certificate-file", str(tmp_path / "client.crt"), "--x5t",
        "--store", str(store))  # fmt: skip

    with serve(KeyJwtEndpoint(CLIENT_ID, public, "ES256", audience=ISSUER)) as endpoint:
        credential = {"secret": "billing-rekey", "auth_method": "private_key_jwt",
                      "token_endpoint": endpoint.url, "assertion_audience": ISSUER,
                      "allow_private_network": True}  # fmt: skip
        file = _gateway_config(
            world, tmp_path, "billing-rekey", store,
            {"billing": {"url": world.up_url, "credential": credential}},
            routes=[world.gw_config["routes"][0]],  # GET /v1/invoices/{id}
        )  # fmt: skip
        with _running(world, tmp_path, file, old_env) as url:
            served = _fresh_call(world, url, "/v1/invoices/1")
            assert served.status_code == 200, served.text
            assert _header(world.seen()[-1], "authorization") == ["Bearer kjwt-at-1"]
            assert endpoint.refusals == []
            [(header, claims)] = endpoint.assertions
            assert header == {"alg": "ES256", "typ": "JWT", **prints}
            assert claims["aud"] == ISSUER

            done = cli(old_env, "gateway", "secrets", "rekey", "--new-key-file",
                       str(new_file), "--store", str(store))  # fmt: skip
            assert new.id in done.stdout

            # Still on the old key: once it re-reads the store (at most every second),
            # the store no longer opens and the call is refused (fail closed) though
            # a token is cached, and never forwarded.
            deadline = time.monotonic() + 10
            while True:
                before = len(world.seen())
                refused = _fresh_call(world, url, "/v1/invoices/2")
                if refused.status_code != 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert refused.status_code == 502, refused.text
            assert refused.json()["type"].endswith("upstream-credential")
            assert len(world.seen()) == before

        with _running(world, tmp_path, file, new_env) as url:
            served = _fresh_call(world, url, "/v1/invoices/3")
            assert served.status_code == 200, served.text
            assert _header(world.seen()[-1], "authorization") == ["Bearer kjwt-at-2"]
            assert endpoint.refusals == []
            assert endpoint.assertions[1][0] == {"alg": "ES256", "typ": "JWT", **prints}

        started = subprocess.run(
            [AGENTIAM, "gateway", "http", "--config", str(file)],
            env=old_env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert len(endpoint.requests) == 2  # the refused start fetched nothing
    assert started.returncode != 0
    output = " ".join((started.stdout + started.stderr).split())
    assert "the gateway secret store does not open" in output
    assert f"sealed under key {new.id}, but the configured key is {old.id}" in output
    assert "Traceback" not in output
    log = (tmp_path / "billing-rekey.log").read_text()
    for shown in (output, log):
        for material in (old_text, new_text, body[:40]):
            assert material not in shown
