"""``agentiam audit prune`` and ``audit checkpoints`` as real processes over a SQLite
database holding events from 40 days ago and from today: the dry run says what would
go, the prune archives and checkpoints it, the trail still verifies, and the archive
verifies offline on its own."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tests.e2e.test_quickstart import cli

from agentiam.adapters.storage.unit_of_work import SqlUnitOfWork
from agentiam.bootstrap import build
from agentiam.config import Settings
from agentiam.core.audit.events import Actor, ActorType, AuditEvent, TraceContext
from agentiam.core.credentials.sealing import MasterKey

pytestmark = pytest.mark.e2e


def _event(when: datetime, n: int) -> AuditEvent:
    event = AuditEvent.create(
        type="agent.updated",
        actor=Actor(ActorType.CLI, "cli"),
        action="agent.updated",
        source="test",
        trace=TraceContext.new(),
        now=when,
        details={"n": n},
    )
    return replace(event, time=when)


def test_prune_from_the_command_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'trail.db'}"
    archive = tmp_path / "archive"
    env = {
        **os.environ,
        "AGENTIAM_DATABASE_URL": url,
        "AGENTIAM_MASTER_KEY": MasterKey.generate_text(),
        "COLUMNS": "250",
    }
    env.pop("AGENTIAM_AUDIT_ARCHIVE_DIR", None)
    cli(env, "db", "upgrade")
    now = datetime.now(UTC)
    c = build(Settings(database_url=url))
    try:
        with SqlUnitOfWork(c.engine) as uow:
            uow.audit.append_many([_event(now - timedelta(days=40), i) for i in range(25)])
            uow.audit.append_many([_event(now, i) for i in range(5)])
            uow.commit()
    finally:
        c.close()

    # Without an archive directory nothing is pruned, and the error says why.
    refused = cli(env, "audit", "prune", "--older-than-days", "30", check=False)
    assert refused.returncode != 0
    assert "AGENTIAM_AUDIT_ARCHIVE_DIR" in refused.stdout + refused.stderr

    env["AGENTIAM_AUDIT_ARCHIVE_DIR"] = str(archive)
    plan = json.loads(
        cli(env, "audit", "prune", "--older-than-days", "30", "--dry-run", "--json").stdout
    )
    assert plan["start"] == 0
    assert plan["end"] == 25
    assert not archive.exists()  # a dry run changes nothing

    done = json.loads(cli(env, "audit", "prune", "--older-than-days", "30", "--json").stdout)
    assert done["passes"] == 1
    [checkpoint] = done["checkpoints"]
    assert checkpoint["tree_size"] == 25

    verified = json.loads(cli(env, "audit", "verify", "--json").stdout)
    assert verified["ok"], verified
    listed = json.loads(cli(env, "audit", "checkpoints", "--json").stdout)
    assert [cp["tree_size"] for cp in listed] == [25]

    name = checkpoint["archive"].split(" ")[0]
    offline = cli(env, "audit", "verify", "--export", str(archive / name), "--json")
    report = json.loads(offline.stdout)
    assert report["ok"]
    assert report["entries"] == 25

    # An edited archive is caught offline.
    path = archive / name
    lines = path.read_text().splitlines()
    entry = json.loads(lines[-3])
    entry["event"]["details"]["n"] += 1
    lines[-3] = json.dumps(entry)
    path.write_text("\n".join(lines) + "\n")
    tampered = cli(env, "audit", "verify", "--export", str(path), "--json", check=False)
    assert tampered.returncode == 2
    assert "edited-event" in tampered.stdout
