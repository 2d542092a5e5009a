"""RFC 9457 problem details for every error the API returns.

No handler ever returns a stack trace or echoes rejected input back: validation
errors carry the location and a message, never the value (it may be a secret).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from agentiam.adapters.http.deps import SOURCE, ApiDependencies
from agentiam.core.audit.events import Actor, ActorType, Outcome, TraceContext
from agentiam.errors import (
    AgentIAMError,
    BadRequest,
    InvalidInput,
    ServiceUnavailable,
    TooManyRequests,
)
from agentiam.services.context import CallContext

__all__ = ["PROBLEM_JSON", "audit_rejection", "install_problem_handlers", "problem_response"]

PROBLEM_JSON = "application/problem+json"
ANONYMOUS = Actor(type=ActorType.ANONYMOUS, id="-")
log = logging.getLogger("agentiam.http")


def problem_response(error: AgentIAMError, instance: str | None = None) -> JSONResponse:
    headers = {"Cache-Control": "no-store"}
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="agentiam-admin"'
    if isinstance(error, TooManyRequests):
        headers["Retry-After"] = str(error.retry_after)  # RFC 9110 section 10.2.3
    return JSONResponse(
        error.to_problem(instance),
        status_code=error.status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def audit_rejection(
    deps: ApiDependencies | None,
    *,
    actor: Actor | None,
    trace: TraceContext,
    action: str,
    error: AgentIAMError,
) -> None:
    """Record a refused call. Best effort: the call is refused whether or not this works,
    so a broken audit store cannot turn a rejection into anything else."""
    if deps is None or isinstance(error, ServiceUnavailable):
        return
    try:
        deps.audit.record(
            CallContext(actor=actor or ANONYMOUS, source=SOURCE, trace=trace),
            type="api.request.rejected",
            action=action,
            outcome=Outcome.DENIED if error.status in (401, 403) else Outcome.FAILURE,
            reason=error.code,
            details={"status": error.status, "detail": error.detail[:300]},
        )
    except Exception:
        log.exception("could not audit a rejected request")


def _audit_rejection(request: Request, error: AgentIAMError) -> None:
    route = request.scope.get("route")
    audit_rejection(
        getattr(request.app.state, "container", None),
        actor=getattr(request.state, "actor", None),
        trace=getattr(request.state, "trace", None)
        or TraceContext.from_traceparent(request.headers.get("traceparent")),
        action=f"{request.method} {getattr(route, 'path', request.url.path)}",
        error=error,
    )


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", ""))[:200]}
        for err in exc.errors()[:20]
    ]


def install_problem_handlers(app: FastAPI) -> None:
    def on_domain_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AgentIAMError)
        _audit_rejection(request, exc)
        return problem_response(exc, request.url.path)

    def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            err: AgentIAMError = BadRequest("the request body is not valid JSON")
        else:
            err = InvalidInput(
                "the request does not match the schema", errors=_validation_errors(exc)
            )
        _audit_rejection(request, err)
        return problem_response(err, request.url.path)

    def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        err = AgentIAMError(str(exc.detail) if exc.detail else "request failed")
        body = {
            "type": "about:blank",
            "title": {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "Error"),
            "status": exc.status_code,
            "detail": err.detail,
            "instance": request.url.path,
        }
        return JSONResponse(
            body, status_code=exc.status_code, media_type=PROBLEM_JSON, headers=exc.headers
        )

    def on_database_error(request: Request, exc: Exception) -> JSONResponse:
        # The transaction was rolled back: nothing was written. Say so without internals.
        log.error(
            "database error on %s %s: %s", request.method, request.url.path, type(exc).__name__
        )
        return problem_response(
            ServiceUnavailable(
                "the database could not complete the request; nothing was changed",
                hint="Retry later; check /readyz.",
            ),
            request.url.path,
        )

    def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        body = {
            "type": "about:blank",
            "title": "Internal error",
            "status": 500,
            "detail": "the server could not complete the request; it has been logged",
        }
        return JSONResponse(body, status_code=500, media_type=PROBLEM_JSON)

    app.add_exception_handler(AgentIAMError, on_domain_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(DBAPIError, on_database_error)
    app.add_exception_handler(Exception, on_unexpected)
