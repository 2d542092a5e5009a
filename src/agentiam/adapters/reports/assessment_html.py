"""The assessment as one self-contained HTML file (docs/assessment.md#the-html-report).

The page works offline: inline CSS, charts drawn here as inline SVG, no script, no
font, stylesheet or image fetched from anywhere. A Content-Security-Policy meta tag
(``default-src 'none'``) forbids the browser to load or run anything else, as a second
line behind escaping: every piece of text interpolated into the page goes through
:func:`html.escape`, since names, notes and evidence sources come from user data.

The trend section is drawn only when the caller passes earlier reports: the JSON of
:meth:`~agentiam.core.assessment.report.AssessmentReport.to_dict`, or the summaries the
assessment history stores (core/assessment/report.py ``report_summary``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from typing import Any

from agentiam.core.assessment import EVIDENCE_KEYS, NEVER, Domain, LadderPosition
from agentiam.core.assessment.evidence_keys import Unit
from agentiam.core.assessment.report import AssessmentReport
from agentiam.errors import InvalidInput

__all__ = ["CSP", "MAX_HISTORY", "TrendPoint", "render_html", "trend_point"]

MAX_HISTORY = 100  # earlier reports drawn on the trend
_TOP = 4.0  # the maturity scale runs 0-4
_DOMAIN_IDS = tuple(d.value for d in Domain)
CSP = "default-src 'none'; style-src 'unsafe-inline'"
_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;
max-width:72rem;padding:0 1rem;color:#1d2330}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #dde3ee;padding-bottom:.2rem;margin-top:2.2rem}
.meta{color:#5a6478}.big{font-size:2.6rem;font-weight:700}
table{border-collapse:collapse;width:100%;margin:.6rem 0}
th,td{border:1px solid #dde3ee;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f2f5fa}code{background:#f2f5fa;padding:0 .2rem;border-radius:3px}
.grid{display:flex;flex-wrap:wrap;gap:1rem}.card{border:1px solid #dde3ee;border-radius:6px;
padding:.5rem;width:17rem}.card h3{margin:.2rem 0;font-size:1rem}
ol.ladder{list-style:none;display:flex;gap:.4rem;padding:0}
ol.ladder li{flex:1;border:1px solid #c5cddb;border-radius:6px;padding:.4rem;color:#5a6478}
ol.ladder li.passed{background:#eef6ee;color:#1d2330}
ol.ladder li.current{background:#2f6fdf;color:#fff;font-weight:700}
ol.ladder li.next{border:2px dashed #d9822b;color:#1d2330}
.warn{background:#fff6e5;border-left:4px solid #d9822b;padding:.5rem .8rem;margin:.5rem 0}
svg text{font:11px system-ui,sans-serif;fill:#1d2330}
.ring{fill:none;stroke:#dde3ee}.axis{stroke:#c5cddb}
.area{fill:rgba(47,111,223,.25);stroke:#2f6fdf;stroke-width:2}
.bar{fill:#2f6fdf}.line{fill:none;stroke:#2f6fdf;stroke-width:2}.dot{fill:#2f6fdf}
"""


def _e(value: object) -> str:
    """Text made safe for an HTML element or an attribute value."""
    return escape(str(value), quote=True)


def _num(value: float) -> str:
    return f"{value:.2f}"


# -- charts --------------------------------------------------------------------------------


def _polar(cx: float, cy: float, r: float, i: int, n: int) -> tuple[float, float]:
    angle = -math.pi / 2 + 2 * math.pi * i / n
    return cx + r * math.cos(angle), cy + r * math.sin(angle)


def _points(pts: Iterable[tuple[float, float]]) -> str:
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)


def _radar_svg(axes: Sequence[tuple[str, float]], *, size: int, label: str, svg_id: str) -> str:
    """A radar of ``axes`` (name, score 0-4): one spoke per axis, a ring per level.
    A small radar numbers its spokes (the caller lists the names); fewer than three
    axes make no area, so they are drawn as bars instead."""
    if len(axes) < 3:
        return _bars_svg(axes, label=label, svg_id=svg_id)
    small = size < 300
    n, pad = len(axes), 24 if small else 100
    c, r = size / 2, size / 2 - pad
    parts = [
        f'<svg class="radar" id="{_e(svg_id)}" role="img" '
        f'aria-label="{_e(label)}" width="{size}" height="{size}" viewBox="0 0 {size} {size}">',
        f"<title>{_e(label)}</title>",
    ]
    for level in range(1, int(_TOP) + 1):
        ring = (_polar(c, c, r * level / _TOP, i, n) for i in range(n))
        parts.append(f'<polygon class="ring" points="{_points(ring)}"/>')
    for i, (name, score) in enumerate(axes):
        x, y = _polar(c, c, r, i, n)
        lx, ly = _polar(c, c, r + 12, i, n)
        text = str(i + 1) if small else f"{name} {_num(score)}"
        anchor = "middle" if abs(lx - c) < 1 else ("start" if lx > c else "end")
        parts.append(f'<line class="axis" x1="{c}" y1="{c}" x2="{x:.1f}" y2="{y:.1f}"/>')
        parts.append(
            f'<text x="{lx:.1f}" y="{ly:.1f}" text-anchor="{anchor}" '
            f'dominant-baseline="middle">{_e(text)}</text>'
        )
    area = (_polar(c, c, r * max(0.0, min(s, _TOP)) / _TOP, i, n) for i, (_, s) in enumerate(axes))
    parts.append(f'<polygon class="area" points="{_points(area)}"/>')
    parts.append("</svg>")
    return "".join(parts)


def _bars_svg(axes: Sequence[tuple[str, float]], *, label: str, svg_id: str) -> str:
    width, row = 260, 34
    height = row * max(len(axes), 1)
    parts = [
        f'<svg class="bars" id="{_e(svg_id)}" role="img" '
        f'aria-label="{_e(label)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}"><title>{_e(label)}</title>'
    ]
    for i, (name, score) in enumerate(axes):
        y = i * row
        length = (width - 10) * max(0.0, min(score, _TOP)) / _TOP
        parts.append(f'<text x="0" y="{y + 11}">{_e(name)} {_num(score)}</text>')
        parts.append(f'<rect class="bar" x="0" y="{y + 15}" width="{length:.1f}" height="10"/>')
    parts.append("</svg>")
    return "".join(parts)


def _trend_svg(points: Sequence[TrendPoint]) -> str:
    width, height, pad = 640, 220, 36
    step = (width - 2 * pad) / max(len(points) - 1, 1)

    def y(score: float) -> float:
        return height - pad - (height - 2 * pad) * max(0.0, min(score, _TOP)) / _TOP

    xy = [(pad + i * step, y(p.overall)) for i, p in enumerate(points)]
    parts = [
        f'<svg class="trend" role="img" '
        f'aria-label="overall score over time" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}"><title>overall score over time</title>'
    ]
    for level in range(int(_TOP) + 1):
        parts.append(
            f'<line class="ring" x1="{pad}" x2="{width - pad}" y1="{y(level):.1f}" '
            f'y2="{y(level):.1f}"/><text x="4" y="{y(level) + 4:.1f}">{level}</text>'
        )
    parts.append(f'<polyline class="line" points="{_points(xy)}"/>')
    for (px, py), p in zip(xy, points, strict=True):
        parts.append(f'<circle class="dot" cx="{px:.1f}" cy="{py:.1f}" r="4"/>')
        parts.append(
            f'<text x="{px:.1f}" y="{height - 8}" text-anchor="middle">{_e(p.label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


# -- history -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrendPoint:
    """One assessment on the trend: when, the overall score, the domain scores."""

    assessed_at: datetime
    overall: float
    domains: Mapping[str, float]

    @property
    def label(self) -> str:
        return self.assessed_at.date().isoformat()


def _score(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{where}: must be a number")
    if not 0.0 <= float(value) <= _TOP:
        raise InvalidInput(f"{where}: must be from 0 to 4")
    return float(value)


def trend_point(report: Mapping[str, Any], where: str = "history") -> TrendPoint:
    """An earlier report (the JSON of ``agentiam assess --format json``) as a point on
    the trend. Refuses anything else with InvalidInput naming ``where`` and the key."""
    if not isinstance(report, Mapping):
        raise InvalidInput(f"{where}: must be an assessment report (a JSON object)")
    at = report.get("assessed_at")
    try:
        when = datetime.fromisoformat(at) if isinstance(at, str) else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise InvalidInput(f"{where}: assessed_at: must be an ISO 8601 time with a time zone")
    domains: dict[str, float] = {}
    listed = report.get("domains")
    if not isinstance(listed, list) or len(listed) > len(Domain):
        raise InvalidInput(f"{where}: domains: must be a list of at most {len(Domain)}")
    for d in listed:
        if not isinstance(d, Mapping) or d.get("id") not in _DOMAIN_IDS:
            raise InvalidInput(f"{where}: domains: each needs an id among {list(map(str, Domain))}")
        domains[str(d["id"])] = _score(d.get("score"), f"{where}: domains: {d['id']}: score")
    return TrendPoint(when, _score(report.get("overall"), f"{where}: overall"), domains)


# -- sections ------------------------------------------------------------------------------


def _table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A table; cells are HTML already (escape before you pass them)."""
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _ul(items: Iterable[str]) -> str:
    inner = "".join(f"<li>{i}</li>" for i in items)
    return f"<ul>{inner}</ul>" if inner else "-"


def _ol(items: Iterable[str]) -> str:
    return "<ol>" + "".join(f"<li>{i}</li>" for i in items) + "</ol>"


def _domains(report: AssessmentReport) -> str:
    a = report.assessment
    scores = {d.id: d.score for d in a.domains}
    axes = [(d.label, scores.get(d.value, 0.0)) for d in Domain]
    practices: dict[str, list[tuple[str, float]]] = {d.value: [] for d in Domain}
    for p in a.practices:
        practices.setdefault(p.id.split(".", 1)[0], []).append((p.title, p.score))
    cards = "".join(
        f'<div class="card" id="domain-{_e(d.value)}"><h3>{_e(d.label)} '
        f"{_num(scores.get(d.value, 0.0))}</h3>"
        + _radar_svg(
            practices[d.value], size=240, label=f"{d.label} practices", svg_id=f"radar-{d.value}"
        )
        + (
            _ol(f"{_e(t)} {_num(s)}" for t, s in practices[d.value])
            if len(practices[d.value]) >= 3
            else ""
        )
        + "</div>"
        for d in Domain
    )
    rows = (
        (_e(d.title), _num(d.score), f"{d.answered}/{d.total}", _e(f"{d.weight:g}"))
        for d in a.domains
    )
    return (
        '<section id="domains"><h2>Domains</h2>'
        + _radar_svg(axes, size=420, label="domain scores (0-4)", svg_id="radar-domains")
        + _table(("domain", "score", "answered", "weight"), rows)
        + "<h3>Practices per domain</h3><p>A radar needs three axes: a domain with fewer "
        "practices is drawn as bars.</p>" + f'<div class="grid">{cards}</div></section>'
    )


def _ladder(p: LadderPosition) -> str:
    reached = p.ladder.stages.index(p.reached) if p.reached is not None else -1
    stages = []
    for i, stage in enumerate(p.ladder.stages):
        css = "current" if i == reached else "passed" if i < reached else ""
        css = "next" if p.next is not None and stage.name == p.next.name else css
        mark = {"current": "<br><em>you are here</em>", "next": "<br><em>next step</em>"}
        stages.append(
            f'<li class="{css}" data-stage="{_e(stage.name)}"><strong>{_e(stage.title)}</strong>'
            f"{mark.get(css, '')}<br><small>{_e(stage.description)}</small></li>"
        )
    where = p.reached.title if p.reached is not None else "below the first stage"
    gaps = (
        (
            f"<code>{_e(g.question_id)}</code>",
            _e(g.text),
            "unanswered" if g.unanswered else str(int(g.current)),
            str(int(g.required)),
        )
        for g in p.blocking
    )
    blocking = (
        f"<p>Blocking <strong>{_e(p.next.title)}</strong>:</p>"
        + _table(("question", "asks", "now", "needs"), gaps)
        if p.next is not None
        else "<p>At the top of this ladder.</p>"
    )
    return (
        f'<div class="ladder-block" id="ladder-{_e(p.ladder.name)}"><h3>{_e(p.ladder.title)}: '
        f'{_e(where)}</h3><ol class="ladder">{"".join(stages)}</ol>{blocking}</div>'
    )


def _roadmap(report: AssessmentReport) -> str:
    rows = []
    for n, item in enumerate(report.roadmap, 1):
        do = [_e(s) for s in item.steps]
        do += [f"<code>{_e(c)}</code>" for c in item.commands]
        do += [f"policy template <code>{_e(t)}</code>" for t in item.templates]
        rows.append(
            (
                str(n),
                f"{item.priority:.1f}",
                f"<code>{_e(item.question.id)}</code><br>{_e(item.question.text)}",
                f"{'unanswered' if item.unanswered else int(item.current)} → {int(item.target)}",
                _e(", ".join(item.unlocks) or "-"),
                _ul(do),
            )
        )
    table = _table(("#", "priority", "question", "now → target", "unlocks", "steps"), rows)
    return f'<section id="roadmap"><h2>Roadmap</h2>{table if rows else "<p>No gaps.</p>"}</section>'


def _contradictions(report: AssessmentReport) -> str:
    a = report.assessment
    if not a.contradictions:
        return ""
    items = []
    for r in a.results:
        c = r.contradiction
        if c is None:
            continue
        m = c.measurement
        note = r.answer.note if r.answer is not None and r.answer.note else ""
        items.append(
            f'<div class="warn"><strong>Evidence overrode an answer:</strong> '
            f"<code>{_e(c.question_id)}</code> was answered {int(c.claimed)}"
            f"{' (overstated)' if c.overstated else ''}, measured {int(c.measured)} "
            f"from <code>{_e(m.key)}</code> = {_e(_value(m.key, m.value))} ({_e(m.source)})"
            + (f"<br>answer note: {_e(note)}" if note else "")
            + "</div>"
        )
    return (
        '<section id="contradictions"><h2>Where evidence overrode an answer</h2>'
        + "".join(items)
        + "</section>"
    )


def _value(key: str, value: float) -> str:
    return "never" if value >= NEVER and EVIDENCE_KEYS[key].unit is Unit.DAYS else f"{value:g}"


def _evidence(report: AssessmentReport) -> str:
    rows = []
    for r in report.assessment.results:
        m = r.measurement
        if m is None:
            continue
        numbers = ", ".join(f"{k}={v:g}" for k, v in m.numbers.items()) or "-"
        rows.append(
            (
                f"<code>{_e(m.key)}</code>",
                _e(_value(m.key, m.value)),
                _e(EVIDENCE_KEYS[m.key].unit.value),
                _e(numbers),
                _e(m.source),
                _e(m.measured_at.isoformat()),
                f"<code>{_e(r.question.id)}</code> → {int(r.level)}",
            )
        )
    head = ("key", "value", "unit", "numbers", "source", "measured_at", "scores")
    answers = (
        (
            f"<code>{_e(r.question.id)}</code>",
            str(int(r.level)),
            _e(r.source.value),
            _e(r.answer.note or "") if r.answer is not None else "",
        )
        for r in report.assessment.results
    )
    return (
        f'<section id="evidence"><h2>Evidence</h2>{_table(head, rows)}'
        "<h3>Every question</h3>"
        f"{_table(('question', 'level', 'source', 'answer note'), answers)}</section>"
    )


def _inventory(report: AssessmentReport) -> str:
    rows = (
        (
            _e(s.id),
            _e(s.name),
            _e(s.source.value),
            _e(s.owner or "-"),
            f"<strong>{_e(s.classification.autonomy.value)}</strong>",
            _e("; ".join(s.classification.reasons) or "-"),
        )
        for s in report.systems
    )
    shown = len(report.systems)
    more = (
        f"<p>{report.systems_total - shown} more not listed.</p>"
        if report.systems_total > shown
        else ""
    )
    return (
        f'<section id="inventory"><h2>Inventory ({report.systems_total} AI systems)</h2>'
        + _table(("id", "name", "source", "owner", "Autonomy Test class", "reasons"), rows)
        + more
        + "</section>"
    )


def _trend(report: AssessmentReport, history: Sequence[Mapping[str, Any]]) -> str:
    if not history:
        return ""
    if len(history) > MAX_HISTORY:
        raise InvalidInput(f"history: at most {MAX_HISTORY} earlier reports")
    now = trend_point(report.to_dict(), "this report")
    points = sorted(
        [*(trend_point(h, f"history {i + 1}") for i, h in enumerate(history)), now],
        key=lambda p: p.assessed_at,
    )
    rows = (
        (
            _e(p.assessed_at.isoformat()),
            _num(p.overall),
            *(_num(p.domains[d.value]) if d.value in p.domains else "-" for d in Domain),
        )
        for p in points
    )
    head = ("assessed at", "overall", *(d.label for d in Domain))
    return (
        f'<section id="trend"><h2>Trend ({len(points)} assessments)</h2>'
        f"{_trend_svg(points)}{_table(head, rows)}</section>"
    )


def render_html(report: AssessmentReport, history: Sequence[Mapping[str, Any]] = ()) -> str:
    """The report as one offline HTML page; ``history``: earlier JSON reports for the
    trend (drawn only when given). Raises InvalidInput for a malformed history entry."""
    a = report.assessment
    trend = _trend(report, history)
    ladders = "".join(_ladder(p) for p in report.positions)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>AgentIAM maturity assessment {_e(a.assessed_at.date().isoformat())}</title>"
        f"<style>{_CSS}</style></head><body>"
        "<h1>AgentIAM maturity assessment</h1>"
        f'<p class="meta">assessed at <time datetime="{_e(a.assessed_at.isoformat())}">'
        f"{_e(a.assessed_at.isoformat())}</time> · question bank {_e(a.bank_version)}</p>"
        f'<p><span class="big" id="overall">{_num(a.overall)}</span> / 4 overall · '
        f"{a.measured_share:.0%} of the question weight measured from the deployment · "
        f"{len(a.gaps)} unanswered · "
        f"{'agentic systems in scope' if a.agentic else 'no agentic system in scope'}</p>"
        + _domains(report)
        + f'<section id="ladders"><h2>Ladders</h2>{ladders}</section>'
        + _roadmap(report)
        + _contradictions(report)
        + _evidence(report)
        + _inventory(report)
        + trend
        + "</body></html>\n"
    )
