"""Typed settings, read once by the composition root.

Every security limit is a named field with a safe default. Settings come from
environment variables prefixed ``AGENTIAM_`` (see docs/configuration.md); nothing else
in the package reads the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from agentiam.errors import InvalidInput

__all__ = ["Limits", "Settings"]

DEFAULT_DATABASE_PATH = Path("agentiam.db")


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on everything a caller controls."""

    max_body_bytes: int = 64 * 1024
    max_json_depth: int = 16
    max_name_length: int = 63
    max_display_length: int = 200
    max_purpose_length: int = 1000
    max_email_length: int = 254
    max_labels: int = 32
    max_label_length: int = 63
    max_owners: int = 16
    max_active_keys_per_agent: int = 10
    max_page_size: int = 200
    default_page_size: int = 50
    max_ephemeral_ttl_seconds: int = 24 * 3600
    max_agent_depth: int = 4
    max_reason_length: int = 500


@dataclass(frozen=True, slots=True)
class Settings:
    """All configuration. Build with :meth:`from_env` or construct directly in tests."""

    database_url: str = f"sqlite:///{DEFAULT_DATABASE_PATH}"
    host: str = "127.0.0.1"
    port: int = 8080
    access_review_interval_days: int = 90
    expiry_sweep_seconds: float = 5.0
    log_level: str = "info"
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read ``AGENTIAM_*`` variables; ``AGENTIAM_LIMIT_<FIELD>`` sets a limit."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "limits":
                continue
            raw = env.get(f"AGENTIAM_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _coerce(f.name, raw, type(getattr(cls(), f.name)))
        limit_values: dict[str, Any] = {}
        for f in fields(Limits):
            raw = env.get(f"AGENTIAM_LIMIT_{f.name.upper()}")
            if raw is not None:
                limit_values[f.name] = _coerce(f.name, raw, int)
        settings = cls(**values)
        if limit_values:
            settings = replace(settings, limits=replace(settings.limits, **limit_values))
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse settings that would weaken the service."""
        if not 1 <= self.limits.max_json_depth <= 64:
            raise InvalidInput("limit max_json_depth must be between 1 and 64")
        if not 1024 <= self.limits.max_body_bytes <= 16 * 1024 * 1024:
            raise InvalidInput("limit max_body_bytes must be between 1 KiB and 16 MiB")
        if not 1 <= self.limits.max_ephemeral_ttl_seconds <= 24 * 3600:
            raise InvalidInput("limit max_ephemeral_ttl_seconds must be between 1 s and 24 h")
        if not 1 <= self.access_review_interval_days <= 366:
            raise InvalidInput("access_review_interval_days must be between 1 and 366")


def _coerce(name: str, raw: str, kind: type) -> Any:
    try:
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
    except ValueError:
        raise InvalidInput(f"setting {name} must be a number, got {raw!r}") from None
    return raw
