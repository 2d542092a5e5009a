"""agentiam risk / agentiam alerts: risk scores and detection alerts, read from the
audit trail (docs/detection.md). A score is a function of the recorded alerts, so
these agree with the serving control plane without asking it."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any

import typer

from agentiam.cli.common import container
from agentiam.cli.output import emit, fail, handle_errors

alerts_app = typer.Typer(help="Detection alerts, with their evidence.", no_args_is_help=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
_RISK_COLUMNS = ["agent_id", "risk_score"]
_ALERT_COLUMNS = ["time", "agent_id", "detector", "severity", "score", "summary"]


def _alert_row(time: datetime, details: dict[str, Any]) -> dict[str, Any]:
    evidence = details.get("evidence") or {}
    return {
        "time": time.isoformat(),
        "alert_id": details.get("alert_id"),
        "agent_id": details.get("agent_id"),
        "session": details.get("session"),
        "detector": details.get("detector"),
        "category": details.get("category"),
        "severity": details.get("severity"),
        "score": details.get("score"),
        "summary": evidence.get("summary") if isinstance(evidence, dict) else None,
        "evidence": evidence,
    }


def risk(
    agent: Annotated[str | None, typer.Argument(help="An agent id or name.")] = None,
    min_score: Annotated[int, typer.Option(min=1, max=100, help="Lowest score listed.")] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Agents by risk score now, highest first; with AGENT, its score, its sessions'
    scores and the alerts behind them."""
    with handle_errors(), container() as c:
        if c.detection is None:
            fail("behavioural detection is switched off (AGENTIAM_DETECTION_ENABLED)")
        ledger = c.detection.recorded_scores()
        now = c.clock.now()
        if agent is None:
            rows = [
                {"agent_id": a, "risk_score": math.ceil(s)}
                for a, s in ledger.top(now, minimum=min_score)
            ]
            emit(rows, as_json=as_json, columns=_RISK_COLUMNS)
            return
        found = c.agents.resolve(agent)
        alerts = c.detection.recent_alerts(found.id)
        data = {
            "agent_id": found.id,
            "name": found.name,
            "risk_score": math.ceil(ledger.score(found.id, now)),
            "sessions": [
                {"session": s, "risk_score": math.ceil(ledger.session_score(s, now))}
                for s in c.detection.alert_sessions(alerts)
            ],
            "alerts": [_alert_row(e.time, dict(e.details)) for e in alerts],
        }
    emit(data, as_json=as_json, columns=["agent_id", "name", "risk_score"])


@alerts_app.command("list")
def list_alerts(
    agent: Annotated[str | None, typer.Option(help="An agent id or name.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """The latest alerts (newest last), each with the evidence that raised it."""
    with handle_errors(), container() as c:
        if c.detection is None:
            fail("behavioural detection is switched off (AGENTIAM_DETECTION_ENABLED)")
        agent_id = c.agents.resolve(agent).id if agent else None
        alerts = c.detection.recent_alerts(agent_id, limit=limit)
        rows = [_alert_row(e.time, dict(e.details)) for e in alerts]
    emit(rows, as_json=as_json, columns=_ALERT_COLUMNS)
