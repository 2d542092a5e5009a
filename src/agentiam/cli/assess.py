"""agentiam assess: score the deployment's readiness for agentic AI from live evidence
plus people's answers (docs/assessment.md).

Non-interactive with ``--answers FILE``: the file must answer every question in scope
the deployment cannot measure (``unknown`` is an answer); a bad or partial file exits
with status 2 and names the question. With ``--interactive`` the command asks those
questions itself. With neither, only the evidence scores and the rest are listed as
gaps.

Each run joins the stored history (``--no-save`` skips that), so the HTML report's
trend shows the assessments before it; ``--history FILE`` (repeatable) adds earlier
``--format json`` reports kept elsewhere. ``agentiam assessments list|show`` read the
history (docs/assessment.md#stored-history)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.table import Table

from agentiam.adapters.reports.assessment_formats import (
    FORMATS,
    Format,
    render_report,
    render_stored,
    trend_history,
)
from agentiam.adapters.reports.assessment_html import MAX_HISTORY, trend_point
from agentiam.cli.common import cli_context, container
from agentiam.cli.output import console, emit, err_console, fail, handle_errors
from agentiam.core.assessment import (
    LEVEL_DESCRIPTIONS,
    AISystem,
    Answers,
    Level,
    QuestionBank,
    load_answers,
    load_declared_systems,
)
from agentiam.core.assessment.report import AssessmentReport
from agentiam.core.assessment.scoring import UNKNOWN as UNKNOWN_ANSWER
from agentiam.errors import InvalidInput
from agentiam.services.assessment import AssessmentService

__all__ = ["assess", "history_app"]

_SUFFIXES: dict[str, Format] = {
    ".json": "json",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
}
_MAX_HISTORY_BYTES = 8 * 1024 * 1024  # one earlier JSON report
_TOP_ROADMAP = 10
_BAD_INPUT = 2  # exit status for a bad answers or inventory file


def _bad(message: str, hint: str | None = None) -> NoReturn:
    fail(message, hint, code=_BAD_INPUT)


def _read_yaml(path: Path, what: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        _bad(f"cannot read the {what} {path}: {type(exc).__name__}")
    except yaml.YAMLError as exc:
        _bad(f"the {what} {path} is not valid YAML: {exc}")


def _answers(path: Path, bank: QuestionBank) -> Answers:
    data = _read_yaml(path, "answers file")
    try:
        return load_answers(data, bank)
    except InvalidInput as exc:
        _bad(f"{path}: {exc.detail}", exc.hint)


def _inventory(path: Path | None) -> tuple[AISystem, ...]:
    if path is None:
        return ()
    data = _read_yaml(path, "inventory file")
    try:
        if not isinstance(data, dict) or set(data) != {"systems"}:
            raise InvalidInput("inventory file: must be a mapping with one key, systems")
        return load_declared_systems(data["systems"])
    except InvalidInput as exc:
        _bad(f"{path}: {exc.detail}", exc.hint)


def _ask(service: AssessmentService, declared: tuple[AISystem, ...]) -> Answers:
    """Ask each question in scope the evidence cannot answer (on stderr, so a report
    on stdout stays clean); the answers go through the same strict loader as a file."""
    bank = service.bank
    questions = service.to_ask(declared=declared)
    say = err_console.print
    say(f"[bold]{len(questions)} questions the deployment cannot answer itself[/]")
    for level in Level:
        say(f"  {int(level)}  {LEVEL_DESCRIPTIONS[level]}", highlight=False)
    raw: dict[str, Any] = {}
    for i, q in enumerate(questions, 1):
        say(f"\n[bold]{i}/{len(questions)} {q.id}[/]: {q.text}", highlight=False)
        say(q.guidance, style="dim", highlight=False)
        while True:
            given = typer.prompt("level 0-4, or 'unknown'", default=UNKNOWN_ANSWER, err=True)
            given = given.strip().lower()
            if given == UNKNOWN_ANSWER or given in {"0", "1", "2", "3", "4"}:
                break
            say("give a level 0-4, or 'unknown'")
        raw[q.id] = given if given == UNKNOWN_ANSWER else int(given)
    return load_answers({"bank_version": bank.version, "answers": raw}, bank)


def assess(
    answers: Annotated[
        Path | None,
        typer.Option(
            "--answers",
            help="YAML answers to the self-reported questions (docs/assessment.md#answers-files).",
        ),
    ] = None,
    interactive: Annotated[
        bool,
        typer.Option("--interactive", "-i", help="Ask the questions the evidence cannot answer."),
    ] = False,
    inventory: Annotated[
        Path | None,
        typer.Option("--inventory", help="YAML with the AI systems declared by hand (systems:)."),
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="json, markdown or html (default: a summary for people)."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Write the report here (format from .json/.md/.html)."),
    ] = None,
    history: Annotated[
        list[Path] | None,
        typer.Option(
            "--history",
            help="An earlier --format json report for the HTML trend (repeatable).",
        ),
    ] = None,
    save: Annotated[
        bool,
        typer.Option("--save/--no-save", help="Add this assessment to the stored history."),
    ] = True,
) -> None:
    """Assess the deployment: evidence measured from the control plane, answers from
    people; scores per domain, both ladders and the roadmap."""
    chosen = _format(fmt, output)
    earlier = _history(history or [], chosen)
    if answers is not None and interactive:
        _bad("give either --answers or --interactive, not both")
    declared = _inventory(inventory)
    if output is not None:
        _writable(output)  # before the run is stored, not after
    with handle_errors(), container() as c:
        service = c.assessment
        given: Answers | None = None
        if answers is not None:
            given = _answers(answers, service.bank)
        elif interactive:
            given = _ask(service, declared)
        try:
            assessment_id: str | None = None
            if save:
                assessment_id, report = service.run_and_save(
                    cli_context(), given, declared=declared, complete=answers is not None
                )
                err_console.print(
                    f"stored as {assessment_id} (agentiam assessments show {assessment_id})",
                    highlight=False,
                )
            else:
                report = service.run(given, declared=declared, complete=answers is not None)
        except InvalidInput as exc:
            if answers is None:
                raise
            _bad(f"{answers}: {exc.detail}", "Answer it with a level 0-4, or 'unknown'.")
        if chosen == "html":
            earlier = trend_history(service.trend_before(assessment_id, limit=MAX_HISTORY), earlier)
        if chosen is not None:
            text = render_report(report, chosen, history=earlier, assessment_id=assessment_id)
    if chosen is None:
        _summary(report)
        return
    _write(text, output)
    if output is not None:
        console.print(f"report written to {output} (overall {report.assessment.overall:.2f} / 4)")


def _writable(output: Path) -> None:
    """Refuse, before anything runs, an output file that cannot be written."""
    parent = output.parent if str(output.parent) else Path(".")
    if output.is_dir() or not parent.is_dir() or not os.access(parent, os.W_OK):
        fail(f"cannot write {output}", "Give a file in a directory you can write to.")
    if output.exists() and not os.access(output, os.W_OK):
        fail(f"cannot write {output}", "The file exists and is not writable.")


def _write(text: str, output: Path | None) -> None:
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {output}: {type(exc).__name__}")


def _format(fmt: str | None, output: Path | None) -> Format | None:
    if fmt is not None:
        for known in FORMATS:
            if fmt == known:
                return known
        _bad(f"--format must be json, markdown or html, not {fmt!r}")
    if output is None:
        return None
    found = _SUFFIXES.get(output.suffix.lower())
    if found is None:
        _bad(f"cannot tell the format of {output}", "Pass --format json, markdown or html.")
    return found


def _history(paths: Sequence[Path], chosen: Format | None) -> list[Mapping[str, Any]]:
    """Earlier JSON reports for the HTML trend, each read whole but bounded in size."""
    if not paths:
        return []
    if chosen != "html":
        _bad("--history draws the trend of the HTML report: add --format html")
    if len(paths) > MAX_HISTORY:
        _bad(f"--history: at most {MAX_HISTORY} earlier reports")
    reports: list[Mapping[str, Any]] = []
    for path in paths:
        try:
            with path.open("rb") as f:
                raw = f.read(_MAX_HISTORY_BYTES + 1)
            if len(raw) > _MAX_HISTORY_BYTES:
                _bad(f"--history {path}: larger than {_MAX_HISTORY_BYTES} bytes")
            data = json.loads(raw.decode("utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            _bad(f"cannot read the history file {path}: {type(exc).__name__}")
        except json.JSONDecodeError as exc:
            _bad(f"--history {path}: not valid JSON: {exc.msg} (line {exc.lineno})")
        except RecursionError:
            _bad(f"--history {path}: nested too deeply to be a report")
        if not isinstance(data, dict):
            _bad(f"--history {path}: must be a report from agentiam assess --format json")
        try:
            trend_point(data, f"--history {path}")
        except InvalidInput as exc:
            _bad(exc.detail)
        reports.append({k: data[k] for k in ("assessed_at", "overall", "domains")})  # kept small
    return reports


# -- for people ----------------------------------------------------------------------------


def _summary(report: AssessmentReport) -> None:
    a = report.assessment
    console.print(
        f"[bold]Overall {a.overall:.2f} / 4[/]  ({a.measured_share:.0%} of the weight measured, "
        f"{len(a.gaps)} unanswered, bank {a.bank_version}, "
        f"{'agentic' if a.agentic else 'no agentic'} systems in scope)"
    )
    domains = Table(title="Domains")
    for col in ("domain", "score", "answered"):
        domains.add_column(col)
    for d in a.domains:
        domains.add_row(d.title, f"{d.score:.2f}", f"{d.answered}/{d.total}")
    console.print(domains)
    for p in report.positions:
        reached = p.reached.title if p.reached else "below the first stage"
        nxt = f", next: {p.next.title}" if p.next else " (top)"
        console.print(f"[bold]{p.ladder.title}[/]: {reached}{nxt}", highlight=False)
        for g in p.blocking:
            why = "unanswered" if g.unanswered else f"at {int(g.current)}"
            console.print(f"  blocks: {g.question_id} {why}, needs {int(g.required)}")
    if report.roadmap:
        table = Table(title=f"Roadmap (top {min(_TOP_ROADMAP, len(report.roadmap))})")
        for col in ("question", "now", "target", "priority", "unlocks", "do"):
            table.add_column(col, overflow="fold")
        for item in report.roadmap[:_TOP_ROADMAP]:
            table.add_row(
                item.question.id,
                "?" if item.unanswered else str(int(item.current)),
                str(int(item.target)),
                f"{item.priority:.1f}",
                ", ".join(item.unlocks) or "-",
                "\n".join(item.commands or item.steps[:1]),
            )
        console.print(table)
    for c in a.contradictions:
        m = c.measurement
        console.print(
            f"[yellow]evidence overrode an answer[/]: {c.question_id} claimed {int(c.claimed)}, "
            f"measured {int(c.measured)} ({m.key} = {m.value:g}: {m.source})",
            highlight=False,
        )


# -- the stored history --------------------------------------------------------------------

history_app = typer.Typer(
    help="The stored assessment history (agentiam assess adds to it).", no_args_is_help=True
)
_LIST_COLUMNS = ["id", "assessed_at", "overall", "measured", "agent_iam", "governance", "by"]


@history_app.command("list")
def list_assessments(
    limit: Annotated[int, typer.Option(min=1, max=200)] = 20,
    before: Annotated[str | None, typer.Option(help="Only those made before this id.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Stored assessments, newest first, with their scores and ladder stages."""
    with handle_errors(), container() as c:
        page = c.assessment.history(limit=limit, before=before)
    rows = []
    for r in page.items:
        stages = {p["ladder"]: p["reached"] for p in r.summary.get("ladders", [])}
        rows.append(
            {
                "id": r.id,
                "assessed_at": r.assessed_at.isoformat(),
                "overall": round(r.overall, 2),
                "measured": f"{float(r.summary.get('measured_share', 0.0)):.0%}",
                "agent_iam": stages.get("agent_iam") or "-",
                "governance": stages.get("governance") or "-",
                "by": r.requested_by,
            }
        )
    emit(rows, as_json=as_json, columns=_LIST_COLUMNS, title="Assessments")


@history_app.command("show")
def show_assessment(
    assessment_id: Annotated[str, typer.Argument(help="The assessment's id (asm_...).")],
    fmt: Annotated[
        str | None, typer.Option("--format", help="json, markdown or html (default: json).")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Write the report here (format from .json/.md/.html)."),
    ] = None,
) -> None:
    """A stored assessment. JSON is the report as stored; Markdown and HTML are scored
    again from the stored inputs (the same report) with the trend up to it."""
    chosen = _format(fmt, output) or "json"
    with handle_errors(), container() as c:
        service = c.assessment
        text = render_stored(service, service.stored(assessment_id), chosen)
    _write(text, output)
