"""In-process policy decisions: AgentIAM against plain cedarpy and pycasbin.

For 10, 1,000 and 10,000 policies over 1,000 agents, the same requests are decided by:

* ``AgentIAM``  -- ``Authorizer.decide`` (``agentiam.core.policy``): request checks, the
  scope slice (only policies whose principal/action/resource scope can match), the
  context built for what the slice reads, Cedar on the slice, fail-closed error
  handling, the decision record. Everything is inside the timed call.
* ``cedarpy``   -- plain ``cedarpy.is_authorized(request, policy_set, entities)`` on the
  whole set: ``PolicySet.from_str`` of all the text, parsed once, and the *same*
  ``cedarpy.Entities`` handle. Its context is the full context ``build_context`` makes
  for the same request, time and risk score, built before timing (so only Cedar's
  evaluation is timed: the comparison favours the peer).
* ``pycasbin``  -- ``casbin.Enforcer.enforce(sub, act, obj, ctx)`` with the ABAC model
  below and one policy row per Cedar policy; request objects built before timing.

Workload (seeded, identical for the three engines): 1,000 active agents in 20 teams
(label ``team``) and 2 environments; 200 tools in 10 MCP servers, 10 APIs with 5
endpoints each, 30 data sets; resources carry ``classification``, ``environment``
and (tools) ``destructive``. Every policy set has the same 4 global forbids and 6
environment-wide grants; the rest are team grants (``principal in
AgentGroup::"team=…"``, ~10%) and per-agent grants (``principal == Agent::"…"``),
each on a tool, an MCP server, an API, an endpoint or a data set, about 30% of them
with a condition on the context (``context.args.amount < 1000``,
``context.risk_score < 70``, business hours). Requests: a random agent; 90% of the
time an action and resource one of its grants names (a tool of a granted server, an
endpoint of a granted API, a member of a granted action group), otherwise any
resource; tool arguments, risk score and the hour of day vary per request (the
Authorizer's clock is set to the request's time before the timer starts).

The pycasbin model (``CASBIN_MODEL``): requests carry objects, policies are rows
``sub, act, obj, cond, eft``::

    sub: Agent::<id> | AgentGroup::team=<t> | Environment::<env> | *
    act: <action> | read_actions | write_actions | *
    obj: <Type>::<id> (the resource, or its parent server or API) | is:Tool | *
    cond: none | one of the named conditions, spelled out in the matcher
    eft: allow | deny, with "some allow and no deny" (Cedar's rule)

The matcher has no ``eval()``, so casbin parses it once per ``enforce`` call rather
than once per row. It is equivalent to the
Cedar policies *for this workload*: agents have one team and one environment,
resources at most one parent, the request's actions (invoke_tool, read, GET, write,
POST) belong to at most one of the two groups policies name, and every condition is
one of seven fixed shapes. casbin has no index: ``enforce`` runs the matcher over
every row (its ``FastEnforcer`` filters on exact field values, which principal/
resource groups and wildcards rule out).

Timing: ``time.perf_counter_ns`` around each decision, one thread, GC enabled;
decisions/s = decisions / time spent inside the decision calls (1 / mean latency);
p50/p99 are nearest-rank. AgentIAM warms up first on other requests from the same
distribution, 5,000 at a time, until fewer than 1% of a batch miss its slice cache or
the cache is full (its policy sets are built on first use); the report says how many
timed decisions still had to build a policy set, and their cost. The slow peers get a
time budget per row (at least ``--min-peer`` decisions), so their p99 rests on fewer
samples; the table says how many. Agreement: every request decided by two engines is
compared.

Rerun from the repository root::

    .venv/bin/python bench/policy.py                 # ~2-3 minutes on 2 cores
    .venv/bin/python bench/policy.py --decisions 50000 --peer-budget 20
    .venv/bin/python bench/policy.py --scales 10000 --profile   # cProfile of AgentIAM
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import platform
import pstats
import random
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import casbin
import cedarpy
from casbin import persist

from agentiam.core.identities.lifecycle import AgentStatus
from agentiam.core.identities.models import Agent, AutonomyLevel, RuntimeInfo
from agentiam.core.policy.authorizer import Authorizer, AuthzRequest, Decision, build_context
from agentiam.core.policy.engine import PolicyEngine, validate
from agentiam.core.policy.entities import EntitySnapshot
from agentiam.core.policy.model import EntityRef, ResourceRecord
from agentiam.core.policy.parsing import parse_policies
from agentiam.core.policy.schema import Schema

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.mdtable import markdown_table

SCALES = (10, 1_000, 10_000)
AGENTS = 1_000
TEAMS = 20
ENVIRONMENTS = ("production", "staging")
SERVERS = 10
TOOLS = 200
APIS = 10
ENDPOINTS_PER_API = 5
DATASETS = 30
TARGET_P99_US = 250.0
TARGET_SCALE = 10_000
SCHEMA_EXTENSION = (
    '{"commonTypes":{"ToolArguments":{"type":"Record","attributes":{"amount":{"type":"Long"}}}}}'
)

# The conditions policies use: Cedar text, and the same test in the casbin matcher.
CONDITIONS: dict[str, tuple[str, str]] = {
    "amount_lt_1000": (
        "context.args has amount && context.args.amount < 1000",
        "r.ctx.has_amount && r.ctx.amount < 1000",
    ),
    "risk_lt_70": ("context.risk_score < 70", "r.ctx.risk < 70"),
    "business_hours": (
        "context.time.hour >= 8 && context.time.hour < 20",
        "r.ctx.hour >= 8 && r.ctx.hour < 20",
    ),
    "restricted_risky": (
        'resource has classification && resource.classification == "restricted" '
        "&& context.risk_score > 50",
        'r.obj.classification == "restricted" && r.ctx.risk > 50',
    ),
    "prod_resource": (
        'resource has environment && resource.environment == "production"',
        'r.obj.environment == "production"',
    ),
    "risk_gt_80": ("context.risk_score > 80", "r.ctx.risk > 80"),
    "destructive_night": (
        "resource has destructive && resource.destructive && context.time.hour < 6",
        "r.obj.destructive && r.ctx.hour < 6",
    ),
}

CASBIN_MODEL = f"""
[request_definition]
r = sub, act, obj, ctx

[policy_definition]
p = sub, act, obj, cond, eft

[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))

[matchers]
m = (p.sub == r.sub.id || p.sub == r.sub.team || p.sub == r.sub.env || p.sub == "*") \
&& (p.act == r.act.name || p.act == r.act.group || p.act == "*") \
&& (p.obj == r.obj.id || p.obj == r.obj.parent || p.obj == r.obj.type || p.obj == "*") \
&& (p.cond == "none" || {" || ".join(f'p.cond == "{k}" && {v[1]}' for k, v in CONDITIONS.items())})
"""

# The request actions, the resource types they apply to, and the group policies name.
ACTIONS_FOR = {
    "Tool": ("invoke_tool",),
    "McpServer": (),
    "Api": ("read", "GET", "write", "POST"),
    "Endpoint": ("read", "GET", "write", "POST"),
    "DataSet": ("read", "write"),
}
GROUP_OF = {
    "read": "read_actions",
    "GET": "read_actions",
    "write": "write_actions",
    "POST": "write_actions",
}
MEMBERS = {"read_actions": ("read", "GET"), "write_actions": ("write", "POST")}


# --------------------------------------------------------------------------- workload


@dataclass(frozen=True, slots=True)
class Grant:
    """One policy, in a form both Cedar and casbin can be written from."""

    effect: str  # permit | forbid
    principal: tuple[str, str]  # (Agent | AgentGroup | Environment | *, id)
    action: tuple[str, str]  # (eq | in | *, name)
    resource: tuple[str, str, str]  # (eq | in | is | *, type, id)
    cond: str = "none"

    def cedar(self) -> str:
        kind, pid = self.principal
        principal = {
            "*": "principal",
            "Agent": f'principal == Agent::"{pid}"',
        }.get(kind, f'principal in {kind}::"{pid}"')
        op, name = self.action
        action = {"*": "action", "eq": f'action == Action::"{name}"'}.get(
            op, f'action in Action::"{name}"'
        )
        rop, rtype, rid = self.resource
        resource = {
            "*": "resource",
            "is": f"resource is {rtype}",
            "eq": f'resource == {rtype}::"{rid}"',
        }.get(rop, f'resource in {rtype}::"{rid}"')
        text = f"{self.effect}({principal}, {action}, {resource})"
        if self.cond != "none":
            text += f" when {{ {CONDITIONS[self.cond][0]} }}"
        return text + ";"

    def casbin_row(self) -> list[str]:
        kind, pid = self.principal
        sub = "*" if kind == "*" else f"{kind}::{pid}"
        act = "*" if self.action[0] == "*" else self.action[1]
        rop, rtype, rid = self.resource
        obj = {"*": "*", "is": f"is:{rtype}"}.get(rop, f"{rtype}::{rid}")
        return [sub, act, obj, self.cond, "allow" if self.effect == "permit" else "deny"]


FORBIDS = (
    Grant("forbid", ("*", ""), ("*", ""), ("is", "Tool", ""), "restricted_risky"),
    Grant("forbid", ("Environment", "staging"), ("*", ""), ("*", "", ""), "prod_resource"),
    Grant("forbid", ("*", ""), ("in", "write_actions"), ("*", "", ""), "risk_gt_80"),
    Grant("forbid", ("*", ""), ("eq", "invoke_tool"), ("*", "", ""), "destructive_night"),
)


@dataclass(slots=True)
class World:
    agents: list[Agent]
    team_of: dict[str, str]
    env_of: dict[str, str]
    resources: list[ResourceRecord]
    by_ref: dict[EntityRef, ResourceRecord]
    tools_of: dict[str, list[str]]  # server id -> tool ids
    endpoints_of: dict[str, list[str]]  # api id -> endpoint ids
    ids: dict[str, list[str]] = field(default_factory=dict)  # type -> ids


def build_world(rng: random.Random) -> World:
    created = datetime(2025, 1, 1, tzinfo=UTC)
    agents: list[Agent] = []
    team_of: dict[str, str] = {}
    env_of: dict[str, str] = {}
    for i in range(AGENTS):
        agent_id = f"agt_bench{i:04d}"
        team = f"team-{i % TEAMS:02d}"
        env = ENVIRONMENTS[(i // TEAMS) % 2]
        team_of[agent_id], env_of[agent_id] = team, env
        agents.append(
            Agent(
                id=agent_id,
                name=f"agent-{i}",
                owners=("hum_owner",),
                purpose="benchmark",
                environment=env,
                autonomy=rng.choice(list(AutonomyLevel)),
                runtime=RuntimeInfo(framework="langgraph", model="gpt-4o"),
                labels={"team": team, "tier": rng.choice(("gold", "silver"))},
                status=AgentStatus.ACTIVE,
                next_access_review=date(2026, 1, 1),
                created_at=created,
                updated_at=created,
            )
        )
    classifications = ("public", "internal", "internal", "confidential", "restricted")
    resources: list[ResourceRecord] = []
    tools_of: dict[str, list[str]] = {}
    endpoints_of: dict[str, list[str]] = {}

    def attrs() -> dict[str, Any]:
        return {
            "classification": rng.choice(classifications),
            "environment": rng.choice(ENVIRONMENTS),
        }

    for s in range(SERVERS):
        server = f"mcp-{s:02d}"
        resources.append(ResourceRecord("McpServer", server, {"name": server}))
        tools_of[server] = []
    for t in range(TOOLS):
        server = f"mcp-{t % SERVERS:02d}"
        tool = f"{server}.tool-{t:03d}"
        tools_of[server].append(tool)
        resources.append(
            ResourceRecord(
                "Tool",
                tool,
                {**attrs(), "destructive": rng.random() < 0.2},
                parents=(EntityRef("McpServer", server),),
            )
        )
    for a in range(APIS):
        api = f"api-{a:02d}"
        resources.append(ResourceRecord("Api", api, {**attrs(), "host": f"{api}.example"}))
        endpoints_of[api] = []
        for e in range(ENDPOINTS_PER_API):
            endpoint = f"{api}.ep-{e}"
            endpoints_of[api].append(endpoint)
            resources.append(
                ResourceRecord("Endpoint", endpoint, attrs(), parents=(EntityRef("Api", api),))
            )
    for d in range(DATASETS):
        resources.append(ResourceRecord("DataSet", f"ds-{d:02d}", attrs()))
    ids: dict[str, list[str]] = {}
    for r in resources:
        ids.setdefault(r.type, []).append(r.id)
    return World(
        agents,
        team_of,
        env_of,
        resources,
        {r.ref: r for r in resources},
        tools_of,
        endpoints_of,
        ids,
    )


def random_grant(rng: random.Random, world: World, principal: tuple[str, str]) -> Grant:
    """A permit for ``principal`` on one resource, server, API or data set."""
    broad = principal[0] != "Agent"
    roll = rng.random()
    if roll < 0.5:
        if broad and rng.random() < 0.6:
            resource = ("in", "McpServer", rng.choice(world.ids["McpServer"]))
        else:
            resource = ("eq", "Tool", rng.choice(world.ids["Tool"]))
        action = ("eq", "invoke_tool")
        conds = ("amount_lt_1000", "risk_lt_70", "business_hours")
    elif roll < 0.65:
        resource = ("in", "Api", rng.choice(world.ids["Api"]))
        action = ("in", "read_actions")
        conds = ("risk_lt_70", "business_hours")
    elif roll < 0.75:
        resource = ("eq", "Endpoint", rng.choice(world.ids["Endpoint"]))
        action = rng.choice((("eq", "POST"), ("in", "write_actions"), ("eq", "GET")))
        conds = ("risk_lt_70", "business_hours")
    else:
        resource = ("eq", "DataSet", rng.choice(world.ids["DataSet"]))
        action = rng.choice((("eq", "read"), ("eq", "read"), ("in", "write_actions")))
        conds = ("risk_lt_70", "business_hours")
    cond = rng.choice(conds) if rng.random() < 0.3 else "none"
    return Grant("permit", principal, action, resource, cond)


def build_policies(rng: random.Random, world: World, total: int) -> list[Grant]:
    """The 4 forbids, 6 environment grants, then ~10% team and ~90% agent grants."""
    grants = list(FORBIDS)
    for k in range(6):
        env = ENVIRONMENTS[k % 2]
        grants.append(random_grant(rng, world, ("Environment", env)))
    grants = grants[:total]
    rest = total - len(grants)
    teams = rest // 10
    for k in range(teams):
        grants.append(random_grant(rng, world, ("AgentGroup", f"team=team-{k % TEAMS:02d}")))
    agents = [a.id for a in world.agents]
    for k in range(rest - teams):
        grants.append(random_grant(rng, world, ("Agent", agents[k % AGENTS])))
    return grants


@dataclass(frozen=True, slots=True)
class Request:
    agent: str
    action: str
    resource: EntityRef
    amount: int | None
    risk: int
    now: datetime

    def authz(self) -> AuthzRequest:
        args = {} if self.amount is None else {"amount": self.amount}
        return AuthzRequest(
            EntityRef("Agent", self.agent),
            self.action,
            self.resource,
            {"args": args, "risk_score": self.risk},
        )


def concrete(rng: random.Random, world: World, grant: Grant) -> tuple[str, EntityRef]:
    """An (action, resource) the grant's scope covers."""
    rop, rtype, rid = grant.resource
    if rop == "in" and rtype == "McpServer":
        ref = EntityRef("Tool", rng.choice(world.tools_of[rid]))
    elif rop == "in" and rtype == "Api":
        ref = EntityRef("Endpoint", rng.choice(world.endpoints_of[rid]))
        if rng.random() < 0.3:
            ref = EntityRef("Api", rid)
    else:
        ref = EntityRef(rtype, rid)
    op, name = grant.action
    if op == "in":
        choices = [a for a in MEMBERS[name] if a in ACTIONS_FOR[ref.type]]
        return rng.choice(choices), ref
    return name, ref


def build_requests(
    rng: random.Random, world: World, grants: Sequence[Grant], count: int
) -> list[Request]:
    permits: dict[tuple[str, str], list[Grant]] = {}
    for g in grants:
        if g.effect == "permit":
            permits.setdefault(g.principal, []).append(g)
    types = ("Tool", "Tool", "Api", "Endpoint", "DataSet")
    base = datetime(2025, 6, 2, tzinfo=UTC)
    out: list[Request] = []
    for _ in range(count):
        agent = rng.choice(world.agents).id
        mine = (
            permits.get(("Agent", agent), [])
            + permits.get(("AgentGroup", f"team={world.team_of[agent]}"), [])
            + permits.get(("Environment", world.env_of[agent]), [])
        )
        if mine and rng.random() < 0.9:
            action, ref = concrete(rng, world, rng.choice(mine))
        else:
            rtype = rng.choice(types)
            ref = EntityRef(rtype, rng.choice(world.ids[rtype]))
            action = rng.choice(ACTIONS_FOR[rtype])
        amount = None
        if action == "invoke_tool" and rng.random() < 0.8:
            amount = rng.choice((rng.randrange(1, 1000), rng.randrange(1, 5000)))
        risk = min(100, int(rng.expovariate(1 / 25)))
        hour = rng.choice((*range(24), *range(8, 20), *range(8, 20)))
        now = base + timedelta(hours=hour, minutes=rng.randrange(60), seconds=rng.randrange(60))
        out.append(Request(agent, action, ref, amount, risk, now))
    return out


# --------------------------------------------------------------------------- casbin


class _Obj:
    """Attribute bag for casbin requests (simpleeval reads attributes)."""

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


class RowsAdapter(persist.Adapter):  # type: ignore[misc]
    """Loads policy rows the way casbin's file adapter does (one line each)."""

    def __init__(self, rows: Sequence[Sequence[str]]) -> None:
        self.rows = rows

    def load_policy(self, model: Any) -> None:
        for row in self.rows:
            persist.load_policy_line(", ".join(["p", *row]), model)


def casbin_enforcer(grants: Sequence[Grant]) -> casbin.Enforcer:
    model = casbin.Enforcer.new_model(text=CASBIN_MODEL)
    return casbin.Enforcer(model, RowsAdapter([g.casbin_row() for g in grants]))


def casbin_request(world: World, req: Request) -> tuple[_Obj, _Obj, _Obj, _Obj]:
    record = world.by_ref[req.resource]
    parent = f"{record.parents[0].type}::{record.parents[0].id}" if record.parents else ""
    sub = _Obj(
        id=f"Agent::{req.agent}",
        team=f"AgentGroup::team={world.team_of[req.agent]}",
        env=f"Environment::{world.env_of[req.agent]}",
    )
    act = _Obj(name=req.action, group=GROUP_OF.get(req.action, ""))
    obj = _Obj(
        id=f"{req.resource.type}::{req.resource.id}",
        parent=parent,
        type=f"is:{req.resource.type}",
        classification=record.attributes.get("classification", ""),
        environment=record.attributes.get("environment", ""),
        destructive=bool(record.attributes.get("destructive", False)),
    )
    ctx = _Obj(
        has_amount=req.amount is not None,
        amount=req.amount or 0,
        risk=req.risk,
        hour=req.now.hour,
    )
    return sub, act, obj, ctx


# --------------------------------------------------------------------------- timing


@dataclass(slots=True)
class Row:
    scale: int
    engine: str
    latencies_ns: list[int]
    allowed: list[bool]
    evaluated: float
    note: str = ""

    @property
    def per_s(self) -> float:
        """Decisions per second of time spent deciding (1 / mean latency)."""
        return len(self.latencies_ns) / (sum(self.latencies_ns) / 1e9)

    def pct_us(self, pct: float) -> float:
        return percentile_us(self.latencies_ns, pct)


def percentile_us(latencies_ns: Sequence[int], pct: float) -> float:
    """Nearest-rank percentile, in microseconds."""
    ordered = sorted(latencies_ns)
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil(n * pct / 100), at least 1
    return ordered[int(rank) - 1] / 1000


def timed(inputs: Sequence[Any], decide: Callable[[Any], bool]) -> tuple[list[int], list[bool]]:
    """Decide prepared inputs one at a time; time each decide call."""
    latencies = [0] * len(inputs)
    allowed = [False] * len(inputs)
    clock = time.perf_counter_ns
    gc.collect()
    for i, item in enumerate(inputs):
        t0 = clock()
        ok = decide(item)
        latencies[i] = clock() - t0
        allowed[i] = ok
    return latencies, allowed


def peer_count(budget_s: float, minimum: int, cap: int, probe: Callable[[int], object]) -> int:
    """How many decisions of a peer fit in ``budget_s``, from a short probe."""
    t0 = time.perf_counter()
    n = 0
    while n < 5 or (time.perf_counter() - t0 < 0.3 and n < 200):
        probe(n)
        n += 1
    each = (time.perf_counter() - t0) / n
    return max(minimum, min(cap, int(budget_s / each)))


@dataclass(frozen=True, slots=True)
class _CacheStats:
    hits: int = 0
    misses: int = 0
    maxsize: int | None = None
    currsize: int = 0


_NO_CACHE = _CacheStats()


class AgentIAMRunner:
    """``Authorizer.decide`` with its clock set to each request's time (untimed), and
    the slice cache watched (untimed) to tell which decisions built a policy set."""

    def __init__(self, engine: PolicyEngine, entities: EntitySnapshot) -> None:
        self.engine = engine
        self.now = datetime(2025, 6, 2, tzinfo=UTC)
        self.authz = Authorizer(engine, entities, clock=lambda: self.now)
        # The slice cache's counters, read for the report only; if the engine has no
        # such method, misses read as 0 and the report says n/a.
        info = getattr(engine, "slice_cache_info", None)
        self.cache_known = callable(info)
        self.cache_info: Callable[[], Any] = info if callable(info) else lambda: _NO_CACHE

    def warm(self, requests: Sequence[Request]) -> int:
        """Decide untimed; return the slice-cache misses."""
        before = self.cache_info().misses
        for req in requests:
            self.now = req.now
            self.authz.decide(req.authz())
        return self.cache_info().misses - before

    def run(self, requests: Sequence[Request]) -> tuple[list[int], list[Decision], list[bool]]:
        inputs = [(req.now, req.authz()) for req in requests]
        latencies = [0] * len(inputs)
        decisions: list[Decision] = []
        missed = [False] * len(inputs)
        decide, info, clock = self.authz.decide, self.cache_info, time.perf_counter_ns
        gc.collect()
        for i, (now, request) in enumerate(inputs):
            self.now = now
            misses = info().misses
            t0 = clock()
            d = decide(request)
            latencies[i] = clock() - t0
            decisions.append(d)
            missed[i] = info().misses != misses
        return latencies, decisions, missed


@dataclass(slots=True)
class ScaleInfo:
    load_s: float = 0.0
    warmup: int = 0
    cache_size: int = 0
    missed: list[bool] = field(default_factory=list)
    aiam_latencies: list[int] = field(default_factory=list)
    cedar_errors: int = 0
    forbidden: int = 0  # AgentIAM denials by a forbid (the rest: no permit matched)
    profile: str = ""


def run_scale(
    scale: int, world: World, schema: Schema, entities: EntitySnapshot, args: argparse.Namespace
) -> tuple[list[Row], ScaleInfo]:
    rng = random.Random(args.seed * 1_000_003 + scale)
    grants = build_policies(rng, world, scale)
    text = "\n\n".join(f'@id("p{i:05d}")\n{g.cedar()}' for i, g in enumerate(grants))
    info = ScaleInfo()
    t0 = time.perf_counter()
    records = [p.record for p in parse_policies(text)]
    problems = validate(schema, records)
    if problems:
        raise SystemExit(f"generated policies do not validate: {problems[:3]}")
    engine = PolicyEngine(1, schema, records)
    engine.warm()  # as the decision point does when it loads a policy version
    info.load_s = time.perf_counter() - t0
    full_set = cedarpy.PolicySet.from_str(text)
    enforcer = casbin_enforcer(grants)
    zone = ZoneInfo("UTC")

    # AgentIAM: warm up until the slice cache stops filling (or is full), then time.
    aiam = AgentIAMRunner(engine, entities)
    chunk = 5_000
    while info.warmup < args.max_warmup:
        missed = aiam.warm(build_requests(rng, world, grants, chunk))
        info.warmup += chunk
        cache = aiam.cache_info()
        settled = missed <= chunk // 100 or cache.currsize == cache.maxsize
        if info.warmup >= args.warmup and settled:
            break
    measured = build_requests(rng, world, grants, args.decisions)
    lat, decisions, info.missed = aiam.run(measured)
    info.cache_size = aiam.cache_info().currsize if aiam.cache_known else -1
    info.aiam_latencies = lat
    forbids = {r.id for r, g in zip(records, grants, strict=True) if g.effect == "forbid"}
    info.forbidden = sum(1 for d in decisions if set(d.policies) & forbids)
    errored = [d for d in decisions if d.errors]
    if errored:
        raise SystemExit(f"AgentIAM decisions errored: {errored[0].errors}")
    rows = [
        Row(
            scale,
            "AgentIAM",
            lat,
            [d.allowed for d in decisions],
            sum(d.evaluated for d in decisions) / len(decisions),
        )
    ]
    if args.profile and scale == max(args.scales):
        profiler = cProfile.Profile()
        extra = build_requests(rng, world, grants, 5_000)
        profiler.runcall(aiam.warm, extra)
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(25)
        info.profile = out.getvalue()

    def cedar_prepare(req: Request) -> dict[str, Any]:
        context, _ = build_context(
            engine, req.authz(), now=req.now, zone=zone, risk_score=req.risk, request_rate=1
        )
        return {
            "principal": {"type": "Agent", "id": req.agent},
            "action": {"type": "Action", "id": req.action},
            "resource": {"type": req.resource.type, "id": req.resource.id},
            "context": context,
        }

    def cedar_decide(item: dict[str, Any]) -> bool:
        result = cedarpy.is_authorized(item, full_set, entities.handle)
        if result.diagnostics.errors:
            info.cedar_errors += 1
        return bool(result.allowed)

    def casbin_prepare(req: Request) -> tuple[_Obj, _Obj, _Obj, _Obj]:
        return casbin_request(world, req)

    def casbin_decide(item: tuple[_Obj, _Obj, _Obj, _Obj]) -> bool:
        return bool(enforcer.enforce(*item))

    warm = build_requests(rng, world, grants, 200)
    peers: list[tuple[str, Callable[[Request], Any], Callable[[Any], bool]]] = [
        ("cedarpy", cedar_prepare, cedar_decide),
        ("pycasbin", casbin_prepare, casbin_decide),
    ]
    for name, prepare, decide in peers:
        warm_inputs = [prepare(r) for r in warm]
        for item in warm_inputs[:20]:
            decide(item)
        n = peer_count(
            args.peer_budget,
            args.min_peer,
            len(measured),
            lambda i, d=decide, w=warm_inputs: d(w[i % len(w)]),  # type: ignore[misc]
        )
        lat, allowed = timed([prepare(r) for r in measured[:n]], decide)
        note = "" if n == len(measured) else f"{args.peer_budget:g} s budget"
        rows.append(Row(scale, name, lat, allowed, float(scale), note))
    return rows, info


# --------------------------------------------------------------------------- report


def agreement(base: Row, other: Row) -> tuple[int, int]:
    n = min(len(base.allowed), len(other.allowed))
    same = sum(a == b for a, b in zip(base.allowed[:n], other.allowed[:n], strict=True))
    return same, n


def render(rows: Sequence[Row]) -> str:
    header = [
        "policies / engine",
        "decisions timed",
        "policies evaluated",
        "p50 µs",
        "p99 µs",
        "decisions/s",
        "AgentIAM ÷ peer",
    ]
    out: list[list[str]] = []
    base: dict[int, Row] = {}
    for row in rows:
        if row.engine == "AgentIAM":
            base[row.scale] = row
            ratio = "1.00x"
        else:
            ratio = f"{base[row.scale].per_s / row.per_s:,.2f}x"
        out.append(
            [
                f"{row.scale:,} / {row.engine}",
                f"{len(row.latencies_ns):,}" + (f" ({row.note})" if row.note else ""),
                f"{row.evaluated:,.1f}" if row.engine == "AgentIAM" else f"{row.scale:,} (all)",
                f"{row.pct_us(50):,.1f}",
                f"{row.pct_us(99):,.1f}",
                f"{row.per_s:,.0f}",
                ratio,
            ]
        )
    return markdown_table(header, out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--scales",
        default=",".join(str(s) for s in SCALES),
        help="comma-separated policy counts (10,1000,10000)",
    )
    parser.add_argument(
        "--decisions", type=int, default=20_000, help="timed decisions per row (20000)"
    )
    parser.add_argument(
        "--warmup", type=int, default=5_000, help="AgentIAM warm-up decisions, at least (5000)"
    )
    parser.add_argument(
        "--max-warmup",
        type=int,
        default=100_000,
        help="AgentIAM warm-up decisions, at most: warm-up goes on, 5000 at a time, until "
        "under 1%% of a batch misses the slice cache or the cache is full (100000)",
    )
    parser.add_argument(
        "--peer-budget",
        type=float,
        default=8.0,
        help="seconds of timed decisions per peer row, at most (8)",
    )
    parser.add_argument(
        "--min-peer", type=int, default=50, help="timed decisions per peer row, at least (50)"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (1)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after timing, cProfile 5000 more AgentIAM decisions at the largest scale",
    )
    args = parser.parse_args(argv)
    try:
        args.scales = [int(s) for s in args.scales.split(",") if s.strip()]
    except ValueError:
        parser.error("--scales takes comma-separated integers")
    if not args.scales or min(args.scales) < len(FORBIDS):
        parser.error(f"--scales: each policy count must be at least {len(FORBIDS)}")
    if args.decisions < 100 or args.min_peer < 1 or args.warmup < 0:
        parser.error("--decisions must be at least 100, --min-peer at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"command: {shlex.join(sys.orig_argv)}")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"machine: nproc={cpus}, load average {load:.2f} at start, python "
        f"{platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.platform()}, cedarpy {version('cedarpy')}, pycasbin {version('pycasbin')}"
    )
    print(
        f"workload: {AGENTS:,} agents ({TEAMS} teams, {len(ENVIRONMENTS)} environments), "
        f"{TOOLS} tools in {SERVERS} MCP servers, {APIS} APIs x {ENDPOINTS_PER_API} "
        f"endpoints, {DATASETS} data sets; {args.decisions:,} timed decisions per row "
        f"(peers: at most {args.peer_budget:g} s, at least {args.min_peer}), one thread, "
        f"seed {args.seed}"
    )
    started = time.perf_counter()
    rng = random.Random(args.seed)
    world = build_world(rng)
    schema = Schema(SCHEMA_EXTENSION)
    entities = EntitySnapshot(schema, agents=world.agents, resources=world.resources)
    if len(entities.resources) != len(world.resources):  # it skips entries it rejects
        raise SystemExit("the entity snapshot left out some of the generated resources")
    print(f"entities: {entities.count:,} in one cedarpy.Entities handle, shared by both Cedars")
    print()
    rows: list[Row] = []
    profiles: list[str] = []
    for scale in args.scales:
        t0 = time.perf_counter()
        scale_rows, info = run_scale(scale, world, schema, entities, args)
        rows += scale_rows
        aiam = scale_rows[0]
        misses = sum(info.missed)
        hits = [ns for ns, m in zip(info.aiam_latencies, info.missed, strict=True) if not m]
        missed = [ns for ns, m in zip(info.aiam_latencies, info.missed, strict=True) if m]
        if info.cache_size < 0:
            cache_text = "slice cache: n/a (not inspectable)"
        else:
            cache_text = (
                f"slice cache {info.cache_size:,} policy sets; {misses:,} timed decisions "
                f"({misses / len(info.missed):.1%}) built a policy set"
                + (f", p50 of those {percentile_us(missed, 50):,.0f} µs" if missed else "")
                + f"; p99 of the others {percentile_us(hits, 99):,.1f} µs"
            )
        print(
            f"- {scale:,} policies: parsed, validated and compiled in {info.load_s:.1f} s; "
            f"{sum(aiam.allowed) / len(aiam.allowed):.0%} allowed, "
            f"{info.forbidden / len(aiam.allowed):.0%} denied by a forbid; AgentIAM warm-up "
            f"{info.warmup:,} decisions; {cache_text}; "
            f"cedarpy decisions with errors: {info.cedar_errors}; "
            f"{time.perf_counter() - t0:.0f} s"
        )
        if info.profile:
            profiles.append(info.profile)
    print()
    print(render(rows))
    print()
    print(
        "AgentIAM ÷ peer: AgentIAM's decisions/s divided by the peer's (above 1: AgentIAM "
        "is faster), same requests, same run. decisions/s = decisions / time inside the "
        "decision calls, one thread. The peers' inputs (cedarpy's context dict, casbin's "
        "request objects) are built before timing; AgentIAM's timing includes building its "
        "context. A peer row with few decisions has a p99 close to its maximum."
    )
    print()
    print("agreement on allow/deny, same requests:")
    base = {r.scale: r for r in rows if r.engine == "AgentIAM"}
    for row in rows:
        if row.engine != "AgentIAM":
            same, n = agreement(base[row.scale], row)
            print(
                f"- {row.scale:,} policies, AgentIAM vs {row.engine}: {same:,}/{n:,} "
                f"({same / n:.2%})"
            )
    target = base.get(TARGET_SCALE)
    if target is not None:
        p99 = target.pct_us(99)
        verdict = "met" if p99 <= TARGET_P99_US else "NOT met"
        print()
        print(
            f"target, AgentIAM p99 <= {TARGET_P99_US:.0f} µs at {TARGET_SCALE:,} policies: "
            f"{verdict} (p99 {p99:,.1f} µs)"
        )
    for profile in profiles:
        print()
        print(f"cProfile of 5,000 more AgentIAM decisions at {max(args.scales):,} policies:")
        print(profile)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"total {time.perf_counter() - started:.0f} s; load average {load:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
