"""Parents an enforcement point gives a decision's resource (``AuthzRequest.
resource_parents``): the MCP gateway's resources and prompts are decided in the
``McpServer`` it routes them to, whatever the catalog says; the schema lets a
``DataSet`` be in an ``McpServer``."""

from __future__ import annotations

import pytest
from tests.unit.policy_support import agent, authorizer, records, ref, resource

from agentiam.core.policy import authorizer as authorizer_module
from agentiam.core.policy.authorizer import Authorizer, AuthzRequest, Decision
from agentiam.core.policy.engine import validate
from agentiam.core.policy.entities import MAX_PARENTS, EntitySnapshot, Place, check_resource
from agentiam.core.policy.model import EntityRef
from agentiam.core.policy.schema import Schema

BANK = ref("McpServer", "bank")
READ = 'Action::"read"'
POLICIES = f"""
@id("all") permit (principal, action, resource);
@id("no-bank") forbid (principal, action == {READ}, resource in McpServer::"bank");
"""


def _read(az: Authorizer, entity: str, parents: tuple[EntityRef, ...] = (BANK,)) -> Decision:
    return az.decide(
        AuthzRequest(
            ref("Agent", "agt_1"), "read", ref("DataSet", entity), {}, resource_parents=parents
        )
    )


def test_the_schema_lets_a_data_set_be_in_an_mcp_server() -> None:
    schema = Schema()
    assert schema.entity_types["DataSet"].member_of == ("McpServer",)
    entity = check_resource(schema, resource("DataSet", "bank.x", parents=[BANK]))
    assert entity["parents"] == [{"type": "McpServer", "id": "bank"}]


@pytest.mark.parametrize(
    "text",
    [
        f'permit (principal, action == {READ}, resource in McpServer::"bank");',
        'forbid (principal, action, resource in McpServer::"bank") when { resource is DataSet };',
        f'permit (principal, action == {READ}, resource == DataSet::"payroll");',  # as before
        f'permit (principal, action == {READ}, resource is DataSet in McpServer::"ops");',
    ],
)
def test_policies_on_data_sets_in_servers_validate(text: str) -> None:
    assert validate(Schema(), records(text)) == []


def test_a_forbid_on_a_server_holds_for_a_resource_it_routes() -> None:
    az = authorizer(POLICIES, agents=[agent()])
    assert not _read(az, "bank.bank://statements/7").allowed
    # the gap this closes: without the parent the forbid does not match
    assert _read(az, "bank.bank://statements/7", ()).allowed
    assert _read(az, "ops.ops://x", (ref("McpServer", "ops"),)).allowed


def test_a_conditional_forbid_sees_the_parent_too() -> None:
    """Policies with conditions go to Cedar: its entities must have the parent, not
    only the scope index."""
    text = """
    @id("all") permit (principal, action, resource);
    @id("no-bank") forbid (principal, action, resource) when { resource in McpServer::"bank" };
    """
    az = authorizer(text, agents=[agent()])
    decision = _read(az, "prompt:bank.summarize")
    assert not decision.allowed
    assert decision.policies == ("no-bank",)


@pytest.mark.parametrize("catalog_parents", [(), (ref("McpServer", "ops"),)])
def test_a_catalog_entry_cannot_take_a_resource_out_of_its_server(
    catalog_parents: tuple[EntityRef, ...],
) -> None:
    az = authorizer(
        POLICIES,
        agents=[agent()],
        resources=[resource("DataSet", "bank.secrets", parents=catalog_parents, domain="x")],
    )
    assert not _read(az, "bank.secrets").allowed


def test_a_resource_that_cannot_be_placed_is_denied() -> None:
    full = [ref("McpServer", f"g{i}") for i in range(MAX_PARENTS)]
    az = authorizer(
        '@id("all") permit (principal, action, resource);',
        agents=[agent()],
        resources=[resource("DataSet", "bank.crowded", parents=full)],
    )
    decision = _read(az, "bank.crowded")
    assert not decision.allowed
    assert "cannot be placed" in decision.reasons[0]


def test_unlisted_resources_share_one_placement(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resources the snapshot does not hold are decided through their place's stand-in:
    a snapshot without one gets one copy per place (kept, bounded), not one per
    resource (test_policy_stand_ins.py has the rest)."""
    monkeypatch.setattr(authorizer_module, "PLACED_CACHE", 2)
    az = authorizer(POLICIES, agents=[agent()])
    for i in range(5):
        assert not _read(az, f"bank.r{i}").allowed
    assert list(az._placed[1]) == [Place("DataSet", (BANK,))]
    # the snapshot in force is not changed by a placement
    assert ref("DataSet", "bank.r0") not in az.entities.parents


def test_with_more_keeps_the_derived_records_it_has() -> None:
    base = EntitySnapshot(Schema(), agents=[agent()])
    tools = base.with_derived([resource("Tool", "bank.search", parents=[BANK])])
    more = tools.with_more([resource("DataSet", "bank.x", parents=[BANK])])
    assert more.parents[ref("Tool", "bank.search")] == (BANK,)
    assert more.parents[ref("DataSet", "bank.x")] == (BANK,)
    assert ref("DataSet", "bank.x") not in tools.parents


def test_a_catalog_merge_the_schema_refuses_keeps_the_entry_and_denies() -> None:
    """EntitySnapshot.with_catalog_merged (the MCP gateway's catalog data sets in their
    servers): an entry that has no room for the server is kept as the catalog has it,
    not dropped (which would decide it as an unknown resource), and is denied."""
    full = tuple(ref("McpServer", f"g{i}") for i in range(MAX_PARENTS))
    crowded = resource("DataSet", "bank.crowded", parents=list(full), classification="x")
    base = EntitySnapshot(Schema(), agents=[agent()], resources=[crowded])
    placed = base.with_catalog_merged(
        [resource("DataSet", "bank.crowded", parents=[BANK]), resource("DataSet", "gone")]
    )
    assert placed.resources[ref("DataSet", "bank.crowded")] == crowded
    assert ref("DataSet", "gone") not in placed.resources
    az = Authorizer(authorizer(POLICIES).engine, placed)
    decision = _read(az, "bank.crowded")
    assert not decision.allowed
    assert "cannot be placed" in decision.reasons[0]
