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
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

__all__ = ["DiscoveryError", "ResourceMetadata", "metadata_url", "protected_resource"]

MAX_METADATA_BYTES = 64 * 1024
_WELL_KNOWN = "/.well-known/oauth-protected-resource"


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


def _issuer(value: str) -> str:
    return value.rstrip("/")


def protected_resource(
    resource: str, http: httpx.Client, *, trusted_issuers: Iterable[str]
) -> tuple[ResourceMetadata, str]:
    """The resource's metadata and the first authorization server it names that is
    among ``trusted_issuers``. Raises :class:`DiscoveryError` when the metadata cannot
    be had (not 200, not a JSON object, larger than 64 KiB), names another resource,
    or names no trusted server."""
    trusted = {_issuer(i) for i in trusted_issuers}
    if not trusted:
        raise DiscoveryError("name at least one trusted issuer")
    url = metadata_url(resource)
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
