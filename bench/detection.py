"""Behavioural detection throughput: what the detectors cost per audit event.

A seeded, realistic mixed stream goes through ``DetectionEngine.observe`` (the five
detector families with their default thresholds and warm-up, baselines, peer groups,
the risk ledger):

* ``--agents`` agents (default 2,000) under 200 owners, each with one of four benign
  workflows (support, billing, research, ops), sessions of 3-9 calls a few seconds
  apart, sessions minutes apart; ids per object in HTTP resources
  (``Endpoint::invoices/123``), target hosts and environments on the calls; a third of
  the agents declare expectations (actions, hosts, environments), so both the declared
  and the learned paths run;
* per session a ``token.issued`` event and, for every call, the ``tool.call`` outcome
  after its ``authz.decision`` (as the gateway writes them), 3% denied decisions;
* ``with attacks`` adds, at random points, runaway loops (50 repeats), privilege
  probing (denied bursts), boundary crossings and new tools: alerts are raised and
  scored, so the alert path is timed too.

Observations are built before timing (``observe_event`` row: the cost of mapping a
stored event dict to an Observation, timed on its own). Each ``engine.observe`` call is
timed with ``perf_counter_ns``; events/s is events over the summed time; p50/p99 are
nearest-rank per-event latencies. The issue's target is under 20 µs per event in-line.

Rerun from the repository root::

    .venv/bin/python bench/detection.py                    # about 30 s on 2 cores
    .venv/bin/python bench/detection.py --agents 10000 --events 500000
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.mdtable import markdown_table

from agentiam.core.audit.events import Actor, ActorType, AuditEvent, ResourceRef, TraceContext
from agentiam.core.detection.engine import DetectionEngine
from agentiam.core.detection.model import Expectations, Observation
from agentiam.core.detection.observation import observe
from agentiam.core.detection.profile import AgentInfo

TARGET_US = 20.0
T0 = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)

WORKFLOWS: dict[str, list[tuple[str, str]]] = {
    "support": [
        ("invoke_tool", "Tool::kb_search"),
        ("GET", "Endpoint::tickets/{n}"),
        ("invoke_tool", "Tool::crm_lookup"),
        ("invoke_tool", "Tool::reply"),
    ],
    "billing": [
        ("GET", "Endpoint::invoices/{n}"),
        ("GET", "Endpoint::customers/{n}"),
        ("POST", "Endpoint::invoices/{n}/reminders"),
        ("invoke_tool", "Tool::ledger_post"),
    ],
    "research": [
        ("invoke_tool", "Tool::web_search"),
        ("invoke_tool", "Tool::fetch_page"),
        ("read", "DataSet::papers"),
        ("invoke_tool", "Tool::summarise"),
    ],
    "ops": [
        ("invoke_tool", "Tool::metrics_query"),
        ("invoke_tool", "Tool::logs_search"),
        ("invoke_tool", "Tool::runbook"),
        ("POST", "Endpoint::incidents/{n}/notes"),
    ],
}
HOSTS = {
    "support": "tickets.internal.example",
    "billing": "billing.internal.example",
    "research": "search.example.org",
    "ops": "metrics.internal.example",
}


class Stream:
    def __init__(self, agents: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.t = T0
        self.events: list[Observation] = []
        self.profiles: dict[str, AgentInfo] = {}
        self.kinds: dict[str, str] = {}
        for k in range(agents):
            agent = f"agt_bench_{k:06d}"
            kind = list(WORKFLOWS)[k % 4]
            env = "production" if k % 3 else "staging"
            declared = (
                Expectations(
                    actions=tuple(f"{a}@{r.split('/')[0]}*" for a, r in WORKFLOWS[kind]),
                    hosts=(HOSTS[kind],),
                    environments=(env,),
                )
                if k % 3 == 0
                else Expectations()
            )
            self.profiles[agent] = AgentInfo(
                agent_id=agent,
                owners=(f"hum_{k % 200:04d}",),
                purpose=kind,
                environment=env,
                labels={"team": f"team-{k % 40}"},
                expectations=declared,
            )
            self.kinds[agent] = kind
        self.n = 0

    def _obs(self, agent: str, kind: str, action: str, resource: str | None, **kw: Any) -> None:
        self.n += 1
        attributes = kw.pop("attributes", {})
        self.events.append(
            Observation(
                index=self.n,
                event_id=f"evt_{self.n:09d}",
                time=self.t,
                kind=kind,
                agent_id=agent,
                action=action,
                resource=resource,
                attributes=attributes,
                **kw,
            )
        )

    def session(self, agent: str) -> None:
        rng = self.rng
        kind = self.kinds[agent]
        info = self.profiles[agent]
        jti = f"tok_{self.n:09d}"
        self._obs(
            agent,
            "token.issued",
            "token",
            f"agent::{agent}",
            session=jti,
            attributes={"jti": jti, "jkt": "JKT-" + agent[-6:]},
        )
        target = {"host": HOSTS[kind], "environment": info.environment}
        steps = WORKFLOWS[kind]
        for _ in range(rng.randint(3, 9)):
            action, resource = steps[min(len(steps) - 1, int(rng.expovariate(1.0)))]
            resource = resource.replace("{n}", str(rng.randint(1, 99_999)))
            allowed = rng.random() > 0.03
            self.t += timedelta(milliseconds=rng.randint(5, 400))
            self._obs(
                agent,
                "authz.decision",
                action,
                resource,
                allowed=allowed,
                session=jti,
                attributes=target,
            )
            if allowed:
                self._obs(
                    agent,
                    "tool.call",
                    action,
                    resource,
                    allowed=True,
                    session=jti,
                    attributes={"status": 200},
                )

    def attack(self) -> None:
        rng = self.rng
        agent = rng.choice(list(self.profiles))
        jti = f"tok_{self.n:09d}"
        what = rng.randrange(4)
        if what == 0:  # runaway loop
            for _ in range(50):
                self.t += timedelta(milliseconds=2)
                self._obs(
                    agent,
                    "authz.decision",
                    "invoke_tool",
                    "Tool::send_email",
                    allowed=True,
                    session=jti,
                )
        elif what == 1:  # privilege probing
            for k in range(8):
                self.t += timedelta(milliseconds=50)
                self._obs(
                    agent,
                    "authz.decision",
                    "DELETE",
                    f"Endpoint::admin/{k}",
                    allowed=False,
                    session=jti,
                )
        elif what == 2:  # lateral movement
            self._obs(
                agent,
                "authz.decision",
                "GET",
                "Endpoint::secrets",
                allowed=True,
                session=jti,
                attributes={"environment": "production-eu", "host": "vault.internal.example"},
            )
        else:  # a tool it never used
            self._obs(
                agent,
                "authz.decision",
                "invoke_tool",
                "Tool::export_all",
                allowed=True,
                session=jti,
            )

    def build(self, events: int, attack_rate: float) -> list[Observation]:
        agents = list(self.profiles)
        rng = self.rng
        while len(self.events) < events:
            self.t += timedelta(milliseconds=rng.randint(1, 60))
            if attack_rate and rng.random() < attack_rate:
                self.attack()
            else:
                self.session(rng.choice(agents))
        return self.events[:events]


def _pct(sorted_ns: list[int], q: float) -> float:
    k = max(0, min(len(sorted_ns) - 1, round(q / 100 * len(sorted_ns) + 0.5) - 1))
    return sorted_ns[k] / 1000


def run(label: str, stream: Stream, events: list[Observation]) -> list[str]:
    engine = DetectionEngine(profiles=stream.profiles.get)
    timings = [0] * len(events)
    clock = time.perf_counter_ns
    alerts = 0
    gc.collect()
    gc.disable()
    try:
        for k, obs in enumerate(events):
            start = clock()
            found = engine.observe(obs)
            timings[k] = clock() - start
            alerts += len(found)
    finally:
        gc.enable()
    total = sum(timings)
    timings.sort()
    mean = total / len(events) / 1000
    return [
        label,
        f"{len(events):,}",
        f"{len(events) / (total / 1e9):,.0f}",
        f"{mean:.1f}",
        f"{_pct(timings, 50):.1f}",
        f"{_pct(timings, 99):.1f}",
        f"{alerts:,}",
        "met" if mean < TARGET_US else "NOT met",
    ]


def _timed_row(label: str, timings: list[int]) -> list[str]:
    """A table row of per-operation timings (ns) without alerts or a target."""
    count, total = len(timings), sum(timings)
    timings = sorted(timings)
    return [
        label,
        f"{count:,}",
        f"{count / (total / 1e9):,.0f}",
        f"{total / count / 1000:.1f}",
        f"{_pct(timings, 50):.1f}",
        f"{_pct(timings, 99):.1f}",
        "-",
        "-",
    ]


def run_mapping(count: int) -> list[str]:
    """``observe()`` of stored event dicts: the mapping cost before the engine."""
    trace = TraceContext.new()
    actor = Actor(ActorType.AGENT, "agt_bench_000001")
    dicts = [
        AuditEvent.create(
            type="authz.decision",
            actor=actor,
            action="invoke_tool",
            source="gateway/bench",
            trace=trace,
            now=T0 + timedelta(seconds=k),
            resource=ResourceRef("Tool", f"tool_{k % 50}"),
            agent_id="agt_bench_000001",
            details={"decision": "allow", "jti": f"tok_{k % 100}"},
        ).to_dict()
        for k in range(count)
    ]
    timings = [0] * count
    clock = time.perf_counter_ns
    for k, event in enumerate(dicts):
        start = clock()
        observe(k, event)
        timings[k] = clock() - start
    return _timed_row("observe_event (dict → Observation)", timings)


def run_risk_lookup(stream: Stream, events: list[Observation], count: int) -> list[str]:
    """What detection adds to a decision: the PDP reads the agent's risk score for
    ``context.risk_score`` (``DetectionService.risk``: a lock and a ledger read), after
    the engine saw ``events``. The detectors themselves run off the decision path."""
    engine = DetectionEngine(profiles=stream.profiles.get)
    for obs in events:
        engine.observe(obs)
    agents = sorted(stream.profiles)
    lock = threading.Lock()
    now = events[-1].time
    timings = [0] * count
    clock = time.perf_counter_ns
    for k in range(count):
        agent = agents[k % len(agents)]
        start = clock()
        with lock:
            engine.risk(agent, now)
        timings[k] = clock() - start
    return _timed_row("risk look-up per decision (the decision-path cost)", timings)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=2000)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    started = time.perf_counter()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"machine: nproc={os.cpu_count()}, load average {load:.2f} at start, python "
        f"{platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.platform()}"
    )
    print(f"stream: {args.agents:,} agents, {args.events:,} events, seed {args.seed}")
    print()
    benign = Stream(args.agents, args.seed)
    mixed = Stream(args.agents, args.seed + 1)
    mixed_events = mixed.build(args.events, 0.01)
    rows = [
        run("benign stream", benign, benign.build(args.events, 0.0)),
        run("with attacks (1% of sessions)", mixed, mixed_events),
        run_mapping(min(args.events, 100_000)),
        run_risk_lookup(mixed, mixed_events, 100_000),
    ]
    header = [
        "workload",
        "events",
        "events/s",
        "µs/event",
        "p50 µs",
        "p99 µs",
        "alerts",
        f"< {TARGET_US:.0f} µs",
    ]
    print(markdown_table(header, rows))
    print()
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
