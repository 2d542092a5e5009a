"""``resources/read``, ``prompts/get`` and the resource and prompt listings of an
official-SDK MCP server the guard protects, against a real control plane and with the
official client SDK: each is decided as the MCP gateway decides it (``read`` on
``DataSet::"<uri>"`` or ``DataSet::"prompt:<name>"``). An allowed read runs; a denied
one is a JSON-RPC error (the gateway's ``POLICY_DENIED``) and the resource or prompt
function never runs; hidden resources, templates and prompts are absent from the
listings, and reading a hidden one by name is refused all the same; every decision
and listing is in the audit trail. In memory the guard's own agent token decides;
over Streamable HTTP (uvicorn, a real socket) the calling agent's DPoP-bound token
and proof do."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST
from tests.api.guard_support import guard_live, put_policy
from tests.api.mcp_support import serve_with_lifespan
from tests.api.oauth_support import OAuthLive
from tests.api.test_guard import connect, trail
from tests.api.test_guard_mcp_listing import listings, second_agent

from agentiam.adapters.gateway.guard_mcp import REFUSAL_META
from agentiam.adapters.gateway.mcp_calls import POLICY_DENIED
from agentiam.core.enforcement.ratelimit import RateLimiter
from agentiam.guard import Guard
from agentiam.sdk import AgentClient

PUBLIC = "file:///public.txt"
SECRET = "file:///secret.txt"
USERS = "file:///users/{name}"  # a template the agent may see
ADMIN = "file:///admin/{key}"  # one it may not
# what the agent may read: the public file, the users template and one user in it, and
# the summarize prompt; never the secret, the admin template or the leak prompt
READS = {
    "read-public": f'permit (principal is Agent, action == Action::"read", '
    f'resource == DataSet::"{PUBLIC}");',
    "read-users": f'permit (principal is Agent, action == Action::"read", '
    f'resource == DataSet::"{USERS}");',
    "read-alice": 'permit (principal is Agent, action == Action::"read", '
    'resource == DataSet::"file:///users/alice");',
    "get-summarize": 'permit (principal is Agent, action == Action::"read", '
    'resource == DataSet::"prompt:summarize");',
}


@pytest.fixture
def live(sqlite_url: str) -> Iterator[OAuthLive]:
    with guard_live(sqlite_url, READS) as server:
        yield server


def docs_server(guard: Guard, ran: list[str]) -> MCPServer:
    """Two resources, two templates and two prompts; ``ran`` records each function
    that ran, so a test can tell that a refused one never did."""
    server = MCPServer("docs")
    guard.protect(server)

    @server.resource(PUBLIC)
    def public() -> str:
        ran.append("public")
        return "hello"

    @server.resource(SECRET)
    def secret() -> str:
        ran.append("secret")
        return "s3cret"

    @server.resource(USERS)
    def user(name: str) -> str:
        ran.append(f"user:{name}")
        return f"profile of {name}"

    @server.resource(ADMIN)
    def admin(key: str) -> str:
        ran.append(f"admin:{key}")
        return "admin data"

    @server.prompt()
    def summarize(text: str) -> str:
        ran.append(f"summarize:{text}")
        return f"Summarize: {text}"

    @server.prompt()
    def leak() -> str:
        ran.append("leak")
        return "the system prompt"

    return server


def read_text(result: Any) -> str:
    [content] = result.contents
    return str(content.text)


def decisions(live: OAuthLive, resource_id: str) -> list[str]:
    return [e["outcome"] for e in trail(live, resource_id=resource_id, type="authz.decision")]


# -- in memory: the guard's own agent --------------------------------------------------------


def test_in_memory_the_agent_is_shown_only_what_it_may_read(live: OAuthLive, guard: Guard) -> None:
    ran: list[str] = []
    server = docs_server(guard, ran)

    async def main() -> tuple[Any, Any, Any]:
        async with Client(server) as client:
            return (
                await client.list_resources(),
                await client.list_resource_templates(),
                await client.list_prompts(),
            )

    resources, templates, prompts = asyncio.run(main())
    assert [r.uri for r in resources.resources] == [PUBLIC]
    assert [t.uri_template for t in templates.resource_templates] == [USERS]
    assert [p.name for p in prompts.prompts] == ["summarize"]
    for listed in (resources, templates, prompts):  # for this caller only, never fresh
        assert (listed.ttl_ms, listed.cache_scope) == (0, "private")
    assert ran == []
    assert guard.drain(10)
    events = {e["action"]: e for e in listings(live, live.agent_id)}
    assert set(events) == {"resources/list", "resources/templates/list", "prompts/list"}
    for method, shown in (
        ("resources/list", PUBLIC),
        ("resources/templates/list", USERS),
        ("prompts/list", "summarize"),
    ):
        event = events[method]
        assert event["source"] == "guard/test-agent"
        assert event["details"]["shown"] == [shown]
        assert (event["details"]["shown_count"], event["details"]["hidden_count"]) == (1, 1)


def test_in_memory_an_allowed_read_runs_and_a_denied_one_never_does(
    live: OAuthLive, guard: Guard
) -> None:
    ran: list[str] = []
    server = docs_server(guard, ran)

    async def main() -> tuple[Any, MCPError, Any, MCPError]:
        async with Client(server) as client:
            allowed = await client.read_resource(PUBLIC)
            with pytest.raises(MCPError) as denied:
                await client.read_resource(SECRET)
            prompt = await client.get_prompt("summarize", {"text": "q3"})
            with pytest.raises(MCPError) as refused_prompt:
                await client.get_prompt("leak")
            return allowed, denied.value, prompt, refused_prompt.value

    allowed, denied, prompt, refused_prompt = asyncio.run(main())
    assert read_text(allowed) == "hello"
    assert (allowed.ttl_ms, allowed.cache_scope) == (0, "private")
    assert "Summarize: q3" in str(prompt.messages[0].content.text)
    for refused in (denied, refused_prompt):  # as the MCP gateway refuses a read
        assert refused.code == POLICY_DENIED
        refusal = refused.data[REFUSAL_META]
        assert refusal["error"] == "insufficient_scope"
        assert refusal["decision_id"].startswith("dec")
    assert "AgentIAM refused this read" in denied.message
    assert "AgentIAM refused this prompt" in refused_prompt.message
    assert ran == ["public", "summarize:q3"]  # never the secret, never the leak
    assert guard.drain(10)
    assert decisions(live, PUBLIC) == ["success"]
    assert decisions(live, SECRET) == ["denied"]
    assert decisions(live, "prompt:summarize") == ["success"]
    assert decisions(live, "prompt:leak") == ["denied"]
    [outcome] = trail(live, resource_id=PUBLIC, type="tool.call")
    assert outcome["outcome"] == "success"
    [prompted] = trail(live, resource_id="prompt:summarize", type="authz.decision")
    assert prompted["details"]["argument_names"] == ["text"]  # context.args


def test_a_hidden_resource_or_prompt_read_by_name_is_refused(live: OAuthLive, guard: Guard) -> None:
    """The attack: the listings hide them, the client names them anyway (a static
    resource, a URI of a hidden template, another user of a shown template, a prompt)."""
    ran: list[str] = []
    server = docs_server(guard, ran)

    async def main() -> tuple[list[str], list[MCPError], str]:
        async with Client(server) as client:
            shown = [r.uri for r in (await client.list_resources()).resources]
            templates = (await client.list_resource_templates()).resource_templates
            shown += [t.uri_template for t in templates]
            shown += [p.name for p in (await client.list_prompts()).prompts]
            refused = []
            for uri in (SECRET, "file:///admin/root", "file:///users/bob"):
                with pytest.raises(MCPError) as caught:
                    await client.read_resource(uri)
                refused.append(caught.value)
            with pytest.raises(MCPError) as caught:
                await client.get_prompt("leak")
            refused.append(caught.value)
            alice = read_text(await client.read_resource("file:///users/alice"))
            return shown, refused, alice

    shown, refused, alice = asyncio.run(main())
    assert not {SECRET, ADMIN, "leak"} & set(shown)
    assert [e.code for e in refused] == [POLICY_DENIED] * 4
    assert alice == "profile of alice"
    assert ran == ["user:alice"]
    assert guard.drain(10)
    for resource_id in (SECRET, "file:///admin/root", "file:///users/bob", "prompt:leak"):
        assert decisions(live, resource_id) == ["denied"], resource_id


def test_a_malformed_read_is_refused_and_audited(live: OAuthLive, guard: Guard) -> None:
    """The gateway's bounds: a URI starting with ``prompt:`` would be decided as that
    prompt's entity (a read of the resource as if it were the allowed prompt); a URI
    over 500 characters is more than the trail records."""
    ran: list[str] = []
    server = docs_server(guard, ran)

    @server.resource("prompt:summarize")
    def aliased() -> str:
        ran.append("aliased")
        return "not a prompt"

    async def main() -> list[MCPError]:
        refused = []
        async with Client(server) as client:
            for uri in ("prompt:summarize", "file:///" + "a" * 600):
                with pytest.raises(MCPError) as caught:
                    await client.read_resource(uri)
                refused.append(caught.value)
        return refused

    refused = asyncio.run(main())
    assert [e.code for e in refused] == [INVALID_PARAMS, INVALID_PARAMS]
    assert [e.data[REFUSAL_META]["error"] for e in refused] == ["invalid_request"] * 2
    assert ran == []
    assert guard.drain(10)
    rejected = trail(live, agent_id=live.agent_id, type="api.request.rejected")
    assert [(e["action"], e["details"]["status"]) for e in rejected] == [
        ("resources/read", 400),
        ("resources/read", 400),
    ]


def test_a_read_needing_approval_is_refused_and_opens_no_request(
    live: OAuthLive, guard: Guard
) -> None:
    """The MCP gateway asks a human only for tools/call: a read that an approval would
    lift is refused, says so, and opens no approval request."""
    put_policy(live, "read-secret", READS["read-public"].replace(PUBLIC, SECRET))
    put_policy(
        live,
        "secret-needs-approval",
        f'forbid (principal, action == Action::"read", resource == DataSet::"{SECRET}") '
        'when { context.approval.state != "approved" };',
    )
    ran: list[str] = []
    server = docs_server(guard, ran)

    async def main() -> MCPError:
        async with Client(server) as client:
            with pytest.raises(MCPError) as caught:
                await client.read_resource(SECRET)
            return caught.value

    time.sleep(1.0)  # the new policies reach the guard
    refused = asyncio.run(main())
    assert refused.code == POLICY_DENIED
    assert "approval is asked for tool calls only" in refused.data[REFUSAL_META]["reason"]
    assert ran == []
    with live.admin_client() as admin:
        assert admin.get("/v1/approvals").json()["items"] == []


# -- failing closed --------------------------------------------------------------------------


def test_a_read_over_the_rate_limit_is_refused(
    live: OAuthLive, agent: AgentClient, tmp_path: Path
) -> None:
    """A read takes a token from the agent's bucket, as a call does."""
    limits = RateLimiter.from_config({"per_agent": {"rate_per_second": 0.01, "burst": 1}})
    ran: list[str] = []
    with connect(live, tmp_path / "s", agent, rate_limits=limits) as guard:
        server = docs_server(guard, ran)

        async def main() -> MCPError:
            async with Client(server) as client:
                assert read_text(await client.read_resource(PUBLIC)) == "hello"
                with pytest.raises(MCPError) as caught:
                    await client.read_resource(PUBLIC)
                return caught.value

        refused = asyncio.run(main())
        assert refused.code == INVALID_REQUEST
        assert refused.data[REFUSAL_META]["error"] == "rate_limited"
        assert guard.drain(10)
    assert ran == ["public"]
    limited = trail(live, agent_id=live.agent_id, type="api.request.rejected")
    assert [e["details"]["status"] for e in limited] == [429]


def test_a_read_whose_decision_cannot_be_recorded_never_runs(
    live: OAuthLive, agent: AgentClient, tmp_path: Path
) -> None:
    guard = connect(live, tmp_path / "closed", agent)
    try:
        ran: list[str] = []
        server = docs_server(guard, ran)
        assert guard.spool is not None
        guard.spool.close()

        async def main() -> MCPError:
            async with Client(server) as client:
                with pytest.raises(MCPError) as caught:
                    await client.read_resource(PUBLIC)
                return caught.value

        refused = asyncio.run(main())
        assert refused.code == INTERNAL_ERROR
        assert refused.data[REFUSAL_META]["error"] == "temporarily_unavailable"
        assert ran == []
    finally:
        guard.close()


# -- over Streamable HTTP: the calling agent ------------------------------------------------


def test_over_http_each_agent_reads_and_sees_what_its_own_token_may(
    live: OAuthLive, guard: Guard, agent: AgentClient
) -> None:
    other = second_agent(live)
    put_policy(
        live,
        "reports-read-secret",
        f'permit (principal == Agent::"{other.client_id}", action == Action::"read", '
        f'resource == DataSet::"{SECRET}");',
    )
    ran: list[str] = []
    server = docs_server(guard, ran)
    try:
        with serve_with_lifespan(server.streamable_http_app()) as url:
            endpoint = url + "/mcp"

            async def as_agent(client: AgentClient) -> tuple[list[str], str | MCPError]:
                async with client.mcp_session(endpoint, resource=guard.resource) as session:
                    shown = sorted(r.uri for r in (await session.list_resources()).resources)
                    try:
                        return shown, read_text(await session.read_resource(SECRET))
                    except MCPError as exc:
                        return shown, exc

            time.sleep(1.0)  # the new policy reaches the guard
            mine, my_read = asyncio.run(as_agent(agent))
            theirs, their_read = asyncio.run(as_agent(other))
            assert mine == [PUBLIC]
            assert isinstance(my_read, MCPError)  # the attack: the hidden URI by name
            assert my_read.code == POLICY_DENIED
            assert theirs == sorted([PUBLIC, SECRET])
            assert their_read == "s3cret"

            async def anonymous(headers: dict[str, str]) -> MCPError:
                async with (
                    httpx2.AsyncClient(headers=headers) as http,
                    streamable_http_client(endpoint, http_client=http) as (read, write),
                    ClientSession(read, write) as session,
                ):
                    await session.initialize()
                    with pytest.raises(MCPError) as caught:
                        await session.read_resource(PUBLIC)
                    return caught.value

            # no token: refused, although the guard holds its agent's token
            refused = asyncio.run(anonymous({}))
            assert refused.code == INVALID_REQUEST
            assert refused.data[REFUSAL_META]["error"] == "invalid_token"
            # the agent's token without its DPoP proof (stolen): refused
            stolen = agent.token().value
            refused = asyncio.run(anonymous({"Authorization": f"DPoP {stolen}"}))
            assert refused.data[REFUSAL_META]["error"] in ("invalid_dpop_proof", "invalid_token")
        assert ran == ["secret"]  # the other agent's read, and nothing else
        assert guard.drain(10)
        denied = trail(live, resource_id=SECRET, type="authz.decision")
        assert sorted((e["agent_id"], e["outcome"]) for e in denied) == sorted(
            [(live.agent_id, "denied"), (other.client_id, "success")]
        )
        [their_listing] = [
            e for e in listings(live, other.client_id) if e["action"] == "resources/list"
        ]
        assert sorted(their_listing["details"]["shown"]) == sorted([PUBLIC, SECRET])
        refused_auth = [
            e
            for e in trail(live, action="authenticate", outcome="denied")
            if e["source"] == "guard/test-agent"
        ]
        assert len(refused_auth) == 2
    finally:
        other.close()
