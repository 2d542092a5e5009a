"""``agentiam simulate``: the detection evaluation harness (issue 8, item 5).

For each attack scenario (:mod:`agentiam.core.detection.simulation.scenarios`) the
runner builds a **real control plane in-process** (``bootstrap.build`` on a fresh
SQLite file, detection on, the playbook file given) and drives it as enforcement
points and agents would:

1. **Registry.** Owners, agents of four kinds in two environments (keys, scopes,
   labels, half of them with declared expectations), the catalog and the policies
   of :mod:`~agentiam.core.detection.simulation.world`.
2. **Warm-up history, in virtual time.** The clock is set to ``--warmup-hours`` ago
   and every agent's benign sessions of that period are played, each call a real
   decision stamped by the simulated clock, as fast as the machine goes. Detection
   runs the whole time in the container's own background loop.
3. **Evaluation, in real time.** The clock switches to ``datetime.now(UTC)``. Benign
   agents keep working (sessions back to back); one attack instance per candidate
   agent starts every ``stagger`` seconds. Every action goes through the real path:
   ``DecisionPoint.decide`` with a context like an enforcement point's (one trace per
   session; throttles applied as ``POST /v1/authorize`` applies them), token
   requests through ``TokenService.token`` with real ``private_key_jwt`` assertions
   and DPoP proofs (:mod:`agentiam.sdk`), sub-agents through the sub-agent endpoint's
   service call.
4. **Figures from the trail.** Alerts (``detection.alert``), responses
   (``response.action``) and the attackers' decisions (``authz.decision``) are read
   back from the audit trail and scored
   (:mod:`agentiam.core.detection.simulation.metrics`).
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from agentiam.adapters.storage import migrate
from agentiam.adapters.storage.engine import make_engine
from agentiam.bootstrap import Container, build
from agentiam.config import Settings
from agentiam.core.audit.events import Actor, ActorType, AuditEvent, TraceContext
from agentiam.core.credentials.sealing import MasterKey
from agentiam.core.detection.simulation.metrics import (
    AlertRecord,
    AttackInstance,
    DecisionRecord,
    ResponseRecord,
    ScenarioResult,
    Targets,
    evaluate,
    failures,
    pooled,
)
from agentiam.core.detection.simulation.scenarios import (
    LOOP_GIVE_UP,
    LOOP_LATENCY,
    SCENARIOS,
    AttackStep,
    TokenAsk,
    TokenReplay,
)
from agentiam.core.detection.simulation.workload import Planned, Session, history, session
from agentiam.core.detection.simulation.world import (
    OWNERS,
    RESOURCE,
    SCOPES,
    AgentSpec,
    Call,
    catalog,
    fleet,
    policies,
)
from agentiam.core.policy.authorizer import AuthzRequest
from agentiam.core.policy.model import EntityRef, ResourceRecord
from agentiam.errors import AgentIAMError, InvalidInput
from agentiam.ports import AuditQuery
from agentiam.sdk import AgentKey, client_assertion, dpop_proof
from agentiam.services.agents import NewAgent
from agentiam.services.context import CallContext
from agentiam.services.detection import DetectionService
from agentiam.services.humans import NewHuman

__all__ = ["HEADER", "Options", "SimClock", "Targets", "report", "rows", "run", "simulate"]

SOURCE = "gateway/simulator"
ISSUER = "https://agentiam.simulator.invalid"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ADMIN = CallContext.system("simulator/setup")
# in a source checkout; an installed package names its file with --playbooks
SHIPPED_PLAYBOOKS = Path(__file__).resolve().parents[3] / "examples" / "playbooks.yaml"


def _playbooks(options: Options) -> str:
    if options.playbooks_file is not None:
        return options.playbooks_file
    if not SHIPPED_PLAYBOOKS.is_file():
        raise InvalidInput(
            "no playbook file given and examples/playbooks.yaml is not here",
            hint="Pass --playbooks FILE (see docs/response.md).",
        )
    return str(SHIPPED_PLAYBOOKS)


class SimClock:
    """The control plane's clock: a virtual time set by the simulator while it plays
    the warm-up history, the real time (``datetime.now(UTC)``) after :meth:`real`."""

    def __init__(self, start: datetime) -> None:
        self._virtual: datetime | None = start
        self._lock = threading.Lock()

    def set(self, when: datetime) -> None:
        with self._lock:
            self._virtual = when

    def real(self) -> None:
        with self._lock:
            self._virtual = None

    def now(self) -> datetime:
        virtual = self._virtual
        return virtual if virtual is not None else datetime.now(UTC)


@dataclass(frozen=True)
class Options:
    scenarios: tuple[str, ...] = tuple(SCENARIOS)
    instances: int = 20
    seed: int = 7
    warmup_hours: float = 2.0
    benign_per_kind: int = 3
    stagger: float = 0.4  # seconds between two attack instances' starts
    tail: float = 2.0  # seconds of benign traffic after the last attack ends
    playbooks_file: str | None = None  # default: examples/playbooks.yaml
    detection_file: str | None = None  # default: the shipped detection defaults
    workdir: str | None = None
    progress: Callable[[str], None] = field(default=lambda _m: None)

    @classmethod
    def quick(cls, **overrides: Any) -> Options:
        """A short run for tests: 5 instances and 2 benign agents per kind."""
        values: dict[str, Any] = {
            "instances": 5,
            "benign_per_kind": 2,
            "tail": 1.5,
        }
        values.update(overrides)
        return cls(**values)


# -- one simulated agent ------------------------------------------------------------------


@dataclass
class SimAgent:
    spec: AgentSpec
    agent_id: str
    key: AgentKey
    lock: threading.Lock = field(default_factory=threading.Lock)


class Plane:
    """One control plane and the simulated agents registered in it."""

    def __init__(self, container: Container, clock: SimClock, rng: random.Random) -> None:
        self.c = container
        self.clock = clock
        self.rng = rng
        self.agents: dict[str, SimAgent] = {}
        self.token_endpoint = container.tokens.policy.token_endpoint

    # -- setup ---------------------------------------------------------------------------

    def register(self, specs: Sequence[AgentSpec], suffix: str) -> None:
        c = self.c
        owners = [
            c.humans.create(
                ADMIN,
                NewHuman(display_name=f"Owner {i}", email=f"owner{i}-{suffix}@example.com"),
            ).id
            for i in range(OWNERS)
        ]
        for record in catalog():
            c.resources.put(
                ADMIN,
                ResourceRecord(
                    record.type,
                    record.id,
                    dict(record.attributes),
                    tuple(EntityRef(t, i) for t, i in record.parents),
                    dict(record.tags),
                ),
            )
        for policy_id, text in policies().items():
            c.policies.put(ADMIN, policy_id, text=text, description="simulated workload")
        for spec in specs:
            key = AgentKey.generate()
            agent = c.agents.register(
                ADMIN,
                NewAgent(
                    name=f"{spec.name}-{suffix}",
                    owners=[owners[spec.owner]],
                    purpose=KIND_PURPOSE[spec.kind],
                    environment=spec.environment,
                    labels=spec.labels(),
                    activate=True,
                    keys=[key.public_jwk()],
                    scopes=list(SCOPES),
                    audiences=[RESOURCE],
                    expectations=spec.expectations(),
                ),
            )
            self.agents[spec.name] = SimAgent(spec, agent.id, key)
        c.decisions.refresh()

    # -- what agents and enforcement points do ---------------------------------------------

    def decide(
        self,
        agent_id: str,
        call: Call,
        trace: TraceContext,
        context: Mapping[str, Any] | None = None,
    ) -> bool:
        """One call, decided and audited as an in-process enforcement point does;
        a throttled agent is refused first, as ``POST /v1/authorize`` refuses it."""
        response = self.c.response
        if response.throttles and response.check_throttle(agent_id) is not None:
            return False
        ctx = CallContext(actor=Actor(ActorType.AGENT, agent_id), source=SOURCE, trace=trace)
        request = AuthzRequest(
            EntityRef("Agent", agent_id),
            call.action,
            EntityRef(call.type, call.id),
            dict(context or {}),
        )
        try:
            return self.c.decisions.decide(ctx, [request])[0].allowed
        except AgentIAMError:
            return False

    def _epoch(self) -> int:
        return int(self.clock.now().timestamp())

    def token(self, agent: SimAgent, scope: str | None = None) -> str | None:
        """A ``client_credentials`` token request with a fresh assertion and DPoP
        proof, through the token endpoint's service call; None when refused."""
        epoch = self._epoch()
        form = {
            "grant_type": ["client_credentials"],
            "client_assertion_type": [ASSERTION_TYPE],
            "client_assertion": [
                client_assertion(agent.key, client_id=agent.agent_id, audience=ISSUER, now=epoch)
            ],
            "resource": [RESOURCE],
        }
        if scope is not None:
            form["scope"] = [scope]
        proof = dpop_proof(agent.key, method="POST", url=self.token_endpoint, now=epoch)
        ctx = CallContext(
            actor=Actor(ActorType.ANONYMOUS, "oauth-client"),
            source="control-plane/oauth",
            trace=TraceContext.new(),
        )
        try:
            body = self.c.tokens.token(ctx, form, [proof]).body
        except AgentIAMError:
            return None
        return str(body["access_token"])

    def replay_stolen(self, victim: SimAgent, stolen: str, thief: AgentKey) -> bool:
        """The victim's token as the actor token of an exchange, with a DPoP proof by
        the thief's key; True if it was (wrongly) accepted."""
        form = {
            "grant_type": [EXCHANGE],
            "subject_token": [stolen],
            "subject_token_type": [ACCESS_TOKEN_TYPE],
            "actor_token": [stolen],
            "actor_token_type": [ACCESS_TOKEN_TYPE],
            "client_id": [victim.agent_id],
            "resource": [RESOURCE],
        }
        proof = dpop_proof(thief, method="POST", url=self.token_endpoint, now=self._epoch())
        ctx = CallContext(
            actor=Actor(ActorType.ANONYMOUS, "oauth-client"),
            source="control-plane/oauth",
            trace=TraceContext.new(),
        )
        try:
            self.c.tokens.token(ctx, form, [proof])
        except AgentIAMError:
            return False
        return True

    def spawn(self, parent: SimAgent) -> str | None:
        """A just-in-time sub-agent through the sub-agent endpoint's service call
        (``POST /v1/sub-agents``): the parent's DPoP-bound token and proof, the
        child's own key and key proof. Returns the child's id, None when refused."""
        token = self.token(parent)
        if token is None:
            return None
        url = ISSUER + "/v1/sub-agents"
        epoch = self._epoch()
        child_key = AgentKey.generate()
        body = {
            "jwk": child_key.public_jwk(),
            "key_proof": dpop_proof(
                child_key, method="POST", url=url, access_token=token, now=epoch
            ),
            "ttl_seconds": 600,
            "purpose": "summarises one research session",
        }
        proof = dpop_proof(parent.key, method="POST", url=url, access_token=token, now=epoch)
        ctx = CallContext(
            actor=Actor(ActorType.AGENT, parent.agent_id),
            source="control-plane/sub-agents",
            trace=TraceContext.new(),
        )
        try:
            child, _ = self.c.delegation.spawn_request(
                ctx, authorization=[f"DPoP {token}"], dpop=[proof], url=url, body=body
            )
        except AgentIAMError:
            return None
        return child.id


KIND_PURPOSE = {
    "support": "answers customer tickets",
    "finance": "pays supplier invoices",
    "devops": "watches deployments and handles incidents",
    "research": "researches markets and writes briefs",
}


# -- benign sessions --------------------------------------------------------------------


class SessionRunner:
    """Plays one session's calls: its own trace, a sub-agent for the delegated part."""

    def __init__(self, plane: Plane, sess: Session) -> None:
        self.plane = plane
        self.session = sess
        self.trace = TraceContext.new()
        self.child: str | None = None

    def spawn(self) -> None:
        agent = self.plane.agents[self.session.agent]
        self.child = self.plane.spawn(agent)

    def call(self, index: int) -> None:
        agent = self.plane.agents[self.session.agent]
        call = self.session.calls[index]
        if self.session.delegated[index] and self.child is not None:
            context = {"delegation": {"depth": 1, "actors": [self.child, agent.agent_id]}}
            self.plane.decide(self.child, call, self.trace, context)
        else:
            self.plane.decide(agent.agent_id, call, self.trace)


def play_history(plane: Plane, planned: Sequence[Planned], end: datetime) -> int:
    """The warm-up: every planned call at its virtual time, in order."""
    runners: dict[int, SessionRunner] = {}
    for item in planned:
        plane.clock.set(datetime.fromtimestamp(item.at, UTC))
        runner = runners.get(id(item.session))
        if runner is None:
            runner = runners[id(item.session)] = SessionRunner(plane, item.session)
        if item.index < 0:
            runner.spawn()
        else:
            runner.call(item.index)
            if item.index == len(item.session.calls) - 1:
                runners.pop(id(item.session), None)
    plane.clock.set(end)
    return len(planned)


def benign_loop(
    plane: Plane, spec: AgentSpec, rng: random.Random, stop: threading.Event, done: list[int]
) -> None:
    """Sessions back to back in real time until ``stop``; counts its calls in
    ``done``."""
    while not stop.wait(rng.uniform(0.5, 3.0)):
        sess = session(spec, rng)
        runner = SessionRunner(plane, sess)
        if sess.spawn:
            runner.spawn()
        for i, gap in enumerate(sess.gaps):
            if stop.wait(gap):
                return
            runner.call(i)
            done[0] += 1


# -- attacks ----------------------------------------------------------------------------


@dataclass
class Executed:
    agent_id: str
    start: datetime
    end: datetime


def attack(plane: Plane, agent: SimAgent, steps: Sequence[AttackStep]) -> Executed:
    """Carry out one attack plan; the window is from just before the first malicious
    action to just after the last."""
    trace = TraceContext.new()
    stolen: str | None = None
    thief: AgentKey | None = None
    if any(isinstance(s.op, TokenReplay) for s in steps):
        stolen = plane.token(agent)  # the victim's own, legitimately issued token
        thief = AgentKey.generate()
    start = plane.clock.now()
    for n, step in enumerate(steps):
        if n and step.delay:
            time.sleep(step.delay)
        op = step.op
        if isinstance(op, Call):
            refused = 0
            for _ in range(step.repeat):
                if plane.decide(agent.agent_id, op, trace):
                    refused = 0
                else:
                    refused += 1
                    if step.repeat > 1 and refused >= LOOP_GIVE_UP:
                        break
                if step.repeat > 1:
                    time.sleep(LOOP_LATENCY)
        elif isinstance(op, TokenAsk):
            plane.token(agent, scope=op.scope)
        elif isinstance(op, TokenReplay) and stolen is not None and thief is not None:
            plane.replay_stolen(agent, stolen, thief)
    return Executed(agent.agent_id, start, plane.clock.now())


# -- reading the trail --------------------------------------------------------------------


def _events(c: Container, **query: Any) -> Iterator[AuditEvent]:
    after: str | None = None
    while True:
        page = c.audit.find(AuditQuery(limit=500, after=after, **query))
        yield from page.items
        if page.next_after is None:
            return
        after = page.next_after


def _time(value: Any, default: datetime) -> datetime:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return default
    return default


def read_alerts(c: Container) -> list[AlertRecord]:
    out = []
    for e in _events(c, type="detection.alert"):
        d = e.details
        out.append(
            AlertRecord(
                alert_id=str(d.get("alert_id") or e.event_id),
                agent_id=str(d.get("agent_id") or e.agent_id or ""),
                detector=str(d.get("detector") or e.action),
                raised_at=_time(d.get("time"), e.time),
                recorded_at=e.time,
                event_id=e.event_id,
            )
        )
    return out


def read_responses(c: Container) -> list[ResponseRecord]:
    return [
        ResponseRecord(
            alert_id=str(e.details.get("alert_id") or ""),
            agent_id=e.agent_id or (e.resource.id if e.resource is not None else ""),
            action=str(e.details.get("action") or ""),
            result=str(e.details.get("result") or ""),
            time=e.time,
            dry_run=bool(e.details.get("dry_run")),
            event_id=e.event_id,
        )
        for e in _events(c, type="response.action")
    ]


def read_decisions(c: Container, agent_ids: Sequence[str]) -> list[DecisionRecord]:
    return [
        DecisionRecord(agent_id, e.time, e.outcome.value == "success")
        for agent_id in agent_ids
        for e in _events(c, type="authz.decision", agent_id=agent_id)
    ]


def _detection(c: Container) -> DetectionService:
    """The container's detection service (it runs in the container's own background
    loop); the harness refuses to run with detection switched off."""
    if c.detection is None:
        raise InvalidInput(
            "detection is switched off", hint="Unset AGENTIAM_DETECTION_ENABLED=false."
        )
    return c.detection


def _settle(c: Container, quiet: float = 0.6, timeout: float = 60.0) -> None:
    """Wait until detection has read everything written so far (its cursor stopped
    moving for ``quiet`` seconds) and the response side has done its work."""
    detection = _detection(c)
    deadline = time.monotonic() + timeout
    last = -1
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        position = detection.status().position
        if position != last:
            last = position
            stable_since = time.monotonic()
        elif time.monotonic() - stable_since >= quiet:
            return
        time.sleep(0.1)


def _rng(*parts: object) -> random.Random:
    """A seeded generator for the workload (a simulation's choices, not secrets)."""
    return random.Random("/".join(str(p) for p in parts))  # noqa: S311


# -- one scenario ---------------------------------------------------------------------------


@dataclass
class ScenarioRun:
    result: ScenarioResult
    events: int
    warmup_calls: int
    benign_calls: int  # benign calls made while the attacks ran
    seconds: float
    alerts: list[AlertRecord]
    responses: list[ResponseRecord]
    attackers: list[str]


def run_scenario(name: str, options: Options, workdir: Path, seed: int) -> ScenarioRun:
    started = time.monotonic()
    scenario = SCENARIOS[name]
    rng = _rng(seed, name)
    url = f"sqlite:///{workdir / f'{name}.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    now = datetime.now(UTC).replace(microsecond=0)
    begin = now - timedelta(hours=options.warmup_hours)
    clock = SimClock(begin)
    settings = Settings(
        database_url=url,
        issuer=ISSUER,
        master_key=MasterKey.generate_text(),
        playbooks_file=_playbooks(options),
        detection_file=options.detection_file,
    )
    c = build(settings, clock=clock)
    try:
        specs = fleet(
            rng,
            benign_per_kind=options.benign_per_kind,
            candidates=options.instances,
            candidate_env=scenario.candidate_env,
        )
        plane = Plane(c, clock, rng)
        c.signing_keys.ensure_key(ADMIN)
        plane.register(specs, f"{name}-{seed}")
        _detection(c)
        c.start_background()
        planned = history(specs, rng, begin.timestamp(), now.timestamp())
        options.progress(f"{name}: warm-up, {len(planned)} calls over {options.warmup_hours} h")
        play_history(plane, planned, now)
        clock.real()
        _settle(c)
        # evaluation, in real time
        options.progress(f"{name}: {options.instances} attacks among benign traffic")
        stop = threading.Event()
        benign_calls = [0]
        candidates = [plane.agents[s.name] for s in specs if s.role == "candidate"]
        benign = [s for s in specs if s.role == "benign"]
        threads = [
            threading.Thread(
                target=benign_loop,
                args=(plane, s, _rng(seed, name, s.name), stop, benign_calls),
                daemon=True,
            )
            for s in benign
        ]
        for t in threads:
            t.start()
        executed: list[Executed | None] = [None] * len(candidates)

        def run_one(i: int, agent: SimAgent) -> None:
            steps = scenario.plan(agent.spec, i, _rng(seed, name, "attack", i))
            executed[i] = attack(plane, agent, steps)

        attackers = []
        time.sleep(1.0)
        for i, agent in enumerate(candidates):
            t = threading.Thread(target=run_one, args=(i, agent), daemon=True)
            t.start()
            attackers.append(t)
            time.sleep(scenario.stagger if scenario.stagger is not None else options.stagger)
        for t in attackers:
            t.join()
        time.sleep(options.tail)
        stop.set()
        for t in threads:
            t.join(timeout=10)
        _settle(c)
        instances = [
            AttackInstance(name, i, e.agent_id, e.start, e.end)
            for i, e in enumerate(executed)
            if e is not None
        ]
        alerts = read_alerts(c)
        responses = read_responses(c)
        decisions = read_decisions(c, [i.agent_id for i in instances])
        result = evaluate(name, instances, alerts, responses, decisions)
        events = _detection(c).status().position
        return ScenarioRun(
            result,
            events,
            len(planned),
            benign_calls[0],
            time.monotonic() - started,
            alerts,
            responses,
            [i.agent_id for i in instances],
        )
    finally:
        c.close()


def run(options: Options) -> list[ScenarioRun]:
    """Every scenario of ``options``, one fresh control plane each."""
    unknown = [s for s in options.scenarios if s not in SCENARIOS]
    if unknown:
        raise typer.BadParameter(f"unknown scenario {unknown[0]!r} (one of {', '.join(SCENARIOS)})")
    if options.workdir is not None:  # kept: the databases can be inspected afterwards
        keep = Path(options.workdir)
        keep.mkdir(parents=True, exist_ok=True)
        return [run_scenario(name, options, keep, options.seed) for name in options.scenarios]
    with tempfile.TemporaryDirectory(prefix="agentiam-sim-") as tmp:
        return [run_scenario(name, options, Path(tmp), options.seed) for name in options.scenarios]


# -- output ---------------------------------------------------------------------------------


def _fmt(value: float | None, unit: str = "", digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def rows(results: Sequence[ScenarioResult]) -> list[list[str]]:
    """One row per scenario and the overall, for the table and the bench."""
    out = []
    for r in [*results, pooled(results)] if len(results) > 1 else results:
        d = r.to_dict()
        ttd, ttc, allowed = (
            d["time_to_detect_seconds"],
            d["time_to_contain_seconds"],
            d["allowed_before_containment"],
        )
        out.append(
            [
                r.scenario,
                f"{r.detected}/{r.instances}",
                _fmt(r.recall),
                _fmt(r.precision),
                f"{r.true_positives}/{r.false_positives}",
                f"{_fmt(ttd['median'], ' s')} / {_fmt(ttd['max'], ' s')}",
                f"{r.contained}/{r.instances}",
                f"{_fmt(ttc['median'], ' s')} / {_fmt(ttc['max'], ' s')}",
                f"{_fmt(allowed['median'], '', 0)} / {_fmt(allowed['max'], '', 0)}",
            ]
        )
    return out


HEADER = [
    "scenario",
    "detected",
    "recall",
    "precision",
    "alerts TP/FP",
    "time to detect (median / max)",
    "contained",
    "time to contain (median / max)",
    "allowed before containment (median / max)",
]


def report(runs: Sequence[ScenarioRun], options: Options) -> dict[str, Any]:
    results = [r.result for r in runs]
    return {
        "options": {
            "scenarios": list(options.scenarios),
            "instances": options.instances,
            "seed": options.seed,
            "warmup_hours": options.warmup_hours,
            "benign_per_kind": options.benign_per_kind,
            "playbooks_file": _playbooks(options),
            "detection_file": options.detection_file,
        },
        "scenarios": [
            {
                **r.result.to_dict(),
                "trail_events": r.events,
                "warmup_calls": r.warmup_calls,
                "benign_calls_during_attacks": r.benign_calls,
                "seconds": round(r.seconds, 1),
            }
            for r in runs
        ],
        "overall": pooled(results).to_dict(),
        "failures": failures(results),
    }


def simulate(
    scenario: Annotated[
        list[str] | None,
        typer.Option("--scenario", help=f"Run only these ({', '.join(SCENARIOS)})."),
    ] = None,
    instances: Annotated[
        int, typer.Option(min=1, max=200, help="Attack instances per scenario.")
    ] = 20,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 7,
    quick: Annotated[
        bool, typer.Option("--quick", help="A short run: 5 instances, fewer benign agents.")
    ] = False,
    playbooks: Annotated[
        Path | None,
        typer.Option("--playbooks", help="Playbook file (default examples/playbooks.yaml)."),
    ] = None,
    detection: Annotated[
        Path | None, typer.Option("--detection", help="Detection settings file.")
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Exit 1 when a target of issue 8 is missed.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Run attack scenarios among benign agents through a real, in-process control
    plane and report precision, recall, time to detect and to contain per scenario."""
    console = Console(stderr=True)
    common: dict[str, Any] = {
        "scenarios": tuple(scenario) if scenario else tuple(SCENARIOS),
        "seed": seed,
        "playbooks_file": str(playbooks) if playbooks else None,
        "detection_file": str(detection) if detection else None,
        "progress": (lambda m: None) if as_json else (lambda m: console.print(f"[dim]{m}[/dim]")),
    }
    options = (
        Options.quick(**common, instances=min(instances, 5))
        if quick
        else Options(**common, instances=instances)
    )
    runs = run(options)
    data = report(runs, options)
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    else:
        table = Table(title="Detection evaluation (agentiam simulate)")
        for col in HEADER:
            table.add_column(col, justify="left" if col == "scenario" else "right")
        for row in rows([r.result for r in runs]):
            table.add_row(*row)
        Console().print(table)
        for line in data["failures"]:
            console.print(f"[red]target missed:[/red] {line}")
    if check and data["failures"]:
        raise typer.Exit(1)
