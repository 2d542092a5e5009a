"""Privilege escalation attempts (docs/detection.md, "Privilege escalation").

Three rules, none needing a warm-up (they judge refusals, which are never normal):

- ``escalation.stolen_token`` (CRITICAL): a DPoP-bound token shown with a proof made by
  another key (RFC 9449 section 4.3 check 12: the proof's key must be the token's
  ``cnf.jkt``), shown as a Bearer token, or a DPoP proof replayed (section 11.1): the
  token is being used by someone who does not hold its key.
- ``escalation.beyond_entitlement`` / ``escalation.exchange_widening`` (HIGH): a token
  request refused as ``invalid_scope``, ``invalid_target`` or ``access_denied``
  (RFC 6749 section 5.2, RFC 8707 section 2, RFC 8693 section 2.2.2); "widening" when
  the refusal says a token exchange asked for more than the subject token, grant or
  actor allows.
- ``escalation.denied_burst`` (HIGH): ``deny_burst`` refusals (denied decisions,
  refused requests, refused token requests) within ``deny_window_seconds`` (a sliding
  window over the agent's last ``deny_burst`` refusals): a probing agent, not one
  unlucky call.
"""

from __future__ import annotations

from collections import deque

from agentiam.core.detection.config import EscalationConfig
from agentiam.core.detection.detector import DetectionState
from agentiam.core.detection.model import Alert, Category, Observation, Severity
from agentiam.core.detection.observation import (
    DECISION,
    REJECTED,
    TOKEN_DENIED,
    TOKEN_EXCHANGED,
    TOKEN_ISSUED,
)

__all__ = ["EscalationDetector"]

_STOLEN = frozenset({"key_mismatch", "proof_replay"})
# refusals an attacker's probing produces (not a rate limit or our own outage)
_PROBING = frozenset({"key_mismatch", "proof_replay", "authentication", "forbidden", "not_found"})
_ENTITLEMENT_ERRORS = frozenset({"invalid_scope", "invalid_target", "access_denied"})
_KEY = "escalation"


class EscalationDetector:
    name = "privilege_escalation"

    def __init__(self, config: EscalationConfig) -> None:
        self.config = config

    def observe(self, obs: Observation, state: DetectionState) -> list[Alert]:
        kind = obs.kind
        if kind == DECISION:
            if obs.allowed is not False:
                return []
            return self._burst(obs, state)
        if kind == REJECTED:
            refusal = obs.attributes.get("refusal")
            if refusal not in _PROBING:
                return []
            alerts = self._burst(obs, state)
            if refusal in _STOLEN:
                alerts += self._stolen(obs, state, refusal)
            return alerts
        if kind == TOKEN_DENIED:
            alerts = self._burst(obs, state)
            refusal = obs.attributes.get("refusal")
            if refusal in _STOLEN:
                alerts += self._stolen(obs, state, refusal)
            error = obs.attributes.get("error")
            if error in _ENTITLEMENT_ERRORS:
                widening = bool(obs.attributes.get("widening"))
                alerts += state.alert(
                    obs,
                    "escalation.exchange_widening" if widening else "escalation.beyond_entitlement",
                    Category.ESCALATION,
                    Severity.HIGH,
                    error,
                    "a token exchange asked for more than its chain allows"
                    if widening
                    else "a token request asked for more than the agent is entitled to",
                    {"error": error, "reason": obs.attributes.get("reason")},
                )
            return alerts
        if kind in (TOKEN_ISSUED, TOKEN_EXCHANGED):
            jkt = obs.attributes.get("jkt")
            if jkt is not None:  # the key its latest token is bound to, for evidence
                state.agent.scratch["jkt"] = jkt
        return []

    @staticmethod
    def _stolen(obs: Observation, state: DetectionState, refusal: str) -> list[Alert]:
        """A token shown with a proof from another key (at a gateway, or as the actor
        token of an exchange), or a replayed proof."""
        return state.alert(
            obs,
            "escalation.stolen_token",
            Category.ESCALATION,
            Severity.CRITICAL,
            refusal,
            "a token was presented without the key it is bound to"
            if refusal == "key_mismatch"
            else "a DPoP proof was replayed",
            {
                "refusal": refusal,
                "reason": obs.attributes.get("reason"),
                "presented_jkt": obs.attributes.get("jkt"),
                "bound_jkt": state.agent.scratch.get("jkt"),
                "expected": "a proof signed by the token's cnf.jkt key",
            },
        )

    def _burst(self, obs: Observation, state: DetectionState) -> list[Alert]:
        scratch = state.agent.scratch
        times = scratch.get(_KEY)
        if times is None:
            times = scratch[_KEY] = deque(maxlen=self.config.deny_burst)
        t = state.t
        times.append((t, obs.event_id))
        if len(times) < self.config.deny_burst:
            return []
        seconds = t - times[0][0]
        if seconds > self.config.deny_window_seconds:
            return []
        return state.alert(
            obs,
            "escalation.denied_burst",
            Category.ESCALATION,
            Severity.HIGH,
            "burst",
            f"{len(times)} refused requests in {seconds:.1f} s",
            {
                "refusals": len(times),
                "seconds": round(seconds, 3),
                "threshold": self.config.deny_burst,
                "window_seconds": self.config.deny_window_seconds,
            },
            tuple(eid for _, eid in times),
        )
