"""The approval rule in the core (only a deny that approval lifts is approvable), its
audit events in OCSF (valid under the official schema) and CEF, and the CLI."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from tests.unit.policy_support import agent as agent_record
from tests.unit.policy_support import authorizer as make_authorizer
from tests.unit.test_audit_formats import assert_valid
from typer.testing import CliRunner

from agentiam.cli.main import app
from agentiam.core.approvals import approvable, request_fingerprint
from agentiam.core.audit.cef import cef
from agentiam.core.audit.events import (
    Actor,
    ActorType,
    AuditEvent,
    Outcome,
    ResourceRef,
    TraceContext,
)
from agentiam.core.audit.ocsf import to_ocsf
from agentiam.core.policy.authorizer import AuthzRequest
from agentiam.core.policy.model import EntityRef

AGENT = "agt_01JF0000000000000000000000"
POLICIES = """
permit (principal, action == Action::"invoke_tool", resource is Tool);
@id("pay-needs-approval")
forbid (principal, action == Action::"invoke_tool", resource == Tool::"pay")
  when { context.approval.state != "approved" };
@id("never-wipe")
forbid (principal, action == Action::"invoke_tool", resource == Tool::"wipe");
"""


def _decide(tool: str, **context: Any) -> tuple[Any, Any]:
    authz = make_authorizer(POLICIES, agents=[agent_record(AGENT)])
    return authz, authz.decide(
        AuthzRequest(EntityRef("Agent", AGENT), "invoke_tool", EntityRef("Tool", tool), context)
    )


def test_only_a_deny_that_approval_lifts_is_approvable() -> None:
    authz, pay = _decide("pay")
    assert not pay.allowed
    assert approvable(authz, pay)
    authz, wipe = _decide("wipe")
    assert not wipe.allowed
    assert not approvable(authz, wipe)
    authz, search = _decide("search")
    assert search.allowed
    assert not approvable(authz, search)
    # a request that already carries an approval state is not asked again
    authz, pending = _decide("pay", approval={"state": "pending"})
    assert not pending.allowed
    assert not approvable(authz, pending)


def test_the_what_if_decision_does_not_count_as_a_request() -> None:
    authz, pay = _decide("pay")
    rate = authz.rates.peek(EntityRef("Agent", AGENT), datetime.now(UTC).timestamp())
    approvable(authz, pay)
    assert authz.rates.peek(EntityRef("Agent", AGENT), datetime.now(UTC).timestamp()) == rate


IN_SERVER = """
@id("bank-tools")
permit (principal, action == Action::"invoke_tool", resource in McpServer::"bank");
@id("bank-approval")
forbid (principal, action == Action::"invoke_tool", resource in McpServer::"bank")
  when { context.approval.state != "approved" };
@id("no-vault")
forbid (principal, action, resource in McpServer::"vault");
"""


def _placed(*parents: str) -> tuple[Any, Any]:
    """A call on an uncatalogued tool placed in ``McpServer::<parent>`` for each of
    ``parents`` (``AuthzRequest.resource_parents``), decided under ``IN_SERVER``."""
    authz = make_authorizer(IN_SERVER, agents=[agent_record(AGENT)])
    request = AuthzRequest(
        EntityRef("Agent", AGENT),
        "invoke_tool",
        EntityRef("Tool", "bank.transfer"),
        {},
        resource_parents=tuple(EntityRef("McpServer", p) for p in parents),
    )
    return authz, authz.decide(request)


def test_the_what_if_decision_keeps_the_placement() -> None:
    """A deny that approval lifts only ``in McpServer::"bank"`` is approvable when the
    call is placed there (the what-if question keeps ``resource_parents``); a forbid
    on the parent it is also placed in still wins; out of the server nothing asks."""
    authz, bank = _placed("bank")
    assert not bank.allowed
    assert bank.policies == ("bank-approval",)
    assert approvable(authz, bank)
    authz, both = _placed("bank", "vault")
    assert not approvable(authz, both)
    authz, nowhere = _placed()
    assert not approvable(authz, nowhere)


def test_the_fingerprint_binds_the_placement() -> None:
    agent, tool, args = EntityRef("Agent", AGENT), EntityRef("Tool", "pay"), {"amount": 5}
    bank, vault = EntityRef("McpServer", "bank"), EntityRef("McpServer", "vault")
    plain = request_fingerprint(agent, "invoke_tool", tool, args)
    assert request_fingerprint(agent, "invoke_tool", tool, args, ()) == plain  # as before
    in_bank = request_fingerprint(agent, "invoke_tool", tool, args, (bank,))
    assert in_bank != plain
    assert in_bank != request_fingerprint(agent, "invoke_tool", tool, args, (vault,))
    assert in_bank != request_fingerprint(agent, "invoke_tool", tool, args, (bank, vault))
    # a set: the order and repeats of the parents do not make another call
    assert request_fingerprint(
        agent, "invoke_tool", tool, args, (vault, bank, vault)
    ) == request_fingerprint(agent, "invoke_tool", tool, args, (bank, vault))


# request_fingerprint of (Agent AGENT, invoke_tool, Tool "bank.transfer", {"amount": 5,
# "to": "acme"}) without and with McpServer "bank", as computed before derived
# attributes were bound: a request without any keeps exactly these
OLD_PLAIN = "7e05c08a228f40382d33be2dfcc70e1a7bf05bbc9adf02aa76518f61f77b794b"
OLD_IN_BANK = "33c413acd91d521850d363bfbfe7789f91966d6b368111bbddc46a06884f021c"


def test_the_fingerprint_binds_the_derived_attributes() -> None:
    agent, tool = EntityRef("Agent", AGENT), EntityRef("Tool", "bank.transfer")
    args, bank = {"amount": 5, "to": "acme"}, (EntityRef("McpServer", "bank"),)

    def fp(attributes: Any = None, parents: Any = bank) -> str:
        return request_fingerprint(agent, "invoke_tool", tool, args, parents, attributes)

    assert request_fingerprint(agent, "invoke_tool", tool, args) == OLD_PLAIN
    assert fp(None, ()) == fp({}, ()) == OLD_PLAIN
    assert fp() == fp({}) == OLD_IN_BANK
    safe, destructive = fp({"destructive": False}), fp({"destructive": True})
    assert len({OLD_IN_BANK, safe, destructive, fp({"destructive": True}, ())}) == 4
    both = {"destructive": True, "read_only": False}
    assert fp(both) not in (destructive, OLD_IN_BANK)
    # a JSON object: the order of its members does not make another call
    assert fp(dict(reversed(list(both.items())))) == fp(both)


ATTRIBUTED = """
permit (principal, action == Action::"invoke_tool", resource is Tool);
@id("destructive-needs-approval")
forbid (principal, action == Action::"invoke_tool", resource)
  when { resource has destructive && resource.destructive
         && context.approval.state != "approved" };
"""


def test_the_what_if_decision_keeps_the_derived_attributes() -> None:
    """A deny that approval lifts only for a destructive tool, destructive by an
    attribute its enforcement point derived (no catalog entry): approvable when the
    request carries the attribute (the what-if question keeps it); without it nothing
    asks."""
    authz = make_authorizer(ATTRIBUTED, agents=[agent_record(AGENT)])

    def call(attributes: dict[str, Any]) -> Any:
        return authz.decide(
            AuthzRequest(
                EntityRef("Agent", AGENT),
                "invoke_tool",
                EntityRef("Tool", "bank.transfer"),
                {},
                resource_parents=(EntityRef("McpServer", "bank"),),
                resource_attributes=attributes,
            )
        )

    destructive = call({"destructive": True})
    assert not destructive.allowed
    assert destructive.policies == ("destructive-needs-approval",)
    assert approvable(authz, destructive)
    assert call({"destructive": False}).allowed
    assert call({}).allowed


def _event(type_: str, outcome: Outcome = Outcome.SUCCESS) -> dict[str, Any]:
    return AuditEvent.create(
        type=type_,
        actor=Actor(ActorType.HUMAN, "hum_01JF0000000000000000000000"),
        action="invoke_tool",
        source="control-plane/admin-api",
        trace=TraceContext.new(),
        now=datetime(2026, 11, 25, tzinfo=UTC),
        outcome=outcome,
        resource=ResourceRef("Tool", "pay"),
        agent_id=AGENT,
        decision_id="dec_01JF0000000000000000000000",
        reason="invoice checked",
        details={"approval_id": "apr_01JF0000000000000000000000", "state": "approved"},
    ).to_dict()


@pytest.mark.parametrize(
    ("type_", "activity"),
    [
        ("approval.requested", 1),
        ("approval.approved", 3),
        ("approval.denied", 3),
        ("approval.expired", 3),
        ("approval.consumed", 3),
    ],
)
def test_approval_events_in_ocsf_and_cef(type_: str, activity: int) -> None:
    out = to_ocsf(1, _event(type_))
    assert (out["class_uid"], out["activity_id"]) == (3004, activity)
    assert out["entity"]["uid"] == "apr_01JF0000000000000000000000"
    assert_valid(out)
    assert "Approval" in cef(1, _event(type_))


@pytest.fixture
def db(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AGENTIAM_DATABASE_URL", sqlite_url)
    return sqlite_url


def test_cli_lists_shows_and_decides(db: str) -> None:
    from agentiam.bootstrap import build
    from agentiam.config import Settings
    from agentiam.services.agents import NewAgent
    from agentiam.services.context import CallContext
    from agentiam.services.humans import NewHuman

    ctx = CallContext.system("test")
    c = build(Settings(database_url=db))
    try:
        owner = c.humans.create(ctx, NewHuman(display_name="Ann", email="ann@example.com"))
        agent = c.agents.register(
            ctx,
            NewAgent(name="bot", owners=[owner.id], purpose="x", environment="prod", activate=True),
        )
        c.policies.put(ctx, "p", text=POLICIES.split("@id")[0])
        c.policies.put(
            ctx,
            "step-up",
            text='forbid (principal, action == Action::"invoke_tool", resource == Tool::"pay") '
            'when { context.approval.state != "approved" };',
        )
        c.decisions.refresh()
        call = AuthzRequest(EntityRef("Agent", agent.id), "invoke_tool", EntityRef("Tool", "pay"))
        first = c.approvals.open(ctx, call)
        second = c.approvals.open(
            ctx,
            AuthzRequest(call.principal, call.action, call.resource, {"args": {"n": 2}}),
        )
    finally:
        c.close()
    runner = CliRunner()
    listed = runner.invoke(app, ["approvals", "list", "--state", "pending", "--json"])
    assert listed.exit_code == 0, listed.output
    assert first.id in listed.output
    assert second.id in listed.output
    shown = runner.invoke(app, ["approvals", "show", first.id, "--json"])
    assert shown.exit_code == 0
    assert '"state": "pending"' in shown.output
    ok = runner.invoke(app, ["approvals", "approve", first.id, "--reason", "checked", "--json"])
    assert ok.exit_code == 0, ok.output
    assert '"state": "approved"' in ok.output
    assert '"decided_by": "operator:cli:' in ok.output
    no = runner.invoke(app, ["approvals", "deny", second.id, "--reason", "no"])
    assert no.exit_code == 0, no.output
    again = runner.invoke(app, ["approvals", "deny", first.id, "--reason", "no"])
    assert again.exit_code != 0
    assert "approved already" in again.output
    missing = runner.invoke(app, ["approvals", "approve", first.id])
    assert missing.exit_code != 0  # --reason is required


def test_cli_shows_the_derived_attributes(db: str) -> None:
    import json

    from agentiam.bootstrap import build
    from agentiam.config import Settings
    from agentiam.services.agents import NewAgent
    from agentiam.services.context import CallContext
    from agentiam.services.humans import NewHuman

    ctx = CallContext.system("test")
    c = build(Settings(database_url=db))
    try:
        owner = c.humans.create(ctx, NewHuman(display_name="Ann", email="ann@example.com"))
        agent = c.agents.register(
            ctx,
            NewAgent(name="bot", owners=[owner.id], purpose="x", environment="prod", activate=True),
        )
        permit, forbid = ATTRIBUTED.strip().split('@id("destructive-needs-approval")')
        c.policies.put(ctx, "tools", text=permit)
        c.policies.put(ctx, "destructive-needs-approval", text=forbid)
        c.decisions.refresh()
        opened = c.approvals.open(
            ctx,
            AuthzRequest(
                EntityRef("Agent", agent.id),
                "invoke_tool",
                EntityRef("Tool", "bank.transfer"),
                resource_parents=(EntityRef("McpServer", "bank"),),
                resource_attributes={"read_only": False, "destructive": True},
            ),
        )
    finally:
        c.close()
    shown = CliRunner().invoke(app, ["approvals", "show", opened.id, "--json"])
    assert shown.exit_code == 0, shown.output
    row = json.loads(shown.output)
    assert row["resource_attributes"] == {"destructive": True, "read_only": False}
    assert row["resource"] == (
        "Tool::bank.transfer in McpServer::bank with destructive=true, read_only=false"
    )
    listed = CliRunner().invoke(app, ["approvals", "list", "--json"])
    assert "with destructive=true, read_only=false" in listed.output
