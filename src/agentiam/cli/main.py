"""Entry point: ``agentiam``."""

from __future__ import annotations

import typer

from agentiam import __version__
from agentiam.cli import (
    access,
    admin_keys,
    agents,
    approvals,
    audit,
    db,
    detection,
    gateway,
    grants,
    guard,
    humans,
    keys,
    playbooks,
    policy,
    resources,
    tokens,
    trace,
)
from agentiam.cli.assess import assess
from agentiam.cli.assess import history_app as assessments_app
from agentiam.cli.serve import serve
from agentiam.cli.simulate import simulate

app = typer.Typer(
    name="agentiam",
    help="AgentIAM: identity and access management for AI agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command()(serve)
app.command()(simulate)
app.command()(assess)
app.add_typer(assessments_app, name="assessments")
app.add_typer(db.app, name="db")
app.add_typer(admin_keys.app, name="admin-keys")
app.add_typer(humans.app, name="humans")
app.add_typer(agents.app, name="agents")
app.add_typer(keys.app, name="keys")
app.add_typer(tokens.app, name="tokens")
app.add_typer(policy.app, name="policy")
app.add_typer(resources.app, name="resources")
app.add_typer(access.app, name="access")
app.add_typer(grants.app, name="grants")
app.add_typer(audit.app, name="audit")
app.add_typer(trace.app, name="trace")
app.add_typer(gateway.app, name="gateway")
app.add_typer(guard.app, name="guard")
app.add_typer(approvals.app, name="approvals")
app.add_typer(playbooks.app, name="playbooks")
app.add_typer(playbooks.responses_app, name="responses")
app.command("risk")(detection.risk)
app.add_typer(detection.alerts_app, name="alerts")


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
