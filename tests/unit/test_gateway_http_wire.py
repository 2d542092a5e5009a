"""The HTTP gateway red-teamed on the wire: a hostile agent with a valid token (or an
anonymous client) writes raw bytes to the gateway under uvicorn, as ``run()`` serves
it, and a raw-socket upstream records every byte it is sent. The property checked
for request framing: the upstream receives exactly one well-framed request per call
the gateway decided to forward, never a second one, and never one whose fields or
body differ from what was decided. Then a hostile upstream's answers: what reaches
the client, and what the audit trail says."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import httptools
import pytest
from tests.unit.test_gateway_http import API_KEY, Action, App, _problem, _Request
from tests.unit.test_gateway_http_hardening import _auth, _served, _status

from agentiam.adapters.gateway.http_proxy import MAX_HEAD
from agentiam.adapters.gateway.http_upstream import MAX_RESPONSE_HEAD

PATH = "/v1/invoices/7"  # GET routed to the billing upstream (X-Api-Key brokered)
REPLY = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


@pytest.fixture
def app(tmp_path: Path) -> App:
    return App(tmp_path)


class _Messages:
    """httptools callbacks: every request in a byte stream, whole or not."""

    def __init__(self) -> None:
        self.all: list[_Request] = []

    def on_message_begin(self) -> None:
        self.all.append(_Request())

    def on_url(self, url: bytes) -> None:
        self.all[-1].on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.all[-1].on_header(name, value)

    def on_body(self, body: bytes) -> None:
        self.all[-1].on_body(body)

    def on_message_complete(self) -> None:
        self.all[-1].on_message_complete()


class RawUpstream:
    """A raw-socket upstream on ``port``: records each connection's bytes and answers
    ``reply`` to each request it can parse whole (strict llhttp, no leniency)."""

    def __init__(self, port: int, reply: bytes = REPLY) -> None:
        self.port = port
        self.reply = reply
        self.streams: list[bytearray] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream = bytearray()
        self.streams.append(stream)
        seen = _Messages()
        parser = httptools.HttpRequestParser(seen)
        answered = 0
        try:
            while data := await reader.read(65536):
                stream += data
                parser.feed_data(data)
                while answered < sum(m.done for m in seen.all):
                    answered += 1
                    writer.write(self.reply)
                    await writer.drain()
        except (httptools.HttpParserError, ConnectionError):
            pass  # recorded: requests() reports what the bytes hold
        finally:
            writer.close()

    async def serve(self) -> asyncio.Server:
        return await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    def requests(self) -> tuple[list[_Request], int]:
        """The whole requests in everything received, and how many were cut short."""
        whole: list[_Request] = []
        cut = 0
        for stream in self.streams:
            seen = _Messages()
            with contextlib.suppress(httptools.HttpParserError):  # a request cut short
                httptools.HttpRequestParser(seen).feed_data(bytes(stream))
            whole += [m for m in seen.all if m.done]
            cut += sum(not m.done for m in seen.all)
        return whole, cut

    def raw(self) -> bytes:
        return b"".join(bytes(s) for s in self.streams)


async def _send(port: int, data: bytes, *, wait: float = 0.5) -> bytes:
    """Write ``data``, read until the gateway closes or ``wait`` passes in silence."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    out = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), wait):
            out += chunk
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()
    return out


def _attack(app: App, *requests: bytes, reply: bytes = REPLY) -> tuple[list[bytes], RawUpstream]:
    """Each of ``requests`` on a connection of its own to the served gateway; the
    answers, and the raw upstream that served the gateway's calls."""
    upstream = RawUpstream(app.upstream.port, reply)
    app.upstream.down = True  # the raw upstream serves on its port instead

    async def main() -> list[bytes]:
        server = await upstream.serve()
        try:
            async with _served(app) as port:
                answers = [await _send(port, request) for request in requests]
                await asyncio.sleep(0.1)  # the last outcome event
                return answers
        finally:
            server.close()

    return asyncio.run(main()), upstream


def _head(app: App, method: str = "GET", path: str = PATH, *, token: bool = True) -> bytes:
    """A request line and Host, with a fresh token and proof for ``method PATH``."""
    auth = _auth(app, method, path) if token else b""
    return b"%s %s HTTP/1.1\r\nHost: x\r\n%s" % (method.encode(), path.encode(), auth)


def _types(app: App) -> list[str]:
    return [e["type"] for e in app.events()]


def _statuses(app: App) -> list[int | None]:
    return [e["details"].get("status") for e in app.events()]


# -- 1. smuggling and desync toward the upstream ------------------------------------------

CHUNKED = b"Transfer-Encoding: chunked\r\n"


@pytest.mark.parametrize(
    ("fields", "body"),
    [
        (b"Content-Length: 5\r\n" + CHUNKED, b"0\r\n\r\nGET /v1/invoices/8 HTTP/1.1\r\n\r\n"),
        (CHUNKED + b"Content-Length: 5\r\n", b"0\r\n\r\nGET /v1/invoices/8 HTTP/1.1\r\n\r\n"),
        (b"Content-Length: 3\r\nContent-Length: 3\r\n", b"abc"),
        (b"Content-Length: 3\r\nContent-Length: 40\r\n", b"abcGET /v1/invoices/8 HTTP/1.1\r\n\r\n"),
        (b"Content-Length: 3, 3\r\n", b"abc"),
        (b"Content-Length: +3\r\n", b"abc"),
        (b"Transfer-Encoding: chunked, identity\r\n", b"3\r\nabc\r\n0\r\n\r\n"),
        (CHUNKED + CHUNKED, b"3\r\nabc\r\n0\r\n\r\n"),
        (b"Transfer-Encoding : chunked\r\n", b"3\r\nabc\r\n0\r\n\r\n"),
        (b"Transfer-Encoding: \x0bchunked\r\n", b"3\r\nabc\r\n0\r\n\r\n"),
        (b"X-A: 1\r\n X-Api-Key: agent-chosen\r\n", b""),  # obs-fold
        (b"X-A: 1\r\nTransfer-Encoding:\r\n chunked\r\n", b"3\r\nabc\r\n0\r\n\r\n"),
        (b"X-A: 1\nX-Api-Key: agent-chosen\r\n", b""),  # bare LF
        (b"X-A: 1\rX-Api-Key: agent-chosen\r\n", b""),  # bare CR
        (b"X-A: a\x00b\r\n", b""),
        (b"X-A: a\x7fb\r\n", b""),
        (b"X\x00A: 1\r\n", b""),
        (b"X A: 1\r\n", b""),
        (b"X\xc3\xa9: 1\r\n", b""),
        (b"Authorization : DPoP x\r\n", b""),
    ],
)
def test_ambiguous_framing_and_malformed_fields_never_reach_the_upstream(
    app: App, fields: bytes, body: bytes
) -> None:
    """llhttp (strict but for data after close) refuses these in the head: uvicorn's
    400, the connection closed, nothing sent upstream and nothing decided."""
    [answer], upstream = _attack(app, _head(app) + fields + b"\r\n" + body)
    assert _status(answer) == 400
    assert upstream.raw() == b""
    assert app.events() == []


@pytest.mark.parametrize(
    "line",
    [
        b"get /v1/invoices/7 HTTP/1.1",  # methods are case-sensitive (RFC 9110 9.1)
        b"FOO /v1/invoices/7 HTTP/1.1",  # an extension method llhttp does not know
        b"CONNECT billing.internal:443 HTTP/1.1",  # authority-form
        b"GET billing.internal:443 HTTP/1.1",
        b"GET /v1/invoices/7 HTTP/1.2",
        b"GET /v1/invoices/7\t HTTP/1.1",
        b"GET /v1/invoices/7?\x0b HTTP/1.1",
        b"GET /v1/invoices/7?\xff HTTP/1.1",
    ],
)
def test_request_lines_llhttp_refuses_never_reach_the_upstream(app: App, line: bytes) -> None:
    auth = _auth(app, "GET", PATH)
    [answer], upstream = _attack(app, line + b"\r\nHost: x\r\n" + auth + b"\r\n")
    assert _status(answer) == 400
    assert upstream.raw() == b""
    assert app.events() == []


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        (b"Transfer-Encoding: gzip, chunked\r\n", 501),
        (b"Transfer-Encoding: identity\r\n" + CHUNKED, 501),
        (b"Transfer-Encoding: gzip\r\n" + CHUNKED, 501),
        (b"Transfer-Encoding: identity\r\n", 400),  # llhttp's 400 wins the race
    ],
)
def test_a_transfer_coding_other_than_chunked_is_refused_before_forwarding(
    app: App, fields: bytes, status: int
) -> None:
    """llhttp takes these and removes only the chunking: forwarded re-chunked, the
    upstream read gzip-coded bytes as the content (``identity`` alone failed llhttp
    only after the head had been decided and sent). Now: 501, audited, not sent."""
    [answer], upstream = _attack(app, _head(app) + fields + b"\r\n" + b"3\r\nabc\r\n0\r\n\r\n")
    assert _status(answer) == status
    assert upstream.raw() == b""
    assert (_types(app), _statuses(app)) == (["api.request.rejected"], [501])


@pytest.mark.parametrize(
    "body",
    [
        b"3\r\nabcXX0\r\n\r\n",  # no CRLF after the chunk data
        b"3\r\nabc\n0\r\n\r\n",
        b"3\r\nabc\r\nFFFFFFFFFFFFFFFFF1\r\nabc\r\n0\r\n\r\n",  # chunk-size overflow
        b"3\r\nabc\r\n-3\r\nabc\r\n0\r\n\r\n",
        b"3\r\nabc\r\n3 \r\nabc\r\n0\r\n\r\n",
        b'3\r\nabc\r\n3;a="b\r\nc"\r\nabc\r\n0\r\n\r\n',  # CRLF in a quoted extension
        b"3\r\nabc\r\n0\r\nContent-Length: 40\r\n\r\nGET /v1/invoices/8 HTTP/1.1\r\n\r\n",
    ],
)
def test_a_chunked_body_that_goes_bad_never_completes_a_request_upstream(
    app: App, body: bytes
) -> None:
    """The head was decided and forwarded; the body breaks: the connection closes, the
    upstream holds a request cut short (no terminating chunk), never a whole one or a
    second one, and the call is recorded as failed by its client."""
    [answer], upstream = _attack(app, _head(app) + CHUNKED + b"\r\n" + body)
    assert _status(answer) == 400
    whole, cut = upstream.requests()
    assert (whole, cut) == ([], 1)
    assert b"/v1/invoices/8" not in upstream.raw()
    outcome = app.events()[-1]
    assert (outcome["type"], outcome["outcome"]) == ("tool.call", "failure")
    assert outcome["details"]["error"] == "ClientDisconnected"


def test_a_body_on_get_is_framed_and_what_follows_it_is_a_request_of_its_own(
    app: App,
) -> None:
    """A GET with ``Content-Length: 3`` and another request after its body in the same
    write: the upstream gets one GET whose body is those 3 bytes, with its own
    ``Content-Length``; the bytes after it are the client's next request, answered
    (401 without a token) and audited on their own."""
    smuggled = b"GET /v1/invoices/8 HTTP/1.1\r\nHost: x\r\n\r\n"
    attack = _head(app) + b"Content-Length: 3\r\n\r\nabc" + smuggled
    [answer], upstream = _attack(app, attack)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b"HTTP/1.1 401 " in answer
    [sent], _cut = upstream.requests()
    assert (sent.target, sent.body, sent.header("content-length")) == (
        b"/base/v1/invoices/7",
        b"abc",
        "3",
    )
    assert b"/v1/invoices/8" not in upstream.raw()
    assert _types(app) == ["authz.decision", "api.request.rejected", "tool.call"]


def test_trailer_fields_are_discarded_never_merged_or_forwarded(app: App) -> None:
    """Trailer fields arriving with the head used to be appended to the request's
    fields: a second ``Authorization`` refused the call, and any other field was
    forwarded as a header the gateway never saw when it decided. They are discarded
    (RFC 9112 section 7.1.2); chunk extensions are not forwarded either."""
    trailers = (
        b"Authorization: DPoP someone-elses-token\r\nX-Api-Key: agent-chosen\r\n"
        b"Forwarded: for=6.6.6.6\r\nX-Smuggled: 1\r\n"
    )
    body = b"3;ext=1\r\nabc\r\n0\r\n" + trailers + b"\r\n"
    [answer], upstream = _attack(app, _head(app) + CHUNKED + b"\r\n" + body)
    assert _status(answer) == 200
    [sent], cut = upstream.requests()
    assert cut == 0
    assert sent.header("x-api-key") == API_KEY
    assert sent.header("x-smuggled") is None
    assert sent.header("authorization") is None
    assert sent.header("forwarded") == "for=127.0.0.1;host=gw.example;proto=https"
    assert (sent.body, sent.header("transfer-encoding")) == (b"abc", "chunked")
    assert b"ext=1" not in upstream.raw()
    assert b"agent-chosen" not in upstream.raw()
    assert _types(app) == ["authz.decision", "tool.call"]


@pytest.mark.parametrize("token", [False, True])
def test_an_endless_trailer_section_closes_the_connection(app: App, token: bool) -> None:
    """One trailer field that never ends: httptools grew it by a copy per read, so one
    anonymous connection cost memory and event-loop time without bound. Past MAX_HEAD
    bytes after the last body byte the connection closes (431 when no answer is under
    way); a call in progress ends failed and the upstream never gets a whole request."""
    sent = 0

    async def client(port: int) -> bytes:
        nonlocal sent
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_head(app, token=token) + CHUNKED + b"\r\n3\r\nabc\r\n0\r\nX-T: ")
        answer = b""
        try:
            for _ in range(256):  # up to 16 MiB
                writer.write(b"a" * 65536)
                await writer.drain()
                sent += 1
                await asyncio.sleep(0.005)
            answer = await asyncio.wait_for(reader.read(), 2)
        except ConnectionError:
            pass  # closed with the client's bytes unread: a reset may overtake the 431
        writer.close()
        return answer

    upstream = RawUpstream(app.upstream.port)
    app.upstream.down = True

    async def main() -> bytes:
        server = await upstream.serve()
        try:
            async with _served(app) as port:
                answer = await client(port)
                await asyncio.sleep(0.1)
                return answer
        finally:
            server.close()

    answer = asyncio.run(main())
    assert sent < 4 * MAX_HEAD // 65536 + 8  # cut off a few reads past the bound
    assert upstream.requests()[0] == []
    if token:
        assert app.events()[-1]["details"]["error"] == "ClientDisconnected"
    else:  # answered 401 at once; the trailer flood that followed was cut
        assert _types(app) == ["api.request.rejected"]
        assert answer == b"" or b"HTTP/1.1 401 " in answer


# -- 2. hop-by-hop abuse and the brokered credential ---------------------------------------


@pytest.mark.parametrize(
    "connection",
    [
        b"X-Api-Key",
        b"authorization, dpop",
        b"forwarded, x-forwarded-for",
        b"host",
        b"content-length",
        b"traceparent",
        b"close, X-API-KEY, Forwarded, Host, Content-Length",
    ],
)
def test_connection_cannot_make_the_gateway_drop_or_keep_a_field(
    app: App, connection: bytes
) -> None:
    """``Connection`` names fields the gateway drops (RFC 9110 section 7.6.1), but what
    it sets itself is set after: the brokered credential (once, never the client's of
    the same name in any case), a fresh ``Forwarded``, ``traceparent``, ``Host`` and
    the framing."""
    fields = (
        b"Connection: " + connection + b"\r\nX-Api-Key: agent-chosen\r\n"
        b"x-API-key: agent-chosen-2\r\nForwarded: for=6.6.6.6\r\n"
        b"X-Forwarded-For: 6.6.6.6\r\nContent-Length: 3\r\n"
    )
    [answer], upstream = _attack(app, _head(app) + fields + b"\r\nabc")
    assert _status(answer) == 200
    [sent], cut = upstream.requests()
    assert cut == 0
    assert sent.header("x-api-key") == API_KEY
    assert sent.header("forwarded") == "for=127.0.0.1;host=gw.example;proto=https"
    assert sent.header("x-forwarded-for") is None
    assert sent.header("connection") is None
    assert sent.header("host") == f"127.0.0.1:{app.upstream.port}"
    assert sent.header("traceparent") is not None
    assert (sent.body, sent.header("content-length")) == (b"abc", "3")
    assert b"agent-chosen" not in upstream.raw()


# -- 3. request targets and methods --------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "status", "forwarded"),
    [
        (b"http://evil.example/v1/invoices/7?x=1", 200, b"/base/v1/invoices/7?x=1"),
        (b"http://user:pw@evil.example:8080/v1/invoices/7", 200, b"/base/v1/invoices/7"),
        (b"/v1/invoices/7?a=1#fragment", 200, b"/base/v1/invoices/7?a=1"),
        (b"http://evil.example/v1/x/../invoices/7", 400, None),
        (b"http://evil.example//v1/invoices/7", 400, None),
        (b"*", 400, None),
    ],
)
def test_request_targets_are_decided_as_the_upstream_reads_them(
    app: App, target: bytes, status: int, forwarded: bytes | None
) -> None:
    """Absolute-form: its authority is ignored (the upstream is the route's, ``Host``
    the upstream's) and its path is checked like any other; a fragment is never
    forwarded; ``OPTIONS *`` has no path to route (400, audited)."""
    method = "OPTIONS" if target == b"*" else "GET"
    request = b"%s %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (
        method.encode(),
        target,
        _auth(app, method, PATH),
    )
    [answer], upstream = _attack(app, request)
    assert _status(answer) == status
    whole, _cut = upstream.requests()
    assert [r.target for r in whole] == ([forwarded] if forwarded else [])
    assert b"evil.example" not in upstream.raw()
    assert _statuses(app)[-1] == (200 if forwarded else 400)


@pytest.mark.parametrize(
    ("method", "version", "status"),
    [
        ("TRACE", b"HTTP/1.1", 404),  # no route can name TRACE (it would echo the key)
        ("PROPFIND", b"HTTP/1.1", 404),
        ("GET", b"HTTP/1.0", 200),
    ],
)
def test_methods_and_versions_llhttp_takes(
    app: App, method: str, version: bytes, status: int
) -> None:
    request = b"%s %s %s\r\nHost: x\r\n%s\r\n" % (
        method.encode(),
        PATH.encode(),
        version,
        _auth(app, method, PATH),
    )
    [answer], upstream = _attack(app, request)
    assert _status(answer) == status
    whole, _cut = upstream.requests()
    assert [r.target for r in whole] == ([b"/base" + PATH.encode()] if status == 200 else [])
    if version == b"HTTP/1.0":
        assert b"connection: close" in answer.lower()
        assert upstream.raw().startswith(b"GET /base/v1/invoices/7 HTTP/1.1\r\n")
    else:
        assert _statuses(app) == [404]


@pytest.mark.parametrize("line", [b"GET /v1/invoices/7", b"GET /v1/invoices/7 HTTP/2.0"])
def test_versions_other_than_1_1_and_1_0_are_505(app: App, line: bytes) -> None:
    """llhttp reads a line without a version as HTTP/0.9, yet goes on to read fields
    after it, and takes ``HTTP/2.0``: both were forwarded as HTTP/1.1 calls."""
    [answer], upstream = _attack(app, line + b"\r\nHost: x\r\n" + _auth(app, "GET", PATH) + b"\r\n")
    assert _status(answer) == 505
    assert b"connection: close" in answer
    assert upstream.raw() == b""
    assert app.events() == []


# -- 6. a hostile upstream's answers -------------------------------------------------------

HEAD = b"HTTP/1.1 200 OK\r\n"


@pytest.mark.parametrize(
    "reply",
    [
        HEAD + b"X-A: a\rSet-Cookie: evil=1\r\ncontent-length: 2\r\n\r\nok",
        HEAD + b"X-A: a\nSet-Cookie: evil=1\r\ncontent-length: 2\r\n\r\nok",
        HEAD + b"X-A: a\r\n Set-Cookie: evil=1\r\ncontent-length: 2\r\n\r\nok",
        HEAD + b"X-A: a\x00Set-Cookie: evil=1\r\ncontent-length: 2\r\n\r\nok",
        HEAD + b"Set Cookie: evil=1\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\nSet-Cookie: evil=1\ncontent-length: 2\n\nok",
        b"HTTP/1.1 200 OK\rSet-Cookie: evil=1\r\ncontent-length: 2\r\n\r\nok",
        HEAD + b"content-length: 2\r\ntransfer-encoding: chunked\r\n\r\n4\r\nevil\r\n0\r\n\r\n",
        HEAD + b"content-length: 2\r\ncontent-length: 4\r\n\r\nevil",
        HEAD + b"X-Big: " + b"a" * 2 * MAX_RESPONSE_HEAD + b"\r\ncontent-length: 2\r\n\r\nok",
    ],
)
def test_a_response_head_that_could_split_or_desync_the_client_is_502(
    app: App, reply: bytes
) -> None:
    app.upstream.reply = lambda _r: [reply]
    r = app.request("GET", PATH)
    _problem(r, 502)
    assert "set-cookie" not in r.headers
    assert b"evil" not in r.content
    outcome = app.events()[-1]
    assert (outcome["type"], outcome["outcome"], outcome["details"]["status"]) == (
        "tool.call",
        "failure",
        502,
    )


def test_bytes_past_content_length_on_a_closing_connection_are_dropped(app: App) -> None:
    smuggled = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nevil"
    reply = HEAD + b"Connection: close\r\ncontent-length: 2\r\n\r\nok" + smuggled
    app.upstream.reply = lambda _r: [reply, None]
    responses = asyncio.run(
        app.requests([("GET", PATH, True, {}), ("GET", "/v1/invoices/8", True, {})])
    )
    assert [(r.status_code, r.content) for r in responses] == [(200, b"ok"), (200, b"ok")]
    assert app.upstream.connections == 2


def test_response_trailer_fields_are_not_merged_into_the_header_section(app: App) -> None:
    """RFC 9112 section 7.1.2: a recipient MUST NOT merge trailer fields into the header
    section; arriving with the head, they used to reach the client as headers."""
    reply = (
        HEAD + b"transfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n"
        b"Set-Cookie: session=upstream-chosen\r\nX-Trailer: 1\r\n\r\n"
    )
    app.upstream.reply = lambda _r: [reply]
    r = app.request("GET", PATH)
    assert (r.status_code, r.content) == (200, b"ok")
    assert "set-cookie" not in r.headers
    assert "x-trailer" not in r.headers


def test_an_endless_response_trailer_section_is_cut(app: App) -> None:
    """The upstream streams one trailer field for 5 s (a read never waits past the read
    timeout): past MAX_RESPONSE_HEAD bytes without body bytes the upstream read stops
    at once, not at the total timeout; the answer had started, so the client's
    connection is cut and the call fails."""
    flood: list[Action] = [b"a" * 65536, 0.05] * 100
    head = HEAD + b"transfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: "
    app.upstream.reply = lambda _r: [head, *flood]
    started = time.monotonic()
    with pytest.raises(Exception, match="failed mid-response"):
        app.request("GET", PATH)
    assert time.monotonic() - started < 2.5
    outcome = app.events()[-1]
    assert (outcome["type"], outcome["outcome"]) == ("tool.call", "failure")


def test_an_echoed_credential_is_dropped_from_the_response_and_never_audited(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """An upstream that echoes the request's fields would hand the agent the key it
    must never see: a response field whose value holds it is dropped (a body that
    echoes it is not looked at). Cookies are relayed: they are the upstream's."""
    key = API_KEY.encode()
    reply = (
        HEAD + b"X-Echo-Api-Key: " + key + b"\r\nX-Debug: sent key=" + key + b";\r\n"
        b"Set-Cookie: s=1\r\ncontent-length: 2\r\n\r\nok"
    )
    app.upstream.reply = lambda _r: [reply]
    r = app.request("GET", PATH)
    assert (r.status_code, r.content) == (200, b"ok")
    assert API_KEY not in str(r.headers)
    assert r.headers["set-cookie"] == "s=1"
    assert API_KEY not in str(app.events())
    assert API_KEY not in caplog.text
    assert "x-echo-api-key" in caplog.text


def test_the_upstreams_authentication_challenges_are_not_relayed(app: App) -> None:
    """The upstream's challenge is about the brokered credential, which the agent does
    not hold; relayed, ``use_dpop_nonce`` or ``invalid_token`` made the agent's SDK
    refresh its token or send the call again (RFC 9449 section 9, RFC 6750 3.1)."""
    reply = (
        b"HTTP/1.1 401 Unauthorized\r\n"
        b'WWW-Authenticate: DPoP error="use_dpop_nonce"\r\nDPoP-Nonce: upstream-nonce\r\n'
        b'WWW-Authenticate: Bearer error="invalid_token"\r\nAuthentication-Info: x=1\r\n'
        b"content-length: 0\r\n\r\n"
    )
    app.upstream.reply = lambda _r: [reply]
    r = app.request("GET", PATH)
    assert r.status_code == 401
    for name in ("www-authenticate", "dpop-nonce", "authentication-info"):
        assert name not in r.headers
    assert app.events()[-1]["details"]["status"] == 401
