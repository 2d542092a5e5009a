"""What agent code imports: a key pair, DPoP-bound tokens that refresh themselves, and
an httpx client that signs a DPoP proof for every request.

    from agentiam.sdk import AgentKey, AgentClient

    key = AgentKey.generate()                   # register key.public_jwk() with the agent
    agent = AgentClient(issuer, client_id=agent_id, key=key, resource=api, scope="tools:read")
    with agent.http(base_url=api) as http:      # Authorization: DPoP ... + DPoP proof
        http.get("/tools")

See docs/sdk.md and docs/examples/agent_client.py.
"""

from agentiam.sdk.client import AccessToken, AgentClient, DPoPAuth, TokenError
from agentiam.sdk.keys import AgentKey
from agentiam.sdk.proofs import client_assertion, dpop_proof

__all__ = [
    "AccessToken",
    "AgentClient",
    "AgentKey",
    "DPoPAuth",
    "TokenError",
    "client_assertion",
    "dpop_proof",
]
