"""Typed reads of JWT claims (RFC 7519 section 4.1) with the time checks every token
kind shares. Time is always passed in (seconds since the epoch), never read here."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from agentiam.core.credentials.jose import JoseRejected

__all__ = [
    "check_not_before",
    "check_not_expired",
    "numeric_date",
    "optional_numeric_date",
    "optional_string_claim",
    "string_claim",
]

_MAX_NUMERIC_DATE = 2**53  # JSON numbers beyond this lose precision


def optional_numeric_date(claims: Mapping[str, Any], name: str) -> int | None:
    """An RFC 7519 NumericDate claim as whole seconds; booleans and strings refused."""
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise JoseRejected(f"claim {name} is not a NumericDate")
    if not math.isfinite(value) or not 0 <= value < _MAX_NUMERIC_DATE:
        raise JoseRejected(f"claim {name} is out of range")
    return int(value)


def numeric_date(claims: Mapping[str, Any], name: str) -> int:
    value = optional_numeric_date(claims, name)
    if value is None:
        raise JoseRejected(f"claim {name} missing")
    return value


def optional_string_claim(
    claims: Mapping[str, Any], name: str, *, max_length: int = 256
) -> str | None:
    """A non-empty string claim of bounded length, or None when absent."""
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise JoseRejected(f"claim {name} is not a string of 1-{max_length} characters")
    return value


def string_claim(claims: Mapping[str, Any], name: str, *, max_length: int = 256) -> str:
    value = optional_string_claim(claims, name, max_length=max_length)
    if value is None:
        raise JoseRejected(f"claim {name} missing")
    return value


def check_not_expired(claims: Mapping[str, Any], now: int, skew: int) -> int:
    """``exp`` is required and must not have passed (RFC 7519 section 4.1.4)."""
    exp = numeric_date(claims, "exp")
    if now - skew >= exp:
        raise JoseRejected("token expired")
    return exp


def check_not_before(claims: Mapping[str, Any], now: int, skew: int) -> None:
    """``nbf`` and ``iat``, when present, must not be in the future beyond ``skew``."""
    for name in ("nbf", "iat"):
        value = optional_numeric_date(claims, name)
        if value is not None and value > now + skew:
            raise JoseRejected(f"claim {name} is in the future")
