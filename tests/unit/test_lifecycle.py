"""The agent lifecycle state machine: every pair is either in the table or a 409."""

from __future__ import annotations

import itertools

import pytest

from agentiam.core.identities.lifecycle import AgentStatus, LifecycleAction, next_status
from agentiam.errors import InvalidTransition

S, A = AgentStatus, LifecycleAction
ALLOWED = {
    (S.PENDING, A.ACTIVATE): S.ACTIVE,
    (S.ACTIVE, A.SUSPEND): S.SUSPENDED,
    (S.SUSPENDED, A.RESUME): S.ACTIVE,
    (S.PENDING, A.DECOMMISSION): S.DECOMMISSIONED,
    (S.ACTIVE, A.DECOMMISSION): S.DECOMMISSIONED,
    (S.SUSPENDED, A.DECOMMISSION): S.DECOMMISSIONED,
}


@pytest.mark.parametrize(("status", "action"), list(itertools.product(S, A)))
def test_every_status_action_pair(status: AgentStatus, action: LifecycleAction) -> None:
    if (status, action) in ALLOWED:
        assert next_status(status, action) is ALLOWED[(status, action)]
    else:
        with pytest.raises(InvalidTransition) as info:
            next_status(status, action)
        assert info.value.status == 409
        assert info.value.hint


def test_decommissioned_is_terminal() -> None:
    for action in A:
        with pytest.raises(InvalidTransition, match="decommissioned"):
            next_status(S.DECOMMISSIONED, action)
