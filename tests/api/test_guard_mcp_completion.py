"""``completion/complete`` of an official-SDK MCP server the guard protects, against a
real control plane and with the official client SDK: a server that registers a
completion handler (``@server.completion()``) answers argument suggestions for a prompt
(``ref/prompt``) or a resource template (``ref/resource``) only when the guard allows
the question its listing asks of that item (``read`` on ``DataSet::"prompt:<name>"``
or ``DataSet::"<uri template>"``, ``context.args`` empty), so an agent gets completions
exactly for what it is shown. A refused completion is a JSON-RPC error as a refused
read is, and the handler never runs; every completion is one ``authz.decision`` (a
malformed one an ``api.request.rejected`` with status 400), and no ``tool.call``. In
memory the guard's own agent token decides; over Streamable HTTP (uvicorn, a real
socket) the calling agent's DPoP-bound token and proof do."""

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
from mcp_types import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    Completion,
    CompletionArgument,
    CompletionContext,
    PromptReference,
    ResourceTemplateReference,
)
from tests.api.guard_support import guard_live, put_policy
from tests.api.mcp_support import serve_with_lifespan
from tests.api.oauth_support import OAuthLive
from tests.api.test_guard import connect, trail
from tests.api.test_guard_mcp_resources import ADMIN, READS, USERS, docs_server

from agentiam.adapters.gateway.guard_mcp import REFUSAL_META
from agentiam.adapters.gateway.mcp_calls import POLICY_DENIED
from agentiam.core.enforcement.ratelimit import RateLimiter
from agentiam.guard import Guard
from agentiam.sdk import AgentClient

COMPLETE = "completion/complete"


@pytest.fixture
def live(sqlite_url: str) -> Iterator[OAuthLive]:
    with guard_live(sqlite_url, READS) as server:
        yield server


def completing_server(guard: Guard, ran: list[str]) -> MCPServer:
    """test_guard_mcp_resources.py's server (the agent may see the summarize prompt and
    the users template, not the leak prompt or the admin template) with a completion
    handler that records each completion it answers in ``ran``."""
    server = docs_server(guard, ran)

    @server.completion()
    async def complete(
        ref: PromptReference | ResourceTemplateReference,
        argument: CompletionArgument,
        context: CompletionContext | None,
    ) -> Completion:
        item = ref.name if isinstance(ref, PromptReference) else ref.uri
        ran.append(f"complete:{item}:{argument.name}={argument.value}")
        return Completion(values=[argument.value + "-suggested"])

    return server


def ref_of(kind: str, item: str) -> PromptReference | ResourceTemplateReference:
    if kind == "prompt":
        return PromptReference(type="ref/prompt", name=item)
    return ResourceTemplateReference(type="ref/resource", uri=item)


async def try_complete(
    client: Client | ClientSession, kind: str, item: str, argument: str
) -> list[str] | MCPError:
    """The values a completion of ``argument`` ("name=value") of ``item`` gets, or
    its refusal."""
    name, value = argument.split("=", 1)
    try:
        result = await client.complete(ref_of(kind, item), {"name": name, "value": value})
    except MCPError as exc:
        return exc
    return list(result.completion.values)


def decisions(live: OAuthLive, resource_id: str) -> list[str]:
    return [e["outcome"] for e in trail(live, resource_id=resource_id, type="authz.decision")]


# -- in memory: the guard's own agent --------------------------------------------------------


def test_completions_are_offered_exactly_for_what_the_listings_show(
    live: OAuthLive, guard: Guard
) -> None:
    """The attack: the listings hide the leak prompt and the admin template; the client
    asks for completions of their arguments anyway (the suggestions would name the
    secrets the hidden items hold). Refused, the handler never runs; what is shown
    completes."""
    ran: list[str] = []
    server = completing_server(guard, ran)

    async def main() -> tuple[set[tuple[str, str]], dict[tuple[str, str], Any]]:
        async with Client(server) as client:
            shown = {("prompt", p.name) for p in (await client.list_prompts()).prompts}
            templates = (await client.list_resource_templates()).resource_templates
            shown |= {("template", t.uri_template) for t in templates}
            answers = {}
            for key in (
                ("prompt", "summarize"),
                ("prompt", "leak"),
                ("template", USERS),
                ("template", ADMIN),
            ):
                answers[key] = await try_complete(client, *key, "text=q")
            return shown, answers

    shown, answers = asyncio.run(main())
    assert shown == {("prompt", "summarize"), ("template", USERS)}
    for key, answer in answers.items():
        if key in shown:
            assert answer == ["q-suggested"], key
        else:
            assert isinstance(answer, MCPError), key
            assert answer.code == POLICY_DENIED
            refusal = answer.data[REFUSAL_META]
            assert refusal["error"] == "insufficient_scope"
            assert refusal["decision_id"].startswith("dec")
            assert "AgentIAM refused this completion" in answer.message
    assert ran == ["complete:summarize:text=q", f"complete:{USERS}:text=q"]
    assert guard.drain(10)
    assert decisions(live, "prompt:summarize") == ["success"]
    assert decisions(live, "prompt:leak") == ["denied"]
    assert decisions(live, USERS) == ["success"]
    assert decisions(live, ADMIN) == ["denied"]
    [completed] = trail(live, resource_id="prompt:summarize", type="authz.decision")
    assert completed["action"] == "read"
    assert completed["details"]["argument_names"] == []  # the listing's question
    assert completed["source"] == "guard/test-agent"
    # a completion reads nothing: no outcome event
    assert trail(live, agent_id=live.agent_id, type="tool.call") == []


def test_a_policy_on_arguments_does_not_see_the_typed_prefix(live: OAuthLive, guard: Guard) -> None:
    """A forbid on a prompt argument's value keeps the prompt listed (the listing asks
    with ``context.args`` empty) and so keeps its completions; the typed value is not
    ``context.args`` (it is a prefix, not what the prompt will be got with), and the
    get with the forbidden value is refused as before."""
    with live.admin_client() as admin:
        text_argument = {"text": {"type": "String", "required": False}}
        extension = {
            "commonTypes": {"ToolArguments": {"type": "Record", "attributes": text_argument}}
        }
        r = admin.put("/v1/policy-schema/extension", json={"extension": extension})
        assert r.status_code == 200, r.text
    put_policy(
        live,
        "no-internal-text",
        'forbid (principal, action == Action::"read", resource == DataSet::"prompt:summarize") '
        'when { context.args has text && context.args.text == "internal" };',
    )
    ran: list[str] = []
    server = completing_server(guard, ran)

    async def main() -> tuple[list[str], Any, MCPError]:
        async with Client(server) as client:
            listed = [p.name for p in (await client.list_prompts()).prompts]
            completed = await try_complete(client, "prompt", "summarize", "text=internal")
            with pytest.raises(MCPError) as refused:
                await client.get_prompt("summarize", {"text": "internal"})
            return listed, completed, refused.value

    time.sleep(1.0)  # the new policy reaches the guard
    listed, completed, refused = asyncio.run(main())
    assert listed == ["summarize"]
    assert completed == ["internal-suggested"]
    assert refused.code == POLICY_DENIED
    assert ran == ["complete:summarize:text=internal"]


def test_a_malformed_completion_is_refused_and_audited(live: OAuthLive, guard: Guard) -> None:
    """The read's bounds: a template URI starting with ``prompt:`` would be decided as
    that prompt's entity (a completion of a resource as if it were the allowed prompt);
    a prompt name over 256 characters, a URI over 500 are more than the trail records."""
    ran: list[str] = []
    server = completing_server(guard, ran)

    async def main() -> list[Any]:
        async with Client(server) as client:
            return [
                await try_complete(client, "template", "prompt:summarize", "text=q"),
                await try_complete(client, "template", "file:///" + "a" * 600, "text=q"),
                await try_complete(client, "prompt", "p" * 300, "text=q"),
            ]

    refused = asyncio.run(main())
    assert all(isinstance(e, MCPError) for e in refused), refused
    assert [e.code for e in refused] == [INVALID_PARAMS] * 3
    assert [e.data[REFUSAL_META]["error"] for e in refused] == ["invalid_request"] * 3
    assert "names a prompt" in refused[0].data[REFUSAL_META]["reason"]
    assert ran == []
    assert guard.drain(10)
    rejected = trail(live, agent_id=live.agent_id, type="api.request.rejected")
    assert [(e["action"], e["details"]["status"]) for e in rejected] == [(COMPLETE, 400)] * 3
    assert trail(live, agent_id=live.agent_id, type="authz.decision") == []


def test_completions_have_a_rate_limit_of_their_own(
    live: OAuthLive, agent: AgentClient, tmp_path: Path
) -> None:
    """A completion takes a token from the agent's buckets, its per-tool one keyed
    ``completion/complete``: over it, refused (the handler does not run) and audited;
    typing does not spend the prompt's own budget (its get still runs)."""
    limits = RateLimiter.from_config(
        {
            "per_tool": {COMPLETE: {"rate_per_second": 0.01, "burst": 1}},
            "default_per_tool": {"rate_per_second": 0.01, "burst": 1},
        }
    )
    ran: list[str] = []
    with connect(live, tmp_path / "s", agent, rate_limits=limits) as guard:
        server = completing_server(guard, ran)

        async def main() -> tuple[Any, Any, str]:
            async with Client(server) as client:
                first = await try_complete(client, "prompt", "summarize", "text=a")
                second = await try_complete(client, "prompt", "summarize", "text=ab")
                prompt = await client.get_prompt("summarize", {"text": "ab"})
                return first, second, str(prompt.messages[0].content.text)

        first, second, prompted = asyncio.run(main())
        assert first == ["a-suggested"]
        assert isinstance(second, MCPError)
        assert second.code == INVALID_REQUEST
        assert second.data[REFUSAL_META]["error"] == "rate_limited"
        assert f"rate limit for {COMPLETE} exceeded" in second.message
        assert "Summarize: ab" in prompted
        assert guard.drain(10)
    assert ran == ["complete:summarize:text=a", "summarize:ab"]
    limited = trail(live, agent_id=live.agent_id, type="api.request.rejected")
    assert [(e["details"]["status"], e["details"]["tool"]) for e in limited] == [(429, COMPLETE)]


def test_a_completion_whose_decision_cannot_be_recorded_never_runs(
    live: OAuthLive, agent: AgentClient, tmp_path: Path
) -> None:
    guard = connect(live, tmp_path / "closed", agent)
    try:
        ran: list[str] = []
        server = completing_server(guard, ran)
        assert guard.spool is not None
        guard.spool.close()

        async def main() -> Any:
            async with Client(server) as client:
                return await try_complete(client, "prompt", "summarize", "text=q")

        refused = asyncio.run(main())
        assert isinstance(refused, MCPError)
        assert refused.data[REFUSAL_META]["error"] == "temporarily_unavailable"
        assert ran == []
    finally:
        guard.close()


# -- over Streamable HTTP: the calling agent ------------------------------------------------


def test_over_http_a_completion_is_decided_for_the_calling_agent(
    live: OAuthLive, guard: Guard, agent: AgentClient
) -> None:
    """The agent's own token decides; a caller without a token is refused, although
    the guard holds its agent's token, and the handler never runs for it."""
    ran: list[str] = []
    server = completing_server(guard, ran)
    with serve_with_lifespan(server.streamable_http_app()) as url:
        endpoint = url + "/mcp"

        async def as_agent() -> tuple[Any, Any]:
            async with agent.mcp_session(endpoint, resource=guard.resource) as session:
                return (
                    await try_complete(session, "template", USERS, "name=al"),
                    await try_complete(session, "template", ADMIN, "key=ro"),
                )

        async def anonymous() -> Any:
            async with (
                httpx2.AsyncClient() as http,
                streamable_http_client(endpoint, http_client=http) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                return await try_complete(session, "template", USERS, "name=al")

        allowed, denied = asyncio.run(as_agent())
        refused = asyncio.run(anonymous())
    assert allowed == ["al-suggested"]
    assert isinstance(denied, MCPError)
    assert denied.code == POLICY_DENIED
    assert isinstance(refused, MCPError)
    assert refused.code == INVALID_REQUEST
    assert refused.data[REFUSAL_META]["error"] == "invalid_token"
    assert ran == [f"complete:{USERS}:name=al"]
    assert guard.drain(10)
    [decided] = trail(live, resource_id=USERS, type="authz.decision")
    assert (decided["agent_id"], decided["outcome"]) == (live.agent_id, "success")
