"""``agentiam trace <trace-id|jti>`` and ``agentiam audit events|export-events`` as real
processes over a SQLite database seeded with a human, two agents, a delegation tree
and the events of one trace: the tree runs from the initiating human through each
agent to each action and its outcome."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.test_quickstart import cli

from agentiam.adapters.storage.unit_of_work import SqlUnitOfWork
from agentiam.bootstrap import build
from agentiam.config import Settings
from agentiam.core.audit.events import (
    Actor,
    ActorType,
    AuditEvent,
    Outcome,
    ResourceRef,
    TraceContext,
)
from agentiam.core.delegation.models import TokenNode, TokenOrigin
from agentiam.core.ids import new_id
from agentiam.services.agents import NewAgent
from agentiam.services.context import CallContext
from agentiam.services.humans import NewHuman

pytestmark = pytest.mark.e2e

TRACE = "0af7651916cd43dd8448eb211c80319c"
OTHER = "4bf92f3577b34da6a3ce929d0e0e4736"
CTX = CallContext.system("test")


class World:
    def __init__(self, url: str) -> None:
        self.env = {**os.environ, "AGENTIAM_DATABASE_URL": url, "COLUMNS": "250"}
        c = build(Settings(database_url=url))
        try:
            self.human = c.humans.create(
                CTX, NewHuman(display_name="Hannah", email="hannah@example.com")
            ).id
            self.other_human = c.humans.create(
                CTX, NewHuman(display_name="Otto", email="otto@example.com")
            ).id

            def agent(name: str) -> str:
                new = NewAgent(name=name, owners=[self.human], purpose="p", environment="dev")
                return c.agents.register(CTX, new).id

            self.planner, self.worker = agent("planner"), agent("worker")
            now = datetime.now(UTC).replace(microsecond=0)
            self.root_jti, self.worker_jti = new_id("token"), new_id("token")
            nodes = [
                self._node(self.root_jti, None, self.planner, (self.planner,), now),
                self._node(
                    self.worker_jti, self.root_jti, self.worker, (self.worker, self.planner), now
                ),
            ]
            self.events = self._events(now)
            with SqlUnitOfWork(c.engine) as uow:
                for node in nodes:
                    uow.token_graph.add(node)
                uow.audit.append_many(self.events)
                uow.commit()
        finally:
            c.close()

    def _node(
        self, jti: str, parent: str | None, client: str, actors: tuple[str, ...], now: datetime
    ) -> TokenNode:
        return TokenNode(
            jti=jti,
            parent_jti=parent,
            actor_jti=None,
            root_jti=self.root_jti,
            origin=TokenOrigin.EXCHANGE if parent else TokenOrigin.HUMAN,
            subject=self.human,
            client_id=client,
            actors=actors,
            grant_id=None,
            scope=("docs:read",),
            audience="https://tools.example.com",
            issued_at=now,
            expires_at=now + timedelta(minutes=10),
        )

    def _events(self, now: datetime) -> list[AuditEvent]:
        def ev(n: int, agent: str, chain: tuple[str, ...], **kw: Any) -> AuditEvent:
            fields: dict[str, Any] = {
                "type": "policy.decision",
                "actor": Actor(ActorType.AGENT, agent),
                "source": "pep",
                "trace": TraceContext(TRACE, f"{n + 1:016x}"),
                "now": now + timedelta(seconds=n),
                "agent_id": agent,
                "initiating_human": self.human,
                "delegation_chain": chain,
                "decision_id": f"dec_{n}",
            }
            fields.update(kw)
            return AuditEvent.create(**fields)

        p, w = self.planner, self.worker
        return [
            ev(0, p, (), type="token.exchanged", action="token", initiating_human=None,
               decision_id=None, resource=ResourceRef("agent", p),
               details={"jti": self.root_jti, "initiating_human": self.human, "actors": [p]}),
            ev(1, p, (p,), action="read", resource=ResourceRef("Document", "plan.md")),
            ev(2, w, (w, p), type="token.exchanged", action="token", initiating_human=None,
               decision_id=None, resource=ResourceRef("agent", w),
               details={"jti": self.worker_jti, "initiating_human": self.human,
                        "actors": [w, p]}),
            ev(3, w, (w, p), action="call", resource=ResourceRef("Tool", "rm-rf"),
               outcome=Outcome.DENIED, reason="no policy permits call"),
            ev(4, w, (w, p), action="call", resource=ResourceRef("Tool", "search")),
            # Someone else's work in another trace: in neither view.
            ev(5, p, (p,), action="read", resource=ResourceRef("Document", "secret.md"),
               trace=TraceContext(OTHER, "f" * 16), initiating_human=self.other_human),
        ]  # fmt: skip


@pytest.fixture
def world(sqlite_url: str) -> World:
    return World(sqlite_url)


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def test_trace_id_draws_human_agents_actions_and_outcomes(world: World) -> None:
    out = _lines(cli(world.env, "trace", TRACE).stdout)
    assert out[0] == f"trace {TRACE}"
    assert out[1] == f"└── human {world.human} (Hannah <hannah@example.com>)"
    assert out[2] == f"    └── agent {world.planner} (planner)"
    assert re.match(r"^        ├── \S+ token agent:\S+ → success \(type=token\.exchanged", out[3])
    assert re.match(r"^        ├── \S+ read Document:plan\.md → success \(.*dec_1", out[4])
    assert out[5] == f"        └── agent {world.worker} (worker)"
    assert "token agent:" in out[6]
    assert f"jti={world.worker_jti}" in out[6]
    assert re.search(r"call Tool:rm-rf → denied .* — no policy permits call$", out[7])
    assert re.search(r"└── \S+ call Tool:search → success", out[8])
    assert out[9] == "5 events in 1 trace(s)"
    assert len(out) == 10
    assert "secret.md" not in "\n".join(out)


def test_trace_id_as_json_and_unknown_trace(world: World) -> None:
    data = json.loads(cli(world.env, "trace", TRACE, "--json").stdout)
    assert data["trace_id"] == TRACE
    assert [e["event_id"] for e in data["events"]] == [e.event_id for e in world.events[:5]]
    missing = cli(world.env, "trace", "f" * 32, check=False)
    assert missing.returncode == 1
    assert "no audit events carry trace id" in missing.stderr
    bad = cli(world.env, "trace", "nonsense", check=False)
    assert bad.returncode == 1
    assert "neither a trace id nor a token id" in bad.stderr


def test_trace_jti_draws_the_delegation_tree_and_the_chain_events(world: World) -> None:
    out = _lines(cli(world.env, "trace", world.worker_jti).stdout)
    assert out[0] == world.human
    assert re.match(rf"^└── {world.planner} {world.root_jti} active .*\(human\)$", out[1])
    assert re.match(rf"^    └── {world.worker} {world.worker_jti} active .*\(exchange\) ◀$", out[2])
    assert out[3] == f"events of the chain of {world.worker_jti}"
    drawn = "\n".join(out[3:])
    for needle in ("plan.md → success", "rm-rf → denied", "search → success", world.root_jti):
        assert needle in drawn
    assert "secret.md" not in drawn  # another human's work by the same agent
    data = json.loads(cli(world.env, "trace", world.worker_jti, "--json").stdout)
    assert data["tree"]["token"]["jti"] == world.worker_jti
    assert len(data["events"]) == 5
    # The sub-command keeps working, and prints the tree alone.
    only_tree = _lines(cli(world.env, "trace", "token", world.worker_jti).stdout)
    assert only_tree == out[:3]


def test_audit_events_and_export_events(world: World, tmp_path: Path) -> None:
    listed = json.loads(
        cli(world.env, "audit", "events", "--trace", TRACE, "--outcome", "denied", "--json").stdout
    )
    assert [e["event_id"] for e in listed["items"]] == [world.events[3].event_id]
    page = json.loads(
        cli(world.env, "audit", "events", "--human", world.human, "--limit", "2", "--json").stdout
    )
    assert len(page["items"]) == 2
    assert page["next_after"]
    table = cli(world.env, "audit", "events", "--agent", world.worker).stdout
    assert "rm-rf" in table
    assert "next page" not in table
    target = tmp_path / "out.csv"
    cli(world.env, "audit", "export-events", "--format", "csv", "-o", str(target), "--trace", TRACE)
    rows = list(csv.DictReader(io.StringIO(target.read_text(encoding="utf-8"), newline="")))
    assert [r["event_id"] for r in rows] == [e.event_id for e in world.events[:5]]
    jsonl = tmp_path / "out.jsonl"
    cli(world.env, "audit", "export-events", "-o", str(jsonl), "--agent", world.planner)
    records = [json.loads(x) for x in jsonl.read_text(encoding="utf-8").splitlines()]
    assert records[-1] == world.events[5].to_dict()
    ours = [e.to_dict() for e in world.events if e.agent_id == world.planner]
    assert [r for r in records if r["source"] == "pep"] == ours  # the stored records
