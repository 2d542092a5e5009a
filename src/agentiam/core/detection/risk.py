"""Continuous risk scores: one per agent and one per session, 0 to 100.

An alert of score ``a`` raises a score ``s`` (first decayed to the alert's time) to::

    s + a · (100 - s) / 100

so scores combine like independent probabilities: the total approaches but never
exceeds 100, and a second alert adds less than the first. Between alerts a score decays
exponentially, ``s · 2^(-Δt / half_life)`` (default half-life 15 minutes): an agent that
stops misbehaving earns its way back to 0. Time is the events' time; nothing here reads
a clock.

Memory is bounded: at most ``max_agents`` agent scores and ``max_sessions`` session
scores are kept, the least recently raised evicted first (an evicted score reads 0, the
same as one that decayed away).
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime

from agentiam.core.detection.config import RiskConfig

__all__ = ["RiskLedger", "combine"]


def combine(score: float, points: float) -> float:
    """``score`` raised by an alert worth ``points`` (both 0-100): never above 100."""
    points = min(100.0, max(0.0, points))
    return min(100.0, score + points * (100.0 - score) / 100.0)


class RiskLedger:
    __slots__ = ("_agents", "_half_life", "_sessions", "config")

    def __init__(self, config: RiskConfig | None = None) -> None:
        self.config = config or RiskConfig()
        self._half_life = self.config.half_life_seconds
        self._agents: OrderedDict[str, list[float]] = OrderedDict()
        self._sessions: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._agents)

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    def add(self, agent_id: str, session: str | None, points: float, when: datetime) -> None:
        """Raise the agent's (and the session's) score by an alert at ``when``."""
        t = when.timestamp()
        self._raise(self._agents, agent_id, points, t, self.config.max_agents)
        if session is not None:
            self._raise(self._sessions, session, points, t, self.config.max_sessions)

    def score(self, agent_id: str, now: datetime) -> float:
        """The agent's score at ``now`` (0-100, decayed)."""
        return self._read(self._agents, agent_id, now.timestamp())

    def session_score(self, session: str, now: datetime) -> float:
        return self._read(self._sessions, session, now.timestamp())

    def top(
        self, now: datetime, *, minimum: float = 1.0, limit: int = 100
    ) -> list[tuple[str, float]]:
        """The agents scoring at least ``minimum`` at ``now``, highest first."""
        t = now.timestamp()
        scored = [(agent, self._decayed(entry, t)) for agent, entry in self._agents.items()]
        ranked = sorted((p for p in scored if p[1] >= minimum), key=lambda p: (-p[1], p[0]))
        return [(agent, round(score, 3)) for agent, score in ranked[:limit]]

    def _decayed(self, entry: list[float], t: float) -> float:
        elapsed = t - entry[1]
        if elapsed <= 0:
            return entry[0]  # an out-of-order event does not raise the past
        return float(entry[0] * 2.0 ** (-elapsed / self._half_life))

    def _raise(
        self, table: OrderedDict[str, list[float]], key: str, points: float, t: float, cap: int
    ) -> None:
        entry = table.get(key)
        if entry is None:
            if len(table) >= cap:
                table.popitem(last=False)
            table[key] = [combine(0.0, points), t]
            return
        table.move_to_end(key)
        entry[0] = combine(self._decayed(entry, t), points)
        entry[1] = max(entry[1], t)

    def _read(self, table: OrderedDict[str, list[float]], key: str, t: float) -> float:
        entry = table.get(key)
        if entry is None:
            return 0.0
        return round(self._decayed(entry, t), 3)
