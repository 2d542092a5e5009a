"""Impossible or hallucinated sequences (docs/detection.md, "Sequences").

Per session, each call follows the session's previous call; a step is a call's
``(action, resource)`` pair (resource ids folded as the baseline folds them).

- A declared ``expectations.workflow`` is authoritative: its steps are named
  ``action@Type::id`` or just ``action``. A transition it does not allow (or a session
  starting with a step not in ``"*start"``) raises
  ``sequence.workflow_violation`` (HIGH) from the first call; the learned model is then
  not consulted.
- Otherwise, once warm, the agent's first-order Markov model gives the transition's
  probability with additive (Laplace) smoothing::

      P(b | a) = (n(a→b) + k) / (n(a→·) + k·V)

  where ``k`` is ``smoothing`` and ``V`` the number of distinct pairs the agent has
  used. When ``n(a→·)`` is at least ``min_support`` and ``P`` is below
  ``min_probability``, ``sequence.improbable_transition`` (MEDIUM) is raised. A pair
  the agent never used is left to the unexpected-use rule (one incident, one alert).
"""

from __future__ import annotations

from agentiam.core.detection.config import SequenceConfig
from agentiam.core.detection.detector import DetectionState
from agentiam.core.detection.model import Alert, Category, Observation, Severity

__all__ = ["SequenceDetector"]


class SequenceDetector:
    name = "impossible_sequence"

    def __init__(self, config: SequenceConfig) -> None:
        self.config = config

    def observe(self, obs: Observation, state: DetectionState) -> list[Alert]:
        if not state.call:
            return []
        agent = state.agent
        previous = state.previous
        pair = state.pair
        expect = agent.expect
        if expect is not None and expect.declares_workflow:
            if expect.allows_transition(previous, pair):
                return []
            step = _label(pair)
            return state.alert(
                obs,
                "sequence.workflow_violation",
                Category.SEQUENCE,
                Severity.HIGH,
                (previous, pair),
                (
                    f"{step} may not start a session"
                    if previous is None
                    else f"{step} may not follow {_label(previous)} in the declared workflow"
                ),
                {
                    "previous": _label(previous) if previous is not None else None,
                    "call": step,
                    "allowed_next": sorted(expect.next_steps(previous) or ())[:20],
                },
            )
        if previous is None or not state.warm:
            return []
        pairs = agent.pairs
        if pair not in pairs:
            return []
        total = agent.outgoing.get(previous, 0)
        if total < self.config.min_support:
            return []
        count = agent.transitions.get((previous, pair), 0)
        k = self.config.smoothing
        probability = (count + k) / (total + k * len(pairs))
        if probability >= self.config.min_probability:
            return []
        return state.alert(
            obs,
            "sequence.improbable_transition",
            Category.SEQUENCE,
            Severity.MEDIUM,
            (previous, pair),
            f"{_label(pair)} after {_label(previous)} is improbable for this agent "
            f"(p={probability:.4f})",
            {
                "previous": _label(previous),
                "call": _label(pair),
                "probability": round(probability, 6),
                "min_probability": self.config.min_probability,
                "transitions_seen": count,
                "transitions_from_previous": total,
            },
        )


def _label(pair: tuple[str, str]) -> str:
    return f"{pair[0]}@{pair[1]}"
