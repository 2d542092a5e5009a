"""Outbound HTTP with server-side request forgery (SSRF) protections.

Any URL an operator or a client can influence (an IdP's ``jwks_uri`` today; webhooks
and gateway upstreams later) is fetched through here, never through a bare HTTP client:

* :func:`vet_url` allows https only (plain http only with ``allow_private_network``),
  refuses user information in the URL, resolves the host and refuses the URL if *any*
  resolved address is not public unicast: loopback, link-local (169.254.0.0/16 with the
  cloud metadata endpoints, fe80::/10), private (RFC 1918, fc00::/7), shared address
  space (100.64.0.0/10, RFC 6598), unspecified, multicast, broadcast, documentation,
  benchmarking or reserved space (the IANA special-purpose registries, RFC 6890), and
  IPv6 forms embedding such an IPv4 address (IPv4-mapped, NAT64 64:ff9b::/96, 6to4).
  ``allow_private_network`` lifts the non-public checks (tests, on-premises services)
  but never allows unspecified, multicast or broadcast addresses.
* :class:`PinnedClient` sends each request to an address vetted just before it, not to
  a name resolved again (which a DNS rebinding attacker could point elsewhere in
  between): the request URL carries the IP literal, the ``Host`` header the original
  host (RFC 9110 section 7.2) and TLS uses the host name for SNI and certificate
  verification (httpx's ``sni_hostname`` request extension). Its transport,
  :class:`PinnedTransport`, refuses to connect anywhere else and bounds every connect,
  TLS handshake, write and read by one deadline per request (each gets only the time
  left). It never follows redirects and takes no proxy from the environment; it may
  keep one connection alive between requests (the webhook exporter does).
* :func:`fetch_json` GETs through a :class:`PinnedClient` that keeps no connection,
  refuses compressed bodies (no decompression bombs), streams the body under a byte
  cap and requires a JSON media type.

Errors: :class:`OutboundRefused` when a policy says no (URL, address, redirect, size,
media type), :class:`OutboundFailed` when the exchange itself fails (resolution,
connection, TLS, timeout, HTTP status, invalid JSON). Both are :class:`OutboundError`
and carry a message safe to log.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_TIMEOUT",
    "EXCERPT",
    "Deadline",
    "IPAddress",
    "OutboundError",
    "OutboundFailed",
    "OutboundRefused",
    "PinnedClient",
    "PinnedTransport",
    "Resolver",
    "default_ssl_context",
    "excerpt",
    "fetch_json",
    "vet_url",
    "vet_url_form",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int, int, int], Sequence[tuple[Any, ...]]]
"""``socket.getaddrinfo``'s shape: ``(host, port, family, type)`` to a list of
``(family, type, proto, canonname, sockaddr)``."""

DEFAULT_TIMEOUT = 5.0
DEFAULT_MAX_BYTES = 256 * 1024
EXCERPT = 100  # characters of an answer an error message may quote
_MAX_URL = 2048
_USER_AGENT = "agentiam-outbound/1"


class OutboundError(Exception):
    """An outbound request was refused or failed; the message is safe to log."""


def excerpt(data: bytes) -> str:
    """At most :data:`EXCERPT` characters of an answer's body, for an error message: any
    unprintable character (control, escape, line break) becomes a space."""
    text = data[:EXCERPT].decode("utf-8", "replace")
    return "".join(ch if ch.isprintable() else " " for ch in text).strip()


class OutboundRefused(OutboundError):
    """A policy refused the request or its answer (URL, address, redirect, size, type)."""


class OutboundFailed(OutboundError):
    """The exchange failed: resolution, connection, TLS, timeout, status or body."""


# -- address policy --------------------------------------------------------------------

# (network, why it is refused, refused even with allow_private_network)
_V4_BLOCKS: tuple[tuple[ipaddress.IPv4Network, str, bool], ...] = tuple(
    (ipaddress.IPv4Network(net), why, always)
    for net, why, always in (
        ("0.0.0.0/8", "the unspecified 'this network' block", True),
        ("10.0.0.0/8", "private (RFC 1918)", False),
        ("100.64.0.0/10", "shared address space (RFC 6598)", False),
        ("127.0.0.0/8", "loopback", False),
        ("169.254.0.0/16", "link-local (where cloud metadata services live)", False),
        ("172.16.0.0/12", "private (RFC 1918)", False),
        ("192.0.0.0/24", "IETF protocol assignments", False),
        ("192.0.2.0/24", "documentation (TEST-NET-1)", False),
        ("192.88.99.0/24", "6to4 relay anycast", False),
        ("192.168.0.0/16", "private (RFC 1918)", False),
        ("198.18.0.0/15", "benchmarking", False),
        ("198.51.100.0/24", "documentation (TEST-NET-2)", False),
        ("203.0.113.0/24", "documentation (TEST-NET-3)", False),
        ("224.0.0.0/4", "multicast", True),
        ("255.255.255.255/32", "broadcast", True),
        ("240.0.0.0/4", "reserved", False),
    )
)
_V6_BLOCKS: tuple[tuple[ipaddress.IPv6Network, str, bool], ...] = tuple(
    (ipaddress.IPv6Network(net), why, always)
    for net, why, always in (
        ("::/128", "unspecified", True),
        ("::1/128", "loopback", False),
        ("::/96", "IPv4-compatible (deprecated)", False),
        ("64:ff9b:1::/48", "local-use NAT64", False),
        ("100::/64", "discard-only", False),
        ("2001::/23", "IETF protocol assignments (Teredo, ORCHID, benchmarking)", False),
        ("2001:db8::/32", "documentation", False),
        ("3fff::/20", "documentation", False),
        ("5f00::/16", "segment routing (SRv6)", False),
        ("fc00::/7", "unique local (private)", False),
        ("fe80::/10", "link-local", False),
        ("fec0::/10", "site-local (deprecated)", False),
        ("ff00::/8", "multicast", True),
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")


def _classify(address: IPAddress) -> tuple[str, bool] | None:
    """Why ``address`` is not a public unicast address, and whether that holds even
    with ``allow_private_network``; ``None`` for a public address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded: ipaddress.IPv4Address | None = address.ipv4_mapped or address.sixtofour
        kind = "IPv4-mapped" if address.ipv4_mapped else "6to4"
        if embedded is None and address in _NAT64:
            embedded, kind = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "NAT64"
        if embedded is not None:
            inner = _classify(embedded)
            return (f"{kind} {inner[0]}", inner[1]) if inner else None
        for network, why, always in _V6_BLOCKS:
            if address in network:
                return why, always
        if address not in _GLOBAL_UNICAST_V6:
            return "reserved IPv6 space", False
    else:
        for network4, why, always in _V4_BLOCKS:
            if address in network4:
                return why, always
    if not address.is_global:  # belt and braces: Python's view of the IANA registries
        return "not globally reachable", False
    return None


def _refusal(address: IPAddress, allow_private_network: bool) -> str | None:
    found = _classify(address)
    if found is None:
        return None
    why, always = found
    return why if always or not allow_private_network else None


@dataclass(frozen=True, slots=True)
class _Target:
    scheme: str
    host: str  # lower case, IPv6 without brackets
    port: int
    target: str  # path and query, as sent on the request line
    host_header: str

    def url_for(self, address: IPAddress) -> str:
        """The URL with ``address`` (vetted) in place of the host."""
        shown = f"[{address}]" if address.version == 6 else str(address)
        return f"{self.scheme}://{shown}:{self.port}{self.target}"


def _parse(url: str, allow_private_network: bool) -> _Target:
    if not isinstance(url, str) or not 0 < len(url) <= _MAX_URL:
        raise OutboundRefused(f"URL must be a string of 1-{_MAX_URL} characters")
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in url):
        raise OutboundRefused("URL contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise OutboundRefused("URL is malformed") from None
    schemes = ("https", "http") if allow_private_network else ("https",)
    if parts.scheme not in schemes:
        raise OutboundRefused(
            f"scheme {parts.scheme[:10]!r} refused: only {' or '.join(schemes)} URLs are fetched"
        )
    if "@" in parts.netloc:
        raise OutboundRefused("URL with user information refused")
    host = parts.hostname
    if not host:
        raise OutboundRefused("URL has no host")
    if not host.isascii():
        raise OutboundRefused("host name must be ASCII (use its IDNA 'xn--' form)")
    if "%" in host:
        raise OutboundRefused("IPv6 zone identifiers are refused")
    default_port = 443 if parts.scheme == "https" else 80
    port = port if port is not None else default_port
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default_port else f"{shown}:{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(parts.scheme, host, port, target, host_header)


def _resolve(host: str, port: int, resolver: Resolver) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        answers = resolver(host, port, 0, socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise OutboundFailed(f"cannot resolve {host[:100]!r}: {exc}") from None
    addresses: list[IPAddress] = []
    for answer in answers:
        sockaddr = answer[4]
        if not isinstance(sockaddr, tuple) or not sockaddr or not isinstance(sockaddr[0], str):
            continue
        try:
            address = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
        except ValueError:
            continue
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise OutboundFailed(f"{host[:100]!r} resolves to no IP address")
    return addresses


def _vet_addresses(
    target: _Target, allow_private_network: bool, resolver: Resolver
) -> list[IPAddress]:
    addresses = _resolve(target.host, target.port, resolver)
    _refuse_any(target, addresses, allow_private_network)
    return addresses


def _refuse_any(
    target: _Target, addresses: Iterable[IPAddress], allow_private_network: bool
) -> None:
    for address in addresses:
        why = _refusal(address, allow_private_network)
        if why is not None:
            hint = "" if allow_private_network else " (set allow_private_network to permit it)"
            raise OutboundRefused(f"{target.host[:100]!r} resolves to {address}, {why}{hint}")


def vet_url(
    url: str, *, allow_private_network: bool, resolver: Resolver = socket.getaddrinfo
) -> list[IPAddress]:
    """Check ``url`` and every address its host resolves to; return those addresses.

    Raise :class:`OutboundRefused` for a URL or address the policy refuses (see the
    module docstring) and :class:`OutboundFailed` if the host does not resolve."""
    target = _parse(url, allow_private_network)
    return _vet_addresses(target, allow_private_network, resolver)


def vet_url_form(url: str, *, allow_private_network: bool) -> None:
    """Check ``url`` as :func:`vet_url` does, but without DNS: its form (scheme, no user
    information, a host) and, when the host is an IP literal, that address. For
    checking configuration at start-up; a host name is vetted with its addresses by
    :func:`vet_url` (or :class:`PinnedClient`) before every request.

    Raise :class:`OutboundRefused`."""
    target = _parse(url, allow_private_network)
    try:
        address = ipaddress.ip_address(target.host)
    except ValueError:
        return  # a host name
    _refuse_any(target, [address], allow_private_network)


# -- pinned, deadline-bounded transport ------------------------------------------------


class Deadline:
    """The moment by which every network operation of one request must be done."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def budget(self, timeout: float | None, exc: type[Exception]) -> float:
        """The time an operation may take: ``timeout`` capped by what is left; raise
        ``exc`` once nothing is."""
        left = self.remaining()
        if left <= 0:
            raise exc("the request's deadline passed")
        return left if timeout is None else min(timeout, left)


class _PinnedBackend(httpcore.NetworkBackend):
    """Opens TCP connections only to the addresses pinned for the current request and
    bounds every network operation, on new and kept connections alike, by that
    request's deadline. Between requests nothing is pinned and nothing connects."""

    def __init__(self) -> None:
        self.allowed: frozenset[IPAddress] = frozenset()
        self.deadline = Deadline(0.0)
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            address: IPAddress | None = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            address = None
        if address is None or address not in self.allowed:
            # the request URL must carry a vetted address, never a name
            raise httpcore.ConnectError("refusing to connect to an address that was not vetted")
        stream = self._inner.connect_tcp(
            str(address),
            port,
            timeout=self.deadline.budget(timeout, httpcore.ConnectTimeout),
            local_address=local_address,
            socket_options=socket_options,
        )
        return _DeadlineStream(stream, self)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not used for outbound requests")

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, max(self.deadline.remaining(), 0.0)))


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every operation gets only the time left before the deadline
    of the request using it (a kept connection serves several requests)."""

    def __init__(self, inner: httpcore.NetworkStream, backend: _PinnedBackend) -> None:
        self._inner = inner
        self._backend = backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        budget = self._backend.deadline.budget(timeout, httpcore.ReadTimeout)
        return self._inner.read(max_bytes, budget)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._backend.deadline.budget(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        budget = self._backend.deadline.budget(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(
            self._inner.start_tls(ssl_context, server_hostname, budget), self._backend
        )

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


_HTTPCORE_ERRORS = (
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
    httpcore.ProxyError,
)


class _BodyStream(httpx.SyncByteStream):
    def __init__(self, inner: Iterable[bytes]) -> None:
        self._inner = inner

    def __iter__(self) -> Iterator[bytes]:
        yield from self._inner

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()


class PinnedTransport(httpx.BaseTransport):
    """An httpx transport that connects only to the addresses pinned by :meth:`pinned`
    (so a request URL must carry a vetted IP literal) and bounds every connect, TLS
    handshake, write and read by the pinned deadline. HTTP/1.1 only, no retries.

    Without ``keepalive_expiry`` no connection is kept; with it, one idle connection
    is kept that many seconds for the next request to the same address. A kept
    connection is matched on scheme, address and port, not on the TLS server name, so
    a keep-alive transport must serve one host name only (as :class:`PinnedClient`
    does)."""

    def __init__(
        self, ssl_context: ssl.SSLContext, *, keepalive_expiry: float | None = None
    ) -> None:
        self._backend = _PinnedBackend()
        keep = keepalive_expiry is not None
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            # with keep-alive, a kept connection to an address no longer vetted may idle
            # out while a new one opens
            max_connections=2 if keep else 1,
            max_keepalive_connections=1 if keep else 0,
            keepalive_expiry=keepalive_expiry,
            retries=0,
            http1=True,
            http2=False,
            network_backend=self._backend,
        )

    @contextlib.contextmanager
    def pinned(self, addresses: Iterable[IPAddress], deadline: Deadline) -> Iterator[None]:
        """Within this block, connect to ``addresses`` only, and finish by ``deadline``."""
        backend = self._backend
        backend.allowed, backend.deadline = frozenset(addresses), deadline
        try:
            yield
        finally:
            backend.allowed = frozenset()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        response = self._pool.handle_request(
            httpcore.Request(
                method=request.method,
                url=httpcore.URL(
                    scheme=request.url.raw_scheme,
                    host=request.url.raw_host,
                    port=request.url.port,
                    target=request.url.raw_path,
                ),
                headers=request.headers.raw,
                content=request.stream,
                extensions=request.extensions,
            )
        )
        assert isinstance(response.stream, Iterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_BodyStream(response.stream),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()


@functools.lru_cache(maxsize=1)
def default_ssl_context() -> ssl.SSLContext:
    """httpx's TLS client context: certifi's roots, like every other httpx client."""
    return httpx.create_ssl_context()


class PinnedClient:
    """Requests to one URL, each sent to an address vetted just before it.

    :meth:`stream` resolves the URL's host, vets every address (refusing the request
    if any is refused, see the module docstring) and sends the request to the first
    vetted address that accepts a connection (only a refused or unreachable one moves
    on to the next): the request URL carries the IP literal, the ``Host`` header the
    original host, and TLS uses the host name for SNI and certificate verification.
    Redirects are never followed and no proxy is taken from the environment. One
    ``timeout`` deadline, started once the host is resolved, bounds the whole exchange,
    every connect, TLS handshake, write and read included (each also bounded by
    ``connect_timeout`` or ``read_timeout``, by default ``timeout``).

    ``keepalive_expiry``: see :class:`PinnedTransport` (default: no connection kept).
    ``ssl_context`` defaults to :func:`default_ssl_context`. ``transport`` replaces the
    pinned transport (tests only; it is not closed here): requests still go to the IP
    literal, but the deadline is then only the caller's to check. One request at a
    time: callers serialise their requests.
    """

    def __init__(
        self,
        url: str,
        *,
        allow_private_network: bool,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        keepalive_expiry: float | None = None,
        ssl_context: ssl.SSLContext | None = None,
        resolver: Resolver = socket.getaddrinfo,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self._target = _parse(url, allow_private_network)
        self._allow_private_network = allow_private_network
        self._resolver = resolver
        self._timeout = timeout
        self._pinned = (
            None
            if transport is not None
            else PinnedTransport(
                ssl_context or default_ssl_context(), keepalive_expiry=keepalive_expiry
            )
        )
        read = timeout if read_timeout is None else read_timeout
        self._client = httpx.Client(
            transport=transport or self._pinned,
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(
                connect=timeout if connect_timeout is None else connect_timeout,
                read=read,
                write=read,
                pool=timeout,
            ),
        )

    @property
    def host(self) -> str:
        """The URL's host (lower case, an IPv6 address without brackets)."""
        return self._target.host

    def close(self) -> None:
        if self._pinned is not None:  # an injected transport stays the caller's
            self._client.close()

    @contextlib.contextmanager
    def stream(
        self, method: str, headers: Mapping[str, str], content: bytes | None = None
    ) -> Iterator[tuple[httpx.Response, Deadline]]:
        """Send the request (see the class docstring) and yield its response, body
        unread, with the request's deadline. The response is closed on leaving.

        Raise :class:`OutboundRefused` for a refused address and
        :class:`OutboundFailed` when resolution, every connection, TLS, or the
        exchange (within the block too) fails or runs out of time."""
        target = self._target
        addresses = _vet_addresses(target, self._allow_private_network, self._resolver)
        deadline = Deadline(self._timeout)
        headers = {**headers, "Host": target.host_header}
        extensions: dict[str, Any] = {}
        if target.scheme == "https":
            extensions["sni_hostname"] = target.host
        shown = repr(target.host[:100])
        last: Exception | None = None
        pins = (
            self._pinned.pinned(addresses, deadline)
            if self._pinned is not None
            else contextlib.nullcontext()
        )
        with pins:
            try:
                for address in addresses:
                    request = self._client.build_request(
                        method,
                        target.url_for(address),
                        headers=headers,
                        content=content,
                        extensions=extensions,
                    )
                    try:
                        response = self._client.send(request, stream=True)
                    except (httpx.ConnectError, httpcore.ConnectError) as exc:
                        last = exc  # nothing was sent: try the next vetted address
                        if deadline.remaining() <= 0:
                            break
                        continue
                    try:
                        yield response, deadline
                    finally:
                        response.close()
                    return
            except (httpx.TimeoutException, httpcore.TimeoutException):
                raise OutboundFailed(
                    f"request to {shown} timed out after {self._timeout:g} s"
                ) from None
            except (httpx.HTTPError, *_HTTPCORE_ERRORS) as exc:
                raise OutboundFailed(
                    f"request to {shown} failed: {type(exc).__name__}: {str(exc)[:200]}"
                ) from None
        raise OutboundFailed(f"cannot connect to {shown}: {str(last)[:200]}")


# -- fetch -----------------------------------------------------------------------------

_JSON_TYPES = frozenset({"application/json", "application/jwk-set+json"})


def _check_content_type(value: str | None) -> None:
    """``application/json`` (RFC 8259 section 11), any ``application/*+json``
    (RFC 6839 section 3.1, e.g. ``application/jwk-set+json``, RFC 7517 section 8.5)."""
    media, _, params = (value or "").partition(";")
    media = media.strip().lower()
    if media not in _JSON_TYPES and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        raise OutboundRefused(f"content type {media[:60]!r} is not JSON")
    for param in params.split(";"):
        name, _, charset = param.partition("=")
        if name.strip().lower() == "charset" and charset.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            raise OutboundRefused("JSON must be UTF-8 (RFC 8259 section 8.1)")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate member {key[:40]!r}")
        result[key] = value
    return result


def _read_capped(response: httpx.Response, max_bytes: int, deadline: Deadline) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise OutboundFailed("malformed Content-Length")
        if int(declared) > max_bytes:
            raise OutboundRefused(f"body of {int(declared)} bytes exceeds the {max_bytes}-byte cap")
    body = bytearray()
    # Content-Encoding was refused unless identity, so these are the raw bytes.
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > max_bytes:
            raise OutboundRefused(f"body exceeds the {max_bytes}-byte cap")
        if deadline.remaining() <= 0:
            raise OutboundFailed("timed out reading the body")
    return bytes(body)


_FETCH_HEADERS = {
    "Accept": "application/jwk-set+json, application/json",
    "Accept-Encoding": "identity",
    "User-Agent": _USER_AGENT,
}


def _json_body(response: httpx.Response, max_bytes: int, deadline: Deadline) -> bytes:
    if 300 <= response.status_code < 400:
        raise OutboundRefused(f"redirect ({response.status_code}) not followed")
    if response.status_code != 200:
        raise OutboundFailed(f"HTTP status {response.status_code}")
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise OutboundRefused(f"content encoding {encoding[:20]!r} refused")
    _check_content_type(response.headers.get("content-type"))
    return _read_capped(response, max_bytes, deadline)


def fetch_json(
    url: str,
    *,
    allow_private_network: bool,
    timeout: float = DEFAULT_TIMEOUT,
    max_bytes: int = DEFAULT_MAX_BYTES,
    resolver: Resolver = socket.getaddrinfo,
    transport: httpx.BaseTransport | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Any:
    """GET ``url`` and return its decoded JSON body, with the protections of the module
    docstring, through a :class:`PinnedClient` that keeps no connection: the vetted
    addresses are tried in the resolver's order (only a refused connection moves on
    to the next); everything, from the first connection attempt to the last body
    byte, shares one ``timeout`` deadline. Host resolution happens before it, at the
    resolver's pace.

    ``ssl_context`` defaults to httpx's (certifi roots). ``transport`` replaces the
    pinned, deadline-bound transport (tests only; it is not closed here): the request
    still goes to the IP literal, but the deadline is then checked only between body
    chunks.

    Raise :class:`OutboundRefused` or :class:`OutboundFailed`."""
    if timeout <= 0 or max_bytes <= 0:
        raise ValueError("timeout and max_bytes must be positive")
    client = PinnedClient(
        url,
        allow_private_network=allow_private_network,
        timeout=timeout,
        ssl_context=ssl_context,
        resolver=resolver,
        transport=transport,
    )
    try:
        with client.stream("GET", _FETCH_HEADERS) as (response, deadline):
            body = _json_body(response, max_bytes, deadline)
    finally:
        client.close()
    try:
        return json.loads(body.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:
        raise OutboundFailed(f"body is not valid JSON: {str(exc)[:80]}") from None
