"""Checking and normalising the absolute URIs of ``locations`` (RFC 3986 section 6.2.2):
scheme, host and port are compared exactly and the path segment by segment, and
anything a server might read differently (userinfo, fragments, backslashes, encoded
``/``, dot segments) is refused."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import unquote

from agentiam.core.delegation.authorization_details._limits import MAX_STRING

_UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_DEFAULT_PORTS: Final = MappingProxyType({"http": 80, "https": 443, "ws": 80, "wss": 443})
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*$")
_HOST_RE = re.compile(
    r"^[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?)*$"
)
_URI_TEXT = re.compile(r"^[\x21-\x7e]+$")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


class _BadUri(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class _Uri:
    scheme: str
    authority: str  # host and non-default port, normalised
    segments: tuple[str, ...]
    text: str

    def covers(self, other: _Uri) -> bool:
        """``other`` is this URI or beneath it: same scheme, host and port, and this
        path's segments are a prefix of the other's (``/api`` covers ``/api/v1``, not
        ``/api-admin``)."""
        return (
            self.scheme == other.scheme
            and self.authority == other.authority
            and other.segments[: len(self.segments)] == self.segments
        )


def _decode_unreserved(match: re.Match[str]) -> str:
    code = int(match.group(1), 16)
    char = chr(code)
    if char in _UNRESERVED:
        return char
    if code < 0x20 or code == 0x7F or char in "/\\":
        raise _BadUri("must not percent-encode '/', '\\' or control characters")
    return "%" + match.group(1).upper()


def _dot_segment(segment: str) -> bool:
    """``.`` or ``..`` as some server might read it: decoded, without path parameters
    (``..;x``, ``..%3B``) and surrounding blanks."""
    return unquote(segment).split(";", 1)[0].strip() in {".", ".."}


def _parse_uri(value: Any, *, web_only: bool, allow_query: bool) -> _Uri:
    """Check and normalise an absolute URI with a host (RFC 3986 section 6.2.2)."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_STRING:
        raise _BadUri(f"must be an absolute URI of at most {MAX_STRING} characters")
    if not _URI_TEXT.match(value):
        raise _BadUri("must be printable ASCII without spaces (percent-encode the rest)")
    if "\\" in value:
        raise _BadUri("must not contain a backslash")
    if "#" in value:
        raise _BadUri("must not contain a fragment")
    scheme, sep, rest = value.partition("://")
    if not sep or not _SCHEME_RE.match(scheme):
        raise _BadUri("must be an absolute URI with a host (scheme://host/path)")
    scheme = scheme.lower()
    if web_only and scheme not in {"http", "https"}:
        raise _BadUri("must be an http or https URI")
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    path, question, _query = tail.partition("?")
    if question and not allow_query:
        raise _BadUri("must not contain a query")
    if "@" in authority:
        raise _BadUri("must not contain user information")
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise _BadUri("has an unterminated IPv6 address")
        try:
            host = f"[{ipaddress.IPv6Address(authority[1:close]).compressed}]"
        except ValueError:
            raise _BadUri("has an invalid IPv6 address") from None
        after = authority[close + 1 :]
    else:
        host, colon, port_text = authority.partition(":")
        host = host.lower()
        after = colon + port_text
        if not _HOST_RE.match(host):
            raise _BadUri("must name a host in ASCII (a DNS name or an IP address)")
    port: int | None = None
    if after:
        digits = after[1:]
        if not after.startswith(":") or not (
            digits == "" or (digits.isascii() and digits.isdigit())
        ):
            raise _BadUri("has an invalid port")
        if digits:
            if len(digits) > 5 or not 0 < int(digits) <= 65535:
                raise _BadUri("has an invalid port")
            port = int(digits)
    if port == _DEFAULT_PORTS.get(scheme):
        port = None
    if _STRAY_PERCENT.search(path):
        raise _BadUri("has a malformed percent-encoding")
    path = _PERCENT.sub(_decode_unreserved, path) or "/"
    segments = path.split("/")[1:]
    if segments and segments[-1] == "":
        segments.pop()
    if any(_dot_segment(segment) for segment in segments):
        raise _BadUri("must not contain '.' or '..' path segments")
    authority = host if port is None else f"{host}:{port}"
    return _Uri(scheme, authority, tuple(segments), f"{scheme}://{authority}{path}")
