"""Human approval (step-up) on both stores: only an approvable deny opens a request,
opening is idempotent and bounded, deciding is a compare-and-set (racing approvers,
an expired request), an approval is used once and only for its exact call, timeouts
deny, and every transition is in the audit trail."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from tests.conftest import FakeClock

from agentiam.bootstrap import Container, build
from agentiam.config import Settings
from agentiam.core.approvals import ApprovalState, Approver, request_fingerprint
from agentiam.core.policy.authorizer import AuthzRequest
from agentiam.core.policy.model import EntityRef, ResourceRecord
from agentiam.errors import Conflict, Forbidden
from agentiam.ports import ApprovalQuery, AuditQuery
from agentiam.services.agents import NewAgent
from agentiam.services.context import CallContext
from agentiam.services.humans import NewHuman

CTX = CallContext.system("contract-test")
PERMIT = 'permit (principal, action == Action::"invoke_tool", resource is Tool);'
STEP_UP = (
    'forbid (principal, action == Action::"invoke_tool", resource == Tool::"pay") '
    'when { context.approval.state != "approved" };'
)
HARD_NO = 'forbid (principal, action == Action::"invoke_tool", resource == Tool::"wipe");'


@pytest.fixture
def world(database_url: str, clock: FakeClock) -> Iterator[tuple[Container, dict[str, str]]]:
    c = build(Settings(database_url=database_url, approval_max_pending_per_agent=3), clock=clock)
    owner = c.humans.create(CTX, NewHuman(display_name="Ann", email="ann@example.com"))
    sponsor = c.humans.create(CTX, NewHuman(display_name="Sam", email="sam@example.com"))
    other = c.humans.create(CTX, NewHuman(display_name="Eve", email="eve@example.com"))
    agent = c.agents.register(
        CTX,
        NewAgent(
            name="payer",
            owners=[owner.id],
            sponsors=[sponsor.id],
            purpose="pays",
            environment="production",
            activate=True,
        ),
    )
    c.policies.put(CTX, "permit-tools", text=PERMIT)
    c.policies.put(CTX, "pay-needs-approval", text=STEP_UP)
    c.policies.put(CTX, "never-wipe", text=HARD_NO)
    c.decisions.refresh()
    yield c, {"owner": owner.id, "sponsor": sponsor.id, "other": other.id, "agent": agent.id}
    c.close()


def call(agent: str, tool: str = "pay", **args: Any) -> AuthzRequest:
    context: dict[str, Any] = {"args": args} if args else {}
    return AuthzRequest(EntityRef("Agent", agent), "invoke_tool", EntityRef("Tool", tool), context)


def events(c: Container, type_: str) -> list[Any]:
    return list(c.audit.find(AuditQuery(limit=100, type=type_)).items)


def test_only_an_approvable_deny_opens_a_request(world: Any) -> None:
    c, ids = world
    allowed = c.approvals.authorize(CTX, call(ids["agent"], "search"))
    assert allowed.decision.allowed
    assert allowed.approval is None
    # an unconditional forbid stays a plain deny: approving would change nothing
    hard = c.approvals.authorize(CTX, call(ids["agent"], "wipe"))
    assert not hard.decision.allowed
    assert hard.approval is None
    with pytest.raises(Conflict):
        c.approvals.open(CTX, call(ids["agent"], "wipe"))
    with pytest.raises(Conflict):
        c.approvals.open(CTX, call(ids["agent"], "search"))  # allowed without approval
    stepped = c.approvals.authorize(CTX, call(ids["agent"], "pay", amount=10))
    assert not stepped.decision.allowed
    assert stepped.approval is not None
    assert stepped.approval.state is ApprovalState.PENDING
    assert stepped.approval.policies == ("pay-needs-approval",)
    assert stepped.approval.decision_id == stepped.decision.decision_id
    assert stepped.approval.argument_names == ("amount",)


def test_opening_is_idempotent_and_bounded(world: Any) -> None:
    c, ids = world
    first = c.approvals.open(CTX, call(ids["agent"], amount=1))
    again = c.approvals.open(CTX, call(ids["agent"], amount=1))
    assert again.id == first.id  # a retrying client finds its request
    c.approvals.open(CTX, call(ids["agent"], amount=2))
    c.approvals.open(CTX, call(ids["agent"], amount=3))
    with pytest.raises(Conflict, match="already has 3"):
        c.approvals.open(CTX, call(ids["agent"], amount=4))  # fail closed past the bound
    page = c.approvals.find(ApprovalQuery(limit=10, state=ApprovalState.PENDING))
    assert len(page.items) == 3
    assert len(events(c, "approval.requested")) == 3


def test_approve_use_once_with_the_approver_in_the_decision(world: Any) -> None:
    c, ids = world
    opened = c.approvals.open(CTX, call(ids["agent"], amount=10))
    approved = c.approvals.decide(
        CTX,
        opened.id,
        approve=True,
        reason="invoice checked",
        approver=Approver("human", ids["owner"]),
    )
    assert approved.state is ApprovalState.APPROVED
    assert approved.decided_by == f"human:{ids['owner']}"
    result = c.approvals.authorize(CTX, call(ids["agent"], amount=10), approval_id=opened.id)
    assert result.decision.allowed
    assert result.approval is not None
    assert result.approval.state is ApprovalState.CONSUMED
    assert result.approval.consumed_decision_id == result.decision.decision_id
    # single use: a replay is decided without approval (deny) and the state says why
    replay = c.approvals.authorize(CTX, call(ids["agent"], amount=10), approval_id=opened.id)
    assert not replay.decision.allowed
    assert replay.approval is not None
    assert replay.approval.state is ApprovalState.CONSUMED
    consumed = events(c, "approval.consumed")
    assert [e.decision_id for e in consumed] == [result.decision.decision_id]
    decisions = events(c, "authz.decision")
    assert result.decision.decision_id in {e.decision_id for e in decisions}
    assert events(c, "approval.approved")[0].details["approver"] == f"human:{ids['owner']}"


def test_an_approval_is_bound_to_its_exact_call(world: Any) -> None:
    c, ids = world
    opened = c.approvals.open(CTX, call(ids["agent"], amount=10))
    c.approvals.decide(CTX, opened.id, approve=True, reason="ok")
    with pytest.raises(Forbidden):  # approved for amount=10, tried with amount=10000
        c.approvals.authorize(CTX, call(ids["agent"], amount=10000), approval_id=opened.id)
    other = c.agents.register(
        CTX,
        NewAgent(
            name="thief",
            owners=[ids["owner"]],
            purpose="x",
            environment="production",
            activate=True,
        ),
    )
    c.decisions.refresh()
    with pytest.raises(Forbidden):  # another agent's approval
        c.approvals.use(CTX, opened.id, call(other.id, amount=10))
    # refused attempts left it usable for the right call
    assert c.approvals.use(CTX, opened.id, call(ids["agent"], amount=10)).consumed


def test_the_placement_is_decided_recorded_and_bound(world: Any) -> None:
    """A call placed in ``McpServer::"bank"`` (``resource_parents``, as a gateway
    placed it) is decided there when the request is opened, recorded with it on
    either store and in its events, and bound: the same call placed elsewhere or
    nowhere cannot use the approval. Placed where a forbid holds, nothing opens."""
    c, ids = world
    c.policies.put(
        CTX,
        "bank-needs-approval",
        text='forbid (principal, action == Action::"invoke_tool", resource in '
        'McpServer::"bank") when { context.approval.state != "approved" };',
    )
    c.policies.put(
        CTX, "no-vault", text='forbid (principal, action, resource in McpServer::"vault");'
    )
    c.decisions.refresh()
    bank, vault = EntityRef("McpServer", "bank"), EntityRef("McpServer", "vault")

    def placed(*parents: EntityRef) -> AuthzRequest:
        return replace(call(ids["agent"], "search", q="x"), resource_parents=parents)

    with pytest.raises(Conflict):  # out of bank, no policy asks for approval
        c.approvals.open(CTX, placed())
    with pytest.raises(Conflict):  # in vault too: the forbid wins
        c.approvals.open(CTX, placed(bank, vault))
    opened = c.approvals.open(CTX, placed(bank, bank))
    assert opened.resource_parents == (bank,)
    assert c.approvals.get(opened.id).resource_parents == (bank,)  # stored
    [requested] = [
        e for e in events(c, "approval.requested") if e.details["approval_id"] == opened.id
    ]
    assert requested.details["resource_parents"] == [{"type": "McpServer", "id": "bank"}]
    c.approvals.decide(CTX, opened.id, approve=True, reason="ok")
    for other in (placed(), placed(vault), placed(bank, vault)):
        with pytest.raises(Forbidden):
            c.approvals.use(CTX, opened.id, other)
    result = c.approvals.authorize(CTX, placed(bank), approval_id=opened.id)
    assert result.decision.allowed  # decided again as approved, in bank
    assert result.decision.request.resource_parents == (bank,)


def test_the_derived_attributes_are_decided_recorded_and_bound(world: Any) -> None:
    """A call whose tool a gateway derived ``destructive: true`` for
    (``resource_attributes``, no catalog entry) is decided with it when the request
    is opened, recorded with it on either store and in its events, and bound: the
    same call with other attributes, or none, cannot use the approval. The catalog's
    attribute wins over a derived one, as in the gateway's snapshot."""
    c, ids = world
    c.policies.put(
        CTX,
        "destructive-needs-approval",
        text='forbid (principal, action == Action::"invoke_tool", resource) when '
        "{ resource has destructive && resource.destructive "
        '&& context.approval.state != "approved" };',
    )
    c.decisions.refresh()
    bank = EntityRef("McpServer", "bank")

    def derived(tool: str = "bank.transfer", **attributes: Any) -> AuthzRequest:
        return replace(
            call(ids["agent"], tool, amount=5),
            resource_parents=(bank,),
            resource_attributes=attributes,
        )

    with pytest.raises(Conflict):  # without the attribute, no policy asks
        c.approvals.open(CTX, derived())
    with pytest.raises(Conflict):
        c.approvals.open(CTX, derived(destructive=False))
    opened = c.approvals.open(CTX, derived(destructive=True, read_only=False))
    expected = {"destructive": True, "read_only": False}
    assert dict(opened.resource_attributes) == expected
    assert dict(c.approvals.get(opened.id).resource_attributes) == expected  # stored
    [requested] = [
        e for e in events(c, "approval.requested") if e.details["approval_id"] == opened.id
    ]
    assert requested.details["resource_attributes"] == expected
    assert opened.fingerprint == request_fingerprint(
        EntityRef("Agent", ids["agent"]),
        "invoke_tool",
        EntityRef("Tool", "bank.transfer"),
        {"amount": 5},
        (bank,),
        expected,
    )
    c.approvals.decide(CTX, opened.id, approve=True, reason="ok")
    for other in (
        derived(),
        derived(destructive=True),
        derived(destructive=False, read_only=False),
    ):
        with pytest.raises(Forbidden):
            c.approvals.use(CTX, opened.id, other)
    result = c.approvals.authorize(
        CTX, derived(read_only=False, destructive=True), approval_id=opened.id
    )
    assert result.decision.allowed  # decided again as approved, with the attributes
    assert dict(result.decision.request.resource_attributes) == expected
    # a catalogued attribute wins: the catalog says the tool is not destructive
    c.resources.put(CTX, ResourceRecord("Tool", "bank.safe", {"destructive": False}, ()))
    c.decisions.refresh()
    with pytest.raises(Conflict, match="allowed without approval"):
        c.approvals.open(CTX, derived("bank.safe", destructive=True))
    # a request without attributes is recorded without any, under its old fingerprint
    plain = c.approvals.open(CTX, call(ids["agent"], amount=10))
    assert dict(c.approvals.get(plain.id).resource_attributes) == {}
    assert plain.fingerprint == request_fingerprint(
        EntityRef("Agent", ids["agent"]), "invoke_tool", EntityRef("Tool", "pay"), {"amount": 10}
    )


def test_who_may_decide(world: Any) -> None:
    c, ids = world
    opened = c.approvals.open(CTX, call(ids["agent"], amount=10))
    with pytest.raises(Forbidden):  # a human who neither owns nor sponsors the agent
        c.approvals.decide(
            CTX, opened.id, approve=True, reason="me", approver=Approver("human", ids["other"])
        )
    with pytest.raises(Forbidden):  # an agent is never an approver
        c.approvals.decide(
            CTX, opened.id, approve=True, reason="me", approver=Approver("agent", ids["agent"])
        )
    assert c.approvals.get(opened.id).state is ApprovalState.PENDING
    denied = c.approvals.decide(
        CTX, opened.id, approve=False, reason="no", approver=Approver("human", ids["sponsor"])
    )
    assert denied.state is ApprovalState.DENIED
    with pytest.raises(Conflict, match="denied already"):
        c.approvals.decide(CTX, opened.id, approve=True, reason="changed my mind")
    result = c.approvals.authorize(CTX, call(ids["agent"], amount=10), approval_id=opened.id)
    assert not result.decision.allowed


def test_a_timeout_denies(world: Any, clock: FakeClock) -> None:
    c, ids = world
    opened = c.approvals.open(CTX, call(ids["agent"], amount=10))
    clock.advance(seconds=301)
    assert c.approvals.get(opened.id).state is ApprovalState.EXPIRED  # before the sweep
    with pytest.raises(Conflict, match="expired"):
        c.approvals.decide(CTX, opened.id, approve=True, reason="too late")
    assert [e.details["approval_id"] for e in events(c, "approval.expired")] == [opened.id]
    # the sweep: pending and approved-but-unused requests past their deadline
    second = c.approvals.open(CTX, call(ids["agent"], amount=11))
    c.approvals.decide(CTX, second.id, approve=True, reason="ok")
    clock.advance(seconds=301)
    swept = c.approvals.expire_due(CallContext.system("sweeper"))
    assert [a.id for a in swept] == [second.id]
    assert not c.approvals.use(CTX, second.id, call(ids["agent"], amount=11)).consumed
    assert len(events(c, "approval.expired")) == 2


def test_racing_approvers_only_one_wins(world: Any) -> None:
    c, ids = world
    opened = c.approvals.open(CTX, call(ids["agent"], amount=10))
    results: list[str] = []
    barrier = threading.Barrier(6)

    def decide(approve: bool) -> None:
        barrier.wait()
        try:
            c.approvals.decide(CTX, opened.id, approve=approve, reason="race")
            results.append("won")
        except Conflict:
            results.append("lost")

    threads = [threading.Thread(target=decide, args=(i % 2 == 0,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["lost"] * 5 + ["won"]
    decided = events(c, "approval.approved") + events(c, "approval.denied")
    assert len(decided) == 1


def test_racing_uses_only_one_consumes(world: Any) -> None:
    c, ids = world
    opened = c.approvals.open(CTX, call(ids["agent"], amount=10))
    c.approvals.decide(CTX, opened.id, approve=True, reason="ok")
    consumed: list[bool] = []
    barrier = threading.Barrier(4)

    def use() -> None:
        barrier.wait()
        consumed.append(c.approvals.use(CTX, opened.id, call(ids["agent"], amount=10)).consumed)

    threads = [threading.Thread(target=use) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(consumed) == [False, False, False, True]


def test_the_fingerprint_covers_principal_action_resource_and_every_argument() -> None:
    agent, tool = EntityRef("Agent", "agt_1"), EntityRef("Tool", "pay")
    base = request_fingerprint(agent, "invoke_tool", tool, {"amount": 10, "to": "bob"})
    assert base == request_fingerprint(agent, "invoke_tool", tool, {"to": "bob", "amount": 10})
    for variant in (
        request_fingerprint(agent, "invoke_tool", tool, {"amount": 11, "to": "bob"}),
        request_fingerprint(agent, "invoke_tool", tool, {"amount": 10, "to": "bob", "x": 1}),
        request_fingerprint(
            EntityRef("Agent", "agt_2"), "invoke_tool", tool, {"amount": 10, "to": "bob"}
        ),
        request_fingerprint(agent, "read", tool, {"amount": 10, "to": "bob"}),
        request_fingerprint(
            agent, "invoke_tool", EntityRef("Tool", "pay2"), {"amount": 10, "to": "bob"}
        ),
    ):
        assert variant != base
    with pytest.raises(ValueError, match="not JSON"):
        request_fingerprint(agent, "invoke_tool", tool, {"x": float("nan")})


def test_arguments_are_stored_redacted(world: Any) -> None:
    c, ids = world
    opened = c.approvals.open(CTX, call(ids["agent"], amount=10, api_key="sk-live-secret"))
    stored = c.approvals.get(opened.id)
    assert "sk-live-secret" not in str(stored.arguments)
    assert "sk-live-secret" not in str([e.details for e in events(c, "approval.requested")])
    assert stored.argument_names == ("amount", "api_key")
