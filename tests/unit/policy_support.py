"""Builders shared by the policy decision tests: registry records, catalog entries,
compiled policy sets and authorizers, all in memory (no database)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from agentiam.core.identities.lifecycle import AgentStatus
from agentiam.core.identities.models import Agent, AutonomyLevel, Human, RuntimeInfo
from agentiam.core.policy.authorizer import Authorizer, AuthzRequest, Decision
from agentiam.core.policy.engine import PolicyEngine
from agentiam.core.policy.entities import EntitySnapshot
from agentiam.core.policy.model import EntityRef, Mode, PolicyRecord, ResourceRecord
from agentiam.core.policy.parsing import parse_policies
from agentiam.core.policy.schema import Schema

# Monday 23 November 2026, 12:00 UTC (13:00 in Berlin).
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

# Tool arguments that the tests declare in the schema.
ARGS_EXTENSION = json.dumps(
    {
        "commonTypes": {
            "ToolArguments": {
                "type": "Record",
                "attributes": {
                    "amount": {"type": "Long"},
                    "price": {"type": "Extension", "name": "decimal"},
                    "path": {"type": "String"},
                    "recipients": {"type": "Set", "element": {"type": "String"}},
                    "dry": {"type": "Boolean"},
                    "owner": {"type": "Entity", "name": "Human"},
                    "options": {
                        "type": "Record",
                        "attributes": {
                            "mode": {"type": "String"},
                            "depth": {"type": "Long", "required": False},
                        },
                    },
                },
            }
        }
    }
)


def agent(
    agent_id: str = "agt_1",
    *,
    environment: str = "prod",
    labels: Mapping[str, str] | None = None,
    parent: str | None = None,
    status: AgentStatus = AgentStatus.ACTIVE,
    expires_at: datetime | None = None,
    framework: str | None = None,
    model: str | None = None,
    owners: tuple[str, ...] = ("hum_1",),
) -> Agent:
    return Agent(
        id=agent_id,
        name=f"agent {agent_id}",
        owners=owners,
        purpose="tests",
        environment=environment,
        autonomy=AutonomyLevel.MONITORED,
        runtime=RuntimeInfo(framework=framework, model=model),
        labels=dict(labels or {}),
        status=status,
        next_access_review=date(2027, 1, 1),
        created_at=NOW,
        updated_at=NOW,
        parent_id=parent,
        expires_at=expires_at,
    )


def human(human_id: str = "hum_1") -> Human:
    return Human(
        id=human_id,
        display_name=f"Human {human_id}",
        email=f"{human_id}@example.com",
        external_identity=None,
        created_at=NOW,
        updated_at=NOW,
    )


def ref(entity_type: str, entity_id: str) -> EntityRef:
    return EntityRef(entity_type, entity_id)


def resource(
    entity_type: str,
    entity_id: str,
    *,
    parents: Iterable[EntityRef] = (),
    tags: Mapping[str, str] | None = None,
    **attributes: Any,
) -> ResourceRecord:
    return ResourceRecord(
        type=entity_type,
        id=entity_id,
        attributes=attributes,
        parents=tuple(parents),
        tags=dict(tags or {}),
    )


def records(text: str, *, default_mode: Mode = Mode.ENFORCE) -> list[PolicyRecord]:
    return [p.record for p in parse_policies(text, default_mode=default_mode)]


def engine(text: str, schema: Schema | None = None, *, version: int = 1) -> PolicyEngine:
    return PolicyEngine(version, schema or Schema(), records(text))


@dataclass
class Clock:
    """A clock the test moves by hand."""

    current: datetime = NOW

    def __call__(self) -> datetime:
        return self.current


def authorizer(
    text: str,
    *,
    schema: Schema | None = None,
    agents: Iterable[Agent] = (),
    humans: Iterable[Human] = (),
    resources: Iterable[ResourceRecord] = (),
    clock: Callable[[], datetime] | None = None,
    zone: str = "UTC",
    risk: Callable[[EntityRef], int] | None = None,
) -> Authorizer:
    schema = schema or Schema()
    snapshot = EntitySnapshot(
        schema, agents=agents, humans=humans, resources=resources, fingerprint="test"
    )
    return Authorizer(
        engine(text, schema),
        snapshot,
        clock=clock or Clock(),
        zone=zone,
        risk=risk,
    )


def request(
    principal: EntityRef | str = "agt_1",
    action: str = "invoke_tool",
    target: EntityRef | str = "tool_1",
    context: Mapping[str, Any] | None = None,
) -> AuthzRequest:
    if isinstance(principal, str):
        principal = EntityRef("Agent", principal)
    if isinstance(target, str):
        target = EntityRef("Tool", target)
    return AuthzRequest(principal, action, target, dict(context or {}))


def decide(az: Authorizer, *args: Any, **kwargs: Any) -> Decision:
    return az.decide(request(*args, **kwargs))


_CHILD = """
import sys
from agentiam.core.policy.parsing import parse_policies
from agentiam.errors import InvalidInput
try:
    parse_policies(sys.stdin.read())
except InvalidInput as exc:
    print("InvalidInput:", exc.detail)
except BaseException as exc:
    print("unexpected:", type(exc).__name__)
else:
    print("accepted")
"""


@dataclass(frozen=True)
class ChildResult:
    returncode: int | None  # None: killed after the timeout
    output: str


def parse_in_child(text: str, *, timeout: float = 20.0) -> ChildResult:
    """Run ``parse_policies(text)`` in a fresh interpreter, so a native crash (stack
    overflow in cedarpy) shows as a return code instead of killing the test run."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD],
            input=text,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return ChildResult(None, "timed out")
    return ChildResult(done.returncode, done.stdout.strip())
