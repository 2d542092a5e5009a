"""agentiam audit: query, verify and export the tamper-evident trail."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from agentiam.cli.common import container
from agentiam.cli.output import console, emit, fail, handle_errors
from agentiam.config import Settings
from agentiam.core.audit.events import AuditEvent, Outcome
from agentiam.core.audit.query_export import csv_lines, jsonl_lines, paged
from agentiam.core.audit.trail import Checkpoint
from agentiam.core.audit.verification import VerifyReport, verify_export
from agentiam.ports import AuditQuery

app = typer.Typer(help="The tamper-evident audit trail.", no_args_is_help=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _show(report: VerifyReport, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        state = "[green]intact[/]" if report.ok else "[bold red]TAMPERED[/]"
        console.print(
            f"{state}: {report.entries} entries, {report.heads_verified} of "
            f"{report.tree_heads} signed tree heads verified"
        )
        for finding in report.findings:
            where = "" if finding.index is None else f" at {finding.index}"
            console.print(f"  [red]{finding.kind}[/]{where}: {finding.detail}", highlight=False)
    if not report.ok:
        raise typer.Exit(2)


@app.command()
def verify(
    export: Annotated[
        Path | None, typer.Option(help="Verify this export offline instead of the database.")
    ] = None,
    jwks: Annotated[
        Path | None,
        typer.Option(help="The published JWK Set to trust (offline; default: the export's keys)."),
    ] = None,
    issuer: Annotated[
        str | None, typer.Option(help="The issuer that signed the heads (offline).")
    ] = None,
    tree_head: Annotated[
        Path | None,
        typer.Option(help="A tree head's JWS saved earlier (a witness copy) the trail must hold."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Recompute the trail and check every signed tree head; exit 2 if tampered."""
    if export is not None:
        trusted = json.loads(jwks.read_text(encoding="utf-8")) if jwks else None
        who = issuer or Settings.from_env().issuer_url
        with export.open(encoding="utf-8") as lines:
            report = verify_export(lines, issuer=who, jwks=trusted)
        _show(report, as_json)
        return
    if jwks is not None:
        fail("--jwks applies to --export", "Add --export FILE, or drop --jwks.")
    held = tree_head.read_text(encoding="ascii").strip() if tree_head else None
    with handle_errors(), container() as c:
        c.audit_trail.integrate_all()
        report = c.audit_trail.verify(held_head=held)
    _show(report, as_json)


@app.command("export")
def export_trail(
    output: Annotated[Path, typer.Option("-o", "--output", help="File to write (JSON Lines).")],
) -> None:
    """Write the trail (keys, entries with events, signed heads) for offline checks."""
    with handle_errors(), container() as c:
        c.audit_trail.integrate_all()
        with output.open("w", encoding="utf-8") as out:
            for line in c.audit_trail.export():
                out.write(line + "\n")
    console.print(f"wrote {output}")


@app.command()
def heads(
    limit: Annotated[int, typer.Option(min=1, max=200)] = 10, as_json: JsonOpt = False
) -> None:
    """List the latest signed tree heads."""
    with handle_errors(), container() as c:
        items = [h.to_dict() for h in c.audit_trail.tree_heads(limit=limit)]
    emit(
        items, as_json=as_json, columns=["tree_size", "root_hash", "signed_at"], title="Tree heads"
    )


def _checkpoint(cp: Checkpoint) -> dict[str, Any]:
    return cp.describe()


@app.command()
def prune(
    older_than_days: Annotated[
        float,
        typer.Option(
            "--older-than-days",
            min=0.0,
            help="Archive and prune entries whose events are older than this.",
        ),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be pruned; change nothing.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Archive the oldest entries to AGENTIAM_AUDIT_ARCHIVE_DIR, record a signed
    checkpoint and prune them (docs/audit.md#retention)."""
    from datetime import timedelta

    from agentiam.services.audit_retention import RetentionPolicy
    from agentiam.services.context import CallContext

    with handle_errors(), container() as c:
        if c.audit_retention is None:
            fail(
                "no archive directory is configured",
                "Set AGENTIAM_AUDIT_ARCHIVE_DIR: entries are archived before they are pruned.",
            )
        if not c.signing_keys.can_sign:
            fail("a checkpoint must be signed: no master key", "Set AGENTIAM_MASTER_KEY.")
        c.audit_trail.integrate_all()
        keep = timedelta(days=older_than_days)
        before = c.clock.now() - keep
        plan = c.audit_retention.plan(before)
        if dry_run:
            emit(
                plan.to_dict(),
                as_json=as_json,
                columns=["start", "end", "entries", "held_back_by"],
                title="Would prune",
            )
            return
        ctx = CallContext.system("cli/audit-prune")
        passes = c.audit_retention.run(ctx, RetentionPolicy(keep=keep))
        made = [_checkpoint(cp) for cp in c.audit_trail.checkpoints(limit=passes)] if passes else []
    if as_json:
        sys.stdout.write(json.dumps({"passes": passes, "checkpoints": made}) + "\n")
    elif made:
        console.print(f"pruned every entry before {made[0]['tree_size']}: {passes} archive(s)")
        for cp in reversed(made):
            console.print(f"  {cp['archive']}", highlight=False)
    else:
        console.print("nothing to prune")


@app.command()
def checkpoints(
    limit: Annotated[int, typer.Option(min=1, max=200)] = 10, as_json: JsonOpt = False
) -> None:
    """List the retention checkpoints the trail was pruned at, latest first."""
    with handle_errors(), container() as c:
        items = [_checkpoint(cp) for cp in c.audit_trail.checkpoints(limit=limit)]
    emit(items, as_json=as_json, columns=["tree_size", "signed_at", "archive"], title="Checkpoints")


# The filters of ``audit events`` and ``audit export-events`` (combined with AND).
AgentOpt = Annotated[str | None, typer.Option("--agent", help="Agent id (agt_…).")]
HumanOpt = Annotated[str | None, typer.Option("--human", help="Initiating human id (hum_…).")]
ActionOpt = Annotated[str | None, typer.Option("--action", help="Action, e.g. token or read.")]
ResTypeOpt = Annotated[str | None, typer.Option("--resource-type", help="Resource type.")]
ResIdOpt = Annotated[str | None, typer.Option("--resource-id", help="Resource id.")]
DecisionOpt = Annotated[str | None, typer.Option("--decision", help="Decision id (dec_…).")]
TraceOpt = Annotated[str | None, typer.Option("--trace", help="W3C trace id (32 hex).")]
OutcomeOpt = Annotated[Outcome | None, typer.Option("--outcome", help="The event's outcome.")]
TypeOpt = Annotated[str | None, typer.Option("--type", help="Event type, e.g. token.issued.")]
SinceOpt = Annotated[
    str | None, typer.Option("--since", help="At or after this ISO 8601 time (UTC if no zone).")
]
UntilOpt = Annotated[
    str | None, typer.Option("--until", help="Before this ISO 8601 time (UTC if no zone).")
]


def _time(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        fail(f"--{name} is not an ISO 8601 time: {value!r}", "For example 2026-11-23T12:00Z.")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _query(
    limit: int,
    *,
    agent: str | None,
    human: str | None,
    action: str | None,
    resource_type: str | None,
    resource_id: str | None,
    decision: str | None,
    trace: str | None,
    outcome: Outcome | None,
    type_: str | None,
    since: str | None,
    until: str | None,
) -> AuditQuery:
    if trace is not None:
        trace = trace.strip().lower()
        if len(trace) != 32 or any(ch not in "0123456789abcdef" for ch in trace):
            fail("--trace is not a W3C trace id", "Pass 32 hex digits.")
    return AuditQuery(
        limit=limit,
        agent_id=agent,
        human_id=human,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        decision_id=decision,
        trace_id=trace,
        outcome=outcome.value if outcome else None,
        type=type_,
        since=_time("since", since),
        until=_time("until", until),
    )


@app.command()
def events(
    agent: AgentOpt = None,
    human: HumanOpt = None,
    action: ActionOpt = None,
    resource_type: ResTypeOpt = None,
    resource_id: ResIdOpt = None,
    decision: DecisionOpt = None,
    trace: TraceOpt = None,
    outcome: OutcomeOpt = None,
    type_: TypeOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    after: Annotated[
        str | None, typer.Option(help="The 'next' value a previous page printed.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List audit events in append order, filtered (all filters combine with AND)."""
    if after is not None and not after.isdigit():
        fail("--after takes the 'next' value a previous page printed", "Start without it.")
    query = _query(
        limit,
        agent=agent,
        human=human,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        decision=decision,
        trace=trace,
        outcome=outcome,
        type_=type_,
        since=since,
        until=until,
    )
    with handle_errors(), container() as c:
        page = c.audit.find(replace(query, after=after))
    items = [e.to_dict() for e in page.items]
    if as_json:
        sys.stdout.write(
            json.dumps({"items": items, "next_after": page.next_after}, indent=2) + "\n"
        )
        return
    rows = [
        {
            "time": i["time"],
            "type": i["type"],
            "outcome": i["outcome"],
            "actor": f"{i['actor']['type']}:{i['actor']['id']}",
            "action": i["action"],
            "resource": f"{i['resource']['type']}:{i['resource']['id']}" if i["resource"] else None,
            "agent_id": i["agent_id"],
            "human": i["initiating_human"],
            "trace_id": i["trace"]["trace_id"],
        }
        for i in items
    ]
    columns = ["time", "type", "outcome", "actor", "action", "resource", "agent_id", "human"]
    emit(rows, as_json=False, columns=[*columns, "trace_id"], title="Audit events")
    if page.next_after:
        console.print(f"next page: --after {page.next_after}")


class ExportFormat(StrEnum):
    JSONL = "jsonl"
    CSV = "csv"


@app.command("export-events")
def export_events(
    output: Annotated[Path, typer.Option("-o", "--output", help="File to write.")],
    fmt: Annotated[ExportFormat, typer.Option("--format", help="jsonl or csv.")] = (
        ExportFormat.JSONL
    ),
    agent: AgentOpt = None,
    human: HumanOpt = None,
    action: ActionOpt = None,
    resource_type: ResTypeOpt = None,
    resource_id: ResIdOpt = None,
    decision: DecisionOpt = None,
    trace: TraceOpt = None,
    outcome: OutcomeOpt = None,
    type_: TypeOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    max_rows: Annotated[
        int, typer.Option("--max-rows", min=1, help="Stop after this many events.")
    ] = 1_000_000,
) -> None:
    """Write the matching events as JSON Lines (the stored records, each verifiable
    against the trail) or CSV (a flat view, escaped against formula injection)."""
    query = _query(
        1,
        agent=agent,
        human=human,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        decision=decision,
        trace=trace,
        outcome=outcome,
        type_=type_,
        since=since,
        until=until,
    )
    written = 0
    with handle_errors(), container() as c:

        def fetch(after: str | None, size: int) -> tuple[Sequence[AuditEvent], str | None]:
            page = c.audit.find(replace(query, limit=size, after=after))
            return page.items, page.next_after

        def rows() -> Iterator[dict[str, Any]]:
            nonlocal written
            for event in paged(fetch, max_rows):
                written += 1
                yield event.to_dict()

        lines = jsonl_lines(rows()) if fmt is ExportFormat.JSONL else csv_lines(rows())
        # newline="" keeps the csv module's CRLF record ends as they are
        with output.open("w", encoding="utf-8", newline="") as out:
            out.writelines(lines)
    console.print(f"wrote {written} events to {output}")
