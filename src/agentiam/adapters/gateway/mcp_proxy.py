"""The MCP gateway: an OAuth-protected MCP server in front of upstream MCP servers.

Agents speak MCP over the Streamable HTTP transport to one endpoint (the path of
``public_url``); the gateway serves both eras the official SDK speaks: the stateless
per-request envelope of MCP revision **2026-07-28** (the latest) and the initialize
handshake of revisions 2024-11-05 to 2025-11-25 (stateful sessions, bound to the
agent that opened them). For every HTTP request it:

1. **Authenticates** (MCP 2026-07-28 "Authorization", sections "Access Token Usage"
   and "Token Handling"): a DPoP-bound access token (RFC 9449) whose audience is the
   gateway's ``public_url`` (RFC 8707), verified locally from the cached JWKS and
   revocation set, with a fresh proof whose ``htu`` is ``public_url``. Anything else is
   HTTP 401 with ``WWW-Authenticate`` naming ``resource_metadata`` (RFC 9728 section
   5.1); the metadata itself is served at ``/.well-known/oauth-protected-resource``
   (path-specific and root, RFC 9728 section 3.1). A present ``Origin`` that is not the
   gateway's own is refused with 403 (Streamable HTTP, "Security & Endpoint").
2. **Decides** each ``tools/call``, ``resources/read``, ``prompts/get`` and
   ``completion/complete`` before the MCP server sees it
   (:class:`~agentiam.adapters.gateway.enforcer.Enforcer`): rate limits (HTTP 429
   with ``Retry-After``; an ``initialize`` and the four listings take a token from
   the agent's own bucket too, :meth:`Enforcer.admit_request
   <agentiam.adapters.gateway.enforcer.Enforcer.admit_request>`), the token's task scope
   (``authorization_details``, RFC 9396; a refusal is a runtime insufficient-scope
   error: HTTP 403 with ``error="insufficient_scope"`` per MCP "Scope Challenge
   Handling" and RFC 6750 section 3.1), and Cedar policy with the tool arguments,
   the delegation chain and the authorization details in the context. A policy
   denial of a tool call is an MCP tool error result (``isError``), of a resource or
   prompt read or a completion a JSON-RPC error (:data:`POLICY_DENIED`); the upstream
   never sees it. A completion (MCP 2026-07-28 "Completion") is decided as the
   in-process guard decides it: the question the listing asks of the referenced
   prompt or resource template, in its server (no ``tool.call`` follows: the decision
   is its one event); it goes only to a server that declares ``completions``, and the
   gateway declares ``completions`` only while one of its servers does.
   The decision is made on the JSON-RPC body, never on ``Mcp-Name``/``Mcp-Param-*``
   headers. A ``tools/call`` deny that a human's approval would lift (docs/approvals.md)
   opens an approval request at the control plane (held up to ``approvals.wait_seconds``)
   and is answered with a tool error result whose ``_meta["agentiam/approval"]`` names
   it (:func:`agentiam.core.approvals_wire.mcp_result_meta`); the same call retried
   with ``params._meta["agentiam/approval"]`` is checked and consumed by the control
   plane for exactly that call and decided as approved
   (:mod:`~agentiam.adapters.gateway.approval_flow`). A request the SDK's transport
   will refuse before its handler (a bad ``Accept``, an ``Mcp-Name`` that is not the
   body's, an unknown session: :class:`_SdkRules`) is not decided: it takes no
   rate-limit token and uses no approval, its refusal is audited
   (``api.request.rejected``) and the SDK answers it.
3. **Lists** only what policy allows this caller: ``tools/list``, ``resources/list``,
   ``resources/templates/list`` and ``prompts/list`` ask, per item, whether a call
   without arguments would be allowed (see :data:`ACTIONS` for the mapping). Every
   listing is one ``mcp.list`` audit event, durable before the SDK answers (the
   listing is made in front of the SDK and handed to its handler); listed results
   are never cacheable (``ttlMs: 0``, ``cacheScope: private``, SEP-2549). Past the
   outage bound, or when its event cannot be made durable, a listing is refused as a
   call is (HTTP 503 with ``Retry-After``, no data).
4. **Forwards** allowed calls through an MCP client session (the official SDK's
   ``streamable_http_client``) carrying the **brokered credential**
   (:class:`~agentiam.adapters.gateway.broker.CredentialBroker`); the agent's token
   and headers are never passed on. A handshake-era upstream keeps state per
   session, so each agent (and human, for a delegated token) gets an upstream
   session of its own, bounded in number and idle time
   (:class:`~agentiam.adapters.gateway.mcp_upstream.Upstream`); a stateless
   (2026-07-28) upstream is called over one session per server. Progress
   notifications of the upstream call are relayed to the agent on the response's SSE
   stream, and ``InputRequiredResult`` (MRTR) round trips pass through. Each call's
   outcome is a ``tool.call`` audit event naming the secret used (``name@version``).

``/healthz`` answers the runtime's health (503 past the outage bound) and ``/metrics``
Prometheus text (:mod:`~agentiam.adapters.gateway.metrics`), both without a token, as
the HTTP gateway's: every request to the endpoint counted by JSON-RPC method (a fixed
set) and outcome (:class:`_Counting`), the request and decision times, the event
loop's lag, the spool and the open handshake-era sessions.

Names are namespaced by each server's ``prefix``: tool ``transfer`` of the server with
prefix ``bank.`` is ``bank.transfer`` to agents and to policy, resource
``file:///a`` is ``bank.file:///a`` (the prefix is a valid URI-scheme prefix).

Configuration (the common part is :mod:`agentiam.adapters.gateway.config`)::

    servers:
      - name: bank                          # a-z 0-9 _ -, unique
        url: https://bank-mcp.internal/mcp  # https (plain http only on loopback)
        prefix: "bank."                     # default "<name>."; "" for a single server
        credential: {secret: bank-mcp, header: Authorization, prefix: "Bearer "}
        tls: {ca_file: /etc/agentiam/ca.pem}   # optional: CAs, client certificate
        sessions: {max_open: 256, idle_seconds: 600}   # optional: sessions for calls
    catalog_seconds: 5                      # upstream lists are cached this long
    listen_streams:                         # optional: subscriptions/listen streams open
      max_open: 1024                        #   in all (1-100000; one more: 503, audited)
      max_open_per_agent: 32                #   per agent and subject (1-max_open; 429)
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import httpx
import httpx2
import mcp_types as types
import pydantic_core
from mcp.client.session import ClientSession
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, authorization_context
from mcp.server.auth.provider import AccessToken
from mcp.server.caching import CacheHint
from mcp.server.connection import Connection
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions, Server
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER, check_accept_headers
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.subscriptions import ListenHandler
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    MCP_PARAM_HEADER_PREFIX,
    MCP_PROTOCOL_VERSION_HEADER,
    InboundLadderRejection,
    classify_inbound_request,
    find_duplicated_routing_header,
    validate_mcp_param_headers,
)
from mcp_types import (
    DEFAULT_NEGOTIATED_VERSION,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    REQUEST_TIMEOUT,
    JSONRPCRequest,
    jsonrpc_message_adapter,
)
from mcp_types import methods as mcp_methods
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentiam import __version__
from agentiam.adapters.gateway.approval_flow import ApprovalFlow, ApprovalOutcome
from agentiam.adapters.gateway.broker import credential_ref_from_config
from agentiam.adapters.gateway.config import GatewayConfig, load_gateway_config, upstream_tls
from agentiam.adapters.gateway.dpop_nonces import WithNonce
from agentiam.adapters.gateway.enforcer import Call, SharedLimit, Verdict
from agentiam.adapters.gateway.http_proxy import ListenerProtocol
from agentiam.adapters.gateway.loop_watch import watch_event_loop
from agentiam.adapters.gateway.mcp_calls import (
    COMPLETE_METHOD,
    MAX_NAME,
    POLICY_DENIED,
    READ_METHODS,
    completion_call,
    completion_ref,
    named_call,
    prompt_call,
    read_call,
    resource_call,
    tool_call,
)
from agentiam.adapters.gateway.mcp_listen import (
    GROUPS,
    LISTEN,
    AudienceBus,
    Ending,
    Group,
    PolicyChanges,
    Shown,
    Stream,
    Streams,
    group_of,
    honoured,
    listening_as,
    send_on_session,
)
from agentiam.adapters.gateway.mcp_sdk_state import connection_of, open_sessions, session_owners
from agentiam.adapters.gateway.mcp_tools import ListedTools
from agentiam.adapters.gateway.mcp_upstream import (
    CHANGE_SECONDS,
    LISTING_KINDS,
    MAX_UPSTREAM_SESSIONS,
    SESSION_IDLE_SECONDS,
    UPSTREAM_USE,
    AllSessionsBusy,
    ListingKind,
    Owner,
    Upstream,
    UpstreamServer,
    UpstreamSessions,
    UpstreamUse,
)
from agentiam.adapters.gateway.mcp_visibility import (
    LIST_EVENT,
    LISTING_METHODS,
    READ_ACTION,
    TOOL_ACTION,
    Listed,
    Visibility,
    in_server,
)
from agentiam.adapters.gateway.metrics import (
    CONTENT_TYPE,
    OTHER_METHOD,
    McpGatewayMetrics,
    approval_outcome,
    refusal_outcome,
)
from agentiam.adapters.gateway.outcomes import OutcomeQueue
from agentiam.adapters.gateway.refusal_summaries import client_host
from agentiam.adapters.gateway.runtime import GatewayRuntime
from agentiam.adapters.heap import settle_heap
from agentiam.core.approvals_wire import META_KEY, mcp_result_meta, mcp_result_text
from agentiam.core.audit.events import Outcome, TraceContext
from agentiam.core.credentials.verifier import VerifiedAccess
from agentiam.core.ids import is_id
from agentiam.core.plain_http import ONLY_ON_LOOPBACK, secure_or_loopback
from agentiam.errors import AgentIAMError, OAuthError, ServiceUnavailable

__all__ = [
    "ACTIONS",
    "LIST_EVENT",
    "POLICY_DENIED",
    "Listed",
    "ListenStreamBounds",
    "McpGateway",
    "McpGatewayConfig",
    "Namespace",
    "Visibility",
    "build_app",
    "load_config",
    "prompt_call",
    "resource_call",
    "run",
    "tool_call",
]

log = logging.getLogger("agentiam.gateway.mcp")

# -- the Cedar mapping ---------------------------------------------------------------------

ACTIONS: Final[Mapping[str, tuple[str, str]]] = {
    # MCP method -> (Cedar action, resource type); the entity id is the exposed name
    "tools/list": (TOOL_ACTION, "Tool"),
    "tools/call": (TOOL_ACTION, "Tool"),
    "resources/list": (READ_ACTION, "DataSet"),
    "resources/templates/list": (READ_ACTION, "DataSet"),  # id: the exposed URI template
    "resources/read": (READ_ACTION, "DataSet"),
    "prompts/list": (READ_ACTION, "DataSet"),  # id: "prompt:" + the exposed prompt name
    "prompts/get": (READ_ACTION, "DataSet"),
    # the referenced prompt's ("prompt:" + name) or template's entity, as listed
    COMPLETE_METHOD: (READ_ACTION, "DataSet"),
}
T = TypeVar("T")

_GUARDED: Final = frozenset({"tools/call", "resources/read", "prompts/get", COMPLETE_METHOD})
# the answers that carry the gateway's capabilities (the handshake's, 2026-07-28's)
_DECLARING: Final = frozenset({"initialize", "server/discover"})
# the most values one completion relays (MCP 2026-07-28 "Completion": "must not exceed
# 100 items"); more from an upstream are cut, with hasMore set
MAX_COMPLETION_VALUES: Final = 100
_APPROVAL_THREADS: Final = 16  # concurrent calls to the control plane's approvals API
# every answer depends on the caller's rights: never shared, never reused (SEP-2549)
_LISTINGS: Final = LISTING_METHODS  # the four list methods
_CACHEABLE: Final = _LISTINGS | {"resources/read"}
# requests that are not calls but take a token from the agent's bucket: opening a
# session or a listen stream, and the listings (a policy question per item, and an
# audit event)
_COUNTED: Final = _LISTINGS | {"initialize", LISTEN}
# the values of /metrics' method label (any other method counts as "other")
_METHODS: Final = _GUARDED | _LISTINGS | {"initialize"}

# -- limits ----------------------------------------------------------------------------------

MAX_BODY_BYTES: Final = 4 * 1024 * 1024  # one JSON-RPC message
# handshake-era sessions (2024-11-05 to 2025-11-25): open at once per agent and subject
# (how long one lives without a request in flight: SESSION_IDLE_SECONDS)
MAX_SESSIONS_PER_OWNER: Final = 32
# 2026-07-28 subscriptions/listen streams open at once: the defaults of the
# listen_streams keys (ListenStreamBounds), and the most the file may set in all
MAX_LISTEN_STREAMS: Final = 1024  # in all
MAX_LISTEN_STREAMS_PER_AGENT: Final = 32  # per agent and subject, apart from its sessions
_LISTEN_STREAMS_CEILING: Final = 100_000

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# Both a tool-name prefix (MCP tool names: A-Z a-z 0-9 _ - .) and a URI-scheme prefix
# (RFC 3986 section 3.1: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )).
_PREFIX_RE = re.compile(r"^[A-Za-z][A-Za-z0-9.-]{0,62}$")
_SERVER_KEYS = frozenset(
    {"name", "url", "prefix", "credential", "tls", "sessions", "trust_annotations"}
)
_SESSIONS_KEYS = frozenset({"max_open", "idle_seconds"})
_LISTEN_STREAMS_KEYS = frozenset({"max_open", "max_open_per_agent"})
_SECTION_KEYS = frozenset({"servers", "catalog_seconds", "listen_streams"})
_WELL_KNOWN: Final = "/.well-known"
_OWN_PATHS: Final = frozenset({"/healthz", "/metrics", _WELL_KNOWN})  # not the endpoint's


# -- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListenStreamBounds:
    """How many 2026-07-28 ``subscriptions/listen`` streams the gateway holds open at
    once (the ``listen_streams`` keys): ``max_open`` in all (one more is refused with
    503) and ``max_open_per_agent`` per agent and subject (one more: 429), so one agent
    cannot take every slot and starve the others. Both refusals are audited
    (``api.request.rejected``, action ``subscriptions/listen``)."""

    max_open: int = MAX_LISTEN_STREAMS
    max_open_per_agent: int = MAX_LISTEN_STREAMS_PER_AGENT


@dataclass(frozen=True, slots=True)
class McpGatewayConfig:
    gateway: GatewayConfig
    servers: tuple[UpstreamServer, ...]
    catalog_seconds: float = 5.0
    listen_streams: ListenStreamBounds = field(default_factory=ListenStreamBounds)

    @property
    def endpoint_path(self) -> str:
        """The MCP endpoint's path: that of ``public_url`` (``/`` when it has none)."""
        return urlsplit(self.gateway.public_url).path or "/"


def _upstream_url(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 2048:
        raise ValueError(f"{where}: a URL")
    parts = urlsplit(value)
    if not secure_or_loopback(parts):
        raise ValueError(f"{where}: must be https ({ONLY_ON_LOOPBACK})")
    if not parts.hostname or parts.username or parts.password or parts.fragment:
        raise ValueError(f"{where}: a URL without user info or fragment")
    return value


def _server(raw: Any, where: str, *, single: bool, has_store: bool) -> UpstreamServer:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected a mapping")
    unknown = sorted(set(map(str, raw)) - _SERVER_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown keys {', '.join(unknown)}")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"{where}.name: 1-64 characters of a-z, 0-9, '_' or '-'")
    prefix = raw.get("prefix", f"{name}.")
    if not isinstance(prefix, str):
        raise ValueError(f"{where}.prefix: a string")
    if prefix == "":
        if not single:
            raise ValueError(f"{where}.prefix: may be empty only with a single server")
    elif not _PREFIX_RE.match(prefix):
        raise ValueError(
            f"{where}.prefix: 1-63 characters of A-Z, a-z, 0-9, '.' or '-', starting with a "
            "letter (it prefixes tool names and resource URI schemes)"
        )
    credential = None
    if raw.get("credential") is not None:
        if not isinstance(raw["credential"], Mapping):
            raise ValueError(f"{where}.credential: expected a mapping")
        if not has_store:
            raise ValueError(f"{where}.credential: needs secrets.store (the sealed secret store)")
        try:
            credential = credential_ref_from_config(raw["credential"])
        except ValueError as exc:
            raise ValueError(f"{where}.credential: {exc}") from None
    url = _upstream_url(raw.get("url"), f"{where}.url")
    trust = raw.get("trust_annotations", False)
    if not isinstance(trust, bool):
        raise ValueError(f"{where}.trust_annotations: true or false")
    return UpstreamServer(
        name=name,
        url=url,
        prefix=prefix,
        credential=credential,
        tls=upstream_tls(raw.get("tls"), f"{where}.tls", url),
        sessions=_sessions(raw.get("sessions"), f"{where}.sessions"),
        trust_annotations=trust,
    )


def _sessions(raw: Any, where: str) -> UpstreamSessions:
    """``servers[].sessions``: the defaults when absent."""
    if raw is None:
        return UpstreamSessions()
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected a mapping")
    unknown = sorted(set(map(str, raw)) - _SESSIONS_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown keys {', '.join(unknown)}")
    max_open = raw.get("max_open", MAX_UPSTREAM_SESSIONS)
    if isinstance(max_open, bool) or not isinstance(max_open, int) or not 1 <= max_open <= 10_000:
        raise ValueError(f"{where}.max_open: an integer between 1 and 10000")
    idle = raw.get("idle_seconds", SESSION_IDLE_SECONDS)
    if isinstance(idle, bool) or not isinstance(idle, int | float) or not 1 <= idle <= 86_400:
        raise ValueError(f"{where}.idle_seconds: a number between 1 and 86400")
    return UpstreamSessions(max_open=max_open, idle_seconds=float(idle))


def _listen_streams(raw: Any) -> ListenStreamBounds:
    """``listen_streams``: the defaults when absent; ``max_open_per_agent`` may not
    exceed ``max_open`` (a bound that could never be reached says the file is wrong)."""
    if raw is None:
        return ListenStreamBounds()
    if not isinstance(raw, Mapping):
        raise ValueError("listen_streams: expected a mapping")
    unknown = sorted(set(map(str, raw)) - _LISTEN_STREAMS_KEYS)
    if unknown:
        raise ValueError(f"listen_streams: unknown keys {', '.join(unknown)}")
    total = raw.get("max_open", MAX_LISTEN_STREAMS)
    if (
        isinstance(total, bool)
        or not isinstance(total, int)
        or not 1 <= total <= _LISTEN_STREAMS_CEILING
    ):
        raise ValueError(
            f"listen_streams.max_open: an integer between 1 and {_LISTEN_STREAMS_CEILING}"
        )
    per_agent = raw.get("max_open_per_agent", min(MAX_LISTEN_STREAMS_PER_AGENT, total))
    if isinstance(per_agent, bool) or not isinstance(per_agent, int) or not 1 <= per_agent <= total:
        raise ValueError(
            f"listen_streams.max_open_per_agent: an integer between 1 and max_open ({total})"
        )
    return ListenStreamBounds(max_open=total, max_open_per_agent=per_agent)


def load_config(data: Any) -> McpGatewayConfig:
    """Validate a whole MCP gateway configuration; a ValueError names the bad key."""
    gateway = load_gateway_config(data, "mcp", section_keys=_SECTION_KEYS)
    path = urlsplit(gateway.public_url).path
    if path in _OWN_PATHS or path.startswith(_WELL_KNOWN + "/"):
        raise ValueError(
            "public_url: its path may not be /healthz, /metrics or under /.well-known/ "
            "(the gateway serves those itself)"
        )
    section = gateway.section
    raw_servers = section.get("servers")
    if not isinstance(raw_servers, list) or not raw_servers:
        raise ValueError("servers: a list of at least one upstream MCP server")
    if len(raw_servers) > 64:
        raise ValueError("servers: at most 64 upstream servers")
    servers: list[UpstreamServer] = []
    for index, raw in enumerate(raw_servers):
        where = f"servers[{index}]"
        server = _server(
            raw,
            where,
            single=len(raw_servers) == 1,
            has_store=gateway.secrets_store is not None,
        )
        for k, other in enumerate(servers):
            if other.name == server.name:
                raise ValueError(f"{where}.name: {server.name!r} is also servers[{k}].name")
            if other.prefix.startswith(server.prefix) or server.prefix.startswith(other.prefix):
                raise ValueError(
                    f"{where}.prefix: {server.prefix!r} overlaps servers[{k}].prefix "
                    f"{other.prefix!r} (a name could belong to either)"
                )
        servers.append(server)
    seconds = section.get("catalog_seconds", 5)
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not 0 <= seconds <= 3600
    ):
        raise ValueError("catalog_seconds: a number between 0 and 3600")
    return McpGatewayConfig(
        gateway=gateway,
        servers=tuple(servers),
        catalog_seconds=float(seconds),
        listen_streams=_listen_streams(section.get("listen_streams")),
    )


# -- namespacing -----------------------------------------------------------------------------


class Namespace:
    """Exposed names (``<prefix><name>``) to upstream servers and back. Prefixes are
    validated not to overlap, so a name belongs to at most one server."""

    def __init__(self, servers: Sequence[UpstreamServer]) -> None:
        self.servers = tuple(servers)

    @staticmethod
    def expose(server: UpstreamServer, name: str) -> str:
        return server.prefix + name

    def route(self, exposed: str) -> tuple[UpstreamServer, str] | None:
        """The server an exposed name belongs to and its upstream name, or None."""
        for server in self.servers:
            if exposed.startswith(server.prefix) and len(exposed) > len(server.prefix):
                return server, exposed[len(server.prefix) :]
        return None


# -- listing kinds and session owners --------------------------------------------------------


def _session_owner(access: VerifiedAccess) -> Owner:
    """Who a request is for: its agent (``client_id``) and its token's subject (the
    human of a delegated token, the agent itself otherwise). A handshake-era session
    at the gateway belongs to one owner (at most :data:`MAX_SESSIONS_PER_OWNER` each),
    and the calls of one owner, and only theirs, share an upstream session."""
    return (access.client_id, access.subject)


# -- the request state between the ASGI layer and the MCP handlers ---------------------------

_STATE_KEY: Final = "agentiam.mcp"


@dataclass(frozen=True, slots=True)
class _Pending:
    method: str
    call: Call
    verdict: Verdict
    approval: ApprovalOutcome | None = None  # the call waits on (or was refused by) one


@dataclass(frozen=True, slots=True)
class _Guarded:
    """A guarded request (``_GUARDED``, with an id) of a POST: its method and id, the
    policy question (or why the request is malformed), and the approval a
    ``tools/call`` names (``malformed_approval``: named, but not as one id)."""

    method: str
    request_id: Any
    call: Call | str
    presented: Any
    malformed_approval: bool


@dataclass(frozen=True, slots=True)
class _Foreseen:
    """A refusal the SDK's transport will make before a handler runs
    (:class:`_SdkRules`): the HTTP status the client gets, and why."""

    status: int
    reason: str


class _Unanswered(Exception):
    """An upstream request that got no answer to relay (:meth:`McpGateway._relayed`):
    the agent's error, and the HTTP status a ``tool.call`` records it with."""

    def __init__(self, status: int, error: MCPError) -> None:
        super().__init__(error.message)
        self.status = status
        self.error = error


_TALLY_KEY: Final = "agentiam.mcp.tally"


@dataclass(slots=True)
class _Tally:
    """What ``/metrics`` counts of one request to the MCP endpoint (:class:`_Counting`):
    its JSON-RPC method (one of :data:`_METHODS`, else ``other``), the HTTP status it
    got, the outcome where that status does not tell it (a refusal or a failure
    answered in a 200 stream), and when it was decided: refused by the gateway, or
    handed to the SDK with its decision made (a call), its listing prepared or its
    token taken (a listing, an ``initialize``)."""

    started: float = field(default_factory=time.perf_counter)
    method: str = OTHER_METHOD
    outcome: str | None = None
    status: int | None = None
    decided: float | None = None
    handed: bool = False  # to the SDK
    streamed: bool = False  # a long-lived stream (listen, GET): its time is not observed

    def hand_over(self) -> None:
        """The request goes on to the SDK: decided now, unless its method is none of
        the fixed set (the gateway decides nothing for those)."""
        self.handed = True
        if self.method != OTHER_METHOD:
            self.decided = time.perf_counter()

    def answered(self, status: int) -> None:
        """The response starts with ``status``; if the gateway answers itself (a
        refusal), the request was decided now."""
        self.status = status
        if not self.handed:
            self.decided = time.perf_counter()

    def refused_with(self, status: int) -> None:
        """The MCP transport refuses the request with ``status`` (below 400: with a
        JSON-RPC error in a 200 answer, counted as a bad request)."""
        self.outcome = refusal_outcome(status) if status >= 400 else "bad_request"

    def result(self) -> str:
        """The outcome label: the one set, or the status's (no status: the client
        left before an answer started)."""
        if self.outcome is not None:
            return self.outcome
        if self.status is None:
            return "client_gone"
        return "allowed" if self.status < 400 else refusal_outcome(self.status)


def _tally_of(scope: Scope) -> _Tally:
    """The request's tally (:class:`_Counting` sets it; without it, one that is not
    counted)."""
    tally = scope.get(_TALLY_KEY)
    if not isinstance(tally, _Tally):
        tally = scope[_TALLY_KEY] = _Tally()
    return tally


def _method_of(message: Any) -> str:
    """The ``method`` label of a POST's JSON-RPC message: a request's (with an id)
    method if it is one of :data:`_METHODS`, else ``other``, never the client's
    string itself."""
    if not isinstance(message, dict) or "id" not in message:
        return OTHER_METHOD
    method = message.get("method")
    return method if isinstance(method, str) and method in _METHODS else OTHER_METHOD


@dataclass(slots=True)
class _RequestState:
    """What the endpoint learnt of one HTTP request, for the handler the SDK runs:
    the caller, the decision of its call (``pending``), the listing prepared for it
    (``listing``: method and items), a refusal of the SDK's it foresaw, and what
    ``/metrics`` counts of it (``tally``). ``checked``: the SDK's rules were asked of
    it (:class:`_SdkRules`), whatever they foresaw; when they were not, the SDK's
    refusal of the request is audited as it is answered
    (:meth:`_Endpoint._unchecked`)."""

    access: VerifiedAccess
    trace: TraceContext
    peer: str | None = None  # the connection's network address, named in refusals
    pending: _Pending | None = None
    listing: tuple[str, list[Any]] | None = None
    foreseen: _Foreseen | None = None
    checked: bool = False
    tally: _Tally = field(default_factory=_Tally)
    stream: Stream | None = None  # a listen stream the endpoint admitted


def _state_of(ctx: ServerRequestContext[Any, Any]) -> _RequestState:
    request = ctx.request
    scope = getattr(request, "scope", None)
    state = scope.get(_STATE_KEY) if isinstance(scope, dict) else None
    if not isinstance(state, _RequestState):  # never reached through the gateway's endpoint
        raise MCPError(INTERNAL_ERROR, "the request was not authenticated by the gateway")
    return state


def _take(state: _RequestState, method: str, name: str, args: Mapping[str, Any] | None) -> _Pending:
    """The decision the ASGI layer made for this very call (one use)."""
    pending = state.pending
    state.pending = None
    if (
        pending is None
        or pending.method != method
        or pending.call.tool != name
        or dict(pending.call.args or {}) != dict(args or {})
    ):
        state.tally.outcome = state.tally.outcome or "error"
        raise MCPError(
            INTERNAL_ERROR, "the gateway holds no decision for this call; it was refused"
        )
    return pending


def _now() -> datetime:
    return datetime.now(UTC)


def _rewrite_uri(block: Any, prefix: str) -> Any:
    """A content block whose resource URI is given its server's prefix, so the agent
    can read it through the gateway."""
    if not prefix:
        return block
    if isinstance(block, types.ResourceLink):
        return block.model_copy(update={"uri": prefix + block.uri})
    if isinstance(block, types.EmbeddedResource):
        inner = block.resource.model_copy(update={"uri": prefix + block.resource.uri})
        return block.model_copy(update={"resource": inner})
    return block


def _upstream_outcome(timed_out: bool) -> str:
    """The ``/metrics`` outcome of a call whose upstream failed."""
    return "upstream_timeout" if timed_out else "upstream_error"


def _timed_out(server: UpstreamServer) -> MCPError:
    """The agent's error for a call its upstream did not answer within the server's
    ``timeouts`` (connect, read or total): the SDK's ``REQUEST_TIMEOUT`` code, whatever
    the SDK itself reported (past ``read`` it says the connection closed). Its
    ``tool.call`` event records status 504, as the HTTP gateway's does (RFC 9110
    section 15.6.5)."""
    return MCPError(REQUEST_TIMEOUT, f"upstream {server.name}: timed out")


def _upstream_error(server: UpstreamServer, exc: MCPError) -> MCPError:
    """The agent's copy of an upstream's JSON-RPC error: its code and its message cut
    to 1,000 characters; ``data`` (stack traces, internals) is not passed on."""
    return MCPError(exc.code, f"upstream {server.name}: {exc.message}"[:1000])


# -- the gateway -----------------------------------------------------------------------------


class _GatewayServer(Server[Any]):
    """The SDK's low-level server, declaring the change notifications the gateway
    sends: ``listChanged`` for tools, resources and prompts in both eras (the
    handshake era's flags come from ``NotificationOptions``, which the session
    manager never passes; at 2026-07-28 the SDK derives them from
    ``subscriptions/listen`` being served), never ``resources.subscribe``
    (``resources/updated`` is not relayed), and ``completions`` only while an upstream
    server declared it (``completes``: MCP 2026-07-28 "Completion", "Capabilities"),
    though its handler is always served (it refuses a completion for a server that
    does not declare it). The SDK asks this of every ``initialize`` (a handshake-era
    session's capabilities) and every ``server/discover`` (2026-07-28)."""

    def __init__(self, *args: Any, completes: Callable[[], bool], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._completes = completes

    def get_capabilities(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
        *,
        protocol_version: str | None = None,
    ) -> types.ServerCapabilities:
        every = NotificationOptions(
            prompts_changed=True, resources_changed=True, tools_changed=True
        )
        found = super().get_capabilities(
            every, experimental_capabilities, extensions, protocol_version=protocol_version
        )
        if found.resources is not None:
            resources = found.resources.model_copy(update={"subscribe": False})
            found = found.model_copy(update={"resources": resources})
        if found.completions is not None and not self._completes():
            found = found.model_copy(update={"completions": None})
        return found


class McpGateway:
    """The MCP server agents talk to: the handlers of the low-level SDK server, the
    upstream sessions, and the ASGI endpoint in front of the SDK's Streamable HTTP
    session manager."""

    def __init__(self, config: McpGatewayConfig, runtime: GatewayRuntime) -> None:
        self.config = config
        self.runtime = runtime
        self.enforcer = runtime.enforcer
        self.namespace = Namespace(config.servers)
        self.location = config.gateway.public_url
        self.visibility = Visibility(runtime.link.authorizer, location=self.location)
        self._outcomes = OutcomeQueue(self.enforcer)
        self.metrics = McpGatewayMetrics(
            runtime,
            self._outcomes,
            methods=_METHODS,
            sessions=self.open_sessions,
            list_changes=self._list_changes,
        )
        client = self.enforcer.approvals
        # None: no approvals; an approvable deny stays a plain deny
        self.approvals = ApprovalFlow(self.enforcer, client) if client is not None else None
        broker = runtime.broker
        self.upstreams = {
            s.name: Upstream(
                s,
                broker,
                config.gateway.timeouts,
                config.catalog_seconds,
                echoed=partial(self.metrics.echoed, "body"),
            )
            for s in config.servers
        }
        # the tools the upstreams list, as Tool entities in their McpServer: every
        # decision's snapshot is the bundle's with them merged in (mcp_tools)
        self.tools = ListedTools(
            self.upstreams, self.namespace.route, runtime.link.rederive, runtime.link.entities
        )
        runtime.link.derive_with(self.tools.derive)
        # what each agent session and agent was shown of which server: told when
        # that server's list changes (_relay), on both eras (mcp_listen)
        self.shown = Shown()
        self.bus = AudienceBus(self.shown)
        # a new policy set in force: every agent that listed is told (_policy_changed)
        self.policy_changes = PolicyChanges()
        runtime.link.watch_policy(self.policy_changes.changed)
        # the endpoint admits a listen stream within the bounds (Streams.refusal); the
        # SDK handler's own bound is the same, so it is never the one that refuses
        bounds = config.listen_streams
        self._listener = ListenHandler(self.bus, max_subscriptions=bounds.max_open)
        self.streams = Streams(
            self._stream_ending,
            per_owner=bounds.max_open_per_agent,
            total=bounds.max_open,
            on_end=self.metrics.stream_ended,
        )
        self.metrics.watch_listens(self.streams.listens)
        self.server: Server[Any] = _GatewayServer(
            f"agentiam-gateway/{config.gateway.name}",
            version=__version__,
            title=f"AgentIAM MCP gateway {config.gateway.name}",
            cache_hints={m: CacheHint(ttl_ms=0, scope="private") for m in _CACHEABLE},
            get_tool_input_schema=self._input_schema,
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_list_resources=self._list_resources,
            on_list_resource_templates=self._list_templates,
            on_read_resource=self._read_resource,
            on_list_prompts=self._list_prompts,
            on_get_prompt=self._get_prompt,
            on_completion=self._complete,
            on_subscriptions_listen=self._listen,
            completes=self.completes,
        )
        self.server.middleware = []  # no per-message tracing spans on the hot path
        self.sessions = StreamableHTTPSessionManager(
            app=self.server,
            json_response=False,  # SSE, so upstream progress reaches the agent
            stateless=False,  # handshake-era sessions, bound to the agent that opened them
            # Host/Origin: the endpoint checks Origin itself against public_url; the Host
            # behind a proxy is the operator's business (every request needs a DPoP proof).
            security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
            max_request_body_size=MAX_BODY_BYTES,
            session_idle_timeout=SESSION_IDLE_SECONDS,
        )

    # -- lifecycle -------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The SDK session manager and the task group holding upstream sessions. On
        the way out every upstream session is closed (the upstream told, each server's
        wait bounded by ``timeouts.connect``), then what is left is cancelled."""
        async with anyio.create_task_group() as tg, self.sessions.run():
            for upstream in self.upstreams.values():
                upstream.attach(tg)
                tg.start_soon(upstream.follow, functools.partial(self._changed, upstream))
            tg.start_soon(watch_event_loop, self.metrics.loop_lag.observe)
            tg.start_soon(self.streams.watch)
            tg.start_soon(self.policy_changes.run, self._policy_changed)
            settle_heap()  # long-lived objects out of later full collections
            try:
                yield
            finally:
                self._listener.close()  # listen streams end gracefully
                with anyio.CancelScope(shield=True):
                    async with anyio.create_task_group() as closing:
                        for upstream in self.upstreams.values():
                            closing.start_soon(upstream.aclose)
                tg.cancel_scope.cancel()

    async def _changed(
        self,
        upstream: Upstream,
        changes: Mapping[ListingKind, tuple[list[Any] | None, list[Any] | None]],
    ) -> None:
        """``upstream`` said a list changed and it was fetched again
        (:meth:`Upstream.follow`). Tools: the gateway's view follows the listing
        (None, the fetch failed: none of its tools is known until one succeeds), and
        the agents are told when its tools changed in that view. Resources (and
        templates) and prompts: the agents are told when the listing differs from the
        one cached before (a failed fetch included). Who is told: :meth:`_relay`."""
        name = upstream.server.name
        groups: set[Group] = set()
        for kind, (before, items) in changes.items():
            if kind == "tools":
                records = self.tools.records_of(name)
                if items is None:
                    await self.tools.forget(upstream.server)
                else:
                    await self.tools.seen(upstream.server, items)
                if self.tools.records_of(name) != records:
                    groups.add("tools")
            else:
                await self.tools.items_seen(upstream.server, kind, items)
                if items != before:
                    groups.add(group_of(kind))
        for group in sorted(groups):
            await self._relay(name, group)

    def _shown(self, ctx: ServerRequestContext[Any, Any], method: str, shown: list[Any]) -> None:
        """A listing showed ``shown``: remember which servers' items the agent (and
        its handshake-era session, weakly) saw, for :meth:`_relay`."""
        servers = set()
        for item in shown:
            exposed = getattr(item, "uri_template", None) or getattr(item, "uri", None)
            exposed = item.name if method in ("tools/list", "prompts/list") else exposed
            route = self.namespace.route(str(exposed))
            if route is not None:
                servers.add(route[0].name)
        handshake = ctx.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS
        session = connection_of(ctx.session) if handshake else None
        owner = _session_owner(_state_of(ctx).access)
        self.shown.record(method, frozenset(servers), owner, session)

    async def _relay(self, server: str | None, group: Group) -> int:
        """Tell the agents that ``server``'s ``group`` list changed (MCP,
        server/tools, server/resources, server/prompts, "List Changed
        Notification"), so a stock client lists again: every handshake-era session
        whose last listing of the group showed it something of ``server``, on its
        standalone stream (each send bounded by :data:`CHANGE_SECONDS`; a session
        without a standalone stream drops it), and every 2026-07-28 listen stream
        that asked for the group and whose agent's last listing showed it something
        of ``server`` (:class:`~agentiam.adapters.gateway.mcp_listen.AudienceBus`).
        Others are not told: the notification carries no data, but telling an agent
        that a server it sees nothing of changed would say something about it.
        ``server`` None: the policy set changed (:meth:`_policy_changed`), told to
        every session and stream whose agent listed the group. Returns how many
        sessions (still open in the SDK's table: a closed one lingers in
        :class:`~agentiam.adapters.gateway.mcp_listen.Shown` until it is collected)
        and streams were told."""
        open_ids = open_sessions(self.sessions)
        sessions = [c for c in self.shown.sessions_told(server, group) if c.session_id in open_ids]

        async def tell(connection: Connection) -> None:
            with anyio.move_on_after(CHANGE_SECONDS):
                try:
                    await send_on_session(connection, group)
                except Exception:  # a session closing meanwhile must not stop the others
                    log.debug("list_changed not sent on a closing session", exc_info=True)

        if sessions:
            async with anyio.create_task_group() as tg:
                for connection in sessions:
                    tg.start_soon(tell, connection)
        streams = await self.bus.tell(server, group)
        self.metrics.told(group, sessions=len(sessions), streams=streams)
        if server is not None and (sessions or streams):
            log.info(
                "upstream %s: %s list changed; %d agent sessions and %d listen streams told",
                server,
                group,
                len(sessions),
                streams,
            )
        return len(sessions) + streams

    async def _policy_changed(self, version: int) -> None:
        """Policy set ``version`` is in force: what any agent may see may have
        changed, of any server, so every session and stream whose agent listed a
        group is told that group changed (:meth:`_relay` with no server), with no
        decision made for anyone (the agents list again, and are decided then). One
        round at most per :data:`~agentiam.adapters.gateway.mcp_listen.POLICY_SECONDS`
        (:class:`~agentiam.adapters.gateway.mcp_listen.PolicyChanges`)."""
        told = {group: await self._relay(None, group) for group in GROUPS}
        self.metrics.policy_round()
        log.info(
            "policy version %s in force; agents told their lists changed: %s",
            version,
            ", ".join(f"{group} {n}" for group, n in told.items()),
        )

    # -- subscriptions/listen (2026-07-28) ---------------------------------------------

    async def _listen(
        self, ctx: ServerRequestContext[Any, Any], params: types.SubscriptionsListenRequestParams
    ) -> types.SubscriptionsListenResult:
        """Serve one ``subscriptions/listen`` stream (SEP-2575) with the SDK's
        :class:`~mcp.server.subscriptions.ListenHandler`: acknowledged with the
        ``list_changed`` kinds asked for (resource subscriptions are not relayed,
        so not acknowledged), then each change the stream's agent may hear of
        (:meth:`_relay`). The endpoint admitted it (:class:`_Endpoint`) and the
        gateway's watch ends it when its token no longer passes
        (:meth:`_stream_ending`): then its final frame is a JSON-RPC error saying
        why."""
        state = _state_of(ctx)
        stream = state.stream
        if stream is None or stream.action != LISTEN:
            state.tally.outcome = state.tally.outcome or "error"
            raise MCPError(INTERNAL_ERROR, "the gateway admitted no listen stream for this request")
        wanted = honoured(params.notifications)
        result: types.SubscriptionsListenResult | None = None
        with anyio.CancelScope() as graceful, listening_as(stream.owner, wanted):
            stream.graceful = graceful
            if stream.ended is None:
                result = await self._listener(
                    ctx, params.model_copy(update={"notifications": wanted})
                )
        stream.graceful = None
        if stream.ended is not None:
            raise MCPError(INVALID_REQUEST, f"the listen stream has ended: {stream.ended[1]}")
        assert result is not None
        return result

    def _stream_ending(self, access: VerifiedAccess) -> Ending | None:
        """Why a stream opened with ``access`` must end now, or None: its token
        expired, was revoked, its signing key left the key set, or the revocation
        set is stale (as a request would be refused, :meth:`AccessTokenVerifier.still_valid
        <agentiam.core.credentials.verifier.AccessTokenVerifier.still_valid>`), or
        the control plane has been unreachable past the outage bound."""
        try:
            self.runtime.link.verifier.still_valid(access, now=time.time())
        except OAuthError as exc:
            reason = f"{exc.error}: {exc.reason}"
            if exc.oauth_status >= 500:
                return exc.oauth_status, reason, "unavailable"
            label = next((w for w in ("expired", "revoked") if w in exc.reason), "invalid")
            return exc.oauth_status, reason, label
        try:
            self.runtime.link.authorizer()
        except ServiceUnavailable as exc:
            return 503, exc.detail, "unavailable"
        return None

    def _list_changes(self) -> list[tuple[str, int, int, int]]:
        return [
            (name, u.notices, u.refetches, u.refetch_failures) for name, u in self.upstreams.items()
        ]

    def open_sessions(self) -> int:
        """The handshake-era sessions open in the SDK's session manager (its table,
        which :class:`_SdkRules` reads too: :mod:`.mcp_sdk_state`)."""
        return len(open_sessions(self.sessions))

    def flush_outcomes(self) -> None:
        """Start the write of the queued ``tool.call`` events (at shutdown)."""
        self._outcomes.flush()

    async def durably(self, step: Callable[[], T]) -> T:
        """Run an enforcer step (authenticate, decide, refuse) on the event loop, as
        the HTTP gateway does: it only computes (keys, revocations and policy are in
        memory), its audit events go to the spool without waiting (taking the queued
        outcome events along), and their fsync is awaited without holding a thread.
        What the step raises is raised once its events are durable; nothing is
        answered before. ServiceUnavailable when they cannot be made durable."""
        failure: Exception | None = None
        result: T | None = None
        with self.enforcer.deferred() as pending:
            try:
                result = step()
            except Exception as exc:
                failure = exc
        self._outcomes.taken_by(pending.futures)
        await pending.durable()
        if failure is not None:
            raise failure
        return result  # type: ignore[return-value]  # set when step() returned

    # -- listings --------------------------------------------------------------------

    async def listing(self, state: _RequestState, method: str) -> list[Any]:
        """What ``method`` (one of the four list methods) shows this caller: every
        upstream's listing, filtered by policy, its ``mcp.list`` event durable. Run by
        the endpoint before the SDK answers, so that a listing that cannot be
        recorded is refused as a call is (HTTP 503, no data) rather than answered in
        the SDK's stream; the handler hands the result on. ServiceUnavailable past
        the outage bound or when the spool cannot take the event."""
        kind = LISTING_KINDS[method]
        found: list[tuple[Listed, Any]] = []
        unavailable: list[str] = []
        for upstream in self.upstreams.values():
            items = await upstream.listing(kind)
            if items is None:
                unavailable.append(upstream.server.name)
                continue
            prefix = upstream.server.prefix
            if kind == "tools":  # decided on a snapshot that has these tools' entities
                await self.tools.seen(upstream.server, items)
                # a tool without its derived record cannot be called: not shown either
                items = [t for t in items if self.tools.known(prefix + t.name)]
            else:  # the items' records, so their decisions find them in the snapshot
                await self.tools.items_seen(upstream.server, kind, items)
            for item in items:
                found.append(_expose(kind, upstream.server, item))
        return await anyio.to_thread.run_sync(
            self._filter_and_record, state, method, found, unavailable
        )

    @staticmethod
    def _listed(ctx: ServerRequestContext[Any, Any], method: str) -> list[Any]:
        """The listing the endpoint prepared for this very request (one use)."""
        state = _state_of(ctx)
        prepared, state.listing = state.listing, None
        if prepared is None or prepared[0] != method:
            state.tally.outcome = state.tally.outcome or "error"
            raise MCPError(
                INTERNAL_ERROR, "the gateway holds no listing for this request; it was refused"
            )
        return prepared[1]

    def _filter_and_record(
        self,
        state: _RequestState,
        method: str,
        found: list[tuple[Listed, Any]],
        unavailable: list[str],
    ) -> list[Any]:
        access = state.access
        flags = self.visibility.visible(access, [listed for listed, _ in found])
        shown = [item for (_, item), ok in zip(found, flags, strict=True) if ok]
        # ServiceUnavailable as the enforcer raises it: a full spool's names what is full
        self.enforcer.record_listing(
            access,
            method,
            [listed for listed, _ in found],
            flags,
            trace=state.trace,
            unavailable=unavailable,
        )
        return shown

    async def _list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        shown = self._listed(ctx, "tools/list")
        self._shown(ctx, "tools/list", shown)
        return types.ListToolsResult(tools=shown)

    async def _list_resources(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        shown = self._listed(ctx, "resources/list")
        self._shown(ctx, "resources/list", shown)
        return types.ListResourcesResult(resources=shown)

    async def _list_templates(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        templates = self._listed(ctx, "resources/templates/list")
        self._shown(ctx, "resources/templates/list", templates)
        return types.ListResourceTemplatesResult(resource_templates=templates)

    async def _list_prompts(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListPromptsResult:
        shown = self._listed(ctx, "prompts/list")
        self._shown(ctx, "prompts/list", shown)
        return types.ListPromptsResult(prompts=shown)

    def _input_schema(self, exposed: str) -> Mapping[str, Any] | None:
        """For the SDK's ``Mcp-Param-*`` header check (2026-07-28): the cached schema."""
        route = self.namespace.route(exposed)
        if route is None:
            return None
        tool = self.upstreams[route[0].name].cached_tool(route[1])
        return None if tool is None else tool.input_schema

    # -- calls -----------------------------------------------------------------------

    async def _forward(
        self,
        state: _RequestState,
        pending: _Pending,
        route: tuple[UpstreamServer, str] | None,
        send: Callable[[ClientSession, str], Awaitable[Any]],
    ) -> Any:
        """Send one allowed call upstream with the brokered credential, to ``route``
        (the server, and the name there) the handler found it decided in
        (:meth:`_decided_in`; None: not forwarded, 404); record its outcome
        (``tool.call``) whatever happens, and name a failure for ``/metrics``
        (not_found, upstream_timeout or upstream_error)."""
        call = pending.call
        outcome, status = Outcome.FAILURE, 502
        use = UpstreamUse()
        started = time.perf_counter()
        try:
            if route is None:
                status = 404
                state.tally.outcome = "not_found"
                raise MCPError(INVALID_PARAMS, f"no upstream server serves {call.tool!r}")
            try:
                result = await self._relayed(state, route, send, use)
            except _Unanswered as failed:
                status = failed.status
                raise failed.error from None
            status = 200
            is_error = isinstance(result, types.CallToolResult) and result.is_error
            outcome = Outcome.FAILURE if is_error else Outcome.SUCCESS
            return result
        finally:
            duration = (time.perf_counter() - started) * 1000
            echoed = {"body": use.echoed} if use.echoed else None
            self.record_outcome(state, pending, outcome, status, use.label, duration, echoed)

    async def _relayed(
        self,
        state: _RequestState,
        route: tuple[UpstreamServer, str],
        send: Callable[[ClientSession, str], Awaitable[Any]],
        use: UpstreamUse,
    ) -> Any:
        """``send`` one request to ``route``'s server, over ``state``'s owner's
        upstream session (:meth:`Upstream.for_call`), with the brokered credential,
        what it used recorded in ``use``; the answer, or :class:`_Unanswered` (the
        agent's error and the status it is recorded with: 503 when every upstream
        session is in use, 504 past a timeout, else 502), its failure named for
        ``/metrics`` (unavailable, upstream_timeout or upstream_error)."""
        server, name = route
        upstream = self.upstreams[server.name]
        token = UPSTREAM_USE.set(use)
        try:
            async with upstream.for_call(_session_owner(state.access)) as session:
                return await send(session, name)
        except AllSessionsBusy:
            state.tally.outcome = "unavailable"  # the gateway's bound, not the upstream's failure
            raise _Unanswered(
                503,
                MCPError(
                    INTERNAL_ERROR,
                    f"upstream {server.name}: all {server.sessions.max_open} upstream sessions "
                    "are in use; retry later",
                ),
            ) from None
        except MCPError as exc:
            # the SDK's own bound (timeouts.total), or the transport's
            # (connect, read), which the SDK reports as a closed connection
            timed_out = exc.code == REQUEST_TIMEOUT or use.timed_out
            state.tally.outcome = _upstream_outcome(timed_out)
            if use.error is not None:
                unavailable = "the brokered credential is unavailable"
                raise _Unanswered(
                    502, MCPError(INTERNAL_ERROR, f"upstream {server.name}: {unavailable}")
                ) from None
            if timed_out:
                raise _Unanswered(504, _timed_out(server)) from None
            raise _Unanswered(502, _upstream_error(server, exc)) from None
        except (httpx2.HTTPError, OSError, anyio.BrokenResourceError, RuntimeError) as exc:
            if use.timed_out or isinstance(exc, httpx2.TimeoutException):
                state.tally.outcome = _upstream_outcome(True)
                raise _Unanswered(504, _timed_out(server)) from None
            state.tally.outcome = _upstream_outcome(False)
            failed = f"upstream {server.name} failed ({type(exc).__name__})"
            raise _Unanswered(502, MCPError(INTERNAL_ERROR, failed)) from None
        finally:
            UPSTREAM_USE.reset(token)

    def record_outcome(
        self,
        state: _RequestState,
        pending: _Pending,
        outcome: Outcome,
        status: int | None,
        secret: str | None,
        duration_ms: float,
        echoed: dict[str, int] | None = None,
    ) -> None:
        """Queue the ``tool.call`` event of an allowed call, written without holding
        the answer (adapters/gateway/outcomes.py); ``echoed``: the occurrences of the
        brokered credential masked in the upstream's answers (``details.echoed``)."""
        access, call, verdict, trace = state.access, pending.call, pending.verdict, state.trace
        self._outcomes.record(
            lambda: self.enforcer.record_outcome(
                access,
                call,
                verdict,
                trace=trace,
                outcome=outcome,
                status=status,
                secret=secret,
                duration_ms=duration_ms,
                echoed=echoed,
            )
        )

    async def _call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        state = _state_of(ctx)
        pending = _take(state, "tools/call", params.name, params.arguments)
        if pending.approval is not None and pending.approval.verdict is None:
            state.tally.outcome = approval_outcome(pending.approval.state or "denied")
            return self._approval_result(params.name, pending)
        if not pending.verdict.allowed:
            state.tally.outcome = "forbidden"
            reason = pending.verdict.reason
            text = f"AgentIAM refused this call: {reason} (decision {pending.verdict.decision_id})"
            return types.CallToolResult(content=[types.TextContent(text=text)], is_error=True)
        # only a tool an upstream lists goes out (checked before the decision too; a
        # listing may have dropped it since): else a tool.call with status 404
        known = self.tools.known(params.name)
        route = self._decided_in(pending.call, self.namespace.route(params.name)) if known else None

        async def relay(progress: float, total: float | None, message: str | None) -> None:
            await ctx.session.report_progress(progress, total, message)

        async def send(session: ClientSession, name: str) -> Any:
            return await session.call_tool(
                name,
                params.arguments,
                read_timeout_seconds=self.config.gateway.timeouts.total,
                progress_callback=relay,
                input_responses=params.input_responses,
                request_state=params.request_state,
                allow_input_required=True,
            )

        result = await self._forward(state, pending, route, send)
        if isinstance(result, types.CallToolResult) and route is not None:
            prefix = route[0].prefix
            result = result.model_copy(
                update={"content": [_rewrite_uri(b, prefix) for b in result.content]}
            )
        assert isinstance(result, types.CallToolResult | types.InputRequiredResult)
        return result

    def _approval_result(self, tool: str, pending: _Pending) -> types.CallToolResult:
        """The tool error result of a call that waits on a human's approval (retry the
        same call with ``params._meta[META_KEY]`` set to the id, after ``retry_after``
        seconds), or that the approval refused: denied, expired, used, another call's."""
        approval = pending.approval
        assert approval is not None
        approval_id, state = approval.approval_id or "", approval.state or "denied"
        meta = mcp_result_meta(
            approval_id,
            state,
            expires_at=approval.expires_at,
            retry_after=self.config.gateway.approvals.retry_after_seconds,
            status_url=approval.status_url,
            decision_id=pending.verdict.decision_id,
        )
        text = mcp_result_text(tool, approval_id, state)
        return types.CallToolResult(
            content=[types.TextContent(text=text)], is_error=True, _meta=meta
        )

    async def _read_resource(
        self, ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult | types.InputRequiredResult:
        state = _state_of(ctx)
        # decided on the canonical URI (read_call: the upstream's template match
        # decodes what the agent percent-encoded): that URI, and no other, is read
        call = self.call_for("resources/read", {"uri": params.uri})
        exposed = call.tool if isinstance(call, Call) else params.uri
        pending = _take(state, "resources/read", exposed, None)
        if not pending.verdict.allowed:
            state.tally.outcome = "forbidden"
            raise MCPError(POLICY_DENIED, f"AgentIAM refused this read: {pending.verdict.reason}")
        route = self._decided_in(pending.call, self.namespace.route(pending.call.tool))

        async def send(session: ClientSession, uri: str) -> Any:
            return await session.read_resource(
                uri,
                input_responses=params.input_responses,
                request_state=params.request_state,
                allow_input_required=True,
            )

        result = await self._forward(state, pending, route, send)
        if isinstance(result, types.ReadResourceResult) and route is not None:
            prefix = route[0].prefix
            contents = [c.model_copy(update={"uri": prefix + c.uri}) for c in result.contents]
            # the answer depends on this caller's rights: never shared, never reused
            result = result.model_copy(
                update={"contents": contents, "ttl_ms": 0, "cache_scope": "private"}
            )
        assert isinstance(result, types.ReadResourceResult | types.InputRequiredResult)
        return result

    async def _get_prompt(
        self, ctx: ServerRequestContext[Any, Any], params: types.GetPromptRequestParams
    ) -> types.GetPromptResult | types.InputRequiredResult:
        state = _state_of(ctx)
        pending = _take(state, "prompts/get", params.name, params.arguments)
        if not pending.verdict.allowed:
            state.tally.outcome = "forbidden"
            raise MCPError(POLICY_DENIED, f"AgentIAM refused this prompt: {pending.verdict.reason}")
        route = self._decided_in(pending.call, self.namespace.route(params.name))

        async def send(session: ClientSession, name: str) -> Any:
            return await session.get_prompt(
                name,
                params.arguments,
                input_responses=params.input_responses,
                request_state=params.request_state,
                allow_input_required=True,
            )

        result = await self._forward(state, pending, route, send)
        if isinstance(result, types.GetPromptResult) and route is not None:
            prefix = route[0].prefix
            messages = [
                m.model_copy(update={"content": _rewrite_uri(m.content, prefix)})
                for m in result.messages
            ]
            result = result.model_copy(update={"messages": messages})
        assert isinstance(result, types.GetPromptResult | types.InputRequiredResult)
        return result

    async def _complete(
        self, ctx: ServerRequestContext[Any, Any], params: types.CompleteRequestParams
    ) -> types.CompleteResult:
        """``completion/complete`` (MCP 2026-07-28 "Completion"), decided by the endpoint
        as the in-process guard decides it (:func:`~agentiam.adapters.gateway.
        mcp_calls.completion_call`, routed: the listing's question of the referenced
        prompt or template, in its server's ``McpServer``), and checked there to be
        served by that server (:meth:`completion_refusal`). A policy deny is a
        JSON-RPC error (:data:`POLICY_DENIED`) as a refused prompt's; an allowed one
        goes to the server the ref routes to, under its upstream name, over the
        agent's upstream session with the brokered credential, unless that session's
        server does not declare ``completions`` (refused, not sent). The answer's
        values are relayed (at most :data:`MAX_COMPLETION_VALUES`). No ``tool.call``
        event: a completion runs no tool and reads nothing (the decision is its one
        event, as at the guard)."""
        state = _state_of(ctx)
        pending = _take(state, COMPLETE_METHOD, COMPLETE_METHOD, {})
        wire = params.model_dump(by_alias=True, mode="json", exclude_none=True)
        asked = self.call_for(COMPLETE_METHOD, wire)
        if (
            not isinstance(asked, Call)
            or asked.resource != pending.call.resource
            or asked.resource_parents != pending.call.resource_parents
        ):  # never: the endpoint decided this very body
            state.tally.outcome = state.tally.outcome or "error"
            raise MCPError(
                INTERNAL_ERROR, "the gateway holds no decision for this completion; it was refused"
            )
        if not pending.verdict.allowed:
            state.tally.outcome = "forbidden"
            raise MCPError(
                POLICY_DENIED, f"AgentIAM refused this completion: {pending.verdict.reason}"
            )
        ref = params.ref
        item = ref.name if isinstance(ref, types.PromptReference) else ref.uri
        route = self._decided_in(pending.call, self.namespace.route(item))
        if route is None:  # never: the endpoint refused it (completion_refusal)
            state.tally.outcome = "not_found"
            raise MCPError(INVALID_PARAMS, f"no upstream server serves {item!r}")
        server = route[0]
        context = params.context.arguments if params.context is not None else None

        async def send(session: ClientSession, name: str) -> Any:
            declared = session.server_capabilities
            if declared is None or declared.completions is None:
                raise _NotDeclared
            upstream_ref: types.PromptReference | types.ResourceTemplateReference
            if isinstance(ref, types.PromptReference):
                upstream_ref = types.PromptReference(name=name)
            else:
                upstream_ref = types.ResourceTemplateReference(uri=name)
            argument = {"name": params.argument.name, "value": params.argument.value}
            return await session.complete(upstream_ref, argument, context_arguments=context)

        try:
            result = await self._relayed(state, route, send, UpstreamUse())
        except _Unanswered as failed:
            raise failed.error from None
        except _NotDeclared:  # its session says otherwise than the one that declared it
            state.tally.outcome = "not_found"
            raise MCPError(METHOD_NOT_FOUND, _no_completions(server)) from None
        assert isinstance(result, types.CompleteResult)
        completion = result.completion
        if len(completion.values) > MAX_COMPLETION_VALUES:
            completion = completion.model_copy(
                update={"values": completion.values[:MAX_COMPLETION_VALUES], "has_more": True}
            )
        return types.CompleteResult(completion=completion)

    def completes(self) -> bool:
        """Whether the gateway declares ``completions``: an upstream server declared it
        when a session with it last opened (:attr:`Upstream.completes`)."""
        return any(upstream.completes for upstream in self.upstreams.values())

    async def learn_capabilities(self) -> None:
        """Before an answer that declares the gateway's capabilities (an
        ``initialize``, a ``server/discover``): open the catalog session of every
        upstream server no session with has opened yet, so that what they declare is
        known (:meth:`completes`), all at once, waiting at most ``timeouts.connect``.
        Once a server's capabilities are known this waits for nothing."""
        unknown = [u for u in self.upstreams.values() if u.capabilities is None]
        if not unknown:
            return
        seconds = self.config.gateway.timeouts.connect
        async with anyio.create_task_group() as tg:
            for upstream in unknown:
                tg.start_soon(upstream.learn_capabilities, seconds)

    async def completion_refusal(
        self, call: Call, params: Mapping[str, Any]
    ) -> tuple[int, int, str, str] | None:
        """Why an allowed ``completion/complete`` (``call``, decided on ``params``)
        cannot be served, or None: no upstream server serves the referenced name or
        template (no server's prefix, or the call was not decided in its server), as a
        ``prompts/get`` of such a name is refused after its decision (404,
        ``INVALID_PARAMS``); or that server does not declare ``completions`` (404,
        ``METHOD_NOT_FOUND``: MCP 2026-07-28 "Completion", error handling,
        "Capability not supported"), learnt from its session (opened if need be, at
        most ``timeouts.connect``: one that cannot be reached is 502,
        ``INTERNAL_ERROR``). As ``(status, JSON-RPC code, reason, /metrics
        outcome)``; the completion itself is never sent to the server."""
        referenced = completion_ref(params)
        assert not isinstance(referenced, str)  # the call was made of these params
        item = referenced[1]
        route = self._decided_in(call, self.namespace.route(item))
        if route is None:
            return 404, INVALID_PARAMS, f"no upstream server serves {item!r}", "not_found"
        server = route[0]
        upstream = self.upstreams[server.name]
        await upstream.learn_capabilities(self.config.gateway.timeouts.connect)
        if upstream.capabilities is None:
            reason = f"upstream {server.name} is unavailable"
            return 502, INTERNAL_ERROR, reason, _upstream_outcome(False)
        if not upstream.completes:
            return 404, METHOD_NOT_FOUND, _no_completions(server), "not_found"
        return None

    def record_refusal(self, state: _RequestState, call: Call, status: int, reason: str) -> None:
        """Queue the ``api.request.rejected`` of an allowed completion the MCP
        transport refused after its decision (no handler took it), written without
        holding the answer, as :meth:`record_outcome` (a completion has no
        ``tool.call``)."""
        access, trace, peer = state.access, state.trace, state.peer
        self._outcomes.record(
            lambda: self.enforcer.refuse(
                access, trace=trace, status=status, reason=reason, call=call, peer=peer
            )
        )

    @staticmethod
    def _decided_in(
        call: Call, route: tuple[UpstreamServer, str] | None
    ) -> tuple[UpstreamServer, str] | None:
        """``route`` if the call was decided in that server's ``McpServer`` (a tool,
        moreover, only while :meth:`ListedTools.known`), else None: not forwarded (a
        ``tool.call`` with status 404)."""
        if route is None or not call.decided_in(in_server(route[0].name)):
            return None
        return route

    # -- what the ASGI layer decides -------------------------------------------------

    def call_for(self, method: str, params: Mapping[str, Any]) -> Call | str:
        """The policy question for one guarded request, or why the request is malformed
        (a read's: :func:`~agentiam.adapters.gateway.mcp_calls.read_call`, routed to
        its server; a completion's:
        :func:`~agentiam.adapters.gateway.mcp_calls.completion_call`, routed alike; a
        call's name and arguments:
        :func:`~agentiam.adapters.gateway.mcp_calls.named_call`)."""

        def route(exposed: str) -> tuple[str, str] | None:
            found = self.namespace.route(exposed)
            return (found[0].name, found[1]) if found is not None else None

        if method in READ_METHODS:
            return read_call(method, params, route)
        if method == COMPLETE_METHOD:
            return completion_call(params, route)
        named = named_call(params)
        if isinstance(named, str):
            return named
        name, arguments = named
        server = route(name)
        return tool_call(
            name, arguments, location=self.location, server=server[0] if server else None
        )


class _NotDeclared(Exception):
    """The upstream session a completion would go over does not declare
    ``completions``: it is not sent."""


def _no_completions(server: UpstreamServer) -> str:
    return f"upstream {server.name} does not serve completions (no completions capability)"


def _expose(kind: ListingKind, server: UpstreamServer, item: Any) -> tuple[Listed, Any]:
    prefix, name = server.prefix, server.name
    if kind == "tools":
        exposed = prefix + item.name
        return Listed("tool", exposed, item.name, name), item.model_copy(update={"name": exposed})
    if kind == "resources":
        exposed = prefix + item.uri
        listed = Listed("resource", exposed, item.uri, name)
        return listed, item.model_copy(update={"uri": exposed})
    if kind == "templates":
        exposed = prefix + item.uri_template
        listed = Listed("template", exposed, item.uri_template, name)
        return listed, item.model_copy(update={"uri_template": exposed})
    exposed = prefix + item.name
    listed = Listed("prompt", exposed, item.name, name)
    return listed, item.model_copy(update={"name": exposed})


# -- the ASGI endpoint -----------------------------------------------------------------------


def _jsonrpc_error(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


_JSON: Final = "application/json"
_PARAM_PREFIX: Final = MCP_PARAM_HEADER_PREFIX.lower()


class _SdkRules:
    """What the official SDK's Streamable HTTP app (mcp 2.3) checks of a POSTed
    JSON-RPC request before its handler runs, in the SDK's order and with its own
    functions where it has them: the session manager (an unknown session, another
    principal's, too many sessions), the handshake-era transport and the 2026-07-28
    entry (``Content-Type``, ``Accept``, the JSON-RPC envelope, the routing headers
    ``MCP-Protocol-Version``/``Mcp-Method``/``Mcp-Name`` and ``Mcp-Param-*`` against
    the body), then the server's kernel (the method at the protocol version, its
    params).

    The endpoint asks before a request takes a rate-limit token, is decided or uses an
    approval: a request the SDK will refuse is handed to it undecided, so a refusal
    spends nothing (an approval stays approved for the well-formed retry). Refusing a
    request the SDK would have served is safe (its handler then finds no decision
    and refuses it); what is not foreseen here (a session that ends while its call is
    decided, a call in a session whose handshake is not complete, a later SDK's new
    check) is refused by the SDK after the decision and ends with a failed
    ``tool.call``, as before."""

    def __init__(self, sessions: StreamableHTTPSessionManager, server: Server[Any]) -> None:
        self._sessions = sessions
        self._server = server

    def refusal(
        self, scope: Scope, headers: Headers, body: bytes, message: Any
    ) -> _Foreseen | None:
        """The SDK's refusal of this POST (``body``, parsed as ``message``), or None
        when it will hand it to a handler."""
        # the manager's era routing: the first MCP-Protocol-Version header
        version = headers.get(MCP_PROTOCOL_VERSION_HEADER)
        if version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS:
            return self._modern(scope, headers, message)
        return self._handshake(scope, headers, body, version)

    def _modern(self, scope: Scope, headers: Headers, message: Any) -> _Foreseen | None:
        """``handle_modern_request``, up to the kernel."""
        found = _content_type(headers) or self._accept(scope)
        if found is not None:
            return found
        try:
            request = JSONRPCRequest.model_validate(message)
        except ValidationError:
            return _Foreseen(400, "not one JSON-RPC request")
        duplicated = find_duplicated_routing_header(headers.items())
        if duplicated is not None:
            return _Foreseen(400, f"{duplicated} header appears more than once")
        verdict = classify_inbound_request(message, headers=dict(headers))
        if isinstance(verdict, InboundLadderRejection):
            return _rejection(verdict.code, verdict.message, http=True)
        if request.method == "tools/call":
            mismatch = self._param_headers(headers, request.params or {})
            if mismatch is not None:
                return _rejection(mismatch.code, mismatch.message, http=True)
        return self._kernel(request.method, verdict.protocol_version, request.params, http=True)

    def _handshake(
        self, scope: Scope, headers: Headers, body: bytes, version: str | None
    ) -> _Foreseen | None:
        """The stateful session manager, then ``StreamableHTTPServerTransport``'s POST
        handling, up to the session's kernel."""
        sessions = self._sessions
        session_id = headers.get(MCP_SESSION_ID_HEADER)
        transport = None
        if session_id is not None:
            transport = open_sessions(sessions).get(session_id)
            if transport is None:
                return _Foreseen(404, "no open session has this Mcp-Session-Id")
            user = scope.get("user")
            requestor = authorization_context(user) if isinstance(user, AuthenticatedUser) else None
            if requestor != session_owners(sessions).get(session_id):
                return _Foreseen(404, "the session belongs to another principal")
        elif sessions.max_sessions is not None and (
            len(open_sessions(sessions)) >= sessions.max_sessions
        ):
            return _Foreseen(503, "the MCP transport has too many open sessions")
        found = _content_type(headers)
        if found is not None:
            return found
        if transport is not None:
            idle = transport.idle_scope
            if transport.is_terminated or (idle is not None and idle.cancel_called):
                return _Foreseen(404, "the session has ended")
        found = self._accept(scope)
        if found is not None:
            return found
        parts = headers.get("content-type", "").split(";")[0].split(",")
        if not any(part.strip() == _JSON for part in parts):  # the transport's own check
            return _Foreseen(415, "Content-Type is not application/json")
        try:
            parsed = jsonrpc_message_adapter.validate_python(
                pydantic_core.from_json(body), by_name=False
            )
        except ValueError:  # pydantic's ValidationError is one
            return _Foreseen(400, "not one JSON-RPC message")
        if not isinstance(parsed, JSONRPCRequest):
            return None
        if parsed.method != "initialize" and session_id is None:
            return _Foreseen(400, "no Mcp-Session-Id (the session was not opened)")
        # ``version``: a handshake-era one or none (the session's negotiated version is
        # not read; every handshake-era version validates these methods alike)
        at = version or DEFAULT_NEGOTIATED_VERSION
        return self._kernel(parsed.method, at, parsed.params, http=False)

    def _accept(self, scope: Scope) -> _Foreseen | None:
        """The transport's ``Accept`` check (both media types, as it answers SSE)."""
        has_json, has_sse = check_accept_headers(Request(scope))
        if not has_json or not (self._sessions.json_response or has_sse):
            return _Foreseen(406, "Accept does not name application/json and text/event-stream")
        return None

    def _param_headers(
        self, headers: Headers, params: Mapping[str, Any]
    ) -> InboundLadderRejection | None:
        """The 2026-07-28 ``Mcp-Param-*`` check of a ``tools/call`` against the schema
        the server's ``get_tool_input_schema`` gives (the SDK's ``_mcp_param_rejection``)."""
        lookup = self._server.get_tool_input_schema
        name = params.get("name")
        arguments = params.get("arguments")
        if lookup is None or not isinstance(name, str):
            return None
        if arguments is not None and not isinstance(arguments, Mapping):
            return None
        arguments = arguments or {}
        if not arguments and not any(key.startswith(_PARAM_PREFIX) for key in headers):
            return None
        try:
            schema = lookup(name)
        except Exception:  # the SDK skips the check then
            return None
        if schema is None:
            return None
        return validate_mcp_param_headers(schema, arguments, headers)

    def _kernel(
        self, method: str, version: str, params: Mapping[str, Any] | None, *, http: bool
    ) -> _Foreseen | None:
        """``ServerRunner._on_request`` before the handler: the method at ``version``
        and its params. ``http``: the error's code sets the HTTP status (the
        2026-07-28 entry); else it comes in a 200 stream."""
        if method in mcp_methods.SPEC_CLIENT_METHODS:
            try:
                mcp_methods.validate_client_request(method, version, params)
            except KeyError:
                return _rejection(METHOD_NOT_FOUND, f"{method} is not a method of {version}", http)
            except ValidationError:
                return _rejection(INVALID_PARAMS, f"invalid params for {method}", http)
            except ValueError:  # an unknown version: not ours to foresee
                return None
        if method == "initialize":
            return None
        entry = self._server.get_request_handler(method)
        if entry is None:
            return _rejection(METHOD_NOT_FOUND, f"{method} is not served", http)
        try:
            entry.params_type.model_validate({} if params is None else params, by_name=False)
        except ValidationError:
            return _rejection(INVALID_PARAMS, f"invalid params for {method}", http)
        return None


def _rejection(code: int, message: str, http: bool) -> _Foreseen:
    """A JSON-RPC error the SDK answers: at the status its table gives the code
    (``ERROR_CODE_HTTP_STATUS``, 200 when unmapped), or 200 within a stream."""
    status = ERROR_CODE_HTTP_STATUS.get(code, 200) if http else 200
    return _Foreseen(status, message[:200])


def _content_type(headers: Headers) -> _Foreseen | None:
    """The SDK's ``TransportSecurityMiddleware`` check of a POST's ``Content-Type``."""
    content_type = headers.get("content-type")
    if content_type is not None and content_type.lower().startswith(_JSON):
        return None
    return _Foreseen(400, "Content-Type is not application/json")


class _Counting:
    """Plain ASGI in front of :class:`_Endpoint`: every request to the MCP endpoint is
    counted in ``/metrics`` once answered (:class:`_Tally`, which the endpoint and the
    handlers fill in): its method and outcome, its time (but for a GET the SDK
    serves, an SSE stream that lasts as long as the client keeps it), and its time
    to a decision."""

    def __init__(self, app: ASGIApp, metrics: McpGatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tally = scope[_TALLY_KEY] = _Tally()

        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                tally.answered(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception:
            tally.outcome = tally.outcome or "error"
            raise
        finally:
            ended = time.perf_counter()
            stream = tally.streamed and tally.handed
            self.metrics.count(
                tally.method,
                tally.result(),
                seconds=None if stream else ended - tally.started,
                decision=None if tally.decided is None else tally.decided - tally.started,
            )


class _Endpoint:
    """Plain ASGI in front of the SDK's Streamable HTTP app: Origin, authentication,
    the session's owner, the rate limit, the decision for every guarded request and
    the listings."""

    def __init__(self, gateway: McpGateway, app: ASGIApp, rules: _SdkRules | None = None) -> None:
        """``rules``: what the SDK app in ``app`` checks before its handlers run
        (:func:`build_app`). With them, a request it will refuse takes no rate-limit
        token and is neither decided nor given an approval, and listings are
        prepared for the handlers. None: ``app`` stands in for the SDK and runs no
        handler (tests)."""
        self.gateway = gateway
        self.enforcer = gateway.enforcer
        self.app = app
        self.rules = rules
        parts = urlsplit(gateway.location)
        self.origin = f"{parts.scheme}://{parts.netloc}".lower()
        self.issuer = gateway.runtime.link.issuer
        self.approvals: ApprovalFlow | None = getattr(gateway, "approvals", None)
        # calls to the control plane's approvals API (a held one waits up to a minute)
        # get threads of their own, so they never starve the decisions
        self._approval_threads: anyio.CapacityLimiter | None = None
        # handshake-era sessions being opened, per (client_id, subject): see __call__
        self._opening: dict[Owner, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tally = _tally_of(scope)
        headers = Headers(scope=scope)
        trace = TraceContext.from_traceparent(headers.get("traceparent"))
        origin = headers.get("origin")
        if origin is not None and origin.lower() != self.origin:
            await self._refuse(
                None, trace, 403, "an Origin other than the gateway's", scope, receive, send
            )
            return
        # the budget of refusals naming nobody, and every refusal's event: the
        # connection's peer, never a header (run(): proxy_headers off)
        peer = client_host(scope.get("client"))
        try:
            access = await self.gateway.durably(
                lambda: self.enforcer.authenticate(
                    authorization=headers.getlist("authorization"),
                    dpop=headers.getlist("dpop"),
                    method=scope["method"],
                    url=self.gateway.location,
                    trace=trace,
                    peer=peer,
                )
            )
        except AgentIAMError as exc:
            await _refusal(exc, scope, receive, send)
            return
        body: bytes | None = None
        message: Any = None
        if scope["method"] == "POST":
            body = await _read_body(receive, MAX_BODY_BYTES)
            message = _parse(body) if body is not None else None
        if message is _NON_STANDARD:
            reason = "not JSON: NaN and Infinity are not numbers (RFC 8259 section 6)"
            await self._refuse(access, trace, 400, reason, scope, receive, send, code=PARSE_ERROR)
            return
        tally.method = _method_of(message)
        guarded = self._guarded(message)
        call = guarded.call if guarded is not None else None
        # The SDK binds a handshake-era session to the principal that opened it
        # (client_id, issuer, subject); another agent's request for it answers 404.
        scope["user"] = AuthenticatedUser(
            AccessToken(
                token=access.jti,  # an identifier, never the token itself
                client_id=access.client_id,
                scopes=list(access.scope),
                expires_at=access.expires_at,
                resource=self.gateway.location,
                subject=access.subject,
                claims={"iss": self.issuer},
            )
        )
        scope["auth"] = AuthCredentials(list(access.scope))
        state = _RequestState(access, trace, peer, tally=tally)
        # What takes a token: a well-formed call (a malformed one is refused below),
        # an initialize or a listing (_COUNTED); none of them if the SDK will refuse
        # the request before its handler (then nothing is decided or used either)
        # or if it would open one session too many (refused below).
        charge = (isinstance(call, Call) and not (guarded and guarded.malformed_approval)) or (
            self.rules is not None and guarded is None and _counted(message) is not None
        )
        if charge and self.rules is not None and body is not None:
            state.foreseen = self.rules.refusal(scope, headers, body, message)
            state.checked = True
        owner = _session_owner(access)
        opens = _opens_session(headers)
        # a subscriptions/listen stream the SDK will serve: bounded per agent and in all
        listens = self.rules is not None and state.foreseen is None and _counted(message) == LISTEN
        too_many = self.gateway.streams.refusal(owner) if listens else None
        if (
            state.foreseen is not None
            or too_many is not None
            or (opens and self._sessions_of(owner) >= MAX_SESSIONS_PER_OWNER)
        ):
            charge = False
        # replicas: the proof is recorded in their replay cache and the request's
        # tokens taken from their buckets, in one round trip, before anything is decided
        shared = await self.enforcer.shared_admit(
            access, charge=charge, tool=call.tool if isinstance(call, Call) else None
        )
        if shared.refusal is not None:
            refusal = shared.refusal
            try:
                await self.gateway.durably(
                    lambda: self.enforcer.refuse_shared(access, refusal, trace=trace, peer=peer)
                )
            except ServiceUnavailable as exc:  # not audited: refused all the same, as 503
                refusal = exc
            await _refusal(refusal, scope, receive, send)
            return
        scope[_STATE_KEY] = state
        if too_many is not None:
            status, reason = too_many
            await self._refuse(access, trace, status, reason, scope, receive, send, action=LISTEN)
            return
        serve = partial(self._serve, state, body, message, guarded, shared.limit)
        if listens or scope["method"] == "GET":
            serve = partial(self._streamed, LISTEN if listens else "GET", owner, state, serve)
        if not opens:
            await serve(scope, receive, send)
            return
        # A request without a session id in the handshake era opens a session (kept
        # if it is a successful initialize): at most MAX_SESSIONS_PER_OWNER per agent
        # and subject, counting those being opened, so one agent cannot fill the
        # SDK's table (max_sessions) for every other.
        if self._sessions_of(owner) >= MAX_SESSIONS_PER_OWNER:
            reason = f"more than {MAX_SESSIONS_PER_OWNER} open MCP sessions"
            await self._refuse(access, trace, 429, reason, scope, receive, send)
            return
        self._opening[owner] = self._opening.get(owner, 0) + 1
        try:
            await serve(scope, receive, send)
        finally:
            left = self._opening[owner] - 1
            if left:
                self._opening[owner] = left
            else:
                del self._opening[owner]

    async def _streamed(
        self,
        action: str,
        owner: Owner,
        state: _RequestState,
        serve: Callable[[Scope, Receive, Send], Awaitable[None]],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        """Serve a long-lived stream (a ``subscriptions/listen`` stream, or a GET
        for a handshake-era session's standalone stream) while the gateway's watch
        holds it (:class:`~agentiam.adapters.gateway.mcp_listen.Streams`): when its
        token stops passing, a listen stream ends with a JSON-RPC error as its final
        frame (:meth:`McpGateway._listen`), and a stream still open
        :data:`~agentiam.adapters.gateway.mcp_listen.GRACE_SECONDS` later (a GET, or
        a client that stopped reading) is cut here. Each stream the SDK opens is
        audited first (``mcp.stream.opened``, durable before the client gets a byte
        of it, else 503 and the stream is not served: :meth:`_opened`): a GET whose
        answer starts with 200; a listen whose answer is a 200 event stream that
        does not start with a JSON-RPC error (:func:`_listen_refusal`: its start is
        held back until its first frame is whole, :func:`_first_frame`; a first
        frame larger than :data:`_FIRST_FRAME_BYTES` is refused, 502). A listen the
        SDK answers with an error instead (its handler refused it, in a 200 answer
        or not), and a GET it answers with any status but 200 (an unknown, expired
        or another principal's session: 404; no session: 400; a bad ``Accept``:
        406; a second GET stream of a session: 409), opened no stream: each is
        audited as the refusal it is (``api.request.rejected``, the action
        ``subscriptions/listen`` or ``GET``, :meth:`_stream_refused`), durable
        before the answer too, else 503 in its place. Each stream the gateway ends
        is audited as a refusal (``api.request.rejected``, the status a request
        with that token would get, the action ``subscriptions/listen`` or
        ``GET``)."""
        state.tally.streamed = True
        started = finished = False
        refused = False  # the gateway answered in the SDK's place: nothing more is sent
        # a listen's response start, and a GET's that is not 200, with the body that
        # came after it, until its first frame is whole (_first_frame)
        held: Message | None = None
        pieces: list[Message] = []

        async def watched(message: Message) -> None:
            nonlocal started, finished, refused, held
            if refused:
                return
            if message["type"] == "http.response.start":
                if action == LISTEN or message["status"] != 200:
                    held = message
                    return
                if not await self._opened(action, state, scope, receive, send):
                    refused = started = finished = True  # answered 503 instead
                    stream.forced.cancel()
                    return
                started = True
            elif message["type"] == "http.response.body":
                if held is not None:
                    pieces.append(message)
                    body = b"".join(piece.get("body", b"") for piece in pieces)
                    first = _first_frame(held, body, bool(message.get("more_body")))
                    if first is None:
                        return  # more of the first frame is to come
                    start, held = held, None
                    if not await self._stream_answered(
                        action, state, stream, start, first, scope, receive, send
                    ):
                        refused = started = finished = True  # answered in its place
                        stream.forced.cancel()
                        return
                    await send(start)
                    started = True
                    for piece in pieces[:-1]:
                        await send(piece)
                    pieces.clear()
                if not message.get("more_body"):
                    finished = True
            await send(message)

        with self.gateway.streams.holding(owner, state.access, state.trace, action) as stream:
            if action == LISTEN:
                state.stream = stream
            with stream.forced:
                await serve(scope, receive, watched)
        ended = stream.ended
        if ended is None:
            return
        status, reason, _ = ended
        with anyio.move_on_after(1), contextlib.suppress(OSError, RuntimeError):
            if not started:
                await _send_json(
                    _jsonrpc_error(None, INVALID_REQUEST, reason), status, {}, scope, receive, send
                )
            elif not finished:  # cut: end the chunked body rather than drop it
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        with contextlib.suppress(AgentIAMError):  # the spool: ended all the same
            await self.gateway.durably(
                lambda: self.enforcer.refuse(
                    state.access,
                    peer=state.peer,
                    trace=state.trace,
                    status=status,
                    reason=f"{action} stream ended: {reason}",
                    action=action,
                )
            )

    async def _stream_answered(
        self,
        action: str,
        state: _RequestState,
        stream: Stream,
        start: Message,
        first: bytes,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> bool:
        """The SDK answers a listen (or refuses a GET) with ``start`` and the
        ``first`` frame of its body (:func:`_first_frame`): audit it, durably, before
        either is sent. A stream that opened is one ``mcp.stream.opened``
        (:meth:`_opened`); an answer that opened none is an ``api.request.rejected``
        (:meth:`_stream_refused`), unless the gateway ended the stream first (its end
        is audited, :meth:`_streamed`). A listen whose first frame is larger than
        :data:`_FIRST_FRAME_BYTES` is not checked but refused (fail closed): audited,
        and answered 502 with a JSON-RPC error in place of the SDK's answer. False:
        the SDK's answer is not sent, the gateway answered in its place (that, or
        503 when the event could not be made durable)."""
        if len(first) > _FIRST_FRAME_BYTES:
            reason = (
                f"the first frame of the MCP server's answer is larger than "
                f"{_FIRST_FRAME_BYTES // 1024} KiB: not checked, refused"
            )
            if await self._stream_refused(state, action, 502, reason, scope, receive, send):
                error = _jsonrpc_error(None, INTERNAL_ERROR, reason)
                await _send_json(error, 502, {}, scope, receive, send)
            return False
        refusal = _listen_refusal(start, first)
        if refusal is None:
            return await self._opened(action, state, scope, receive, send)
        if stream.ended is not None:
            return True
        status, reason = refusal
        return await self._stream_refused(state, action, status, reason, scope, receive, send)

    async def _stream_refused(
        self,
        state: _RequestState,
        action: str,
        status: int,
        reason: str,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> bool:
        """Record the refusal of a listen or GET request that opened no stream
        (``api.request.rejected``: the status the client gets, the reason, the action
        ``subscriptions/listen`` or ``GET``), durably, and count it refused; when that
        cannot be done, answer 503 in its place and say so (False)."""
        state.tally.refused_with(status)
        return await self._refusal_recorded(
            state, status, reason, lambda exc: _problem(exc, scope, receive, send), action=action
        )

    async def _refusal_recorded(
        self,
        state: _RequestState,
        status: int,
        reason: str,
        answer: Callable[[AgentIAMError], Awaitable[None]],
        *,
        call: Call | None = None,
        action: str | None = None,
    ) -> bool:
        """Record the refusal of ``state``'s request (``api.request.rejected`` of the
        ``call``, or of the ``action``; :meth:`Enforcer.refuse
        <agentiam.adapters.gateway.enforcer.Enforcer.refuse>`), durably; when that
        cannot be done (the outage bound, the spool), ``answer`` the failure in its
        place, since nothing unlogged is answered, and say so (False)."""
        try:
            await self.gateway.durably(
                lambda: self.enforcer.refuse(
                    state.access,
                    peer=state.peer,
                    trace=state.trace,
                    status=status,
                    reason=reason,
                    call=call,
                    action=action,
                )
            )
        except AgentIAMError as exc:
            await answer(exc)
            return False
        return True

    async def _opened(
        self, action: str, state: _RequestState, scope: Scope, receive: Receive, send: Send
    ) -> bool:
        """Record that the stream ``action`` is opened (``mcp.stream.opened``: the
        agent, the subject, the upstream servers it may hear of, its kind, the
        trace), durably; when that cannot be done, answer 503 in its place (nothing
        unlogged is allowed) and say so (False)."""
        access = state.access
        try:
            await self.gateway.durably(
                lambda: self.enforcer.record_stream_opened(
                    access,
                    trace=state.trace,
                    action=action,
                    stream="listen" if action == LISTEN else "session",
                    servers=list(self.gateway.upstreams),
                )
            )
        except AgentIAMError as exc:
            await _problem(exc, scope, receive, send)
            return False
        return True

    def _sessions_of(self, owner: Owner) -> int:
        """The handshake-era sessions ``owner`` holds or is opening."""
        client_id, subject = owner
        held = sum(
            1
            for o in session_owners(self.gateway.sessions).values()
            if o["client_id"] == client_id and o["subject"] == subject
        )
        return held + self._opening.get(owner, 0)

    async def _serve(
        self,
        state: _RequestState,
        body: bytes | None,
        message: Any,
        guarded: _Guarded | None,
        limit: SharedLimit | None,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        """Decide a POST's guarded request, then hand the request to the SDK."""
        if scope["method"] == "POST":
            if body is None:
                await self._refuse(
                    state.access, state.trace, 413, "body larger than 4 MiB", scope, receive, send
                )
                return
            receive = _replay(body, receive)
            if not await self._decide(state, message, guarded, limit, scope, receive, send):
                return
        pending = state.pending
        state.tally.hand_over()
        if pending is None or not pending.verdict.allowed:
            if not (state.checked or scope["method"] == "GET"):  # a GET's answer: _streamed
                await self._unchecked(state, message, scope, receive, send)
            elif pending is None and state.foreseen is None and _prepared(message):
                # an initialize or a listing the SDK's rules passed, which the SDK may
                # still refuse (a session that ended in between): audited
                await self._unchecked(state, message, scope, receive, send, checked=True)
            else:
                await self.app(scope, receive, send)
            return
        # The SDK may still refuse the request before its handler takes the decision,
        # for a reason _SdkRules did not foresee (a session that ended meanwhile, a
        # handshake not complete): that call ends with a failed tool.call carrying
        # the status the client got.
        status: int | None = None

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            if state.pending is pending:  # never taken: no handler will run it now
                state.pending = None
                if pending.method != COMPLETE_METHOD:
                    self.gateway.record_outcome(state, pending, Outcome.FAILURE, status, None, 0.0)
                else:  # a completion has no tool.call: its refusal is recorded instead
                    reason = "refused by the MCP transport after the decision"
                    self.gateway.record_refusal(state, pending.call, status or 500, reason)
                if status is not None:
                    state.tally.refused_with(status)

    async def _unchecked(
        self,
        state: _RequestState,
        message: Any,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        checked: bool = False,
    ) -> None:
        """Hand the SDK a request its rules were not asked of (:class:`_SdkRules` foresee what takes
        a token: a call, an ``initialize``, a listing, a listen), auditing the SDK's refusal of it:
        a DELETE that ends a handshake-era session (Streamable HTTP, "Session Management"), a POST
        of a notification (say ``notifications/initialized`` or ``notifications/cancelled``), of a
        response, of a request the gateway serves no decision for (``ping``, ``logging/setLevel``,
        ``resources/subscribe``, a method no one serves) or of a body that is not one JSON-RPC
        message, or another HTTP method. Any answer but a 2xx is a refusal (an unknown, expired or
        another principal's session: 404; no ``Mcp-Session-Id``: 400; a bad ``Accept``: 406; a bad
        ``Content-Type``: 400 or 415; not one JSON-RPC message: 400; too many sessions: 503; a
        method the transport does not serve: 405; at 2026-07-28, an unknown method: 404): its start
        is held back until its body's first message. So is a 2xx answer that is a JSON-RPC error
        (JSON-RPC 2.0 section 5.1: the SDK answers a handshake-era request for a method it does not
        serve, -32601, or with params that do not validate, -32602, in a 200, as JSON or as an event
        of an SSE stream): a 2xx answer is held back until :class:`_Judge` finds its JSON-RPC
        response (or its end), within :data:`_FIRST_FRAME_BYTES` (the answers to these requests are
        small). A refusal is audited first (``api.request.rejected``: the status the client gets,
        the SDK's JSON-RPC error by :func:`_refused_because`, the action :func:`_refused_action`),
        durable before the client gets any of it; when that cannot be done the client gets 503 with
        ``Retry-After`` in its place (a POST's a JSON-RPC error, any other a problem), as a refused
        GET (:meth:`_stream_refused`). A 2xx answer that does not reach its JSON-RPC response within
        the bound is not passed on unread (it could be a refusal): it is refused, audited, 502 with
        a JSON-RPC error. Any other 2xx answer (a result, a notification's 202) is passed on as it
        was, once judged.

        ``checked``: an ``initialize`` or a listing the SDK's rules passed, which the
        SDK may still refuse (a session that ended in between): only an answer that
        is not a 2xx is a refusal, audited as above; a 2xx answer (a listing may be
        large; its handler's errors are the gateway's own) is passed on as it
        comes, unheld."""
        action = _refused_action(scope["method"], message)
        request_id = (
            message.get("id") if isinstance(message, dict) and "method" in message else None
        )

        async def answer(exc: AgentIAMError) -> None:
            if scope["method"] == "POST":
                await _failed(exc, request_id, scope, receive, send)
            else:
                await _problem(exc, scope, receive, send)

        async def recorded(status: int, reason: str) -> bool:
            return await self._refusal_recorded(state, status, reason, answer, action=action)

        held: Message | None = None  # the answer's start, until the answer is judged
        judge: _Judge | None = None  # a held 2xx answer's, fed its body as it comes
        pieces: list[Message] = []  # a 2xx answer's body so far, held with its start
        passing = False  # judged and not refused (or refused, recorded): sent as it comes
        refused = False  # answered in its place (502, 503): nothing of the SDK's is sent

        async def release(start: Message, error: tuple[int, str] | None) -> bool:
            """Audit a held 2xx answer that is a JSON-RPC error; False: refused."""
            if error is None:
                return True
            status = int(start["status"])
            state.tally.refused_with(status)
            return await recorded(status, _refused_because(status, error))

        async def unread() -> None:
            """A held 2xx answer past the bound before its JSON-RPC response."""
            reason = (
                f"the MCP server's answer is larger than {_FIRST_FRAME_BYTES // 1024} KiB "
                "before its JSON-RPC response: not checked, refused"
            )
            if await recorded(502, reason):
                error = _jsonrpc_error(request_id, INTERNAL_ERROR, reason)
                await _send_json(error, 502, {}, scope, receive, send)

        async def watched(message: Message) -> None:
            nonlocal held, judge, passing, refused
            if passing:
                await send(message)
            elif refused:
                return
            elif message["type"] == "http.response.start":
                if not 200 <= message["status"] < 300:
                    held = message
                elif checked:
                    passing = True
                    await send(message)
                else:
                    held, judge = message, _Judge(message)
            elif held is None:  # nothing started: not an answer to judge
                await send(message)
            elif not 200 <= held["status"] < 300:  # a refusal: judged on its first message
                start, held = held, None
                status = int(start["status"])
                reason = _refused_because(status, _first_error(start, message.get("body", b"")))
                if not await recorded(status, reason):
                    refused = True
                    return
                passing = True
                await send(start)
                await send(message)
            else:
                assert judge is not None  # held with its start
                pieces.append(message)
                judged = judge.feed(message.get("body", b""), bool(message.get("more_body")))
                if judged is None:
                    return  # its JSON-RPC response is still to come
                start, held = held, None
                if judged.unread:
                    refused = True
                    await unread()
                    return
                if not await release(start, judged.error):
                    refused = True
                    return
                passing = True
                await send(start)
                for piece in pieces:
                    await send(piece)
                pieces.clear()

        await self.app(scope, receive, watched)
        if held is None:
            return
        start, ended = held, {"type": "http.response.body", "body": b"", "more_body": False}
        if not 200 <= start["status"] < 300:  # it ended without a body
            if await recorded(start["status"], _refused_because(start["status"], None)):
                await send(start)
                await send(ended)
            return
        # a 2xx answer that ended before its JSON-RPC response was whole
        judged = (judge or _Judge(start)).feed(b"", False)
        if judged is None or judged.unread:  # None: never, judged whole
            await unread()
        elif await release(start, judged.error):
            await send(start)
            for piece in pieces:
                await send(piece)
            await send(ended)

    def _guarded(self, message: Any) -> _Guarded | None:
        """The guarded request (``_GUARDED``, with an id) a POST's message is, if any.
        Runs before the proof is recorded in the replicas' cache, so it must not
        raise on any JSON the client sent (a method or an approval id of any type)."""
        if not isinstance(message, dict):
            return None
        method = message.get("method")
        if not isinstance(method, str) or method not in _GUARDED:
            return None  # the SDK answers what is not a guarded request
        if "id" not in message:
            return None  # a notification: no handler runs for it
        params = message.get("params")
        params = params if isinstance(params, dict) else {}
        call = self.gateway.call_for(method, params)
        presented = _presented_approval(params) if method == "tools/call" else None
        malformed = (
            self.approvals is not None
            and presented is not None
            and not (isinstance(presented, str) and is_id(presented, "approval"))
        )
        return _Guarded(method, message.get("id"), call, presented, malformed)

    async def _decide(
        self,
        state: _RequestState,
        message: Any,
        guarded: _Guarded | None,
        limit: SharedLimit | None,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> bool:
        """Decide a guarded request; False when it was answered here. ``limit``: the
        replicas' shared rate limit's answer for it (:meth:`Enforcer.shared_admit`)."""
        if isinstance(message, list):
            # JSON-RPC batching was removed in 2025-06-18; a batch would carry calls
            # past this check, so none is accepted.
            await self._refuse(
                state.access,
                state.trace,
                400,
                "a JSON-RPC batch",
                scope,
                receive,
                send,
                action=_refused_action(scope["method"], message),  # POST: no one method
            )
            return False
        if state.foreseen is not None:
            return await self._foreseen(
                state, message, guarded, state.foreseen, scope, receive, send
            )
        if guarded is None:
            method = message.get("method") if isinstance(message, dict) else None
            counted = _counted(message)
            request_id = message.get("id") if isinstance(message, dict) else None
            if self.rules is None:  # a stand-in for the SDK: it runs no handler
                counted = None
            if counted is not None and not await self._within_limit(
                state, counted, limit, request_id, scope, receive, send
            ):
                return False
            if counted == LISTEN:  # past the outage bound: refused as a listing is
                return await self._listing_admitted(state, request_id, scope, receive, send)
            if isinstance(method, str) and method in _LISTINGS:
                if not await self._listing_admitted(state, request_id, scope, receive, send):
                    return False
                if counted is not None:
                    return await self._listing(state, method, request_id, scope, receive, send)
            declaring = isinstance(method, str) and method in _DECLARING
            if declaring and request_id is not None and self.rules is not None:
                await self.gateway.learn_capabilities()  # what the SDK's answer declares
            return True  # the SDK answers what is not guarded (or does not parse)
        method, request_id, call = guarded.method, guarded.request_id, guarded.call
        if isinstance(call, str):  # malformed: audited with its method as the action
            await self._refuse(
                state.access,
                state.trace,
                400,
                call,
                scope,
                receive,
                send,
                request_id,
                action=method,
            )
            return False
        if method == "tools/call" and not await self.gateway.tools.ensure(call.tool):
            await self._unknown_tool(state, call, request_id, scope, receive, send)
            return False
        if method == "tools/call":  # what the gateway derived for the tool, nothing else
            derived = self.gateway.tools.attributes(call.tool)
            if derived:  # most tools have none: no copy of the call for them
                call = replace(call, resource_attributes=derived)
        flow = self.approvals if method == "tools/call" else None
        if flow is not None:
            presented = guarded.presented
            if guarded.malformed_approval:
                reason = f'params._meta["{META_KEY}"] is not one approval id'
                await self._refuse(
                    state.access, state.trace, 400, reason, scope, receive, send, request_id
                )
                return False
            if presented is not None:
                return await self._approval(
                    state,
                    method,
                    call,
                    lambda: flow.retry(
                        state.access,
                        call,
                        presented,
                        trace=state.trace,
                        limit=limit,
                        peer=state.peer,
                    ),
                    request_id,
                    scope,
                    receive,
                    send,
                )
        try:
            verdict = await self.gateway.durably(
                lambda: self.enforcer.decide(
                    state.access, call, trace=state.trace, limit=limit, peer=state.peer
                )
            )
        except AgentIAMError as exc:  # the outage bound, or the spool (503)
            await _failed(exc, request_id, scope, receive, send)
            return False
        if flow is not None and not verdict.allowed and verdict.approvable:
            wait = self.gateway.config.gateway.approvals.wait_seconds
            return await self._approval(
                state,
                method,
                call,
                lambda: flow.open(
                    state.access, call, verdict, trace=state.trace, wait=wait, peer=state.peer
                ),
                request_id,
                scope,
                receive,
                send,
                denied=verdict,
            )
        if method == COMPLETE_METHOD and verdict.allowed:
            refusal = await self.gateway.completion_refusal(call, message["params"])
            if refusal is not None:
                await self._unserved(state, call, request_id, *refusal, scope, receive, send)
                return False
        return await self._decided(state, method, call, verdict, request_id, scope, receive, send)

    async def _unserved(
        self,
        state: _RequestState,
        call: Call,
        request_id: Any,
        status: int,
        code: int,
        reason: str,
        outcome: str,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        """An allowed ``completion/complete`` no upstream serves
        (:meth:`McpGateway.completion_refusal`) is never forwarded: audited as
        ``api.request.rejected`` with ``status`` (its decision stays in the trail; the
        refusal that follows it in the same trace says the agent got nothing),
        counted as ``outcome``, answered with a JSON-RPC error ``code`` in an HTTP
        200, as an unknown tool is (:meth:`_unknown_tool`)."""
        state.tally.outcome = outcome
        if not await self._refusal_recorded(
            state,
            status,
            reason,
            lambda exc: _failed(exc, request_id, scope, receive, send),
            call=call,
        ):
            return
        await _send_json(_jsonrpc_error(request_id, code, reason), 200, {}, scope, receive, send)

    async def _unknown_tool(
        self,
        state: _RequestState,
        call: Call,
        request_id: Any,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        """A ``tools/call`` of a name no upstream lists (after a refresh of its
        server's listing, :meth:`ListedTools.ensure`) is not decided and never
        forwarded: audited as ``api.request.rejected`` with status 404, counted as
        ``not_found``, answered with a JSON-RPC error (``INVALID_PARAMS``, MCP
        "Tools", error handling: unknown tools) in an HTTP 200, since a 404 tells a
        Streamable HTTP client that its session is gone."""
        state.tally.outcome = "not_found"
        reason = f"unknown tool {call.tool!r}: no upstream server lists it"
        if not await self._refusal_recorded(
            state,
            404,
            reason,
            lambda exc: _failed(exc, request_id, scope, receive, send),
            call=call,
        ):
            return
        message = f"unknown tool: {call.tool}"[: MAX_NAME + 16]
        await _send_json(
            _jsonrpc_error(request_id, INVALID_PARAMS, message), 200, {}, scope, receive, send
        )

    async def _foreseen(
        self,
        state: _RequestState,
        message: Any,
        guarded: _Guarded | None,
        foreseen: _Foreseen,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> bool:
        """A request the SDK will refuse before its handler (:class:`_SdkRules`) goes
        on to the SDK undecided, which answers it as it always does: no rate-limit
        token was taken for it and no approval is used. Its refusal is audited first
        (``api.request.rejected`` with the status the SDK will answer; a 503 in its
        place if it cannot be): a call's, as every refusal of a call is; an
        ``initialize``'s or a listing's, with its method as the action; a
        ``subscriptions/listen`` request's, which opens no stream, as a refused
        listen (:meth:`_stream_refused`). ``/metrics`` counts it refused as
        foreseen, whatever the SDK then answers."""
        reason = f"refused by the MCP transport: {foreseen.reason}"
        counted = _counted(message) if guarded is None else None
        if counted == LISTEN:
            return await self._stream_refused(
                state, LISTEN, foreseen.status, reason, scope, receive, send
            )
        call = guarded.call if guarded is not None else None
        if isinstance(call, Call) or counted is not None:
            request_id = guarded.request_id if guarded is not None else message.get("id")
            if not await self._refusal_recorded(
                state,
                foreseen.status,
                reason,
                lambda exc: _failed(exc, request_id, scope, receive, send),
                call=call if isinstance(call, Call) else None,
                action=counted,
            ):
                return False
        state.tally.refused_with(foreseen.status)
        return True

    async def _within_limit(
        self,
        state: _RequestState,
        method: str,
        limit: SharedLimit | None,
        request_id: Any,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> bool:
        """An ``initialize`` or a listing takes a token from the agent's bucket
        (:meth:`Enforcer.admit_request`); over the limit it is refused as a call is:
        HTTP 429 with ``Retry-After`` and a JSON-RPC error, audited first."""
        try:
            refused = await self.gateway.durably(
                lambda: self.enforcer.admit_request(
                    state.access, method, trace=state.trace, limit=limit, peer=state.peer
                )
            )
        except AgentIAMError as exc:
            await _failed(exc, request_id, scope, receive, send)
            return False
        if refused is None:
            return True
        await _send_json(
            _jsonrpc_error(request_id, INVALID_REQUEST, refused.reason),
            refused.status,
            dict(refused.headers),
            scope,
            receive,
            send,
        )
        return False

    async def _listing(
        self,
        state: _RequestState,
        method: str,
        request_id: Any,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> bool:
        """Prepare the listing for the handler (:meth:`McpGateway.listing`): its
        ``mcp.list`` event is durable before the SDK answers. One that cannot be
        recorded (the spool full or failing), or decided (past the outage bound), is
        refused as a call is: HTTP 503 with ``Retry-After``, a JSON-RPC error, no
        data; audited when the spool can still take the refusal."""
        try:
            shown = await self.gateway.listing(state, method)
        except AgentIAMError as exc:
            failure = exc
            with contextlib.suppress(AgentIAMError):  # the spool: refused all the same
                await self.gateway.durably(
                    lambda: self.enforcer.refuse(
                        state.access,
                        peer=state.peer,
                        trace=state.trace,
                        status=failure.status,
                        reason=failure.detail,
                        action=method,
                    )
                )
            await _failed(failure, request_id, scope, receive, send)
            return False
        state.listing = (method, shown)
        return True

    async def _listing_admitted(
        self, state: _RequestState, request_id: Any, scope: Scope, receive: Receive, send: Send
    ) -> bool:
        """Past the outage bound a listing is refused as every call is: 503, audited
        (``api.request.rejected``) before the answer."""
        try:
            self.gateway.runtime.link.authorizer()
            return True
        except ServiceUnavailable as exc:
            failure: AgentIAMError = exc
        reason = failure.detail
        try:
            await self.gateway.durably(
                lambda: self.enforcer.refuse(
                    state.access, trace=state.trace, status=503, reason=reason, peer=state.peer
                )
            )
        except AgentIAMError as exc:  # the spool: refused all the same
            failure = exc
        await _failed(failure, request_id, scope, receive, send)
        return False

    async def _approval(
        self,
        state: _RequestState,
        method: str,
        call: Call,
        step: Callable[[], ApprovalOutcome],
        request_id: Any,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        denied: Verdict | None = None,
    ) -> bool:
        """Run one approval step (:mod:`~agentiam.adapters.gateway.approval_flow`) on
        a worker thread of its own. A consumed approval gives the call its approved
        decision; otherwise the handler answers the pending (or refused) tool result."""
        if self._approval_threads is None:
            self._approval_threads = anyio.CapacityLimiter(_APPROVAL_THREADS)
        try:
            outcome = await anyio.to_thread.run_sync(step, limiter=self._approval_threads)
        except AgentIAMError as exc:  # the control plane cannot be asked (503)
            await _failed(exc, request_id, scope, receive, send)
            return False
        if outcome.verdict is not None:
            return await self._decided(
                state, method, call, outcome.verdict, request_id, scope, receive, send
            )
        reason = f"approval {outcome.approval_id} is {outcome.state}"
        waiting = Verdict(
            False,
            403,
            "insufficient_scope",
            reason,
            decision_id=denied.decision_id if denied is not None else None,
        )
        state.pending = _Pending(method, call, waiting, outcome)
        return True

    async def _decided(
        self,
        state: _RequestState,
        method: str,
        call: Call,
        verdict: Verdict,
        request_id: Any,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> bool:
        """Hand a decided call on to the handler; a refusal made before policy is
        answered here."""
        if not verdict.allowed and verdict.decision_id is None:
            # Refused before policy: the rate limit (429) or the token's task scope
            # (403 insufficient_scope: a token with a wider scope could pass).
            await _send_json(
                _jsonrpc_error(request_id, INVALID_REQUEST, verdict.reason),
                verdict.status,
                dict(verdict.headers),
                scope,
                receive,
                send,
            )
            return False
        state.pending = _Pending(method, call, verdict)
        return True

    async def _refuse(
        self,
        access: VerifiedAccess | None,
        trace: TraceContext,
        status: int,
        reason: str,
        scope: Scope,
        receive: Receive,
        send: Send,
        request_id: Any = None,
        code: int | None = None,
        action: str | None = None,
    ) -> None:
        # before authentication (access None): the request's token names its agent if
        # it verifies; else the refusal is within the budget of refusals naming nobody
        headers = Headers(scope=scope) if access is None else None
        try:
            await self.gateway.durably(
                lambda: self.enforcer.refuse(
                    access,
                    trace=trace,
                    status=status,
                    reason=reason,
                    action=action,
                    peer=client_host(scope.get("client")),
                    authorization=headers.getlist("authorization") if headers else (),
                    dpop=headers.getlist("dpop") if headers else (),
                )
            )
        except AgentIAMError as exc:
            await _problem(exc, scope, receive, send)
            return
        if code is None:
            code = INVALID_PARAMS if request_id is not None else INVALID_REQUEST
        await _send_json(_jsonrpc_error(request_id, code, reason), status, {}, scope, receive, send)


_SSE: Final = "text/event-stream"
# the most of an answer the gateway holds back and reads for a JSON-RPC error (a listen
# answer's first frame, the 2xx answer to a request it did not check, up to its
# JSON-RPC response); a larger one is refused unread
_FIRST_FRAME_BYTES: Final = 64 * 1024
# the end of an SSE event: an empty line (a line ends with CRLF, LF or CR: WHATWG HTML,
# "Server-sent events", "Parsing an event stream")
_EVENT_END: Final = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")


def _event_stream(start: Message) -> bool:
    """Whether a response that began with ``start`` is an SSE stream."""
    headers = Headers(raw=start.get("headers") or [])
    return headers.get("content-type", "").lower().startswith(_SSE)


def _first_frame(start: Message, body: bytes, more: bool) -> bytes | None:
    """The first frame of the SDK's answer that began with ``start``, from the
    ``body`` sent so far (``more``: more is to come), or None while it is not whole.

    Of a 200 event stream (a listen's stream) it is the first event, up to and with
    the empty line that ends it, however many body messages it came in. One that has
    not ended within :data:`_FIRST_FRAME_BYTES` is given as those bytes and one more
    (longer than the bound: the caller refuses it unread); one the answer ended
    before its end is what came. Of any other answer (a refusal, whatever its body
    says) it is the first body message, cut to the bound."""
    if int(start["status"]) != 200 or not _event_stream(start):
        return body[:_FIRST_FRAME_BYTES]
    end = _EVENT_END.search(body, 0, _FIRST_FRAME_BYTES)
    if end is not None:
        return body[: end.end()]
    if len(body) > _FIRST_FRAME_BYTES:
        return body[: _FIRST_FRAME_BYTES + 1]
    return body if not more else None


def _listen_refusal(start: Message, first: bytes) -> tuple[int, str] | None:
    """Whether the SDK's answer to a ``subscriptions/listen`` request (its response
    ``start`` and ``first`` body frame) opened a stream: None when it did, else the
    HTTP status the client gets and why, for the audit trail.

    A listen stream is an SSE response (``text/event-stream``, status 200) whose
    first event is the acknowledgement (SEP-2575: "the ack is the first frame").
    The SDK answers a handler that raised before it acknowledged (the SDK's own bound
    on subscriptions, a stream the gateway ended before it began) with the
    JSON-RPC error alone: as ``application/json`` at the status its table gives the
    code (200 when it gives none: ``ERROR_CODE_HTTP_STATUS``), or as the first event
    of a 200 stream. Either opened nothing. An event stream whose first frame is not
    an error is taken as opened (over-recording an opening is safe; missing one is
    not). The reason names the JSON-RPC error's code and (truncated) message, which
    the SDK or the gateway wrote, never the request's params. ``first`` is the
    frame :func:`_first_frame` gives, at most :data:`_FIRST_FRAME_BYTES` long (a
    longer one is refused unread, :meth:`_Endpoint._stream_answered`). A GET's
    answer other than 200 is classified here too: refused, whatever it says."""
    status = int(start["status"])
    error = _first_error(start, first)
    if status == 200 and _event_stream(start) and error is None:
        return None
    return status, _refused_because(status, error)


def _first_error(start: Message, first: bytes) -> tuple[int, str] | None:
    """The JSON-RPC error (:func:`_jsonrpc_error_of`) the SDK's answer that began
    with ``start`` gives in its ``first`` frame (:func:`_first_frame`): the data of
    its first event if it is an event stream (SSE: its ``data:`` lines, joined by a
    line feed), else the body; None when it gives none."""
    return _first_reply(start, first)[1]


def _first_reply(start: Message, first: bytes) -> tuple[bool, tuple[int, str] | None]:
    """Whether the ``first`` frame of the SDK's answer that began with ``start`` is a
    JSON-RPC response (a result or an error: :func:`_jsonrpc_error_of`), and its
    error (:func:`_first_error`)."""
    payload = first[:_FIRST_FRAME_BYTES]
    if _event_stream(start):
        event = payload.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n\n", 1)[0]
        lines = [line[5:] for line in event.split(b"\n") if line.startswith(b"data:")]
        payload = b"\n".join(line[1:] if line.startswith(b" ") else line for line in lines)
    return _jsonrpc_reply_of(payload)


@dataclass(frozen=True, slots=True)
class _Judged:
    """What a 2xx answer to a request the gateway did not check says
    (:func:`_judged`): the JSON-RPC error it gives (a refusal), if any; ``unread``:
    it went past :data:`_FIRST_FRAME_BYTES` before its JSON-RPC response, so it was
    not read (refused)."""

    error: tuple[int, str] | None = None
    unread: bool = False


def _judged(start: Message, body: bytes, more: bool) -> _Judged | None:
    """Whether a 2xx answer to a request the gateway did not check
    (:meth:`_Endpoint._unchecked`), which began with ``start``, is a refusal, from
    the ``body`` sent so far (``more``: more is to come); None while that is not
    known: :class:`_Judge`, given the body at once."""
    return _Judge(start).feed(body, more)


class _Judge:
    """Judges a 2xx answer to a request the gateway did not check
    (:meth:`_Endpoint._unchecked`), which began with ``start``, as its body comes:
    :meth:`feed` each body message; it says whether the answer is a refusal (a
    :class:`_Judged`) once that is known, else None.

    An answer as JSON is judged whole: the error of its one JSON-RPC message, if it
    is one (JSON-RPC 2.0 section 5). An SSE stream (Streamable HTTP, "Sending
    Messages to the Server": the server may answer a POST with one, its JSON-RPC
    response as one of its events, after notifications of its own) is judged at
    its first event that is a JSON-RPC response (:func:`_first_reply`; a result:
    no refusal), or at its end without one (its error, if its last event, unended,
    has one). An answer that gets past :data:`_FIRST_FRAME_BYTES` before it can be
    judged is ``unread``: what comes after could be an error, so it is not passed on
    unchecked.

    Incremental, so that an answer of many small pieces (keep-alive comments,
    notifications) costs time linear in its size, not quadratic, in the event loop:
    it keeps the body (up to the bound) in one buffer, searches only the bytes not
    searched yet for an event's end (WHATWG HTML, "Server-sent events": an empty
    line; from three bytes back, as an end may straddle two pieces) and parses each
    event once. ``searched`` and ``parsed`` count the bytes searched and the events
    parsed."""

    __slots__ = ("_body", "_events", "_offset", "_size", "_start", "parsed", "searched")

    def __init__(self, start: Message) -> None:
        self._start = start
        self._events = _event_stream(start)
        self._body = bytearray()  # the body so far, up to the bound and one byte
        self._size = 0  # the body's length so far
        self._offset = 0  # where the first event not yet parsed begins
        self.searched = 0
        self.parsed = 0

    def feed(self, piece: bytes, more: bool) -> _Judged | None:
        """The next body message's ``piece`` (``more``: more is to come)."""
        before = len(self._body)
        self._size += len(piece)
        self._body += piece[: _FIRST_FRAME_BYTES + 1 - before]
        body = self._body
        if not self._events:
            if self._size > _FIRST_FRAME_BYTES:
                return _Judged(unread=True)
            return None if more else _Judged(_first_error(self._start, bytes(body)))
        begin = max(self._offset, before - 3)
        self.searched += max(0, min(len(body), _FIRST_FRAME_BYTES) - begin)
        for end in _EVENT_END.finditer(body, begin, _FIRST_FRAME_BYTES):
            if more and end.end() == len(body) and body.endswith(b"\r"):
                break  # a CR that a LF to come may join: the end is not known yet
            self.parsed += 1
            replied, error = _first_reply(self._start, bytes(body[self._offset : end.end()]))
            if replied:
                return _Judged(error)
            self._offset = end.end()
        if self._size > _FIRST_FRAME_BYTES:
            return _Judged(unread=True)
        if more:
            return None
        return _Judged(_first_error(self._start, bytes(body[self._offset :])))


def _refused_because(status: int, error: tuple[int, str] | None) -> str:
    """The reason an audited refusal of the SDK's (its answer's HTTP ``status`` and
    JSON-RPC ``error``, :func:`_first_error`) gives."""
    if error is not None:
        code, message = error
        return f"refused by the MCP server: {message} (JSON-RPC error {code})"
    return f"refused by the MCP server: HTTP {status} without a stream"


_ACTION_RE: Final = re.compile(r"[\x21-\x7e]{1,128}")


def _refused_action(http_method: str, message: Any) -> str:
    """The action the SDK's refusal of a request the gateway did not check is audited
    with (:meth:`_Endpoint._unchecked`): a POST's JSON-RPC method when its message
    names one, else the HTTP method. The client writes either, so only a name of
    printable ASCII without spaces, at most 128 characters, is taken; else ``POST``
    (or ``other`` for an HTTP method that is not)."""
    named = message.get("method") if http_method == "POST" and isinstance(message, dict) else None
    if isinstance(named, str) and _ACTION_RE.fullmatch(named):
        return named
    return http_method if _ACTION_RE.fullmatch(http_method) else "other"


def _jsonrpc_error_of(payload: bytes) -> tuple[int, str] | None:
    """The ``error`` (code, message: its first line, up to 200 characters) of a
    JSON-RPC error response in ``payload``, or None when it is not one. Only the
    first line: the SDK's message for a body that does not validate goes on with
    pydantic's errors, which quote the request (``input_value=…``)."""
    return _jsonrpc_reply_of(payload)[1]


def _jsonrpc_reply_of(payload: bytes) -> tuple[bool, tuple[int, str] | None]:
    """Whether ``payload`` is a JSON-RPC response (an object with a ``result``, or
    an ``error`` object: JSON-RPC 2.0 section 5), and its error
    (:func:`_jsonrpc_error_of`)."""
    try:
        message = json.loads(payload) if payload else None
    except (ValueError, RecursionError):
        return False, None
    if not isinstance(message, dict):
        return False, None
    error = message.get("error")
    if not isinstance(error, dict):
        return "result" in message, None
    code = error.get("code")
    text = error.get("message")
    return True, (
        code if isinstance(code, int) and not isinstance(code, bool) else 0,
        text.split("\n", 1)[0].split("\r", 1)[0][:200] if isinstance(text, str) else "",
    )


def _counted(message: Any) -> str | None:
    """The method of a request (with an id) that is not a call but takes a token from
    the agent's bucket (``_COUNTED``), or None."""
    if not isinstance(message, dict) or "id" not in message:
        return None
    method = message.get("method")
    return method if isinstance(method, str) and method in _COUNTED else None


def _prepared(message: Any) -> bool:
    """Whether a request is an ``initialize`` or a listing (``_COUNTED``, but a
    ``subscriptions/listen``, whose answer :meth:`_Endpoint._streamed` audits)."""
    counted = _counted(message)
    return counted is not None and counted != LISTEN


def _opens_session(headers: Headers) -> bool:
    """Whether the SDK opens a handshake-era session for this request: no
    ``Mcp-Session-Id``, and a protocol version of that era (or none)."""
    if MCP_SESSION_ID_HEADER in headers:
        return False
    version = headers.get(MCP_PROTOCOL_VERSION_HEADER)
    return version is None or version in HANDSHAKE_PROTOCOL_VERSIONS


async def _failed(
    exc: AgentIAMError, request_id: Any, scope: Scope, receive: Receive, send: Send
) -> None:
    """A call that could not be decided or recorded: a JSON-RPC error at the error's
    HTTP status (503: the outage bound, the spool, the control plane's approvals API).
    The error's hint (what to do next: the ``hint`` the HTTP gateway's RFC 9457
    problem carries) is the JSON-RPC error's ``data.hint`` (JSON-RPC 2.0 section 5.1:
    ``data`` holds additional information). The gateway's hints are fixed texts that
    name no path, host or secret (a full ``rejected.jsonl``'s names the command with
    ``--config FILE``, not the file)."""
    body = _jsonrpc_error(request_id, INTERNAL_ERROR, exc.detail)
    if exc.hint:
        error = body["error"]
        error["data"] = {**error.get("data", {}), "hint": exc.hint}
    await _send_json(
        body,
        exc.status,
        {"Retry-After": "5"} if exc.status == 503 else {},
        scope,
        receive,
        send,
    )


def _presented_approval(params: Mapping[str, Any]) -> Any:
    """What a ``tools/call`` names in ``params._meta[META_KEY]`` (the approval to use),
    or None."""
    meta = params.get("_meta")
    return meta.get(META_KEY) if isinstance(meta, dict) else None


async def _send_json(
    body: dict[str, Any],
    status: int,
    headers: Mapping[str, str],
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    await JSONResponse(body, status_code=status, headers=dict(headers))(scope, receive, send)


async def _problem(exc: AgentIAMError, scope: Scope, receive: Receive, send: Send) -> None:
    await JSONResponse(
        exc.to_problem(),
        status_code=exc.status,
        headers={"Retry-After": "5"} if exc.status == 503 else None,
        media_type="application/problem+json",
    )(scope, receive, send)


async def _refusal(exc: AgentIAMError, scope: Scope, receive: Receive, send: Send) -> None:
    """An authentication refusal: an OAuth error as OAuth JSON with its challenge
    headers (RFC 6750 section 3, RFC 9449 section 7.1), anything else as a problem."""
    if isinstance(exc, OAuthError):
        response = JSONResponse(exc.to_oauth(), status_code=exc.oauth_status, headers=exc.headers)
        await response(scope, receive, send)
    else:
        await _problem(exc, scope, receive, send)


class _NotANumber(ValueError):
    """A body with ``NaN``, ``Infinity`` or ``-Infinity``."""


def _no_constant(name: str) -> Any:
    raise _NotANumber(name)


# what _parse returns for a body that is JSON but for NaN or Infinity (refused)
_NON_STANDARD: Final = object()


def _parse(body: bytes) -> Any:
    """The JSON-RPC message of a POST body; None when it does not parse (the SDK
    answers the parse error); :data:`_NON_STANDARD` when it would parse but for
    ``NaN`` or ``Infinity``. RFC 8259 section 6 has no such numbers, and Python's
    decoder and the SDK's (pydantic) both accept them, but the SDK's client sends a
    NaN upstream as ``null``: policy would decide on a value the upstream never
    gets, so the gateway refuses such a body (:meth:`_Endpoint.__call__`)."""
    try:
        return json.loads(body, parse_constant=_no_constant)
    except _NotANumber:
        return _NON_STANDARD
    except (ValueError, RecursionError):
        return None


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None past ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# -- the application -------------------------------------------------------------------------


def build_app(config: McpGatewayConfig, runtime: GatewayRuntime) -> Starlette:
    """The gateway's ASGI application: the MCP endpoint at the path of
    ``public_url``, its RFC 9728 metadata (path-specific and at the root),
    ``/healthz`` and ``/metrics``. Closing the app's lifespan closes ``runtime``."""
    gateway = McpGateway(config, runtime)
    rules = _SdkRules(gateway.sessions, gateway.server)
    endpoint: ASGIApp = _Counting(
        _Endpoint(gateway, StreamableHTTPASGIApp(gateway.sessions), rules), gateway.metrics
    )
    if runtime.nonce_header is not None:  # RFC 9449 section 9: a nonce on every answer
        endpoint = WithNonce(endpoint, runtime.nonce_header)
    metadata = runtime.protected_resource_metadata()

    async def resource_metadata(request: Request) -> Response:
        return JSONResponse(metadata, headers={"Cache-Control": "public, max-age=300"})

    async def healthz(request: Request) -> Response:
        """The runtime's health (as the HTTP gateway's: the control plane's contact,
        the spool, its set-aside events) with ``status``; 503 past the outage bound."""
        health = runtime.health()
        ok = bool(health["deciding"])
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", **health},
            status_code=200 if ok else 503,
        )

    async def metrics(request: Request) -> Response:
        """Prometheus text (adapters/gateway/metrics.py), as the HTTP gateway's
        ``/metrics``: no authentication, made on a worker thread (it reads the
        spool's health)."""
        body = await anyio.to_thread.run_sync(gateway.metrics.exposition)
        return Response(body, media_type=CONTENT_TYPE)

    path = config.endpoint_path
    well_known = _WELL_KNOWN + "/oauth-protected-resource"
    routes = [
        Route(path, endpoint=endpoint),
        Route(well_known + (path if path != "/" else ""), resource_metadata, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    if path != "/":
        routes.append(Route(well_known, resource_metadata, methods=["GET"]))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runtime.start_shipping()
        try:
            async with gateway.running():
                yield
        finally:
            gateway.flush_outcomes()  # after the calls still in flight have ended
            await runtime.stop()
            runtime.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.gateway = gateway
    return app


def run(config: McpGatewayConfig) -> None:
    """Connect to the control plane, then serve until interrupted (``agentiam gateway
    mcp --config FILE``)."""
    import uvicorn

    try:
        runtime = GatewayRuntime.start(
            config.gateway,
            credentials=[
                (f"servers[{i}].credential", s.credential, s.url)
                for i, s in enumerate(config.servers)
                if s.credential is not None
            ],
        )
    except (httpx.HTTPError, OSError) as exc:
        raise ServiceUnavailable(
            f"cannot reach the control plane at {config.gateway.control_plane.url} "
            f"({type(exc).__name__})",
            hint="Start it (agentiam serve) or fix control_plane.url; the gateway needs the "
            "keys, revocations and policy bundle at start.",
        ) from None
    app = build_app(config, runtime)
    gw = config.gateway
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
        for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "mcp"):  # a line per request
            logging.getLogger(noisy).setLevel(logging.WARNING)
    log.info(
        "MCP gateway %s: %s (listening on %s:%s), upstream servers: %s",
        gw.name,
        gw.public_url,
        gw.host,
        gw.port,
        ", ".join(f"{s.name} ({s.prefix or 'no prefix'})" for s in config.servers),
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=gw.host,
            port=gw.port,
            log_level="info",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=5,
            http=ListenerProtocol,  # the request head bounded in size and time
            ws="none",  # an Upgrade request is plain HTTP, authenticated and audited
            proxy_headers=False,  # no client header says who the client is
            **gw.server_options(),  # TLS on the listener when listen.tls is set
        )
    )
    server.run()
