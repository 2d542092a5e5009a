"""Finding a protected resource's authorization server: OAuth 2.0 Protected Resource
Metadata (RFC 9728).

An agent given only a resource URL (a gateway's ``public_url``) fetches the resource's
metadata from the well-known URL RFC 9728 section 3.1 builds from it, checks that the
metadata names that exact resource (section 3.3: otherwise an attacker who can serve
a document there could impersonate another resource), and takes an authorization
server from ``authorization_servers``. It takes one only if the caller trusts it: a
resource could name any server, and the agent would then send that server its client
assertions and use the tokens it hands out (RFC 9728 section 7.6 leaves the choice of
servers to trust to the client). The authorization server's own metadata (RFC 8414)
is checked by :class:`~agentiam.sdk.client.AgentClient` as before.

Where the metadata lives can also be learnt from the resource itself: a request
without a token is answered 401 with a ``WWW-Authenticate`` challenge whose
``resource_metadata`` parameter names the metadata URL (RFC 9728 section 5.1; MCP
2025-06-18 and later, "Protected Resource Metadata Discovery Requirements": a client
uses it when present and falls back to the well-known URL).
:func:`challenged_metadata_url` makes that request. It takes the URL only on the
resource's own origin: a resource that could point the agent at any address would
have it fetch internal URLs on the resource's say-so (server-side request forgery,
which RFC 9728's security considerations leave to the client to guard against). The
metadata found there is checked as above.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

__all__ = [
    "DiscoveryError",
    "ResourceMetadata",
    "challenged_metadata_url",
    "metadata_url",
    "origin",
    "protected_resource",
    "resource_metadata_param",
]

MAX_METADATA_BYTES = 64 * 1024
_WELL_KNOWN = "/.well-known/oauth-protected-resource"
_MAX_CHALLENGE = 8 * 1024  # bytes of WWW-Authenticate read
# RFC 9110 section 11.2: auth-param = token BWS "=" BWS ( token / quoted-string )
_TCHARS = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_AUTH_PARAM = re.compile(rf'({_TCHARS})[ \t]*=[ \t]*(?:"((?:[^"\\]|\\.)*)"|({_TCHARS}))')


class DiscoveryError(Exception):
    """The resource's metadata could not be fetched, or cannot be trusted."""


@dataclass(frozen=True, slots=True)
class ResourceMetadata:
    """What a protected resource says of itself (RFC 9728 section 2)."""

    resource: str
    authorization_servers: tuple[str, ...]
    dpop_bound_access_tokens_required: bool
    raw: dict[str, Any]


def metadata_url(resource: str) -> str:
    """RFC 9728 section 3.1: the well-known path goes between the host and the
    resource's path (``https://gw.example.com/mcp`` →
    ``https://gw.example.com/.well-known/oauth-protected-resource/mcp``)."""
    parts = urlsplit(resource)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise DiscoveryError(f"not an http(s) URL: {resource!r}")
    if parts.query or parts.fragment:
        raise DiscoveryError("a resource URL has no query or fragment (RFC 9728 section 2)")
    path = parts.path.rstrip("/")
    return f"{parts.scheme}://{parts.netloc}{_WELL_KNOWN}{path}"


def resource_metadata_param(challenges: Iterable[str]) -> str | None:
    """The ``resource_metadata`` auth-param of ``WWW-Authenticate`` values (RFC 9728
    section 5.1), whatever the scheme (``Bearer``, ``DPoP``), or None. Parameter names
    are case-insensitive (RFC 9110 section 11.2); a quoted-string is unescaped."""
    for challenge in challenges:
        for match in _AUTH_PARAM.finditer(challenge[:_MAX_CHALLENGE]):
            if match.group(1).lower() == "resource_metadata":
                quoted, token = match.group(2), match.group(3)
                return re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else token
    return None


def origin(url: Any) -> str:
    """The origin (RFC 6454 section 4: scheme, host, port) of an ``httpx.URL`` (or
    ``httpx2.URL``), whose port is None for its scheme's default."""
    return f"{url.scheme}://{url.host}:{url.port or ''}"


def challenged_metadata_url(resource: str, http: httpx.Client) -> str | None:
    """Ask ``resource`` itself where its metadata is: a GET without credentials, whose
    401 answer names it in ``WWW-Authenticate`` (RFC 9728 section 5.1). None when the
    answer is not a 401 naming one (the caller then uses :func:`metadata_url`).
    Raises :class:`DiscoveryError` when the resource cannot be reached, or names a
    metadata URL off its own origin or one that is no http(s) URL. The body of the
    answer is never read; redirects are not followed."""
    metadata_url(resource)  # the same checks of the resource URL
    try:
        with http.stream(
            "GET", resource, headers={"Accept": "application/json"}, follow_redirects=False
        ) as response:
            if response.status_code != 401:
                return None
            named = resource_metadata_param(response.headers.get_list("www-authenticate"))
    except httpx.HTTPError as exc:
        raise DiscoveryError(f"cannot reach {resource} ({type(exc).__name__})") from None
    if named is None:
        return None
    parts = urlsplit(named)
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.fragment:
        raise DiscoveryError(f"{resource} names a resource_metadata that is no URL: {named!r}")
    try:
        named_url = httpx.URL(named)
    except httpx.InvalidURL:
        raise DiscoveryError(f"{resource} names a resource_metadata that is no URL") from None
    # credentials in the URL count as another origin too: nothing is sent but the GET
    if named_url.userinfo or origin(named_url) != origin(httpx.URL(resource)):
        raise DiscoveryError(
            f"{resource} names resource metadata on another origin ({named}); only the "
            "resource's own origin is trusted"
        )
    return named


def _issuer(value: str) -> str:
    return value.rstrip("/")


def protected_resource(
    resource: str,
    http: httpx.Client,
    *,
    trusted_issuers: Iterable[str],
    url: str | None = None,
) -> tuple[ResourceMetadata, str]:
    """The resource's metadata (read from ``url``, else from the well-known URL of
    :func:`metadata_url`) and the first authorization server it names that is among
    ``trusted_issuers``. Raises :class:`DiscoveryError` when the metadata cannot be had
    (not 200, not a JSON object, larger than 64 KiB), names another resource, or names
    no trusted server."""
    trusted = {_issuer(i) for i in trusted_issuers}
    if not trusted:
        raise DiscoveryError("name at least one trusted issuer")
    well_known = metadata_url(resource)  # also refuses a resource URL that is none
    url = url or well_known
    try:
        with http.stream("GET", url, headers={"Accept": "application/json"}) as response:
            if response.status_code != 200:
                raise DiscoveryError(f"{url} answered {response.status_code}")
            body = b""
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_METADATA_BYTES:
                    raise DiscoveryError(f"{url}: metadata larger than {MAX_METADATA_BYTES} bytes")
    except httpx.HTTPError as exc:
        raise DiscoveryError(f"cannot fetch {url} ({type(exc).__name__})") from None
    try:
        data = json.loads(body)
    except ValueError:
        raise DiscoveryError(f"{url}: not JSON") from None
    if not isinstance(data, dict):
        raise DiscoveryError(f"{url}: not a JSON object")
    if data.get("resource") != resource.rstrip("/") and data.get("resource") != resource:
        raise DiscoveryError(  # RFC 9728 section 3.3
            f"{url} describes {data.get('resource')!r}, not {resource!r}"
        )
    servers = data.get("authorization_servers")
    if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers):
        raise DiscoveryError(f"{url}: authorization_servers must be a list of URLs")
    metadata = ResourceMetadata(
        resource=str(data["resource"]),
        authorization_servers=tuple(servers),
        dpop_bound_access_tokens_required=data.get("dpop_bound_access_tokens_required") is True,
        raw=data,
    )
    for server in servers:
        if _issuer(server) in trusted:
            return metadata, _issuer(server)
    raise DiscoveryError(
        f"none of the authorization servers {resource} names is trusted: {servers}"
    )
