"""What a detector is, and the per-observation view the engine hands it.

A detector is a small pure object: a ``name`` (its family), its config, and
``observe(obs, state) -> list[Alert]``. It reads the agent's learned state and the
registry's view through :class:`DetectionState`, and keeps any short-term state of its
own in ``state.agent.scratch`` (evicted with the agent, so bounded). It never learns:
the engine updates the baseline after every detector has judged the observation.

Alerts are made with :meth:`DetectionState.alert`, which applies the cool-down: the
same rule for the same agent and key raises at most once per ``cooldown_seconds``
(one incident is one alert; an incident still going on after the cool-down raises
again).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Mapping
from typing import Any, Protocol

from agentiam.core.detection.baseline import AgentState, Pair
from agentiam.core.detection.config import DetectionConfig
from agentiam.core.detection.model import (
    MAX_EVIDENCE_EVENTS,
    Alert,
    Category,
    Evidence,
    Observation,
    Severity,
)
from agentiam.core.ids import new_id

__all__ = ["DetectionState", "Detector"]


class Detector(Protocol):
    name: str

    def observe(self, obs: Observation, state: DetectionState) -> list[Alert]: ...


class DetectionState:
    """The engine's view of one observation, reused from one to the next (no
    allocation per event): the agent's state, whether its baseline is warm, whether
    the observation is a call, its baseline pair, and the session's previous call (pair)."""

    __slots__ = (
        "_cooldowns",
        "agent",
        "call",
        "config",
        "pair",
        "previous",
        "suppressed",
        "t",
        "warm",
    )

    def __init__(self, config: DetectionConfig) -> None:
        self.config = config
        self._cooldowns: OrderedDict[Hashable, float] = OrderedDict()
        self.suppressed = 0
        self.t = 0.0
        self.warm = False
        self.call = False
        self.pair: Pair = ("", "")
        self.previous: Pair | None = None
        self.agent: AgentState = AgentState("", 0.0)

    @property
    def cooldown_entries(self) -> int:
        return len(self._cooldowns)

    def alert(
        self,
        obs: Observation,
        detector: str,
        category: Category,
        severity: Severity,
        key: Hashable,
        summary: str,
        facts: Mapping[str, Any],
        events: tuple[str, ...] = (),
    ) -> list[Alert]:
        """``[alert]``, or ``[]`` within the cool-down of the same (detector, agent,
        key). The observation's own event is always the last evidence event."""
        slot = (detector, obs.agent_id, key)
        last = self._cooldowns.get(slot)
        t = self.t
        if last is not None and t - last < self.config.cooldown_seconds:
            self.suppressed += 1
            return []
        cooldowns = self._cooldowns
        if last is not None:
            cooldowns.move_to_end(slot)
        elif len(cooldowns) >= self.config.limits.max_cooldowns:
            cooldowns.popitem(last=False)
        cooldowns[slot] = t
        if not events or events[-1] != obs.event_id:
            events = (*events, obs.event_id)
        return [
            Alert(
                alert_id=new_id("alert", now_ms=int(t * 1000)),
                detector=detector,
                category=category,
                severity=severity,
                agent_id=obs.agent_id,
                time=obs.time,
                score=self.config.scores.of(severity),
                evidence=Evidence(summary, dict(facts), events[-MAX_EVIDENCE_EVENTS:]),
                session=obs.session,
                initiating_human=obs.initiating_human,
            )
        ]
