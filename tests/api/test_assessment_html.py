"""`agentiam assess --format html` against a real control plane database (SQLite file
built by the real container, the real CLI through typer's runner): the page is one
self-contained file (nothing fetched, no script), draws the six-axis domain radar, both
ladders, the roadmap's commands, the evidence and the inventory, escapes user data, and
draws a trend from earlier reports passed with ``--history`` (the stored history's trend:
tests/api/test_assessment_history.py). Nothing is mocked."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from agentiam.bootstrap import Container, build
from agentiam.cli.main import app as cli
from agentiam.config import Settings
from agentiam.core.assessment import Domain, load_declared_systems
from agentiam.services.agents import NewAgent
from agentiam.services.context import CallContext
from agentiam.services.humans import NewHuman

CTX = CallContext.system("test")
XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'
_EXTERNAL = re.compile(r"^\s*(https?:|//|data:|javascript:|file:)", re.IGNORECASE)


class Page(HTMLParser):
    """The parsed page: every start tag with its attributes, and the visible text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.stack: list[str] = []
        self.svg_axes: dict[str, int] = {}
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.tags.append((tag, found))
        if tag == "svg":
            self.stack.append(found.get("id") or "")
            self.svg_axes[self.stack[-1]] = 0
        elif tag == "line" and found.get("class") == "axis" and self.stack:
            self.svg_axes[self.stack[-1]] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg" and self.stack:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    @property
    def visible(self) -> str:
        return " ".join(" ".join(self.text).split())

    def named(self, tag: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag]

    def by_id(self, id_: str) -> dict[str, str | None] | None:
        return next((a for _, a in self.tags if a.get("id") == id_), None)


@pytest.fixture
def on_db(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Container]:
    monkeypatch.setenv("AGENTIAM_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("AGENTIAM_DETECTION_ENABLED", "false")
    c = build(Settings(database_url=sqlite_url, detection_enabled=False))
    yield c
    c.close()


def _deployment(c: Container) -> None:
    """An owned agent (registry names are identifiers, so the hostile names come in
    through the inventory file)."""
    owner = c.humans.create(CTX, NewHuman(display_name="Ann", email="ann@example.com"))
    c.agents.register(
        CTX,
        NewAgent(
            name="runner",
            owners=[owner.id],
            purpose="does work",
            environment="production",
            activate=True,
        ),
    )


def _answers(c: Container, tmp_path: Path) -> Path:
    """Every question the evidence cannot answer as unknown, plus an understated claim
    on a measured question (evidence will override it) carrying a hostile note."""
    declared = load_declared_systems(
        yaml.safe_load(_inventory(tmp_path).read_text(encoding="utf-8"))["systems"]
    )
    asked = c.assessment.to_ask(declared=declared)
    answers: dict[str, Any] = {q.id: "unknown" for q in asked}
    answers["govern.agent_owners"] = {"level": 0, "note": XSS}
    answers["govern.ai_policy"] = {"level": 3, "note": f"policy {XSS}"}
    path = tmp_path / "answers.yaml"
    data = {"bank_version": c.assessment.bank.version, "answers": answers}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _inventory(tmp_path: Path) -> Path:
    """A system declared by hand whose name and owner are an attack on the page."""
    system = {
        "id": "crm-copilot",
        "name": XSS,
        "owner": XSS,
        "acts_on_external_systems": True,
        "chains_steps_unapproved": True,
        "holds_credentials": True,
        "acts_on_untrusted_input": True,
        "spawns_sub_agents": True,
        "runs_long_horizons": False,
    }
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump({"systems": [system]}), encoding="utf-8")
    return path


def _run(*args: str) -> Any:
    return CliRunner().invoke(cli, ["assess", *args])


def _args(c: Container, tmp_path: Path) -> tuple[str, ...]:
    """The same answers and inventory for every run."""
    return ("--answers", str(_answers(c, tmp_path)), "--inventory", str(_inventory(tmp_path)))


def _html(c: Container, tmp_path: Path, *extra: str) -> tuple[str, Page]:
    out = tmp_path / "report.html"
    result = _run(*_args(c, tmp_path), "-o", str(out), *extra)
    assert result.exit_code == 0, result.output
    text = out.read_text(encoding="utf-8")
    return text, Page(text)


def test_the_html_report_is_self_contained_and_shows_every_part(
    on_db: Container, tmp_path: Path
) -> None:
    _deployment(on_db)
    text, page = _html(on_db, tmp_path)
    report = json.loads(_run(*_args(on_db, tmp_path), "--format", "json").stdout)

    # offline: nothing fetched, nothing run
    for tag in ("script", "link", "img", "iframe", "object", "embed", "image", "use"):
        assert not page.named(tag), tag
    for _, attrs in page.tags:
        for name in ("src", "href", "xlink:href", "action", "srcset"):
            value = attrs.get(name)
            assert value is None or not _EXTERNAL.match(value), (name, value)
    for fetch in ("http://", "https://", "url(", "@import"):
        assert fetch not in text, fetch
    csp = [m for m in page.named("meta") if m.get("http-equiv") == "Content-Security-Policy"]
    assert len(csp) == 1
    assert "default-src 'none'" in str(csp[0].get("content"))

    # score and date
    overall = page.by_id("overall")
    assert overall is not None
    assert "/ 4 overall" in page.visible
    assert report["assessed_at"][:10] in page.visible
    # the domain radar has six axes; every domain has its practice chart
    assert page.svg_axes["radar-domains"] == 6
    for d in Domain:
        assert d.label in page.visible
        assert page.by_id(f"radar-{d.value}") is not None
    assert any(n >= 3 for k, n in page.svg_axes.items() if k != "radar-domains")
    # both ladders with every stage; the next stage and what blocks it
    for ladder in on_db.assessment.bank.ladders:
        assert page.by_id(f"ladder-{ladder.name}") is not None
        for stage in ladder.stages:
            assert stage.title in page.visible
    stages = {(a.get("class"), a.get("data-stage")) for a in page.named("li")}
    for position in report["ladders"]:
        assert ("next", position["next"]) in stages
        if position["reached"] is not None:
            assert ("current", position["reached"]) in stages
        for gap in position["blocking"]:
            assert gap["question"] in page.visible
    # the roadmap with its commands and templates
    for item in report["roadmap"]:
        assert item["question"] in page.visible
        for command in item["commands"]:
            assert command in page.visible
        for template in item["templates"]:
            assert template in page.visible
    # the overridden answer is called out
    assert "Evidence overrode an answer: govern.agent_owners was answered 0" in page.visible
    # the evidence table and the inventory with its class
    for q in report["questions"]:
        if q["evidence"] is not None:
            assert q["evidence"]["key"] in page.visible
            assert q["evidence"]["source"] in page.visible
    systems = report["inventory"]["systems"]
    assert len(systems) == 2  # the registry's agent and the declared system
    assert "highly_autonomous" in {s["class"] for s in systems}
    for s in systems:
        assert s["class"] in page.visible
        assert s["id"] in page.visible
    # no trend without history
    assert page.by_id("trend") is None


def test_user_data_in_names_notes_and_sources_comes_out_escaped(
    on_db: Container, tmp_path: Path
) -> None:
    """The attack: a <script> (and an onerror handler) in an agent name and answer notes."""
    _deployment(on_db)
    text, page = _html(on_db, tmp_path)
    assert "<script" not in text.lower()
    assert "<img" not in text.lower()
    assert not page.named("script")
    assert not page.named("img")
    assert not any(k.startswith("on") for _, attrs in page.tags for k in attrs)
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text
    # shown as text, where it belongs: the inventory name and owner, both notes
    assert page.visible.count('<script>alert("x")</script>') >= 4


def test_history_draws_the_trend_and_a_bad_history_file_exits_2(
    on_db: Container, tmp_path: Path
) -> None:
    args = _args(on_db, tmp_path)
    first = tmp_path / "first.json"
    result = _run(*args, "--no-save", "--format", "json", "-o", str(first))
    assert result.exit_code == 0, result.output
    _deployment(on_db)  # the deployment improves between the two assessments
    earlier = json.loads(first.read_text(encoding="utf-8"))
    earlier["assessed_at"] = "2024-01-15T09:00:00+00:00"
    first.write_text(json.dumps(earlier), encoding="utf-8")

    _, page = _html(on_db, tmp_path, "--history", str(first))
    assert page.by_id("trend") is not None
    assert "Trend (2 assessments)" in page.visible
    assert "2024-01-15" in page.visible
    assert len(page.named("circle")) == 2
    assert page.named("polyline")

    bad = tmp_path / "bad.json"
    for content, named in [
        ("{not json", "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        (json.dumps([1, 2]), "must be a report"),
        (json.dumps({**earlier, "assessed_at": "yesterday"}), "assessed_at"),
        (json.dumps({**earlier, "overall": 9}), "overall: must be from 0 to 4"),
        (json.dumps({**earlier, "domains": [{"id": "<b>", "score": 1}]}), "domains"),
    ]:
        bad.write_text(content, encoding="utf-8")
        out = tmp_path / "never.html"
        result = _run(*args, "-o", str(out), "--history", str(bad))
        assert result.exit_code == 2, (content, result.output)
        shown = " ".join(result.output.split())
        assert named in shown, result.output
        assert "bad.json" in "".join(shown.split()), result.output  # rich wraps anywhere
        assert not out.exists()
    # history only means something for the HTML report
    result = _run(*args, "--format", "json", "--history", str(first))
    assert result.exit_code == 2
    assert "--format html" in " ".join(result.output.split())


def test_the_format_follows_an_html_suffix(on_db: Container, tmp_path: Path) -> None:
    out = tmp_path / "report.htm"
    result = _run("-o", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
