"""Admin API authentication (plain ASGI, before anything reads the request) and role
checks (a FastAPI dependency per route).

Authentication runs as middleware so an unauthenticated caller never reaches body
parsing or validation: every non-public path answers 401 to a missing, malformed,
unknown, expired or revoked key, one opaque answer for all, whatever the body holds.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated

import anyio.to_thread
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers

from agentiam.adapters.http.deps import SOURCE, ApiDependencies
from agentiam.adapters.http.middleware import ASGIApp, Receive, Scope, Send
from agentiam.adapters.http.oauth import PUBLIC_OAUTH_PATHS
from agentiam.adapters.http.problems import audit_rejection, problem_response
from agentiam.core.access.admin_keys import KEY_PREFIX, AdminKey, Permission, permissions_of
from agentiam.core.audit.events import TraceContext
from agentiam.errors import AgentIAMError, AuthenticationRequired, Forbidden, ServiceUnavailable
from agentiam.services.admin_keys import actor_for
from agentiam.services.context import CallContext

__all__ = ["PUBLIC_PATHS", "AdminAuthentication", "container_of", "is_public", "require"]

# Health, API metadata and the OAuth endpoints whose clients authenticate themselves
# (private_key_jwt) or that only publish public data (metadata, JWKS).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/docs"}) | PUBLIC_OAUTH_PATHS
_PUBLIC_PREFIXES = ("/docs/static/",)
_MAX_AUTH_HEADER = 256
# Where a human may decide with their own bearer token instead of an admin key: the
# route authenticates that token itself (services/approvals.py ApproverTokens).
_APPROVER_PATH = re.compile(r"^/v1/approvals/[A-Za-z0-9_]{1,64}/(approve|deny)$")
_MAX_APPROVER_TOKEN = 16 * 1024

# Declares the scheme in the OpenAPI document; the middleware does the checking.
_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="adminKey",
    bearerFormat="aiam_<prefix>_<secret>",
    description="An admin API key (`agentiam admin-keys create`).",
)


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(_PUBLIC_PREFIXES)


def container_of(request: Request) -> ApiDependencies:
    return request.app.state.container  # type: ignore[no-any-return]


class AdminAuthentication:
    """Authenticate every request to a non-public path before the app sees it.

    On success the key, its audit actor and the W3C trace are put in the request state
    (``scope["state"]``) for the route's permission check.
    """

    def __init__(self, app: ASGIApp, deps: ApiDependencies) -> None:
        self.app = app
        self.deps = deps

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        trace = TraceContext.from_traceparent(headers.get("traceparent"))
        state = scope.setdefault("state", {})
        state["trace"] = trace
        approver = self._approver_token(scope, headers.get("authorization"))
        if approver is not None:
            state["approver_token"] = approver  # the route authenticates it
            await self.app(scope, receive, send)
            return
        try:
            key = await anyio.to_thread.run_sync(self._authenticate, headers.get("authorization"))
        except AgentIAMError as exc:
            error = exc
        except Exception:
            error = ServiceUnavailable(
                "authentication is unavailable; the call was refused", hint="Retry later."
            )
        else:
            state["admin_key"] = key
            state["actor"] = actor_for(key)
            await self.app(scope, receive, send)
            return
        await anyio.to_thread.run_sync(
            lambda: audit_rejection(
                self.deps,
                actor=None,
                trace=trace,
                action=f"{scope['method']} {scope['path'][:200]}",
                error=error,
            )
        )
        await problem_response(error, scope["path"][:200])(scope, receive, send)

    @staticmethod
    def _approver_token(scope: Scope, header: str | None) -> str | None:
        """A bearer token that is not an admin key, on an approve/deny path."""
        if scope["method"] != "POST" or not _APPROVER_PATH.match(scope["path"]):
            return None
        scheme, _, token = (header or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > _MAX_APPROVER_TOKEN:
            return None
        return None if token.startswith(KEY_PREFIX + "_") else token

    def _authenticate(self, header: str | None) -> AdminKey:
        header = header or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token or len(header) > _MAX_AUTH_HEADER:
            raise AuthenticationRequired("an admin API key is required")
        return self.deps.admin_keys.authenticate(token.strip())


def require(permission: Permission) -> Callable[..., CallContext]:
    """A dependency that checks the authenticated key's role grants ``permission``
    (403 otherwise) and returns the call context for the use case."""

    def dependency(
        request: Request,
        _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> CallContext:
        key: AdminKey | None = getattr(request.state, "admin_key", None)
        if key is None:  # a route outside the middleware's reach: refuse, never allow
            raise AuthenticationRequired("an admin API key is required")
        if permission not in permissions_of(key.role):
            raise Forbidden(
                f"role {key.role.value} may not {permission.value}",
                hint="Use a key with a role that grants this permission.",
            )
        return CallContext(actor=request.state.actor, source=SOURCE, trace=request.state.trace)

    return dependency
