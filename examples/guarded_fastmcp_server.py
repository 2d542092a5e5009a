"""An MCP server (the official SDK's ``MCPServer``, formerly FastMCP) whose every
tool call is decided and audited by the AgentIAM guard, in the server's process.

Needs the ``mcp`` extra (``pip install 'agentiam[mcp]'``). Over Streamable HTTP the
principal is the calling agent: its DPoP-bound token and proof are verified as a
gateway verifies them (audience: ``--resource``, by default this server's URL). Over
stdio the server acts for one agent, whose key it is given::

    # a verifier-role admin key bound to this guard (source guard/NAME, NAME its --name):
    # agentiam admin-keys create --name mcp-guard --role verifier --source guard/guarded-mcp
    export AGENTIAM_GUARD_KEY=aiam_...
    # HTTP: agents connect with their own tokens (examples/agent_mcp.py)
    python examples/guarded_fastmcp_server.py --issuer http://127.0.0.1:8080 \\
        --spool ./mcp-guard-spool --port 8000
    # stdio: launched by the agent, acting as that agent
    python examples/guarded_fastmcp_server.py --transport stdio --issuer http://127.0.0.1:8080 \\
        --agent agt_... --key agent.key --resource https://tools.example.com \\
        --spool ./mcp-guard-spool

A tool call that policy denies is answered with a tool error naming the reason and
the decision id; the tool does not run.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mcp.server.mcpserver import MCPServer

from agentiam.guard import Guard, Principal
from agentiam.sdk import AgentClient, AgentKey

FILES = {"/reports/q3.pdf": "Q3 report", "/reports/q4.pdf": "Q4 report"}


def build_server(guard: Guard, *, principal: Principal = "auto") -> MCPServer:
    """The server with its tools, every one guarded (also those added later)."""
    server = MCPServer("guarded-tools")
    guard.protect(server, principal=principal)

    @server.tool()
    def search(query: str) -> list[str]:
        """Find files whose name contains the query."""
        return sorted(name for name in FILES if query in name)

    @server.tool()
    def delete(path: str) -> str:
        """Delete a file (policy should allow this to few agents, if any)."""
        FILES.pop(path, None)
        return f"deleted {path}"

    return server


def main() -> int:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--issuer", default=env("AGENTIAM_ISSUER", "http://127.0.0.1:8080"))
    parser.add_argument("--transport", choices=("http", "stdio"), default="http")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--resource", help="token audience (default: this server's URL)")
    parser.add_argument("--agent", default=env("AGENTIAM_AGENT_ID"), help="stdio: acting agent")
    parser.add_argument("--key", default=env("AGENTIAM_AGENT_KEY", "agent.key"), type=Path)
    parser.add_argument("--spool", default="./mcp-guard-spool", type=Path)
    parser.add_argument("--name", default="guarded-mcp")
    args = parser.parse_args()
    resource = args.resource or f"http://{args.host}:{args.port}/mcp"
    agent = None
    if args.transport == "stdio":
        if not args.agent:
            parser.error("--transport stdio needs --agent and --key: the agent it acts for")
        agent = AgentClient(
            args.issuer, client_id=args.agent, key=AgentKey.load(args.key), resource=resource
        )
    guard = Guard.connect(
        args.issuer,
        resource=resource,
        spool_dir=args.spool.resolve(),
        name=args.name,
        token=(lambda: agent.token().value) if agent is not None else None,
    )
    try:
        if args.transport == "stdio":
            build_server(guard, principal="configured").run("stdio")
        else:
            import uvicorn

            app = build_server(guard, principal="request").streamable_http_app(host=args.host)
            uvicorn.run(app, host=args.host, port=args.port)
    finally:
        guard.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
