"""agentiam trace: draw a delegation tree from the initiating human down."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.tree import Tree

from agentiam.adapters.http.routes.delegations import NodeOut, TreeOut
from agentiam.cli.common import container
from agentiam.cli.output import console, emit, handle_errors

app = typer.Typer(help="Trace delegation chains.", no_args_is_help=True)


def _label(node: NodeOut, focus: str) -> str:
    state = "revoked" if node.revoked else "expired" if node.expired else "active"
    colour = {"revoked": "red", "expired": "yellow", "active": "green"}[state]
    mark = " [bold]◀[/]" if node.jti == focus else ""
    actor = node.client_id if node.actors else node.sub
    return (
        f"[bold]{actor}[/] {node.jti} [{colour}]{state}[/] "
        f"aud={node.aud} scope={' '.join(node.scope) or '-'} ({node.origin}){mark}"
    )


def render(tree: TreeOut) -> Tree:
    """The rich tree: the party acted for at the root, then every token by parent."""
    nodes = [*tree.ancestors, tree.token, *tree.descendants]
    root_node = nodes[0]
    title = f"[bold]{root_node.sub}[/]"
    if root_node.external_subject:
        title += f" (external: {root_node.external_subject})"
    if tree.grant:
        title += f" · grant {tree.grant.id} ({tree.grant.status})"
    top = Tree(title)
    branches: dict[str | None, Tree] = {}
    for node in nodes:
        parent = branches.get(node.parent_jti, top)
        branches[node.jti] = parent.add(_label(node, tree.token.jti))
    if tree.truncated:
        top.add("[yellow]… more descendants (truncated at 1000)[/]")
    return top


@app.command()
def token(
    jti: Annotated[str, typer.Argument(help="A token id (tok_…) in the delegation graph.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Draw the delegation tree of a token: its ancestors and everything derived from it."""
    with handle_errors(), container() as c:
        out = TreeOut.of(c.delegation_graph.tree(jti), c.clock.now())
    if as_json:
        emit(out, as_json=True, columns=[])
        return
    console.print(render(out))
