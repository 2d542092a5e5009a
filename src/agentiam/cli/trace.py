"""agentiam trace: who started what.

``agentiam trace <trace-id|jti>`` (the default ``show`` command) draws, for a W3C trace
id, the tree from each initiating human through every agent of the delegation chain
to each action and its outcome; for a token id, the token's delegation tree and then
the events tied to its chain. ``agentiam trace token <jti>`` draws the delegation tree
alone.

Typer (Click) cannot give a group both an optional argument and sub-commands: the
argument would swallow the sub-command's name. So the group routes any first word that
is not a sub-command to ``show``: ``trace X`` is ``trace show X``.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.tree import Tree
from typer.core import TyperGroup

from agentiam.adapters.http.routes.delegations import NodeOut, TreeOut
from agentiam.bootstrap import Container
from agentiam.cli.common import container
from agentiam.cli.output import console, emit, fail, handle_errors
from agentiam.core.audit.events import AuditEvent, Outcome
from agentiam.core.audit.query_export import paged
from agentiam.core.ids import is_id
from agentiam.errors import NotFound
from agentiam.ports import AuditQuery

__all__ = ["app", "render", "render_events"]

TRACE_ID_RE = re.compile(r"^[0-9a-f]{32}$")
MAX_EVENTS = 2000  # per trace or token view; the rest is reported as cut


class _ShowByDefault(TyperGroup):
    """``trace <id>`` runs ``trace show <id>``; sub-commands and options are kept."""

    # ctx is typer's vendored click Context, which typer does not export
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["show", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_ShowByDefault,
    help="Trace who started what: agentiam trace <trace-id|jti>.",
    no_args_is_help=True,
)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _label(node: NodeOut, focus: str) -> str:
    state = "revoked" if node.revoked else "expired" if node.expired else "active"
    colour = {"revoked": "red", "expired": "yellow", "active": "green"}[state]
    mark = " [bold]◀[/]" if node.jti == focus else ""
    actor = node.client_id if node.actors else node.sub
    return (
        f"[bold]{escape(actor)}[/] {escape(node.jti)} [{colour}]{state}[/] "
        f"aud={escape(node.aud)} scope={escape(' '.join(node.scope)) or '-'} "
        f"({escape(node.origin)}){mark}"
    )


def render(tree: TreeOut) -> Tree:
    """The rich tree: the party acted for at the root, then every token by parent."""
    nodes = [*tree.ancestors, tree.token, *tree.descendants]
    root_node = nodes[0]
    title = f"[bold]{escape(root_node.sub)}[/]"
    if root_node.external_subject:
        title += f" (external: {escape(root_node.external_subject)})"
    if tree.grant:
        title += f" · grant {escape(tree.grant.id)} ({escape(tree.grant.status)})"
    top = Tree(title)
    branches: dict[str | None, Tree] = {}
    for node in nodes:
        parent = branches.get(node.parent_jti, top)
        branches[node.jti] = parent.add(_label(node, tree.token.jti))
    if tree.truncated:
        top.add("[yellow]… more descendants (truncated at 1000)[/]")
    return top


def _human(event: AuditEvent) -> str | None:
    """The initiating human: the event's own field, else what a token event recorded."""
    if event.initiating_human:
        return event.initiating_human
    found = event.details.get("initiating_human")
    return found if isinstance(found, str) and found else None


def _agents(event: AuditEvent) -> list[str]:
    """The agents from the outermost delegate down to the one that acted."""
    chain: Sequence[Any] = event.delegation_chain or event.details.get("actors") or ()
    agents = [a for a in chain if isinstance(a, str)][::-1]  # stored current actor first
    if event.agent_id and (not agents or agents[-1] != event.agent_id):
        agents.append(event.agent_id)
    return agents


_OUTCOME_COLOUR = {Outcome.SUCCESS: "green", Outcome.DENIED: "red", Outcome.FAILURE: "yellow"}


def _event_label(event: AuditEvent) -> str:
    colour = _OUTCOME_COLOUR[event.outcome]
    resource = (
        f" {escape(event.resource.type)}:{escape(event.resource.id)}" if event.resource else ""
    )
    extra = [f"type={escape(event.type)}"]
    if event.decision_id:
        extra.append(f"decision={escape(event.decision_id)}")
    jti = event.details.get("jti")
    if isinstance(jti, str):
        extra.append(f"jti={escape(jti)}")
    reason = f" — {escape(event.reason)}" if event.reason else ""
    return (
        f"{event.time:%Y-%m-%dT%H:%M:%SZ} [bold]{escape(event.action)}[/]{resource} → "
        f"[{colour}]{event.outcome.value}[/] ({' '.join(extra)}){reason}"
    )


def render_events(title: str, events: Iterable[AuditEvent], names: dict[str, str]) -> Tree:
    """Initiating human (or, without one, the actor) → each agent of the chain, the
    outermost delegate first → each action with its outcome, in time order."""
    top = Tree(title)
    branches: dict[tuple[str, ...], Tree] = {}

    def branch(path: tuple[str, ...], label: str) -> Tree:
        if path not in branches:
            parent = branches[path[:-1]] if len(path) > 1 else top
            branches[path] = parent.add(label)
        return branches[path]

    for event in events:
        human = _human(event)
        root = f"human:{human}" if human else event.actor.label
        if human:
            root_label = f"[bold]human[/] {escape(_named(human, names))}"
        else:
            root_label = f"[bold]{escape(event.actor.type.value)}[/] {escape(event.actor.id)}"
            root_label += " [dim](no initiating human)[/]"
        node = branch((root,), root_label)
        path: tuple[str, ...] = (root,)
        for agent in _agents(event):
            path = (*path, agent)
            node = branch(path, f"[bold]agent[/] {escape(_named(agent, names))}")
        node.add(_event_label(event))
    return top


def _named(ref: str, names: dict[str, str]) -> str:
    return f"{ref} ({names[ref]})" if ref in names else ref


def _names(c: Container, events: Sequence[AuditEvent]) -> dict[str, str]:
    """Display names for the humans and agents in ``events`` (ids that still exist)."""
    refs = {r for e in events for r in (_human(e), *_agents(e)) if r}
    names: dict[str, str] = {}
    for ref in sorted(refs)[:200]:
        try:
            if is_id(ref, "agent"):
                names[ref] = c.agents.get(ref).name
            elif is_id(ref, "human"):
                human = c.humans.get(ref)
                names[ref] = f"{human.display_name} <{human.email}>"
        except NotFound:
            continue
    return names


def _collect(c: Container, query: AuditQuery) -> tuple[list[AuditEvent], bool]:
    """Up to MAX_EVENTS matching events, and whether more were left out."""

    def fetch(after: str | None, size: int) -> tuple[Sequence[AuditEvent], str | None]:
        page = c.audit.find(replace(query, limit=size, after=after))
        return page.items, page.next_after

    events = list(paged(fetch, MAX_EVENTS + 1, page_size=500))
    return events[:MAX_EVENTS], len(events) > MAX_EVENTS


def _chain_events(c: Container, tree: TreeOut) -> tuple[list[AuditEvent], bool]:
    """The events tied to a token's chain: the issuance, exchange and introspection
    events naming one of the tree's tokens (``details.jti``), and the events done by
    the chain's agents for the same initiating party while its tokens were valid
    (decisions record the chain and the human, not the token id)."""
    nodes = [*tree.ancestors, tree.token, *tree.descendants]
    jtis = {n.jti for n in nodes}
    agents = {a for n in nodes for a in (n.client_id, *n.actors)}
    party = nodes[0].sub
    since = min(n.issued_at for n in nodes) - timedelta(seconds=1)
    until = max(n.expires_at for n in nodes) + timedelta(seconds=1)
    found: dict[str, AuditEvent] = {}
    cut = False
    for agent in sorted(agents):
        events, more = _collect(c, AuditQuery(limit=1, agent_id=agent, since=since, until=until))
        cut = cut or more
        for event in events:
            jti = event.details.get("jti")
            chain = set(event.delegation_chain)
            same_party = event.initiating_human == party or (
                event.initiating_human is None and party in agents
            )
            if jti in jtis or (chain and chain <= agents and same_party):
                found[event.event_id] = event
    return sorted(found.values(), key=lambda e: (e.time, e.event_id)), cut


@app.command()
def show(
    ref: Annotated[
        str,
        typer.Argument(
            metavar="TRACE_ID|JTI",
            help="A W3C trace id (32 hex digits) or a token id (tok_…).",
        ),
    ],
    as_json: JsonOpt = False,
) -> None:
    """Draw who started what: a trace from each initiating human through every agent
    to each action and its outcome; or a token's delegation tree and its chain's events."""
    trace_id = ref.strip().lower()
    if TRACE_ID_RE.match(trace_id):
        with handle_errors(), container() as c:
            events, cut = _collect(c, AuditQuery(limit=1, trace_id=trace_id))
            names = _names(c, events) if not as_json else {}
        if as_json:
            _print_json({"trace_id": trace_id, "events": events, "truncated": cut})
            return
        if not events:
            fail(f"no audit events carry trace id {trace_id}", "Check the id (W3C trace-id).")
        console.print(render_events(f"[bold]trace[/] {trace_id}", events, names))
        _footer(events, cut)
        return
    if not is_id(ref, "token"):
        fail(
            f"{ref!r} is neither a trace id nor a token id",
            "Pass a 32-hex W3C trace id or a token id (tok_…).",
        )
    with handle_errors(), container() as c:
        tree = TreeOut.of(c.delegation_graph.tree(ref), c.clock.now())
        events, cut = _chain_events(c, tree)
        names = _names(c, events) if not as_json else {}
    if as_json:
        _print_json({"tree": tree.model_dump(mode="json"), "events": events, "truncated": cut})
        return
    console.print(render(tree))
    console.print()
    if not events:
        console.print("[dim]no audit events tied to this chain[/]")
        return
    console.print(render_events(f"[bold]events of the chain of[/] {ref}", events, names))
    _footer(events, cut)


def _print_json(data: dict[str, Any]) -> None:
    data["events"] = [e.to_dict() for e in data["events"]]
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _footer(events: Sequence[AuditEvent], cut: bool) -> None:
    traces = sorted({e.trace.trace_id for e in events})
    summary = f"{len(events)} events in {len(traces)} trace(s)"
    console.print(f"[dim]{summary}{'; more left out' if cut else ''}[/]")


@app.command()
def token(
    jti: Annotated[str, typer.Argument(help="A token id (tok_…) in the delegation graph.")],
    as_json: JsonOpt = False,
) -> None:
    """Draw the delegation tree of a token: its ancestors and everything derived from it."""
    with handle_errors(), container() as c:
        out = TreeOut.of(c.delegation_graph.tree(jti), c.clock.now())
    if as_json:
        emit(out, as_json=True, columns=[])
        return
    console.print(render(out))
