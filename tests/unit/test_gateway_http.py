"""The HTTP gateway's own rules, in process: which paths it routes (and which it refuses
because a server could read them another way), which route a request takes, which
headers reach the upstream and the client, and, through the ASGI application with a
mock upstream, the status and audit event of every way a call can end."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httptools
import httpx
import pytest
from tests.conftest import REDIS_URL
from tests.support.live import free_port
from tests.unit.gateway_support import (
    AGENT,
    GATEWAY,
    ISSUER,
    METADATA,
    NoApprovals,
    Parties,
    QuietSink,
)

from agentiam.adapters.gateway.broker import (
    CredentialBroker,
    Secret,
    SecretKind,
    SecretStore,
)
from agentiam.adapters.gateway.enforcer import Pending
from agentiam.adapters.gateway.http_proxy import (
    HttpGateway,
    PathRejected,
    forwarded_header,
    load_config,
    request_headers_for_upstream,
    response_headers_for_client,
    split_path,
)
from agentiam.adapters.gateway.runtime import GatewayRuntime
from agentiam.adapters.gateway.shared_ratelimit import SharedRateLimits
from agentiam.adapters.gateway.shared_redis import SharedRedis
from agentiam.adapters.gateway.spool import SpoolHealth
from agentiam.core.approvals_wire import APPROVAL_HEADER
from agentiam.core.audit.events import TraceContext
from agentiam.core.credentials.sealing import MasterKey
from agentiam.core.enforcement import RateLimit, RateLimiter

ALLOW = f'permit (principal == Agent::"{AGENT}", action == Action::"GET", resource);'
API_KEY = "upstream-secret-value-0123456789"


def _config(**changes: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": "test-gw",
        "public_url": GATEWAY,
        "control_plane": {"url": ISSUER},
        "spool": {"directory": "/tmp/unused"},
        "secrets": {"store": "/tmp/unused.json"},
        "timeouts": {"connect": 1, "read": 0.5, "total": 5},
        "upstreams": {
            "billing": {
                "url": "http://billing.internal/base",
                "credential": {"secret": "billing-key", "header": "X-Api-Key"},
            },
            "plain": {"url": "http://plain.internal"},
        },
        "routes": [
            {"match": {"method": "GET", "path": "/v1/invoices/export"}, "upstream": "plain",
             "action": "GET", "resource": {"type": "Endpoint", "id": "export"}},
            {"match": {"method": "GET", "path": "/v1/invoices/{id}"}, "upstream": "billing",
             "action": "GET", "resource": {"type": "Endpoint", "id": "invoice-{id}"}},
            {"match": {"method": "GET", "path": "/v1/{kind}/{id}/lines"}, "upstream": "billing",
             "action": "GET", "resource": {"type": "Endpoint", "id": "{kind}:{id}"}},
            {"match": {"method": "DELETE", "path": "/v1/invoices/{id}"}, "upstream": "billing",
             "action": "DELETE", "resource": {"type": "Endpoint", "id": "invoice-{id}"}},
            {"match": {"method": "GET", "path": "/"}, "upstream": "plain",
             "action": "GET", "resource": {"type": "Api", "id": "root"}},
        ],
    }  # fmt: skip
    config.update(changes)
    return config


# -- paths --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "segments"),
    [
        (b"/", ("",)),
        (b"/v1/invoices/42", ("v1", "invoices", "42")),
        (b"/v1/invoices/", ("v1", "invoices", "")),
        (b"/v1/caf%C3%A9", ("v1", "café")),
        (b"/v1/a%20b", ("v1", "a b")),
        (b"/v1/...", ("v1", "...")),
        (b"/v1/.well", ("v1", ".well")),
    ],
)
def test_paths_that_are_routed(raw: bytes, segments: tuple[str, ...]) -> None:
    assert split_path(raw) == segments


@pytest.mark.parametrize(
    "raw",
    [
        b"/v1/../admin",
        b"/v1/./x",
        b"/v1/%2e%2e/admin",
        b"/v1/%2E/x",
        b"/v1/..;/admin",
        b"/v1/invoices/..%2Fadmin",
        b"/v1/invoices%2f42",
        b"/v1/a%5Cb",
        b"/v1\\admin",
        b"/v1//invoices",
        b"//v1",
        b"/v1/a%00b",
        b"/v1/a%0Ab",
        b"/v1/a%zz",
        b"/v1/a%",
        b"/v1/%FF",
        b"/v1/a b",
        b"/v1/\xc3\xa9",
        b"v1/x",
        b"/" + b"a" * 9000,
    ],
)
def test_paths_a_server_could_read_another_way_are_refused(raw: bytes) -> None:
    with pytest.raises(PathRejected):
        split_path(raw)


def test_the_prefix_of_the_public_url_is_required_and_removed() -> None:
    assert split_path(b"/billing/v1/x", "/billing") == ("v1", "x")
    assert split_path(b"/billing", "/billing") == ("",)
    for outside in (b"/v1/x", b"/billingx/v1", b"/"):
        with pytest.raises(PathRejected):
            split_path(outside, "/billing")


# -- routes -------------------------------------------------------------------------------


def _gateway(parties: Parties | None = None, **kwargs: Any) -> HttpGateway:
    runtime = _runtime(parties or Parties(ALLOW), None)
    return HttpGateway(load_config(_config()), runtime, **kwargs)


def test_the_first_matching_route_wins_and_placeholders_take_one_segment() -> None:
    gateway = _gateway()
    found = gateway.route_for("GET", split_path(b"/v1/invoices/export"))
    assert found is not None
    assert found[0].resource(found[1]).id == "export"  # listed before /v1/invoices/{id}
    found = gateway.route_for("GET", split_path(b"/v1/invoices/inv%2D7"))
    assert found is not None
    assert (found[0].upstream.name, found[1]) == ("billing", {"id": "inv-7"})
    assert found[0].resource(found[1]).id == "invoice-inv-7"
    found = gateway.route_for("GET", split_path(b"/v1/orders/9/lines"))
    assert found is not None
    assert found[0].resource(found[1]).id == "orders:9"
    assert gateway.route_for("GET", split_path(b"/v1/invoices/7/8")) is None  # not 2 segments
    assert gateway.route_for("GET", split_path(b"/v1/invoices/")) is None  # empty {id}
    assert gateway.route_for("GET", split_path(b"/v1/invoices")) is None
    assert gateway.route_for("PUT", split_path(b"/v1/invoices/7")) is None  # method matters
    assert gateway.route_for("DELETE", split_path(b"/v1/invoices/7")) is not None
    assert gateway.route_for("GET", split_path(b"/")) is not None


# -- headers ------------------------------------------------------------------------------


def _names(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [k for k, _ in headers]


def test_request_headers_lose_credentials_hop_by_hop_and_route_claims() -> None:
    trace = TraceContext.new()
    client = [
        (b"host", b"gw.example"),
        (b"authorization", b"DPoP agent-token"),
        (b"dpop", b"agent-proof"),
        (b"connection", b"keep-alive, X-Secret-Hop"),
        (b"x-secret-hop", b"1"),
        (b"keep-alive", b"timeout=5"),
        (b"proxy-connection", b"keep-alive"),
        (b"proxy-authorization", b"Basic x"),
        (b"te", b"trailers"),
        (b"trailer", b"x"),
        (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"websocket"),
        (b"expect", b"100-continue"),
        (b"forwarded", b"for=6.6.6.6"),
        (b"x-forwarded-for", b"6.6.6.6"),
        (b"x-forwarded-host", b"evil"),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-prefix", b"/admin"),
        (b"x-real-ip", b"6.6.6.6"),
        (b"x-api-key", b"agent-guess"),
        (b"traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"),
        (b"content-type", b"application/json"),
        (b"content-length", b"12"),
        (b"accept", b"*/*"),
        (b"accept-encoding", b"gzip, br"),
        (b"cookie", b"a=b"),
        (b"agentiam-approval", b"apr_01"),  # the gateway's header, not the upstream's
    ]
    out = request_headers_for_upstream(
        client, inject={"X-Api-Key": API_KEY}, forwarded="for=127.0.0.1", trace=trace
    )
    assert out == [  # Content-Length goes too: the upstream client frames the body itself
        (b"content-type", b"application/json"),
        (b"accept", b"*/*"),
        (b"cookie", b"a=b"),
        (b"x-api-key", API_KEY.encode()),
        (b"accept-encoding", b"identity"),  # the body is looked at for the credential
        (b"forwarded", b"for=127.0.0.1"),
        (b"traceparent", f"00-{trace.trace_id}-{trace.span_id}-01".encode()),
    ]
    # without a credential the client's Accept-Encoding goes as it came
    plain = request_headers_for_upstream(client, inject={}, forwarded="f", trace=trace)
    assert (b"accept-encoding", b"gzip, br") in plain
    assert (b"accept-encoding", b"identity") not in plain


def test_response_headers_lose_hop_by_hop_fields() -> None:
    upstream = [
        (b"Content-Type", b"text/plain"),
        (b"Connection", b"close, X-Internal"),
        (b"X-Internal", b"1"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Proxy-Authenticate", b"Basic"),
        (b"Upgrade", b"h2c"),
        (b"Set-Cookie", b"s=1"),
        (b"Content-Encoding", b"gzip"),
    ]
    assert response_headers_for_client(upstream) == [
        (b"content-type", b"text/plain"),
        (b"set-cookie", b"s=1"),
        (b"content-encoding", b"gzip"),
    ]


@pytest.mark.parametrize(
    ("client", "expected"),
    [
        (("192.0.2.7", 5000), 'for=192.0.2.7;host="gw.example:8443";proto=https'),
        (("2001:db8::1", 5000), 'for="[2001:db8::1]";host="gw.example:8443";proto=https'),
        (None, 'for=unknown;host="gw.example:8443";proto=https'),
    ],
)
def test_forwarded_header(client: tuple[str, int] | None, expected: str) -> None:
    assert forwarded_header(client, "gw.example:8443", "https") == expected


# -- the application ----------------------------------------------------------------------


class FakeSpool:
    def health(self) -> SpoolHealth:
        return SpoolHealth(
            pending_events=3, pending_bytes=900, disk_bytes=900, max_bytes=1 << 20, segments=1,
            oldest_pending_age=0.5, shipped_events=10, consecutive_failures=0,
            last_ship_error=None, last_ship_error_at=None, last_ship_at=None, corrupt_lines=0,
            closed=False,
        )  # fmt: skip


class IdleShipper:
    """The shipping task's stand-in for these tests (the spool above is a fake):
    it waits until the gateway's shutdown cancels it."""

    async def run(self, spool: object) -> None:
        await asyncio.Event().wait()


def _runtime(parties: Parties, broker: CredentialBroker | None) -> GatewayRuntime:
    link: Any = parties.link
    link.issuer = ISSUER
    link.etag = "b1"
    link.seconds_since_contact = lambda: None if link.outage else 0.1
    return GatewayRuntime(
        config=load_config(_config()).gateway,
        link=link,
        spool=FakeSpool(),  # type: ignore[arg-type]
        broker=broker,
        enforcer=parties.enforcer,
        _shipper=IdleShipper(),  # type: ignore[arg-type]
    )


OK = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 12\r\n"
    b"connection: keep-alive, x-internal\r\nx-internal: 1\r\nkeep-alive: timeout=5\r\n"
    b'\r\n{"ok": true}'
)


class _Request:
    """httptools callbacks for the test upstream: one request."""

    def __init__(self) -> None:
        self.target = b""
        self.headers: list[tuple[str, str]] = []
        self.body = b""
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode().lower(), value.decode()))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name]
        assert len(values) <= 1, (name, values)
        return values[0] if values else None


Action = bytes | float | None  # bytes to send, seconds to wait, or close the connection


class Upstream:
    """A real HTTP/1.1 upstream on a loopback port, in the test's event loop: it records
    each request and plays ``reply(request)``'s actions."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.port = free_port()
        self.tls = tls  # a server context: https, and maybe client certificates required
        self.requests: list[_Request] = []
        self.connections = 0
        self.client_certificates: list[Any] = []  # per connection, with tls
        self.down = False
        self.reply: Callable[[_Request], list[Action]] = lambda _r: [OK]

    async def serve(self) -> asyncio.Server | None:
        if self.down:
            return None
        return await asyncio.start_server(self._handle, "127.0.0.1", self.port, ssl=self.tls)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.tls is not None:
            self.client_certificates.append(writer.get_extra_info("peercert"))
        try:
            while True:
                request = _Request()
                parser = httptools.HttpRequestParser(request)
                while not request.done:
                    data = await reader.read(65536)
                    if not data:
                        return
                    parser.feed_data(data)
                request.method = parser.get_method().decode()  # type: ignore[attr-defined]
                self.requests.append(request)
                for action in self.reply(request):
                    if action is None:
                        return
                    if isinstance(action, float):
                        await asyncio.sleep(action)
                    else:
                        writer.write(action)
                        await writer.drain()
        finally:
            writer.close()


class App:
    def __init__(
        self,
        tmp_path: Path,
        *,
        secret: bool = True,
        limiter: RateLimiter | None = None,
        upstream: Upstream | None = None,
        tls: dict[str, str] | None = None,
        routes: list[dict[str, Any]] | None = None,
        parties: Parties | None = None,
    ) -> None:
        """``upstream`` (default: plain HTTP) serves both upstreams of the config;
        ``tls`` is the billing upstream's ``tls`` key when ``upstream`` is https;
        ``routes``, if given, come before the config's; ``parties`` replace the
        default ones (``ALLOW``)."""
        self.parties = parties or Parties(ALLOW, limiter=limiter)
        key = MasterKey.from_text(MasterKey.generate_text())
        store = SecretStore(tmp_path / "secrets.json", key, reload_interval=0)
        if secret:
            store.put("billing-key", SecretKind.API_KEY, Secret(API_KEY))
        self.upstream = upstream or Upstream()
        config = _config()
        scheme = "http" if self.upstream.tls is None else "https"
        url = f"{scheme}://127.0.0.1:{self.upstream.port}"
        config["upstreams"]["billing"]["url"] = url + "/base"
        config["upstreams"]["plain"]["url"] = url
        if tls is not None:
            config["upstreams"]["billing"]["tls"] = tls
        if routes is not None:
            config["routes"] = routes + config["routes"]
        self.gateway = HttpGateway(
            load_config(config), _runtime(self.parties, CredentialBroker(store))
        )

    def request(self, method: str, path: str, *, token: bool = True, **kwargs: Any) -> Any:
        return asyncio.run(self.requests([(method, path, token, kwargs)]))[0]

    async def requests(
        self,
        calls: list[tuple[str, str, bool, dict[str, Any]]],
        after_each: Callable[[], Awaitable[None]] | None = None,
    ) -> list[Any]:
        """Make ``calls`` one after the other through one gateway lifetime, awaiting
        ``after_each`` (if given) after each answer."""
        server = await self.upstream.serve()
        await self.gateway.startup()
        out = []
        try:
            transport = httpx.ASGITransport(app=self.gateway, client=("198.51.100.9", 4000))
            for method, path, token, kwargs in calls:
                headers = dict(kwargs.pop("headers", {}))
                if token:
                    proof_url = kwargs.pop("proof_url", GATEWAY + path.split("?")[0])
                    signed = self.parties.headers(method, proof_url)
                    headers["Authorization"] = signed["authorization"][0]
                    headers["DPoP"] = signed["dpop"][0]
                base = kwargs.pop("base", GATEWAY)
                async with httpx.AsyncClient(transport=transport, base_url=base) as client:
                    response = await client.request(method, path, headers=headers, **kwargs)
                    await response.aread()
                out.append(response)
                if after_each is not None:
                    await after_each()
        finally:
            await self.gateway.shutdown()
            if server is not None:
                server.close()
        return out

    def events(self) -> list[dict[str, Any]]:
        return self.parties.sink.events


@pytest.fixture
def app(tmp_path: Path) -> App:
    return App(tmp_path)


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail"} <= set(body)
    assert "Traceback" not in response.text
    return body


def test_an_allowed_call_is_forwarded_with_the_brokered_credential(app: App) -> None:
    r = app.request("GET", "/v1/invoices/7?full=1", headers={"X-Forwarded-For": "6.6.6.6"})
    assert r.status_code == 200
    assert r.json() == {"ok": True}
    assert "x-internal" not in r.headers  # named by the upstream's Connection header
    assert "keep-alive" not in r.headers
    [sent] = app.upstream.requests
    assert (sent.method, sent.target) == ("GET", b"/base/v1/invoices/7?full=1")
    assert sent.header("host") == f"127.0.0.1:{app.upstream.port}"
    assert sent.header("x-api-key") == API_KEY
    assert sent.header("authorization") is None
    assert sent.header("dpop") is None
    assert sent.header("x-forwarded-for") is None
    assert sent.header("forwarded") == "for=198.51.100.9;host=gw.example;proto=https"
    assert sent.header("content-length") is None
    assert sent.header("transfer-encoding") is None
    types = [e["type"] for e in app.events()]
    assert types == ["authz.decision", "tool.call"]
    outcome = app.events()[-1]
    assert (outcome["outcome"], outcome["details"]["status"]) == ("success", 200)
    assert outcome["details"]["brokered"] == "billing-key@1"
    assert API_KEY not in str(app.events())
    decision = app.events()[0]
    # one session (the token's jti) and the upstream's host, for detection
    assert decision["details"]["jti"] == outcome["details"]["jti"]
    for event in (decision, outcome):
        assert event["details"]["target"] == {"host": "127.0.0.1"}


def test_connections_to_the_upstream_are_reused(app: App) -> None:
    calls = [("GET", f"/v1/invoices/{i}", True, {}) for i in range(5)]
    responses = asyncio.run(app.requests(calls))
    assert [r.status_code for r in responses] == [200] * 5
    assert app.upstream.connections == 1


def test_a_connection_the_upstream_closes_is_not_reused(app: App) -> None:
    app.upstream.reply = lambda _r: [OK.replace(b"keep-alive, x-internal", b"close"), None]
    calls = [("GET", f"/v1/invoices/{i}", True, {}) for i in range(3)]
    responses = asyncio.run(app.requests(calls))
    assert [r.status_code for r in responses] == [200] * 3
    assert app.upstream.connections == 3


def test_an_idle_connection_closed_by_the_upstream_is_retried_once(app: App) -> None:
    """The upstream drops a kept-alive connection without saying so: the next request
    on it fails before any answer and goes again on a new connection."""
    seen = []

    def reply(request: _Request) -> list[Action]:
        seen.append(request.target)
        return [OK, None] if len(seen) == 1 else [OK]

    app.upstream.reply = reply
    calls = [("GET", f"/v1/invoices/{i}", True, {}) for i in range(2)]
    responses = asyncio.run(app.requests(calls))
    assert [r.status_code for r in responses] == [200, 200]
    assert app.upstream.connections == 2


def test_the_proof_must_name_the_public_url_whatever_the_host(app: App) -> None:
    """The DPoP htu is checked against public_url, never a URL from the Host header."""
    r = app.request("GET", "/v1/invoices/7", base="http://evil.example")
    assert r.status_code == 200  # proof for the public URL, sent with Host: evil.example
    r = app.request(
        "GET", "/v1/invoices/7", base="http://evil.example",
        proof_url="http://evil.example/v1/invoices/7",
    )  # fmt: skip
    assert _problem(r, 401)["error"] == "invalid_dpop_proof"
    assert len(app.upstream.requests) == 1


def test_no_token_is_401_with_the_metadata_challenge(app: App) -> None:
    r = app.request("GET", "/v1/invoices/7", token=False)
    body = _problem(r, 401)
    assert body["error"] == "invalid_token"
    assert f'resource_metadata="{METADATA}"' in r.headers["www-authenticate"]
    assert app.upstream.requests == []
    assert [e["type"] for e in app.events()] == ["api.request.rejected"]


def test_policy_deny_is_403_and_not_forwarded(app: App) -> None:
    r = app.request("DELETE", "/v1/invoices/7")
    body = _problem(r, 403)
    assert body["error"] == "insufficient_scope"
    assert body["decision_id"]
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
    assert app.upstream.requests == []


def test_no_route_is_404_audited_and_not_forwarded(app: App) -> None:
    _problem(app.request("GET", "/v2/anything"), 404)
    _problem(app.request("PATCH", "/v1/invoices/7"), 404)
    assert app.upstream.requests == []
    assert [e["details"]["status"] for e in app.events()] == [404, 404]
    assert {e["agent_id"] for e in app.events()} == {AGENT}


def test_a_path_that_could_be_read_another_way_is_400(app: App) -> None:
    _problem(app.request("GET", "/v1/invoices/..%2Fexport"), 400)
    assert app.upstream.requests == []
    assert app.events()[-1]["details"]["status"] == 400


def test_spool_failure_is_503_and_nothing_is_forwarded(app: App) -> None:
    app.parties.sink.broken = True
    r = app.request("GET", "/v1/invoices/7")
    _problem(r, 503)
    assert int(r.headers["retry-after"]) >= 1
    assert app.upstream.requests == []


class _HeldSink:
    """A spool whose fsyncs complete when the test says: decisions at once (or never,
    with ``hold_decisions``), outcomes never (or failed, with ``fail_outcomes``)."""

    def __init__(self, *, hold_decisions: bool = False, fail_outcomes: bool = False) -> None:
        self.events: list[dict[str, Any]] = []
        self.held: list[Future[None]] = []
        self._hold_decisions = hold_decisions
        self._fail_outcomes = fail_outcomes

    def append(self, events: list[dict[str, Any]]) -> None:  # pragma: no cover - unused
        raise AssertionError("the HTTP gateway never blocks its event loop on a write")

    def submit(self, events: list[dict[str, Any]], *, wake: bool = True) -> Future[None]:
        self.events.extend(events)
        future: Future[None] = Future()
        if events[0]["type"] == "tool.call" and self._fail_outcomes:
            future.set_exception(OSError("disk full"))
        elif events[0]["type"] == "tool.call" or self._hold_decisions:
            self.held.append(future)
        else:
            future.set_result(None)
        return future


def test_the_outcome_event_does_not_hold_the_answer_but_the_decision_does(app: App) -> None:
    sink = _HeldSink()
    app.parties.enforcer._sink = sink
    r = app.request("GET", "/v1/invoices/7")
    assert r.status_code == 200  # answered although the tool.call is not durable yet
    assert [e["type"] for e in sink.events] == ["authz.decision", "tool.call"]
    assert len(sink.held) == 1
    assert not sink.held[0].done()


def test_an_outcome_is_written_with_the_next_calls_decision(app: App) -> None:
    app.gateway._outcomes._linger = 60.0  # only the next call writes it
    sink = QuietSink()
    app.parties.enforcer._sink = sink
    seen: list[tuple[list[tuple[list[str], bool]], int]] = []

    async def snapshot() -> None:
        await asyncio.sleep(0.05)  # the loop turn that answered has ended
        seen.append(sink.snapshot())

    calls: list[tuple[str, str, bool, dict[str, Any]]] = [
        ("GET", "/v1/invoices/7", True, {}),
        ("GET", "/v1/invoices/8", True, {}),
    ]
    responses = asyncio.run(app.requests(calls, after_each=snapshot))
    assert [r.status_code for r in responses] == [200, 200]
    decision, outcome = (["authz.decision"], True), (["tool.call"], False)
    # the decision starts a write; the outcome is queued without one, and goes with
    # the next call's decision: no wake is needed between calls
    assert seen[0] == ([decision, outcome], 0)
    assert seen[1] == ([decision, outcome, decision, outcome], 0)
    assert sink.snapshot() == ([decision, outcome, decision, outcome], 1)  # at shutdown


def test_a_queued_outcome_is_written_after_the_linger_without_another_call(app: App) -> None:
    app.gateway._outcomes._linger = 0.05
    sink = QuietSink()
    app.parties.enforcer._sink = sink
    seen: list[tuple[list[tuple[list[str], bool]], int]] = []

    async def later() -> None:
        await asyncio.sleep(0.5)
        seen.append(sink.snapshot())

    asyncio.run(app.requests([("GET", "/v1/invoices/7", True, {})], after_each=later))
    assert seen == [([(["authz.decision"], True), (["tool.call"], False)], 1)]  # the timer
    assert sink.wakes == 1  # nothing left for shutdown to wake


def test_a_decision_that_is_not_durable_in_time_is_never_forwarded(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Pending.durable

    async def quick(self: Pending, timeout: float = 5.0) -> None:
        await original(self, timeout=0.2)

    monkeypatch.setattr(Pending, "durable", quick)
    app.parties.enforcer._sink = _HeldSink(hold_decisions=True)
    _problem(app.request("GET", "/v1/invoices/7"), 503)
    assert app.upstream.requests == []


def test_an_outcome_that_cannot_be_recorded_is_logged(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    app.parties.enforcer._sink = _HeldSink(fail_outcomes=True)
    assert app.request("GET", "/v1/invoices/7").status_code == 200
    assert "could not be recorded durably" in caplog.text
    text = app.request("GET", "/metrics", token=False).text
    assert "agentiam_gateway_outcomes_lost_total 1.0" in text


def test_replicas_take_tokens_from_the_shared_store_and_fail_closed_without_it(
    tmp_path: Path, redis_prefix: str
) -> None:
    """With a shared store the call's token comes from Redis (another replica may
    have spent it) before the decision; a store that cannot answer is a 503, audited,
    and nothing is forwarded."""
    app = App(tmp_path, limiter=RateLimiter(per_agent=RateLimit(rate_per_second=1 / 60, burst=1)))
    enforcer = app.parties.enforcer
    enforcer.shared_limits = SharedRateLimits(
        SharedRedis(REDIS_URL, prefix=redis_prefix, timeout=1)
    )
    get = ("GET", "/v1/invoices/7", True, {})
    allowed, limited = asyncio.run(app.requests([get, get]))
    assert allowed.status_code == 200
    assert _problem(limited, 429)["error"] == "rate_limited"
    assert limited.headers["retry-after"] == "60"
    assert len(app.upstream.requests) == 1
    dead = f"redis://127.0.0.1:{free_port()}/0"
    enforcer.shared_limits = SharedRateLimits(SharedRedis(dead, prefix="t:", timeout=0.3))
    (unavailable,) = asyncio.run(app.requests([get]))
    assert "shared rate limits" in _problem(unavailable, 503)["detail"]
    assert len(app.upstream.requests) == 1
    refused = app.events()[-1]
    assert (refused["type"], refused["details"]["status"]) == ("api.request.rejected", 503)


def test_a_malformed_approval_id_is_refused_without_taking_a_shared_token(
    tmp_path: Path, redis_prefix: str
) -> None:
    """Replicas: a request naming an approval that is not one id is refused (400)
    before it takes a token from the shared buckets, so the agent's one token is
    still there for its next call."""
    app = App(tmp_path, limiter=RateLimiter(per_agent=RateLimit(rate_per_second=1 / 60, burst=1)))
    enforcer = app.parties.enforcer
    enforcer.shared_limits = SharedRateLimits(
        SharedRedis(REDIS_URL, prefix=redis_prefix, timeout=1)
    )
    enforcer.approvals = NoApprovals()  # type: ignore[assignment]
    bad = ("GET", "/v1/invoices/7", True, {"headers": {APPROVAL_HEADER: "not-an-id"}})
    get = ("GET", "/v1/invoices/7", True, {})
    refused, allowed, limited = asyncio.run(app.requests([bad, get, get]))
    assert "not one approval id" in _problem(refused, 400)["detail"]
    assert allowed.status_code == 200
    assert _problem(limited, 429)["error"] == "rate_limited"
    assert len(app.upstream.requests) == 1


def test_outage_past_the_bound_is_503(app: App) -> None:
    app.parties.link.outage = True
    r = app.request("GET", "/v1/invoices/7")
    _problem(r, 503)
    assert app.upstream.requests == []
    health = app.request("GET", "/healthz", token=False)
    assert health.status_code == 503
    assert health.json()["deciding"] is False


@pytest.mark.parametrize(
    ("case", "status"),
    [("refused", 502), ("silent", 504), ("garbage", 502), ("closed", 502)],
)
def test_upstream_failures_are_502_or_504_and_audited(app: App, case: str, status: int) -> None:
    if case == "refused":
        app.upstream.down = True
    replies: dict[str, list[Action]] = {
        "silent": [2.0],  # longer than the read timeout
        "garbage": [b"this is not HTTP\r\n\r\n", None],
        "closed": [None],
    }
    app.upstream.reply = lambda _r: replies.get(case, [OK])
    started = time.monotonic()
    _problem(app.request("GET", "/v1/invoices/7"), status)
    assert time.monotonic() - started < 1.5
    outcome = app.events()[-1]
    assert (outcome["type"], outcome["outcome"]) == ("tool.call", "failure")
    assert outcome["details"]["status"] == status


def test_a_missing_secret_is_502_and_not_forwarded(tmp_path: Path) -> None:
    app = App(tmp_path, secret=False)
    body = _problem(app.request("GET", "/v1/invoices/7"), 502)
    assert "billing-key" not in body["detail"]
    assert app.upstream.requests == []
    outcome = app.events()[-1]
    assert (outcome["type"], outcome["outcome"], outcome["details"]["status"]) == (
        "tool.call",
        "failure",
        502,
    )


def test_an_upstream_failing_mid_response_cuts_the_connection(app: App) -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nfirst part"
    app.upstream.reply = lambda _r: [head, None]
    with pytest.raises(Exception, match="failed mid-response"):
        app.request("GET", "/v1/invoices/7")
    outcome = app.events()[-1]
    assert (outcome["type"], outcome["outcome"], outcome["details"]["status"]) == (
        "tool.call",
        "failure",
        200,
    )


def test_response_framings_are_relayed(app: App) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    until_close = b"HTTP/1.1 200 OK\r\n\r\nall of it, until the end"
    interim = b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" + OK
    no_content = b"HTTP/1.1 204 No Content\r\n\r\n"
    for reply, body in (
        ([chunked], b"hello world"),
        ([until_close, None], b"all of it, until the end"),
        ([interim], b'{"ok": true}'),
        ([no_content], b""),
    ):
        app.upstream.reply = lambda _r, reply=reply: reply  # type: ignore[misc]
        r = app.request("GET", "/v1/invoices/7")
        assert (r.status_code, r.content) == (200 if body else 204, body)
    app.upstream.reply = lambda _r: [OK]
    r = app.request("HEAD", "/v1/invoices/7")  # no route for HEAD: 404, not forwarded
    assert r.status_code == 404


def test_request_bodies_are_forwarded_as_they_come(app: App) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"one,", b"two,", b"three"):
            yield part

    assert app.request("GET", "/v1/invoices/7", content=b"x" * 10).status_code == 200
    assert app.request("GET", "/v1/invoices/7", content=chunks()).status_code == 200
    assert app.request("GET", "/v1/invoices/7").status_code == 200
    assert [r.body for r in app.upstream.requests] == [b"x" * 10, b"one,two,three", b""]
    with_length, chunked, empty = app.upstream.requests
    assert with_length.header("content-length") == "10"
    assert chunked.header("transfer-encoding") == "chunked"
    assert empty.header("transfer-encoding") is None
    assert empty.header("content-length") is None


def test_metadata_health_and_metrics(app: App) -> None:
    metadata = app.request("GET", "/.well-known/oauth-protected-resource", token=False)
    assert metadata.status_code == 200
    assert metadata.json()["resource"] == GATEWAY
    assert metadata.json()["authorization_servers"] == [ISSUER]
    health = app.request("GET", "/healthz", token=False)
    assert health.status_code == 200
    assert health.json()["spool"]["pending_events"] == 3
    app.request("GET", "/v1/invoices/7")
    app.request("GET", "/v1/invoices/7", token=False)
    text = app.request("GET", "/metrics", token=False).text
    assert 'agentiam_gateway_calls_total{outcome="allowed"} 1.0' in text
    assert 'agentiam_gateway_calls_total{outcome="unauthenticated"} 1.0' in text
    assert "agentiam_gateway_request_seconds_bucket" in text
    assert "agentiam_gateway_spool_pending_events 3.0" in text
    assert "agentiam_gateway_outcomes_lost_total 0.0" in text
    assert "agentiam_gateway_event_loop_lag_seconds_bucket" in text
