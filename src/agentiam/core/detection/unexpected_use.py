"""Unexpected tool and API use (docs/detection.md, "Unexpected use").

For every call (a decision, or a refusal naming a resource):

- declared ``expectations.actions``: a call outside them raises
  ``unexpected_use.undeclared`` (HIGH) from the first call, with no warm-up; a call
  inside them is never unexpected, whatever the baseline says;
- otherwise, once the agent's baseline is warm: an ``(action, resource)`` pair it has
  never used, or used in less than ``rare_frequency`` of its calls, raises
  ``unexpected_use.new_pair`` / ``unexpected_use.rare_pair``. Scored against the peer
  groups too: when at least ``peer_common_fraction`` of the other members of one of its
  groups (with at least ``peer_min_agents`` others) use the pair, it is LOW (new to this
  agent, normal for its kind); else MEDIUM.

A pair the agent's profile could not remember (the ``max_pairs`` cap is reached) is not
judged: it would look new every time.
"""

from __future__ import annotations

from agentiam.core.detection.config import UnexpectedUseConfig
from agentiam.core.detection.detector import DetectionState
from agentiam.core.detection.model import Alert, Category, Observation, Severity

__all__ = ["UnexpectedUseDetector"]


class UnexpectedUseDetector:
    name = "unexpected_use"

    def __init__(self, config: UnexpectedUseConfig, max_pairs: int) -> None:
        self.config = config
        self._max_pairs = max_pairs

    def observe(self, obs: Observation, state: DetectionState) -> list[Alert]:
        if not state.call:
            return []
        agent = state.agent
        expect = agent.expect
        pair = state.pair
        if expect is not None and expect.declares_actions:
            if expect.allows_action(obs.action, obs.resource):
                return []
            return state.alert(
                obs,
                "unexpected_use.undeclared",
                Category.UNEXPECTED_USE,
                Severity.HIGH,
                pair,
                f"{obs.action} on {obs.resource} is outside the declared actions",
                {
                    "action": obs.action,
                    "resource": obs.resource,
                    "declared": list(expect.source.actions[:20]),
                },
            )
        if not state.warm:
            return []
        count = agent.pairs.get(pair, 0)
        if count == 0 and len(agent.pairs) >= self._max_pairs:
            return []  # the profile is full: unknown is not evidence of new
        frequency = count / agent.calls
        if count and frequency >= self.config.rare_frequency:
            return []
        peers, adopters, fraction = self._peers(state, 1 if count else 0)
        common = fraction >= self.config.peer_common_fraction and peers > 0
        return state.alert(
            obs,
            "unexpected_use.rare_pair" if count else "unexpected_use.new_pair",
            Category.UNEXPECTED_USE,
            Severity.LOW if common else Severity.MEDIUM,
            pair,
            (
                f"{obs.action} on {obs.resource} is "
                + ("rare" if count else "new")
                + " for this agent"
                + (", but common among its peers" if common else " and for its peers")
            ),
            {
                "action": obs.action,
                "resource": obs.resource,
                "pair": f"{pair[0]}@{pair[1]}",
                "uses": count,
                "calls": agent.calls,
                "frequency": round(frequency, 6),
                "rare_frequency": self.config.rare_frequency,
                "peer_agents": peers,
                "peer_adopters": adopters,
                "peer_fraction": round(fraction, 4),
                "peer_common_fraction": self.config.peer_common_fraction,
            },
        )

    def _peers(self, state: DetectionState, own: int) -> tuple[int, int, float]:
        """Of the agent's groups with enough other members, the one where the pair is
        most common: (other members, how many used it, the fraction). ``own`` is 1
        when the agent itself is among the adopters."""
        best = (0, 0, 0.0)
        agent_id = state.agent.agent_id
        for group in state.agent.groups:
            others = len(group.members) - (1 if agent_id in group.members else 0)
            if others < self.config.peer_min_agents:
                continue
            adopters = max(0, group.adopters(state.pair) - own)
            fraction = min(1.0, adopters / others)
            if fraction > best[2] or best[0] == 0:
                best = (others, adopters, fraction)
        return best
