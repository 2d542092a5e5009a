"""What agent code imports: a key pair, DPoP-bound tokens that refresh themselves, an
httpx ``Auth`` that signs a DPoP proof for every request (RFC 9449 section 7), and MCP
sessions through the gateway.

    from agentiam.sdk import AgentKey, AgentClient

    key = AgentKey.generate()                   # register key.public_jwk() with the agent
    agent = AgentClient(issuer, client_id=agent_id, key=key, resource=api, scope="tools:read")
    with agent.http(base_url=api) as http:      # Authorization: DPoP ... + DPoP proof
        http.get("/tools")
    other = agent.auth(resource="https://api.example.com")  # a token per resource
    found = AgentClient.for_resource(api, client_id=agent_id, key=key,
                                     trusted_issuers=[issuer])  # RFC 9728 discovery

    async with agent.mcp_session("https://gw.example.com/mcp") as session:  # the mcp extra
        await session.call_tool("search", {"query": "invoices"})

    human_token = ...                           # the human's token, from their IdP
    acting = agent.act_for(human_token, scope="tools:read")   # RFC 8693 exchange
    worker = agent.spawn_subagent(ttl_seconds=600, on_behalf=acting)  # JIT sub-agent

See docs/sdk.md, docs/delegation.md, docs/examples/ and examples/. The in-process
guard for tool functions is :mod:`agentiam.guard` (not imported from here).
"""

from agentiam.sdk.client import (
    AccessToken,
    AgentClient,
    ApprovalDenied,
    ApprovalError,
    ApprovalExpired,
    ApprovalPending,
    DPoPAuth,
    SubAgent,
    TokenError,
)
from agentiam.sdk.discovery import DiscoveryError
from agentiam.sdk.keys import AgentKey
from agentiam.sdk.proofs import client_assertion, dpop_proof

__all__ = [
    "AccessToken",
    "AgentClient",
    "AgentKey",
    "ApprovalDenied",
    "ApprovalError",
    "ApprovalExpired",
    "ApprovalPending",
    "DPoPAuth",
    "DiscoveryError",
    "SubAgent",
    "TokenError",
    "client_assertion",
    "dpop_proof",
]
