"""One small error hierarchy.

Every error knows the problem type it maps to (RFC 9457), the HTTP status an API
answers with, and a short hint that tells the caller what to do next. Messages are
written for the caller; they never carry secrets, stack traces or internal state.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AgentIAMError",
    "AuthenticationRequired",
    "BadRequest",
    "Conflict",
    "Forbidden",
    "InvalidInput",
    "InvalidTransition",
    "NotFound",
    "OAuthError",
    "PayloadTooLarge",
    "ServiceUnavailable",
    "TooManyRequests",
    "UnsupportedMediaType",
]

PROBLEM_BASE = "https://agentiam.dev/problems/"


class AgentIAMError(Exception):
    """Base class. ``code`` is the stable machine-readable name of the problem."""

    code: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal error"
    status: ClassVar[int] = 500
    default_hint: ClassVar[str | None] = None

    def __init__(
        self,
        detail: str,
        *,
        hint: str | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.hint = hint if hint is not None else self.default_hint
        self.errors = errors or []

    @property
    def type_uri(self) -> str:
        """The RFC 9457 ``type`` member: a stable URI naming the problem."""
        return PROBLEM_BASE + self.code

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        """Render as an RFC 9457 problem details object (section 3)."""
        body: dict[str, Any] = {
            "type": self.type_uri,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance is not None:
            body["instance"] = instance
        if self.hint:
            body["hint"] = self.hint
        if self.errors:
            body["errors"] = self.errors
        return body


class InvalidInput(AgentIAMError):
    code = "invalid-input"
    title = "Invalid input"
    status = 422


class BadRequest(AgentIAMError):
    code = "bad-request"
    title = "Bad request"
    status = 400


class NotFound(AgentIAMError):
    code = "not-found"
    title = "Not found"
    status = 404


class Conflict(AgentIAMError):
    code = "conflict"
    title = "Conflict"
    status = 409


class InvalidTransition(Conflict):
    code = "invalid-transition"
    title = "Lifecycle transition not allowed"


class AuthenticationRequired(AgentIAMError):
    code = "authentication-required"
    title = "Authentication required"
    status = 401
    default_hint = "Send an admin API key as 'Authorization: Bearer aiam_…'."


class Forbidden(AgentIAMError):
    code = "forbidden"
    title = "Forbidden"
    status = 403


class PayloadTooLarge(AgentIAMError):
    code = "payload-too-large"
    title = "Payload too large"
    status = 413


class UnsupportedMediaType(AgentIAMError):
    code = "unsupported-media-type"
    title = "Unsupported media type"
    status = 415


class TooManyRequests(AgentIAMError):
    """RFC 6585 section 4; ``retry_after`` (whole seconds) goes in ``Retry-After``."""

    code = "too-many-requests"
    title = "Too many requests"
    status = 429

    def __init__(self, detail: str, *, retry_after: int, hint: str | None = None) -> None:
        super().__init__(detail, hint=hint)
        self.retry_after = max(1, int(retry_after))


class ServiceUnavailable(AgentIAMError):
    code = "service-unavailable"
    title = "Service unavailable"
    status = 503


class OAuthError(AgentIAMError):
    """An OAuth error response: RFC 6749 section 5.2 (token endpoint), RFC 7009
    section 2.2.1, RFC 8707 section 2 (``invalid_target``) and RFC 9449 sections 7-8
    (``invalid_dpop_proof``, ``use_dpop_nonce``).

    ``error`` is the registered wire code. ``description`` goes to the client and says
    what to fix without revealing which internal check failed where that would help an
    attacker; ``reason`` is the precise internal cause, for the audit trail and tests
    only. ``headers`` are added to the response (``WWW-Authenticate``, ``DPoP-Nonce``).
    """

    code = "oauth-error"
    title = "OAuth error"

    def __init__(
        self,
        error: str,
        description: str,
        *,
        status: int = 400,
        reason: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(description)
        self.error = error
        self.oauth_status = status
        self.reason = reason or description
        self.headers = headers or {}

    def to_oauth(self) -> dict[str, str]:
        """The JSON body of RFC 6749 section 5.2."""
        return {"error": self.error, "error_description": self.detail}
