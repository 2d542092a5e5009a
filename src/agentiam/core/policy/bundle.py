"""The policy bundle: everything a remote enforcement point needs to decide calls
exactly as the control plane does, as one versioned JSON document.

A gateway verifies tokens locally and must also *decide* locally, with the same Cedar
policy set and the same entity data as the control plane's decision point
(:class:`~agentiam.services.decisions.DecisionPoint`). The control plane serialises
its loaded state with :func:`bundle_dict`; the gateway rebuilds a
:class:`~agentiam.core.policy.engine.PolicyEngine` and an
:class:`~agentiam.core.policy.entities.EntitySnapshot` with :func:`load_bundle` and
hands them to its own :class:`~agentiam.core.policy.authorizer.Authorizer`. Same
inputs, same pure function: same decisions (``tests/unit/test_policy_bundle.py``
checks this across allow, deny, dry-run and erroring forbids).

Shape (``format`` names the version; a reader refuses any other)::

    {"format": "agentiam.policy-bundle/1",
     "policy_version": 12, "fingerprint": "…", "time_zone": "UTC",
     "schema_extension": "<the operator's extension as stored, or ''>",
     "policies":  [{"id", "text", "mode", "description", "template"}],
     "agents":    [{"id", "name", "owners", "sponsors", "purpose", "environment",
                    "autonomy", "status", "labels", "parent_id", "expires_at",
                    "runtime": {"framework", "model"}}],
     "humans":    [{"id", "email", "display_name"}],
     "resources": [{"type", "id", "attributes", "parents": [{"type", "id"}], "tags"}],
     "throttles": [{"agent_id", "per_minute", "until"}]}   # only when any is in force

``throttles`` are the temporary per-agent caps of the ``throttle`` response action
(docs/response.md): :func:`throttles_of` reads them for the gateway's rate limiter
(:meth:`~agentiam.core.enforcement.ratelimit.RateLimiter.set_throttles`). The member
is left out when there are none, so a bundle without throttles is unchanged.

Agents and humans carry only what their Cedar entities and the principal checks use
(status and TTL): no keys, scopes, audiences, IdP links or anything secret.

:func:`load_bundle` is strict: every member is type- and bound-checked, unknown
members are refused, and the first problem raises :class:`BundleError` (a
``ValueError``) naming the member, e.g. ``agents[3].status``. :func:`bundle_etag` is
the bundle's version: a digest of the policy version, the entity fingerprint, the
schema extension and the time zone (and the throttles, when any), stable across
processes and replicas.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agentiam.core.enforcement.ratelimit import MAX_THROTTLES, Throttle
from agentiam.core.identities.lifecycle import AgentStatus
from agentiam.core.identities.models import Agent, AutonomyLevel, Human, RuntimeInfo
from agentiam.core.normalize import plain
from agentiam.core.policy.engine import PolicyEngine
from agentiam.core.policy.entities import (
    MAX_PARENTS,
    MAX_TAGS,
    EntitySnapshot,
    check_resource,
    cyclic,
)
from agentiam.core.policy.model import (
    EntityRef,
    Mode,
    PolicyRecord,
    ResourceRecord,
    check_policy_id,
)
from agentiam.core.policy.parsing import MAX_DESCRIPTION, MAX_POLICY_BYTES
from agentiam.core.policy.schema import MAX_EXTENSION_BYTES, load_schema
from agentiam.errors import InvalidInput

__all__ = [
    "BUNDLE_FORMAT",
    "MAX_AGENTS",
    "MAX_HUMANS",
    "MAX_POLICIES",
    "MAX_RESOURCES",
    "BundleError",
    "bundle_dict",
    "bundle_etag",
    "load_bundle",
    "risk_of",
    "throttles_of",
    "time_zone_of",
]

BUNDLE_FORMAT = "agentiam.policy-bundle/1"
MAX_POLICIES = 50_000
MAX_AGENTS = 1_000_000
MAX_HUMANS = 1_000_000
MAX_RESOURCES = 1_000_000
_MAX_ID = 512  # as the authorizer bounds entity ids in requests
_MAX_TEXT = 4096
_MAX_LABELS = 256
_MAX_PEOPLE = 256  # owners or sponsors of one agent
_MAX_FINGERPRINT = 256
_MAX_TYPE = 128
# Bundle members are fixed; the agent's Cedar entity reads exactly these.
_TOP = frozenset(
    {
        "format",
        "policy_version",
        "fingerprint",
        "time_zone",
        "schema_extension",
        "policies",
        "agents",
        "humans",
        "resources",
    }
)
_OPTIONAL_TOP = frozenset({"throttles", "risk"})
_THROTTLE = frozenset({"agent_id", "per_minute", "until"})
_RISK = frozenset({"agent_id", "score"})
MAX_RISK_SCORES = 100_000
_POLICY = frozenset({"id", "text", "mode", "description", "template"})
_AGENT = frozenset(
    {
        "id",
        "name",
        "owners",
        "sponsors",
        "purpose",
        "environment",
        "autonomy",
        "status",
        "labels",
        "parent_id",
        "expires_at",
        "runtime",
    }
)
_RUNTIME = frozenset({"framework", "model"})
_HUMAN = frozenset({"id", "email", "display_name"})
_RESOURCE = frozenset({"type", "id", "attributes", "parents", "tags"})
_REF = frozenset({"type", "id"})
# Registry fields the bundle does not carry are filled with fixed values: no entity
# or principal check reads them.
_PLACEHOLDER_TIME = datetime(1970, 1, 1, tzinfo=UTC)
_PLACEHOLDER_REVIEW = date(9999, 12, 31)
_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$")


class BundleError(ValueError):
    """A bundle that cannot be loaded; the message names the offending member."""


# -- writing ----------------------------------------------------------------------------


def _time_text(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _agent_dict(agent: Agent) -> dict[str, Any]:
    return {
        "id": agent.id,
        "name": agent.name,
        "owners": list(agent.owners),
        "sponsors": list(agent.sponsors),
        "purpose": agent.purpose,
        "environment": agent.environment,
        "autonomy": agent.autonomy.value,
        "status": agent.status.value,
        "labels": dict(sorted(agent.labels.items())),
        "parent_id": agent.parent_id,
        "expires_at": _time_text(agent.expires_at) if agent.expires_at else None,
        "runtime": {"framework": agent.runtime.framework, "model": agent.runtime.model},
    }


def _human_dict(human: Human) -> dict[str, Any]:
    return {"id": human.id, "email": human.email, "display_name": human.display_name}


def _resource_dict(record: ResourceRecord) -> dict[str, Any]:
    return {
        "type": record.type,
        "id": record.id,
        "attributes": plain(record.attributes),
        "parents": [p.to_json() for p in record.parents],
        "tags": dict(sorted(record.tags.items())),
    }


def _policy_dict(record: PolicyRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "text": record.text,
        "mode": record.mode.value,
        "description": record.description,
        "template": record.template,
    }


def bundle_dict(
    engine_version: int,
    schema_extension: str,
    records: Iterable[PolicyRecord],
    agents: Iterable[Agent],
    humans: Iterable[Human],
    resources: Iterable[ResourceRecord],
    fingerprint: str,
    *,
    time_zone: str = "UTC",
    throttles: Iterable[Throttle] = (),
    risk: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The bundle of one policy version and one entity snapshot (JSON types only).

    Policies keep their order (the engine's, which fixes the order of a decision's
    ``policies`` and reasons); entities are sorted so equal inputs give equal bytes.
    """
    caps = _throttle_list(throttles)
    out = {
        "format": BUNDLE_FORMAT,
        "policy_version": engine_version,
        "fingerprint": fingerprint,
        "time_zone": time_zone,
        "schema_extension": schema_extension,
        "policies": [_policy_dict(r) for r in records],
        "agents": [_agent_dict(a) for a in sorted(agents, key=lambda a: a.id)],
        "humans": [_human_dict(h) for h in sorted(humans, key=lambda h: h.id)],
        "resources": [_resource_dict(r) for r in sorted(resources, key=lambda r: (r.type, r.id))],
    }
    if caps:
        out["throttles"] = caps
    scores = _risk_list(risk)
    if scores:
        out["risk"] = scores
    return out


def _throttle_list(throttles: Iterable[Throttle]) -> list[dict[str, Any]]:
    return [t.to_dict() for t in sorted(throttles, key=lambda t: t.agent_id)]


def _risk_list(risk: Mapping[str, int] | None) -> list[dict[str, Any]]:
    return [{"agent_id": a, "score": s} for a, s in sorted((risk or {}).items()) if s > 0]


def bundle_etag(
    policy_version: int,
    fingerprint: str,
    schema_extension: str,
    *,
    time_zone: str = "UTC",
    throttles: Iterable[Throttle] = (),
    risk: Mapping[str, int] | None = None,
) -> str:
    """The version of a bundle: unpadded base64url of the first 24 bytes of SHA-256
    over the bundle format, the policy version, the entity fingerprint, the schema
    extension and the time zone (32 characters). Anything that changes a bundle's
    content changes one of these, so equal etags mean equal decisions."""
    parts: list[Any] = [BUNDLE_FORMAT, policy_version, fingerprint, schema_extension, time_zone]
    caps = _throttle_list(throttles)
    if caps:
        parts.append(caps)
    scores = _risk_list(risk)
    if scores:
        parts.append(scores)
    material = json.dumps(
        parts,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    digest = hashlib.sha256(material.encode("ascii")).digest()[:24]
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


# -- reading ----------------------------------------------------------------------------


def _object(
    value: Any, where: str, members: frozenset[str], optional: frozenset[str] = frozenset()
) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise BundleError(f"{where}: expected an object")
    missing = members - value.keys()
    if missing:
        raise BundleError(f"{where}.{sorted(missing)[0]}: missing")
    unknown = value.keys() - members - optional
    if unknown:
        raise BundleError(f"{where}.{sorted(str(k) for k in unknown)[0]}: unknown member")
    return value


def _text(value: Any, where: str, *, limit: int = _MAX_TEXT, empty: bool = True) -> str:
    if not isinstance(value, str):
        raise BundleError(f"{where}: expected a string")
    if len(value) > limit:
        raise BundleError(f"{where}: longer than {limit} characters")
    if not empty and not value:
        raise BundleError(f"{where}: must not be empty")
    return value


def _optional_text(value: Any, where: str, *, limit: int = _MAX_TEXT) -> str | None:
    return None if value is None else _text(value, where, limit=limit)


def _ident(value: Any, where: str, *, limit: int = _MAX_ID) -> str:
    return _text(value, where, limit=limit, empty=False)


def _list(value: Any, where: str, limit: int) -> Sequence[Any]:
    if not isinstance(value, list):
        raise BundleError(f"{where}: expected a list")
    if len(value) > limit:
        raise BundleError(f"{where}: more than {limit} items")
    return value


def _string_map(value: Any, where: str, limit: int) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise BundleError(f"{where}: expected an object")
    if len(value) > limit:
        raise BundleError(f"{where}: more than {limit} members")
    out: dict[str, str] = {}
    for key, item in value.items():
        _ident(key, f"{where} key", limit=_MAX_TYPE)
        out[key] = _text(item, f"{where}.{key}", limit=_MAX_ID)
    return out


def _enum(value: Any, where: str, kind: type[Any]) -> Any:
    try:
        return kind(value)
    except (ValueError, TypeError):
        choices = ", ".join(m.value for m in kind)
        raise BundleError(f"{where}: must be one of {choices}") from None


def _timestamp(value: Any, where: str) -> datetime:
    text = _text(value, where, limit=40)
    if not _TIME_RE.fullmatch(text):
        raise BundleError(f"{where}: expected an ISO 8601 time with a zone")
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        raise BundleError(f"{where}: not a valid time") from None


def _ref(value: Any, where: str) -> EntityRef:
    item = _object(value, where, _REF)
    return EntityRef(
        _ident(item["type"], f"{where}.type", limit=_MAX_TYPE), _ident(item["id"], f"{where}.id")
    )


def _unique(seen: set[Any], key: Any, where: str) -> None:
    if key in seen:
        raise BundleError(f"{where}: appears twice")
    seen.add(key)


def _json_value(value: Any, where: str, depth: int = 0) -> None:
    """Plain JSON only: no NaN or infinities (Cedar has no floats anyway)."""
    if depth > 32:
        raise BundleError(f"{where}: nested too deeply")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise BundleError(f"{where}: keys must be strings")
            _json_value(item, where, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _json_value(item, where, depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise BundleError(f"{where}: not a finite number")
    elif value is not None and not isinstance(value, str | int | float | bool):
        raise BundleError(f"{where}: not a JSON value")


def _policies(value: Any) -> list[PolicyRecord]:
    out: list[PolicyRecord] = []
    seen: set[str] = set()
    for i, raw in enumerate(_list(value, "policies", MAX_POLICIES)):
        where = f"policies[{i}]"
        item = _object(raw, where, _POLICY)
        try:
            policy_id = check_policy_id(item["id"])
        except InvalidInput:
            raise BundleError(f"{where}.id: not a valid policy id") from None
        _unique(seen, policy_id, f"{where}.id")
        out.append(
            PolicyRecord(
                id=policy_id,
                text=_text(item["text"], f"{where}.text", limit=MAX_POLICY_BYTES, empty=False),
                mode=_enum(item["mode"], f"{where}.mode", Mode),
                description=_text(
                    item["description"], f"{where}.description", limit=MAX_DESCRIPTION
                ),
                template=_optional_text(item["template"], f"{where}.template", limit=_MAX_TYPE),
            )
        )
    return out


def _agents(value: Any) -> list[Agent]:
    out: list[Agent] = []
    seen: set[str] = set()
    for i, raw in enumerate(_list(value, "agents", MAX_AGENTS)):
        where = f"agents[{i}]"
        item = _object(raw, where, _AGENT)
        agent_id = _ident(item["id"], f"{where}.id")
        _unique(seen, agent_id, f"{where}.id")
        runtime = _object(item["runtime"], f"{where}.runtime", _RUNTIME)
        expires = item["expires_at"]
        parent = item["parent_id"]
        out.append(
            Agent(
                id=agent_id,
                name=_text(item["name"], f"{where}.name"),
                owners=tuple(
                    _ident(h, f"{where}.owners[{j}]")
                    for j, h in enumerate(_list(item["owners"], f"{where}.owners", _MAX_PEOPLE))
                ),
                sponsors=tuple(
                    _ident(h, f"{where}.sponsors[{j}]")
                    for j, h in enumerate(_list(item["sponsors"], f"{where}.sponsors", _MAX_PEOPLE))
                ),
                purpose=_text(item["purpose"], f"{where}.purpose"),
                environment=_ident(item["environment"], f"{where}.environment"),
                autonomy=_enum(item["autonomy"], f"{where}.autonomy", AutonomyLevel),
                runtime=RuntimeInfo(
                    framework=_optional_text(runtime["framework"], f"{where}.runtime.framework"),
                    model=_optional_text(runtime["model"], f"{where}.runtime.model"),
                ),
                labels=_string_map(item["labels"], f"{where}.labels", _MAX_LABELS),
                status=_enum(item["status"], f"{where}.status", AgentStatus),
                next_access_review=_PLACEHOLDER_REVIEW,
                created_at=_PLACEHOLDER_TIME,
                updated_at=_PLACEHOLDER_TIME,
                parent_id=None if parent is None else _ident(parent, f"{where}.parent_id"),
                expires_at=None if expires is None else _timestamp(expires, f"{where}.expires_at"),
            )
        )
    return out


def _humans(value: Any) -> list[Human]:
    out: list[Human] = []
    seen: set[str] = set()
    for i, raw in enumerate(_list(value, "humans", MAX_HUMANS)):
        where = f"humans[{i}]"
        item = _object(raw, where, _HUMAN)
        human_id = _ident(item["id"], f"{where}.id")
        _unique(seen, human_id, f"{where}.id")
        out.append(
            Human(
                id=human_id,
                display_name=_text(item["display_name"], f"{where}.display_name"),
                email=_text(item["email"], f"{where}.email"),
                external_identity=None,
                created_at=_PLACEHOLDER_TIME,
                updated_at=_PLACEHOLDER_TIME,
            )
        )
    return out


def _resources(value: Any) -> list[ResourceRecord]:
    out: list[ResourceRecord] = []
    seen: set[EntityRef] = set()
    for i, raw in enumerate(_list(value, "resources", MAX_RESOURCES)):
        where = f"resources[{i}]"
        item = _object(raw, where, _RESOURCE)
        ref = EntityRef(
            _ident(item["type"], f"{where}.type", limit=_MAX_TYPE),
            _ident(item["id"], f"{where}.id"),
        )
        _unique(seen, ref, where)
        attributes = item["attributes"]
        if not isinstance(attributes, Mapping):
            raise BundleError(f"{where}.attributes: expected an object")
        _json_value(attributes, f"{where}.attributes")
        parents = _list(item["parents"], f"{where}.parents", MAX_PARENTS)
        out.append(
            ResourceRecord(
                type=ref.type,
                id=ref.id,
                attributes=dict(attributes),
                parents=tuple(_ref(p, f"{where}.parents[{j}]") for j, p in enumerate(parents)),
                tags=_string_map(item["tags"], f"{where}.tags", MAX_TAGS),
            )
        )
    return out


def throttles_of(data: Mapping[str, Any]) -> list[Throttle]:
    """The throttles a bundle carries (none when the member is absent), checked:
    ``throttles[i].member`` names the first bad one."""
    raw = data.get("throttles")
    if raw is None:
        return []
    out: list[Throttle] = []
    seen: set[str] = set()
    for i, item in enumerate(_list(raw, "throttles", MAX_THROTTLES)):
        where = f"throttles[{i}]"
        entry = _object(item, where, _THROTTLE)
        agent_id = _ident(entry["agent_id"], f"{where}.agent_id")
        _unique(seen, agent_id, f"{where}.agent_id")
        try:
            out.append(Throttle(agent_id, entry["per_minute"], entry["until"]))
        except ValueError as exc:
            raise BundleError(f"{where}: {exc}") from None
    return out


def risk_of(data: Mapping[str, Any]) -> dict[str, int]:
    """The agents' risk scores a bundle carries (the control plane's detection; none
    when the member is absent), checked: ``risk[i].member`` names the first bad one.
    An enforcement point's Authorizer puts them in ``context.risk_score``."""
    raw = data.get("risk")
    if raw is None:
        return {}
    out: dict[str, int] = {}
    seen: set[str] = set()
    for i, item in enumerate(_list(raw, "risk", MAX_RISK_SCORES)):
        where = f"risk[{i}]"
        entry = _object(item, where, _RISK)
        agent_id = _ident(entry["agent_id"], f"{where}.agent_id")
        _unique(seen, agent_id, f"{where}.agent_id")
        score = entry["score"]
        if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 100:
            raise BundleError(f"{where}.score: expected an integer from 1 to 100")
        out[agent_id] = score
    return out


def time_zone_of(data: Mapping[str, Any]) -> str:
    """The IANA zone the control plane computes ``context.time`` in; an enforcement
    point's Authorizer must use it too, or time-based policies would differ."""
    zone = _text(data.get("time_zone"), "time_zone", limit=64, empty=False)
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise BundleError("time_zone: not an IANA time zone") from None
    return zone


def load_bundle(
    data: Any, *, previous: PolicyEngine | None = None, warm: bool = True
) -> tuple[PolicyEngine, EntitySnapshot]:
    """Rebuild the policy engine and the entity snapshot a bundle describes.

    Strict: raises :class:`BundleError` naming the first bad member (wrong type, out
    of bounds, unknown, duplicated, a policy that does not compile, a schema extension
    Cedar refuses, a catalog entry the schema refuses or that is its own ancestor).
    ``previous`` lends its compiled policies, so an update re-parses only what
    changed; ``warm`` parses the common policy slices ahead, off the decision path.
    """
    top = _object(data, "bundle", _TOP, _OPTIONAL_TOP)
    if top["format"] != BUNDLE_FORMAT:
        raise BundleError(f"format: expected {BUNDLE_FORMAT!r}")
    version = top["policy_version"]
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version < 2**62:
        raise BundleError("policy_version: expected a non-negative integer")
    fingerprint = _text(top["fingerprint"], "fingerprint", limit=_MAX_FINGERPRINT)
    time_zone_of(top)
    extension = _text(top["schema_extension"], "schema_extension", limit=MAX_EXTENSION_BYTES)
    try:
        schema = load_schema(extension)
    except InvalidInput as exc:
        raise BundleError(f"schema_extension: {exc.detail}") from None
    records = _policies(top["policies"])
    agents = _agents(top["agents"])
    humans = _humans(top["humans"])
    resources = _resources(top["resources"])
    throttles_of(top)  # checked here too: a bundle loads whole or not at all
    for i, record in enumerate(resources):
        try:
            check_resource(schema, record)
        except InvalidInput as exc:
            raise BundleError(f"resources[{i}]: {exc.detail}") from None
    looped = cyclic(resources)
    if looped:
        first = min(looped, key=str)
        raise BundleError(f"resources: {first} is its own ancestor")
    try:
        engine = PolicyEngine(version, schema, records, previous=previous)
    except InvalidInput as exc:
        raise BundleError(f"policies: {exc.detail}") from None
    except ValueError:  # Cedar's own refusal, past the parser's checks
        raise BundleError("policies: a policy does not compile") from None
    if warm:
        engine.warm()
    snapshot = EntitySnapshot(
        schema, agents=agents, humans=humans, resources=resources, fingerprint=fingerprint
    )
    return engine, snapshot
