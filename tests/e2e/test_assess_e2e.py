"""The assessment's Done-when with real processes: ``agentiam serve`` runs; the operator
runs ``agentiam assess`` (a separate process on the same database) and gets an HTML
report whose scores come partly from measured evidence and which shows both ladders and
the roadmap; they run the command the roadmap names, assess again, and the score moves
and the trend shows both runs. The serving process's API runs and renders one too."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.e2e.test_quickstart import Server, cli, env_for
from tests.support.live import free_port

pytestmark = pytest.mark.e2e
DPOP_COMMAND = "agentiam agents update AGENT --dpop"


def _report(env: dict[str, str], tmp_path: Path, name: str) -> tuple[dict[str, Any], str]:
    """One run of ``agentiam assess`` writing HTML, and the stored JSON of that run."""
    page = tmp_path / f"{name}.html"
    run = cli(env, "assess", "-o", str(page))
    stored = re.search(r"stored as (asm_[0-9A-Z]{26})", run.stderr)
    assert stored, run.stdout + run.stderr
    shown = cli(env, "assessments", "show", stored.group(1))
    return json.loads(shown.stdout), page.read_text(encoding="utf-8")


def test_assess_a_live_control_plane_follow_the_roadmap_and_the_score_moves(
    database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = env_for(database_url, port)
    cli(env, "db", "upgrade")
    admin = json.loads(
        cli(env, "admin-keys", "create", "--name", "ops", "--role", "admin", "--json").stdout
    )["secret"]
    human = json.loads(
        cli(env, "humans", "create", "--name", "Ada", "--email", "ada@example.com",
            "--json").stdout
    )  # fmt: skip
    cli(env, "agents", "create", "invoice-bot", "--owner", human["id"], "--purpose",
        "pay supplier invoices", "--environment", "production", "--autonomy", "monitored",
        "--no-dpop", "--activate")  # fmt: skip
    server = Server(env, port)
    try:
        before, first_page = _report(env, tmp_path, "first")
        measured = {q["id"]: q for q in before["questions"] if q["source"] == "measured"}
        assert measured, "nothing was measured from the deployment"
        assert measured["govern.agent_owners"]["level"] == 4  # its one agent has an owner
        assert measured["protect.dpop"]["level"] == 0
        for text in ("Agent IAM ladder", "Governance ladder", "Roadmap", "Evidence"):
            assert text in first_page, text
        dpop = next(i for i in before["roadmap"] if i["question"] == "protect.dpop")
        assert DPOP_COMMAND in dpop["commands"]

        # the operator does what the roadmap says
        command = DPOP_COMMAND.removeprefix("agentiam ").replace("AGENT", "invoice-bot")
        cli(env, *command.split())
        after, second_page = _report(env, tmp_path, "second")
        level = {q["id"]: q["level"] for q in after["questions"]}
        assert level["protect.dpop"] == 4
        assert after["overall"] > before["overall"]
        assert "Trend (2 assessments)" in second_page

        # the serving process runs and renders one as well
        headers = {"Authorization": f"Bearer {admin}"}
        made = httpx.post(f"{server.url}/v1/assessments", json={}, headers=headers, timeout=30)
        assert made.status_code == 201, made.text
        assert made.json()["overall"] == pytest.approx(after["overall"])
        html = httpx.get(
            server.url + made.headers["location"], params={"format": "html"}, headers=headers
        )
        assert html.status_code == 200
        assert "Trend (3 assessments)" in html.text
        listed = httpx.get(f"{server.url}/v1/assessments", headers=headers).json()["items"]
        assert [i["requested_by"].split(":")[0] for i in listed] == ["admin_key", "cli", "cli"]
    finally:
        server.stop()
