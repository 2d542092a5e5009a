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
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agentiam.core.credentials.revocations import MAX_CLOCK_SKEW
from agentiam.core.plain_http import ONLY_ON_LOOPBACK, secure_or_loopback
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
    max_audiences: int = 16
    max_form_fields: int = 32
    # Policy import/export bodies (a .cedar file of thousands of policies).
    max_policy_body_bytes: int = 8 * 1024 * 1024
    max_authorize_batch: int = 100
    # Token exchange (RFC 8693): the largest subject or actor token accepted.
    max_subject_token_bytes: int = 8192
    # The longest a delegation grant may run before it must be renewed.
    max_grant_days: int = 365
    # POST /v1/audit/ingest: an enforcement point's batch of audit events.
    max_ingest_body_bytes: int = 4 * 1024 * 1024
    max_ingest_events: int = 1000


@dataclass(frozen=True, slots=True)
class Settings:
    """All configuration. Build with :meth:`from_env` or construct directly in tests."""

    database_url: str = f"sqlite:///{DEFAULT_DATABASE_PATH}"
    host: str = "127.0.0.1"
    port: int = 8080
    access_review_interval_days: int = 90
    expiry_sweep_seconds: float = 5.0
    log_level: str = "info"
    # -- credentials (see docs/credentials.md) --
    # The public base URL: the ``iss`` of every token and the base of every endpoint
    # URL (RFC 8414 section 2). Empty means http://<host>:<port>, for local use only.
    issuer: str = ""
    access_token_ttl_seconds: int = 300
    clock_skew_seconds: int = 30
    dpop_max_age_seconds: int = 60
    dpop_nonce_required: bool = False
    signing_alg: str = "ES256"
    # A new signing key is published this long before it signs (>= verifiers' JWKS cache).
    signing_key_publish_seconds: int = 60
    # How often a replica re-reads signing keys and the revocation feed.
    key_refresh_seconds: float = 5.0
    revocation_poll_seconds: float = 0.25
    revocation_max_staleness_seconds: float = 10.0
    # The longest a GET /v1/revocations long poll is held open.
    revocation_feed_max_wait_seconds: float = 25.0
    # On SIGTERM, how long `serve` waits for requests in flight (held long polls of
    # enforcement points included) before it closes their connections and stops.
    shutdown_grace_seconds: float = 5.0
    # The key that seals private keys at rest: base64url text, or a file holding it.
    master_key: str | None = field(default=None, repr=False)
    master_key_file: str | None = None
    # -- policy decisions (see docs/policy.md) --
    # The zone context.time.hour/weekday/date are computed in (IANA name).
    policy_time_zone: str = "UTC"
    # How often a replica checks for a new policy version or registry change.
    policy_refresh_seconds: float = 0.5
    # Past this age without a successful refresh, decisions fail closed (503).
    policy_max_staleness_seconds: float = 30.0
    # -- audit trail (see docs/audit.md) --
    # How often a replica logs new events into the trail (one replica at a time works).
    audit_integrate_seconds: float = 0.25
    # How often the trail's state is signed as a tree head while it grows.
    audit_tree_head_seconds: float = 5.0
    # YAML or JSON list of audit exporters (SIEM delivery; see docs/audit.md#exporters).
    audit_exporters_file: str | None = None
    # YAML or JSON mask/drop rules for tool arguments in events (docs/audit.md#redaction).
    audit_redaction_file: str | None = None
    # Archive and prune trail entries whose events are older than this many days
    # (0: keep everything). Needs audit_archive_dir. See docs/audit.md#retention.
    audit_retention_days: float = 0.0
    # Where pruned segments of the trail are archived (an absolute directory).
    audit_archive_dir: str | None = None
    # How often a replica looks for entries to prune.
    audit_retention_check_seconds: float = 3600.0
    # -- detection (see docs/detection.md) --
    # Behavioural detection over the audit trail (off the decision path).
    detection_enabled: bool = True
    # YAML or JSON detector settings (thresholds, warm-up, risk half-life).
    detection_file: str | None = None
    # How often a replica reads new trail entries into the detectors.
    detection_poll_seconds: float = 0.1
    # YAML or JSON response playbooks (see docs/response.md); none: alerts only.
    playbooks_file: str | None = None
    # -- human approval, step-up (see docs/approvals.md) --
    # How long a request waits for a human's decision; then it expires (denied).
    approval_timeout_seconds: float = 300.0
    # How long an approved request may wait to be used (once) by the call it is for.
    approval_use_seconds: float = 300.0
    # Pending requests one agent may have at once; past it, opening one is refused.
    approval_max_pending_per_agent: int = 20
    # The longest a caller may block waiting for a decision (?wait=).
    approval_max_wait_seconds: float = 60.0
    # How often a replica marks requests past their deadline expired.
    approval_sweep_seconds: float = 1.0
    # -- delegation (see docs/delegation.md) --
    # The longest delegation chain below the human (agents in the act claim).
    delegation_max_depth: int = 4
    # The lifetime of a human subject token minted by AgentIAM (humans tokens).
    human_token_ttl_seconds: int = 300
    # YAML or JSON list of trusted external OpenID Connect issuers.
    trusted_issuers_file: str | None = None
    # YAML or JSON list of operator-defined authorization_details types (RFC 9396).
    authorization_details_types_file: str | None = None
    limits: Limits = field(default_factory=Limits)

    @property
    def issuer_url(self) -> str:
        return (self.issuer or f"http://{self.host}:{self.port}").rstrip("/")

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
                default = getattr(cls(), f.name)
                values[f.name] = _coerce(f.name, raw, str if default is None else type(default))
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
        if not 30 <= self.access_token_ttl_seconds <= 3600:
            raise InvalidInput("access_token_ttl_seconds must be between 30 s and 1 h")
        if not 0 <= self.clock_skew_seconds <= MAX_CLOCK_SKEW:
            raise InvalidInput(f"clock_skew_seconds must be between 0 and {MAX_CLOCK_SKEW}")
        if not 5 <= self.dpop_max_age_seconds <= 300:
            raise InvalidInput("dpop_max_age_seconds must be between 5 and 300")
        if self.signing_alg not in ("ES256", "Ed25519"):
            raise InvalidInput("signing_alg must be ES256 or Ed25519")
        if not 0 < self.key_refresh_seconds * 2 <= self.signing_key_publish_seconds <= 3600:
            raise InvalidInput(
                "signing_key_publish_seconds must be at most 1 h and at least twice "
                "key_refresh_seconds, so every replica publishes a key before any signs"
            )
        if not 0 < self.shutdown_grace_seconds <= 300:
            raise InvalidInput("shutdown_grace_seconds must be more than 0 and at most 300")
        if not 0.05 <= self.revocation_poll_seconds <= 1.0:
            raise InvalidInput("revocation_poll_seconds must be between 0.05 and 1")
        if not self.revocation_poll_seconds < self.revocation_max_staleness_seconds <= 300:
            raise InvalidInput("revocation_max_staleness_seconds must exceed the poll interval")
        if not 0.05 <= self.policy_refresh_seconds <= 10:
            raise InvalidInput("policy_refresh_seconds must be between 0.05 and 10")
        if not self.policy_refresh_seconds < self.policy_max_staleness_seconds <= 3600:
            raise InvalidInput("policy_max_staleness_seconds must exceed the refresh interval")
        if not 1 <= self.limits.max_authorize_batch <= 1000:
            raise InvalidInput("limit max_authorize_batch must be between 1 and 1000")
        if not 64 * 1024 <= self.limits.max_policy_body_bytes <= 64 * 1024 * 1024:
            raise InvalidInput("limit max_policy_body_bytes must be between 64 KiB and 64 MiB")
        if not 0.05 <= self.audit_integrate_seconds <= 10:
            raise InvalidInput("audit_integrate_seconds must be between 0.05 and 10")
        if not 1 <= self.audit_tree_head_seconds <= 3600:
            raise InvalidInput("audit_tree_head_seconds must be between 1 s and 1 h")
        if not 0 <= self.audit_retention_days <= 36_600:
            raise InvalidInput("audit_retention_days must be between 0 (keep all) and 36600")
        if self.audit_retention_days and not self.audit_archive_dir:
            raise InvalidInput(
                "audit_retention_days needs audit_archive_dir: entries are archived "
                "before they are pruned",
                hint="Set AGENTIAM_AUDIT_ARCHIVE_DIR to an absolute directory.",
            )
        if self.audit_archive_dir and not self.audit_archive_dir.startswith("/"):
            raise InvalidInput("audit_archive_dir must be an absolute path")
        if not 1 <= self.audit_retention_check_seconds <= 86_400:
            raise InvalidInput("audit_retention_check_seconds must be between 1 s and 24 h")
        if not 0.02 <= self.detection_poll_seconds <= 10:
            raise InvalidInput("detection_poll_seconds must be between 0.02 and 10")
        if not 1 <= self.approval_timeout_seconds <= 7 * 86_400:
            raise InvalidInput("approval_timeout_seconds must be between 1 s and 7 days")
        if not 1 <= self.approval_use_seconds <= 86_400:
            raise InvalidInput("approval_use_seconds must be between 1 s and 24 h")
        if not 1 <= self.approval_max_pending_per_agent <= 10_000:
            raise InvalidInput("approval_max_pending_per_agent must be between 1 and 10000")
        if not 0 <= self.approval_max_wait_seconds <= 300:
            raise InvalidInput("approval_max_wait_seconds must be between 0 and 300")
        if not 0.05 <= self.approval_sweep_seconds <= 3600:
            raise InvalidInput("approval_sweep_seconds must be between 0.05 s and 1 h")
        if not 1 <= self.delegation_max_depth <= 16:
            raise InvalidInput("delegation_max_depth must be between 1 and 16")
        if not 30 <= self.human_token_ttl_seconds <= 3600:
            raise InvalidInput("human_token_ttl_seconds must be between 30 s and 1 h")
        if not 1024 <= self.limits.max_subject_token_bytes <= 64 * 1024:
            raise InvalidInput("limit max_subject_token_bytes must be between 1 KiB and 64 KiB")
        if not 1 <= self.limits.max_grant_days <= 3660:
            raise InvalidInput("limit max_grant_days must be between 1 and 3660")
        if not 64 * 1024 <= self.limits.max_ingest_body_bytes <= 64 * 1024 * 1024:
            raise InvalidInput("limit max_ingest_body_bytes must be between 64 KiB and 64 MiB")
        if not 1 <= self.limits.max_ingest_events <= 10_000:
            raise InvalidInput("limit max_ingest_events must be between 1 and 10000")
        try:
            ZoneInfo(self.policy_time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidInput(
                f"policy_time_zone {self.policy_time_zone!r} is not an IANA time zone"
            ) from None
        _check_issuer(self.issuer_url)


def _check_issuer(issuer: str) -> None:
    """RFC 8414 section 2: an https URL with no query or fragment. Plain http is allowed
    only on a loopback host, for local development."""
    parts = urlsplit(issuer)
    if parts.query or parts.fragment or not parts.hostname or parts.username:
        raise InvalidInput("issuer must be a URL without user info, query or fragment")
    if secure_or_loopback(parts):
        return
    raise InvalidInput(
        f"issuer must use https ({ONLY_ON_LOOPBACK})",
        hint="Set AGENTIAM_ISSUER to the public https URL clients use to reach this server.",
    )


def _coerce(name: str, raw: str, kind: type) -> Any:
    if kind is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise InvalidInput(f"setting {name} must be true or false, got {raw!r}")
    try:
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
    except ValueError:
        raise InvalidInput(f"setting {name} must be a number, got {raw!r}") from None
    return raw
