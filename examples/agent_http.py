"""An agent calls an HTTP API (directly, or through the AgentIAM HTTP gateway) with
the SDK's ``httpx.Auth``: a DPoP-bound token for the API's resource and a fresh DPoP
proof per request (RFC 9449 section 7), refreshed before it expires, with the
server's nonce challenge and an ``invalid_token`` refresh handled::

    python examples/agent_http.py --issuer http://127.0.0.1:8080 --agent agt_... \\
        --key agent.key --resource https://tools.example.com \\
        --url http://127.0.0.1:8443/v1/invoices

``--resource`` is the token's audience: the gateway's ``public_url`` when calling
through a gateway. Prints the status and the start of the body.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import httpx

from agentiam.sdk import AgentClient, AgentKey


def fetch(
    agent: AgentClient,
    url: str,
    *,
    method: str = "GET",
    resource: str | None = None,
    body: Any = None,
) -> httpx.Response:
    """One request with the agent's DPoP-bound token for ``resource``."""
    with agent.http(resource=resource, timeout=30) as http:
        return http.request(method, url, json=body)


def main() -> int:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--issuer", default=env("AGENTIAM_ISSUER", "http://127.0.0.1:8080"))
    parser.add_argument("--agent", default=env("AGENTIAM_AGENT_ID"))
    parser.add_argument("--key", default=env("AGENTIAM_AGENT_KEY", "agent.key"), type=Path)
    parser.add_argument("--resource", default=env("AGENTIAM_RESOURCE"))
    parser.add_argument("--url", required=True)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--json", help="a JSON request body")
    args = parser.parse_args()
    if not args.agent or not args.resource:
        parser.error("--agent and --resource are required")
    agent = AgentClient(
        args.issuer, client_id=args.agent, key=AgentKey.load(args.key), resource=args.resource
    )
    body = json.loads(args.json) if args.json else None
    response = fetch(agent, args.url, method=args.method, body=body)
    print(response.status_code, response.text[:500])
    agent.close()
    return 0 if response.is_success else 1


if __name__ == "__main__":
    raise SystemExit(main())
