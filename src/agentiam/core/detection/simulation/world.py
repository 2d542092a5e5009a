"""The simulated organisation: agent kinds with their workflows, the resource catalog,
the policies that permit the benign work, and the fleet of agents (pure data).

Four kinds of agent, each a first-order Markov chain over its tool calls
(:class:`Kind`): ``support`` (the CRM domain), ``finance``, ``devops`` (``ops``) and
``research`` (which also calls an external search API and hands summaries to
just-in-time sub-agents). Every resource exists in ``production`` and ``staging``
(``<environment>:<name>``), with its ``environment`` and ``domain`` attributes; external
APIs carry their ``host``. The policies are realistic rather than tight: each kind may
invoke the tools of its own domain in any environment, and every agent may read any
data set and call any registered external API. Static policy therefore lets the
lateral-movement and exfiltration attacks through; behavioural detection has to catch
them.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "END",
    "ENVIRONMENTS",
    "EXFIL_HOSTS",
    "KINDS",
    "RESOURCE",
    "SCOPES",
    "SENSITIVE_DATA",
    "AgentSpec",
    "Call",
    "Kind",
    "ResourceSpec",
    "catalog",
    "fleet",
    "policies",
]

END = "END"
START = "*start"
ENVIRONMENTS = ("production", "staging")
RESOURCE = "https://tools.example.com"  # the audience of the agents' tokens
SCOPES = ("tools:read", "tools:write")
SEARCH_HOST = "api.search.example.com"
# hosts no agent calls in its normal work: where an injected prompt sends the data
EXFIL_HOSTS = ("transfer.example.net", "paste.example.org", "files.example.io", "drop.example.com")
# data sets of a domain no agent kind works in
SENSITIVE_DATA = ("hr_payroll", "hr_employees", "legal_contracts", "security_keys_inventory")


@dataclass(frozen=True, slots=True)
class Call:
    """One action on one resource, as an enforcement point asks the PDP about it."""

    action: str
    type: str
    id: str

    @property
    def resource(self) -> str:
        return f"{self.type}::{self.id}"


@dataclass(frozen=True, slots=True)
class Step:
    """A workflow state: ``action`` on a ``type`` named ``name`` (in the agent's own
    environment, unless ``external``: then ``name`` is the full id)."""

    action: str
    type: str
    name: str
    external: bool = False

    def call(self, environment: str) -> Call:
        return Call(
            self.action, self.type, self.name if self.external else f"{environment}:{self.name}"
        )


@dataclass(frozen=True, slots=True)
class Kind:
    """An agent kind: its domain, its workflow (``state -> [(next, weight)]``, from
    ``*start`` to ``END``), the states' calls, a rarely used but permitted tool of its
    own domain (``rare``: what slow misuse uses), and whether it spawns sub-agents."""

    name: str
    domain: str
    purpose: str
    steps: Mapping[str, Step]
    chain: Mapping[str, tuple[tuple[str, float], ...]]
    rare: tuple[str, ...]
    spawns: bool = False

    def next(self, state: str, rng: random.Random) -> str:
        options = self.chain[state]
        return rng.choices([o for o, _ in options], [w for _, w in options])[0]

    def tools(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.steps.values() if s.type == "Tool" and not s.external)


def _tool(name: str) -> Step:
    return Step("invoke_tool", "Tool", name)


KINDS: Mapping[str, Kind] = {
    "support": Kind(
        "support",
        "crm",
        "answers customer tickets",
        {
            "ticket_read": _tool("ticket_read"),
            "kb_search": _tool("kb_search"),
            "crm_lookup": _tool("crm_lookup"),
            "customers": Step("read", "DataSet", "crm_customers"),
            "ticket_update": _tool("ticket_update"),
            "email_draft": _tool("email_draft"),
        },
        {
            START: (("ticket_read", 0.7), ("kb_search", 0.3)),
            "ticket_read": (("crm_lookup", 0.5), ("kb_search", 0.3), ("ticket_update", 0.2)),
            "crm_lookup": (
                ("customers", 0.4),
                ("ticket_update", 0.3),
                ("email_draft", 0.2),
                (END, 0.1),
            ),
            "customers": (("ticket_update", 0.6), ("email_draft", 0.3), (END, 0.1)),
            "kb_search": (
                ("ticket_update", 0.4),
                ("email_draft", 0.3),
                ("kb_search", 0.2),
                (END, 0.1),
            ),
            "ticket_update": ((END, 0.7), ("email_draft", 0.3)),
            "email_draft": ((END, 1.0),),
        },
        ("crm_bulk_export",),
    ),
    "finance": Kind(
        "finance",
        "finance",
        "pays supplier invoices",
        {
            "invoice_list": _tool("invoice_list"),
            "invoice_read": _tool("invoice_read"),
            "vendor_lookup": _tool("vendor_lookup"),
            "ledger": Step("read", "DataSet", "finance_ledger"),
            "payment_prepare": _tool("payment_prepare"),
            "payment_submit": _tool("payment_submit"),
        },
        {
            START: (("invoice_list", 0.8), ("ledger", 0.2)),
            "invoice_list": (("invoice_read", 0.8), (END, 0.2)),
            "invoice_read": (("vendor_lookup", 0.4), ("ledger", 0.3), ("payment_prepare", 0.3)),
            "vendor_lookup": (("payment_prepare", 0.6), ("invoice_read", 0.2), (END, 0.2)),
            "ledger": (("payment_prepare", 0.4), ("invoice_list", 0.3), (END, 0.3)),
            "payment_prepare": (("payment_submit", 0.8), (END, 0.2)),
            "payment_submit": ((END, 0.8), ("invoice_list", 0.2)),
        },
        ("vendor_bank_change",),
    ),
    "devops": Kind(
        "devops",
        "ops",
        "watches deployments and handles incidents",
        {
            "metrics_query": _tool("metrics_query"),
            "logs_search": _tool("logs_search"),
            "deploy_status": _tool("deploy_status"),
            "runbook": Step("read", "DataSet", "ops_runbooks"),
            "deploy_rollout": _tool("deploy_rollout"),
            "incident_note": _tool("incident_note"),
        },
        {
            START: (("metrics_query", 0.6), ("deploy_status", 0.4)),
            "metrics_query": (
                ("logs_search", 0.5),
                ("metrics_query", 0.2),
                ("deploy_status", 0.2),
                (END, 0.1),
            ),
            "logs_search": (
                ("runbook", 0.3),
                ("incident_note", 0.3),
                ("logs_search", 0.2),
                (END, 0.2),
            ),
            "deploy_status": (("deploy_rollout", 0.3), ("metrics_query", 0.4), (END, 0.3)),
            "runbook": (("incident_note", 0.6), ("deploy_rollout", 0.2), (END, 0.2)),
            "deploy_rollout": (("deploy_status", 0.7), (END, 0.3)),
            "incident_note": ((END, 1.0),),
        },
        ("secrets_read",),
    ),
    "research": Kind(
        "research",
        "research",
        "researches markets and writes briefs",
        {
            "web_search": Step("GET", "Endpoint", f"search:{SEARCH_HOST}/query", external=True),
            "paper_read": Step("read", "DataSet", "research_papers"),
            "summarize": _tool("summarize"),
            "notes_write": _tool("notes_write"),
        },
        {
            START: (("web_search", 0.8), ("paper_read", 0.2)),
            "web_search": (("web_search", 0.3), ("paper_read", 0.3), ("summarize", 0.4)),
            "paper_read": (("summarize", 0.6), ("paper_read", 0.2), ("web_search", 0.2)),
            "summarize": (("notes_write", 0.7), (END, 0.3)),
            "notes_write": ((END, 1.0),),
        },
        ("notes_export",),
        spawns=True,
    ),
}


@dataclass(frozen=True, slots=True)
class ResourceSpec:
    type: str
    id: str
    attributes: Mapping[str, Any] = field(default_factory=dict)
    parents: tuple[tuple[str, str], ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)


def _api(host: str, path: str, method: str) -> list[ResourceSpec]:
    api = host.split(".")[0] if host != SEARCH_HOST else "search"
    return [
        ResourceSpec("Api", api, {"name": host, "host": host}, tags={"host": host}),
        ResourceSpec(
            "Endpoint",
            f"{api}:{host}/{path}",
            {"name": f"{method} /{path}", "method": method, "path": f"/{path}"},
            (("Api", api),),
            {"host": host},
        ),
    ]


def catalog() -> list[ResourceSpec]:
    """Every resource, in both environments, with its environment and domain."""
    out: list[ResourceSpec] = []
    for env in ENVIRONMENTS:
        for kind in KINDS.values():
            names = {(s.type, s.name) for s in kind.steps.values() if not s.external}
            names |= {("Tool", r) for r in kind.rare}
            for type_, name in sorted(names):
                out.append(
                    ResourceSpec(
                        type_, f"{env}:{name}", {"environment": env, "domain": kind.domain}
                    )
                )
        for name in SENSITIVE_DATA:
            domain = name.split("_")[0]
            out.append(
                ResourceSpec(
                    "DataSet",
                    f"{env}:{name}",
                    {"environment": env, "domain": domain, "sensitive": True},
                )
            )
    out += _api(SEARCH_HOST, "query", "GET")
    for host in EXFIL_HOSTS:
        out += _api(host, "upload", "POST")
    return out


def policies() -> dict[str, str]:
    """The policy set (id -> Cedar text) that permits the benign work, and more."""
    out = {
        f"{k.name}-tools": (
            f'permit (principal in AgentGroup::"kind={k.name}", action == Action::"invoke_tool",'
            f' resource is Tool) when {{ resource has domain && resource.domain == "{k.domain}" }};'
        )
        for k in KINDS.values()
    }
    out["read-data"] = 'permit (principal is Agent, action == Action::"read", resource is DataSet);'
    out["external-apis"] = (
        "permit (principal is Agent, "
        'action in [Action::"GET", Action::"POST"], resource is Endpoint);'
    )
    return out


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """One agent to register: ``name`` is unique in the run, ``owner`` an index into
    the owners, ``declared`` whether its owner declares its expectations."""

    name: str
    kind: str
    environment: str
    owner: int
    declared: bool
    session_gap: float  # mean seconds between its sessions in the warm-up history
    role: str = "benign"  # or "candidate": may be picked as an attacker

    def labels(self) -> dict[str, str]:
        return {"kind": self.kind, "team": f"team-{self.owner}"}

    def expectations(self) -> dict[str, Any] | None:
        """What its owner declares: the calls of its workflow, its environment, its
        domain and hosts, a rate ceiling; None for an agent declaring nothing."""
        if not self.declared:
            return None
        kind = KINDS[self.kind]
        actions = sorted(
            {
                f"{s.action}@{c.resource}"
                for s in kind.steps.values()
                for c in [s.call(self.environment)]
            }
        )
        hosts = sorted({SEARCH_HOST} if self.kind == "research" else set())
        out: dict[str, Any] = {
            "actions": actions,
            "environments": [self.environment],
            "data_domains": [kind.domain],
            "max_calls_per_minute": 120,
        }
        if hosts:
            out["hosts"] = hosts
        return out


OWNERS = 5


def fleet(
    rng: random.Random, *, benign_per_kind: int, candidates: int, candidate_env: str | None
) -> list[AgentSpec]:
    """``benign_per_kind`` agents of each kind (one in three in staging, half of them
    declaring expectations) and ``candidates`` agents the attacks are run on, kinds
    and declarations alternating; ``candidate_env`` puts every candidate in that
    environment (lateral movement needs staging agents)."""
    out: list[AgentSpec] = []
    kinds = list(KINDS)
    for kind in kinds:
        for i in range(benign_per_kind):
            out.append(
                AgentSpec(
                    name=f"{kind}-{i}",
                    kind=kind,
                    environment="staging" if i % 3 == 2 else "production",
                    owner=rng.randrange(OWNERS),
                    declared=i % 2 == 1,
                    session_gap=rng.uniform(150, 400),
                )
            )
    for i in range(candidates):
        kind = kinds[i % len(kinds)]
        out.append(
            AgentSpec(
                name=f"{kind}-c{i}",
                kind=kind,
                environment=candidate_env or ("staging" if i % 5 == 4 else "production"),
                owner=rng.randrange(OWNERS),
                declared=(i // len(kinds)) % 2 == 1,
                session_gap=rng.uniform(150, 400),
                role="candidate",
            )
        )
    return out
