"""Admin API authentication and role checks, as FastAPI dependencies."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request

from agentiam.adapters.http.deps import ApiDependencies
from agentiam.core.access.admin_keys import Permission, permissions_of
from agentiam.core.audit.events import TraceContext
from agentiam.errors import AuthenticationRequired, Forbidden
from agentiam.services.admin_keys import actor_for
from agentiam.services.context import CallContext

__all__ = ["SOURCE", "container_of", "require"]

SOURCE = "control-plane/admin-api"
_MAX_AUTH_HEADER = 256


def container_of(request: Request) -> ApiDependencies:
    return request.app.state.container  # type: ignore[no-any-return]


def require(permission: Permission) -> Callable[[Request], CallContext]:
    """A dependency that authenticates the admin key and checks ``permission``.

    401 for a missing, malformed, unknown, expired or revoked key (one opaque answer);
    403 when the key's role lacks the permission.
    """

    def dependency(request: Request) -> CallContext:
        trace = TraceContext.from_traceparent(request.headers.get("traceparent"))
        request.state.trace = trace
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token or len(header) > _MAX_AUTH_HEADER:
            raise AuthenticationRequired("an admin API key is required")
        key = container_of(request).admin_keys.authenticate(token.strip())
        actor = actor_for(key)
        request.state.actor = actor
        if permission not in permissions_of(key.role):
            raise Forbidden(
                f"role {key.role.value} may not {permission.value}",
                hint="Use a key with a role that grants this permission.",
            )
        return CallContext(actor=actor, source=SOURCE, trace=trace)

    return dependency
