"""The MCP SDK's private session table, read in one place.

The MCP gateway needs three facts the SDK's ``StreamableHTTPSessionManager`` keeps to
itself: which handshake-era sessions are open (the ``agentiam_mcp_gateway_sessions``
gauge, and :class:`~agentiam.adapters.gateway.mcp_proxy._SdkRules`, which foresees
the manager's "unknown session" and "too many sessions" refusals), and who owns each
(the same rules, and the per-principal session bound), and the connection a request
came over (to tell a session later that the tool list changed: a request's
``ServerSession`` lives no longer than the request). The SDK has no public API for
these, so these functions read its private attributes, as of **mcp 2.3.0**
(``mcp/server/streamable_http_manager.py``, ``mcp/server/session.py``):
``_server_instances`` (session id to its ``StreamableHTTPServerTransport``),
``_session_owners`` (session id to the ``AuthorizationContext`` that opened it) and
``ServerSession._connection``.

They return the SDK's own dicts (live, not copies): read them, never change them. A
later SDK that renames or drops either attribute makes these raise
:class:`RuntimeError` saying so, rather than the gateway miscounting or misjudging
sessions; ``tests/unit/test_mcp_sdk_state.py`` checks both against the installed SDK.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from mcp.server.auth.middleware.bearer_auth import AuthorizationContext
from mcp.server.connection import Connection
from mcp.server.session import ServerSession
from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

__all__ = ["SDK_VERSION", "connection_of", "open_sessions", "session_owners"]

SDK_VERSION: Final = "2.3.0"
"""The ``mcp`` release whose private attributes this module mirrors."""


def _private(manager: StreamableHTTPSessionManager, name: str) -> Any:
    value = getattr(manager, name, None)
    if not isinstance(value, dict):
        raise RuntimeError(
            f"the MCP SDK's StreamableHTTPSessionManager has no {name} dict: this "
            f"gateway reads it as of mcp {SDK_VERSION} (adapters/gateway/mcp_sdk_state.py)"
        )
    return value


def open_sessions(
    manager: StreamableHTTPSessionManager,
) -> Mapping[str, StreamableHTTPServerTransport]:
    """The manager's open handshake-era sessions: session id to its transport (the
    SDK's private ``_server_instances``, live)."""
    sessions: Mapping[str, StreamableHTTPServerTransport] = _private(manager, "_server_instances")
    return sessions


def session_owners(manager: StreamableHTTPSessionManager) -> Mapping[str, AuthorizationContext]:
    """Who opened each session: session id to its ``AuthorizationContext`` (the SDK's
    private ``_session_owners``, live; sessions opened without a principal are absent)."""
    owners: Mapping[str, AuthorizationContext] = _private(manager, "_session_owners")
    return owners


def connection_of(session: ServerSession) -> Connection:
    """The connection a request's ``ServerSession`` belongs to (the SDK's private
    ``_connection``): its ``notify`` sends on the session's standalone stream."""
    connection = getattr(session, "_connection", None)
    if not isinstance(connection, Connection):
        raise RuntimeError(
            "the MCP SDK's ServerSession has no _connection: this gateway reads it as of "
            f"mcp {SDK_VERSION} (adapters/gateway/mcp_sdk_state.py)"
        )
    return connection
