"""Guard Python tool functions in the agent's own process.

Each call is decided locally (the agent's token verified, the control plane's policy
bundle evaluated), its decision is fsynced to a local audit spool before the body
runs, and the spool ships the events to the control plane's audit trail. A denied
call raises ToolCallDenied and its body never runs.

Run against a local control plane (see docs/guard.md for the full set-up)::

    # a verifier-role admin key bound to this guard (source guard/NAME, NAME its --name) and agent:
    # agentiam admin-keys create --name guard --role verifier \\
    #     --source guard/example-agent --agent agt_...
    export AGENTIAM_GUARD_KEY=aiam_...
    python examples/guarded_functions.py --issuer http://127.0.0.1:8080 \\
        --agent agt_... --key agent.key --resource https://tools.example.com \\
        --spool ./guard-spool

With a policy that permits ``Tool::"search"`` and nothing else it prints::

    search('invoices') -> 3 results for 'invoices'
    delete('/reports/q3.pdf') refused: ... (decision dec_...)
    async search('refunds') -> 3 results for 'refunds'
    async delete refused: ...
    events shipped: True
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from agentiam.guard import Guard, ToolCallDenied
from agentiam.sdk import AgentClient, AgentKey


def run(guard: Guard, out: Callable[[str], None] = print) -> list[str]:
    """Define two guarded tools (sync and async), call each, report. Returns what ran."""
    ran: list[str] = []

    @guard.tool()  # the tool is named after the function: Tool::"search"
    def search(query: str, limit: int = 3) -> str:
        ran.append(f"search:{query}")
        return f"{limit} results for {query!r}"

    @guard.tool("delete")
    def delete_file(path: str) -> None:
        ran.append(f"delete:{path}")  # never reached when policy denies

    @guard.tool("search")
    async def search_async(query: str) -> str:
        await asyncio.sleep(0)
        ran.append(f"async search:{query}")
        return f"3 results for {query!r}"

    out(f"search('invoices') -> {search('invoices')}")
    try:
        delete_file("/reports/q3.pdf")
    except ToolCallDenied as denied:
        out(f"delete('/reports/q3.pdf') refused: {denied.reason} (decision {denied.decision_id})")

    async def main() -> None:
        out(f"async search('refunds') -> {await search_async('refunds')}")
        try:
            async with guard.call("delete", {"path": "/"}):
                ran.append("async delete")
        except ToolCallDenied as denied:
            out(f"async delete refused: {denied.reason}")

    asyncio.run(main())
    out(f"events shipped: {guard.drain(10)}")
    return ran


def main(example: Callable[[Guard], object] = run, doc: str = __doc__) -> int:
    """The command line (also examples/guarded_langchain_tools.py's): connect a guard
    for the agent, then run ``example`` with it."""
    env = os.environ.get
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--issuer", default=env("AGENTIAM_ISSUER", "http://127.0.0.1:8080"))
    parser.add_argument("--agent", default=env("AGENTIAM_AGENT_ID"), required=False)
    parser.add_argument("--key", default=env("AGENTIAM_AGENT_KEY", "agent.key"), type=Path)
    parser.add_argument("--resource", default=env("AGENTIAM_RESOURCE"))
    parser.add_argument("--spool", default="./guard-spool", type=Path)
    parser.add_argument("--name", default="example-agent")
    args = parser.parse_args()
    if not args.agent or not args.resource:
        parser.error("--agent and --resource are required")
    agent = AgentClient(
        args.issuer, client_id=args.agent, key=AgentKey.load(args.key), resource=args.resource
    )
    with Guard.connect(
        args.issuer,
        resource=args.resource,
        spool_dir=args.spool.resolve(),
        name=args.name,
        token=lambda: agent.token().value,  # refreshed before it expires
    ) as guard:
        example(guard)
    agent.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
