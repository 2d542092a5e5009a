"""What detection knows about an agent from the registry, and its declared
expectations compiled for the hot path.

:class:`AgentInfo` is the registry's view (the detection service builds one per agent,
:meth:`AgentInfo.of` from an :class:`~agentiam.core.identities.models.Agent`).
:class:`CompiledExpectations` turns the declared patterns into matchers once, so an
event costs a dictionary look-up, not a pattern match (results are memoised, bounded).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from agentiam.core.detection.expectations import WORKFLOW_START
from agentiam.core.detection.model import Expectations
from agentiam.core.identities.models import Agent

__all__ = ["AgentInfo", "CompiledExpectations", "PatternSet"]
_MEMO = 1024  # results remembered per matcher
_GROUP_TEXT = 80  # peer group names are cut to this length


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """One agent as the registry describes it: who owns it, what it is for, where it
    runs, its labels, its parent (a sub-agent) and what its owner declared."""

    agent_id: str
    owners: tuple[str, ...] = ()
    purpose: str = ""
    environment: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    parent_id: str | None = None
    expectations: Expectations = field(default_factory=Expectations)

    @classmethod
    def of(cls, agent: Agent) -> AgentInfo:
        return cls(
            agent_id=agent.id,
            owners=tuple(agent.owners),
            purpose=agent.purpose,
            environment=agent.environment or None,
            labels=dict(agent.labels),
            parent_id=agent.parent_id,
            expectations=agent.expectations,
        )

    def peer_groups(self, limit: int) -> tuple[str, ...]:
        """The peer groups this agent belongs to: one per owner, its purpose, one per
        label ``key=value`` (at most ``limit``, in that order)."""
        groups: list[str] = [f"owner:{o[:_GROUP_TEXT]}" for o in self.owners]
        purpose = " ".join(self.purpose.lower().split())
        if purpose:
            groups.append(f"purpose:{purpose[:_GROUP_TEXT]}")
        groups.extend(f"label:{k[:_GROUP_TEXT]}={v[:_GROUP_TEXT]}" for k, v in self.labels.items())
        return tuple(dict.fromkeys(groups))[:limit]


class PatternSet:
    """Glob patterns where ``*`` matches any run of characters other than ``@`` (one
    part of ``action@Type::id``). Exact patterns are a set look-up; the rest are one
    compiled alternation; answers are memoised (at most a fixed number)."""

    __slots__ = ("_exact", "_memo", "_regex")

    def __init__(self, patterns: Iterable[str]) -> None:
        exact: set[str] = set()
        wild: list[str] = []
        for p in patterns:
            if "*" in p:
                wild.append("[^@]*".join(re.escape(part) for part in p.split("*")))
            else:
                exact.add(p)
        self._exact = frozenset(exact)
        self._regex = re.compile("^(?:" + "|".join(wild) + ")$") if wild else None
        self._memo: dict[str, bool] = {}

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, str):
            return False
        if value in self._exact:
            return True
        if self._regex is None:
            return False
        hit = self._memo.get(value)
        if hit is None:
            hit = self._regex.match(value) is not None
            if len(self._memo) >= _MEMO:
                self._memo.clear()
            self._memo[value] = hit
        return hit


class CompiledExpectations:
    """:class:`Expectations` as matchers. Each ``declares_*`` says whether the field
    was declared at all (an empty field declares nothing)."""

    __slots__ = (
        "_actions",
        "data_domains",
        "declared",
        "environments",
        "hosts",
        "max_calls_per_minute",
        "max_spawns_per_hour",
        "source",
        "tenants",
        "workflow",
        "workflow_start",
    )

    def __init__(self, expectations: Expectations) -> None:
        self.source = expectations
        self.declared = not expectations.empty
        # "action" alone covers every resource; "action@res" one resource pattern
        self._actions = (
            PatternSet(a if "@" in a else f"{a}@*" for a in expectations.actions)
            if expectations.actions
            else None
        )
        self.hosts = (
            PatternSet(h.lower() for h in expectations.hosts) if expectations.hosts else None
        )
        self.environments = frozenset(expectations.environments) or None
        self.data_domains = frozenset(expectations.data_domains) or None
        self.tenants = frozenset(expectations.tenants) or None
        self.max_calls_per_minute = expectations.max_calls_per_minute
        self.max_spawns_per_hour = expectations.max_spawns_per_hour
        flow = {k: frozenset(v) for k, v in expectations.workflow.items()}
        self.workflow_start = flow.pop(WORKFLOW_START, None)
        self.workflow = flow

    @property
    def declares_actions(self) -> bool:
        return self._actions is not None

    def allows_action(self, action: str, resource: str | None) -> bool:
        """Whether ``action`` on ``resource`` is declared (True when nothing is)."""
        if self._actions is None:
            return True
        return f"{action}@{resource or ''}" in self._actions

    @property
    def declares_workflow(self) -> bool:
        return bool(self.workflow) or self.workflow_start is not None

    def next_steps(self, previous: tuple[str, str] | None) -> frozenset[str] | None:
        """What the declared workflow lets follow the call ``previous`` (an
        ``(action, resource)`` pair; None: the start of a session), or None when it
        does not constrain it. A step is named ``action@Type::id`` or just ``action``;
        the more specific name wins."""
        if previous is None:
            return self.workflow_start
        allowed = self.workflow.get(f"{previous[0]}@{previous[1]}")
        return allowed if allowed is not None else self.workflow.get(previous[0])

    def allows_transition(self, previous: tuple[str, str] | None, pair: tuple[str, str]) -> bool:
        """Whether the declared workflow lets the call ``pair`` follow ``previous``.
        A step the workflow does not list may be followed by anything."""
        allowed = self.next_steps(previous)
        return allowed is None or pair[0] in allowed or f"{pair[0]}@{pair[1]}" in allowed
