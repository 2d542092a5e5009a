"""agentiam agents: register agents, move them through their lifecycle, manage keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from agentiam.adapters.http.schemas import AgentKeyOut, AgentOut, TransitionOut
from agentiam.cli.common import cli_context, container
from agentiam.cli.output import emit, fail, handle_errors
from agentiam.core.identities.lifecycle import AgentStatus, LifecycleAction
from agentiam.core.identities.models import AutonomyLevel
from agentiam.core.identities.validation import validate_label_filters
from agentiam.core.normalize import normalize_identifier
from agentiam.ports import AgentQuery
from agentiam.services.agents import AgentChanges, NewAgent

app = typer.Typer(help="Agents: registration, lifecycle, keys.", no_args_is_help=True)
keys_app = typer.Typer(help="An agent's public keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
AgentRef = Annotated[str, typer.Argument(help="Agent id (agt_…) or name.")]
Reason = Annotated[str, typer.Option("--reason", "-r", help="Why (recorded in the audit trail).")]
COLUMNS = [
    "id", "name", "status", "environment", "owners", "sponsors", "autonomy", "labels",
    "scopes", "audiences", "dpop_required", "expires_at",
]  # fmt: skip
KEY_COLUMNS = ["id", "kid", "alg", "status", "thumbprint", "created_at", "retired_at"]


def _labels(items: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"label {item!r} is not key=value", "Write labels as --label team=payments.")
        labels[key] = value
    return labels


ExpectationsOpt = Annotated[
    Path | None,
    typer.Option(
        "--expectations",
        help="YAML/JSON file of what the agent is meant to do (docs/detection.md).",
    ),
]


def _read_expectations(path: Path | None) -> dict[str, Any] | None:
    """An expectations file (YAML, which includes JSON); None when not given."""
    if path is None:
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        fail(f"cannot read {path}: {exc.__class__.__name__}", code=2)
    if data is None:
        return {}
    if not isinstance(data, dict):
        fail(f"{path} must hold a mapping of expectations", code=2)
    return data


def _read_jwk(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        fail(f"cannot read a JWK from {path}: {exc}", "Pass a file holding one public JWK.")
    if not isinstance(data, dict):
        fail(f"{path} does not hold a JSON object", "Pass a file holding one public JWK.")
    return data


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="Unique agent name.")],
    owner: Annotated[
        list[str] | None, typer.Option("--owner", "-o", help="Human id; repeat for several.")
    ] = None,
    sponsor: Annotated[
        list[str] | None, typer.Option("--sponsor", help="Sponsor human id; repeatable.")
    ] = None,
    purpose: Annotated[str, typer.Option(help="What the agent is for.")] = "",
    environment: Annotated[str, typer.Option("--environment", "-e")] = "",
    autonomy: Annotated[AutonomyLevel, typer.Option()] = AutonomyLevel.APPROVE_EACH,
    label: Annotated[list[str] | None, typer.Option("--label", "-l", help="key=value")] = None,
    framework: Annotated[str | None, typer.Option(help="Runtime framework.")] = None,
    model: Annotated[str | None, typer.Option(help="Model the agent runs on.")] = None,
    runtime_version: Annotated[str | None, typer.Option("--runtime-version")] = None,
    parent: Annotated[str | None, typer.Option(help="Parent agent id (ephemeral child).")] = None,
    ttl: Annotated[int | None, typer.Option(help="Child lifetime in seconds (max 86400).")] = None,
    key_file: Annotated[
        list[Path] | None, typer.Option("--key-file", help="Public JWK file; repeatable.")
    ] = None,
    activate: Annotated[bool, typer.Option(help="Activate at once.")] = False,
    scope: Annotated[
        list[str] | None, typer.Option("--scope", help="Entitled OAuth scope; repeatable.")
    ] = None,
    audience: Annotated[
        list[str] | None,
        typer.Option("--audience", help="Resource URI its tokens may name; repeatable."),
    ] = None,
    dpop: Annotated[
        bool, typer.Option("--dpop/--no-dpop", help="Require DPoP-bound tokens.")
    ] = True,
    expectations: ExpectationsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register an agent (pending unless --activate)."""
    if not purpose:
        fail("--purpose is required", "Say what the agent is for, e.g. --purpose 'pay invoices'.")
    if not environment:
        fail("--environment is required", "Use production, staging, development or your own.")
    runtime = {"framework": framework, "model": model, "version": runtime_version}
    with handle_errors(), container() as c:
        agent = c.agents.register(
            cli_context(),
            NewAgent(
                name=name,
                owners=owner or [],
                sponsors=sponsor or [],
                purpose=purpose,
                environment=environment,
                autonomy=autonomy.value,
                runtime=runtime,
                labels=_labels(label or []),
                parent_id=parent,
                ttl_seconds=ttl,
                activate=activate,
                keys=[_read_jwk(p) for p in key_file or []],
                scopes=scope or [],
                audiences=audience or [],
                dpop_required=dpop,
                expectations=_read_expectations(expectations),
            ),
        )
    emit(AgentOut.of(agent), as_json=as_json, columns=COLUMNS)


@app.command("list")
def list_agents(
    owner: Annotated[str | None, typer.Option(help="Owner human id.")] = None,
    sponsor: Annotated[str | None, typer.Option(help="Sponsor human id.")] = None,
    status: Annotated[AgentStatus | None, typer.Option()] = None,
    environment: Annotated[str | None, typer.Option("--environment", "-e")] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", "-l", help="key or key=value")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List agents, filtered."""
    with handle_errors(), container() as c:
        lim = c.settings.limits
        labels = validate_label_filters(label or [], lim)
        env = (
            normalize_identifier(environment, field="environment", max_length=lim.max_name_length)
            if environment
            else None
        )
        page = c.agents.find(
            AgentQuery(
                limit=limit,
                owner=owner,
                sponsor=sponsor,
                status=status,
                environment=env,
                labels=labels,
            )
        )
    emit([AgentOut.of(a) for a in page.items], as_json=as_json, columns=COLUMNS, title="Agents")


@app.command()
def show(agent: AgentRef, as_json: JsonOpt = False) -> None:
    """Show one agent with its keys and lifecycle history."""
    with handle_errors(), container() as c:
        found = c.agents.resolve(agent)
        keys = c.agents.keys(found.id)
        history = c.agents.transitions(found.id)
    if as_json:
        emit(
            {
                "agent": AgentOut.of(found).model_dump(mode="json"),
                "keys": [AgentKeyOut.of(k).model_dump(mode="json") for k in keys],
                "transitions": [TransitionOut.of(t).model_dump(mode="json") for t in history],
            },
            as_json=True,
            columns=[],
        )
        return
    emit(AgentOut.of(found), as_json=False, columns=[*COLUMNS, "purpose", "next_access_review"])
    emit([AgentKeyOut.of(k) for k in keys], as_json=False, columns=KEY_COLUMNS, title="Keys")
    emit(
        [TransitionOut.of(t) for t in history],
        as_json=False,
        columns=["at", "action", "from_status", "to_status", "actor", "reason"],
        title="Lifecycle",
    )


@app.command()
def update(
    agent: AgentRef,
    owner: Annotated[
        list[str] | None, typer.Option("--owner", "-o", help="Replace owners; repeatable.")
    ] = None,
    sponsor: Annotated[
        list[str] | None, typer.Option("--sponsor", help="Replace sponsors; repeatable.")
    ] = None,
    purpose: Annotated[str | None, typer.Option()] = None,
    environment: Annotated[str | None, typer.Option("--environment", "-e")] = None,
    autonomy: Annotated[AutonomyLevel | None, typer.Option()] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", "-l", help="Replace labels; key=value.")
    ] = None,
    scope: Annotated[
        list[str] | None, typer.Option("--scope", help="Replace entitled scopes; repeatable.")
    ] = None,
    audience: Annotated[
        list[str] | None, typer.Option("--audience", help="Replace audiences; repeatable.")
    ] = None,
    dpop: Annotated[
        bool | None, typer.Option("--dpop/--no-dpop", help="Require DPoP-bound tokens.")
    ] = None,
    expectations: ExpectationsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change an agent's owners, purpose, environment, autonomy, labels or entitlements.
    Narrowing entitlements revokes the agent's current tokens."""
    with handle_errors(), container() as c:
        found = c.agents.resolve(agent)
        changed = c.agents.update(
            cli_context(),
            found.id,
            AgentChanges(
                owners=owner,
                sponsors=sponsor,
                purpose=purpose,
                environment=environment,
                autonomy=autonomy.value if autonomy else None,
                labels=_labels(label) if label is not None else None,
                scopes=scope,
                audiences=audience,
                dpop_required=dpop,
                expectations=_read_expectations(expectations),
            ),
        )
    emit(AgentOut.of(changed), as_json=as_json, columns=COLUMNS)


def _transition(agent: str, action: LifecycleAction, reason: str | None, as_json: bool) -> None:
    with handle_errors(), container() as c:
        found = c.agents.resolve(agent)
        moved = c.agents.transition(cli_context(), found.id, action, reason)
    emit(AgentOut.of(moved), as_json=as_json, columns=COLUMNS)


@app.command()
def activate(
    agent: AgentRef,
    reason: Annotated[str | None, typer.Option("--reason", "-r")] = None,
    as_json: JsonOpt = False,
) -> None:
    """pending → active."""
    _transition(agent, LifecycleAction.ACTIVATE, reason, as_json)


@app.command()
def suspend(agent: AgentRef, reason: Reason, as_json: JsonOpt = False) -> None:
    """active → suspended (its ephemeral children are decommissioned)."""
    _transition(agent, LifecycleAction.SUSPEND, reason, as_json)


@app.command()
def resume(agent: AgentRef, reason: Reason, as_json: JsonOpt = False) -> None:
    """suspended → active."""
    _transition(agent, LifecycleAction.RESUME, reason, as_json)


@app.command()
def decommission(agent: AgentRef, reason: Reason, as_json: JsonOpt = False) -> None:
    """→ decommissioned, for good: keys retired, name never reused."""
    _transition(agent, LifecycleAction.DECOMMISSION, reason, as_json)


@keys_app.command("add")
def keys_add(
    agent: AgentRef,
    jwk_file: Annotated[Path, typer.Argument(help="File holding one public JWK.")],
    as_json: JsonOpt = False,
) -> None:
    """Register a public key (ES256 or Ed25519)."""
    jwk = _read_jwk(jwk_file)
    with handle_errors(), container() as c:
        found = c.agents.resolve(agent)
        key = c.agents.add_key(cli_context(), found.id, jwk)
    emit(AgentKeyOut.of(key), as_json=as_json, columns=KEY_COLUMNS)


@keys_app.command("retire")
def keys_retire(
    agent: AgentRef,
    key: Annotated[str, typer.Argument(help="Key id (key_…) or kid.")],
    reason: Reason,
    as_json: JsonOpt = False,
) -> None:
    """Retire a key; it can never be used again."""
    with handle_errors(), container() as c:
        found = c.agents.resolve(agent)
        retired = c.agents.retire_key(cli_context(), found.id, key, reason)
    emit(AgentKeyOut.of(retired), as_json=as_json, columns=KEY_COLUMNS)


@keys_app.command("list")
def keys_list(agent: AgentRef, as_json: JsonOpt = False) -> None:
    """List an agent's keys."""
    with handle_errors(), container() as c:
        found = c.agents.resolve(agent)
        keys = c.agents.keys(found.id)
    emit([AgentKeyOut.of(k) for k in keys], as_json=as_json, columns=KEY_COLUMNS, title="Keys")
