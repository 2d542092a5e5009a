"""Fetching trusted issuers' JWK Sets over real sockets, and the SSRF defences on the way.

A plain ``http.server`` (and, for TLS, the same server behind a certificate issued by a
test CA) runs on 127.0.0.1 in a thread. Public-looking host names are mapped to
addresses by a fake resolver, so each refusal is about the *resolved address*, and the
successful fetches to names no real DNS knows (``*.example.test``, RFC 6761) prove the
connection went to the address that was vetted, not to a second lookup.

References: RFC 7517 (JWK Set), RFC 8693 (token exchange), RFC 8725 (JWT BCP), RFC 6890
(special-purpose addresses), OIDC Core section 10.1.1 (key rotation).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from tests.support.network import FakeResolver, Handler, resolver_for, serve_http
from tests.support.tls import ServerPki, server_context, server_pki

from agentiam.adapters.jwks import ExternalTokenVerifier, JwksCache, JwksUnavailable
from agentiam.adapters.outbound import (
    OutboundFailed,
    OutboundRefused,
    fetch_json,
    vet_url,
)
from agentiam.core.credentials.jose import JoseRejected
from agentiam.core.delegation.issuers import TrustedIssuer

PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"

# -- a real HTTP server ----------------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"{}"
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    content_length: bool = True
    delay: float = 0.0  # before the status line
    trickle: float | None = None  # seconds between body bytes
    raw: bytes | None = None  # a whole response written as is (trickled if ``trickle``)


@dataclass
class Seen:
    path: str
    host: str | None
    peer: str
    accept_encoding: str | None


class Server:
    """``routes`` maps a path to the :class:`Reply` served; ``log`` records requests."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, Reply] = {}
        self.log: list[Seen] = []
        self.stop = threading.Event()
        server = self

        class Serving(Handler):
            protocol_version = "HTTP/1.0"  # close-delimited bodies when there is no length

            def do_GET(self) -> None:
                server.log.append(
                    Seen(
                        self.path,
                        self.headers.get("Host"),
                        self.client_address[0],
                        self.headers.get("Accept-Encoding"),
                    )
                )
                reply = server.routes.get(self.path, Reply(status=404, body=b"{}"))
                if server.stop.wait(reply.delay):
                    return
                try:
                    if reply.raw is not None:
                        for i in range(len(reply.raw)):
                            self.wfile.write(reply.raw[i : i + 1])
                            self.wfile.flush()
                            if server.stop.wait(reply.trickle or 0):
                                return
                        return
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    if reply.content_length:
                        self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    if reply.trickle is None:
                        self.wfile.write(reply.body)
                        return
                    for i in range(len(reply.body)):
                        self.wfile.write(reply.body[i : i + 1])
                        self.wfile.flush()
                        if server.stop.wait(reply.trickle):
                            return
                except OSError:
                    pass  # the client gave up, as it should

        self._handler = Serving
        self._tls = tls
        self._stack = contextlib.ExitStack()

    def paths(self) -> list[str]:
        return [seen.path for seen in self.log]

    def __enter__(self) -> Server:
        self.port = self._stack.enter_context(serve_http(self._handler, tls=self._tls, poll=0.02))
        self.url = f"{'https' if self._tls else 'http'}://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()  # handlers waiting out a delay or a trickle return now
        self._stack.close()


@pytest.fixture
def server() -> Iterator[Server]:
    with Server() as s:
        yield s


# -- keys ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_keys() -> dict[str, RSAKey]:
    return {"k1": RSAKey.generate_key(2048), "k2": RSAKey.generate_key(2048)}


def jwks_body(keys: dict[str, RSAKey], *kids: str) -> bytes:
    return json.dumps(
        {"keys": [dict(keys[kid].as_dict(private=False), kid=kid, use="sig") for kid in kids]}
    ).encode()


def jwks_reply(keys: dict[str, RSAKey], *kids: str) -> Reply:
    return Reply(body=jwks_body(keys, *kids), headers={"Content-Type": "application/jwk-set+json"})


# -- fetch_json against a live server --------------------------------------------------


def test_fetch_json_from_a_live_server(server: Server) -> None:
    server.routes["/jwks"] = Reply(body=b'{"keys": []}')
    assert fetch_json(f"{server.url}/jwks", allow_private_network=True, timeout=5) == {"keys": []}
    (seen,) = server.log
    assert seen.host == f"127.0.0.1:{server.port}"
    assert seen.accept_encoding == "identity"


def test_query_string_is_kept(server: Server) -> None:
    server.routes["/jwks?tenant=a%20b"] = Reply(body=b"[1]")
    assert fetch_json(f"{server.url}/jwks?tenant=a%20b", allow_private_network=True) == [1]


def test_the_vetted_address_is_the_one_connected_to(server: Server) -> None:
    """DNS rebinding: the first lookup answers 127.0.0.1 (vetted), every later one an
    address that would be refused. The fetch succeeds against the 127.0.0.1 server with
    the original Host header, and the name is looked up exactly once: nothing resolves
    it again between the check and the connection."""
    server.routes["/jwks"] = Reply(body=b'{"ok": true}')
    resolver = FakeResolver({"rebind.example.test": [["127.0.0.1"], ["10.66.66.66"]]})
    url = f"http://rebind.example.test:{server.port}/jwks"
    assert fetch_json(url, allow_private_network=True, resolver=resolver) == {"ok": True}
    assert resolver.calls == ["rebind.example.test"]
    (seen,) = server.log
    assert seen.host == f"rebind.example.test:{server.port}"
    assert seen.peer == "127.0.0.1"


def test_a_refused_address_moves_on_to_the_next_vetted_one(server: Server) -> None:
    """Only 127.0.0.1 listens: the first vetted address (::1) refuses the connection,
    the second one answers."""
    server.routes["/jwks"] = Reply(body=b'{"ok": true}')
    resolver = resolver_for("idp.example.test", "::1", "127.0.0.1")
    url = f"http://idp.example.test:{server.port}/jwks"
    assert fetch_json(url, allow_private_network=True, resolver=resolver) == {"ok": True}
    (seen,) = server.log
    assert seen.peer == "127.0.0.1"


def test_request_goes_to_the_vetted_ip_with_host_and_sni_of_the_name() -> None:
    """What the transport is handed: the IP literal in the URL, the name in ``Host``
    and in the ``sni_hostname`` extension used for TLS SNI and certificate checks."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"keys": []})

    resolver = FakeResolver({"idp.example.com": [[PUBLIC_V4], ["127.0.0.1"]]})
    result = fetch_json(
        "https://idp.example.com/.well-known/jwks.json",
        allow_private_network=False,
        resolver=resolver,
        transport=httpx.MockTransport(handler),
    )
    assert result == {"keys": []}
    (request,) = seen
    assert request.url.host == PUBLIC_V4
    assert request.url.raw_path == b"/.well-known/jwks.json"
    assert request.headers["Host"] == "idp.example.com"
    assert request.extensions["sni_hostname"] == "idp.example.com"
    assert resolver.calls == ["idp.example.com"]


def test_ipv6_vetted_address_is_bracketed() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[])

    fetch_json(
        "https://idp.example.com:8443/jwks",
        allow_private_network=False,
        resolver=resolver_for("idp.example.com", PUBLIC_V6),
        transport=httpx.MockTransport(handler),
    )
    assert seen[0].url.host == PUBLIC_V6
    assert seen[0].url.port == 8443
    assert seen[0].headers["Host"] == "idp.example.com:8443"


REFUSED = [
    ("127.0.0.1", "loopback"),
    ("127.8.9.10", "loopback"),
    ("::1", "loopback"),
    ("169.254.169.254", "link-local"),  # AWS, GCP, Azure metadata
    ("fd00:ec2::254", "unique local"),  # AWS IPv6 metadata
    ("fe80::1", "link-local"),
    ("10.1.2.3", "private"),
    ("172.16.5.4", "private"),
    ("192.168.1.1", "private"),
    ("fc00::1", "unique local"),
    ("100.64.0.1", "shared address space"),
    ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
    ("::ffff:169.254.169.254", "IPv4-mapped link-local"),
    ("::ffff:10.0.0.1", "IPv4-mapped private"),
    ("64:ff9b::a9fe:a9fe", "NAT64 link-local"),
    ("2002:7f00:1::1", "6to4 loopback"),
    ("::127.0.0.1", "IPv4-compatible"),
    ("0.0.0.0", "unspecified"),  # noqa: S104
    ("::", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("255.255.255.255", "broadcast"),
    ("240.0.0.1", "reserved"),
    ("198.18.0.1", "benchmarking"),
    ("192.0.2.1", "documentation"),
    ("2001:db8::1", "documentation"),
]


@pytest.mark.parametrize(("address", "why"), REFUSED)
def test_non_public_addresses_are_refused(server: Server, address: str, why: str) -> None:
    resolver = resolver_for("idp.example.com", address)
    with pytest.raises(OutboundRefused, match=why):
        vet_url("https://idp.example.com/jwks", allow_private_network=False, resolver=resolver)
    with pytest.raises(OutboundRefused, match=why):
        fetch_json(
            f"https://idp.example.com:{server.port}/jwks",
            allow_private_network=False,
            resolver=resolver,
        )
    assert server.log == []


def test_any_refused_address_refuses_the_url() -> None:
    """A name answering one public and one private address is refused outright, so an
    attacker cannot count on the connection picking the private one later."""
    resolver = resolver_for("idp.example.com", PUBLIC_V4, PUBLIC_V6, "127.0.0.1")
    with pytest.raises(OutboundRefused, match=r"127.0.0.1, loopback"):
        vet_url("https://idp.example.com/", allow_private_network=False, resolver=resolver)


def test_public_addresses_pass() -> None:
    resolver = resolver_for("idp.example.com", PUBLIC_V4, PUBLIC_V6, PUBLIC_V4)
    vetted = vet_url("https://idp.example.com/", allow_private_network=False, resolver=resolver)
    assert vetted == [ipaddress.ip_address(PUBLIC_V4), ipaddress.ip_address(PUBLIC_V6)]
    mapped = vet_url(
        "https://[::ffff:93.184.215.14]/", allow_private_network=False, resolver=resolver
    )
    assert mapped == [ipaddress.ip_address("::ffff:93.184.215.14")]


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/jwks",
        "https://[::1]/jwks",
        "https://localhost/jwks",
        "https://[::ffff:127.0.0.1]/jwks",
        "https://2130706433/jwks",  # 127.0.0.1 as one decimal number
        "https://0x7f.1/jwks",  # and in inet_aton's hex shorthand
        "https://169.254.169.254/latest/meta-data/",
    ],
)
def test_literal_and_local_hosts_are_refused(url: str) -> None:
    """With the real resolver: literals, ``localhost`` and inet_aton's odd forms."""
    with pytest.raises(OutboundRefused, match="resolves to"):
        vet_url(url, allow_private_network=False)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://idp.example.com/jwks", "only https"),
        ("ftp://idp.example.com/jwks", "only https"),
        ("file:///etc/passwd", "only https"),
        ("https://user:pass@idp.example.com/jwks", "user information"),
        ("https://@idp.example.com/jwks", "user information"),
        ("https:///jwks", "no host"),
        ("https://idp.example.com:0x50/", "malformed"),
        ("https://idp.exa mple.com/", "spaces or control"),
        ("https://idp.example.com/\r\nX-Injected: 1", "spaces or control"),
        ("https://bücher.example/", "ASCII"),
        ("https://[fe80::1%25eth0]/", "zone"),
    ],
)
def test_url_policy(url: str, why: str) -> None:
    resolver = resolver_for("idp.example.com", PUBLIC_V4)
    with pytest.raises(OutboundRefused, match=why):
        vet_url(url, allow_private_network=False, resolver=resolver)


def test_allow_private_network_still_refuses_non_unicast() -> None:
    for address in (
        "0.0.0.0",  # noqa: S104
        "::",
        "224.0.0.1",
        "ff02::1",
        "255.255.255.255",
    ):
        with pytest.raises(OutboundRefused):
            vet_url(
                "http://idp.example.test/",
                allow_private_network=True,
                resolver=resolver_for("idp.example.test", address),
            )
    assert vet_url(
        "http://idp.example.test/",
        allow_private_network=True,
        resolver=resolver_for("idp.example.test", "169.254.169.254", "10.0.0.1"),
    ) == [ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("10.0.0.1")]


def test_unresolvable_name_fails() -> None:
    with pytest.raises(OutboundFailed, match="cannot resolve"):
        vet_url(
            "https://nowhere.example.test/", allow_private_network=False, resolver=FakeResolver({})
        )


def test_redirect_is_not_followed(server: Server) -> None:
    server.routes["/jwks"] = Reply(status=302, headers={"Location": "/elsewhere"}, body=b"")
    server.routes["/elsewhere"] = Reply(body=b"{}")
    with pytest.raises(OutboundRefused, match=r"redirect \(302\) not followed"):
        fetch_json(f"{server.url}/jwks", allow_private_network=True)
    assert server.paths() == ["/jwks"]


def test_oversized_body_is_refused(server: Server) -> None:
    big = json.dumps({"keys": ["x" * 5000]}).encode()
    server.routes["/declared"] = Reply(body=big)
    server.routes["/streamed"] = Reply(body=big, content_length=False)
    with pytest.raises(OutboundRefused, match="exceeds the 4096-byte cap"):
        fetch_json(f"{server.url}/declared", allow_private_network=True, max_bytes=4096)
    with pytest.raises(OutboundRefused, match="exceeds the 4096-byte cap"):
        fetch_json(f"{server.url}/streamed", allow_private_network=True, max_bytes=4096)
    assert fetch_json(f"{server.url}/streamed", allow_private_network=True, max_bytes=len(big))


def test_slow_server_times_out(server: Server) -> None:
    server.routes["/stall"] = Reply(delay=5)
    start = time.monotonic()
    with pytest.raises(OutboundFailed, match="timed out"):
        fetch_json(f"{server.url}/stall", allow_private_network=True, timeout=0.5)
    assert time.monotonic() - start < 2


def test_trickling_server_is_bounded_by_one_deadline(server: Server) -> None:
    """One byte every 50 ms never trips a per-read timeout; the total deadline does."""
    server.routes["/trickle"] = Reply(body=b'{"k": "' + b"x" * 500 + b'"}', trickle=0.05)
    start = time.monotonic()
    with pytest.raises(OutboundFailed, match="timed out"):
        fetch_json(f"{server.url}/trickle", allow_private_network=True, timeout=0.6)
    assert time.monotonic() - start < 1.5


def test_trickled_headers_are_bounded_by_the_deadline(server: Server) -> None:
    """Slowloris on the status line and headers, before any body byte: only the
    deadline applied to every socket read can stop it."""
    head = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n" + b"X-Pad: y\r\n" * 40
    server.routes["/slow-head"] = Reply(raw=head + b"\r\n{}", trickle=0.02)
    start = time.monotonic()
    with pytest.raises(OutboundFailed, match="timed out"):
        fetch_json(f"{server.url}/slow-head", allow_private_network=True, timeout=0.5)
    assert time.monotonic() - start < 1.2


@pytest.mark.parametrize(
    ("content_type", "accepted"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("Application/JSON", True),
        ("application/jwk-set+json", True),
        ("text/html", False),
        ("text/plain", False),
        ("application/javascript", False),
        ("application/json; charset=iso-8859-1", False),
        (None, False),
    ],
)
def test_json_content_type_is_required(
    server: Server, content_type: str | None, accepted: bool
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    server.routes["/doc"] = Reply(body=b'{"keys": []}', headers=headers)
    if accepted:
        assert fetch_json(f"{server.url}/doc", allow_private_network=True) == {"keys": []}
    else:
        with pytest.raises(OutboundRefused, match=r"not JSON|UTF-8"):
            fetch_json(f"{server.url}/doc", allow_private_network=True)


def test_compressed_body_is_refused(server: Server) -> None:
    server.routes["/gz"] = Reply(
        body=b"\x1f\x8b", headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
    )
    with pytest.raises(OutboundRefused, match="content encoding 'gzip'"):
        fetch_json(f"{server.url}/gz", allow_private_network=True)


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        (Reply(status=500), "HTTP status 500"),
        (Reply(status=404), "HTTP status 404"),
        (Reply(body=b"{not json"), "not valid JSON"),
        (Reply(body=b'{"a": 1, "a": 2}'), "duplicate member"),
        (Reply(body=b'"\xff"'), "not valid JSON"),
    ],
)
def test_failures(server: Server, reply: Reply, why: str) -> None:
    server.routes["/doc"] = reply
    with pytest.raises(OutboundFailed, match=why):
        fetch_json(f"{server.url}/doc", allow_private_network=True)


def test_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(OutboundFailed, match="cannot connect"):
            fetch_json(f"http://127.0.0.1:{port}/", allow_private_network=True, timeout=2)


# -- TLS: SNI and certificate checks use the name, the socket the vetted IP ------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ServerPki:
    return server_pki(tmp_path_factory.mktemp("pki"), "idp.example.test")


def test_tls_uses_the_host_name_for_sni_and_certificate(pki: ServerPki) -> None:
    tls = server_context((pki.cert_file, pki.key_file))
    sni: list[str | None] = []

    def record_sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        sni.append(name)

    tls.sni_callback = record_sni
    client_context = ssl.create_default_context(cafile=str(pki.ca_file))
    resolver = FakeResolver(
        {"idp.example.test": [["127.0.0.1"]], "evil.example.test": [["127.0.0.1"]]}
    )
    with Server(tls=tls) as server:
        server.routes["/jwks"] = Reply(body=b'{"keys": []}')
        url = f"https://idp.example.test:{server.port}/jwks"
        result = fetch_json(
            url, allow_private_network=True, resolver=resolver, ssl_context=client_context
        )
        assert result == {"keys": []}
        assert sni == ["idp.example.test"]
        assert server.log[0].host == f"idp.example.test:{server.port}"
        # Same IP, same certificate, another name: the certificate does not match it.
        with pytest.raises(OutboundFailed, match=r"certificate|hostname"):
            fetch_json(
                f"https://evil.example.test:{server.port}/jwks",
                allow_private_network=True,
                resolver=resolver,
                ssl_context=client_context,
            )
        # And without the test CA the chain is not trusted at all.
        with pytest.raises(OutboundFailed, match="certificate"):
            fetch_json(url, allow_private_network=True, resolver=resolver)
        assert len(server.log) == 1


# -- JwksCache --------------------------------------------------------------------------


def issuer_for(server: Server, **overrides: Any) -> TrustedIssuer:
    fields: dict[str, Any] = {
        "issuer": "https://idp.example.com",
        "audiences": ("https://agentiam.example",),
        "jwks_uri": f"{server.url}/jwks",
        "allow_private_network": True,
    }
    fields.update(overrides)
    return TrustedIssuer(**fields)


def test_cache_fetches_once_and_refreshes_after_ttl(
    server: Server, rsa_keys: dict[str, RSAKey]
) -> None:
    server.routes["/jwks"] = jwks_reply(rsa_keys, "k1")
    issuer = issuer_for(server)
    cache = JwksCache(ttl=300, min_refetch_seconds=30)
    assert cache.keys_for(issuer, "k1", now=0).kids == {"k1"}
    assert cache.keys_for(issuer, "k1", now=299).kids == {"k1"}
    assert server.paths() == ["/jwks"]
    server.routes["/jwks"] = jwks_reply(rsa_keys, "k1", "k2")
    assert cache.keys_for(issuer, None, now=300).kids == {"k1", "k2"}
    assert server.paths() == ["/jwks", "/jwks"]
    assert cache.fetch_count(issuer) == 2


def test_unknown_kid_refetch_is_rate_limited(server: Server, rsa_keys: dict[str, RSAKey]) -> None:
    """A flood of tokens with made-up kids costs the IdP one request per 30 s."""
    server.routes["/jwks"] = jwks_reply(rsa_keys, "k1")
    issuer = issuer_for(server)
    cache = JwksCache(ttl=300, min_refetch_seconds=30)
    cache.keys_for(issuer, "k1", now=0)
    for i in range(600):  # 20 bogus kids a second for 30 s
        assert cache.keys_for(issuer, f"bogus-{i}", now=i / 20).kids == {"k1"}
    assert len(server.log) == 1
    cache.keys_for(issuer, "bogus-x", now=30)  # one refetch now allowed
    for i in range(100):
        cache.keys_for(issuer, f"bogus-y{i}", now=30 + i / 10)
    assert len(server.log) == 2
    # The IdP rotates in k2: the next allowed refetch picks it up.
    server.routes["/jwks"] = jwks_reply(rsa_keys, "k1", "k2")
    assert cache.keys_for(issuer, "k2", now=59).kids == {"k1"}
    assert cache.keys_for(issuer, "k2", now=60).kids == {"k1", "k2"}
    assert len(server.log) == 3
    cache.keys_for(issuer, "k2", now=61)  # known now: no fetch
    assert len(server.log) == 3


def test_concurrent_callers_share_one_fetch(server: Server, rsa_keys: dict[str, RSAKey]) -> None:
    server.routes["/jwks"] = Reply(
        body=jwks_body(rsa_keys, "k1"), headers={"Content-Type": "application/json"}, delay=0.2
    )
    issuer = issuer_for(server)
    cache = JwksCache()
    barrier = threading.Barrier(16)
    results: list[frozenset[str]] = []

    def worker(i: int) -> None:
        barrier.wait()
        results.append(cache.keys_for(issuer, f"kid-{i}", now=0).kids)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert results == [frozenset({"k1"})] * 16
    assert len(server.log) == 1


def test_last_good_set_is_kept_on_failure_until_max_age(
    server: Server, rsa_keys: dict[str, RSAKey]
) -> None:
    server.routes["/jwks"] = jwks_reply(rsa_keys, "k1")
    issuer = issuer_for(server)
    cache = JwksCache(ttl=300, min_refetch_seconds=30, max_age=3600)
    cache.keys_for(issuer, "k1", now=0)
    server.routes["/jwks"] = Reply(status=503)
    assert cache.keys_for(issuer, "k1", now=300).kids == {"k1"}  # refetch failed: kept
    assert cache.keys_for(issuer, "k1", now=310).kids == {"k1"}  # and no retry yet
    assert len(server.log) == 2
    # A broken document (private key material) is a failure too, not a new key set.
    leaked = dict(rsa_keys["k1"].as_dict(private=True), kid="k1")
    server.routes["/jwks"] = Reply(body=json.dumps({"keys": [leaked]}).encode())
    assert cache.keys_for(issuer, "k1", now=330).kids == {"k1"}
    assert len(server.log) == 3
    server.routes["/jwks"] = Reply(status=500)
    assert cache.keys_for(issuer, "k1", now=3600).kids == {"k1"}
    with pytest.raises(JwksUnavailable, match=r"older than 3600 s.*HTTP status 500"):
        cache.keys_for(issuer, "k1", now=3600.5)
    # The IdP comes back: the next allowed attempt restores service.
    server.routes["/jwks"] = jwks_reply(rsa_keys, "k2")
    assert cache.keys_for(issuer, "k2", now=3631).kids == {"k2"}


def test_first_fetch_failure_fails_closed(server: Server, rsa_keys: dict[str, RSAKey]) -> None:
    server.routes["/jwks"] = Reply(status=500)
    issuer = issuer_for(server)
    cache = JwksCache()
    with pytest.raises(JwksUnavailable, match=r"no key set .* yet: HTTP status 500"):
        cache.keys_for(issuer, "k1", now=0)
    server.routes["/jwks"] = jwks_reply(rsa_keys, "k1")
    with pytest.raises(JwksUnavailable):
        cache.keys_for(issuer, "k1", now=10)  # rate limited, even for the first set
    assert cache.keys_for(issuer, "k1", now=30).kids == {"k1"}
    assert len(server.log) == 2


def test_cache_vets_the_jwks_uri(server: Server) -> None:
    """An issuer's jwks_uri pointing (via DNS) at the metadata service is never fetched."""
    issuer = TrustedIssuer(
        issuer="https://idp.example.com",
        audiences=("https://agentiam.example",),
        jwks_uri=f"https://idp.example.com:{server.port}/jwks",
    )
    cache = JwksCache(resolver=resolver_for("idp.example.com", "169.254.169.254"))
    with pytest.raises(JwksUnavailable, match=r"169.254.169.254, link-local"):
        cache.keys_for(issuer, "k1", now=0)
    assert server.log == []


def test_static_jwks_is_used_as_is(rsa_keys: dict[str, RSAKey]) -> None:
    issuer = TrustedIssuer(
        issuer="https://idp.example.com",
        audiences=("x",),
        jwks=json.loads(jwks_body(rsa_keys, "k1")),
    )
    assert JwksCache().keys_for(issuer, "unknown", now=0) is issuer.static_keys


# -- ExternalTokenVerifier ---------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.value = 0.0

    def __call__(self) -> float:
        return self.value


def subject_token(key: RSAKey, kid: str, *, iss: str = "https://idp.example.com") -> str:
    now = int(time.time())
    claims = {
        "iss": iss,
        "aud": "https://agentiam.example",
        "sub": "00u1human",
        "iat": now,
        "exp": now + 300,
        "may_act": {"sub": "agent_0123456789"},
    }
    return jwt.encode({"alg": "RS256", "kid": kid}, claims, key, algorithms=["RS256"])


def test_verifier_end_to_end_with_key_rotation(server: Server, rsa_keys: dict[str, RSAKey]) -> None:
    server.routes["/jwks"] = jwks_reply(rsa_keys, "k1")
    issuer = issuer_for(server)
    clock = Clock()
    verifier = ExternalTokenVerifier([issuer], JwksCache(), monotonic=clock)
    now = int(time.time())

    trusted, subject = verifier.verify(subject_token(rsa_keys["k1"], "k1"), now=now)
    assert trusted is issuer
    assert (subject.issuer, subject.subject) == ("https://idp.example.com", "00u1human")
    assert subject.may_act == {"sub": "agent_0123456789"}

    # The IdP starts signing with k2 before we have seen it: refused until a refetch
    # is allowed, then accepted.
    server.routes["/jwks"] = jwks_reply(rsa_keys, "k1", "k2")
    rotated = subject_token(rsa_keys["k2"], "k2")
    clock.value = 10
    with pytest.raises(JoseRejected, match="no RS256 key with this kid"):
        verifier.verify(rotated, now=now)
    clock.value = 30
    assert verifier.verify(rotated, now=now)[1].subject == "00u1human"
    assert len(server.log) == 2


def test_verifier_refuses_untrusted_and_malformed_tokens(
    server: Server, rsa_keys: dict[str, RSAKey]
) -> None:
    verifier = ExternalTokenVerifier([issuer_for(server)])
    now = int(time.time())
    with pytest.raises(JoseRejected, match="untrusted issuer"):
        verifier.verify(subject_token(rsa_keys["k1"], "k1", iss="https://evil.example"), now=now)
    with pytest.raises(JoseRejected, match="three segments"):
        verifier.verify("not-a-jwt", now=now)
    assert server.log == []  # nothing was fetched for them


def test_verifier_reports_unavailable_keys(server: Server, rsa_keys: dict[str, RSAKey]) -> None:
    server.routes["/jwks"] = Reply(status=502)
    verifier = ExternalTokenVerifier([issuer_for(server)])
    with pytest.raises(JwksUnavailable):
        verifier.verify(subject_token(rsa_keys["k1"], "k1"), now=int(time.time()))
