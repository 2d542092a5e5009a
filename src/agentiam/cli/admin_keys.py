"""agentiam admin-keys: keys for the admin API."""

from __future__ import annotations

from typing import Annotated

import typer

from agentiam.adapters.http.schemas import AdminKeyOut, IssuedAdminKeyOut
from agentiam.cli.common import cli_context, container
from agentiam.cli.output import console, emit, err_console, fail, handle_errors
from agentiam.core.access.admin_keys import IngestBinding, Role

app = typer.Typer(help="Admin API keys (shown once, stored hashed).", no_args_is_help=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
COLUMNS = [
    "id",
    "prefix",
    "name",
    "role",
    "sources",
    "binding",
    "created_at",
    "expires_at",
    "revoked_at",
]


@app.command()
def create(
    name: Annotated[str, typer.Option(help="What the key is for.")],
    role: Annotated[
        Role, typer.Option(help="admin, operator, auditor or verifier (an enforcement point).")
    ] = Role.OPERATOR,
    source: Annotated[
        list[str] | None,
        typer.Option(
            help="Verifier keys: an enforcement point (gateway/NAME or guard/NAME) whose "
            "audit events the key may ingest; repeat for more. A verifier key needs one "
            "(or --any-source)."
        ),
    ] = None,
    agent: Annotated[
        list[str] | None,
        typer.Option(
            help="Verifier keys: an agent (agt_…) its ingested events may be about; "
            "repeat for more. Default: any."
        ),
    ] = None,
    any_source: Annotated[
        bool,
        typer.Option(
            "--any-source",
            help="Verifier keys: make a key that may ingest events in any enforcement "
            "point's name instead of naming --source (listed as binding any_source).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create a key and print it once."""
    if role is Role.VERIFIER and not source and not any_source:
        fail(
            "a verifier key needs --source: the enforcement point that will hold it",
            "Add --source gateway/NAME (a gateway's name in its config) or --source "
            "guard/NAME (and --agent agt_… for a guard); or --any-source for a key that "
            "may report in any enforcement point's name.",
        )
    if source and any_source:
        fail("--source and --any-source exclude each other", "Keep one of them.")
    with handle_errors(), container() as c:
        issued = c.admin_keys.create(
            cli_context(),
            name=name,
            role=role,
            sources=source or (),
            agents=agent or (),
            any_source=any_source,
        )
    out = IssuedAdminKeyOut.issued(issued)
    if as_json:
        emit(out, as_json=True, columns=[])
        return
    emit(out, as_json=False, columns=COLUMNS)
    console.print(f"[bold]key:[/] {issued.secret}", highlight=False)
    console.print("Store it now: it is shown only once and kept only as a hash.")


@app.command("list")
def list_keys(as_json: JsonOpt = False) -> None:
    """List keys (prefixes only; secrets are never stored)."""
    with handle_errors(), container() as c:
        keys = c.admin_keys.all()
        now = c.clock.now()
    emit([AdminKeyOut.of(k) for k in keys], as_json=as_json, columns=COLUMNS, title="Admin keys")
    legacy = [k.prefix for k in keys if k.binding is IngestBinding.LEGACY and k.is_valid(now)]
    if legacy and not as_json:
        err_console.print(
            f"[bold]note:[/] {len(legacy)} verifier key(s) ({', '.join(legacy)}) predate "
            "bindings and may ingest events for any enforcement point and agent: re-issue "
            "each with --source and revoke the old one.",
            highlight=False,
        )


@app.command()
def revoke(
    key: Annotated[str, typer.Argument(help="Key id (adk_…) or prefix.")],
    as_json: JsonOpt = False,
) -> None:
    """Revoke a key; the next request with it fails."""
    with handle_errors(), container() as c:
        revoked = c.admin_keys.revoke(cli_context(), key)
    emit(AdminKeyOut.of(revoked), as_json=as_json, columns=COLUMNS)
