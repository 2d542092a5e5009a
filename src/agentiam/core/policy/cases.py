"""Policy test cases: request → expected decision, run against a policy set.

``agentiam policy test CASES.yaml`` reads a file of this shape (YAML or JSON)::

    policies: policies.cedar        # optional; default: the database's current set
    schema_extension: schema.json   # optional, with ``policies``
    now: "2026-11-23T10:00:00Z"     # optional fixed time for context.time
    time_zone: Europe/Berlin        # optional (default UTC)
    agents:                         # optional, with ``policies``: the entities
      - {id: agt_1, environment: production, labels: {team: payments},
         owners: [hum_1], status: active, parent: null, autonomy: monitored}
    humans: [{id: hum_1, email: ann@example.com}]
    resources:
      - {type: Tool, id: transfer, parents: [{type: McpServer, id: bank}],
         attributes: {classification: internal}}
    cases:
      - name: the payments bot may move small amounts
        principal: {type: Agent, id: agt_1}
        action: invoke_tool
        resource: {type: Tool, id: transfer}
        context: {args: {amount: 10}}
        expect: allow                  # allow | deny
        policies: [payments-transfer]  # optional: the deciding policies

This module runs already-loaded data; reading files is the CLI's job.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from agentiam.core.identities.lifecycle import AgentStatus
from agentiam.core.identities.models import Agent, AutonomyLevel, Human, RuntimeInfo
from agentiam.core.policy.authorizer import Authorizer, AuthzRequest, Decision
from agentiam.core.policy.engine import PolicyEngine
from agentiam.core.policy.entities import EntitySnapshot
from agentiam.core.policy.model import EntityRef, ResourceRecord
from agentiam.errors import InvalidInput

__all__ = ["CaseResult", "TestCase", "load_cases", "run_cases", "snapshot_from"]

MAX_CASES = 10_000
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class TestCase:
    __test__ = False  # not a pytest class

    name: str
    request: AuthzRequest
    expect: str
    policies: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: TestCase
    decision: Decision

    @property
    def passed(self) -> bool:
        if self.decision.decision != self.case.expect:
            return False
        return self.case.policies is None or set(self.case.policies) == set(self.decision.policies)


def _ref(value: Any, where: str) -> EntityRef:
    if isinstance(value, Mapping) and set(value) == {"type", "id"}:
        return EntityRef(str(value["type"]), str(value["id"]))
    if isinstance(value, str) and "::" in value:
        try:
            return EntityRef.parse(value)
        except InvalidInput as exc:
            raise InvalidInput(f"{where}: {exc.detail}") from None
    raise InvalidInput(f'{where}: expected {{type, id}} or Type::"id"')


def load_cases(data: Mapping[str, Any]) -> list[TestCase]:
    raw = data.get("cases")
    if not isinstance(raw, list) or not raw:
        raise InvalidInput("the file has no cases")
    if len(raw) > MAX_CASES:
        raise InvalidInput(f"at most {MAX_CASES} cases per file")
    out: list[TestCase] = []
    for i, item in enumerate(raw):
        where = f"cases[{i}]"
        if not isinstance(item, Mapping):
            raise InvalidInput(f"{where}: expected a mapping")
        expect = item.get("expect")
        if expect not in ("allow", "deny"):
            raise InvalidInput(f"{where}: expect must be allow or deny")
        policies = item.get("policies")
        if policies is not None and not (
            isinstance(policies, list) and all(isinstance(p, str) for p in policies)
        ):
            raise InvalidInput(f"{where}: policies must be a list of policy ids")
        context = item.get("context") or {}
        if not isinstance(context, Mapping):
            raise InvalidInput(f"{where}: context must be a mapping")
        out.append(
            TestCase(
                name=str(item.get("name") or f"case {i + 1}"),
                request=AuthzRequest(
                    principal=_ref(item.get("principal"), f"{where}.principal"),
                    action=str(item.get("action") or ""),
                    resource=_ref(item.get("resource"), f"{where}.resource"),
                    context=dict(context),
                ),
                expect=expect,
                policies=tuple(policies) if policies is not None else None,
            )
        )
    return out


def _agents(items: Iterable[Any]) -> list[Agent]:
    out: list[Agent] = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or not isinstance(item.get("id"), str):
            raise InvalidInput(f"agents[{i}]: needs an id")
        try:
            out.append(
                Agent(
                    id=item["id"],
                    name=str(item.get("name") or item["id"]),
                    owners=tuple(item.get("owners") or ()),
                    purpose=str(item.get("purpose") or ""),
                    environment=str(item.get("environment") or "production"),
                    autonomy=AutonomyLevel(item.get("autonomy") or "approve_each"),
                    runtime=RuntimeInfo(),
                    labels={str(k): str(v) for k, v in (item.get("labels") or {}).items()},
                    status=AgentStatus(item.get("status") or "active"),
                    next_access_review=date(2099, 1, 1),
                    created_at=_EPOCH,
                    updated_at=_EPOCH,
                    parent_id=item.get("parent"),
                    expires_at=(
                        datetime.fromisoformat(item["expires_at"])
                        if item.get("expires_at")
                        else None
                    ),
                )
            )
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"agents[{i}]: {exc}") from None
    return out


def _humans(items: Iterable[Any]) -> list[Human]:
    out: list[Human] = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or not isinstance(item.get("id"), str):
            raise InvalidInput(f"humans[{i}]: needs an id")
        out.append(
            Human(
                id=item["id"],
                display_name=str(item.get("display_name") or item["id"]),
                email=str(item.get("email") or f"{item['id']}@example.invalid"),
                external_identity=None,
                created_at=_EPOCH,
                updated_at=_EPOCH,
            )
        )
    return out


def _resources(items: Iterable[Any]) -> list[ResourceRecord]:
    out: list[ResourceRecord] = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise InvalidInput(f"resources[{i}]: expected a mapping")
        ref = _ref({"type": item.get("type"), "id": item.get("id")}, f"resources[{i}]")
        out.append(
            ResourceRecord(
                type=ref.type,
                id=ref.id,
                attributes=dict(item.get("attributes") or {}),
                parents=tuple(
                    _ref(p, f"resources[{i}].parents") for p in item.get("parents") or ()
                ),
                tags={str(k): str(v) for k, v in (item.get("tags") or {}).items()},
            )
        )
    return out


def snapshot_from(engine: PolicyEngine, data: Mapping[str, Any]) -> EntitySnapshot:
    """The entities declared in a case file (agents, humans, resources)."""
    return EntitySnapshot(
        engine.schema,
        agents=_agents(data.get("agents") or ()),
        humans=_humans(data.get("humans") or ()),
        resources=_resources(data.get("resources") or ()),
    )


def run_cases(
    engine: PolicyEngine,
    entities: EntitySnapshot,
    cases: Sequence[TestCase],
    *,
    now: datetime | None = None,
    zone: str = "UTC",
) -> list[CaseResult]:
    fixed = now or datetime.now(UTC)
    authorizer = Authorizer(engine, entities, clock=lambda: fixed, zone=zone)
    # A malformed request is decided too (it is denied, with the error as its reason),
    # so a case can assert that bad input is refused.
    return [CaseResult(case, authorizer.decide(case.request)) for case in cases]
