"""Upstream TLS of both gateways (``upstreams.<name>.tls`` and ``servers[i].tls``):
the upstream's certificate must chain to the configured CAs (else the system's) and
name the host; a client certificate is presented to upstreams that require one. Real
TLS servers on loopback ports, with a test CA; every refusal is tried."""

from __future__ import annotations

import asyncio
import copy
import ssl
from pathlib import Path
from typing import Any

import httpx2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tests.support.tls import CLIENT_AUTH, Authority, authority, server_context
from tests.unit.test_gateway_http import API_KEY, OK, App, Upstream, _config, _problem
from tests.unit.test_mcp_gateway_config import BASE

from agentiam.adapters.gateway import http_proxy, mcp_proxy, mcp_upstream
from agentiam.adapters.gateway.config import UpstreamTls
from agentiam.adapters.gateway.upstream_transport import UpstreamTransport


class Pki:
    """A private CA (not among the system's), the upstream's certificate for
    127.0.0.1, and a client certificate for the gateway."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca: Authority = authority(directory, "ca", "AgentIAM test upstream CA")
        self.server = self.ca.issue(directory, "upstream", ["127.0.0.1"])
        self.client = self.ca.issue(directory, "gateway", ["gateway"], usage=CLIENT_AUTH)

    def upstream(self, *, client_ca: bool = False, names: tuple[str, ...] = ()) -> Upstream:
        """A TLS upstream; ``client_ca``: it requires a certificate of this CA;
        ``names``: a certificate for these names instead of 127.0.0.1."""
        cert = self.ca.issue(self.directory, "other", list(names)) if names else self.server
        return Upstream(server_context(cert, client_ca=self.ca.file if client_ca else None))

    def tls(self, *, client: bool = False) -> dict[str, str]:
        """The ``tls`` key trusting this CA, with the client certificate if asked."""
        out = {"ca_file": str(self.ca.file)}
        if client:
            out |= {"cert_file": str(self.client[0]), "key_file": str(self.client[1])}
        return out


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def _failed(app: App) -> None:
    """The call was answered 502, recorded as a failed tool.call, and nothing reached
    the upstream's HTTP layer (the handshake failed first)."""
    _problem(app.request("GET", "/v1/invoices/7"), 502)
    outcome = app.events()[-1]
    assert (outcome["type"], outcome["outcome"]) == ("tool.call", "failure")
    assert outcome["details"]["status"] == 502
    assert app.upstream.requests == []
    assert API_KEY not in str(app.events())


# -- the HTTP gateway ----------------------------------------------------------------------


def test_an_upstream_whose_ca_is_not_trusted_is_refused(tmp_path: Path, pki: Pki) -> None:
    _failed(App(tmp_path, upstream=pki.upstream()))


def test_the_configured_ca_is_trusted(tmp_path: Path, pki: Pki) -> None:
    app = App(tmp_path, upstream=pki.upstream(), tls=pki.tls())
    r = app.request("GET", "/v1/invoices/7")
    assert r.status_code == 200, r.text
    [sent] = app.upstream.requests
    assert sent.header("x-api-key") == API_KEY
    assert app.upstream.client_certificates == [None]  # none asked, none sent


def test_a_certificate_for_another_name_is_refused(tmp_path: Path, pki: Pki) -> None:
    """The CA is trusted, but the certificate names another host: the name is checked."""
    _failed(App(tmp_path, upstream=pki.upstream(names=("billing.internal",)), tls=pki.tls()))


def test_an_upstream_requiring_a_client_certificate_gets_the_configured_one(
    tmp_path: Path, pki: Pki
) -> None:
    (tmp_path / "without").mkdir()
    without = App(tmp_path / "without", upstream=pki.upstream(client_ca=True), tls=pki.tls())
    _failed(without)
    app = App(tmp_path, upstream=pki.upstream(client_ca=True), tls=pki.tls(client=True))
    r = app.request("GET", "/v1/invoices/7")
    assert r.status_code == 200, r.text
    [cert] = app.upstream.client_certificates
    assert cert["subject"] == ((("commonName", "gateway"),),)


def test_a_client_certificate_of_another_ca_is_refused_by_the_upstream(
    tmp_path: Path, pki: Pki
) -> None:
    (tmp_path / "rogue").mkdir()
    rogue = authority(tmp_path / "rogue", "rogue", "Someone else's CA")
    cert, key = rogue.issue(tmp_path / "rogue", "gateway", ["gateway"], usage=CLIENT_AUTH)
    tls = pki.tls() | {"cert_file": str(cert), "key_file": str(key)}
    _failed(App(tmp_path, upstream=pki.upstream(client_ca=True), tls=tls))


# -- configuration -------------------------------------------------------------------------


def _http_config(tls: Any, url: str = "https://billing.internal/base") -> dict[str, Any]:
    config = _config()
    config["upstreams"]["billing"]["url"] = url
    config["upstreams"]["billing"]["tls"] = tls
    return config


def _encrypted_key(pki: Pki) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    path = pki.directory / "encrypted.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    return path


def test_upstream_tls_is_checked_at_start_naming_the_key(pki: Pki) -> None:
    """Every mistake stops the start with the key's path, never a file's contents."""
    where = "upstreams.billing.tls"
    not_pem = pki.directory / "not.pem"
    not_pem.write_text("SECRET-LOOKING CONTENT\n")
    cases: list[tuple[Any, str, str]] = [
        ({"ca_file": str(pki.ca.file)}, "http://billing.internal", "applies to an https URL"),
        ({"ca_file": str(pki.ca.file), "verify": False}, "", "unknown keys verify"),
        ({}, "", "give ca_file"),
        ("yes", "", "expected a mapping"),
        ({"ca_file": "relative/ca.pem"}, "", f"{where}.ca_file: an absolute path"),
        ({"ca_file": str(pki.directory / "missing.pem")}, "", "ca_file could not be read"),
        ({"ca_file": str(not_pem)}, "", "ca_file could not be read"),
        ({"key_file": str(pki.client[1])}, "", f"{where}.key_file: needs cert_file"),
        ({"cert_file": str(pki.client[0])}, "", "cert_file and key_file must hold"),
        ({"cert_file": str(pki.client[0]), "key_file": str(_encrypted_key(pki))}, "",
         "unencrypted"),
        ({"cert_file": str(pki.server[0]), "key_file": str(pki.client[1])}, "",
         "cert_file and key_file must hold"),
    ]  # fmt: skip
    for tls, url, message in cases:
        args = (tls, url) if url else (tls,)
        with pytest.raises(ValueError, match=r"^upstreams\.billing\.tls") as caught:
            http_proxy.load_config(_http_config(*args))
        assert message in str(caught.value), (tls, str(caught.value))
        assert "SECRET-LOOKING" not in str(caught.value)
        assert "PRIVATE KEY" not in str(caught.value)


def test_upstream_tls_loads_in_both_gateways(pki: Pki) -> None:
    http = http_proxy.load_config(_http_config(pki.tls(client=True)))
    expected = UpstreamTls(pki.ca.file, *pki.client)
    assert http.upstreams["billing"].tls == expected
    assert http.upstreams["plain"].tls is None
    data = copy.deepcopy(BASE)
    data["servers"][0]["tls"] = pki.tls(client=True)
    mcp = mcp_proxy.load_config(data)
    assert [s.tls for s in mcp.servers] == [expected, None]
    # the server's connections use that context (made once, reused by every session)
    bank = mcp_upstream.Upstream(mcp.servers[0], None, mcp.gateway.timeouts, 5.0)
    assert bank._ssl is not None
    trusted = [c["subject"] for c in bank._ssl.get_ca_certs()]
    assert trusted == [((("commonName", "AgentIAM test upstream CA"),),)]
    assert mcp_upstream.Upstream(mcp.servers[1], None, mcp.gateway.timeouts, 5.0)._ssl is None
    data["servers"][1]["tls"] = pki.tls()  # an http URL: nothing to apply it to
    with pytest.raises(ValueError, match=r"^servers\[1\]\.tls: applies to an https URL only"):
        mcp_proxy.load_config(data)
    data["servers"][1]["tls"] = None
    data["servers"][0]["tls"] = {"ca_file": str(pki.directory / "missing.pem")}
    with pytest.raises(ValueError, match=r"^servers\[0\]\.tls: ca_file could not be read"):
        mcp_proxy.load_config(data)


# -- the MCP gateway's transport -----------------------------------------------------------


def test_the_mcp_transport_presents_the_client_certificate(pki: Pki) -> None:
    """The MCP gateway's upstream transport with the context ``servers[i].tls`` makes:
    an upstream requiring a client certificate answers. Without one the upstream's
    alert comes after the client's side of a TLS 1.3 handshake ended (RFC 8446 section
    4.4.2.4), so it surfaces as the connection closed before an answer
    (RemoteProtocolError, which the SDK handles), and the request never reaches the
    upstream's HTTP layer."""
    upstream = pki.upstream(client_ca=True)
    upstream.reply = lambda _r: [OK]
    url = f"https://127.0.0.1:{upstream.port}/mcp"

    async def call(tls: UpstreamTls) -> httpx2.Response | Exception:
        transport = UpstreamTransport(
            url, connect_timeout=1.0, read_timeout=1.0, ssl_context=tls.client_context()
        )
        async with httpx2.AsyncClient(transport=transport) as client:
            try:
                return await client.post(url, content=b"{}")
            except httpx2.HTTPError as exc:
                return exc

    async def main() -> tuple[Any, Any]:
        server = await upstream.serve()
        assert server is not None
        try:
            refused = await call(UpstreamTls(pki.ca.file))
            answered = await call(UpstreamTls(pki.ca.file, *pki.client))
            return refused, answered
        finally:
            server.close()

    refused, answered = asyncio.run(main())
    assert isinstance(refused, httpx2.ConnectError | httpx2.RemoteProtocolError), refused
    assert isinstance(answered, httpx2.Response)
    assert answered.json() == {"ok": True}
    assert len(upstream.requests) == 1
    assert upstream.client_certificates[-1]["subject"] == ((("commonName", "gateway"),),)


def test_the_system_cas_are_used_without_a_configured_ca(pki: Pki) -> None:
    """No ``ca_file``: the context trusts what OpenSSL's default store holds, which the
    test CA is not in; the client certificate alone changes nothing about that."""
    context = UpstreamTls(None, *pki.client).client_context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    subjects = [c.get("subject") for c in context.get_ca_certs()]
    assert ((("commonName", "AgentIAM test upstream CA"),),) not in subjects
