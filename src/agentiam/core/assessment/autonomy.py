"""Inventory and the Autonomy Test.

Every AI system in scope is an :class:`AISystem`: the registry's agents (the collector
builds them with :func:`registry_system`) and systems declared by hand
(:func:`load_declared_systems`, from the parsed ``systems:`` list of an inventory
file). The Autonomy Test asks six yes/no questions of each (:class:`AutonomyCriteria`)
and classifies it (:func:`classify`):

* **not agentic**: none of the six holds;
* **assistive**: some hold, but it does not both act on external systems and chain
  steps without a person approving each, so a person stays in the loop;
* **agentic**: it acts on external systems and chains steps on its own;
* **highly autonomous**: agentic, and it also spawns sub-agents or runs over long
  horizons, so its actions compound out of sight.

An inventory holding any agentic (or highly autonomous) system is assessed on the
agent-specific questions too (:func:`inventory_is_agentic`; ``agentic_only`` in the
bank). Where the registry cannot know an answer, :func:`registry_system` assumes the
riskier one, so an unknown never shrinks the assessment.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

from agentiam.core.assessment._parse import Reader
from agentiam.core.identities.models import AutonomyLevel

__all__ = [
    "CRITERIA_QUESTIONS",
    "MAX_SYSTEMS",
    "AISystem",
    "AutonomyClass",
    "AutonomyCriteria",
    "Classification",
    "SystemSource",
    "classify",
    "inventory_is_agentic",
    "load_declared_systems",
    "registry_system",
]

MAX_SYSTEMS = 10_000
_R = Reader("See docs/assessment.md#inventory-and-the-autonomy-test for the inventory format.")


class AutonomyClass(StrEnum):
    NOT_AGENTIC = "not_agentic"
    ASSISTIVE = "assistive"
    AGENTIC = "agentic"
    HIGHLY_AUTONOMOUS = "highly_autonomous"

    @property
    def is_agentic(self) -> bool:
        return self in (AutonomyClass.AGENTIC, AutonomyClass.HIGHLY_AUTONOMOUS)


@dataclass(frozen=True, slots=True)
class AutonomyCriteria:
    """The six questions of the Autonomy Test (field order is the test's order)."""

    acts_on_external_systems: bool
    chains_steps_unapproved: bool
    holds_credentials: bool
    acts_on_untrusted_input: bool
    spawns_sub_agents: bool
    runs_long_horizons: bool


CRITERIA_QUESTIONS: dict[str, str] = {
    "acts_on_external_systems": "It acts on external systems (writes, sends, buys, deploys).",
    "chains_steps_unapproved": "It chains several steps without a person approving each one.",
    "holds_credentials": "It holds credentials that grant access to other systems.",
    "acts_on_untrusted_input": "It acts on input an outsider can influence (mail, web, files).",
    "spawns_sub_agents": "It starts sub-agents or delegates work to other agents.",
    "runs_long_horizons": "It runs over long horizons (hours or more, or across sessions).",
}


@dataclass(frozen=True, slots=True)
class Classification:
    """The class and the reasons for it: the criteria that hold, in the test's words."""

    autonomy: AutonomyClass
    reasons: tuple[str, ...]


def classify(criteria: AutonomyCriteria) -> Classification:
    """Apply the Autonomy Test (rules in the module docstring)."""
    held = [f.name for f in fields(criteria) if getattr(criteria, f.name)]
    reasons = tuple(CRITERIA_QUESTIONS[name] for name in held)
    if not held:
        return Classification(AutonomyClass.NOT_AGENTIC, ("None of the six criteria holds.",))
    if not (criteria.acts_on_external_systems and criteria.chains_steps_unapproved):
        return Classification(
            AutonomyClass.ASSISTIVE,
            (*reasons, "It does not both act on external systems and chain steps alone."),
        )
    if criteria.spawns_sub_agents or criteria.runs_long_horizons:
        return Classification(AutonomyClass.HIGHLY_AUTONOMOUS, reasons)
    return Classification(AutonomyClass.AGENTIC, reasons)


class SystemSource(StrEnum):
    REGISTRY = "registry"  # an agent registered in the control plane
    DECLARED = "declared"  # declared by hand in the inventory file


@dataclass(frozen=True, slots=True)
class AISystem:
    """One AI system in scope of the assessment."""

    id: str
    name: str
    source: SystemSource
    criteria: AutonomyCriteria
    owner: str | None = None
    description: str = ""

    @property
    def classification(self) -> Classification:
        return classify(self.criteria)


def inventory_is_agentic(systems: Iterable[AISystem]) -> bool:
    """Whether the agent-specific (``agentic_only``) questions are in scope."""
    return any(system.classification.autonomy.is_agentic for system in systems)


_NEEDS_NO_PERSON_PER_STEP = frozenset(
    {AutonomyLevel.APPROVE_RISKY, AutonomyLevel.MONITORED, AutonomyLevel.UNSUPERVISED}
)


def registry_system(
    *,
    agent_id: str,
    name: str,
    autonomy: AutonomyLevel,
    has_children: bool,
    owner: str | None = None,
    purpose: str = "",
    acts_on_untrusted_input: bool = True,
    runs_long_horizons: bool = True,
) -> AISystem:
    """The inventory entry of a registry agent.

    What the registry knows it uses: a registered agent holds credentials (its key and
    tokens) and calls tools, so it acts on external systems; its autonomy level says
    whether a person approves each step (``suggest`` and ``approve_each``: yes); it
    spawns sub-agents when it has children. Untrusted input and long horizons are not
    recorded, so they default to yes (fail closed: the agent-specific practices stay
    in scope) unless the caller knows better.
    """
    criteria = AutonomyCriteria(
        acts_on_external_systems=autonomy is not AutonomyLevel.SUGGEST,
        chains_steps_unapproved=autonomy in _NEEDS_NO_PERSON_PER_STEP,
        holds_credentials=True,
        acts_on_untrusted_input=acts_on_untrusted_input,
        spawns_sub_agents=has_children,
        runs_long_horizons=runs_long_horizons,
    )
    return AISystem(agent_id, name, SystemSource.REGISTRY, criteria, owner, purpose)


_SYSTEM_REQUIRED = frozenset({"id", "name", *CRITERIA_QUESTIONS})
_SYSTEM_OPTIONAL = frozenset({"owner", "description"})


def load_declared_systems(data: Any) -> tuple[AISystem, ...]:
    """Systems declared by hand: a parsed list of mappings, each with ``id``, ``name``,
    every one of the six criteria as true/false (none may be left out), and optionally
    ``owner`` and ``description``. Duplicate ids and unknown keys are refused."""
    systems: dict[str, AISystem] = {}
    for i, raw in enumerate(_R.sequence(data, "systems", limit=MAX_SYSTEMS)):
        where = f"systems[{i}]"
        item = _R.mapping(raw, where, required=_SYSTEM_REQUIRED, optional=_SYSTEM_OPTIONAL)
        system_id = _R.text(item["id"], f"{where}: id", limit=128)
        where = f"system {system_id}"
        if system_id in systems:
            raise _R.fail(where, "duplicate id")
        criteria = AutonomyCriteria(
            **{name: _R.flag(item[name], f"{where}: {name}") for name in CRITERIA_QUESTIONS}
        )
        owner = item.get("owner")
        systems[system_id] = AISystem(
            system_id,
            _R.text(item["name"], f"{where}: name", limit=200),
            SystemSource.DECLARED,
            criteria,
            None if owner is None else _R.text(owner, f"{where}: owner", limit=200),
            _R.text(item["description"], f"{where}: description") if "description" in item else "",
        )
    return tuple(systems.values())
