"""Guard LangChain tools in the agent's own process (``pip install 'agentiam[langchain]'``).

``guard.langchain_tools([...])`` returns tools an agent uses as it would the
originals (LangChain's ``create_agent``, a LangGraph ``ToolNode``, or ``tool.invoke``):
same name, description and argument schema, so the model sees no difference. Each
call is decided locally and its decision fsynced to the audit spool before the tool
runs. A refused call never runs; the model gets a ``ToolMessage`` with
``status="error"`` saying why, so it can change course or tell its human.

This example plays the model's part itself: it sends the tool calls a model would
(``{"type": "tool_call", "name": …, "args": …, "id": …}``), so it runs without an LLM.

Run against a local control plane (see docs/guard.md for the full set-up)::

    # a verifier-role admin key bound to this guard (source guard/NAME, NAME its --name) and agent:
    # agentiam admin-keys create --name guard --role verifier \\
    #     --source guard/example-agent --agent agt_...
    export AGENTIAM_GUARD_KEY=aiam_...
    python examples/guarded_langchain_tools.py --issuer http://127.0.0.1:8080 \\
        --agent agt_... --key agent.key --resource https://tools.example.com \\
        --spool ./guard-spool

With a policy that permits ``Tool::"search"`` and nothing else it prints::

    search -> success: 3 results for 'invoices'
    delete -> error: AgentIAM refused this call (403 insufficient_scope): ... Decision: dec_...
    async search -> success: 3 results for 'refunds'
    events shipped: True
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool, tool

from agentiam.guard import Guard


def build_tools(guard: Guard, ran: list[str]) -> list[BaseTool]:
    """Two ordinary LangChain tools, guarded."""

    @tool
    async def search(query: str, limit: int = 3) -> str:
        """Search the document store."""
        ran.append(f"search:{query}")
        return f"{limit} results for {query!r}"

    @tool
    def delete(path: str) -> str:
        """Delete a file."""
        ran.append(f"delete:{path}")  # never reached when policy denies
        return f"deleted {path}"

    return guard.langchain_tools([search, delete])


def _call(name: str, args: dict[str, Any], n: int) -> dict[str, Any]:
    """A tool call as a model emits it (an ``AIMessage.tool_calls`` entry)."""
    return {"type": "tool_call", "name": name, "args": args, "id": f"call_{n}"}


def run(guard: Guard, out: Callable[[str], None] = print) -> list[str]:
    """Call the guarded tools as an agent loop would, report. Returns what ran."""
    ran: list[str] = []
    tools = {t.name: t for t in build_tools(guard, ran)}

    def report(label: str, message: ToolMessage) -> None:
        out(f"{label} -> {message.status}: {message.content}")

    async def main() -> None:
        report("search", await tools["search"].ainvoke(_call("search", {"query": "invoices"}, 1)))
        report("delete", tools["delete"].invoke(_call("delete", {"path": "/reports/q3.pdf"}, 2)))
        found = await tools["search"].ainvoke(_call("search", {"query": "refunds"}, 3))
        report("async search", found)

    asyncio.run(main())
    out(f"events shipped: {guard.drain(10)}")
    return ran


def main() -> int:
    """The same command line as examples/guarded_functions.py."""
    from guarded_functions import main as guarded_main  # the example next to this one

    return guarded_main(run, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
