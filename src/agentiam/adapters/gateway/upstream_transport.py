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

- **One upstream host.** A transport serves the host it was made for, with a pool
  per origin: the configured one, and another scheme or port on the same host (the
  SDK follows a redirect from ``http`` to ``https`` on the same host; at most
  four origins). A request for any other host fails as a connection error and
  nothing is sent, so the brokered credential never leaves for another host. Hosts
  are compared as httpx2 normalises them (lower case, internationalised names
  decoded) and connected to in their ASCII form.
- **Timeouts** are the pool's: ``connect`` to open a connection, ``read`` for every
  wait on the upstream (the SDK's streamable HTTP client sends every request with
  the client's timeouts, which the gateway sets to the same values).
- **Bounded answers.** A response body (on the wire, after the transfer coding is
  removed) longer than :data:`MAX_RESPONSE_BYTES` is cut: the connection is closed
  and the body fails with ``RemoteProtocolError`` naming the limit, which the
  gateway answers as a failed call (502, audited). The SDK client would otherwise
  buffer a result of any size, and the gateway copy it twice more.
- **Content codings** (RFC 9110 section 8.4) are decoded here, not by httpx2, so that
  the decoded body is bounded too: at most :data:`MAX_RESPONSE_BYTES` once decoded
  as well as on the wire (a gzip bomb of a few KiB would otherwise inflate to GiBs
  in the gateway). Decoding goes in steps of :data:`_DECODE_STEP` bytes and stops
  past the bound (the same ``RemoteProtocolError``, the connection closed), so no
  more than the bound plus one step is ever decoded. Every request asks for
  ``Accept-Encoding: gzip, deflate`` (section 12.5.3), whatever the client set
  (httpx2 adds ``br`` and ``zstd`` when their packages are installed); an answer in
  any other coding, or in several stacked, is refused (``RemoteProtocolError``)
  before any of it is handed on. ``gzip`` (``x-gzip``; a series of members, RFC 1952
  section 2.2), ``deflate`` (zlib, RFC 1950, or the raw deflate some servers send)
  and ``identity`` are taken; a truncated or corrupt body, or bytes after the end of
  a deflate stream, fail. The response reaches httpx2 without ``Content-Encoding``
  and ``Content-Length`` (those of the encoded body).
- **An echoed credential** (the brokered one, which an upstream that reflects its
  request hands back: a tool returning the request's headers, an error quoting
  ``Authorization``) is masked in the body before the SDK parses it: the request
  names it in its :data:`ECHO_EXTENSION` extension (the gateway's auth hook sets it to
  the forms of the credential it added, the broker's, computed once per credential:
  :class:`~agentiam.adapters.gateway.broker.Injection`), and every occurrence in
  the response body, decoded when it was in a content coding, of the credential as
  sent or encoded (a JSON string, also inside another one, percent-encoding, HTML,
  base64, hex:
  :class:`~agentiam.adapters.gateway.echo_mask.EchoForms`) is replaced by as many
  ``*`` bytes (:class:`~agentiam.adapters.gateway.echo_mask.EchoMask`, also across
  chunks): the JSON or event stream keeps its framing and stays valid (``*`` needs
  no escaping in a JSON string; a form holding an escape sequence is masked whole).
  ``on_echo`` is called, in the task of the request, with the occurrences masked in
  each chunk, as they are masked (before the SDK can parse the message holding them)
  and whether they are the response's first. A request without the extension costs
  nothing (no mask). The response's header fields reach the SDK, which reads
  ``Content-Type`` and ``Mcp-Session-Id`` from them; none is relayed to the agent.
- **Errors** are httpx2's, so the SDK handles them as before: ``ConnectTimeout`` and
  ``ConnectError`` when no connection could be opened, ``ReadTimeout`` when the
  upstream does not answer in time, ``RemoteProtocolError`` for everything else. The
  SDK does not pass a timeout on as one (a ``ReadTimeout`` ends its session: the call
  fails with "Connection closed"), so ``on_timeout`` is called, in the task of the
  request, before a timeout is raised: the gateway counts the call as timed out.
- **Framing.** The request's ``Host``, ``Content-Length`` and ``Transfer-Encoding``
  are set by the pool (RFC 9112 section 6) from the request's own: a body streams
  with its length (``Content-Length: 0`` included) or chunked.
- **TLS** is the pool's: ``ssl_context``, made from the server's ``tls`` setting
  (:class:`~agentiam.adapters.gateway.config.UpstreamTls`), else OpenSSL's default
  trust store (``ssl.create_default_context``; on Linux the system's CA bundle), not
  the ``truststore`` package httpx2 would use.
- Not supported here: proxies (``HTTP(S)_PROXY`` are ignored, as by the HTTP
  gateway), HTTP/2.
"""

from __future__ import annotations

import ssl
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Final

import httpx2

from agentiam.adapters.gateway.echo_mask import EchoForms, EchoMask
from agentiam.adapters.gateway.http_upstream import (
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeout,
)

__all__ = ["ACCEPT_ENCODING", "ECHO_EXTENSION", "MAX_RESPONSE_BYTES", "OnEcho", "UpstreamTransport"]

MAX_RESPONSE_BYTES: Final = 16 * 1024 * 1024  # one upstream response body, at most
# what every request asks for: the codings :class:`_Inflater` decodes (RFC 9110 12.5.3)
ACCEPT_ENCODING: Final = b"gzip, deflate"
# the request extension naming the brokered credential the request carries, whose echo
# in the response body is masked (its EchoForms; absent or None: nothing is masked)
ECHO_EXTENSION: Final = "agentiam.echo"
# called with the occurrences of the credential masked in one chunk of a response, and
# whether they are the first of that response
OnEcho = Callable[[int, bool], None]
_DECODE_STEP: Final = 64 * 1024  # decoded bytes at most per step of the inflater
# the zlib window bits of each coding taken: gzip (RFC 1952), zlib-wrapped deflate (RFC 1950)
_CODINGS: Final = {"gzip": zlib.MAX_WBITS | 16, "x-gzip": zlib.MAX_WBITS | 16,
                   "deflate": zlib.MAX_WBITS}  # fmt: skip

# set by the pool from the request it writes (RFC 9112 sections 3.2 and 6)
_SET_BY_THE_POOL = frozenset({b"host", b"content-length", b"transfer-encoding"})
_MAX_ORIGINS = 4  # origins of the one host (scheme, port) a transport keeps pools for

Origin = tuple[str, str, int]


def _origin(url: httpx2.URL) -> Origin:
    return url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80)


def _mapped(
    exc: UpstreamError, request: httpx2.Request, on_timeout: Callable[[], None] | None
) -> httpx2.TransportError:
    """The httpx2 error the SDK expects for ``exc`` (``on_timeout`` called first when it
    is a timeout)."""
    message = str(exc)
    if isinstance(exc, UpstreamTimeout) and on_timeout is not None:
        on_timeout()
    if isinstance(exc, UpstreamConnectTimeout):
        return httpx2.ConnectTimeout(message, request=request)
    if isinstance(exc, UpstreamConnectError):
        return httpx2.ConnectError(message, request=request)
    if isinstance(exc, UpstreamTimeout):
        return httpx2.ReadTimeout(message, request=request)
    return httpx2.RemoteProtocolError(message, request=request)


def _echo_forms(request: httpx2.Request) -> EchoForms | None:
    """The forms of the credential ``request`` carries (its :data:`ECHO_EXTENSION`
    extension)."""
    forms = request.extensions.get(ECHO_EXTENSION)
    return forms if isinstance(forms, EchoForms) else None


class _Damaged(Exception):
    """The compressed body is not valid in its coding."""


class _Inflater:
    """Decodes one body in a ``gzip`` or ``deflate`` coding, in pieces of at most
    :data:`_DECODE_STEP` bytes, so that the caller can stop at its bound before more
    is decoded (zlib's ``max_length``)."""

    def __init__(self, coding: str) -> None:
        self._coding = coding
        self._zlib = zlib.decompressobj(_CODINGS[coding])
        self._fresh = True  # nothing decoded yet: a deflate body may still be raw
        self._ended = False  # the last stream (member) ended

    def decode(self, data: bytes) -> Iterator[bytes]:
        """The decoded pieces of ``data``, the next bytes of the body."""
        while True:
            if self._ended:
                if not data:
                    return
                if self._coding == "deflate":  # one stream: nothing may follow it
                    raise _Damaged("bytes after the end of the deflate stream")
                # gzip: another member (RFC 1952 section 2.2)
                self._zlib = zlib.decompressobj(_CODINGS[self._coding])
                self._ended = False
            try:
                piece = self._zlib.decompress(data, _DECODE_STEP)
            except zlib.error:
                if not (self._fresh and self._coding == "deflate"):
                    raise _Damaged("the compressed body is corrupt") from None
                # the raw deflate (RFC 1951) some servers send as "deflate"
                self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
                self._fresh = False
                continue
            self._fresh = False
            if piece:
                yield piece
            if self._zlib.eof:
                self._ended = True
                data = self._zlib.unused_data
                continue
            # input the step left over; with none, zlib may still hold output (the
            # step was full): ask again until it gives nothing
            data = self._zlib.unconsumed_tail
            if not data and not piece:
                return

    def finish(self) -> None:
        """At the end of the body: it must be complete (else truncated)."""
        if not self._fresh and not self._ended:
            raise _Damaged("the compressed body is truncated")


def _coding(headers: list[tuple[bytes, bytes]]) -> list[str]:
    """The content codings of a response, in the order applied (RFC 9110 section 8.4),
    lower case, without ``identity``."""
    codings: list[str] = []
    for name, value in headers:
        if name == b"content-encoding":
            for part in value.decode("latin-1").split(","):
                coding = part.strip().lower()
                if coding and coding != "identity":
                    codings.append(coding)
    return codings


class _Body(httpx2.AsyncByteStream):
    """The upstream's response body, streamed, decoded when ``coding`` is set; at most
    ``limit`` bytes on the wire and ``limit`` bytes once decoded; with every
    occurrence of a credential's ``forms`` (decoded) masked, ``on_echo`` told.
    Closing it returns the connection."""

    def __init__(
        self,
        response: UpstreamResponse,
        request: httpx2.Request,
        limit: int,
        coding: str | None = None,
        on_timeout: Callable[[], None] | None = None,
        forms: EchoForms | None = None,
        on_echo: OnEcho | None = None,
    ) -> None:
        self._response = response
        self._request = request
        self._limit = limit
        self._coding = coding
        self._on_timeout = on_timeout
        self._mask = EchoMask(forms) if forms is not None else None
        self._on_echo = on_echo

    def _refuse(self, what: str) -> httpx2.RemoteProtocolError:
        self._response.abort()  # the rest is never read: never reused
        return httpx2.RemoteProtocolError(what, request=self._request)

    def _masked(self, piece: bytes) -> bytes:
        """``piece`` with the credential masked (a tail that may begin it held back
        for the next piece); ``on_echo`` told of the occurrences masked."""
        mask = self._mask
        assert mask is not None
        before = mask.masked
        piece = mask.feed(piece)
        if mask.masked != before and self._on_echo is not None:
            self._on_echo(mask.masked - before, before == 0)
        return piece

    def __aiter__(self) -> AsyncIterator[bytes]:
        # no credential to mask: the decoded body as it is, no step more per chunk
        return self._decoded() if self._mask is None else self._masking()

    async def _masking(self) -> AsyncIterator[bytes]:
        async for piece in self._decoded():
            if piece := self._masked(piece):
                yield piece
        assert self._mask is not None
        if tail := self._mask.flush():
            yield tail

    async def _decoded(self) -> AsyncIterator[bytes]:
        wire = decoded = self._limit
        inflater = _Inflater(self._coding) if self._coding is not None else None
        try:
            async for chunk in self._response.body():
                wire -= len(chunk)
                if wire < 0:
                    raise self._refuse(
                        f"the upstream's response is larger than {self._limit} bytes "
                        "(MAX_RESPONSE_BYTES)"
                    )
                if inflater is None:
                    yield chunk
                    continue
                for piece in inflater.decode(chunk):
                    decoded -= len(piece)
                    if decoded < 0:
                        raise self._refuse(
                            f"the upstream's response is larger than {self._limit} bytes "
                            "once decoded (MAX_RESPONSE_BYTES)"
                        )
                    yield piece
            if inflater is not None:
                inflater.finish()
        except UpstreamError as exc:
            raise _mapped(exc, self._request, self._on_timeout) from None
        except _Damaged as exc:
            raise self._refuse(f"the upstream's {self._coding} response: {exc}") from None

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
        max_body_bytes: int | None = None,
        on_timeout: Callable[[], None] | None = None,
        on_echo: OnEcho | None = None,
    ) -> None:
        """``max_body_bytes``: the bound of one response body (default
        :data:`MAX_RESPONSE_BYTES`); ``on_timeout``: called (in the request's task)
        before a connect or read timeout is raised; ``on_echo``: called (in the
        request's task) when the credential a request names (:data:`ECHO_EXTENSION`) is
        masked in its response body."""
        configured = httpx2.URL(url)
        self._max_body = MAX_RESPONSE_BYTES if max_body_bytes is None else max_body_bytes
        self._host = configured.host
        self._timeouts = (connect_timeout, read_timeout)
        self._ssl = ssl_context
        self._on_timeout = on_timeout
        self._on_echo = on_echo
        self._pools: dict[Origin, UpstreamPool] = {}
        self._pool_for(configured)

    def _pool_for(self, url: httpx2.URL) -> UpstreamPool | None:
        """The pool for ``url``'s origin; None for another host (or past the bound)."""
        if url.host != self._host or url.scheme not in ("http", "https"):
            return None
        origin = _origin(url)
        pool = self._pools.get(origin)
        if pool is None and len(self._pools) < _MAX_ORIGINS:
            scheme, _, port = origin
            host = url.raw_host.decode("ascii")
            host = f"[{host}]" if ":" in host else host
            connect, read = self._timeouts
            pool = self._pools[origin] = UpstreamPool(
                f"{scheme}://{host}:{port}",
                connect_timeout=connect,
                read_timeout=read,
                ssl_context=self._ssl,
            )
        return pool

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        pool = self._pool_for(url)
        if pool is None:
            raise httpx2.ConnectError("this transport serves one upstream host", request=request)
        headers: list[tuple[bytes, bytes]] = []
        length: int | None = None
        chunked = False
        for name, value in request.headers.raw:
            lower = name.lower()
            if lower == b"content-length":
                length = int(value)
            elif lower == b"transfer-encoding":
                chunked = True
            if lower not in _SET_BY_THE_POOL and lower != b"accept-encoding":
                headers.append((lower, value))
        headers.append((b"accept-encoding", ACCEPT_ENCODING))
        stream = request.stream
        if not isinstance(stream, httpx2.AsyncByteStream):  # an AsyncClient's never is
            raise httpx2.RemoteProtocolError("a request body must stream", request=request)
        body = _chunks(stream) if length is not None or chunked else None
        try:
            response = await pool.request(
                request.method,
                url.raw_path,
                headers,
                body,
                content_length=None if chunked else length,
            )
        except UpstreamError as exc:
            raise _mapped(exc, request, self._on_timeout) from None
        codings = _coding(response.headers)
        coding = codings[0] if len(codings) == 1 and codings[0] in _CODINGS else None
        if codings and coding is None:
            await response.aclose()  # the body is not read: the connection is closed
            named = ", ".join(codings)[:100]
            raise httpx2.RemoteProtocolError(
                f"the upstream's response is encoded with {named}, which the gateway did "
                f"not ask for (Accept-Encoding: {ACCEPT_ENCODING.decode()})",
                request=request,
            )
        headers = response.headers
        if coding is not None:  # decoded here: httpx2 must not decode it again
            headers = [h for h in headers if h[0] not in (b"content-encoding", b"content-length")]
        return httpx2.Response(
            response.status,
            headers=headers,
            stream=_Body(
                response,
                request,
                self._max_body,
                coding,
                self._on_timeout,
                _echo_forms(request),
                self._on_echo,
            ),
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.aclose()
