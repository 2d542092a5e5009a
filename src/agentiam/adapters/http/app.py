"""The control plane's ASGI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from agentiam import __version__
from agentiam.adapters.heap import settle_heap
from agentiam.adapters.http.deps import ApiDependencies
from agentiam.adapters.http.middleware import Metrics, RequestLimits
from agentiam.adapters.http.oauth import OAuthDispatch, oauth_routes
from agentiam.adapters.http.problems import install_problem_handlers
from agentiam.adapters.http.routes import (
    admin_keys,
    agents,
    approvals,
    assessments,
    audit,
    authorize,
    credentials,
    delegations,
    detection,
    enforcement,
    humans,
    policies,
    resources,
    response,
    system,
)
from agentiam.adapters.http.security import AdminAuthentication
from agentiam.adapters.storage.engine import is_postgres

__all__ = ["create_app"]

DESCRIPTION = """Identity and access management for autonomous AI agents.

Authenticate with an admin API key: `Authorization: Bearer aiam_…`. Roles: **admin**
(everything), **operator** (everything except admin and signing keys), **auditor**
(read-only), **verifier** (enforcement points: introspection, revocations, decisions,
the policy bundle, audit ingest).
Errors are RFC 9457 problem details (`application/problem+json`).
"""


def create_app(container: ApiDependencies) -> Any:
    """Build the ASGI app: FastAPI routes wrapped in plain ASGI middleware."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        container.start_background()  # feeds, key refresh, purges, expiry sweep
        settle_heap()  # long-lived objects out of later full collections (adapters/heap.py)
        yield
        container.close()

    app = FastAPI(
        lifespan=lifespan,
        title="AgentIAM",
        version=__version__,
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
    )
    app.state.container = container
    app.state.oauth_inline = not is_postgres(container.settings.database_url)
    install_problem_handlers(app)
    for router in (
        system.router,
        humans.router,
        agents.router,
        admin_keys.router,
        audit.router,
        credentials.router,
        policies.router,
        resources.router,
        authorize.router,
        delegations.router,
        enforcement.router,
        approvals.router,
        response.router,
        detection.router,
        assessments.router,
    ):
        app.include_router(router)
    system.mount_offline_docs(app)
    app.openapi_schema = None
    # Outermost first: count every request; authenticate before any body is read;
    # then bound the body of authenticated requests.
    limited = RequestLimits(OAuthDispatch(app, oauth_routes()), container.settings.limits)
    return Metrics(AdminAuthentication(limited, container), container.registry)
