"""The attack scenarios (issue 8, item 5): what each one does, as a plan of steps.

Each scenario turns one attacker agent (an :class:`~.world.AgentSpec` that did only
benign work until then) into a plan: a list of :class:`AttackStep` with the delay
before each. The runner carries the steps out through the real decision, token and
audit paths; the attacker's own benign sessions stop for the attack.

- ``runaway_loop``: the same call as fast as the agent's loop goes (a tool latency of
  :data:`LOOP_LATENCY`), up to :data:`LOOP_CALLS` calls or until refused 10 times in
  a row.
- ``exfiltration``: a prompt-injected agent reads data sets of a domain it never
  reads, then posts to an external host it never called.
- ``privilege_probing``: token requests for scopes it is not entitled to, and calls
  on tools of other domains and deletes, which policy denies.
- ``lateral_movement``: a staging agent calls the production copies of its own tools
  (policy permits them: the permits do not pin the environment).
- ``stolen_token``: the agent's real DPoP-bound token is replayed by a thief holding
  a different key, as the actor token of a token exchange.
- ``slow_misuse``: three permitted but never-used actions in its own domain and
  environment, spread out among benign traffic. Nothing else is unusual.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agentiam.core.detection.simulation.world import (
    EXFIL_HOSTS,
    KINDS,
    SENSITIVE_DATA,
    AgentSpec,
    Call,
)

__all__ = [
    "LOOP_CALLS",
    "LOOP_LATENCY",
    "SCENARIOS",
    "AttackStep",
    "Scenario",
    "TokenAsk",
    "TokenReplay",
]

LOOP_CALLS = 400
LOOP_LATENCY = 0.005
LOOP_GIVE_UP = 10  # refusals in a row after which the loop stops


@dataclass(frozen=True, slots=True)
class TokenAsk:
    """A ``client_credentials`` request (a real assertion and DPoP proof) for
    ``scope``."""

    scope: str


@dataclass(frozen=True, slots=True)
class TokenReplay:
    """The agent's current token, presented by a thief with its own DPoP key as the
    actor token of an RFC 8693 exchange."""


@dataclass(frozen=True, slots=True)
class AttackStep:
    delay: float  # seconds after the previous step
    op: Call | TokenAsk | TokenReplay
    repeat: int = 1  # a loop: the same op this many times, LOOP_LATENCY apart


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    summary: str
    plan: Callable[[AgentSpec, int, random.Random], list[AttackStep]]
    candidate_env: str | None = None  # every candidate agent in this environment
    # seconds between two instances' starts; None: the runner's default
    stagger: float | None = None


def _own(spec: AgentSpec, step: str) -> Call:
    return KINDS[spec.kind].steps[step].call(spec.environment)


def _runaway(spec: AgentSpec, _i: int, rng: random.Random) -> list[AttackStep]:
    kind = KINDS[spec.kind]
    step = rng.choice(sorted(k for k, s in kind.steps.items() if not s.external))
    return [AttackStep(0.0, _own(spec, step), repeat=LOOP_CALLS)]


def _exfiltration(spec: AgentSpec, i: int, rng: random.Random) -> list[AttackStep]:
    data = SENSITIVE_DATA[i % len(SENSITIVE_DATA)]
    host = EXFIL_HOSTS[(i // len(SENSITIVE_DATA) + i) % len(EXFIL_HOSTS)]
    api = host.split(".")[0]
    reads = [
        AttackStep(
            0.0 if n == 0 else rng.uniform(0.2, 0.6),
            Call("read", "DataSet", f"{spec.environment}:{data}"),
        )
        for n in range(3)
    ]
    posts = [
        AttackStep(rng.uniform(0.2, 0.6), Call("POST", "Endpoint", f"{api}:{host}/upload"))
        for _ in range(2)
    ]
    return reads + posts


def _probing(spec: AgentSpec, _i: int, rng: random.Random) -> list[AttackStep]:
    others = [k for k in KINDS.values() if k.name != spec.kind]
    steps: list[AttackStep] = [
        AttackStep(0.0, TokenAsk("tools:read tools:admin")),
        AttackStep(rng.uniform(0.2, 0.5), TokenAsk("payments:write")),
    ]
    for n in range(3):
        kind = others[n % len(others)]
        tool = rng.choice(kind.tools())
        steps.append(
            AttackStep(
                rng.uniform(0.2, 0.5), Call("invoke_tool", "Tool", f"{spec.environment}:{tool}")
            )
        )
    own = KINDS[spec.kind]
    data = next(s for s in own.steps.values() if s.type == "DataSet").name
    steps.append(
        AttackStep(rng.uniform(0.2, 0.5), Call("delete", "DataSet", f"{spec.environment}:{data}"))
    )
    steps.append(AttackStep(rng.uniform(0.2, 0.5), TokenAsk("admin")))
    return steps


def _lateral(spec: AgentSpec, _i: int, rng: random.Random) -> list[AttackStep]:
    kind = KINDS[spec.kind]
    names = [s for s in kind.steps.values() if not s.external]
    return [
        AttackStep(0.0 if n == 0 else rng.uniform(0.2, 0.6), rng.choice(names).call("production"))
        for n in range(4)
    ]


def _stolen(_spec: AgentSpec, _i: int, rng: random.Random) -> list[AttackStep]:
    return [AttackStep(0.0 if n == 0 else rng.uniform(0.2, 0.6), TokenReplay()) for n in range(3)]


def _slow(spec: AgentSpec, _i: int, rng: random.Random) -> list[AttackStep]:
    kind = KINDS[spec.kind]
    rare = Call("invoke_tool", "Tool", f"{spec.environment}:{kind.rare[0]}")
    return [AttackStep(0.0 if n == 0 else rng.uniform(4.0, 7.0), rare) for n in range(3)]


SCENARIOS: Mapping[str, Scenario] = {
    s.name: s
    for s in (
        # one runaway at a time: the target is about one agent's loop, not about
        # many loops saturating the decision path together
        Scenario("runaway_loop", "the same tool call in a tight loop", _runaway, stagger=1.5),
        Scenario(
            "exfiltration",
            "reads a data domain it never reads, then posts to a new external host",
            _exfiltration,
        ),
        Scenario(
            "privilege_probing",
            "token requests beyond its entitlements and calls policy denies",
            _probing,
        ),
        Scenario(
            "lateral_movement",
            "a staging agent calls production copies of its tools",
            _lateral,
            candidate_env="staging",
        ),
        Scenario(
            "stolen_token",
            "its DPoP-bound token replayed with another key in a token exchange",
            _stolen,
        ),
        Scenario(
            "slow_misuse",
            "three permitted, never-used actions of its own domain, seconds apart",
            _slow,
        ),
    )
}
