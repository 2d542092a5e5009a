"""agentiam db: schema migrations."""

from __future__ import annotations

import typer

from agentiam.adapters.storage import migrate
from agentiam.adapters.storage.engine import redact_url
from agentiam.cli.common import container
from agentiam.cli.output import console, handle_errors

app = typer.Typer(help="Database schema migrations.", no_args_is_help=True)


@app.command()
def upgrade() -> None:
    """Apply every pending migration (safe to run repeatedly)."""
    with handle_errors(), container(require_current_schema=False) as c:
        migrate.upgrade(c.engine)
        console.print(
            f"database {redact_url(c.settings.database_url)} is at revision "
            f"{migrate.current_revision(c.engine)}"
        )


@app.command()
def status() -> None:
    """Show the current and the newest schema revision."""
    with handle_errors(), container(require_current_schema=False) as c:
        current, head = migrate.current_revision(c.engine), migrate.head_revision()
        console.print(f"current: {current or 'none'}  newest: {head}")
        if current != head:
            console.print("run 'agentiam db upgrade' to apply pending migrations")
            raise typer.Exit(1)
