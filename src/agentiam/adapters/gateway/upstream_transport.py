"""An httpx2 transport over the gateway's own HTTP/1.1 client, for the MCP SDK.

The MCP gateway talks to its upstream servers through the official SDK's Streamable
HTTP client, which sends its requests with an ``httpx2.AsyncClient``. Under load,
httpx2's own transport (httpcore2) spent about a fifth of the gateway's event-loop time
choosing a connection: before every request its pool asks every idle connection
whether its socket is readable (a ``poll`` system call each). :class:`UpstreamTransport`
hands the SDK's requests to :class:`~agentiam.adapters.gateway.http_upstream.UpstreamPool`
instead, the HTTP gateway's client (keep-alive connections in a LIFO pool, framing by
``httptools``), so the SDK still speaks MCP and httpx2 still applies the credential
(its ``Auth`` flow) and decodes the body; only the HTTP/1.1 exchange is ours.

- **One origin.** A transport serves the origin it was made for; a request for any
  other (a redirect the SDK would follow elsewhere) fails as a connection error and
  nothing is sent.
- **Timeouts** are the pool's: ``connect`` to open a connection, ``read`` for every
  wait on the upstream (the SDK's streamable HTTP client sends every request with
  the client's timeouts, which the gateway sets to the same values).
- **Errors** are httpx2's, so the SDK handles them as before: ``ConnectTimeout`` and
  ``ConnectError`` when no connection could be opened, ``ReadTimeout`` when the
  upstream does not answer in time, ``RemoteProtocolError`` for everything else.
- **Framing.** The request's ``Host``, ``Content-Length`` and ``Transfer-Encoding``
  are set by the pool (RFC 9112 section 6); the body streams either way.
- Not supported here: proxies (``HTTP(S)_PROXY`` are ignored, as by the HTTP
  gateway), HTTP/2.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx2

from agentiam.adapters.gateway.http_upstream import (
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeout,
)

__all__ = ["UpstreamTransport"]

# set by the pool from the request it writes (RFC 9112 sections 3.2 and 6)
_SET_BY_THE_POOL = frozenset({b"host", b"content-length", b"transfer-encoding"})


def _origin(scheme: str, host: str, port: int | None) -> tuple[str, str, int]:
    return scheme, host.lower(), port or (443 if scheme == "https" else 80)


def _mapped(exc: UpstreamError, request: httpx2.Request) -> httpx2.TransportError:
    """The httpx2 error the SDK expects for ``exc``."""
    message = str(exc)
    if isinstance(exc, UpstreamConnectTimeout):
        return httpx2.ConnectTimeout(message, request=request)
    if isinstance(exc, UpstreamConnectError):
        return httpx2.ConnectError(message, request=request)
    if isinstance(exc, UpstreamTimeout):
        return httpx2.ReadTimeout(message, request=request)
    return httpx2.RemoteProtocolError(message, request=request)


class _Body(httpx2.AsyncByteStream):
    """The upstream's response body, streamed; closing it returns the connection."""

    def __init__(self, response: UpstreamResponse, request: httpx2.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.body():
                yield chunk
        except UpstreamError as exc:
            raise _mapped(exc, self._request) from None

    async def aclose(self) -> None:
        await self._response.aclose()


async def _chunks(stream: httpx2.AsyncByteStream) -> AsyncIterator[bytes]:
    async for chunk in stream:
        yield chunk


class UpstreamTransport(httpx2.AsyncBaseTransport):
    """Send an ``httpx2.AsyncClient``'s requests to one upstream origin over
    :class:`~agentiam.adapters.gateway.http_upstream.UpstreamPool`."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        self._origin = _origin(parts.scheme, parts.hostname or "", parts.port)
        self._pool = UpstreamPool(
            url,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            ssl_context=ssl_context,
        )

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        if _origin(url.scheme, url.host, url.port) != self._origin:
            raise httpx2.ConnectError("this transport serves one upstream origin", request=request)
        headers: list[tuple[bytes, bytes]] = []
        length: int | None = None
        chunked = False
        for name, value in request.headers.raw:
            lower = name.lower()
            if lower == b"content-length":
                length = int(value)
            elif lower == b"transfer-encoding":
                chunked = True
            if lower not in _SET_BY_THE_POOL:
                headers.append((lower, value))
        stream = request.stream
        if not isinstance(stream, httpx2.AsyncByteStream):  # an AsyncClient's never is
            raise httpx2.RemoteProtocolError("a request body must stream", request=request)
        body = _chunks(stream) if length or chunked else None
        try:
            response = await self._pool.request(
                request.method,
                url.raw_path,
                headers,
                body,
                content_length=length if body is not None and not chunked else None,
            )
        except UpstreamError as exc:
            raise _mapped(exc, request) from None
        return httpx2.Response(
            response.status,
            headers=response.headers,
            stream=_Body(response, request),
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        await self._pool.aclose()
