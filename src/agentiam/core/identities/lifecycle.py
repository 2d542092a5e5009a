"""The agent lifecycle as a pure state machine.

    pending ──activate──▶ active ──suspend──▶ suspended
                           ▲                     │
                           └───────resume────────┘
    any non-terminal state ──decommission──▶ decommissioned (terminal)

Decommissioning from ``pending`` or ``active`` is allowed as well as from
``suspended``: an operator must be able to retire an agent at once without first
suspending it. ``decommissioned`` is terminal; nothing leaves it.
"""

from __future__ import annotations

from enum import StrEnum

from agentiam.errors import InvalidTransition

__all__ = ["AgentStatus", "LifecycleAction", "next_status"]


class AgentStatus(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    DECOMMISSIONED = "decommissioned"


class LifecycleAction(StrEnum):
    ACTIVATE = "activate"
    SUSPEND = "suspend"
    RESUME = "resume"
    DECOMMISSION = "decommission"


_TRANSITIONS: dict[tuple[AgentStatus, LifecycleAction], AgentStatus] = {
    (AgentStatus.PENDING, LifecycleAction.ACTIVATE): AgentStatus.ACTIVE,
    (AgentStatus.ACTIVE, LifecycleAction.SUSPEND): AgentStatus.SUSPENDED,
    (AgentStatus.SUSPENDED, LifecycleAction.RESUME): AgentStatus.ACTIVE,
    (AgentStatus.PENDING, LifecycleAction.DECOMMISSION): AgentStatus.DECOMMISSIONED,
    (AgentStatus.ACTIVE, LifecycleAction.DECOMMISSION): AgentStatus.DECOMMISSIONED,
    (AgentStatus.SUSPENDED, LifecycleAction.DECOMMISSION): AgentStatus.DECOMMISSIONED,
}


def next_status(current: AgentStatus, action: LifecycleAction) -> AgentStatus:
    """Return the status ``action`` leads to from ``current``.

    Raises :class:`InvalidTransition` (HTTP 409) for every pair not in the table.
    """
    try:
        return _TRANSITIONS[(current, action)]
    except KeyError:
        allowed = sorted(a.value for (s, a) in _TRANSITIONS if s is current)
        raise InvalidTransition(
            f"cannot {action.value} an agent that is {current.value}",
            hint=(
                f"From {current.value} you can: {', '.join(allowed)}."
                if allowed
                else "A decommissioned agent is final; register a new agent instead."
            ),
        ) from None
