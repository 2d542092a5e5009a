"""agentiam humans: owners and sponsors of agents."""

from __future__ import annotations

from typing import Annotated

import typer

from agentiam.adapters.http.schemas import HumanOut
from agentiam.cli.common import cli_context, container
from agentiam.cli.output import emit, handle_errors
from agentiam.ports import HumanQuery
from agentiam.services.humans import HumanChanges, NewHuman

app = typer.Typer(help="Humans who own and sponsor agents.", no_args_is_help=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
COLUMNS = ["id", "display_name", "email", "external_identity"]


@app.command()
def create(
    name: Annotated[str, typer.Option("--name", help="Display name.")],
    email: Annotated[str, typer.Option(help="Email address (unique).")],
    issuer: Annotated[str | None, typer.Option(help="IdP issuer URL (optional).")] = None,
    subject: Annotated[str | None, typer.Option(help="IdP subject (with --issuer).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a human."""
    with handle_errors(), container() as c:
        human = c.humans.create(
            cli_context(),
            NewHuman(
                display_name=name, email=email, external_issuer=issuer, external_subject=subject
            ),
        )
    emit(HumanOut.of(human), as_json=as_json, columns=COLUMNS)


@app.command("list")
def list_humans(
    email: Annotated[str | None, typer.Option(help="Only this email.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List humans."""
    with handle_errors(), container() as c:
        page = c.humans.find(HumanQuery(limit=limit, email=email.casefold() if email else None))
    emit([HumanOut.of(h) for h in page.items], as_json=as_json, columns=COLUMNS, title="Humans")


@app.command()
def show(human_id: str, as_json: JsonOpt = False) -> None:
    """Show one human."""
    with handle_errors(), container() as c:
        human = c.humans.get(human_id)
    emit(HumanOut.of(human), as_json=as_json, columns=COLUMNS)


@app.command()
def update(
    human_id: str,
    name: Annotated[str | None, typer.Option("--name", help="New display name.")] = None,
    email: Annotated[str | None, typer.Option(help="New email.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a human's display name or email."""
    with handle_errors(), container() as c:
        human = c.humans.update(
            cli_context(), human_id, HumanChanges(display_name=name, email=email)
        )
    emit(HumanOut.of(human), as_json=as_json, columns=COLUMNS)
