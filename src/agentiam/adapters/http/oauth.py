"""The OAuth endpoints: authorization-server metadata (RFC 8414), JWKS, token
(RFC 6749 / RFC 7523 / RFC 9449 / RFC 8693 token exchange), introspection (RFC 7662),
revocation (RFC 7009), and ``POST /v1/sub-agents``, where an agent authenticated by its
DPoP-bound token spawns a just-in-time sub-agent.

The token, JWKS, metadata and revocation endpoints are public to the admin-key
middleware: clients authenticate with ``private_key_jwt``. Introspection needs an admin
key with the ``tokens:introspect`` permission (the ``verifier`` role has it).

Bodies are ``application/x-www-form-urlencoded`` (RFC 6749 appendix B), parsed here with
a cap on the number of fields and with every parameter kept, so repeats are refused
(section 3.2). Errors are RFC 6749 section 5.2 JSON, never problem details, and never
carry internal detail.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from agentiam.adapters.http.deps import ApiDependencies
from agentiam.core.access.admin_keys import AdminKey, Permission, permissions_of
from agentiam.core.audit.events import Actor, ActorType, TraceContext
from agentiam.core.credentials.jose import ALLOWED_ALGORITHMS
from agentiam.errors import AgentIAMError, OAuthError
from agentiam.services.context import CallContext
from agentiam.services.delegation import ACCESS_TOKEN_TYPE, ID_TOKEN_TYPE, JWT_TOKEN_TYPE
from agentiam.services.tokens import GRANT_TOKEN_EXCHANGE, TOKEN_PATH

__all__ = [
    "INTROSPECTION_PATH",
    "JWKS_PATH",
    "METADATA_PATH",
    "PUBLIC_OAUTH_PATHS",
    "REVOCATION_PATH",
    "SUBAGENTS_PATH",
    "OAuthDispatch",
    "oauth_routes",
]

log = logging.getLogger("agentiam.oauth")

METADATA_PATH = "/.well-known/oauth-authorization-server"
JWKS_PATH = "/oauth2/jwks"
INTROSPECTION_PATH = "/oauth2/introspect"
REVOCATION_PATH = "/oauth2/revoke"
SUBAGENTS_PATH = "/v1/sub-agents"
# Public to the admin-key middleware: these authenticate OAuth clients themselves.
PUBLIC_OAUTH_PATHS = frozenset(
    {METADATA_PATH, JWKS_PATH, TOKEN_PATH, REVOCATION_PATH, SUBAGENTS_PATH}
)
SOURCE = "control-plane/oauth"
_FORM = "application/x-www-form-urlencoded"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_OAUTH_THREADS = 2


def _deps(request: Request) -> ApiDependencies:
    return request.app.state.container  # type: ignore[no-any-return]


def _error(exc: OAuthError) -> JSONResponse:
    return JSONResponse(
        exc.to_oauth(), status_code=exc.oauth_status, headers={**_NO_STORE, **exc.headers}
    )


async def _form(request: Request, max_fields: int) -> dict[str, list[str]]:
    """Parse the form body; every parameter keeps all its values."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != _FORM:
        raise OAuthError("invalid_request", f"the body must be {_FORM}")
    body = await request.body()
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=max_fields,
        )
    except (UnicodeDecodeError, ValueError):
        raise OAuthError("invalid_request", "the form body is malformed or too large") from None
    form: dict[str, list[str]] = {}
    for name, value in pairs:
        form.setdefault(name, []).append(value)
    return form


def _context(request: Request, actor: Actor | None = None) -> CallContext:
    trace = TraceContext.from_traceparent(request.headers.get("traceparent"))
    return CallContext(
        actor=actor or Actor(type=ActorType.ANONYMOUS, id="oauth-client"),
        source=SOURCE,
        trace=trace,
    )


def _limiter(request: Request) -> anyio.CapacityLimiter:
    """A few threads for the OAuth use cases: they are CPU-bound and share the GIL, so
    more threads only add switching; requests beyond this wait on the event loop. One
    limiter per application, created inside its event loop."""
    state = request.app.state
    limiter: anyio.CapacityLimiter | None = getattr(state, "oauth_limiter", None)
    if limiter is None:
        limiter = state.oauth_limiter = anyio.CapacityLimiter(_OAUTH_THREADS)
    return limiter


async def _run(request: Request, call: Callable[[], Response]) -> Response:
    """Run a use case; map every failure to OAuth JSON.

    On SQLite the use case runs on the event loop itself: its reads and writes are local
    and take well under a millisecond, writers are serialised anyway, and handing each
    request to a thread cost more CPU than the request (GIL hand-offs). On PostgreSQL,
    whose queries wait on the network, it runs on a small thread pool."""
    try:
        if request.app.state.oauth_inline:
            return call()
        return await anyio.to_thread.run_sync(call, limiter=_limiter(request))
    except OAuthError as exc:
        return _error(exc)
    except AgentIAMError as exc:
        status = 503 if exc.status >= 500 else 400
        error = "temporarily_unavailable" if status == 503 else "invalid_request"
        return _error(OAuthError(error, exc.detail, status=status))
    except Exception:
        log.exception("OAuth endpoint failed")
        return _error(OAuthError("server_error", "internal error", status=500))


def _metadata(deps: ApiDependencies) -> dict[str, Any]:
    """RFC 8414 section 2, with RFC 9449 section 5.1 and RFC 7009 / RFC 7662 fields."""
    issuer = deps.settings.issuer_url
    algs = list(ALLOWED_ALGORITHMS)
    return {
        "issuer": issuer,
        "token_endpoint": issuer + TOKEN_PATH,
        "jwks_uri": issuer + JWKS_PATH,
        "introspection_endpoint": issuer + INTROSPECTION_PATH,
        "revocation_endpoint": issuer + REVOCATION_PATH,
        "grant_types_supported": ["client_credentials", GRANT_TOKEN_EXCHANGE],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": algs,
        "revocation_endpoint_auth_methods_supported": ["private_key_jwt"],
        "revocation_endpoint_auth_signing_alg_values_supported": algs,
        "dpop_signing_alg_values_supported": algs,
        # RFC 9396 section 10 / RFC 8693: what a token exchange can ask for.
        "authorization_details_types_supported": list(deps.delegation.details.names),
        "token_exchange_subject_token_types_supported": [
            ACCESS_TOKEN_TYPE,
            JWT_TOKEN_TYPE,
            ID_TOKEN_TYPE,
        ],
        "token_exchange_max_chain_depth": deps.settings.delegation_max_depth,
        "sub_agents_endpoint": issuer + SUBAGENTS_PATH,
    }


async def metadata(request: Request) -> Response:
    return JSONResponse(_metadata(_deps(request)), headers={"Cache-Control": "max-age=300"})


async def jwks(request: Request) -> Response:
    deps = _deps(request)
    body = await anyio.to_thread.run_sync(deps.signing_keys.jwks)
    max_age = max(1, deps.settings.signing_key_publish_seconds // 2)
    return JSONResponse(
        body,
        media_type="application/jwk-set+json",
        headers={"Cache-Control": f"public, max-age={max_age}"},
    )


async def _with_form(
    request: Request,
    handle: Callable[[ApiDependencies, CallContext, dict[str, list[str]]], Response],
    actor: Actor | None = None,
) -> Response:
    """Parse the form body (or answer its error), then run ``handle`` via :func:`_run`."""
    deps = _deps(request)
    try:
        form = await _form(request, deps.settings.limits.max_form_fields)
    except OAuthError as exc:
        return _error(exc)
    ctx = _context(request, actor)
    return await _run(request, lambda: handle(deps, ctx, form))


async def token(request: Request) -> Response:
    dpop = request.headers.getlist("dpop")

    def issue(deps: ApiDependencies, ctx: CallContext, form: dict[str, list[str]]) -> Response:
        result = deps.tokens.token(ctx, form, dpop)
        return JSONResponse(result.body, headers=result.headers)

    return await _with_form(request, issue)


async def revoke(request: Request) -> Response:
    def run(deps: ApiDependencies, ctx: CallContext, form: dict[str, list[str]]) -> Response:
        deps.tokens.revoke(ctx, form)
        return Response(status_code=200, headers=_NO_STORE)

    return await _with_form(request, run)


async def introspect(request: Request) -> Response:
    """RFC 7662: the caller is authenticated by the admin-key middleware."""
    key: AdminKey | None = getattr(request.state, "admin_key", None)
    if key is None or Permission.TOKENS_INTROSPECT not in permissions_of(key.role):
        return _error(
            OAuthError(
                "insufficient_scope",
                "this key may not introspect tokens",
                status=403,
            )
        )

    def run(deps: ApiDependencies, ctx: CallContext, form: dict[str, list[str]]) -> Response:
        return JSONResponse(deps.tokens.introspect(ctx, _first(form, "token")), headers=_NO_STORE)

    return await _with_form(request, run, request.state.actor)


async def sub_agents(request: Request) -> Response:
    """Spawn a just-in-time sub-agent (see ``DelegationService.spawn``). The caller
    authenticates with its DPoP-bound access token; errors are RFC 6750 / RFC 9449
    style OAuth JSON with a ``WWW-Authenticate`` challenge where it applies."""
    deps = _deps(request)
    authorization = request.headers.getlist("authorization")
    dpop = request.headers.getlist("dpop")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    raw = await request.body()
    ctx = _context(request)

    def run() -> Response:
        if content_type != "application/json":
            raise OAuthError("invalid_request", "the body must be application/json")
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            raise OAuthError("invalid_request", "the body is not valid JSON") from None
        agent, result = deps.delegation.spawn_request(
            ctx,
            authorization=authorization,
            dpop=dpop,
            url=deps.settings.issuer_url + SUBAGENTS_PATH,
            body=body,
        )
        payload = {
            "agent_id": agent.id,
            "name": agent.name,
            "parent_id": agent.parent_id,
            "expires_at": agent.expires_at.isoformat() if agent.expires_at else None,
            **result.body,
        }
        return JSONResponse(payload, status_code=201, headers=result.headers)

    return await _run(request, run)


def _first(form: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None


class OAuthDispatch:
    """Plain ASGI in front of the admin API: an OAuth path goes straight to its route,
    without walking the API's route table (the token endpoint is a hot path)."""

    def __init__(self, api: Any, routes: list[Route]) -> None:
        self.api = api
        self.routes = {route.path: route for route in routes}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if route is None:
            await self.api(scope, receive, send)
            return
        scope["app"] = self.api  # handlers reach the container through request.app
        scope["route"] = route
        await route.handle(scope, receive, send)  # 405 for another method


def oauth_routes() -> list[Route]:
    return [
        Route(METADATA_PATH, metadata, methods=["GET"], include_in_schema=False),
        Route(JWKS_PATH, jwks, methods=["GET"], include_in_schema=False),
        Route(TOKEN_PATH, token, methods=["POST"], include_in_schema=False),
        Route(REVOCATION_PATH, revoke, methods=["POST"], include_in_schema=False),
        Route(INTROSPECTION_PATH, introspect, methods=["POST"], include_in_schema=False),
        Route(SUBAGENTS_PATH, sub_agents, methods=["POST"], include_in_schema=False),
    ]
