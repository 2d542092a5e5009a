"""agentiam resources: the catalog of tools, servers, APIs and data sets policies name."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from agentiam.cli.common import cli_context, container
from agentiam.cli.output import console, emit, fail, handle_errors
from agentiam.core.policy.model import EntityRef, ResourceRecord
from agentiam.ports import ResourceQuery

app = typer.Typer(help="The resource catalog policies refer to.", no_args_is_help=True)
Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _row(r: ResourceRecord) -> dict[str, Any]:
    return {
        "type": r.type,
        "id": r.id,
        "attributes": dict(r.attributes),
        "parents": [str(p) for p in r.parents],
        "tags": dict(r.tags),
        "version": r.version,
    }


def _pairs(items: list[str], what: str, *, as_json_values: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            fail(f"{what} {item!r} is not key=value")
        if as_json_values:
            try:
                out[key] = json.loads(raw)
            except ValueError:
                out[key] = raw
        else:
            out[key] = raw
    return out


@app.command()
def put(
    type_: Annotated[str, typer.Argument(metavar="TYPE", help="Tool, McpServer, Api, …")],
    id_: Annotated[str, typer.Argument(metavar="ID")],
    attr: Annotated[
        list[str] | None, typer.Option("--attr", "-a", help="key=value (value may be JSON)")
    ] = None,
    parent: Annotated[list[str] | None, typer.Option("--parent", help="Type::id")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="key=value")] = None,
) -> None:
    """Add or replace a catalog entry."""
    with handle_errors(), container() as c:
        parents = [EntityRef.parse(p) for p in parent or []]
        stored = c.resources.put(
            cli_context(),
            ResourceRecord(
                type=type_,
                id=id_,
                attributes=_pairs(attr or [], "--attr", as_json_values=True),
                parents=tuple(parents),
                tags=_pairs(tag or [], "--tag", as_json_values=False),
            ),
        )
    console.print(f"{stored.type}::{stored.id} version {stored.version}")


@app.command("list")
def list_(
    type_: Annotated[str | None, typer.Option("--type")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=200)] = 50,
    as_json: Json = False,
) -> None:
    """List catalog entries."""
    with handle_errors(), container() as c:
        page = c.resources.find(ResourceQuery(limit=limit, type=type_))
    emit(
        [_row(r) for r in page.items],
        as_json=as_json,
        columns=["type", "id", "attributes", "parents", "tags"],
    )


@app.command()
def delete(
    type_: Annotated[str, typer.Argument(metavar="TYPE")],
    id_: Annotated[str, typer.Argument(metavar="ID")],
) -> None:
    """Remove a catalog entry."""
    with handle_errors(), container() as c:
        c.resources.delete(cli_context(), type_, id_)
    console.print(f"deleted {type_}::{id_}")
