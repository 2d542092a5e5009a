"""Benign traffic: sessions walked through each kind's Markov chain, laid out in time.

A session is one run of an agent: it starts in ``*start``, follows the chain's
weighted transitions and stops at ``END`` (or after :data:`MAX_CALLS`); between two
calls it waits :data:`CALL_GAP` seconds (uniform). A research session may hand its
summarising to a just-in-time sub-agent (``delegated``). The warm-up history is every
agent's sessions over a past period, spaced by exponential gaps around the agent's
own mean (so rates vary per agent), merged into one timeline.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from agentiam.core.detection.simulation.world import END, KINDS, START, AgentSpec, Call

__all__ = ["CALL_GAP", "MAX_CALLS", "Planned", "Session", "history", "session"]

MAX_CALLS = 12
CALL_GAP = (0.3, 2.0)
SPAWN_PROBABILITY = 0.3
_DELEGATED = frozenset({"summarize", "notes_write"})


@dataclass(frozen=True, slots=True)
class Session:
    """``calls[i]`` is made ``gaps[i]`` seconds after the previous one; ``delegated[i]``
    when the session's sub-agent makes it (``spawn``: the session spawns one first)."""

    agent: str
    calls: tuple[Call, ...]
    gaps: tuple[float, ...]
    delegated: tuple[bool, ...]
    spawn: bool = False


def session(spec: AgentSpec, rng: random.Random) -> Session:
    kind = KINDS[spec.kind]
    spawn = kind.spawns and rng.random() < SPAWN_PROBABILITY
    calls: list[Call] = []
    gaps: list[float] = []
    delegated: list[bool] = []
    state = kind.next(START, rng)
    while state != END and len(calls) < MAX_CALLS:
        calls.append(kind.steps[state].call(spec.environment))
        gaps.append(rng.uniform(*CALL_GAP) if calls[:-1] else 0.0)
        delegated.append(spawn and state in _DELEGATED)
        state = kind.next(state, rng)
    spawn = spawn and any(delegated)
    return Session(spec.name, tuple(calls), tuple(gaps), tuple(delegated), spawn)


@dataclass(frozen=True, slots=True, order=True)
class Planned:
    """One thing to do at ``at`` (epoch seconds): call ``index`` of the session, or
    (``index == -1``) spawn the session's sub-agent."""

    at: float
    seq: int
    session: Session
    index: int


def _agent_timeline(
    spec: AgentSpec, rng: random.Random, start: float, end: float, seq: Iterator[int]
) -> list[Planned]:
    out: list[Planned] = []
    t = start + rng.uniform(0, spec.session_gap)
    while t < end:
        s = session(spec, rng)
        at = t
        if s.spawn:
            out.append(Planned(at, next(seq), s, -1))
        for i, gap in enumerate(s.gaps):
            at += gap
            out.append(Planned(at, next(seq), s, i))
        t = at + rng.expovariate(1.0 / spec.session_gap)
    return [p for p in out if p.at < end]


def history(
    specs: Sequence[AgentSpec], rng: random.Random, start: float, end: float
) -> list[Planned]:
    """Every agent's sessions between ``start`` and ``end``, in time order."""
    counter = iter(range(10**9))
    timelines = [_agent_timeline(s, rng, start, end, counter) for s in specs]
    return list(heapq.merge(*timelines))
