"""agentiam policy: the versioned Cedar policy set, decisions, and policy tests."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer
import yaml

from agentiam.cli.common import cli_context, container
from agentiam.cli.output import console, emit, fail, handle_errors
from agentiam.core.policy.authorizer import AuthzRequest, RequestError
from agentiam.core.policy.cases import load_cases, run_cases, snapshot_from
from agentiam.core.policy.engine import PolicyEngine, validate
from agentiam.core.policy.model import EntityRef, Mode, PolicyRecord, PolicySetVersion
from agentiam.core.policy.parsing import parse_policies
from agentiam.core.policy.schema import load_schema, parse_extension
from agentiam.errors import InvalidInput
from agentiam.services.policies import PolicyChange

app = typer.Typer(
    help="Cedar policies: edit, version, roll back, import/export, decide and test.",
    no_args_is_help=True,
)
Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]
VersionOpt = Annotated[int | None, typer.Option("--version", "-v", help="Default: current.")]
Comment = Annotated[str, typer.Option("--comment", "-m", help="Recorded with the version.")]
Expected = Annotated[
    int | None,
    typer.Option("--expected-version", help="Refuse unless the set is at this version."),
]


def _policy_row(r: PolicyRecord) -> dict[str, Any]:
    return {
        "id": r.id,
        "mode": r.mode.value,
        "description": r.description,
        "template": r.template,
        "text": r.text,
    }


def _version_row(v: PolicySetVersion) -> dict[str, Any]:
    return {
        "version": v.version,
        "created_at": v.created_at.isoformat(),
        "created_by": v.created_by,
        "change": v.change,
        "policies": v.policy_count,
        "comment": v.comment,
    }


def _print_change(change: PolicyChange) -> None:
    console.print(
        f"policy set version {change.version.version}: "
        f"{len(change.put)} written, {len(change.deleted)} deleted"
    )


def _read(path: Path) -> str:
    try:
        return sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {path}: {exc.__class__.__name__}")


@app.command("list")
def list_policies(version: VersionOpt = None, as_json: Json = False) -> None:
    """List the policies of the current (or a past) version."""
    with handle_errors(), container() as c:
        at, records = c.policies.policies(version)
    rows = [_policy_row(r) for r in records]
    if as_json:
        emit({"version": at, "policies": rows}, as_json=True, columns=[])
    else:
        emit(rows, as_json=False, columns=["id", "mode", "template", "description"],
             title=f"policy set version {at}")  # fmt: skip


@app.command()
def show(policy_id: str, version: VersionOpt = None, as_json: Json = False) -> None:
    """Show one policy's Cedar text."""
    with handle_errors(), container() as c:
        _, record = c.policies.get(policy_id, version)
    if as_json:
        emit(_policy_row(record), as_json=True, columns=[])
    else:
        console.print(f"# {record.id} ({record.mode.value}) {record.description}")
        console.print(record.text, highlight=False, markup=False)


def _parameters(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            fail(f"--param {item!r} is not key=value")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


@app.command()
def put(
    policy_id: str,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="Cedar text of one policy ('-': stdin).")
    ] = None,
    template: Annotated[str | None, typer.Option("--template", "-t")] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="Template parameter key=value (value may be JSON)."),
    ] = None,
    mode: Annotated[
        Mode | None, typer.Option("--mode", help="Default: the text's @mode, else enforce.")
    ] = None,
    description: Annotated[str, typer.Option("--description", "-d")] = "",
    comment: Comment = "",
    expected_version: Expected = None,
) -> None:
    """Create or replace a policy from a file or a template (a new version)."""
    with handle_errors(), container() as c:
        _, change = c.policies.put(
            cli_context(),
            policy_id,
            text=_read(file) if file else None,
            template=template,
            parameters=_parameters(param or []) if template else None,
            mode=mode,
            description=description,
            expected_version=expected_version,
            comment=comment,
        )
    _print_change(change)


@app.command()
def delete(policy_id: str, comment: Comment = "", expected_version: Expected = None) -> None:
    """Delete a policy (a new version)."""
    with handle_errors(), container() as c:
        change = c.policies.delete(
            cli_context(), policy_id, expected_version=expected_version, comment=comment
        )
    _print_change(change)


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help=".cedar file ('-': stdin)")],
    replace: Annotated[
        bool, typer.Option("--replace", help="The file becomes the whole policy set.")
    ] = False,
    comment: Comment = "",
    expected_version: Expected = None,
) -> None:
    """Import a .cedar file as one new version (policies named by @id)."""
    with handle_errors(), container() as c:
        change = c.policies.import_text(
            cli_context(),
            _read(file),
            replace_all=replace,
            expected_version=expected_version,
            comment=comment,
        )
    _print_change(change)


@app.command()
def export(
    version: VersionOpt = None,
    output: Annotated[Path | None, typer.Option("--output", "-o")] = None,
) -> None:
    """Export the set as a .cedar file (re-importable: @id and @mode annotations)."""
    with handle_errors(), container() as c:
        _, text = c.policies.export(version)
    if output:
        output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


@app.command("validate")
def validate_(file: Annotated[Path, typer.Argument(help=".cedar file ('-': stdin)")]) -> None:
    """Validate policies against the current schema without storing them."""
    with handle_errors(), container() as c:
        errors = c.policies.check(_read(file))
    if errors:
        for e in errors:
            console.print(f"{e['policy_id']}: {e['message']}", highlight=False, markup=False)
        raise typer.Exit(1)
    console.print("valid")


@app.command()
def versions(
    limit: Annotated[int, typer.Option("--limit", min=1, max=200)] = 20, as_json: Json = False
) -> None:
    """The history of the policy set, newest first."""
    with handle_errors(), container() as c:
        items = c.policies.versions(limit=limit)
    emit(
        [_version_row(v) for v in items],
        as_json=as_json,
        columns=["version", "created_at", "created_by", "change", "policies", "comment"],
    )


@app.command()
def rollback(version: int, comment: Comment = "", expected_version: Expected = None) -> None:
    """Make a new version whose policies equal VERSION's."""
    with handle_errors(), container() as c:
        change = c.policies.rollback(
            cli_context(), version, expected_version=expected_version, comment=comment
        )
    _print_change(change)


@app.command()
def schema(version: VersionOpt = None) -> None:
    """Print the effective Cedar schema (JSON)."""
    with handle_errors(), container() as c:
        _, found = c.policies.schema(version)
    sys.stdout.write(json.dumps({"": found.document}, indent=2, sort_keys=True) + "\n")


@app.command("extend-schema")
def extend_schema(
    file: Annotated[Path, typer.Argument(help="JSON schema fragment ('-': stdin; {} clears)")],
    comment: Comment = "",
) -> None:
    """Replace the operator's schema extension (a new version)."""
    with handle_errors(), container() as c:
        change = c.policies.set_schema_extension(cli_context(), _read(file), comment=comment)
    _print_change(change)


@app.command()
def templates(as_json: Json = False) -> None:
    """The policy templates and their parameters."""
    with handle_errors(), container() as c:
        found = c.policies.templates()
    rows = [{**t.to_dict(), "parameters": [p.name for p in t.params]} for t in found]
    emit(rows, as_json=as_json, columns=["name", "description", "parameters"])


@app.command()
def decide(
    principal: Annotated[str, typer.Option("--principal", help="Type::id, e.g. Agent::agt_…")],
    action: Annotated[str, typer.Option("--action")],
    resource: Annotated[str, typer.Option("--resource", help="Type::id, e.g. Tool::transfer")],
    context: Annotated[str, typer.Option("--context", help="JSON object")] = "{}",
    parent: Annotated[
        list[str] | None,
        typer.Option(
            "--parent",
            help="Type::id the enforcement point placed the resource in (repeatable), "
            "as resource_parents of POST /v1/authorize",
        ),
    ] = None,
    attributes: Annotated[
        str,
        typer.Option(
            "--attributes",
            help="JSON object of attributes derived for the resource, as "
            "resource_attributes of POST /v1/authorize (the catalog's win)",
        ),
    ] = "{}",
    as_json: Json = False,
) -> None:
    """Decide one request against the current set (audited like POST /v1/authorize);
    a request the schema refuses fails (exit 1) with the reason, undecided."""
    ctx_value = _json_object(context, "--context")
    attributes_value = _json_object(attributes, "--attributes")
    try:
        parents = tuple(EntityRef.parse(p) for p in parent or ())
    except InvalidInput:
        fail("--parent must be Type::id")
    with handle_errors(), container() as c:
        request = AuthzRequest(
            EntityRef.parse(principal),
            action,
            EntityRef.parse(resource),
            ctx_value,
            resource_parents=parents,
            resource_attributes=attributes_value,
        )
        try:
            c.decisions.authorizer.validate_request(request)
        except RequestError as exc:
            fail(f"the request is not valid: {exc}")
        [decision] = c.decisions.decide(cli_context(), [request])
    if as_json:
        emit(decision.to_dict(), as_json=True, columns=[])
        return
    colour = "green" if decision.allowed else "red"
    console.print(f"[bold {colour}]{decision.decision}[/] ({decision.decision_id})")
    for reason in decision.reasons:
        console.print(f"  {reason}", highlight=False, markup=False)
    if decision.dry_run:
        console.print(f"  dry run: would {decision.dry_run.decision}", highlight=False)


def _json_object(text: str, option: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        fail(f"{option} is not JSON")
    if not isinstance(value, dict):
        fail(f"{option} must be a JSON object")
    return value


def _load(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        fail(f"cannot read {path}: {exc.__class__.__name__}", code=2)
    if not isinstance(data, dict):
        fail(f"{path} must hold a mapping with 'cases'", code=2)
    return data


def _engine_from_files(base: Path, data: dict[str, Any]) -> PolicyEngine:
    extension = ""
    if data.get("schema_extension"):
        text = (base / str(data["schema_extension"])).read_text(encoding="utf-8")
        extension = json.dumps(parse_extension(text), sort_keys=True)
    schema_ = load_schema(extension)
    text = (base / str(data["policies"])).read_text(encoding="utf-8")
    records = [p.record for p in parse_policies(text)]
    errors = validate(schema_, records)
    if errors:
        raise InvalidInput("the policies do not validate", errors=[dict(e) for e in errors])
    return PolicyEngine(0, schema_, records)


@app.command("test")
def run_tests(
    cases_file: Annotated[Path, typer.Argument(help="YAML (or JSON) file of cases")],
    as_json: Json = False,
) -> None:
    """Run request → expected-decision cases; exit 1 on any mismatch (for CI).

    With 'policies:' in the file, everything comes from files (no database needed);
    without it, the database's current policy set and registry are used.
    """
    data = _load(cases_file)
    with handle_errors():
        cases = load_cases(data)
        now = None
        zone = str(data.get("time_zone") or "UTC")
        try:
            ZoneInfo(zone)
            if data.get("now"):
                now = datetime.fromisoformat(str(data["now"]).replace("Z", "+00:00"))
                if now.tzinfo is None:
                    now = now.replace(tzinfo=UTC)  # a time without a zone is UTC
        except (ValueError, ZoneInfoNotFoundError):
            fail(f"{cases_file}: 'now' must be ISO 8601 and 'time_zone' an IANA zone", code=2)
        if data.get("policies"):
            try:
                engine = _engine_from_files(cases_file.parent, data)
            except OSError as exc:
                fail(f"cannot read a file named in {cases_file}: {exc}", code=2)
            entities = snapshot_from(engine, data)
        else:
            with container() as c:
                authorizer = c.decisions.authorizer
                engine, entities = authorizer.engine, authorizer.entities
        results = run_cases(engine, entities, cases, now=now, zone=zone)
    failed = [r for r in results if not r.passed]
    rows = [
        {
            "case": r.case.name,
            "expected": r.case.expect
            + (f" by {','.join(r.case.policies)}" if r.case.policies is not None else ""),
            "actual": r.decision.decision
            + (f" by {','.join(r.decision.policies)}" if r.decision.policies else ""),
            "result": "pass" if r.passed else "FAIL",
            "reasons": list(r.decision.reasons),
        }
        for r in results
    ]
    emit(rows, as_json=as_json, columns=["case", "expected", "actual", "result", "reasons"])
    if not as_json:
        console.print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    if failed:
        raise typer.Exit(1)
