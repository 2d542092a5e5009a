"""The MCP gateway's httpx2 transport over the gateway's own HTTP/1.1 client
(adapters/gateway/upstream_transport.py), against a real HTTP/1.1 server on a loopback
port: requests arrive framed once and intact, connections are reused, bodies stream,
httpx2 still runs the credential's Auth flow and decodes the body, and every failure is
the httpx2 error the MCP SDK handles."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any

import httpx2
import pytest
from tests.support.live import free_port
from tests.unit.test_gateway_http import Upstream

from agentiam.adapters.gateway.upstream_transport import UpstreamTransport

JSON = b'{"jsonrpc": "2.0", "id": 7, "result": {}}'


def _answer(body: bytes, *, headers: bytes = b"content-type: application/json\r\n") -> bytes:
    return b"HTTP/1.1 200 OK\r\n%scontent-length: %d\r\n\r\n%s" % (headers, len(body), body)


def _client(port: int, **kwargs: Any) -> httpx2.AsyncClient:
    transport = UpstreamTransport(
        f"http://127.0.0.1:{port}/mcp", connect_timeout=1.0, read_timeout=0.5
    )
    return httpx2.AsyncClient(transport=transport, follow_redirects=False, **kwargs)


def _run(
    upstream: Upstream | None,
    scenario: Callable[[httpx2.AsyncClient], Awaitable[Any]],
    *,
    port: int | None = None,
) -> Any:
    """Run ``scenario`` with a client whose transport serves ``upstream`` (or ``port``,
    where nothing listens)."""
    port = upstream.port if upstream is not None else port
    assert port is not None

    async def main() -> Any:
        server = await upstream.serve() if upstream is not None else None
        try:
            async with _client(port, auth=_Credential()) as client:
                return await scenario(client)
        finally:
            if server is not None:
                server.close()

    return asyncio.run(main())


class _Credential(httpx2.Auth):
    """Stands for the brokered credential: httpx2's Auth flow still runs."""

    def auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, Any, None]:
        request.headers["x-api-key"] = "brokered"
        yield request


def test_requests_arrive_intact_framed_once_over_one_connection() -> None:
    upstream = Upstream()
    upstream.reply = lambda _r: [_answer(JSON)]
    message = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "é"}}

    async def scenario(client: httpx2.AsyncClient) -> list[Any]:
        first = await client.post(
            f"http://127.0.0.1:{upstream.port}/mcp?x=1",
            json=message,
            headers={"mcp-session-id": "s1"},
        )
        second = await client.get(f"http://127.0.0.1:{upstream.port}/mcp")
        return [first, second]

    first, second = _run(upstream, scenario)
    assert (first.status_code, first.json()) == (200, json.loads(JSON))
    assert first.http_version == "HTTP/1.1"
    assert second.status_code == 200
    posted, got = upstream.requests
    assert (posted.method, posted.target) == ("POST", b"/mcp?x=1")
    assert json.loads(posted.body) == message
    assert posted.header("content-length") == str(len(posted.body))
    assert posted.header("transfer-encoding") is None
    assert posted.header("host") == f"127.0.0.1:{upstream.port}"  # once: header() asserts it
    assert posted.header("mcp-session-id") == "s1"
    assert posted.header("x-api-key") == "brokered"
    assert (got.method, got.body, got.header("content-length")) == ("GET", b"", None)
    assert upstream.connections == 1  # kept alive and reused


def test_a_streamed_body_is_handed_on_as_it_arrives_and_decoded() -> None:
    """An SSE answer, chunked, arrives event by event; a gzip-encoded one is decoded by
    httpx2, as with its own transport."""
    upstream = Upstream()
    events = [b"event: message\r\ndata: 1\r\n\r\n", b"event: message\r\ndata: 2\r\n\r\n"]
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    packed = gzip.compress(JSON)

    def reply(request: Any) -> list[bytes | float | None]:
        if request.target == b"/mcp/gz":
            return [_answer(packed, headers=b"content-encoding: gzip\r\n")]
        chunks: list[bytes | float | None] = [head]
        for event in events:
            chunks += [b"%x\r\n%s\r\n" % (len(event), event), 0.05]
        return [*chunks, b"0\r\n\r\n"]

    upstream.reply = reply

    async def scenario(client: httpx2.AsyncClient) -> tuple[list[bytes], bytes]:
        url = f"http://127.0.0.1:{upstream.port}/mcp"
        async with client.stream("GET", url) as response:
            seen = [chunk async for chunk in response.aiter_raw()]
        decoded = await client.get(url + "/gz")
        return seen, decoded.content

    seen, decoded = _run(upstream, scenario)
    assert seen == events  # one chunk per event, in order, not held whole
    assert decoded == JSON
    assert upstream.connections == 1  # the streamed body was read to its end: reused


async def _post(client: httpx2.AsyncClient, port: int) -> httpx2.Response:
    return await client.post(f"http://127.0.0.1:{port}/mcp", json={"id": 1})


def test_failures_are_the_httpx2_errors_the_sdk_handles() -> None:
    refused = free_port()
    with pytest.raises(httpx2.ConnectError, match="cannot connect"):
        _run(None, lambda client: _post(client, refused), port=refused)

    silent = Upstream()
    silent.reply = lambda _r: [5.0]  # never answers within the read timeout (0.5 s)
    with pytest.raises(httpx2.ReadTimeout):
        _run(silent, lambda client: _post(client, silent.port))

    garbled = Upstream()
    garbled.reply = lambda _r: [b"NOT HTTP AT ALL\r\n\r\n"]
    with pytest.raises(httpx2.RemoteProtocolError, match="malformed"):
        _run(garbled, lambda client: _post(client, garbled.port))

    cut = Upstream()
    cut.reply = lambda _r: [b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n{", None]

    async def read_all(client: httpx2.AsyncClient) -> bytes:
        return (await _post(client, cut.port)).content

    with pytest.raises(httpx2.RemoteProtocolError, match="mid-body"):
        _run(cut, read_all)


def test_a_request_for_another_host_is_not_sent() -> None:
    """The transport serves the upstream host it was made for: a request to another
    host (a redirect followed elsewhere, say) fails before anything is sent, so the
    brokered credential never leaves; another port of the same host (the SDK follows
    an upgrade to https there) gets a pool of its own."""
    upstream, other = Upstream(), Upstream()
    upstream.reply = other.reply = lambda _r: [_answer(JSON)]

    async def elsewhere(client: httpx2.AsyncClient) -> None:
        await client.post(f"http://localhost:{upstream.port}/mcp", json={"id": 1})

    with pytest.raises(httpx2.ConnectError, match="one upstream host"):
        _run(upstream, elsewhere)
    assert upstream.connections == 0

    async def same_host(client: httpx2.AsyncClient) -> int:
        server = await other.serve()
        try:
            return (await _post(client, other.port)).status_code
        finally:
            if server is not None:
                server.close()

    assert _run(upstream, same_host) == 200
    assert other.connections == 1
    assert other.requests[0].header("x-api-key") == "brokered"


def test_an_empty_body_is_sent_with_its_length() -> None:
    upstream = Upstream()
    upstream.reply = lambda _r: [_answer(JSON)]

    async def scenario(client: httpx2.AsyncClient) -> httpx2.Response:
        return await client.post(f"http://127.0.0.1:{upstream.port}/mcp", content=b"")

    assert _run(upstream, scenario).status_code == 200
    (posted,) = upstream.requests
    assert (posted.header("content-length"), posted.body) == ("0", b"")


def test_a_streamed_request_body_goes_chunked() -> None:
    upstream = Upstream()
    upstream.reply = lambda _r: [_answer(JSON)]

    async def parts() -> AsyncIterator[bytes]:
        yield b'{"a": '
        yield b"1}"

    async def scenario(client: httpx2.AsyncClient) -> httpx2.Response:
        return await client.post(f"http://127.0.0.1:{upstream.port}/mcp", content=parts())

    assert _run(upstream, scenario).status_code == 200
    (posted,) = upstream.requests
    assert posted.header("transfer-encoding") == "chunked"
    assert posted.header("content-length") is None
    assert posted.body == b'{"a": 1}'


def test_a_response_body_past_the_bound_fails_and_its_connection_is_not_reused() -> None:
    """An upstream answer longer than the bound (MAX_RESPONSE_BYTES, lowered here) fails
    as RemoteProtocolError naming the limit, framed by length or chunked, and its
    connection is closed; an answer within the bound passes whole."""
    upstream = Upstream()
    big = b"x" * 5000

    def reply(request: Any) -> list[bytes | float | None]:
        if request.target == b"/mcp/chunked":
            head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            return [head, *(b"%x\r\n%s\r\n" % (1000, big[:1000]) for _ in range(5)), b"0\r\n\r\n"]
        if request.target == b"/mcp/small":
            return [_answer(big[:1024])]
        return [_answer(big)]

    upstream.reply = reply

    async def scenario(_client: httpx2.AsyncClient) -> list[Any]:
        transport = UpstreamTransport(
            f"http://127.0.0.1:{upstream.port}/mcp",
            connect_timeout=1.0,
            read_timeout=0.5,
            max_body_bytes=1024,
        )
        out: list[Any] = []
        async with httpx2.AsyncClient(transport=transport) as client:
            for path in ("/mcp", "/mcp/chunked", "/mcp/small"):
                try:
                    out.append(
                        (await client.get(f"http://127.0.0.1:{upstream.port}{path}")).content
                    )
                except httpx2.RemoteProtocolError as exc:
                    out.append(str(exc))
        return out

    whole, chunked, small = _run(upstream, scenario)
    assert (
        whole
        == chunked
        == ("the upstream's response is larger than 1024 bytes (MAX_RESPONSE_BYTES)")
    )
    assert small == big[:1024]  # exactly the bound passes
    assert upstream.connections == 3  # a cut connection is closed, never reused
