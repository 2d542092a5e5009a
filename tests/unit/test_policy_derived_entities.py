"""Derived resource records merged into an entity snapshot
(``EntitySnapshot.with_derived``, ``merge_derived``): what an enforcement point knows
of a resource that the catalog does not (the MCP gateway: the tools an upstream lists
are in its ``McpServer``). The slice-versus-full property with derived records is in
test_policy_slicing.py."""

from __future__ import annotations

from tests.unit.policy_support import agent, authorizer, ref, request, resource

from agentiam.core.policy.model import ResourceRecord

BANK = ref("McpServer", "bank")
OTHER = ref("McpServer", "other")
POLICIES = """
@id("bank") permit (principal, action == Action::"invoke_tool", resource in McpServer::"bank");
@id("no-destructive") forbid (principal, action, resource)
  when { resource has destructive && resource.destructive };
"""


def _derived(tool: str, **attributes: object) -> ResourceRecord:
    return ResourceRecord("Tool", tool, attributes, (BANK,))


def test_a_derived_tool_is_in_its_server_for_cedar_and_the_index_alike() -> None:
    az = authorizer(POLICIES, agents=[agent()])
    base = az.entities
    assert not az.decide(request(target="bank.search")).allowed  # no entity: no parent
    az.update(entities=base.with_derived([_derived("bank.search")]))
    for full in (False, True):
        assert az.decide(request(target="bank.search"), full=full).allowed
    assert az.entities.ancestors(ref("Tool", "bank.search")) == {BANK}
    assert ref("Tool", "bank.search") not in base.parents  # the base is unchanged


def test_a_catalog_entry_keeps_its_parents_and_attributes_and_gains_the_server() -> None:
    catalog = resource("Tool", "bank.wipe", parents=[OTHER], destructive=False, tags={"t": "a"})
    az = authorizer(POLICIES, agents=[agent()], resources=[catalog])
    az.update(entities=az.entities.with_derived([_derived("bank.wipe", destructive=True)]))
    merged = az.entities.resources[ref("Tool", "bank.wipe")]
    assert merged.parents == (OTHER, BANK)
    assert dict(merged.attributes) == {"destructive": False}  # the catalog's wins
    assert dict(merged.tags) == {"t": "a"}
    for full in (False, True):
        assert az.decide(request(target="bank.wipe"), full=full).allowed


def test_a_derived_attribute_fills_only_what_the_catalog_lacks() -> None:
    catalog = resource("Tool", "bank.drop", parents=[BANK])
    az = authorizer(POLICIES, agents=[agent()], resources=[catalog])
    assert az.decide(request(target="bank.drop")).allowed
    az.update(entities=az.entities.with_derived([_derived("bank.drop", destructive=True)]))
    for full in (False, True):
        decision = az.decide(request(target="bank.drop"), full=full)
        assert not decision.allowed
        assert decision.policies == ("no-destructive",)


def test_what_adds_nothing_is_not_parsed_again_and_what_the_schema_refuses_is_left_out() -> None:
    catalog = resource("Tool", "bank.search", parents=[BANK])
    az = authorizer(POLICIES, agents=[agent()], resources=[catalog])
    base = az.entities
    assert base.with_derived([_derived("bank.search")]) is base
    wrong = ResourceRecord("Tool", "bank.x", {}, (ref("Api", "a"),))  # a Tool is not in an Api
    assert base.with_derived([wrong]) is base


def test_deriving_again_starts_from_the_base() -> None:
    az = authorizer(POLICIES, agents=[agent()])
    first = az.entities.with_derived([_derived("bank.old")])
    second = first.with_derived([_derived("bank.new")])
    assert ref("Tool", "bank.old") not in second.parents  # a tool no longer listed
    az.update(entities=second)
    assert not az.decide(request(target="bank.old")).allowed
    assert az.decide(request(target="bank.new")).allowed
