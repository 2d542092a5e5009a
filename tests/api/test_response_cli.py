"""agentiam playbooks validate|show and agentiam responses list, on a real database."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tests.api.test_response import RUNAWAY, alert, make_agent
from typer.testing import CliRunner

from agentiam.bootstrap import build
from agentiam.cli.main import app
from agentiam.config import Settings

runner = CliRunner()


def test_validate_accepts_a_good_file_and_names_the_key_of_a_bad_one(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"version": 1, "playbooks": [RUNAWAY]}))
    result = runner.invoke(app, ["playbooks", "validate", str(good)])
    assert result.exit_code == 0, result.output
    assert "1 playbooks" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"version": 1, "playbooks": [{**RUNAWAY, "mode": "x"}]}))
    result = runner.invoke(app, ["playbooks", "validate", str(bad)])
    assert result.exit_code == 1
    assert "playbook runaway-loop.mode" in result.output
    private = tmp_path / "private.yaml"
    private.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "playbooks": [{**RUNAWAY, "actions": [{"notify": {"webhook": "h"}}]}],
                "webhooks": {"h": {"url": "http://10.0.0.1/x", "secret_env": "X"}},
            }
        )
    )
    result = runner.invoke(app, ["playbooks", "validate", str(private)])
    assert result.exit_code == 1
    assert "webhooks.h.url refused" in result.output


def test_show_and_list_responses(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "playbooks.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "playbooks": [RUNAWAY]}))
    monkeypatch.setenv("AGENTIAM_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("AGENTIAM_PLAYBOOKS_FILE", str(path))
    c = build(Settings.from_env())
    try:
        agent_id = make_agent(c)
        c.response.handle(alert(agent_id), agent_risk=0, session_risk=None)
    finally:
        c.close()
    shown = runner.invoke(app, ["playbooks", "show", "--json"])
    assert shown.exit_code == 0, shown.output
    assert '"runaway-loop"' in shown.output
    listed = runner.invoke(app, ["responses", "list", "--agent", agent_id, "--json"])
    assert listed.exit_code == 0, listed.output
    assert listed.output.count('"response.') >= 2
