"""The measured evidence keys: the one list the bank and the evidence collector share.

A ``measured`` (or ``either``) question names one key of :data:`EVIDENCE_KEYS`; the
bank loader refuses any other. The collector that reads a live control plane must
produce values for these keys and no others (a test can hold it to
:data:`MEASURED_EVIDENCE_KEYS`). Each key has a unit that fixes its range and the
direction in which a value is better:

* ``ratio``: a share from 0 to 1, higher is better;
* ``flag``: 0 (no) or 1 (yes), yes is better;
* ``count``: a whole number from 0, higher is better;
* ``days``: an age in days from 0, lower is better. What was never done is reported as
  :data:`NEVER` days, so it meets no threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from agentiam.core.assessment.model import Comparison

__all__ = ["EVIDENCE_KEYS", "MEASURED_EVIDENCE_KEYS", "NEVER", "EvidenceKey", "Unit"]

NEVER = 36_500.0  # days: "never happened" (a hundred years)


class Unit(StrEnum):
    RATIO = "ratio"
    FLAG = "flag"
    COUNT = "count"
    DAYS = "days"

    @property
    def better(self) -> Comparison:
        """The comparison thresholds on this unit use (the direction that is better)."""
        return Comparison.AT_MOST if self is Unit.DAYS else Comparison.AT_LEAST

    @property
    def bounds(self) -> tuple[float, float]:
        """The smallest and largest value a measurement may carry."""
        if self is Unit.RATIO or self is Unit.FLAG:
            return (0.0, 1.0)
        if self is Unit.DAYS:
            return (0.0, NEVER)
        return (0.0, 1e12)


@dataclass(frozen=True, slots=True)
class EvidenceKey:
    key: str
    unit: Unit
    description: str


def _keys(*items: tuple[str, Unit, str]) -> dict[str, EvidenceKey]:
    return {key: EvidenceKey(key, unit, text) for key, unit, text in items}


EVIDENCE_KEYS: dict[str, EvidenceKey] = _keys(
    ("inventory.purpose_share", Unit.RATIO, "active agents with a stated purpose"),
    ("agents.owner_share", Unit.RATIO, "active agents with at least one owner"),
    (
        "agents.access_review_current_share",
        Unit.RATIO,
        "active agents whose next access review is not past due",
    ),
    (
        "agents.ephemeral_ttl_share",
        Unit.RATIO,
        "sub-agents (agents with a parent) that carry a time to live",
    ),
    (
        "credentials.dpop_share",
        Unit.RATIO,
        "active agents that must present DPoP-bound tokens (RFC 9449)",
    ),
    (
        "credentials.short_lived_share",
        Unit.RATIO,
        "access tokens issued in the window that live 15 minutes or less",
    ),
    (
        "delegation.bounded_grant_share",
        Unit.RATIO,
        "active delegation grants with an expiry and a bounded scope",
    ),
    (
        "policy.agent_coverage_share",
        Unit.RATIO,
        "active agents some enforced permit names (directly or by group)",
    ),
    (
        "policy.enforced_share",
        Unit.RATIO,
        "policies in enforce mode rather than dry run",
    ),
    (
        "policy.default_deny",
        Unit.FLAG,
        "no enforced permit allows every principal every action on every resource",
    ),
    (
        "enforcement.tool_call_share",
        Unit.RATIO,
        "tool calls in the window decided at an enforcement point",
    ),
    (
        "approvals.risky_agent_share",
        Unit.RATIO,
        "agents acting without per-step approval that an enforced step-up rule covers",
    ),
    ("access.unused_rights_review_days", Unit.DAYS, "days since unused rights were last reviewed"),
    ("audit.last_verified_days", Unit.DAYS, "days since the audit chain last verified intact"),
    ("audit.exporters_healthy_share", Unit.RATIO, "configured audit exporters that are healthy"),
    ("detection.detectors_enabled_share", Unit.RATIO, "detectors switched on"),
    ("detection.last_exercised_days", Unit.DAYS, "days since a detector last raised an alert"),
    (
        "response.auto_revocation_playbooks",
        Unit.COUNT,
        "enforced playbooks that suspend an agent or revoke its tokens",
    ),
    (
        "response.last_triggered_days",
        Unit.DAYS,
        "days since a playbook last took an automatic action",
    ),
    ("keys.signing_key_age_days", Unit.DAYS, "age in days of the key that signs tokens now"),
    (
        "revocation.last_exercised_days",
        Unit.DAYS,
        "days since a token or agent revocation was last carried out",
    ),
)

MEASURED_EVIDENCE_KEYS: frozenset[str] = frozenset(EVIDENCE_KEYS)
