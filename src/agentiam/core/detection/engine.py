"""The detection engine: observations in, alerts and risk scores out.

For each :class:`~agentiam.core.detection.model.Observation`, in trail order:

1. the session is resolved to the root of its delegation tree when the engine saw the
   tokens that lead to it (``token.issued`` / ``token.exchanged``: ``jti`` and
   ``parent_jti``; a bounded map);
2. the agent's state is found (created, or the least recently seen evicted past
   ``limits.max_agents``) and its registry profile refreshed through ``profiles`` every
   ``profile_refresh_seconds`` of event time (:meth:`DetectionEngine.invalidate` forces
   it);
3. a call is counted in the current minute, then every detector judges the
   observation; one that raises is counted in ``stats()["errors"]`` and the others
   still run;
4. only then does the baseline learn from it (an allowed call: its pair, its
   transition, the values it reached), so the current event is judged against history;
5. every alert raises the agent's and the session's risk score.

The engine is pure and single-threaded: the caller serialises ``observe``.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from agentiam.core.detection.baseline import AgentState, Baselines, pair_of
from agentiam.core.detection.boundary import BoundaryDetector
from agentiam.core.detection.config import DetectionConfig
from agentiam.core.detection.detector import DetectionState, Detector
from agentiam.core.detection.escalation import EscalationDetector
from agentiam.core.detection.model import Alert, Observation
from agentiam.core.detection.observation import (
    AGENT_CREATED,
    CALL_KINDS,
    TOKEN_EXCHANGED,
    TOKEN_ISSUED,
)
from agentiam.core.detection.profile import AgentInfo
from agentiam.core.detection.risk import RiskLedger
from agentiam.core.detection.sequence import SequenceDetector
from agentiam.core.detection.unexpected_use import UnexpectedUseDetector
from agentiam.core.detection.velocity import VelocityDetector

__all__ = ["DetectionEngine", "default_detectors"]

log = logging.getLogger("agentiam.detection")

ProfileSource = Callable[[str], AgentInfo | None]
_TARGET_FIELDS = ("host", "environment", "data_domain", "tenant")


def default_detectors(config: DetectionConfig) -> list[Detector]:
    """The five families, those enabled in ``config``."""
    limits = config.limits
    out: list[Detector] = []
    if config.escalation.enabled:
        out.append(EscalationDetector(config.escalation))
    if config.unexpected_use.enabled:
        out.append(UnexpectedUseDetector(config.unexpected_use, limits.max_pairs))
    if config.sequence.enabled:
        out.append(SequenceDetector(config.sequence))
    if config.boundary.enabled:
        out.append(BoundaryDetector(config.boundary, limits.max_values))
    if config.velocity.enabled:
        out.append(VelocityDetector(config.velocity, limits.max_pairs))
    return out


def _whole(score: float) -> int:
    return min(100, math.ceil(score - 1e-9)) if score > 0.01 else 0


def _no_profiles(_agent_id: str) -> AgentInfo | None:
    return None


class DetectionEngine:
    def __init__(
        self,
        config: DetectionConfig | None = None,
        profiles: ProfileSource = _no_profiles,
        *,
        detectors: Sequence[Detector] | None = None,
    ) -> None:
        self.config = config or DetectionConfig()
        self._profiles = profiles
        self._store = Baselines(self.config.limits)
        self._state = DetectionState(self.config)
        self._detectors = list(default_detectors(self.config) if detectors is None else detectors)
        self._ledger = RiskLedger(self.config.risk)
        self._roots: OrderedDict[str, str] = OrderedDict()
        self._events = 0
        self._alerts = 0
        self._errors = 0
        self._profile_errors = 0
        self._by_detector: dict[str, int] = {}
        self._errors_by_detector: dict[str, int] = {}
        # hot-path constants
        warmup = self.config.warmup
        self._min_obs = warmup.min_observations
        self._min_span = warmup.min_span_seconds
        self._alpha = self.config.velocity.rate_alpha
        self._refresh = self.config.profile_refresh_seconds

    # -- the stream ------------------------------------------------------------------

    def observe(self, obs: Observation) -> list[Alert]:
        """Judge one observation, learn from it, and return the alerts it raised."""
        if not self.config.enabled:
            return []
        self._events += 1
        t = obs.time.timestamp()
        obs = self._resolve_session(obs)
        agent = self._store.touch(obs.agent_id, t)
        if t - agent.info_at >= self._refresh:
            self._load_profile(agent, t)
        kind = obs.kind
        call = kind in CALL_KINDS and obs.resource is not None
        state = self._state
        state.t = t
        state.agent = agent
        state.call = call
        state.warm = agent.calls >= self._min_obs and t - agent.first_seen >= self._min_span
        if call:
            agent.count_call(t, self._alpha)
            state.pair = pair_of(obs.action, obs.resource)
            state.previous = agent.last_by_session.get(obs.session)
        else:
            state.previous = None
        alerts: list[Alert] = []
        for detector in self._detectors:
            try:
                found = detector.observe(obs, state)
            except Exception:
                self._errors += 1
                name = getattr(detector, "name", type(detector).__name__)
                self._errors_by_detector[name] = self._errors_by_detector.get(name, 0) + 1
                log.warning("detector %s failed on event %s", name, obs.event_id, exc_info=True)
                continue
            if found:
                alerts.extend(found)
        self._learn(obs, agent, call)
        if alerts:
            ledger = self._ledger
            by_detector = self._by_detector
            for alert in alerts:
                ledger.add(alert.agent_id, alert.session, alert.score, alert.time)
                by_detector[alert.detector] = by_detector.get(alert.detector, 0) + 1
            self._alerts += len(alerts)
        return alerts

    def _learn(self, obs: Observation, agent: AgentState, call: bool) -> None:
        limits = self.config.limits
        state = self._state
        if call:
            pair = state.pair
            allowed = obs.allowed is True
            agent.recent.append((pair, obs.event_id, allowed))
            if allowed:
                new, kept = agent.learn_call(pair, state.previous, limits)
                if new and kept:
                    self._store.adopt(agent, pair)
            agent.remember(obs.session, pair, limits.max_sessions_per_agent)
        elif obs.kind == AGENT_CREATED:
            agent.spawns += 1
        if obs.allowed is True and obs.attributes:
            attributes = obs.attributes
            cap = limits.max_values
            for name in _TARGET_FIELDS:
                value = attributes.get(name)
                if isinstance(value, str):
                    agent.learn_value(self._values(agent, name), value, cap)

    @staticmethod
    def _values(agent: AgentState, name: str) -> dict[str, int]:
        if name == "host":
            return agent.hosts
        if name == "environment":
            return agent.environments
        if name == "data_domain":
            return agent.data_domains
        return agent.tenants

    def _resolve_session(self, obs: Observation) -> Observation:
        roots = self._roots
        kind = obs.kind
        if kind in (TOKEN_ISSUED, TOKEN_EXCHANGED):
            attributes = obs.attributes
            jti = attributes.get("jti")
            if isinstance(jti, str):
                root = attributes.get("root_jti")
                if not isinstance(root, str):
                    parent = attributes.get("parent_jti")
                    root = roots.get(parent, parent) if isinstance(parent, str) else jti
                if jti not in roots and len(roots) >= self.config.limits.max_token_roots:
                    roots.popitem(last=False)
                roots[jti] = root
        session = obs.session
        if session is not None:
            root = roots.get(session)
            if root is not None and root != session:
                return replace(obs, session=root)
        return obs

    def _load_profile(self, agent: AgentState, t: float) -> None:
        try:
            info = self._profiles(agent.agent_id)
        except Exception:
            # keep judging with what was known; try again at the next refresh
            self._profile_errors += 1
            log.warning("agent profile for %s unavailable", agent.agent_id, exc_info=True)
            agent.info_at = t
            return
        self._store.set_profile(agent, info, t)

    def invalidate(self, agent_id: str) -> None:
        """Re-read the agent's profile at its next event (its registry entry changed)."""
        agent = self._store.get(agent_id)
        if agent is not None:
            agent.info_at = float("-inf")

    # -- reading -----------------------------------------------------------------------

    def risk(self, agent_id: str, now: datetime) -> int:
        """The agent's risk score at ``now``, a whole number 0-100 (rounded up, so a
        score that has not decayed away never reads 0; the exact value is
        :meth:`RiskLedger.score`)."""
        return _whole(self._ledger.score(agent_id, now))

    def session_risk(self, session: str, now: datetime) -> int:
        """The session's risk score at ``now`` (0-100); ``session`` as in alerts, or
        any token of its delegation tree the engine has seen."""
        root = self._roots.get(session, session)
        return _whole(self._ledger.session_score(root, now))

    @property
    def ledger(self) -> RiskLedger:
        """The exact (fractional) scores."""
        return self._ledger

    def warm(self, agent_id: str, now: datetime) -> bool:
        """Whether the agent's learned baseline is past its warm-up."""
        agent = self._store.get(agent_id)
        return agent is not None and agent.warm(now.timestamp(), self._min_obs, self._min_span)

    def stats(self) -> dict[str, Any]:
        return {
            "events": self._events,
            "alerts": self._alerts,
            "alerts_by_detector": dict(self._by_detector),
            "errors": self._errors,
            "errors_by_detector": dict(self._errors_by_detector),
            "profile_errors": self._profile_errors,
            "suppressed_by_cooldown": self._state.suppressed,
            "agents": len(self._store),
            "agents_evicted": self._store.evicted,
            "peer_groups": self._store.group_count,
            "risk_agents": len(self._ledger),
            "risk_sessions": self._ledger.session_count,
            "token_roots": len(self._roots),
            "cooldowns": self._state.cooldown_entries,
        }
