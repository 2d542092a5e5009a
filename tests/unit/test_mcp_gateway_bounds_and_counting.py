"""The MCP gateway below the endpoint: decoded bounds, and requests that take a token.

The upstream transport, against a real HTTP/1.1 server on a loopback port
(``tests.unit.test_gateway_http.Upstream``):

- a compressed answer is bounded once decoded too, not only on the wire: a gzip bomb
  fails as ``RemoteProtocolError`` naming the bound, having handed on at most the
  bound, and its connection is closed;
- the transport asks for the codings it decodes itself (``Accept-Encoding: gzip,
  deflate``) whatever the client set, and refuses an answer in any other coding;
- gzip (also several members), zlib-wrapped and raw deflate are decoded; a truncated
  or corrupt one fails.

The rate limit of requests that are not calls (``Enforcer.admit_request``: an MCP
``initialize`` or a listing), with the real enforcer (tests.unit.gateway_support) and
the replicas' shared buckets on the real Redis: the agent's own buckets only, the 429
audited with the method as its action.
"""

from __future__ import annotations

import asyncio
import gzip
import zlib
from typing import Any

import httpx2
import pytest
from tests.conftest import REDIS_URL
from tests.unit.gateway_support import AGENT, Parties
from tests.unit.test_gateway_enforcer import _access
from tests.unit.test_gateway_http import Upstream
from tests.unit.test_gateway_upstream_transport import JSON, _answer

from agentiam.adapters.gateway.enforcer import SharedLimit
from agentiam.adapters.gateway.shared_ratelimit import SharedRateLimits
from agentiam.adapters.gateway.shared_redis import SharedRedis
from agentiam.adapters.gateway.upstream_transport import UpstreamTransport
from agentiam.core.audit.events import TraceContext
from agentiam.core.enforcement.ratelimit import RateLimit, RateLimiter, Throttle

LIMIT = 1 << 20  # the response bound of these tests (MAX_RESPONSE_BYTES is 16 MiB)


def bomb(decoded: int, *, wbits: int = 31) -> bytes:
    """``decoded`` zero bytes compressed (gzip with ``wbits`` 31, zlib 15, raw -15)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
    block = bytes(1 << 20)
    parts = [packer.compress(block) for _ in range(decoded >> 20)]
    parts.append(packer.compress(bytes(decoded & ((1 << 20) - 1))))
    parts.append(packer.flush())
    return b"".join(parts)


def _encoded(body: bytes, coding: bytes, *, chunked: bool = False) -> list[Any]:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: %s\r\n" % coding
    if not chunked:
        return [head + b"content-length: %d\r\n\r\n" % len(body) + body]
    out: list[Any] = [head + b"transfer-encoding: chunked\r\n\r\n"]
    for start in range(0, len(body), 4096):
        piece = body[start : start + 4096]
        out.append(b"%x\r\n%s\r\n" % (len(piece), piece))
    return [*out, b"0\r\n\r\n"]


def _stream(
    upstream: Upstream,
    paths: list[str],
    *,
    limit: int = LIMIT,
    stop_after: int | None = None,
    headers: dict[str, str] | None = None,
) -> list[tuple[int, str | None]]:
    """GET each path through an ``UpstreamTransport`` bounded at ``limit``: per path the
    bytes handed on (read chunk by chunk, never held) and the error, if any. Reading
    stops past ``stop_after`` bytes (so an unbounded transport does not inflate a bomb
    whole)."""

    async def main() -> list[tuple[int, str | None]]:
        server = await upstream.serve()
        transport = UpstreamTransport(
            f"http://127.0.0.1:{upstream.port}/mcp",
            connect_timeout=1.0,
            read_timeout=2.0,
            max_body_bytes=limit,
        )
        out: list[tuple[int, str | None]] = []
        try:
            async with httpx2.AsyncClient(transport=transport, headers=headers) as client:
                for path in paths:
                    seen, error = 0, None
                    try:
                        url = f"http://127.0.0.1:{upstream.port}{path}"
                        async with client.stream("GET", url) as response:
                            async for chunk in response.aiter_bytes():
                                seen += len(chunk)
                                if stop_after is not None and seen > stop_after:
                                    break
                    except httpx2.HTTPError as exc:
                        error = f"{type(exc).__name__}: {exc}"
                    out.append((seen, error))
        finally:
            assert server is not None
            server.close()
        return out

    return asyncio.run(main())


def test_a_gzip_bomb_fails_once_decoded_past_the_bound() -> None:
    """64 MiB of zeros in 64 KiB of gzip (within the wire bound): the transport stops
    decoding past the bound, hands on no more than the bound, and closes the
    connection; an answer exactly at the bound passes whole."""
    packed = bomb(64 << 20)
    assert len(packed) < LIMIT  # the wire bound alone lets it through
    exact = bomb(LIMIT)
    upstream = Upstream()

    def reply(request: Any) -> list[Any]:
        if request.target == b"/mcp/exact":
            return _encoded(exact, b"gzip")
        return _encoded(packed, b"gzip", chunked=request.target == b"/mcp/chunked")

    upstream.reply = reply
    results = _stream(upstream, ["/mcp", "/mcp/chunked", "/mcp/exact"], stop_after=4 * LIMIT)
    for seen, error in results[:2]:
        assert error == (
            f"RemoteProtocolError: the upstream's response is larger than {LIMIT} bytes "
            "once decoded (MAX_RESPONSE_BYTES)"
        )
        assert seen <= LIMIT
    assert results[2] == (LIMIT, None)
    assert upstream.connections == 3  # a cut connection is closed, never reused


@pytest.mark.parametrize(
    ("coding", "wbits"),
    [(b"gzip", 31), (b"x-gzip", 31), (b"deflate", 15), (b"deflate", -15), (b"GZip", 31)],
)
def test_gzip_and_deflate_answers_are_decoded(coding: bytes, wbits: int) -> None:
    """gzip, zlib-wrapped deflate (RFC 9110 section 8.4.1.2) and the raw deflate some
    servers send; an answer's coding names are case-insensitive."""
    packer = zlib.compressobj(6, zlib.DEFLATED, wbits)
    packed = packer.compress(JSON) + packer.flush()
    upstream = Upstream()
    upstream.reply = lambda _r: _encoded(packed, coding)

    async def main() -> httpx2.Response:
        server = await upstream.serve()
        transport = UpstreamTransport(
            f"http://127.0.0.1:{upstream.port}/mcp", connect_timeout=1.0, read_timeout=2.0
        )
        try:
            async with httpx2.AsyncClient(transport=transport) as client:
                return await client.get(f"http://127.0.0.1:{upstream.port}/mcp")
        finally:
            assert server is not None
            server.close()

    response = asyncio.run(main())
    assert response.content == JSON
    assert "content-encoding" not in response.headers  # decoded: httpx2 must not again
    assert "content-length" not in response.headers  # that of the encoded body


def test_several_gzip_members_are_one_body() -> None:
    """RFC 1952 section 2.2: a gzip file is a series of members."""
    upstream = Upstream()
    upstream.reply = lambda _r: _encoded(gzip.compress(b"ab") + gzip.compress(b"cd"), b"gzip")

    async def main() -> bytes:
        server = await upstream.serve()
        transport = UpstreamTransport(
            f"http://127.0.0.1:{upstream.port}/mcp", connect_timeout=1.0, read_timeout=2.0
        )
        try:
            async with httpx2.AsyncClient(transport=transport) as client:
                return (await client.get(f"http://127.0.0.1:{upstream.port}/mcp")).content
        finally:
            assert server is not None
            server.close()

    assert asyncio.run(main()) == b"abcd"


def test_the_transport_asks_only_for_the_codings_it_decodes() -> None:
    """Whatever the client's Accept-Encoding (httpx2 would add br or zstd when their
    packages are installed), the upstream is asked for gzip and deflate only."""
    upstream = Upstream()
    upstream.reply = lambda _r: [_answer(JSON)]
    _stream(upstream, ["/mcp"], headers={"Accept-Encoding": "br, zstd, gzip"})
    _stream(upstream, ["/mcp"])
    assert [r.header("accept-encoding") for r in upstream.requests] == ["gzip, deflate"] * 2


@pytest.mark.parametrize(
    "coding", [b"br", b"zstd", b"compress", b"gzip, gzip", b"deflate, br", b"x-custom"]
)
def test_an_answer_in_a_coding_not_asked_for_is_refused(coding: bytes) -> None:
    """An answer in a coding the gateway did not ask for (or several codings stacked)
    fails as RemoteProtocolError before any of it is handed on; before, httpx2 passed
    a coding it does not know on undecoded, as if it were the body."""
    upstream = Upstream()
    upstream.reply = lambda _r: _encoded(b"\x1f\x8b\x08" + b"?" * 100, coding)
    ((seen, error),) = _stream(upstream, ["/mcp"])
    assert seen == 0
    assert error is not None
    assert error.startswith("RemoteProtocolError: the upstream's response is encoded with ")
    assert "which the gateway did not ask for" in error


def test_identity_is_no_coding() -> None:
    upstream = Upstream()
    upstream.reply = lambda _r: _encoded(JSON, b"identity")
    assert _stream(upstream, ["/mcp"]) == [(len(JSON), None)]


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "trailing"])
def test_a_damaged_compressed_answer_fails(damage: str) -> None:
    packed = gzip.compress(JSON * 50)
    body = {
        "truncated": packed[: len(packed) // 2],
        "corrupt": packed[:10] + b"\xff" * 20 + packed[30:],
        "trailing": zlib.compress(JSON) + b"garbage",
    }[damage]
    coding = b"deflate" if damage == "trailing" else b"gzip"
    upstream = Upstream()
    upstream.reply = lambda _r: _encoded(body, coding)
    ((_seen, error),) = _stream(upstream, ["/mcp"])
    assert error is not None
    assert error.startswith("RemoteProtocolError: the upstream's ")


# -- the rate limit of requests that are not calls ---------------------------------------

ALLOW = "permit (principal, action, resource);"
TRACE = TraceContext.new()


def test_a_request_that_is_not_a_call_takes_from_the_agents_bucket_only() -> None:
    """initialize and listings share the agent's per_agent bucket with its calls; a
    per-tool limit (even ``*``) never applies to them; the refusal is a 429 with
    Retry-After, audited with the method as its action."""
    limiter = RateLimiter(
        per_agent=RateLimit(rate_per_second=1 / 60, burst=2),
        per_tool={"*": RateLimit(rate_per_second=1 / 600, burst=1)},
    )
    parties = Parties(ALLOW, limiter=limiter)
    access = _access(parties)
    enforcer = parties.enforcer
    assert enforcer.admit_request(access, "initialize", trace=TRACE) is None
    assert enforcer.admit_request(access, "tools/list", trace=TRACE) is None
    refused = enforcer.admit_request(access, "initialize", trace=TRACE)
    assert refused is not None
    assert (refused.status, refused.error, refused.reason) == (
        429,
        "rate_limited",
        "rate limit for initialize exceeded",
    )
    assert refused.headers == {"Retry-After": "60"}
    assert len(limiter) == 1  # the agent's bucket: no tool bucket was made
    (event,) = parties.sink.events
    assert (event["type"], event["action"], event["details"]["status"]) == (
        "api.request.rejected",
        "initialize",
        429,
    )
    assert event["details"]["tool"] is None
    assert event["reason"] == "rate limit for initialize exceeded"


def test_without_a_per_agent_limit_requests_are_not_limited_but_throttles_hold() -> None:
    limiter = RateLimiter(per_tool={"*": RateLimit(rate_per_second=1 / 600, burst=1)})
    parties = Parties(ALLOW, limiter=limiter)
    access = _access(parties)
    for _ in range(5):
        assert parties.enforcer.admit_request(access, "tools/list", trace=TRACE) is None
    # an automatic response's throttle caps everything the agent does
    limiter.set_throttles([Throttle(AGENT, per_minute=1, until=2**40)])
    assert parties.enforcer.admit_request(access, "tools/list", trace=TRACE) is None
    refused = parties.enforcer.admit_request(access, "tools/list", trace=TRACE)
    assert refused is not None
    assert refused.status == 429


def test_the_shared_buckets_answer_for_replicas(redis_prefix: str) -> None:
    """With replicas, the agent's shared bucket is charged once by shared_admit (no
    tool), and admit_request takes that answer without charging this process's."""
    limiter = RateLimiter(per_agent=RateLimit(rate_per_second=1 / 60, burst=1))
    parties = Parties(ALLOW, limiter=limiter)
    parties.enforcer.shared_limits = SharedRateLimits(
        SharedRedis(REDIS_URL, prefix=redis_prefix, timeout=1.0)
    )
    access = _access(parties)

    async def two() -> list[SharedLimit | None]:
        try:
            return [
                (await parties.enforcer.shared_admit(access, charge=True)).limit for _ in range(2)
            ]
        finally:
            assert parties.enforcer.shared_limits is not None
            await parties.enforcer.shared_limits.aclose()

    first, second = asyncio.run(two())
    assert first == SharedLimit(None)
    assert second == SharedLimit(60)
    assert parties.enforcer.admit_request(access, "initialize", trace=TRACE, limit=first) is None
    refused = parties.enforcer.admit_request(access, "initialize", trace=TRACE, limit=second)
    assert refused is not None
    assert refused.headers == {"Retry-After": "60"}
    assert len(limiter) == 0  # this process's buckets were not charged
