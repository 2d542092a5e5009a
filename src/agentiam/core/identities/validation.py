"""Validation of identity input. Every function returns the canonical value or raises
:class:`~agentiam.errors.InvalidInput`; nothing here touches storage."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from agentiam.config import Limits
from agentiam.core.credentials.access_tokens import parse_resource, parse_scope
from agentiam.core.identities.models import Agent, AutonomyLevel, ExternalIdentity, RuntimeInfo
from agentiam.core.normalize import normalize_display_text, normalize_identifier
from agentiam.errors import InvalidInput

__all__ = [
    "entitlements_beyond",
    "validate_access_review",
    "validate_audiences",
    "validate_autonomy",
    "validate_email",
    "validate_external_identity",
    "validate_label_filters",
    "validate_labels",
    "validate_reason",
    "validate_runtime",
    "validate_scopes",
]


def entitlements_beyond(held: Agent, scopes: Sequence[str], audiences: Sequence[str]) -> list[str]:
    """The scopes and audiences among those given that ``held`` is not entitled to:
    nothing may hand on more than its holder has (a child agent, a delegation grant)."""
    return sorted(set(scopes) - set(held.scopes)) + sorted(set(audiences) - set(held.audiences))


_EMAIL_RE = re.compile(r"^[^@\s]{1,64}@(?:[^@\s.]{1,63}\.)+[^@\s.]{2,63}$")


def validate_email(value: str, limits: Limits) -> str:
    """Normalise an address (NFKC, case-folded) and check its shape (RFC 5321 lengths)."""
    text = normalize_display_text(value, field="email", max_length=limits.max_email_length)
    text = unicodedata.normalize("NFKC", text.casefold())
    if not _EMAIL_RE.match(text):
        raise InvalidInput("email is not a valid address", hint="Use the form name@example.com.")
    return text


def validate_external_identity(issuer: str | None, subject: str | None) -> ExternalIdentity | None:
    """An IdP identity is an https issuer URL plus a case-sensitive subject (OIDC core 2)."""
    if issuer is None and subject is None:
        return None
    if not issuer or not subject:
        raise InvalidInput("external identity needs both issuer and subject")
    if len(issuer) > 512:
        raise InvalidInput("external issuer is longer than 512 characters")
    parts = urlsplit(issuer)
    if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
        raise InvalidInput(
            "external issuer must be an https URL without query or fragment",
            hint="Use the exact 'iss' value your IdP puts in its ID tokens.",
        )
    if parts.username or parts.password:
        raise InvalidInput("external issuer must not contain credentials")
    if len(subject) > 255 or any(unicodedata.category(c)[0] in "CZ" for c in subject):
        raise InvalidInput("external subject must be 1-255 printable characters without spaces")
    return ExternalIdentity(issuer=issuer, subject=subject)


def validate_autonomy(value: str) -> AutonomyLevel:
    try:
        return AutonomyLevel(value)
    except ValueError:
        raise InvalidInput(
            f"autonomy must be one of {', '.join(a.value for a in AutonomyLevel)}"
        ) from None


def validate_runtime(value: Mapping[str, Any] | RuntimeInfo | None, limits: Limits) -> RuntimeInfo:
    if value is None:
        return RuntimeInfo()
    raw = (
        {"framework": value.framework, "model": value.model, "version": value.version}
        if isinstance(value, RuntimeInfo)
        else dict(value)
    )
    unknown = set(raw) - {"framework", "model", "version"}
    if unknown:
        raise InvalidInput(f"runtime has unknown fields: {', '.join(sorted(unknown))}")
    cleaned: dict[str, str | None] = {}
    for key in ("framework", "model", "version"):
        item = raw.get(key)
        cleaned[key] = (
            None
            if item is None
            else normalize_display_text(
                item, field=f"runtime.{key}", max_length=limits.max_display_length
            )
        )
    return RuntimeInfo(**cleaned)


def validate_labels(value: Mapping[str, str] | None, limits: Limits) -> dict[str, str]:
    """Label keys and values are identifiers; both are normalised for filtering."""
    if value is None:
        return {}
    if len(value) > limits.max_labels:
        raise InvalidInput(f"at most {limits.max_labels} labels are allowed")
    labels: dict[str, str] = {}
    for key, item in value.items():
        k = normalize_identifier(key, field="label key", max_length=limits.max_label_length)
        v = normalize_identifier(item, field=f"label {k}", max_length=limits.max_label_length)
        if k in labels:
            raise InvalidInput(f"label key {k!r} appears twice after normalisation")
        labels[k] = v
    return labels


def validate_label_filters(items: Sequence[str], limits: Limits) -> dict[str, str | None]:
    """Parse list filters ``key`` (label present) or ``key=value`` (label equals)."""
    filters: dict[str, str | None] = {}
    for item in items:
        if len(item) > 2 * limits.max_label_length + 1:
            raise InvalidInput("label filter is too long")
        key, sep, value = item.partition("=")
        k = normalize_identifier(key, field="label key", max_length=limits.max_label_length)
        filters[k] = (
            normalize_identifier(value, field="label value", max_length=limits.max_label_length)
            if sep
            else None
        )
    return filters


def validate_reason(value: str | None, limits: Limits, *, required: bool = True) -> str:
    if value is None or not value.strip():
        if required:
            raise InvalidInput("a reason is required", hint="Say why, e.g. --reason 'incident 42'.")
        return ""
    return normalize_display_text(value, field="reason", max_length=limits.max_reason_length)


def validate_access_review(value: date | None, now: datetime, interval_days: int) -> date:
    """The next access review: default ``interval_days`` ahead, never in the past, at
    most 366 days ahead."""
    today = now.date()
    if value is None:
        return today + timedelta(days=interval_days)
    if value < today or value > today + timedelta(days=366):
        raise InvalidInput("next_access_review must be between today and 366 days ahead")
    return value


def validate_scopes(values: Sequence[str] | None) -> tuple[str, ...]:
    """The OAuth scopes an agent is entitled to (RFC 6749 section 3.3 syntax), sorted."""
    if not values:
        return ()
    if isinstance(values, str) or not all(isinstance(v, str) for v in values):
        raise InvalidInput("scopes must be a list of strings")
    try:
        parsed = parse_scope(" ".join(values))
    except ValueError as exc:
        raise InvalidInput(
            str(exc),
            hint="A scope is printable ASCII without spaces, quotes "
            "or backslashes, e.g. tools:read.",
        ) from None
    return tuple(sorted(parsed or ()))


def validate_audiences(values: Sequence[str] | None, limits: Limits) -> tuple[str, ...]:
    """The resource indicators (RFC 8707) an agent's tokens may name, sorted."""
    if not values:
        return ()
    if isinstance(values, str) or not all(isinstance(v, str) for v in values):
        raise InvalidInput("audiences must be a list of strings")
    if len(values) > limits.max_audiences:
        raise InvalidInput(f"at most {limits.max_audiences} audiences")
    try:
        return tuple(sorted({parse_resource(v) for v in values}))
    except ValueError as exc:
        raise InvalidInput(
            str(exc),
            hint="Use the resource server's absolute URI, e.g. https://tools.example.com/mcp.",
        ) from None
