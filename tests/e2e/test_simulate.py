"""``agentiam simulate`` end to end: real in-process control planes (SQLite files),
real decisions, tokens and audit trail, detection and the shipped playbooks running
in the container's own background loops. The quick mode must meet the issue's
targets for the runaway loop and two more scenarios, and every alert and containment
it counts must be an event of the trail, each containment naming a recorded alert."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentiam.bootstrap import build
from agentiam.cli.main import app
from agentiam.cli.simulate import Options, run
from agentiam.config import Settings
from agentiam.core.detection.simulation.metrics import failures, pooled
from agentiam.ports import AuditQuery

pytestmark = pytest.mark.e2e

SCENARIOS = ("runaway_loop", "lateral_movement", "privilege_probing")


def test_quick_run_meets_the_targets_and_is_traceable_in_the_trail(tmp_path: Path) -> None:
    """Recall and the runaway bound per scenario; precision over the three scenarios
    together: with 5 instances a scenario raises about a dozen alerts, so one benign
    agent's first use of a normal step (a LOW ``unexpected_use.new_pair``, which the
    full run also shows) would be 8 % on its own. The full run (bench/detection_eval.py)
    is where the per-scenario precision figures come from."""
    runs = run(Options.quick(scenarios=SCENARIOS, workdir=str(tmp_path)))
    results = [r.result for r in runs]
    assert [f for f in failures(results) if "precision" not in f] == []
    precision = pooled(results).precision
    assert precision is not None
    assert precision >= 0.95
    for r in runs:
        assert r.result.instances == 5
        assert r.result.recall == 1.0
        assert r.benign_calls > 0  # benign traffic went on during the attacks
    runaway = runs[0].result
    for outcome in runaway.outcomes:
        ttc = outcome.time_to_contain
        assert ttc is not None
        assert ttc <= 1.0
        assert outcome.allowed_before_containment <= 50

    for r in runs:
        c = build(Settings(database_url=f"sqlite:///{tmp_path / f'{r.result.scenario}.db'}"))
        try:
            alerts = {
                e.event_id: e
                for e in c.audit.find(AuditQuery(limit=5000, type="detection.alert")).items
            }
            responses = {
                e.event_id: e
                for e in c.audit.find(AuditQuery(limit=5000, type="response.action")).items
            }
        finally:
            c.close()
        assert len(alerts) == r.result.alerts == len(r.alerts)
        alert_ids = {e.details["alert_id"] for e in alerts.values()}
        for a in r.alerts:
            event = alerts[a.event_id]
            assert event.details["alert_id"] == a.alert_id
            assert event.details["evidence"]["events"]  # explained by trail events
        for outcome in r.result.outcomes:
            assert outcome.containment is not None
            event = responses[outcome.containment.event_id]
            assert event.details["alert_id"] in alert_ids
            assert event.details["alert_id"] in {a.alert_id for a in outcome.alerts}
            assert event.agent_id == outcome.instance.agent_id


def test_check_fails_when_detection_misses(tmp_path: Path) -> None:
    """With every detector switched off nothing is caught, and --check says so."""
    off = tmp_path / "detection.yaml"
    off.write_text("enabled: false\n")
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "--quick",
            "--instances",
            "2",
            "--scenario",
            "lateral_movement",
            "--detection",
            str(off),
            "--check",
            "--json",
        ],
    )
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    assert data["scenarios"][0]["recall"] == 0.0
    assert data["failures"] == ["lateral_movement: recall 0.00 < 0.95"]


def test_unknown_scenario_is_refused() -> None:
    result = CliRunner().invoke(app, ["simulate", "--scenario", "nope", "--quick"])
    assert result.exit_code != 0
    assert "unknown scenario" in result.output
