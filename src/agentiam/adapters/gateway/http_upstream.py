"""A lean HTTP/1.1 client for the gateways' upstream calls (RFC 9112).

A gateway forwards every call it allows; the client that does so sits on its hot
path. httpx (through httpcore and anyio) spent about half of the HTTP gateway's CPU
time per call in this role (connection-pool scans that poll every idle socket,
async-library detection on every read), so the gateways speak HTTP/1.1 to their
upstreams themselves (the MCP gateway under the MCP SDK's client, through
:mod:`.upstream_transport`): keep-alive connections in a LIFO pool per upstream,
requests written in one buffer, responses framed by the C parser uvicorn already uses
(``httptools``, llhttp).

What it does:

* **Framing** (RFC 9112 section 6): a request body is sent with ``Content-Length``
  when the client gave one (``Content-Length: 0`` too, RFC 9110 section 8.6), else
  chunked (section 7.1); a response body is framed by ``Transfer-Encoding: chunked``,
  ``Content-Length`` or the end of the connection (a connection that ended a body is
  never reused). Responses to ``HEAD`` and ``1xx``/``204``/``304`` answers have no
  body (section 6.3). Interim ``1xx`` answers are skipped (RFC 9110 section 15.2),
  except ``101``; a final status outside 200-599 is malformed. A body in a transfer
  coding other than ``chunked`` alone (``gzip, chunked``: llhttp would hand on the
  gzip-coded bytes as the content) is malformed too (section 6.1,
  :func:`chunked_alone`, the rule the HTTP gateway applies to requests).
* **One answer per request** (RFC 9112 section 9.3: responses come in the order of
  the requests): bytes after the end of the response, in the same read or arriving
  while the connection is idle in the pool, are never taken as the next request's
  answer. Parsing stops at the end of the first response and such a connection is
  closed, never reused.
* **Streaming both ways**: the request body is read from the caller's iterator and
  written as it comes; the response body is handed on chunk by chunk as it is parsed.
  Nothing is held whole.
* **Bounded time**: ``connect`` bounds opening a connection, ``read`` every wait for
  upstream bytes and every write (RFC 9110 section 15.6.5: the gateway answers 504);
  the caller bounds the whole exchange.
* **Bounded memory**: a response head (interim answers included) over
  :data:`MAX_RESPONSE_HEAD` bytes, or that many bytes in a row without body bytes
  once the body began (chunk framing, the trailer section), is malformed (502):
  httptools holds a field whole and grows it by one copy per read, so an unbounded
  one would cost memory and event-loop time quadratic in its length.
* **Trailer fields** of a chunked response are discarded (RFC 9112 section 7.1.2:
  a recipient MAY; it MUST NOT merge them into the header section, which llhttp's
  callbacks would do when they arrive with the head).
* **Reuse**: a connection goes back to the pool only when its response was read to the
  end, both sides agreed to keep it alive (``Connection``, HTTP/1.0), and it has not
  been idle for longer than ``idle_timeout``. An idempotent request (RFC 9110 section
  9.2.2: ``GET``, ``HEAD``, ``OPTIONS``, ``PUT``, ``DELETE``) without a body that fails
  on a reused connection before any response byte arrived is retried once on a new one
  (the upstream may have closed the idle connection meanwhile: RFC 9112 section
  9.3.1). Others never are: a proxy must not retry a non-idempotent request
  automatically (section 9.3.1.1), as the upstream may have acted on it.

Errors: :class:`UpstreamTimeout` (the gateway answers 504) and :class:`UpstreamError`
(502) for everything else: refused connections, resets, malformed answers.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httptools

__all__ = [
    "MAX_RESPONSE_HEAD",
    "TransferCodingRefused",
    "UpstreamConnectError",
    "UpstreamConnectTimeout",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamResponse",
    "UpstreamTimeout",
    "chunked_alone",
]

_READ = 64 * 1024
MAX_RESPONSE_HEAD = 64 * 1024  # bytes of response head (nginx's default is 4-8 KiB)
_NO_BODY_STATUS = frozenset({204, 304})
# RFC 9110 section 9.2.2 (TRACE is not routable); RFC 9112 section 9.3.1.1
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


class UpstreamError(Exception):
    """The upstream could not be reached, or its answer was not valid HTTP/1.1."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not connect, accept the request or answer in time."""


class UpstreamConnectError(UpstreamError):
    """No connection to the upstream could be opened (nothing was sent)."""


class UpstreamConnectTimeout(UpstreamTimeout, UpstreamConnectError):
    """Opening a connection to the upstream timed out (nothing was sent)."""


class TransferCodingRefused(ValueError):
    """A ``Transfer-Encoding`` other than ``chunked`` alone (RFC 9112 section 6.1)."""


def chunked_alone(codings: list[bytes]) -> bool:
    """Whether a message is chunked, given the values of its ``Transfer-Encoding``
    fields in order: False for none, True for one field holding ``chunked`` alone
    (any letter case, trailing spaces), :class:`TransferCodingRefused` for anything
    else (RFC 9112 section 6.1: the gateway undoes no other coding, so it neither
    forwards nor relays one).

    llhttp removes the chunking of ``gzip, chunked`` and hands on the gzip-coded
    bytes as if they were the content, and it reads ``chunked`` followed by a tab in
    a response as no chunked coding at all (the chunk framing becomes the body):
    both are refused here. A second field, even ``chunked`` again, is refused too."""
    if not codings:
        return False
    if len(codings) != 1 or codings[0].rstrip(b" ").lower() != b"chunked":
        raise TransferCodingRefused("a transfer coding other than chunked")
    return True


class _Connection:
    __slots__ = ("idle_since", "reader", "reused", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0
        self.reused = False

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()

    def idle_bytes(self) -> bool:
        """Whether the upstream sent something the gateway has not read: on an idle
        connection that is no answer to any request, and the connection is unusable."""
        # StreamReader has no public view of its buffer; ``at_eof`` reads the same field
        return bool(getattr(self.reader, "_buffer", None))


class _MessageEnd(Exception):
    """Raised from a parser callback to stop llhttp where a second message begins."""


class _Parsed:
    """httptools callbacks: the status, headers and body chunks of one response.

    Only the first final response on the connection is parsed: llhttp would go on to
    parse anything after it as another response (and :meth:`on_message_begin` would
    replace the headers), so parsing stops there and ``extra`` is set. ``headers`` is
    the final response's header section; fields after it (trailer fields) go to a
    list nobody reads."""

    __slots__ = (
        "_fields", "body", "complete", "error", "extra", "headers", "headers_done",
        "keep_alive", "parser", "status",
    )  # fmt: skip

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self._fields: list[tuple[bytes, bytes]] = []  # the fields of the section parsed
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.status = 0
        self.headers_done = False
        self.keep_alive = False
        self.complete = False
        self.extra = False  # bytes followed the response: the connection is not reused
        self.error = ""  # why a callback refused the response

    def on_message_begin(self) -> None:
        if self.complete:
            self.extra = True
            raise _MessageEnd
        self._fields = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status <= 199 and status != 101:
            return  # an interim answer, skipped (RFC 9110 section 15.2)
        if status == 101:
            self.error = "the upstream switched protocols"
            raise _MessageEnd
        if not 200 <= status <= 599:  # llhttp takes any three digits
            self.error = "the upstream answered with an invalid status code"
            raise _MessageEnd
        self.status = status
        self.headers_done = True
        self.headers, self._fields = self._fields, []  # trailer fields go to the new list
        # llhttp's answer is only valid here (it is reset once the message ends)
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.headers_done:
            self.complete = True

    def feed(self, data: bytes) -> None:
        """Parse ``data``; :class:`UpstreamError` if it is not a valid response. Bytes
        after the end of the response are dropped and set ``extra``."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            raise UpstreamError("the upstream switched protocols") from None
        except httptools.HttpParserError as exc:
            if self.complete:  # a second message, or data after "Connection: close"
                self.extra = True
                return
            raise UpstreamError(self.error or f"malformed response: {type(exc).__name__}") from None


class UpstreamResponse:
    """An upstream's answer: ``status`` and ``headers`` (lower-case names, in order);
    :meth:`body` streams the body; :meth:`aclose` returns the connection to the pool
    (or closes it)."""

    def __init__(
        self,
        pool: UpstreamPool,
        conn: _Connection,
        parsed: _Parsed,
        *,
        head: bool,
        request_keep_alive: bool,
    ) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn
        self._parsed = parsed
        self.status = parsed.status
        self.headers = parsed.headers
        framed = any(k in (b"content-length", b"transfer-encoding") for k, _ in self.headers)
        self._no_body = head or self.status in _NO_BODY_STATUS
        self._until_close = not self._no_body and not framed
        # llhttp does not know the request was HEAD: a body it parsed is one too many
        extra_body = self._no_body and bool(parsed.body)
        self._keep_alive = request_keep_alive and parsed.keep_alive and not extra_body
        self._done = self._no_body or parsed.complete

    @property
    def has_body(self) -> bool:
        """Whether a body follows the head (not a ``HEAD``, ``204`` or ``304`` answer,
        RFC 9112 section 6.3); it may be empty."""
        return not self._no_body

    @property
    def complete(self) -> bool:
        """Whether the whole body is in hand: :meth:`body` will not read any more."""
        return self._done

    def abort(self) -> None:
        """Close the connection at once (the caller no longer wants the body): a read
        of :meth:`body` in progress ends, and the connection is never reused."""
        self._keep_alive = False
        if self._conn is not None:
            self._conn.writer.transport.abort()

    async def body(self) -> AsyncIterator[bytes]:
        """The body, chunk by chunk as it arrives (transfer coding removed)."""
        parsed = self._parsed
        if self._no_body:
            return
        idle = 0  # bytes read in a row that held no body bytes
        while True:
            if parsed.body:
                chunks, parsed.body = parsed.body, []
                for chunk in chunks:
                    yield chunk
            if parsed.complete:
                self._done = True
                return
            conn = self._conn
            assert conn is not None, "the body was already closed"
            data = await self._pool._read(conn)
            if not data:
                if self._until_close:
                    self._done = True
                    self._keep_alive = False
                    return
                raise UpstreamError("the upstream closed the connection mid-body")
            parsed.feed(data)
            if parsed.body or parsed.complete:
                idle = 0
            else:
                idle += len(data)
                if idle > MAX_RESPONSE_HEAD:
                    raise UpstreamError(
                        "the upstream sent chunk framing or trailers past the bound"
                    )

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._done and self._keep_alive and not self._until_close and not self._parsed.extra:
            self._pool._release(conn)
        else:
            conn.close()


class UpstreamPool:
    """Keep-alive connections to one upstream (``scheme://host:port``)."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_idle: int = 256,
        # below common servers' keep-alive (uvicorn, Node.js: 5 s): a POST is never
        # retried, so reusing a connection the upstream is closing would fail the call
        idle_timeout: float = 4.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        self._tls = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._tls else 80)
        default = 443 if self._tls else 80
        host = f"[{self._host}]" if ":" in self._host else self._host
        self.host_header = (host if self._port == default else f"{host}:{self._port}").encode()
        self._ssl = (ssl_context or ssl.create_default_context()) if self._tls else None
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_idle = max_idle
        self._idle_timeout = idle_timeout
        self._idle: list[_Connection] = []
        self._closed = False

    async def request(
        self,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: AsyncIterator[bytes] | None,
        *,
        content_length: int | None = None,
    ) -> UpstreamResponse:
        """Send ``method target`` with ``headers`` (no ``Host`` and no framing fields:
        they are set here) and the body, if any; return once the response headers
        arrived. ``content_length`` is sent when given (also 0, with no ``body``),
        else a body goes chunked."""
        head = [b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (method.encode(), target, self.host_header)]
        keep_alive = True
        for name, value in headers:
            if name == b"connection" and b"close" in value.lower():
                keep_alive = False
            head.append(b"%s: %s\r\n" % (name, value))
        if content_length is not None:
            head.append(b"content-length: %d\r\n" % content_length)
        elif body is not None:
            head.append(b"transfer-encoding: chunked\r\n")
        head.append(b"\r\n")
        prelude = b"".join(head)
        idempotent = body is None and method in _IDEMPOTENT
        for attempt in (0, 1):
            conn = await self._acquire()
            try:
                return await self._exchange(
                    conn,
                    prelude,
                    body,
                    chunked=body is not None and content_length is None,
                    head=method == "HEAD",
                    keep_alive=keep_alive,
                    retryable=idempotent and conn.reused,
                )
            except _StaleConnection:
                conn.close()
                if attempt == 1:
                    raise UpstreamError("the upstream closed the connection") from None
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _exchange(
        self,
        conn: _Connection,
        prelude: bytes,
        body: AsyncIterator[bytes] | None,
        *,
        chunked: bool,
        head: bool,
        keep_alive: bool,
        retryable: bool,
    ) -> UpstreamResponse:
        """Write the request, read until the response headers; ``retryable``: a
        failure before any answer raises :class:`_StaleConnection`."""
        try:
            if body is None:
                conn.writer.write(prelude)
            else:
                conn.writer.write(prelude)
                async for chunk in body:
                    if not chunk:
                        continue
                    if chunked:
                        conn.writer.write(b"%x\r\n" % len(chunk))
                        conn.writer.write(chunk)
                        conn.writer.write(b"\r\n")
                    else:
                        conn.writer.write(chunk)
                    await self._drain(conn)
                if chunked:
                    conn.writer.write(b"0\r\n\r\n")
            await self._drain(conn)
        except (ConnectionError, OSError) as exc:
            if retryable:
                raise _StaleConnection from None
            raise UpstreamError(f"sending the request failed: {type(exc).__name__}") from None
        parsed = _Parsed()
        got_bytes = 0
        while not parsed.headers_done:
            if got_bytes > MAX_RESPONSE_HEAD:
                raise UpstreamError(
                    f"the upstream's response head is over {MAX_RESPONSE_HEAD} bytes"
                )
            try:
                data = await self._read(conn)
            except UpstreamTimeout:
                raise
            except UpstreamError:
                if retryable and not got_bytes:
                    raise _StaleConnection from None
                raise
            if not data:
                if retryable and not got_bytes:
                    raise _StaleConnection
                raise UpstreamError("the upstream closed the connection before answering")
            got_bytes += len(data)
            parsed.feed(data)
        if not head and parsed.status not in _NO_BODY_STATUS:
            _body_framing(parsed.headers)
        return UpstreamResponse(self, conn, parsed, head=head, request_keep_alive=keep_alive)

    async def _read(self, conn: _Connection) -> bytes:
        try:
            async with asyncio.timeout(self._read_timeout):
                return await conn.reader.read(_READ)
        except TimeoutError:
            raise UpstreamTimeout("the upstream did not answer in time") from None
        except (ConnectionError, OSError) as exc:
            raise UpstreamError(f"reading the response failed: {type(exc).__name__}") from None

    async def _drain(self, conn: _Connection) -> None:
        transport = conn.writer.transport
        if transport.get_write_buffer_size() < _READ and not transport.is_closing():
            return  # nothing to wait for (drain would only add a timer per request)
        try:
            async with asyncio.timeout(self._read_timeout):
                await conn.writer.drain()
        except TimeoutError:
            raise UpstreamTimeout("the upstream did not take the request in time") from None

    async def _acquire(self) -> _Connection:
        if self._closed:
            raise UpstreamError("the gateway is shutting down")
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if (
                now - conn.idle_since > self._idle_timeout
                or conn.writer.is_closing()
                or conn.reader.at_eof()
                or conn.idle_bytes()
            ):
                conn.close()
                continue
            conn.reused = True
            return conn
        try:
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await asyncio.open_connection(
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._tls else None,
                    limit=_READ * 2,
                )
        except TimeoutError:
            raise UpstreamConnectTimeout("connecting to the upstream timed out") from None
        except (ConnectionError, OSError) as exc:
            raise UpstreamConnectError(
                f"cannot connect to the upstream: {type(exc).__name__}"
            ) from None
        return _Connection(reader, writer)

    def _release(self, conn: _Connection) -> None:
        if (
            self._closed
            or len(self._idle) >= self._max_idle
            or conn.writer.is_closing()
            or conn.idle_bytes()
        ):
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _body_framing(headers: list[tuple[bytes, bytes]]) -> None:
    """:class:`UpstreamError` for a response body in a transfer coding other than
    ``chunked`` alone (:func:`chunked_alone`): nothing of it is relayed (502). A
    response without a body (to ``HEAD``, ``204``, ``304``) may name the coding it
    would have had (RFC 9112 section 6.1); it is not checked."""
    try:
        chunked_alone([v for k, v in headers if k == b"transfer-encoding"])
    except TransferCodingRefused:
        raise UpstreamError(
            "the upstream answered with a transfer coding other than chunked"
        ) from None


class _StaleConnection(Exception):
    """A reused connection failed before the upstream sent anything: retry once."""
