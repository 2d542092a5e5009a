"""The assessment as Markdown (docs/assessment.md#reports): scores, ladders, where
evidence overrode an answer, the evidence and the roadmap."""

from __future__ import annotations

from agentiam.core.assessment.report import AssessmentReport

__all__ = ["render_markdown"]


def _md(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: AssessmentReport) -> str:
    """The report as Markdown: scores, ladders, contradictions, evidence, roadmap."""
    a = report.assessment
    lines = [
        "# AgentIAM maturity assessment",
        "",
        f"- assessed at: {a.assessed_at.isoformat()}",
        f"- question bank: {a.bank_version}",
        f"- overall: **{a.overall:.2f} / 4**",
        f"- measured from the deployment: {a.measured_share:.0%} of the question weight",
        f"- AI systems in scope: {report.systems_total} "
        f"({'agentic ones included' if a.agentic else 'none agentic'})",
        "",
        "## Domains",
        "",
        "| domain | score | answered |",
        "|---|---|---|",
        *(f"| {d.title} | {d.score:.2f} | {d.answered}/{d.total} |" for d in a.domains),
        "",
        "## Ladders",
        "",
    ]
    for p in report.positions:
        reached = p.reached.title if p.reached else "below the first stage"
        lines.append(
            f"**{p.ladder.title}**: {reached}" + (f"; next: {p.next.title}" if p.next else "")
        )
        lines += [
            f"- blocks it: `{g.question_id}` "
            f"{'unanswered' if g.unanswered else f'at {int(g.current)}'}, needs {int(g.required)}"
            for g in p.blocking
        ]
        lines.append("")
    if a.contradictions:
        lines += ["## Where evidence overrode an answer", ""]
        for c in a.contradictions:
            m = c.measurement
            lines.append(
                f"- `{c.question_id}`: claimed {int(c.claimed)}, measured {int(c.measured)} "
                f"({m.key} = {m.value:g}; {_md(m.source)})"
            )
        lines.append("")
    lines += [
        "## Evidence",
        "",
        "| question | level | source | value | numbers |",
        "|---|---|---|---|---|",
    ]
    for r in a.results:
        value = numbers = "-"
        if r.measurement is not None:
            value = f"{r.measurement.value:g}"
            numbers = ", ".join(f"{k}={v:g}" for k, v in r.measurement.numbers.items()) or "-"
        lines.append(
            f"| `{r.question.id}` | {int(r.level)} | {r.source.value} | {value} | {_md(numbers)} |"
        )
    lines += ["", "## Roadmap", ""]
    for n, item in enumerate(report.roadmap, 1):
        now = "unanswered" if item.unanswered else str(int(item.current))
        lines.append(
            f"{n}. `{item.question.id}` ({now} → {int(item.target)}, priority "
            f"{item.priority:.1f}): {_md(item.question.text)}"
        )
        lines += [f"   - {_md(step)}" for step in item.steps]
        lines += [f"   - `{command}`" for command in item.commands]
        lines += [f"   - policy template `{t}`" for t in item.templates]
    return "\n".join(lines) + "\n"
