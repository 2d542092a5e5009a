"""An agent opens an MCP session with the official SDK through the AgentIAM MCP
gateway (or a guarded MCP server) and calls a tool. Every HTTP request of the
session carries the agent's DPoP-bound token and a fresh proof::

    pip install 'agentiam[mcp]'
    python examples/agent_mcp.py --issuer http://127.0.0.1:8080 --agent agt_... \\
        --key agent.key --url http://127.0.0.1:8000/mcp \\
        --tool search --arguments '{"query": "q3"}'

``--resource`` (the token audience) defaults to ``--url``, as the MCP authorization
spec names the server's URL as its resource. Prints the tools the agent sees and the
tool's result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentiam.sdk import AgentClient, AgentKey


@dataclass(frozen=True)
class Outcome:
    tools: list[str]
    is_error: bool
    text: str


async def list_and_call(
    agent: AgentClient,
    url: str,
    tool: str,
    arguments: dict[str, Any],
    *,
    resource: str | None = None,
) -> Outcome:
    """List the tools, call one, return what came back."""
    async with agent.mcp_session(url, resource=resource) as session:
        listed = await session.list_tools()
        result = await session.call_tool(tool, arguments)
    text = " ".join(getattr(block, "text", "") for block in result.content)
    return Outcome([t.name for t in listed.tools], bool(result.is_error), text)


def main() -> int:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--issuer", default=env("AGENTIAM_ISSUER", "http://127.0.0.1:8080"))
    parser.add_argument("--agent", default=env("AGENTIAM_AGENT_ID"))
    parser.add_argument("--key", default=env("AGENTIAM_AGENT_KEY", "agent.key"), type=Path)
    parser.add_argument("--url", required=True, help="the MCP endpoint")
    parser.add_argument("--resource", help="token audience (default: --url)")
    parser.add_argument("--tool", default="search")
    parser.add_argument("--arguments", default="{}", help="JSON object")
    args = parser.parse_args()
    if not args.agent:
        parser.error("--agent is required")
    agent = AgentClient(args.issuer, client_id=args.agent, key=AgentKey.load(args.key))
    outcome = asyncio.run(
        list_and_call(
            agent, args.url, args.tool, json.loads(args.arguments), resource=args.resource
        )
    )
    print("tools:", ", ".join(outcome.tools))
    print("error:" if outcome.is_error else "result:", outcome.text)
    agent.close()
    return 1 if outcome.is_error else 0


if __name__ == "__main__":
    raise SystemExit(main())
