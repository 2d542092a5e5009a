"""agentiam playbooks / agentiam responses: the response playbooks and the actions
they took (docs/response.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from agentiam.cli.common import container
from agentiam.cli.output import console, emit, fail, handle_errors
from agentiam.core.response.playbooks import load_playbooks

app = typer.Typer(help="Response playbooks: what alerts trigger.", no_args_is_help=True)
responses_app = typer.Typer(
    help="Response actions taken (from the audit trail).", no_args_is_help=True
)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
_PLAYBOOK_COLUMNS = ["name", "mode", "cooldown_seconds", "when", "actions"]
_RESPONSE_COLUMNS = ["time", "agent_id", "playbook", "action", "result", "dry_run", "alert_id"]


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="The playbook file (YAML or JSON).")],
    as_json: JsonOpt = False,
) -> None:
    """Check a playbook file offline: every key, every number, every webhook URL's
    form (secrets are read only by the server, at start)."""
    import yaml

    from agentiam.adapters.response_webhook import check_webhook_urls

    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        fail(f"cannot read {file}: {type(exc).__name__}")
    with handle_errors():
        loaded = load_playbooks(data)
        check_webhook_urls(loaded.webhooks)
    if as_json:
        emit(loaded.to_dict(), as_json=True, columns=[])
        return
    console.print(f"{file}: valid, version {loaded.version}, {len(loaded.playbooks)} playbooks")


def _rows(playbooks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {**p, "actions": [next(iter(a)) for a in p["actions"]], "when": p["when"]}
        for p in playbooks
    ]


@app.command()
def show(as_json: JsonOpt = False) -> None:
    """The playbooks the server loads (AGENTIAM_PLAYBOOKS_FILE) and the step-ups and
    throttles in force."""
    with handle_errors(), container() as c:
        data = {**c.response.playbooks.to_dict(), "measures": c.response.measures()}
    if as_json:
        emit(data, as_json=True, columns=[])
        return
    emit(_rows(data["playbooks"]), as_json=False, columns=_PLAYBOOK_COLUMNS, title="playbooks")


@responses_app.command("list")
def list_responses(
    agent: Annotated[str | None, typer.Option(help="Only this agent (id or name).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Response actions from the audit trail, oldest first."""
    with handle_errors(), container() as c:
        agent_id = c.agents.resolve(agent).id if agent else None
        events, _ = c.response.recent(agent_id=agent_id, limit=limit)
    rows = [
        {
            "time": e.time.isoformat(),
            "agent_id": e.agent_id,
            "action": e.action,
            **{k: e.details.get(k) for k in ("playbook", "result", "dry_run", "alert_id")},
            "details": dict(e.details),
        }
        for e in events
    ]
    emit(rows, as_json=as_json, columns=_RESPONSE_COLUMNS, title="response actions")
