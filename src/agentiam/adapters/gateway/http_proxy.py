"""The HTTP gateway: an OAuth-protected reverse proxy for REST APIs.

``agentiam gateway http --config FILE`` serves :class:`HttpGateway`, a plain ASGI
application (no web framework on the hot path) under uvicorn. Its configuration is the
common gateway part (:mod:`agentiam.adapters.gateway.config`) plus two sections::

    upstreams:
      billing:
        url: https://billing.internal.example        # scheme, host, port, optional path
        api: billing                                  # optional: its Api's id (default: its name)
        credential: {secret: billing-key, header: X-Api-Key}   # see broker.py
        tls: {ca_file: /etc/agentiam/ca.pem}          # optional: CAs, client certificate
    routes:                                           # first match wins
      - name: invoices.read                           # optional; default "GET /v1/invoices/{id}"
        match: {method: GET, path: /v1/invoices/{id}}
        upstream: billing
        action: GET                                   # the Cedar action
        resource: {type: Endpoint, id: "invoices/{id}"}
      - match: {method: DELETE, path: /v1/files/{path*}}   # {name*}: the rest of the path
        upstream: billing
        action: DELETE
        resource: {type: Endpoint, id: "file:{path}", attributes: {destructive: true}}

For every request, in this order:

1. The path is checked: one that a server could read in two ways (``.``/``..``
   segments, ``;`` path parameters, encoded ``/`` or ``\\``, empty segments, control
   characters, bad percent-encoding, a segment whose NFKC form holds ``/`` or ``\\``
   or is a dot segment: ``%EF%BC%8F``, U+FF0F) is refused with 400, so the route
   the gateway decides on is the path the upstream serves (RFC 3986 sections 3.3
   and 6.2.2; Unicode UAX #15 for NFKC). So
   is the framing: a ``Transfer-Encoding`` other than ``chunked`` alone is 501 (RFC
   9112 section 6.1), a ``Content-Length`` other than digits 400 (whitespace around
   them is not part of the value, RFC 9110 section 5.5, and is ignored).
2. The token is verified (:meth:`Enforcer.authenticate`): a DPoP-bound access token
   (RFC 9449) whose audience is ``public_url`` (RFC 8707). The DPoP ``htu`` is checked
   against ``public_url``'s origin plus the request path, never a URL built from the
   client's ``Host`` or ``X-Forwarded-*`` headers. A refusal is 401 with a
   ``WWW-Authenticate`` challenge naming ``resource_metadata`` (RFC 9728 section 5.1).
3. The first route whose method and path template match is taken (``{name}`` matches
   one path segment and may be used in the resource id); none: 404, audited. A
   catch-all ``{name*}`` (the template's last segment) matches the rest of the path,
   one or more non-empty segments of the path checked in step 1, joined with ``/``;
   routes with one are tried only after every route without one (:meth:`route_for`).
   Two routes of a method that match a path in common where only the list's order
   would choose (``/v1/a/{id}`` and ``/v1/a/{x}``; ``/v1/a/{id}`` before
   ``/v1/a/me``) stop the start (:func:`check_overlaps`); a special case listed
   before its general route is the way to route it apart.
   A route's ``Endpoint`` is decided in its upstream's ``Api::"<api>"`` whatever the
   catalog says (:func:`in_api`, :attr:`Route.parents`), with the route's
   ``resource.attributes`` where the catalog sets none (``AuthzRequest.
   resource_attributes``, also in the approval requests the gateway opens and uses;
   checked against the control plane's schema at start: :func:`route_attribute_problems`).
4. Rate limit, task scope (RFC 9396 ``api_access``) and policy
   (:meth:`Enforcer.decide`): 429 with ``Retry-After`` (RFC 6585 section 4, RFC 9110
   section 10.2.3), or 403 ``insufficient_scope`` (RFC 6750 section 3.1). The decision
   is durable in the local audit spool before anything is forwarded.
5. The request is forwarded with its body streamed: the agent's ``Authorization`` and
   ``DPoP`` headers removed, hop-by-hop headers removed (RFC 9110 section 7.6.1),
   client-supplied ``Forwarded`` (RFC 7239), ``X-Forwarded-*`` and ``X-Real-IP``
   removed and a fresh ``Forwarded: for=…;host=…;proto=…`` set, the brokered
   credential injected (with ``Accept-Encoding: identity`` in place of the client's,
   so the body that comes back can be looked at, step 6), ``traceparent`` (W3C
   Trace Context) continued.
   A deny that a human's approval would lift (docs/approvals.md) opens an approval
   request at the control plane and is answered 403 with a problem of type
   ``approval-pending``, ``AgentIAM-Approval: apr_…`` and ``Retry-After`` (after
   holding the call up to ``approvals.wait_seconds`` for the human). The agent retries
   the same call with the request header ``AgentIAM-Approval: apr_…``: the control
   plane uses the approval for exactly that call, once, and the call is decided as
   approved; ``approval-denied``, ``approval-expired``, ``approval-used`` or
   ``approval-mismatch`` otherwise.
6. The response is streamed back (:class:`_Relay`): hop-by-hop headers removed, the
   upstream's authentication challenges (``WWW-Authenticate``,
   ``Authentication-Info``, ``DPoP-Nonce``: they concern the brokered credential)
   removed; its trailer fields are discarded. A body in a transfer coding other than
   ``chunked`` alone is never relayed (502, RFC 9112 section 6.1,
   :func:`~agentiam.adapters.gateway.http_upstream.chunked_alone`). On a route that
   injects a credential, an upstream echoing it does not hand it to the agent, as
   sent or encoded (JSON string, percent-encoding, HTML, base64, hex: the forms of
   :class:`~agentiam.adapters.gateway.echo_mask.EchoForms`): a field whose name or
   value holds one is dropped, every occurrence in the body is masked in place with
   as many bytes (:class:`EchoMask`, also split across reads),
   with a warning naming the upstream and route (never the value) and a count in
   ``agentiam_gateway_credential_echoes_total``; a body in a content coding
   (which the gateway cannot look into) is 502, not relayed. Upstream timeouts give
   504, connection failures 502 (RFC 9110 sections 15.6.3 and 15.6.5); either way the
   outcome is audited as failed, with the reason. A client that sends its body too
   slowly (a read waits longer than ``timeouts.read``) gets 408; a client that
   leaves mid-response has the upstream read stopped. Both are audited as failed.
7. A ``tool.call`` event records the status, the secret used (``name@version``),
   the duration, why a failed call failed (``reason``) and what the upstream echoed
   of the credential (``details.echoed``: fields dropped, body occurrences masked)
   (:meth:`Enforcer.record_outcome`).

A refusal of a request whose body the gateway has not read to its end (any refusal
before forwarding a request with a body; a 413 or 408 while reading it; a 502 or 504
before the upstream took it) says ``Connection: close`` and ends the connection
(RFC 9112 section 9.6), so uvicorn does not read and discard the rest of the body to
keep the connection: a client without a token cannot make the gateway read up to
``max_request_bytes`` for nothing. A refusal of a request without a body keeps the
connection.

Every refusal is an RFC 9457 problem document (``application/problem+json``) that
never carries a stack trace. The listener (:class:`ListenerProtocol`, uvicorn's
httptools protocol) bounds the request head before any of this runs: 414 past
:data:`MAX_TARGET` bytes of request-target, 431 past :data:`MAX_HEAD` bytes of head,
505 for a version other than HTTP/1.1 and HTTP/1.0, and a connection whose head is
not complete within :data:`HEAD_TIMEOUT` seconds is closed (408 if it sent part of
one); it discards a chunked body's trailer fields, and closes a connection that
sends more than :data:`MAX_HEAD` bytes of them (or of chunk framing). WebSocket is
off (``ws="none"``): an ``Upgrade`` request is an ordinary HTTP request, authenticated
and audited like any other, and its ``Upgrade`` header is dropped as hop-by-hop.
``/.well-known/oauth-protected-resource[/path]`` serves the RFC 9728 metadata,
``/healthz`` the runtime's health (503 once it no longer decides), ``/metrics``
Prometheus text.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import time
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar, cast
from urllib.parse import unquote_to_bytes, urlsplit

import httptools
import httpx
from uvicorn.config import Config as UvicornConfig
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from agentiam.adapters.gateway.approvals import ApprovalTicket, NotApprovable
from agentiam.adapters.gateway.broker import (
    ApiKeyInjection,
    CredentialRef,
    credential_ref_from_config,
)
from agentiam.adapters.gateway.coalescing import CoalescingTransport
from agentiam.adapters.gateway.config import (
    GatewayConfig,
    UpstreamTls,
    load_gateway_config,
    upstream_tls,
)
from agentiam.adapters.gateway.dpop_nonces import NonceHeader
from agentiam.adapters.gateway.echo_mask import EchoForms, EchoMask, content_coded
from agentiam.adapters.gateway.enforcer import Call, SharedLimit, Verdict
from agentiam.adapters.gateway.http_upstream import (
    TransferCodingRefused,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeout,
    chunked_alone,
)
from agentiam.adapters.gateway.loop_watch import watch_event_loop
from agentiam.adapters.gateway.metrics import (
    CONTENT_TYPE,
    OUTCOME_OF_STATUS,
    GatewayMetrics,
    approval_outcome,
    refusal_outcome,
)
from agentiam.adapters.gateway.outcomes import OutcomeQueue
from agentiam.adapters.gateway.refusal_summaries import client_host
from agentiam.adapters.gateway.runtime import GatewayRuntime
from agentiam.adapters.heap import settle_heap
from agentiam.core.approvals_wire import APPROVAL_HEADER, APPROVAL_STATE_HEADER, PROBLEM_CODES
from agentiam.core.audit.events import Outcome, TraceContext
from agentiam.core.credentials.verifier import VerifiedAccess
from agentiam.core.delegation.authorization_details import ApiCall
from agentiam.core.ids import is_id
from agentiam.core.policy.entities import (
    EntitySnapshot,
    Place,
    attributes_key,
    derived_attributes,
    derived_attributes_problem,
)
from agentiam.core.policy.model import EntityRef, ResourceRecord
from agentiam.core.policy.schema import HTTP_METHODS, Schema
from agentiam.errors import PROBLEM_BASE, AgentIAMError, Forbidden, OAuthError, ServiceUnavailable

__all__ = [
    "SECTION_KEYS",
    "HttpGateway",
    "HttpGatewayConfig",
    "ListenerProtocol",
    "PathRejected",
    "Route",
    "Upstream",
    "check_overlaps",
    "forwarded_header",
    "load_config",
    "request_headers_for_upstream",
    "response_headers_for_client",
    "route_attribute_problems",
    "run",
    "split_path",
    "uvicorn_options",
]

log = logging.getLogger("agentiam.gateway.http")

SECTION_KEYS = frozenset({"upstreams", "routes", "max_request_bytes"})
DEFAULT_MAX_REQUEST_BYTES = 10 * 1024 * 1024  # a request body larger than this is 413
MAX_PATH = 8192  # bytes of request path accepted (414 beyond)
MAX_TARGET = 16 * 1024  # bytes of raw request-target the listener reads (414 beyond)
MAX_HEAD = 64 * 1024  # bytes of request-target and header fields it reads (431 beyond)
HEAD_TIMEOUT = 10.0  # seconds for a request's head to arrive (ListenerProtocol)
_PROBLEM_JSON = b"application/problem+json"
_RESERVED_PATHS = ("/healthz", "/metrics", "/.well-known/")
_ROUTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/ {}*-]{0,127}$")
_PARAM = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]{0,31})\}$")
_REST_PARAM = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]{0,31})\*\}$")  # {name*}: the rest
_ATTRIBUTE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")  # a Cedar attribute name
# the attributes of a route that gives its resource none (one shared, read-only mapping)
_NO_ATTRIBUTES: Mapping[str, Any] = MappingProxyType({})
_TEMPLATE_VAR = re.compile(r"\{([^{}]*)\}")
_ENTITY_TYPE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_API_ID = re.compile(r"^[^\x00-\x1f\x7f]{1,512}\Z")  # the catalog's bound on an entity id
_LITERAL_SEGMENT = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=:@%-]+$")
# RFC 9110 section 7.6.1: connection-specific fields a proxy must not forward
# (Proxy-Connection and Keep-Alive are the common non-standard ones).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
# Never forwarded from the client: its credentials (the upstream gets the brokered
# one), what the gateway sets itself, client claims about the path it came by, and the
# approval id it shows the gateway (the gateway's protocol, not the upstream's).
_CLIENT_ONLY = frozenset(
    {b"authorization", b"dpop", b"host", b"forwarded", b"x-real-ip", b"expect", b"traceparent"}
    | {APPROVAL_HEADER.lower().encode("ascii")}
)
_FRAMING = frozenset({b"content-length"})  # re-sent by the upstream client as it frames
# Never relayed to the client: the upstream's authentication challenges concern the
# brokered credential, which the agent does not hold; relayed, the agent's SDK would
# take them for the gateway's (RFC 9449 section 9 nonce, RFC 6750 invalid_token) and
# refresh its token or send the call again.
_DPOP_NONCE = b"dpop-nonce"
_UPSTREAM_ONLY = frozenset({b"www-authenticate", b"authentication-info", _DPOP_NONCE})
# sent instead of the client's on a route that injects a credential (the body is masked)
_IDENTITY_ONLY = (b"accept-encoding", b"identity")

T = TypeVar("T")


# -- configuration ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where matched requests go: ``url`` is scheme, authority and an optional path
    prefix (no trailing slash); ``credential`` what the broker injects; ``tls`` the CAs
    and client certificate of an https upstream; ``api`` the id of the ``Api`` entity
    its routes' endpoints are in (default: ``name``)."""

    name: str
    url: str
    api: str
    credential: CredentialRef | None
    tls: UpstreamTls | None = None  # None: the system's CAs, no client certificate


ROUTE_RESOURCE_IN_API = "Endpoint"
"""The route resource type decided in its upstream's ``Api`` (the schema's one type
that may be in an ``Api``). Any other type is decided as the route names it: an
``Api``-typed resource is that Api itself (``resource in Api::"x"`` covers
``Api::"x"``), a ``DataSet`` or an operator's type gets no parent from the route."""


def route_parents(resource_type: str, upstream: Upstream) -> tuple[EntityRef, ...]:
    """What a route's resource is in whatever the catalog says: its upstream's
    ``Api`` for an ``Endpoint`` (:func:`in_api`), else nothing
    (:data:`ROUTE_RESOURCE_IN_API`). Made once per route, at start."""
    return in_api(upstream.api) if resource_type == ROUTE_RESOURCE_IN_API else ()


def _route_records(routes: Iterable[Route]) -> tuple[ResourceRecord, ...]:
    """The derived records of the routes whose resource is in an ``Api`` whatever the
    catalog says, whose id has no placeholder and that give it no attributes: one per
    resource, in all the Apis its routes give it. (A route's attributes are its own
    calls', never another route's: they go with each call, not in a record every
    route naming that resource would see.)"""
    parents: dict[EntityRef, dict[EntityRef, None]] = {}
    for route in routes:
        if route.parents and not route.attributes and not _TEMPLATE_VAR.search(route.resource_id):
            ref = EntityRef(route.resource_type, route.resource_id)
            parents.setdefault(ref, {}).update(dict.fromkeys(route.parents))
    return tuple(ResourceRecord(r.type, r.id, {}, tuple(p)) for r, p in parents.items())


def _route_places(routes: Iterable[Route]) -> tuple[Place, ...]:
    """The places (a resource type, the parents the gateway gives it and the
    attributes its route derives for it, :data:`~agentiam.core.policy.entities.Place`)
    of the routes whose resource is in an ``Api`` whatever the catalog says or that
    give it attributes, each once: the stand-ins through which the decision point
    decides such a resource that the entities do not hold, without a copy."""
    return tuple(
        dict.fromkeys(
            Place(r.resource_type, r.parents, attributes_key(r.attributes))
            for r in routes
            if r.attributes or r.parents
        )
    )


def route_attribute_problems(routes: Iterable[Route], schema: Schema) -> list[str]:
    """What ``schema`` (the control plane's policy schema) refuses of the routes'
    ``resource.attributes``, one message per route naming it
    (:func:`~agentiam.core.policy.entities.derived_attributes_problem`, the check the
    decision point makes of every call's): an attribute it does not declare for the
    route's resource type, or a value not of the declared type."""
    out: list[str] = []
    for index, route in enumerate(routes):
        if not route.attributes:
            continue
        problem = derived_attributes_problem(schema, route.resource_type, route.attributes)
        if problem is not None:
            problem = problem.removeprefix("resource_attributes")
            out.append(
                f"routes[{index}] ({route.name}).resource.attributes{problem}"
                if problem.startswith(".")
                else f"routes[{index}] ({route.name}).resource.attributes: {problem}"
            )
    return out


def in_api(api: str) -> tuple[EntityRef, ...]:
    """The parents an ``Endpoint`` the gateway routes to an upstream whose Api is
    ``api`` has in its decisions, whatever the catalog says: ``Api::"<api>"``, per
    decision (:attr:`~agentiam.core.policy.authorizer.AuthzRequest.resource_parents`),
    so that an id made from the path (``invoice-{id}``) needs no catalog entry."""
    return (EntityRef("Api", api),)


@dataclass(frozen=True, slots=True)
class Route:
    """``method`` ``template`` → ``action`` on ``resource_type``::``resource_id`` (a
    template over the path's ``{name}`` placeholders), forwarded to ``upstream``.
    ``name`` is the tool name rate limits and the audit trail use.

    With ``rest``, the template's last segment is a catch-all ``{name*}``: it matches
    the rest of the path, one or more segments, each non-empty, and its value is
    those segments as :func:`split_path` checked and decoded them, joined with ``/``
    (never a path the gateway refused, and never a ``/`` a segment held encoded:
    :func:`split_path` refuses those). ``attributes``: the derived attributes the
    route gives its resource (``resource.attributes``), every call of the route
    carries them (:attr:`Call.resource_attributes
    <agentiam.adapters.gateway.enforcer.Call.resource_attributes>`)."""

    name: str
    method: str
    template: str
    segments: tuple[str | None, ...]  # a literal segment, or None for a placeholder
    params: tuple[str, ...]  # the placeholders' names, in path order
    upstream: Upstream
    action: str
    resource_type: str
    resource_id: str
    # what the route's resource is in whatever the catalog says (route_parents)
    parents: tuple[EntityRef, ...] = ()
    rest: bool = False  # the last placeholder is a catch-all {name*}
    attributes: Mapping[str, Any] = field(default_factory=lambda: _NO_ATTRIBUTES, hash=False)

    def match(self, segments: Sequence[str]) -> dict[str, str] | None:
        """The placeholder values when ``segments`` (percent-decoded, from
        :func:`split_path`) fit the template, else None. A catch-all route's last
        placeholder takes the rest of the path: one or more non-empty segments,
        joined with ``/`` (a trailing slash, an empty last segment, does not match)."""
        count = len(self.segments)
        if len(segments) != count and not (self.rest and len(segments) > count):
            return None
        values: list[str] = []
        for want, got in zip(self.segments, segments, strict=False):  # a catch-all: its first
            if want is None:
                if not got:
                    return None
                values.append(got)
            elif want != got:
                return None
        if self.rest:
            rest = segments[count - 1 :]
            if not all(rest):
                return None
            values[-1] = "/".join(rest)
        return dict(zip(self.params, values, strict=True))

    def resource(self, values: Mapping[str, str]) -> EntityRef:
        return EntityRef(
            self.resource_type,
            _TEMPLATE_VAR.sub(lambda m: values[m.group(1)], self.resource_id),
        )


@dataclass(frozen=True, slots=True)
class HttpGatewayConfig:
    gateway: GatewayConfig
    upstreams: Mapping[str, Upstream]
    routes: tuple[Route, ...]
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES

    @property
    def prefix(self) -> str:
        """``public_url``'s path: the gateway serves the API beneath it."""
        return urlsplit(self.gateway.public_url).path.rstrip("/")

    @property
    def origin(self) -> str:
        parts = urlsplit(self.gateway.public_url)
        return f"{parts.scheme}://{parts.netloc}"


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected a mapping")
    return value


def _only(value: Mapping[str, Any], where: str, allowed: set[str]) -> None:
    unknown = sorted(set(map(str, value)) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown keys {', '.join(unknown)}")


def _upstream(name: Any, raw: Any) -> Upstream:
    where = f"upstreams.{name}"
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        raise ValueError(f"{where}: an upstream name is 1-64 of A-Z, a-z, 0-9, '.', '_', '-'")
    body = _mapping(raw, where)
    _only(body, where, {"url", "credential", "tls", "api"})
    url = body.get("url")
    if not isinstance(url, str) or len(url) > 2048:
        raise ValueError(f"{where}.url: an http(s) URL")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{where}.url: an http(s) URL")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError(f"{where}.url: a URL without user info, query or fragment")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"{where}.url: invalid port") from None
    credential = None
    if body.get("credential") is not None:
        try:
            credential = credential_ref_from_config(
                _mapping(body["credential"], f"{where}.credential")
            )
        except ValueError as exc:
            raise ValueError(f"{where}.credential: {exc}") from None
    tls = upstream_tls(body.get("tls"), f"{where}.tls", url)
    api = body.get("api", name)
    if not isinstance(api, str) or not _API_ID.match(api):
        raise ValueError(f"{where}.api: an Api entity id, 1-512 characters, no control characters")
    return Upstream(name, url.rstrip("/"), api, credential, tls)


def _template(path: Any, where: str) -> tuple[tuple[str | None, ...], tuple[str, ...], bool]:
    """A route's ``match.path``: its segments (None for a placeholder), its
    placeholders' names, and whether the last one is a catch-all ``{name*}``."""
    if not isinstance(path, str) or not path.startswith("/") or len(path) > 1024:
        raise ValueError(f"{where}: a path starting with '/'")
    if path != "/" and any(path.startswith(p.rstrip("/")) for p in _RESERVED_PATHS):
        raise ValueError(f"{where}: /healthz, /metrics and /.well-known/ are the gateway's own")
    if ";" in path:
        raise ValueError(f"{where}: a request path with ';' is refused, write it as %3B")
    segments: list[str | None] = []
    params: list[str] = []
    parts = path[1:].split("/")
    rest = False
    for index, segment in enumerate(parts):
        param = _PARAM.match(segment) or _REST_PARAM.match(segment)
        if param:
            if param.group(1) in params:
                raise ValueError(f"{where}: placeholder {{{param.group(1)}}} appears twice")
            if segment.endswith("*}"):
                if index != len(parts) - 1:
                    raise ValueError(
                        f"{where}: the catch-all {segment} must be the last segment "
                        "(one per path, with no trailing slash after it)"
                    )
                rest = True
            params.append(param.group(1))
            segments.append(None)
            continue
        if segment == "" and index == len(parts) - 1:
            segments.append("")  # a trailing slash (or the root path) is matched as is
            continue
        if not _LITERAL_SEGMENT.match(segment) or segment in (".", ".."):
            raise ValueError(
                f"{where}: segment {segment[:40]!r} is neither a literal, a {{name}} "
                "nor a last {name*}"
            )
        try:
            segments.append(_decode_segment(segment))
        except PathRejected as exc:
            raise ValueError(f"{where}: {exc}") from None
    return tuple(segments), tuple(params), rest


def _attributes(raw: Any, where: str) -> Mapping[str, Any]:
    """A route's ``resource.attributes``: the derived attributes it gives its
    resource. Their names are checked here, their shape (count, JSON, size) by
    :func:`~agentiam.core.policy.entities.derived_attributes` (once: each call hands
    the result, with its key, to the decision), their types against the control
    plane's policy schema when the gateway starts and with each bundle
    (:func:`route_attribute_problems`)."""
    if raw is None:
        return _NO_ATTRIBUTES
    body = _mapping(raw, where)
    if not body:
        raise ValueError(f"{where}: name at least one attribute, or leave attributes out")
    for name in body:
        if not isinstance(name, str) or not _ATTRIBUTE_NAME.match(name):
            raise ValueError(f"{where}: {str(name)[:40]!r} is not an attribute name")
    try:
        return derived_attributes(body)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _route(index: int, raw: Any, upstreams: Mapping[str, Upstream]) -> Route:
    where = f"routes[{index}]"
    body = _mapping(raw, where)
    _only(body, where, {"name", "match", "upstream", "action", "resource"})
    match = _mapping(body.get("match"), f"{where}.match")
    _only(match, f"{where}.match", {"method", "path"})
    method = match.get("method")
    if not isinstance(method, str) or method.upper() not in HTTP_METHODS:
        raise ValueError(f"{where}.match.method: one of {', '.join(HTTP_METHODS)}")
    method = method.upper()
    path = match.get("path")
    segments, params, rest = _template(path, f"{where}.match.path")
    assert isinstance(path, str)
    upstream = body.get("upstream")
    if upstream not in upstreams:
        raise ValueError(f"{where}.upstream: not one of the upstreams ({', '.join(upstreams)})")
    action = body.get("action")
    if not isinstance(action, str) or not _ENTITY_TYPE.match(action):
        raise ValueError(f"{where}.action: a Cedar action name (e.g. GET, read, invoke_tool)")
    resource = _mapping(body.get("resource"), f"{where}.resource")
    _only(resource, f"{where}.resource", {"type", "id", "attributes"})
    rtype = resource.get("type")
    if not isinstance(rtype, str) or not _ENTITY_TYPE.match(rtype):
        raise ValueError(f"{where}.resource.type: a Cedar entity type (e.g. Endpoint)")
    rid = resource.get("id")
    if not isinstance(rid, str) or not rid or len(rid) > 256:
        raise ValueError(f"{where}.resource.id: 1-256 characters")
    for name in _TEMPLATE_VAR.findall(rid):
        if name.endswith("*") and name[:-1] in params:
            raise ValueError(f"{where}.resource.id: write the catch-all as {{{name[:-1]}}}")
        if name not in params:
            raise ValueError(f"{where}.resource.id: {{{name}}} is not a placeholder of the path")
    attributes = _attributes(resource.get("attributes"), f"{where}.resource.attributes")
    name = body.get("name", f"{method} {path}")
    if not isinstance(name, str) or not _ROUTE_NAME.match(name):
        raise ValueError(f"{where}.name: 1-128 characters of A-Z, a-z, 0-9 and ._:/- {{}}")
    _warn_if_another_api(where, rtype, rid, upstreams[str(upstream)])
    return Route(
        name=name,
        method=method,
        template=path,
        segments=segments,
        params=params,
        upstream=upstreams[str(upstream)],
        action=action,
        resource_type=rtype,
        resource_id=rid,
        parents=route_parents(rtype, upstreams[str(upstream)]),
        rest=rest,
        attributes=attributes,
    )


def _warn_if_another_api(where: str, rtype: str, rid: str, upstream: Upstream) -> None:
    """An ``Api``-typed route decides its calls on ``Api::"<id>"`` itself, so a policy
    written for its upstream's Api (``resource in Api::"<api>"``) does not cover it
    when the id is another: likely a mistake, but a deployment may mean it (several
    Apis behind one upstream), so it is a warning at start, not an error. An id made
    from the path lets the client name the Api: warned about too."""
    if rtype != "Api" or rid == upstream.api:
        return
    if _TEMPLATE_VAR.search(rid):
        log.warning(
            "%s: the resource Api::%r is made from the request path, so the client names "
            "the Api its calls are decided on; policies on Api::%r (upstream %s) do not "
            "cover it",
            where, rid, upstream.api, upstream.name,
        )  # fmt: skip
    else:
        log.warning(
            "%s: the resource Api::%r is not its upstream %s's Api (%r): policies on "
            "Api::%r do not cover this route; set upstreams.%s.api or the route's id if "
            "that is not meant",
            where, rid, upstream.name, upstream.api, upstream.api, upstream.name,
        )  # fmt: skip


_Prefix = tuple[str | None, ...]  # a template's segments before any catch-all; None: {name}


def _both_match(a: _Prefix, b: _Prefix, rest: bool) -> _Prefix | None:
    """The template of the paths two routes' templates ``a`` and ``b`` both match, or
    None when no path matches both: the same number of segments (catch-alls: their
    prefixes, a shorter one's rest standing for any non-empty segment past it),
    each position two equal literals or a placeholder (any non-empty segment)."""
    if not rest and len(a) != len(b):
        return None
    out: list[str | None] = []
    for i in range(max(len(a), len(b))):
        x = a[i] if i < len(a) else None
        y = b[i] if i < len(b) else None
        if x is None or y is None:
            if x == "" or y == "":  # a trailing slash's empty segment: no placeholder's
                return None
            out.append(y if x is None else x)
        elif x != y:
            return None
        else:
            out.append(x)
    return tuple(out)


def _covers(c: _Prefix, t: _Prefix, rest: bool) -> bool:
    """Whether template ``c`` matches every path template ``t`` does (catch-alls: a
    prefix no longer than ``t``'s, whose rest takes what ``t`` has past it)."""
    if len(c) > len(t) or (not rest and len(c) != len(t)):
        return False
    return all(x == y or (x is None and y != "") for x, y in zip(c, t, strict=False))


_Entry = tuple[int, Route, _Prefix]  # a route's index in the list, the route, its prefix


class _Trie:
    """The templates of one method's routes, with or without a catch-all (and then of
    one length), by segment: :meth:`overlapping` walks only the branches a path of a
    new template could take."""

    __slots__ = ("children", "routes")

    def __init__(self) -> None:
        self.children: dict[str | None, _Trie] = {}
        self.routes: list[_Entry] = []  # ending here

    def add(self, entry: _Entry) -> None:
        node = self
        for segment in entry[2]:
            node = node.children.setdefault(segment, _Trie())
        node.routes.append(entry)

    def overlapping(
        self, prefix: _Prefix, rest: bool, budget: int | None = None
    ) -> list[_Entry] | None:
        """The routes whose templates match a path ``prefix`` matches, or None once
        the walk has met more than ``budget`` nodes (a ``{name}`` meets every literal
        child of a node, so a walk can meet the whole trie)."""
        out: list[_Entry] = []
        left = float("inf") if budget is None else budget

        def visit(node: _Trie, depth: int) -> None:
            nonlocal left
            if rest or depth == len(prefix):
                out.extend(node.routes)
            segment = prefix[depth] if depth < len(prefix) else None
            if segment is not None:
                keys: Iterable[str | None] = ("",) if segment == "" else (segment, None)
                left -= 1
            elif depth < len(prefix) or rest:
                # a {name} takes any non-empty segment, and so does a catch-all's rest
                # past its prefix: every child but a trailing slash's
                left -= len(node.children) + 1
                if left < 0:
                    raise _OverBudget
                keys = [key for key in node.children if key != ""]
            else:
                return
            if left < 0:
                raise _OverBudget
            for key in keys:
                child = node.children.get(key)
                if child is not None:
                    visit(child, depth + 1)

        try:
            visit(self, 0)
        except _OverBudget:
            return None
        return out


class _OverBudget(Exception):
    """A :class:`_Trie` walk that would cost more than its budget."""


class _Overlaps:
    """The routes of one method, with or without a catch-all (and then of one
    length), indexed twice to find those listed before a new route that match a path
    it matches (:meth:`overlapping`) without comparing it with each of them:

    * a :class:`_Trie` by segment, good when the new template's placeholders meet
      few literals of the earlier ones (``/v1/{id}`` among ``/v1/...``);
    * by position: at each segment position, the routes with each literal there and
      those with a ``{name}`` there (and, for catch-alls, those whose prefix ends
      before it, their rest taking it). A literal of the new template leaves only
      the routes with that literal or a placeholder at its position: the fewest such
      routes over its literals are compared, good when its placeholders come first
      (``/{x}/{y}/c`` among thousands of ``/a/b/...``).

    The trie is walked within a budget worth that many comparisons (each a walk over
    the template's segments, :func:`_both_match`); past it, the index's routes are
    compared. So a lookup costs at most a few times the cheaper of the two. Both can
    still cost a comparison per earlier route for contrived templates (finding the
    templates that share a path with one is a partial-match query): the whole check
    is O(n²) in the number of routes n at worst (``/u_j/{x}/X_j`` and
    ``/v_j/Y_j/{x}``, then ``/{x}/Q_i/R_i``), O(n) when templates differ in a literal
    the trie or the index can use."""

    __slots__ = ("at", "rest", "shorter", "trie")

    def __init__(self, rest: bool) -> None:
        self.rest = rest
        self.trie = _Trie()
        self.at: list[dict[str | None, list[_Entry]]] = []  # position: segment: routes
        self.shorter: list[list[_Entry]] = []  # catch-alls: routes by prefix length

    def add(self, entry: _Entry) -> None:
        self.trie.add(entry)
        prefix = entry[2]
        while len(self.at) < len(prefix):
            self.at.append({})
        for position, segment in enumerate(prefix):
            self.at[position].setdefault(segment, []).append(entry)
        if self.rest:
            while len(self.shorter) <= len(prefix):
                self.shorter.append([])
            self.shorter[len(prefix)].append(entry)

    def _pool(self, prefix: _Prefix) -> list[list[_Entry]] | None:
        """The fewest routes that could share a path with ``prefix`` by one of its
        literals, as lists whose union holds them (none in two), or None when it has
        no literal."""
        best: int | None = None
        size = shorter = 0  # shorter: catch-alls whose prefixes end before the position
        for position, segment in enumerate(prefix):
            if self.rest and position < len(self.shorter):
                shorter += len(self.shorter[position])
            if segment is None:
                continue
            at = self.at[position] if position < len(self.at) else {}
            found = len(at.get(segment, ())) + shorter
            if segment != "":  # a {name} never takes a trailing slash's empty segment
                found += len(at.get(None, ()))
            if best is None or found < size:
                best, size = position, found
        if best is None:
            return None
        segment = prefix[best]
        at = self.at[best] if best < len(self.at) else {}
        lists = [at.get(segment, [])]
        if segment != "":
            lists.append(at.get(None, []))
        return lists + self.shorter[: best + 1] if self.rest else lists

    def overlapping(self, prefix: _Prefix) -> list[_Entry]:
        """The routes added so far whose templates match a path ``prefix`` matches
        (:func:`_both_match`), in the order they were added."""
        pool = self._pool(prefix)
        if pool is None:  # no literal: any route may share a path, the walk decides
            found = self.trie.overlapping(prefix, self.rest)
        else:
            # a comparison costs about as much as visiting 4 nodes per segment
            budget = (sum(map(len, pool)) + 1) * (len(prefix) + 1) * 4
            found = self.trie.overlapping(prefix, self.rest, budget)
        if found is None:
            assert pool is not None  # found without a budget
            found = [
                entry
                for entries in pool
                for entry in entries
                if _both_match(entry[2], prefix, self.rest) is not None
            ]
        return sorted(found, key=lambda entry: entry[0])


def _shown(template: _Prefix, rest: bool) -> str:
    return "/" + "/".join("{…}" if s is None else s for s in template) + ("/{…*}" if rest else "")


def check_overlaps(routes: Sequence[Route]) -> None:
    """Refuse (ValueError naming both) two routes of one method that match a path in
    common where the configuration's order would decide between them silently.

    :meth:`HttpGateway.route_for` tries every route without a catch-all before any
    with one, so those never overlap each other; within each kind, the first listed
    matching route wins. Two routes of the same kind and method whose templates match
    a path in common (:func:`_both_match`: no catch-all, the same number of segments,
    each position equal literals or a ``{name}`` on either side; catch-alls, their
    prefixes compared so over the shorter one's length) are refused when

    * the later one is never matched: the earlier matches every path it does (the
      same template with other names, ``/v1/a/{id}`` and ``/v1/a/{x}``, or
      ``/v1/a/{id}`` listed before ``/v1/a/me``);
    * neither matches every path the other does (``/a/{x}/c`` and ``/a/b/{y}``
      both match ``/a/b/c``), unless a route listed before both matches every path
      they share (``/a/b/c`` listed first).

    A route listed before one that matches every path it does and more (``/v1/a/me``
    before ``/v1/a/{id}``, ``/files/{p*}`` before ``/{all*}``) is the way to route a
    special case apart, and taken: each path's route is the most specific one.

    Cost: each route is compared only with the earlier routes that could share a
    path with it, found through :class:`_Overlaps` (a trie, and an index by segment
    position past a budget): linear in the number of routes when they differ in a
    literal one of the two can use (10,000 routes: under 0.1 s), quadratic at worst
    for contrived templates. It runs once, when the configuration is read."""
    groups: dict[tuple[str, bool, int], _Overlaps] = {}
    for index, route in enumerate(routes):
        rest = route.rest
        prefix = route.segments[:-1] if rest else route.segments
        key = (route.method, rest, -1 if rest else len(prefix))
        group = groups.get(key) or groups.setdefault(key, _Overlaps(rest))
        earlier = group.overlapping(prefix)
        for position, (first, other, theirs) in enumerate(earlier):
            shared = _both_match(theirs, prefix, rest)
            if shared is None:  # not reached: only overlapping routes were found
                continue
            named = f"routes[{first}] ({other.name}) and routes[{index}] ({route.name})"
            if _covers(theirs, prefix, rest):
                raise ValueError(
                    f"{named}: the second is never matched, the first (listed before it) "
                    "matches every path it does; remove one, or list the more specific first"
                )
            if _covers(prefix, theirs, rest):
                continue  # the more specific one is listed first
            if any(_covers(c, shared, rest) for _, _, c in earlier[:position]):
                continue  # a route listed before both takes every path they share
            raise ValueError(
                f"{named} both match {route.method} {_shown(shared, rest)}: the order of "
                "the list would decide between them silently; list a route for the paths "
                "they share before both, or change one"
            )
        group.add((index, route, prefix))


def load_config(data: Any) -> HttpGatewayConfig:
    """Validate a whole HTTP gateway configuration; ValueError naming the bad key."""
    gateway = load_gateway_config(data, "http", section_keys=SECTION_KEYS)
    section = gateway.section
    raw_upstreams = _mapping(section.get("upstreams"), "upstreams")
    if not raw_upstreams:
        raise ValueError("upstreams: name at least one upstream")
    upstreams = {str(name): _upstream(name, raw) for name, raw in raw_upstreams.items()}
    raw_routes = section.get("routes")
    if not isinstance(raw_routes, list) or not raw_routes:
        raise ValueError("routes: a list of at least one route")
    if len(raw_routes) > 10_000:
        raise ValueError("routes: at most 10000")
    routes = tuple(_route(i, raw, upstreams) for i, raw in enumerate(raw_routes))
    check_overlaps(routes)
    if gateway.secrets_store is None and any(u.credential for u in upstreams.values()):
        raise ValueError("secrets.store: an upstream injects a credential, name the store")
    limit = section.get("max_request_bytes", DEFAULT_MAX_REQUEST_BYTES)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1 << 40:
        raise ValueError("max_request_bytes: a whole number of bytes from 1 to 2**40")
    return HttpGatewayConfig(gateway, upstreams, routes, limit)


# -- requests -----------------------------------------------------------------------------


class PathRejected(ValueError):
    """A request path the gateway will not route: it could be read two ways."""


_SAFE_RAW = re.compile(rb"^[\x21-\x7e]*$")
# Lookalikes of '/' and '\' that NFKC leaves as they are (or yields) but other
# foldings map to them: Windows "best fit" code pages turn U+2215 into '/' and, in
# cp932 and cp949 whose 0x5C is the path separator, U+00A5 YEN SIGN and U+20A9 WON
# SIGN into 0x5C; Unicode's confusables (UTS #39 section 4) list the others. Refused
# in a segment as '/' and '\' are, in its text and in its NFKC form (U+00BD folds to
# "1" U+2044 "2")
_SLASH_LOOKALIKES = frozenset("\u00a5\u20a9\u2044\u2215\u2216\u29f5\u29f8\u29f9")


def _unicode_problem(decoded: str) -> str | None:
    """Why a decoded segment that is not ASCII could be read as another path by an
    upstream that folds Unicode, or None.

    * It holds one of :data:`_SLASH_LOOKALIKES`, or its NFKC form does.
    * Its NFKC form (Unicode UAX #15) holds '/' or '\\' or is '.' or '..' (also
      before a ';'): U+FF0F and U+FF3C are '/' and '\\', U+2024, U+FE52 and U+FF0E
      are '.', U+2025 is '..'.
    * Its NFKC form is another text (fullwidth letters, ligatures, mathematical
      alphanumerics, decomposed accents): an upstream that normalises would serve
      the route of that text (``/%EF%BD%81dmin``, U+FF41 FULLWIDTH SMALL A, is
      ``/admin`` to it) while the gateway decided on this one (a ``{name}`` route),
      so the route decided would not be the route served.

    A segment whose NFKC form is itself (``café`` in NFC, CJK text) is data."""
    if not _SLASH_LOOKALIKES.isdisjoint(decoded):
        return "a segment that holds a lookalike of '/' or '\\' (U+2215, U+00A5, ...)"
    if unicodedata.is_normalized("NFKC", decoded):
        return None
    folded = unicodedata.normalize("NFKC", decoded)
    if (
        "/" in folded
        or "\\" in folded
        or folded.split(";", 1)[0] in (".", "..")
        or not _SLASH_LOOKALIKES.isdisjoint(folded)
    ):
        return (
            "a segment that reads as '/', '\\', '.' or '..' once Unicode compatibility "
            "forms are folded (NFKC)"
        )
    return (
        "a segment that Unicode normalisation (NFKC) changes: an upstream that "
        "normalises could read it as another path; send it in NFKC form"
    )


def _decode_segment(segment: str) -> str:
    if "%" not in segment:
        decoded = segment
    else:
        if re.search(r"%(?![0-9A-Fa-f]{2})", segment):
            raise PathRejected("malformed percent-encoding")
        try:
            decoded = unquote_to_bytes(segment).decode("utf-8")
        except UnicodeDecodeError:
            raise PathRejected("a percent-encoded segment that is not UTF-8") from None
    if "/" in decoded or "\\" in decoded or any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded):
        raise PathRejected("an encoded '/', '\\' or control character")
    if decoded.split(";", 1)[0] in (".", ".."):
        raise PathRejected("a '.' or '..' segment")
    if not decoded.isascii():
        problem = _unicode_problem(decoded)
        if problem is not None:
            raise PathRejected(problem)
    return decoded


def split_path(raw_path: bytes, prefix: str = "") -> tuple[str, ...]:
    """The percent-decoded segments of ``raw_path`` beneath ``prefix``.

    Raises :class:`PathRejected` for anything a server might normalise differently
    than the route match (RFC 3986 section 6.2.2): ``.``/``..`` segments (also
    ``..;``), a ``;`` (servlet containers and Spring drop a segment's ``;params``
    before routing, RFC 3986 section 3.3; an encoded ``%3B`` is kept), encoded ``/``
    or ``\\``, a backslash, empty segments (``//``), bytes outside visible ASCII,
    malformed or non-UTF-8 percent-encoding, a percent-encoded segment that is not
    ASCII and that an upstream folding Unicode could read as another path
    (:func:`_unicode_problem`: a lookalike of ``/`` or ``\\``, NFKC forms that hold
    ``/`` or ``\\`` or are dot segments, and any segment NFKC changes, UAX #15;
    checked only for segments that are not ASCII, so an ASCII path pays nothing);
    and ``None``-like paths outside ``prefix``."""
    if len(raw_path) > MAX_PATH:
        raise PathRejected("the path is too long")
    if not raw_path.startswith(b"/") or not _SAFE_RAW.match(raw_path) or b"\\" in raw_path:
        raise PathRejected("the path holds characters outside visible ASCII, or a backslash")
    if b";" in raw_path:
        raise PathRejected("a ';' path parameter")
    path = raw_path.decode("ascii")
    if prefix:
        if path != prefix and not path.startswith(prefix + "/"):
            raise PathRejected("outside this gateway's public URL")
        path = path[len(prefix) :] or "/"
    parts = path[1:].split("/")
    if not all(parts[:-1]):
        raise PathRejected("an empty path segment")
    if "%" not in path:  # the usual path: nothing to decode, and the checks above left
        # visible ASCII without ';' or '\\' in segments without '/': only dot segments
        if "." in path and ("." in parts or ".." in parts):
            raise PathRejected("a '.' or '..' segment")
        return tuple(parts)
    return tuple(_decode_segment(p) for p in parts)


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[str]:
    return [v.decode("latin-1") for k, v in headers if k == name]


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """Field names a ``Connection`` header lists (RFC 9110 section 7.6.1)."""
    tokens: set[bytes] = set()
    for key, value in headers:
        if key == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return tokens


def _quote_forwarded(value: str) -> str:
    """An RFC 7239 section 4 value: a token as is, anything else as a quoted string."""
    if re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def forwarded_header(client: tuple[str, int] | None, host: str, proto: str) -> str:
    """``Forwarded: for=…;host=…;proto=…`` (RFC 7239 sections 4-5) for the client the
    gateway saw, IPv6 addresses bracketed and quoted (section 6)."""
    if client is None or not client[0]:
        node = "unknown"
    elif ":" in client[0]:
        node = f"[{client[0]}]"
    else:
        node = client[0]
    return (
        f"for={_quote_forwarded(node)};host={_quote_forwarded(host)};"
        f"proto={_quote_forwarded(proto)}"
    )


def request_headers_for_upstream(
    headers: Iterable[tuple[bytes, bytes]],
    *,
    inject: Mapping[str, str],
    forwarded: str,
    trace: TraceContext,
) -> list[tuple[bytes, bytes]]:
    """The client's headers as the upstream gets them: without hop-by-hop fields and
    those ``Connection`` names (RFC 9110 section 7.6.1), without the agent's
    ``Authorization``/``DPoP``, ``Host``, ``Expect`` and every client claim about the
    route (``Forwarded``, ``X-Forwarded-*``, ``X-Real-IP``); with the brokered
    credential (replacing any client header of that name), a fresh ``Forwarded`` and
    the continued ``traceparent``. With a credential, ``Accept-Encoding: identity``
    replaces the client's (RFC 9110 section 12.5.3): the gateway looks for the
    credential in the body it relays, which it cannot do in a compressed one."""
    headers = list(headers)
    drop = HOP_BY_HOP | _CLIENT_ONLY | _FRAMING | _connection_tokens(headers)
    injected = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in inject.items()]
    if injected:
        injected.append(_IDENTITY_ONLY)
    drop |= {k for k, _ in injected}
    out = [(k, v) for k, v in headers if k not in drop and not k.startswith(b"x-forwarded-")]
    out.extend(injected)
    out.append((b"forwarded", forwarded.encode("latin-1")))
    out.append((b"traceparent", f"00-{trace.trace_id}-{trace.span_id}-01".encode("ascii")))
    return out


def response_headers_for_client(
    headers: Iterable[tuple[bytes, bytes]], forms: EchoForms | None = None
) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers without hop-by-hop fields (RFC 9110 7.6.1),
    without its authentication challenges (``WWW-Authenticate``,
    ``Authentication-Info``, ``DPoP-Nonce``: the gateway authenticates the agent) and
    without any field whose name or value holds one of ``forms``, those of the
    brokered credential the upstream was sent (as sent or encoded,
    :class:`~agentiam.adapters.gateway.echo_mask.EchoForms`): an upstream that echoes
    request fields must not hand it to the agent (:func:`_echoed_fields` names them;
    the body is masked as it is relayed,
    :class:`~agentiam.adapters.gateway.echo_mask.EchoMask`)."""
    headers = [(k.lower(), v) for k, v in headers]
    drop = HOP_BY_HOP | _UPSTREAM_ONLY | _connection_tokens(headers)
    out = [(k, v) for k, v in headers if k not in drop]
    if forms is not None and any(_holds(k, v, forms) for k, v in out):
        out = [(k, v) for k, v in out if not _holds(k, v, forms)]
    return out


def _holds(name: bytes, value: bytes, forms: EchoForms) -> bool:
    """Whether a field holds a form of the credential: in its value, or in its name
    in any case (field names are case-insensitive, RFC 9110 section 5.1)."""
    return forms.holds(value) or forms.holds(name, any_case=True)


def _echoed_fields(headers: Iterable[tuple[bytes, bytes]], forms: EchoForms) -> list[str]:
    """The names of the response fields holding one of ``forms``, for a log line: the
    form itself masked where a name holds it."""
    return sorted(
        {
            forms.mask(k.lower(), any_case=True)[0].decode("latin-1")
            for k, v in headers
            if _holds(k, v, forms)
        }
    )


# -- the ASGI application ----------------------------------------------------------------


class _TooLarge(Exception):
    """The request body went past ``max_request_bytes``."""


class _ClientGone(Exception):
    """The client disconnected while its request was forwarded or its answer sent."""


class _ClientTimeout(Exception):
    """The client's request body did not come in time (a read past ``timeouts.read``)."""


_NOT_CUT = frozenset({"allowed", "client_gone"})  # a failed call whose answer is not cut


class _ClientWatch:
    """While a response streams, waits for the client's ``http.disconnect`` (ASGI
    ``receive()`` once the request body is read), then aborts the upstream
    connection: the gateway stops reading a body nobody takes, and that connection
    is never reused. Started only for a body not already read whole."""

    __slots__ = ("_task", "gone")

    def __init__(
        self, receive: Callable[[], Awaitable[dict[str, Any]]], response: UpstreamResponse
    ) -> None:
        self.gone = False
        self._task = asyncio.create_task(self._watch(receive, response))

    async def _watch(
        self, receive: Callable[[], Awaitable[dict[str, Any]]], response: UpstreamResponse
    ) -> None:
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        except Exception:  # a server that cannot tell: there is nothing to stop
            return
        self.gone = True
        response.abort()

    def stop(self) -> None:
        self._task.cancel()


class _Aborted(Exception):
    """The upstream failed after the response had started: the connection is cut so
    the client cannot take a truncated body for a whole one."""


@dataclass(slots=True)
class _Refusal:
    status: int
    body: dict[str, Any]
    headers: Mapping[str, str]
    label: str  # the metrics outcome


@dataclass(slots=True)
class _Permit:
    access: VerifiedAccess
    route: Route
    call: Call
    verdict: Verdict
    inject: dict[str, str]
    secret: str | None
    content_length: int | None  # the request's (also 0), None: chunked or no body
    has_body: bool
    echo: EchoForms | None = None  # the brokered credential's forms: not relayed
    peer: str | None = None  # the connection's network address, named in refusals


@dataclass(slots=True)
class _Authenticated:
    """A request past step 1, not decided yet."""

    access: VerifiedAccess
    method: str
    url: str
    segments: tuple[str, ...]
    headers: list[tuple[bytes, bytes]]
    framing: tuple[int | None, bool]
    peer: str | None = None  # the connection's network address, named in refusals


@dataclass(slots=True)
class _Approval:
    """A call that waits on a human: a deny approval would lift (``verdict``), or a
    retry carrying ``approval_id`` (not decided yet)."""

    access: VerifiedAccess
    route: Route
    call: Call
    framing: tuple[int | None, bool]
    approval_id: str | None
    verdict: Verdict | None = None
    limit: SharedLimit | None = None  # the replicas' shared rate limit's answer
    peer: str | None = None  # the connection's network address, named in refusals


_APPROVAL_REQUEST_HEADER = APPROVAL_HEADER.lower().encode("ascii")

_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    408: "Request timeout",
    413: "Content too large",
    414: "URI too long",
    429: "Too many requests",
    431: "Request header fields too large",
    501: "Not implemented",
    502: "Bad gateway",
    503: "Service unavailable",
    504: "Gateway timeout",
    505: "HTTP version not supported",
}


def _problem(
    status: int, code: str, detail: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> _Refusal:
    """An RFC 9457 problem document (section 3.1 members plus extensions)."""
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + code,
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        **{k: v for k, v in extra.items() if v is not None},
    }
    return _Refusal(status, body, dict(headers or {}), refusal_outcome(status))


def _oauth_refusal(exc: OAuthError) -> _Refusal:
    status = exc.oauth_status
    headers = dict(exc.headers)
    if status == 503:
        headers.setdefault("Retry-After", "5")
    return _problem(status, exc.error.replace("_", "-"), exc.detail, headers, error=exc.error)


def _unavailable(exc: AgentIAMError) -> _Refusal:
    return _problem(503, exc.code, exc.detail, {"Retry-After": "5"}, hint=exc.hint)


def _answering(step: Callable[[], T]) -> T | _Refusal:
    """Run an enforcer step; the 503 or OAuth error it raises becomes the answer."""
    try:
        return step()
    except ServiceUnavailable as exc:
        return _unavailable(exc)
    except OAuthError as exc:
        return _oauth_refusal(exc)


class HttpGateway:
    """The ASGI application (HTTP and lifespan scopes). ``workers`` bounds the threads
    for the few blocking calls left (an OAuth token fetch, health and metrics)."""

    def __init__(
        self, config: HttpGatewayConfig, runtime: GatewayRuntime, *, workers: int = 8
    ) -> None:
        self.config = config
        self.runtime = runtime
        self.enforcer = runtime.enforcer
        self._prefix = config.prefix
        self._max_body = config.max_request_bytes
        self._origin = config.origin
        public = urlsplit(config.gateway.public_url)
        self._public_host = public.netloc
        self._proto = public.scheme
        self._metadata_path = "/.well-known/oauth-protected-resource" + self._prefix
        # Routes without a catch-all by method and number of segments; after them,
        # those with one, by method (each in configuration order: route_for)
        self._routes: dict[tuple[str, int], list[Route]] = {}
        self._rest_routes: dict[str, list[Route]] = {}
        for route in config.routes:
            if route.rest:
                self._rest_routes.setdefault(route.method, []).append(route)
            else:
                self._routes.setdefault((route.method, len(route.segments)), []).append(route)
        self._base_paths = {
            name: urlsplit(u.url).path.rstrip("/").encode("ascii")
            for name, u in config.upstreams.items()
        }
        # details.target of every decision and tool.call event (detection reads it)
        self._targets = {
            name: {"host": (urlsplit(u.url).hostname or "").lower()}
            for name, u in config.upstreams.items()
        }
        self._total = config.gateway.timeouts.total
        self._read = config.gateway.timeouts.read  # per read of the client's body
        self._pools: dict[str, UpstreamPool] = {}
        self._workers = workers
        self._executor: ThreadPoolExecutor | None = None
        # RFC 9449 section 9: every answer to a proxied request carries a nonce
        self._nonce = runtime.nonce_header
        self._outcomes = OutcomeQueue(self.enforcer)
        self.metrics = GatewayMetrics(runtime, self._outcomes)
        self._watch: asyncio.Task[None] | None = None
        # A route's resource.attributes must fit the control plane's schema: checked
        # against the bundle in force at start (a ValueError: the start is refused),
        # and logged for each later bundle whose schema refuses them, whose calls the
        # decision point then denies (fail closed).
        routes = config.routes
        attributed = any(r.attributes for r in routes)
        entities = runtime.link.entities() if attributed else None
        # the schema checked just below: derive, installed on the same bundle at once,
        # does not check it again (each later bundle's it does, and logs)
        checked: list[Schema | None] = [None]
        if entities is not None:
            problems = route_attribute_problems(routes, entities.schema)
            if problems:
                raise ValueError(
                    "; ".join(problems) + " (in the control plane's policy schema; extend "
                    "the schema (agentiam policy extend-schema) or change the route)"
                )
            checked[0] = entities.schema
        # In every bundle's entities: the Endpoint of each route with a constant id and
        # no attributes, in its upstream's Api (a derived record, as the MCP gateway's
        # listed tools), and one stand-in per Api the routes place Endpoints in and per
        # set of attributes a route gives its resource, through which an id made from
        # the path (invoice-{id}), or a resource given attributes, is decided with no
        # copy of the entities per id and no placing per decision (Authorizer._place).
        records, places = _route_records(routes), _route_places(routes)

        def derive(base: EntitySnapshot) -> EntitySnapshot:
            if attributed and base.schema is checked[0]:
                checked[0] = None  # the bundle in force at start: checked above
            elif attributed:
                for problem in route_attribute_problems(routes, base.schema):
                    log.error(
                        "%s, in the policy bundle's schema: the route's calls are denied "
                        "(fail closed) until the schema or the route is changed",
                        problem,
                    )
            return base.with_derived(records, places=places)

        if records or places:
            runtime.link.derive_with(derive)

    # -- lifecycle ------------------------------------------------------------------------

    async def startup(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self._workers, thread_name_prefix="gw-enforce"
            )
        if not self._pools:
            t = self.config.gateway.timeouts
            self._pools = {
                name: UpstreamPool(
                    u.url,
                    connect_timeout=t.connect,
                    read_timeout=t.read,
                    ssl_context=None if u.tls is None else u.tls.client_context(),
                )
                for name, u in self.config.upstreams.items()
            }
        if self._watch is None:
            self._watch = asyncio.create_task(watch_event_loop(self.metrics.loop_lag.observe))
        self.runtime.start_shipping()
        settle_heap()  # long-lived objects out of later full collections (adapters/heap.py)

    async def shutdown(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        self._outcomes.flush()
        await self.runtime.stop()
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            await pool.aclose()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(
        self,
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- routing --------------------------------------------------------------------------

    def route_for(
        self, method: str, segments: Sequence[str]
    ) -> tuple[Route, dict[str, str]] | None:
        """The first route (in configuration order) without a catch-all matching the
        request, else the first with one (in configuration order): a route of literal
        and ``{name}`` segments always wins over a catch-all ``{name*}``."""
        for route in self._routes.get((method, len(segments)), ()):
            values = route.match(segments)
            if values is not None:
                return route, values
        if self._rest_routes:
            for route in self._rest_routes.get(method, ()):
                values = route.match(segments)
                if values is not None:
                    return route, values
        return None

    async def _http(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        started = time.perf_counter()
        path: str = scope["path"]
        if scope["method"] in ("GET", "HEAD"):
            if path == "/healthz":
                return await self._healthz(send)
            if path == "/metrics":
                return await self._metrics(send)
            if path == self._metadata_path or path == self._metadata_path + "/":
                return await self._json(send, 200, self.runtime.protected_resource_metadata())
        label = await self._proxy(scope, receive, send, started)
        self.metrics.calls.labels(label).inc()
        self.metrics.latency.observe(time.perf_counter() - started)
        return None

    # -- the proxied call -----------------------------------------------------------------

    async def _proxy(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
        started: float,
    ) -> str:
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        trace = TraceContext.from_traceparent(next(iter(_header(headers, b"traceparent")), None))
        # Steps 1-4 run here, on the event loop: they only compute (keys, revocations
        # and policy are in memory) and hand their audit event to the spool, whose
        # fsync is then awaited without holding a thread.
        # With a shared store (replicas), step 1 ends with awaits: the proof is
        # recorded and the rate-limit tokens taken in Redis before the call is decided.
        shared = self.enforcer.shared_replay is not None or self.enforcer.shared_limits is not None
        peer = client_host(scope.get("client"))  # never a header: see uvicorn_options
        outcome = await self._durably(
            lambda: self._authorize(
                scope["method"], raw_path, headers, trace, decide=not shared, peer=peer
            )
        )
        if isinstance(outcome, _Authenticated):
            outcome = await self._shared_then_decide(outcome, trace)
        if isinstance(outcome, _Approval):
            outcome = await self._approval(outcome, trace)
        if isinstance(outcome, _Permit) and not outcome.call.decided_in(outcome.route.parents):
            outcome = await self._durably(functools.partial(self._undecided, outcome, trace))
        if isinstance(outcome, _Permit) and outcome.route.upstream.credential is not None:
            outcome = await self._inject(outcome, trace)
        self.metrics.decision.observe(time.perf_counter() - started)
        if isinstance(outcome, _Refusal):
            await self._send_refusal(send, outcome, close=_body_may_follow(headers))
            return outcome.label
        return await self._forward(scope, receive, send, outcome, trace, started)

    def _authorize(
        self,
        method: str,
        raw_path: bytes,
        headers: list[tuple[bytes, bytes]],
        trace: TraceContext,
        *,
        decide: bool = True,
        peer: str | None = None,
    ) -> _Refusal | _Permit | _Approval | _Authenticated:
        """Steps 1-4: a refusal to answer, or the call to forward (``decide`` False:
        step 1 only, the authenticated request for :meth:`_shared_then_decide`).
        ``peer``: the connection's network peer, for the budget of refusals naming
        nobody (:meth:`Enforcer.authenticate`)."""

        def steps() -> _Refusal | _Permit | _Approval | _Authenticated:
            step = self._authenticate(method, raw_path, headers, trace, peer)
            if isinstance(step, _Refusal) or not decide:
                return step
            return self._decide(step, trace, self.route_for(method, step.segments))

        return _answering(steps)

    def call_for(self, route: Route, values: Mapping[str, str], *, method: str, url: str) -> Call:
        """The policy question of a request ``route`` matched with ``values``: the
        route's action on its resource, in the route's ``Api`` whatever the catalog
        says when it is an ``Endpoint`` (:attr:`Route.parents`); a task-scoped token
        needs an ``api_access`` entry covering ``method``, ``url``, the resource's type
        (``datatypes``) and id (``identifier``) (RFC 9396)."""
        resource = route.resource(values)
        return Call(
            action=route.action,
            resource=resource,
            detail=ApiCall(action=method, url=url, datatype=resource.type, identifier=resource.id),
            tool=route.name,
            target=self._targets[route.upstream.name],
            resource_parents=route.parents,
            resource_attributes=route.attributes,
        )

    async def _shared_then_decide(
        self, step: _Authenticated, trace: TraceContext
    ) -> _Refusal | _Permit | _Approval:
        """Record the proof in the replicas' replay cache and take the call's tokens
        from their rate-limit buckets, in one round trip, then steps 2-4. A request
        that no route matches, or that names a malformed approval id, is refused
        there without taking a token."""
        found = self.route_for(step.method, step.segments)
        charge = found is not None and not self._malformed_approval(step.headers)
        tool = found[0].name if found is not None else None
        shared = await self.enforcer.shared_admit(step.access, charge=charge, tool=tool)
        if shared.refusal is not None:
            failed = shared.refusal
            return await self._durably(
                lambda: self._shared_refusal(step.access, failed, trace, step.peer)
            )
        return await self._durably(
            lambda: _answering(lambda: self._decide(step, trace, found, shared.limit))
        )

    def _malformed_approval(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """The request names an approval (with approvals on), but not as one id."""
        presented = _header(headers, _APPROVAL_REQUEST_HEADER)
        if not presented or self.enforcer.approvals is None:
            return False
        return len(presented) != 1 or not is_id(presented[0].strip(), "approval")

    def _shared_refusal(
        self, access: VerifiedAccess, error: AgentIAMError, trace: TraceContext, peer: str | None
    ) -> _Refusal:
        self.enforcer.refuse_shared(access, error, trace=trace, peer=peer)
        return _oauth_refusal(error) if isinstance(error, OAuthError) else _unavailable(error)

    def _authenticate(
        self,
        method: str,
        raw_path: bytes,
        headers: list[tuple[bytes, bytes]],
        trace: TraceContext,
        peer: str | None = None,
    ) -> _Refusal | _Authenticated:
        """Step 1, and the request checks before it (path, framing, body size)."""
        enforcer = self.enforcer
        authorization, dpop = _header(headers, b"authorization"), _header(headers, b"dpop")

        def refuse(status: int, reason: str) -> None:
            """A refusal before authentication: it names the agent of a token that
            verifies, else it is within the budget of refusals naming nobody."""
            enforcer.refuse(
                None,
                trace=trace,
                status=status,
                reason=reason,
                peer=peer,
                authorization=authorization,
                dpop=dpop,
            )

        try:
            segments = split_path(raw_path, self._prefix)
        except PathRejected as exc:
            status = 414 if len(raw_path) > MAX_PATH else 400
            refuse(status, f"path refused: {exc}")
            return _problem(status, "bad-request", f"the request path is refused: {exc}")
        try:
            framing = _framing(headers)
        except TransferCodingRefused:
            reason = "a Transfer-Encoding other than chunked"
            refuse(501, reason)
            return _problem(501, "not-implemented", f"the request has {reason}")
        except ValueError:
            refuse(400, "invalid Content-Length")
            return _problem(400, "bad-request", "the request's Content-Length is not valid")
        if framing[0] is not None and framing[0] > self._max_body:
            reason = f"the request body is larger than {self._max_body} bytes"
            refuse(413, reason)
            return _problem(413, "content-too-large", reason)
        url = self._origin + raw_path.decode("ascii")
        access = enforcer.authenticate(
            authorization=authorization, dpop=dpop, method=method, url=url, trace=trace, peer=peer
        )
        return _Authenticated(access, method, url, segments, headers, framing, peer)

    def _decide(
        self,
        step: _Authenticated,
        trace: TraceContext,
        found: tuple[Route, dict[str, str]] | None,
        limit: SharedLimit | None = None,
    ) -> _Refusal | _Permit | _Approval:
        """Steps 2-4: the call of the route ``found`` (:meth:`route_for`), approvals,
        the decision (``limit``: the replicas' shared rate limit's answer for it)."""
        enforcer, access, method, url = self.enforcer, step.access, step.method, step.url
        headers, framing, peer = step.headers, step.framing, step.peer
        if found is None:
            reason = f"no route for {method}"
            enforcer.refuse(access, trace=trace, status=404, reason=reason, peer=peer)
            return _problem(404, "not-found", "no route of this gateway matches the request")
        route, values = found
        call = self.call_for(route, values, method=method, url=url)
        presented = _header(headers, _APPROVAL_REQUEST_HEADER)
        if presented and enforcer.approvals is not None:
            if self._malformed_approval(headers):
                reason = f"the {APPROVAL_HEADER} header is not one approval id"
                enforcer.refuse(
                    access, trace=trace, status=400, reason=reason, call=call, peer=peer
                )
                return _problem(400, "bad-request", reason)
            approval_id = presented[0].strip()
            return _Approval(access, route, call, framing, approval_id, limit=limit, peer=peer)
        verdict = enforcer.decide(access, call, trace=trace, limit=limit, peer=peer)
        if not verdict.allowed and verdict.approvable:
            return _Approval(access, route, call, framing, None, verdict, peer=peer)
        if not verdict.allowed:
            code = "rate-limited" if verdict.status == 429 else "insufficient-scope"
            return _problem(
                verdict.status,
                code,
                verdict.reason,
                verdict.headers,
                error=verdict.error,
                decision_id=verdict.decision_id,
            )
        return _Permit(access, route, call, verdict, {}, None, *framing, peer=peer)

    async def _approval(self, step: _Approval, trace: TraceContext) -> _Permit | _Refusal:
        """Open the approval request for an approvable deny (and hold the call up to
        ``approvals.wait_seconds`` for the human), or use the one the retry names;
        a consumed approval lets the call be decided as approved."""
        client = self.enforcer.approvals
        assert client is not None
        request = self.enforcer.request_for(step.access, step.call)
        settings = self.config.gateway.approvals
        approval_id = step.approval_id
        # A retry naming an approval passes the rate limit and task scope before the
        # approval is used, so a refused retry keeps it; a request opened just now
        # follows a decision that passed them already.
        admitted = approval_id is None
        if not admitted:
            refused = await self._durably(
                lambda: self.enforcer.admit(
                    step.access, step.call, trace=trace, limit=step.limit, peer=step.peer
                )
            )
            if isinstance(refused, _Refusal):
                return refused
            if refused is not None:
                return self._denied(refused)
        try:
            if approval_id is None:
                assert step.verdict is not None
                try:
                    ticket = await self._offload(client.open, request, step.verdict.decision_id)
                except NotApprovable:
                    return self._denied(step.verdict)
                if settings.wait_seconds > 0 and ticket.state == "pending":
                    ticket = await self._offload(client.wait, ticket.id, settings.wait_seconds)
                if ticket.state != "approved":
                    return self._ticket_refusal(ticket, step.verdict.decision_id)
                approval_id = ticket.id
            used = await self._offload(client.use, approval_id, request)
        except Forbidden:
            reason = "the approval is not for this call"
            await self._refuse(step, trace, 403, reason)
            return _problem(
                403, PROBLEM_CODES["mismatch"], reason, {APPROVAL_STATE_HEADER: "mismatch"},
                approval_id=approval_id,
            )  # fmt: skip
        except ServiceUnavailable as exc:
            await self._refuse(step, trace, 503, exc.detail)
            return _unavailable(exc)
        if isinstance(used, ApprovalTicket):
            await self._refuse(step, trace, 403, f"approval {used.id} is {used.state}")
            return self._ticket_refusal(used, None)
        verdict = await self._durably(
            lambda: self.enforcer.decide(
                step.access, step.call, trace=trace, approval=used, admitted=True, peer=step.peer
            )
        )
        if isinstance(verdict, _Refusal):
            return verdict
        if not verdict.allowed:
            return self._denied(verdict)
        return _Permit(
            step.access, step.route, step.call, verdict, {}, None, *step.framing, peer=step.peer
        )

    def _undecided(self, permit: _Permit, trace: TraceContext) -> _Refusal:
        """A permit whose decision did not place the route's resource in the route's
        ``Api`` (:meth:`Call.decided_in`): refused and audited, never forwarded (fail
        closed: a forbid on the Api must hold for every call that reaches it)."""
        where = ", ".join(map(str, permit.route.parents))
        reason = f"{permit.call.resource} was not decided in {where} (fail closed)"
        self.enforcer.refuse(
            permit.access, trace=trace, status=403, reason=reason, call=permit.call,
            peer=permit.peer,
        )  # fmt: skip
        return _problem(403, "insufficient-scope", reason, error="insufficient_scope")

    async def _durably(self, step: Callable[[], T]) -> T | _Refusal:
        """Run an enforcer step on the event loop with its audit events handed to the
        spool deferred, then await their fsync without holding a thread. A 503 from the
        step or from the spool is the answer: nothing unlogged is allowed, or answered.
        Queued outcome events of earlier calls are written with these."""
        refusal: _Refusal | None = None
        with self.enforcer.deferred() as pending:
            try:
                result = step()
            except ServiceUnavailable as exc:
                refusal = _unavailable(exc)
        self._outcomes.taken_by(pending.futures)  # a write takes queued outcomes along
        try:
            await pending.durable()
        except ServiceUnavailable as exc:
            return _unavailable(exc)
        return result if refusal is None else refusal

    async def _refuse(self, step: _Approval, trace: TraceContext, status: int, reason: str) -> None:
        with self.enforcer.deferred() as pending, contextlib.suppress(ServiceUnavailable):
            self.enforcer.refuse(
                step.access, trace=trace, status=status, reason=reason, call=step.call,
                peer=step.peer,
            )  # fmt: skip
        with contextlib.suppress(ServiceUnavailable):
            await pending.durable()

    @staticmethod
    def _denied(verdict: Verdict) -> _Refusal:
        code = "rate-limited" if verdict.status == 429 else "insufficient-scope"
        return _problem(
            verdict.status, code, verdict.reason, verdict.headers,
            error=verdict.error, decision_id=verdict.decision_id,
        )  # fmt: skip

    def _ticket_refusal(self, ticket: ApprovalTicket, decision_id: str | None) -> _Refusal:
        """403 naming the approval and its state: pending (retry after
        ``Retry-After`` with the ``AgentIAM-Approval`` header), denied, expired, used."""
        state = ticket.state
        code = PROBLEM_CODES.get(state, "approval-denied")
        headers = {APPROVAL_HEADER: ticket.id, APPROVAL_STATE_HEADER: state}
        if code == "approval-pending":
            headers["Retry-After"] = str(self.config.gateway.approvals.retry_after_seconds)
            detail = (
                "a human's approval is required; retry the same call with the header "
                f"{APPROVAL_HEADER}: {ticket.id}"
            )
        else:
            detail = f"the approval request is {state}; the call is refused"
        refusal = _problem(
            403, code, detail, headers,
            approval_id=ticket.id, approval_state=state, expires_at=ticket.expires_at,
            status_url=ticket.status_url, decision_id=decision_id,
        )  # fmt: skip
        refusal.label = approval_outcome(state)
        return refusal

    async def _inject(self, permit: _Permit, trace: TraceContext) -> _Permit | _Refusal:
        """The brokered credential: an API key at once, an OAuth token on a worker
        thread (fetching one is network I/O). Unavailable, or not allowed toward the
        upstream (the secret's ``allowed_upstreams``): 502, audited as failed."""
        upstream = permit.route.upstream
        credential = upstream.credential
        broker = self.runtime.broker
        assert credential is not None
        try:
            if broker is None:
                raise ServiceUnavailable("no secret store is configured")
            if isinstance(credential, ApiKeyInjection):
                injection = broker.injection_for(credential, upstream.url)
            else:
                injection = await self._offload(broker.injection_for, credential, upstream.url)
        except AgentIAMError as exc:
            log.warning("credential for upstream %s: %s", permit.route.upstream.name, exc.detail)
            self._record(permit, trace, Outcome.FAILURE, 502, 0.0)
            return _problem(502, "upstream-credential", "the upstream credential is not available")
        permit.inject, permit.secret = injection.headers, injection.label
        permit.echo = injection.echo  # the broker's: held no longer than the call
        return permit

    def _record(
        self, permit: _Permit, trace: TraceContext, outcome: Outcome, status: int | None,
        duration_ms: float, error: str | None = None, reason: str | None = None,
        echoed: dict[str, int] | None = None,
    ) -> None:  # fmt: skip
        """The call's ``tool.call`` event (step 7), written without holding the answer
        (:class:`~agentiam.adapters.gateway.outcomes.OutcomeQueue`); ``error`` names
        what the client did wrong (``ClientDisconnected``, ``ClientTimeout``),
        ``reason`` why the upstream's answer failed (the gateway's words), ``echoed``
        what the upstream echoed of the credential (:meth:`_echoed`)."""
        self._outcomes.record(
            lambda: self.enforcer.record_outcome(
                permit.access,
                permit.call,
                permit.verdict,
                trace=trace,
                outcome=outcome,
                status=status,
                secret=permit.secret,
                duration_ms=duration_ms,
                error=error,
                reason=reason,
                echoed=echoed,
            )
        )

    async def _forward(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
        permit: _Permit,
        trace: TraceContext,
        started: float,
    ) -> str:
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        # public_url's path itself is the API's root: "/" (RFC 9112 section 3.2.1)
        rest = (raw_path[len(self._prefix) :] or b"/") if self._prefix else raw_path
        upstream = permit.route.upstream.name
        pool = self._pools[upstream]
        query: bytes = scope.get("query_string") or b""
        target = self._base_paths[upstream] + rest + (b"?" + query if query else b"")
        forwarded = forwarded_header(scope.get("client"), self._public_host, self._proto)
        upstream_headers = request_headers_for_upstream(
            headers, inject=permit.inject, forwarded=forwarded, trace=trace
        )
        body = _RequestBody(receive, self._max_body, self._read) if permit.has_body else None
        relay = _Relay(permit.echo, self._nonce)
        status: int | None = None
        outcome = Outcome.FAILURE
        label = "upstream_error"
        error: str | None = None
        reason: str | None = None
        try:
            async with asyncio.timeout(self._total):
                response = await pool.request(
                    scope["method"],
                    target,
                    upstream_headers,
                    None if body is None else body.chunks(),
                    content_length=permit.content_length,
                )
                # the body is read: receive() now only tells that the client left
                watch = None if response.complete else _ClientWatch(receive, response)
                try:
                    status = response.status
                    await relay.start(send, response)
                    async for chunk in response.body():
                        await relay.body(send, chunk)
                    if watch is not None and watch.gone:
                        raise _ClientGone
                    await relay.end(send)
                except UpstreamError:
                    if watch is not None and watch.gone:  # it closed the upstream connection
                        raise _ClientGone from None
                    raise
                finally:
                    if watch is not None:
                        watch.stop()
                    await response.aclose()
            outcome = Outcome.SUCCESS if status < 500 else Outcome.FAILURE
            label = "allowed"
        except _ClientGone:
            label, error = "client_gone", "ClientDisconnected"
        except _ClientTimeout:
            label, error, status = "client_timeout", "ClientTimeout", 408
            detail = f"the request body did not arrive in time (no data for {self._read:g} s)"
            await self._send_refusal(send, _problem(408, "request-timeout", detail), close=True)
        except _TooLarge:
            label = "too_large"
            status = status or 413
            detail = f"the request body is larger than {self._max_body} bytes"
            if not relay.started:  # the rest of the body is not read: the connection ends
                await self._send_refusal(
                    send, _problem(413, "content-too-large", detail), close=True
                )
        except _CodedBody as exc:
            status, reason = 502, str(exc)
            log.warning("upstream %s, route %s: %s", upstream, permit.route.name, reason)
            detail = "the upstream answered in a content coding the gateway cannot check"
            await self._fail(send, False, 502, detail)
        except (TimeoutError, UpstreamTimeout) as exc:
            label = "upstream_timeout"
            await self._fail(
                send, relay.started, 504, "the upstream did not answer in time", _unread(body)
            )
            status = status or 504
            reason = str(exc) or "the call took longer than timeouts.total"
            self._log_failure(permit, exc)
        except UpstreamError as exc:
            await self._fail(
                send, relay.started, 502, "the upstream could not be reached", _unread(body)
            )
            status = status or 502
            reason = str(exc)
            self._log_failure(permit, exc)
        finally:
            duration = (time.perf_counter() - started) * 1000
            echoed = self._echoed(permit, relay)
            self._record(permit, trace, outcome, status, duration, error, reason, echoed)
        if relay.started and outcome is Outcome.FAILURE and label not in _NOT_CUT:
            raise _Aborted(f"upstream {upstream} failed mid-response")
        return label

    def _echoed(self, permit: _Permit, relay: _Relay) -> dict[str, int] | None:
        """Log and count what the upstream echoed of the credential: the ``echoed``
        details of the call's ``tool.call`` event (None: nothing)."""
        if not relay.fields and not relay.masked:
            return None
        route = permit.route
        if relay.fields:
            log.warning(
                "upstream %s, route %s: the upstream echoed the brokered credential in "
                "response fields %s: dropped", route.upstream.name, route.name, relay.fields,
            )  # fmt: skip
            self.metrics.echoed("field")
        if relay.masked:
            log.warning(
                "upstream %s, route %s: the upstream echoed the brokered credential %d "
                "times in the response body: masked", route.upstream.name, route.name,
                relay.masked,
            )  # fmt: skip
            self.metrics.echoed("body")
        return {"fields": len(relay.fields), "body": relay.masked}

    async def _fail(
        self,
        send: Callable[[dict[str, Any]], Awaitable[None]],
        started_response: bool,
        status: int,
        detail: str,
        close: bool = False,
    ) -> None:
        if not started_response:
            await self._send_refusal(
                send,
                _problem(status, OUTCOME_OF_STATUS[status].replace("_", "-"), detail),
                close=close,
            )

    @staticmethod
    def _log_failure(permit: _Permit, exc: BaseException) -> None:
        log.warning(
            "upstream %s, route %s: %s", permit.route.upstream.name, permit.route.name,
            type(exc).__name__,
        )  # fmt: skip

    # -- helpers --------------------------------------------------------------------------

    async def _offload(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._executor is not None, "startup() was not run"
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    async def _send_refusal(
        self,
        send: Callable[[dict[str, Any]], Awaitable[None]],
        refusal: _Refusal,
        *,
        close: bool = False,
    ) -> None:
        """Answer ``refusal``; ``close``: the request's body was not read (all of it),
        so the connection ends with the answer (``Connection: close``, RFC 9112
        section 9.6) instead of uvicorn reading and discarding the rest to keep it.
        With nonces on, the head carries the current ``DPoP-Nonce`` (RFC 9449 section
        9), unless the refusal has one (``use_dpop_nonce``: the verifier's). Only the
        protected endpoint's answers come here (not /healthz, /metrics, metadata)."""
        body = json.dumps(refusal.body, separators=(",", ":")).encode("utf-8")
        headers = [
            (b"content-type", _PROBLEM_JSON),
            (b"content-length", str(len(body)).encode("ascii")),
            (b"cache-control", b"no-store"),
        ]
        headers.extend(
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in refusal.headers.items()
        )
        # a use_dpop_nonce refusal carries the verifier's nonce already
        if self._nonce is not None and not any(k.lower() == "dpop-nonce" for k in refusal.headers):
            headers.append((_DPOP_NONCE, self._nonce.current()))
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _json(
        self, send: Callable[[dict[str, Any]], Awaitable[None]], status: int, data: Any
    ) -> None:
        body = json.dumps(data, separators=(",", ":")).encode("utf-8")
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode("ascii")),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _healthz(self, send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        health = await self._offload(self.runtime.health)
        await self._json(send, 200 if health["deciding"] else 503, health)

    async def _metrics(self, send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        body = await self._offload(self.metrics.exposition)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", CONTENT_TYPE.encode("ascii")),
                    (b"content-length", str(len(body)).encode("ascii")),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


_OWS = b" \t"  # RFC 9110 section 5.6.3


def _framing(headers: Iterable[tuple[bytes, bytes]]) -> tuple[int | None, bool]:
    """The request body's ``Content-Length`` (None: chunked or none) and whether there
    is a body at all (RFC 9112 section 6.3). uvicorn has already refused messages whose
    framing is ambiguous (both fields, two ``Content-Length``, ``chunked`` not last).

    ``Content-Length`` is digits, with the whitespace around a field value (OWS, RFC
    9110 section 5.5) allowed and ignored, as llhttp reads it: a list, a sign or
    anything else is a :class:`ValueError` (400). The one transfer coding taken is
    ``chunked`` alone (:class:`TransferCodingRefused` otherwise, RFC 9112 section
    6.1: 501): llhttp takes ``gzip, chunked`` or a ``Transfer-Encoding: identity``
    field before a ``chunked`` one, and removes only the chunking; forwarded
    re-chunked, the upstream would read the coded bytes as the content.
    ``identity`` alone fails llhttp only after the head was handed on."""
    length: int | None = None
    codings: list[bytes] = []
    for key, value in headers:
        if key == b"content-length":
            digits = value.strip(_OWS)
            if not digits.isdigit() or (length is not None and length != int(digits)):
                raise ValueError("invalid Content-Length")
            length = int(digits)
        elif key == b"transfer-encoding":
            codings.append(value)
    if chunked_alone(codings):
        return None, True
    return length, bool(length)


def _body_may_follow(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a request may have body bytes after its head: a ``Content-Length``
    over 0, a ``Transfer-Encoding``, or framing the gateway refused (llhttp may
    still be reading a body by it)."""
    try:
        return _framing(headers)[1]
    except ValueError:
        return True


class _RequestBody:
    """The request body as it arrives, never held whole (:meth:`chunks`); ``done``
    once it was read to its end. Past ``limit`` bytes (a chunked body: a declared
    length is checked before) the upstream request is cut off and the client gets 413
    (RFC 9110 section 15.5.14). A read that waits longer than ``read_timeout`` ends it
    too: the client gets 408 (section 15.5.9)."""

    __slots__ = ("_limit", "_read_timeout", "_receive", "done")

    def __init__(
        self, receive: Callable[[], Awaitable[dict[str, Any]]], limit: int, read_timeout: float
    ) -> None:
        self._receive = receive
        self._limit = limit
        self._read_timeout = read_timeout
        self.done = False

    async def chunks(self) -> AsyncIterator[bytes]:
        seen = 0
        while True:
            try:
                async with asyncio.timeout(self._read_timeout):
                    message = await self._receive()
            except TimeoutError:
                raise _ClientTimeout from None
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            if chunk:
                seen += len(chunk)
                if seen > self._limit:
                    raise _TooLarge
                yield chunk
            if not message.get("more_body", False):
                self.done = True
                return


def _unread(body: _RequestBody | None) -> bool:
    """Whether the request has a body the gateway did not read to its end."""
    return body is not None and not body.done


class _CodedBody(Exception):
    """On a route that injects a credential, the upstream answered with a body in a
    content coding: it cannot be checked for the credential, so it is not relayed."""


class _Relay:
    """The upstream's answer on its way to the client (step 6): its head without the
    fields :func:`response_headers_for_client` drops, then its body. On a route that
    injects a credential (``forms``: its echo forms, the broker's,
    :class:`~agentiam.adapters.gateway.broker.Injection`), the
    fields that echo it (as sent or encoded) are dropped (``fields`` names them), and
    every occurrence of one of its forms in the body is masked (:class:`EchoMask`;
    ``masked`` counts them); a body in a
    content coding is :class:`_CodedBody`, before anything is sent. With ``nonce``
    (``dpop.require_nonce``), the head carries the gateway's current ``DPoP-Nonce``
    (RFC 9449 section 9) in place of any the upstream sent."""

    __slots__ = ("_forms", "_mask", "_nonce", "fields", "started")

    def __init__(self, forms: EchoForms | None, nonce: NonceHeader | None = None) -> None:
        self._forms = forms
        self._nonce = nonce
        self._mask: EchoMask | None = None
        self.fields: list[str] = []
        self.started = False  # the head was sent: a failure now cuts the connection

    @property
    def masked(self) -> int:
        return 0 if self._mask is None else self._mask.masked

    async def start(
        self, send: Callable[[dict[str, Any]], Awaitable[None]], response: UpstreamResponse
    ) -> None:
        forms = self._forms
        if forms is not None:
            coding = content_coded(response.headers) if response.has_body else None
            if coding is not None:
                raise _CodedBody(
                    f"the upstream answered in the content coding {coding} on a route that "
                    "injects a credential: its body cannot be checked for the credential"
                )
            self.fields = _echoed_fields(response.headers, forms)
            self._mask = EchoMask(forms)
        # the fields were searched for the credential's forms just above: when none
        # holds one, the client's copy needs no second search
        headers = response_headers_for_client(response.headers, forms if self.fields else None)
        if self._nonce is not None:  # the upstream's own DPoP-Nonce was dropped just above
            headers.append((_DPOP_NONCE, self._nonce.current()))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        self.started = True

    async def body(self, send: Callable[[dict[str, Any]], Awaitable[None]], chunk: bytes) -> None:
        if self._mask is not None:
            chunk = self._mask.feed(chunk)
            if not chunk:
                return
        await send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def end(self, send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        tail = b"" if self._mask is None else self._mask.flush()
        await send({"type": "http.response.body", "body": tail, "more_body": False})


# -- running it ---------------------------------------------------------------------------


def _head_refusal(status: int, code: str, detail: str) -> bytes:
    """A whole HTTP/1.1 answer the listener writes itself (the application never saw
    the request): an RFC 9457 problem, then the connection closes."""
    problem = _problem(status, code, detail)
    body = json.dumps(problem.body, separators=(",", ":")).encode("utf-8")
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (status, problem.body["title"].encode("ascii")),
            b"content-type: %s\r\ncache-control: no-store\r\n" % _PROBLEM_JSON,
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body),
            body,
        ]
    )


_HEAD_REFUSALS = {
    408: _head_refusal(408, "request-timeout", "the request head did not arrive in time"),
    414: _head_refusal(414, "bad-request", f"the request-target is over {MAX_TARGET} bytes"),
    431: _head_refusal(431, "bad-request", f"the request head is over {MAX_HEAD} bytes"),
    505: _head_refusal(505, "bad-request", "the gateway speaks HTTP/1.1 and HTTP/1.0"),
}
_VERSIONS = frozenset({"1.1", "1.0"})  # llhttp also takes 0.9 (then reads fields) and 2.0


class _HeadRefused(Exception):
    """Raised from a parser callback to stop llhttp (the refusal is already chosen)."""


class ListenerProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounds on the request head, which uvicorn
    reads whole and without a deadline before the application runs.

    * Request-target: past ``max_target`` bytes, 414 (RFC 9110 section 15.5.15).
    * Version: HTTP/1.1 or HTTP/1.0, else 505 (RFC 9110 section 15.6.6). llhttp
      takes ``HTTP/2.0`` in a request line, and a line without a version as HTTP/0.9
      whose following lines it still reads as fields: neither is forwarded.
    * Head (request-target and fields): past ``max_head`` bytes, 431 (RFC 6585
      section 5). Counted as bytes received while the head is incomplete, so what
      llhttp and httptools hold is bounded by that plus one read; a head that ends
      in the read that passed the bound is measured exactly (only then: the hot
      path pays one addition per read).
    * Time: a head not complete ``head_timeout`` seconds after its first read (or
      after the connection opened) closes the connection, with 408 (RFC 9110 section
      15.5.9) when part of one came. A fixed bound, not ``timeouts.read``: it guards
      the listener, and no client needs long to send a head. Waits between requests
      stay uvicorn's keep-alive timeout.
    * ``Upgrade``: with ``ws="none"`` the request is served as plain HTTP; httptools
      drops what followed the upgrade request in that read, so the connection closes
      after the answer.
    * Trailer fields of a chunked request body are discarded, as RFC 9112 section
      7.1.2 allows (the upstream client sends no trailer section). uvicorn appends
      them to ``scope["headers"]``, where the gateway read them when the whole request
      came in one read: a client could add fields past the head the gateway decided
      on (a second ``Authorization``, any other field) and have them forwarded.
    * Bytes after the head that carry no body (chunk-size lines, chunk extensions, the
      trailer section), past ``max_head`` in a row, close the connection: httptools
      buffers a trailer field whole, growing it by one copy per read, so an unbounded
      one cost memory and event-loop time quadratic in its length (a call in progress
      sees its client leave: it ends as failed, and the upstream never gets the end
      of the request).

    Each refusal closes the connection at once (a client still sending may see a
    reset instead of the answer); the application, and so the audit trail, never
    sees the request, as for the 400 uvicorn answers to malformed requests."""

    max_target = MAX_TARGET
    max_head = MAX_HEAD
    head_timeout = HEAD_TIMEOUT

    def __init__(
        self,
        config: UvicornConfig,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._in_head = True  # the next bytes belong to a request's head
        self._head_bytes = 0
        self._tail_bytes = 0  # bytes read after the head since the last body bytes
        self._head_timer: asyncio.TimerHandle | None = None
        self._refusal = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # every write of the connection goes through it: one send per answer
        super().connection_made(cast(asyncio.Transport, CoalescingTransport(transport, self.loop)))
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """uvicorn's, with the head's bounds (WebSocket off: no upgrade to hand on)."""
        self._unset_keepalive_if_required()
        if self._in_head:
            self._head_bytes += len(data)
        else:
            self._tail_bytes += len(data)  # on_body sets it back to 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            if self._refusal:
                return self._refuse(self._refusal)
            self._bad_request()
            return None
        except httptools.HttpParserError:
            self._bad_request()
            return None
        except httptools.HttpParserUpgrade:
            if self.cycle is not None:
                self.cycle.keep_alive = False
            return None
        if self._in_head and self._head_bytes:  # a head begun and not complete
            if self._head_bytes > self.max_head:
                self._refuse(431)
            elif self._head_timer is None:  # a head in one read (the usual) needs none
                self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)
        elif self._tail_bytes > self.max_head:
            self._cut_tail()
        return None

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.max_target:
            self._refusal = 414
            raise _HeadRefused

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._tail_bytes = 0
        self._stop_head_timer()
        if self._head_bytes > self.max_head and self._head_size() > self.max_head:
            self._refusal = 431
            raise _HeadRefused
        if self.parser.get_http_version() not in _VERSIONS:
            self._refusal = 505
            raise _HeadRefused
        super().on_headers_complete()
        # scope["headers"] keeps the head's fields; uvicorn's on_header appends trailer
        # fields to this list instead, which nothing reads (RFC 9112 section 7.1.2)
        self.headers = []

    def on_body(self, body: bytes) -> None:
        self._tail_bytes = 0
        super().on_body(body)

    def _head_size(self) -> int:
        return len(self.url) + sum(len(k) + len(v) + 4 for k, v in self.headers)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes, self._tail_bytes = True, 0, 0

    def _bad_request(self) -> None:
        msg = "Invalid HTTP request received."
        self.logger.warning(msg)
        self.send_400_response(msg)

    def _refuse(self, status: int) -> None:
        self._in_head = False
        self._stop_head_timer()
        log.info("request head refused with %d", status)
        if not self.transport.is_closing():
            self.transport.write(_HEAD_REFUSALS[status])
            self.transport.close()

    def _cut_tail(self) -> None:
        """Past ``max_head`` bytes of chunk framing or trailer section: 431 when no
        answer is under way (the application answered already, e.g. a 401), else
        the connection closes and the call sees its client leave."""
        if self.cycle is None or self.cycle.response_complete:
            self._refuse(431)
            return
        log.info("request trailer section or chunk framing over %d bytes", self.max_head)
        self.transport.close()

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # an answer is still going out (the next head was pipelined): wait for it
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)
        elif self._head_bytes:
            self._refuse(408)
        else:
            self.transport.close()


def uvicorn_options(config: HttpGatewayConfig) -> dict[str, Any]:
    """The ``uvicorn.Config`` keywords :func:`run` serves the gateway with."""
    gateway = config.gateway
    return {
        "host": gateway.host,
        "port": gateway.port,
        "lifespan": "on",
        "http": ListenerProtocol,
        "ws": "none",  # an Upgrade request is plain HTTP: authenticated and audited
        # uvicorn would otherwise take the client address from X-Forwarded-For
        # sent from loopback: the gateway trusts no client header about the route
        "proxy_headers": False,
        "access_log": False,
        "server_header": False,
        "date_header": False,
        "log_level": "info",
        **gateway.server_options(),  # TLS on the listener when listen.tls is set
    }


def run(config: HttpGatewayConfig) -> None:
    """Connect to the control plane (a clear error if it cannot be reached), then
    serve until interrupted; the spool keeps what was not shipped for the next start."""
    import uvicorn

    gateway = config.gateway
    try:
        runtime = GatewayRuntime.start(
            gateway,
            credentials=[
                (f"upstreams.{u.name}.credential", u.credential, u.url)
                for u in config.upstreams.values()
                if u.credential is not None
            ],
        )
    except httpx.HTTPError as exc:
        raise ServiceUnavailable(
            f"cannot reach the control plane at {gateway.control_plane.url} ({type(exc).__name__})",
            hint="Check control_plane.url, and that the key in "
            f"{gateway.control_plane.key_env} has the verifier role.",
        ) from None
    try:
        app = HttpGateway(config, runtime)  # ValueError: routes the schema refuses
        log.info("HTTP gateway %s serving %s", gateway.name, gateway.public_url)
        uvicorn.run(app, **uvicorn_options(config))
    finally:
        with contextlib.suppress(Exception):
            runtime.close()
