"""Health, readiness, Prometheus metrics and the offline API docs page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import swagger_ui_bundle
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agentiam.adapters.http.problems import problem_response
from agentiam.adapters.http.routes import PROBLEM_RESPONSES, audited_read
from agentiam.adapters.http.security import container_of, require
from agentiam.core.access.admin_keys import Permission
from agentiam.errors import ServiceUnavailable
from agentiam.services.context import CallContext

router = APIRouter(tags=["system"])
MetricsRead = Annotated[CallContext, Depends(require(Permission.METRICS_READ))]


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"content": {"application/problem+json": {}}}})
def readyz(request: Request) -> Response:
    """Readiness: the database answers and its schema is current."""
    c = container_of(request)
    try:
        ready = c.database_ready()
    except Exception:
        ready = False
    if not ready:
        return problem_response(
            ServiceUnavailable("the database is unreachable or its schema is not current"),
            request.url.path,
        )
    return JSONResponse({"status": "ready"})


@router.get(
    "/metrics",
    response_class=Response,
    responses={k: v for k, v in PROBLEM_RESPONSES.items() if k in (401, 403, 503)},
)
def metrics(request: Request, ctx: MetricsRead) -> Response:
    """Prometheus metrics (needs a key with metrics:read, e.g. the auditor role)."""
    audited_read(request, ctx, "metrics.read")
    return Response(generate_latest(container_of(request).registry), media_type=CONTENT_TYPE_LATEST)


def mount_offline_docs(app: FastAPI) -> None:
    """Serve Swagger UI from the swagger-ui-bundle package: no CDN, works offline."""
    static = Path(swagger_ui_bundle.swagger_ui_path)
    app.mount("/docs/static", StaticFiles(directory=static), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="AgentIAM admin API",
            swagger_js_url="/docs/static/swagger-ui-bundle.js",
            swagger_css_url="/docs/static/swagger-ui.css",
            swagger_favicon_url="/docs/static/favicon-32x32.png",
        )
