"""Audit events as OCSF 1.7.0 events (Open Cybersecurity Schema Framework).

:func:`to_ocsf` maps one trail entry, ``(log_index, event)`` with the event in the shape
of :meth:`AuditEvent.to_dict <agentiam.core.audit.events.AuditEvent.to_dict>`, to one
OCSF event of the class that fits it; :func:`ocsf` is the exporter formatter (compact
JSON, one line). The output holds only what the event holds: nothing is looked up,
nothing is guessed (no addresses, hosts or names the event does not carry), and what has
no OCSF attribute is kept under ``unmapped``. The one network address an event carries,
the peer of a gateway's refused (or decided) request (``details.peer``), is the API
Activity's ``src_endpoint.ip``.

Why OCSF 1.7.0 (schema from https://schema.ocsf.io/1.7.0, validated in the tests with
the official export shipped by the ``ocsf-json-schema`` package):

- ``metadata.original_event_uid`` and ``metadata.source`` (new in 1.7) give the event id
  and its source an exact home, next to ``metadata.log_version`` for the audit schema;
- ``user.type_id`` 4 "Service" (new in 1.6) types an agent as a non-human account;
- API Activity (6003) carries a distributed ``trace`` (the ``trace`` profile, 1.4), and
  Entity Management (3004) has the lifecycle activities Suspend and Resume;
- 1.8.0, the newest, changes nothing these events use: in the classes and objects here
  it only adds ``ai_model`` and ``message_context`` to API Activity (the
  ``ai_operation`` profile: model calls), ``api.token`` and
  ``metadata.total_queued_duration``, none of which an audit event carries; being the
  newest, it is also the one consumers support least. Events made here validate against
  1.8.0 too (the tests check it), so moving up is a version string.

Classes (OCSF uid, activity):

==================================================  =============================================
event type                                          OCSF class: activity
==================================================  =============================================
token.issued, token.exchanged, token.denied         Authentication (3002): Logon (1)
token.introspected, api.read,                       API Activity (6003): Read (2)
mcp.stream.opened
authz.decision, tool.call                           API Activity (6003): from the action (read,
                                                    GET… Read; POST Create; write, PUT, PATCH
                                                    Update; delete, DELETE Delete; else Other)
api.request.rejected                                API Activity (6003): from the HTTP method
api.request.rejected.summary                        API Activity (6003): Other (99) "Summary",
                                                    ``count``, ``start_time``, ``end_time``
agent.created, human.created                        Account Change (3001): Create (1)
agent.activate, agent.resume                        Account Change (3001): Enable (2)
agent.suspend                                       Account Change (3001): Disable (5)
agent.decommission                                  Account Change (3001): Delete (6)
agent.updated, human.updated                        Account Change (3001): Other (99) "Update"
admin_key/signing_key.created, agent.key.added,     Entity Management (3004): Create (1)
delegation.granted, assessment.completed
policy.changed, resource.put,                       Entity Management (3004): Update (3)
master_key.rewrapped
resource.deleted, audit.discarded                   Entity Management (3004): Delete (4)
admin_key.revoked, signing_key.retired,             Entity Management (3004): Disable (9)
agent.key.retired, token.revoked,
agent.tokens_revoked, delegation.revoked,
delegation.human_revoked
response.action                                     Entity Management (3004): from the action
                                                    (suspend 12, resume 13, activate 10,
                                                    decommission 11, revoke… 9, else Other)
detection.alert                                     Detection Finding (2004): Create (1)
anything else                                       Base Event (0): Other (99)
==================================================  =============================================

Remediation Activity (7001) was not chosen for ``response.action``: it has no attribute
for the entity acted on, which is what a response is about.

Attributes every class gets: ``time`` (ms), ``severity_id`` (success 1 Informational,
failure 2 Low, denied 3 Medium; for ``detection.alert`` and ``response.action`` the
``details.severity`` name when given), ``status_id`` (1 Success, 2 Failure for failure
and denied; Detection Finding: 1 New), ``status_code`` (the outcome as recorded),
``status_detail`` (the reason of a failure or denial; a success's reason is the
``message``), ``action_id``/``disposition_id`` (denied: 2 Denied and 2 Blocked, 26
Unauthorized for decisions and tool calls; a successful token issuance or exchange,
decision or tool call: 1 Allowed and 1 Allowed; a response that cuts access off:
disposition 24 Access Revoked), ``policy`` (``type`` policy_set and the event's
``policy_version``), ``risk_score`` (rounded: OCSF's is an integer), ``actor.user``
(the actor, an agent typed 4 Service; its role as ``groups[0].name``),
``metadata`` (``uid`` and ``original_event_uid`` the event id, ``sequence`` the log
index, ``event_code`` the event type, ``log_version`` the audit schema version,
``source``, ``correlation_uid`` the W3C trace id, ``product`` AgentIAM), and
``unmapped`` (see :func:`to_ocsf`). Profiles (``metadata.profiles``) are declared for
what is used: ``security_control`` (``action_id``, ``disposition_id``, ``policy``,
``authorizations``, ``risk_score``), ``trace`` (API Activity ``trace.uid``), ``host``
(``actor`` in Base Event and Detection Finding, which have it only in that profile).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from agentiam import __version__

__all__ = ["OCSF_VERSION", "epoch_millis", "ocsf", "peer_address", "severity_id", "to_ocsf"]

OCSF_VERSION = "1.7.0"
PRODUCT = {"name": "AgentIAM", "vendor_name": "AgentIAM", "version": __version__}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_HTTP_RE = re.compile(r"^(GET|HEAD|OPTIONS|POST|PUT|PATCH|DELETE|TRACE|CONNECT) (/\S*)$")

# -- OCSF 1.7.0 vocabulary (captions as the schema names them) --------------------------


@dataclass(frozen=True, slots=True)
class _Class:
    uid: int
    name: str
    category_uid: int
    category_name: str
    activities: Mapping[int, str]


_BASE = _Class(0, "Base Event", 0, "Uncategorized", {0: "Unknown", 99: "Other"})
_DETECTION_FINDING = _Class(
    2004, "Detection Finding", 2, "Findings", {1: "Create", 2: "Update", 3: "Close", 99: "Other"}
)
_IAM = (3, "Identity & Access Management")
_ACCOUNT_CHANGE = _Class(
    3001,
    "Account Change",
    *_IAM,
    {1: "Create", 2: "Enable", 5: "Disable", 6: "Delete", 99: "Other"},
)
_AUTHENTICATION = _Class(3002, "Authentication", *_IAM, {1: "Logon", 2: "Logoff", 99: "Other"})
_ENTITY_MANAGEMENT = _Class(
    3004,
    "Entity Management",
    *_IAM,
    {
        1: "Create",
        2: "Read",
        3: "Update",
        4: "Delete",
        9: "Disable",
        10: "Activate",
        11: "Deactivate",
        12: "Suspend",
        13: "Resume",
        99: "Other",
    },
)
_API_ACTIVITY = _Class(
    6003,
    "API Activity",
    6,
    "Application Activity",
    {1: "Create", 2: "Read", 3: "Update", 4: "Delete", 99: "Other"},
)

_SEVERITIES = {
    "unknown": 0,
    "informational": 1,
    "info": 1,
    "low": 2,
    "medium": 3,
    "high": 4,
    "critical": 5,
    "fatal": 6,
}
_SEVERITY_CAPTIONS = {
    0: "Unknown",
    1: "Informational",
    2: "Low",
    3: "Medium",
    4: "High",
    5: "Critical",
    6: "Fatal",
}
# user.type_id (OCSF 1.7.0 user object): an agent is a non-human "Service" account.
_USER_TYPES = {
    "human": (1, "User"),
    "agent": (4, "Service"),
    "system": (3, "System"),
    "anonymous": (0, "Unknown"),
    "unknown": (0, "Unknown"),
}
# managed_entity.type_id
_ENTITY_TYPES = {"agent": (2, "User"), "human": (2, "User"), "policy_set": (5, "Policy")}
# The CRUD nature of a decided action (policy action names and HTTP methods).
_CRUD = {
    "read": 2,
    "get": 2,
    "head": 2,
    "options": 2,
    "post": 1,
    "create": 1,
    "write": 3,
    "put": 3,
    "patch": 3,
    "update": 3,
    "delete": 4,
}
# response.action: the verb (last dot-separated part of the action) to an Entity
# Management activity; the ones that cut access off also get disposition 24.
_RESPONSES = {
    "activate": 10,
    "suspend": 12,
    "resume": 13,
    "decommission": 11,
    "revoke": 9,
    "revoke_tokens": 9,
    "tokens_revoked": 9,
    "quarantine_subtree": 12,
}
_CUTS_ACCESS = frozenset(
    {"suspend", "decommission", "revoke", "revoke_tokens", "tokens_revoked", "quarantine_subtree"}
)
# Event types that record an access-control decision: their success is "Allowed".
_ACCESS_DECISIONS = frozenset({"token.issued", "token.exchanged", "authz.decision", "tool.call"})
_UNAUTHORIZED = frozenset({"authz.decision", "tool.call"})

# Attributes that a profile adds to a class (OCSF 1.7.0); the profile is declared in
# metadata.profiles when one of them is set.
_SECURITY_CONTROL = frozenset(
    {"action", "action_id", "disposition", "disposition_id", "policy", "authorizations"}
)
_RISK = frozenset({"risk_score"})  # security_control, except in Detection Finding
_HOST_ACTOR = frozenset({_BASE.uid, _DETECTION_FINDING.uid})


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _number(value: Any) -> int | float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def epoch_millis(value: Any) -> int | None:
    """RFC 3339 text (``…Z``) to epoch milliseconds; None when it is not one."""
    text = _text(value)
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def severity_id(event: Mapping[str, Any]) -> int:
    """The OCSF ``severity_id`` of an event (also the basis of the CEF severity).

    success 1 Informational, failure 2 Low, denied 3 Medium, anything else 0 Unknown;
    ``detection.alert`` and ``response.action`` take ``details.severity`` (an OCSF
    severity caption, any case) when they have one.
    """
    if event.get("type") in ("detection.alert", "response.action"):
        details = event.get("details")
        named = details.get("severity") if isinstance(details, Mapping) else None
        if isinstance(named, str) and named.lower() in _SEVERITIES:
            return _SEVERITIES[named.lower()]
    return {"success": 1, "failure": 2, "denied": 3}.get(str(event.get("outcome")), 0)


# -- the mapping -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Route:
    cls: _Class
    activity: int | Callable[[_Mapper], tuple[int, str | None]]
    other_name: str | None = None  # activity_name when the activity is Other (99)


class _Mapper:
    """Builds one OCSF event and remembers which parts of the audit event it used, so
    that the rest can go to ``unmapped``."""

    def __init__(self, log_index: int, event: Mapping[str, Any]) -> None:
        self.log_index = log_index
        self.event = event
        details = event.get("details")
        self.details: Mapping[str, Any] = details if isinstance(details, Mapping) else {}
        self.type = _text(event.get("type")) or ""
        self.action = _text(event.get("action"))
        self.outcome = _text(event.get("outcome"))
        self.source = _text(event.get("source"))
        actor = event.get("actor")
        self.actor: Mapping[str, Any] = actor if isinstance(actor, Mapping) else {}
        resource = event.get("resource")
        self.resource: Mapping[str, Any] | None = (
            resource
            if isinstance(resource, Mapping) and _text(resource.get("id")) is not None
            else None
        )
        trace = event.get("trace")
        self.trace: Mapping[str, Any] = trace if isinstance(trace, Mapping) else {}
        self.used: set[str] = set()  # top-level members represented in the output
        self.used_details: set[str] = set()
        self.ids: set[str] = set()  # ids the output names (users, resources, entities)
        self.out: dict[str, Any] = {}

    # -- identities --------------------------------------------------------------------

    def kind_of(self, uid: str) -> str:
        """What an id names, from the event itself (its members, then its id prefix)."""
        if uid == _text(self.event.get("initiating_human")):
            return "human"
        if uid == _text(self.event.get("agent_id")):
            return "agent"
        if self.resource is not None and uid == self.resource.get("id"):
            return str(self.resource.get("type"))
        if uid == _text(self.actor.get("id")):
            return str(self.actor.get("type"))
        for prefix, kind in (("agt_", "agent"), ("hum_", "human")):
            if uid.startswith(prefix):
                return kind
        return "unknown"

    def user(self, uid: str, kind: str, role: str | None = None) -> dict[str, Any]:
        """An OCSF user object: ``uid``, ``type_id``/``type`` from the identity kind
        (agent 4 Service, human 1 User, system 3 System, others 99 Other with the kind
        as ``type``), a role as the name of its only group."""
        kind = kind.lower()
        type_id, type_name = _USER_TYPES.get(kind, (99, kind or "unknown"))
        out: dict[str, Any] = {"uid": uid, "type_id": type_id, "type": type_name}
        if role:
            out["groups"] = [{"name": role}]
        self.ids.add(uid)
        return out

    def actor_user(self) -> dict[str, Any] | None:
        uid = _text(self.actor.get("id"))
        if uid is None:
            return None
        self.used.add("actor")
        kind = str(self.actor.get("type") or "unknown")
        return self.user(uid, kind, _text(self.actor.get("role")))

    def actor_label(self) -> str | None:
        uid = _text(self.actor.get("id"))
        return f"{self.actor.get('type')}:{uid}" if uid else None

    def resource_user(self) -> dict[str, Any] | None:
        """The resource as a user, when it is an agent or a human."""
        if self.resource is None or self.resource.get("type") not in ("agent", "human"):
            return None
        return self.user(str(self.resource["id"]), str(self.resource["type"]))

    def set_actor(self, user: dict[str, Any] | None) -> None:
        if user is None:
            return
        actor: dict[str, Any] = {"user": user}
        if "actor" not in self.used and (label := self.actor_label()):
            actor["invoked_by"] = label  # who asked, when the actor is someone else
        self.out["actor"] = actor


def _other(m: _Mapper) -> tuple[int, str | None]:
    return 99, m.action or m.type or None


def _from_action(m: _Mapper) -> tuple[int, str | None]:
    crud = _CRUD.get((m.action or "").lower())
    return (crud, None) if crud else _other(m)


def _from_http(m: _Mapper) -> tuple[int, str | None]:
    match = _HTTP_RE.match(m.action or "")
    crud = _CRUD.get(match.group(1).lower()) if match else None
    return (crud, None) if crud else _other(m)


def _from_response(m: _Mapper) -> tuple[int, str | None]:
    verb = (m.action or "").rsplit(".", 1)[-1].lower()
    return (_RESPONSES[verb], None) if verb in _RESPONSES else _other(m)


_ROUTES: dict[str, _Route] = {
    **dict.fromkeys(
        ("token.issued", "token.exchanged", "token.denied"), _Route(_AUTHENTICATION, 1)
    ),
    **dict.fromkeys(("token.introspected", "api.read"), _Route(_API_ACTIVITY, 2)),
    # the MCP gateway admitted a notification stream: the agent reads its notifications
    "mcp.stream.opened": _Route(_API_ACTIVITY, 2),
    **dict.fromkeys(("authz.decision", "tool.call"), _Route(_API_ACTIVITY, _from_action)),
    "api.request.rejected": _Route(_API_ACTIVITY, _from_http),
    # a gateway's count of one peer's anonymous refusals past its audit budget
    "api.request.rejected.summary": _Route(_API_ACTIVITY, 99, "Summary"),
    **dict.fromkeys(("agent.created", "human.created"), _Route(_ACCOUNT_CHANGE, 1)),
    **dict.fromkeys(("agent.activate", "agent.resume"), _Route(_ACCOUNT_CHANGE, 2)),
    "agent.suspend": _Route(_ACCOUNT_CHANGE, 5),
    "agent.decommission": _Route(_ACCOUNT_CHANGE, 6),
    **dict.fromkeys(("agent.updated", "human.updated"), _Route(_ACCOUNT_CHANGE, 99, "Update")),
    **dict.fromkeys(
        (
            "admin_key.created",
            "signing_key.created",
            "agent.key.added",
            "delegation.granted",
            "assessment.completed",  # the entity is the stored assessment
        ),
        _Route(_ENTITY_MANAGEMENT, 1),
    ),
    **dict.fromkeys(
        ("policy.changed", "resource.put", "master_key.rewrapped"), _Route(_ENTITY_MANAGEMENT, 3)
    ),
    **dict.fromkeys(("resource.deleted", "audit.discarded"), _Route(_ENTITY_MANAGEMENT, 4)),
    **dict.fromkeys(
        (
            "admin_key.revoked",
            "signing_key.retired",
            "agent.key.retired",
            "token.revoked",
            "agent.tokens_revoked",
            "delegation.revoked",
            "delegation.human_revoked",
        ),
        _Route(_ENTITY_MANAGEMENT, 9),
    ),
    "response.action": _Route(_ENTITY_MANAGEMENT, _from_response),
    "detection.alert": _Route(_DETECTION_FINDING, 1),
    # Human approval (step-up): the entity is the approval request.
    "approval.requested": _Route(_ENTITY_MANAGEMENT, 1),
    **dict.fromkeys(
        ("approval.approved", "approval.denied", "approval.expired", "approval.consumed"),
        _Route(_ENTITY_MANAGEMENT, 3),
    ),
}


# -- per class ---------------------------------------------------------------------------


def _authentication(m: _Mapper) -> None:
    """Authentication (3002): ``user`` is the token's subject (``details.sub``, else the
    initiating human, else the agent or human the token is for, else the caller);
    ``actor`` the client that asked; ``service`` the component that authenticated it
    (the event's source); ``session`` the token (``jti``, ``exp``, DPoP ``jkt``)."""
    subject = _text(m.details.get("sub"))
    if subject is not None:
        m.used_details.add("sub")
    else:
        subject = _text(m.event.get("initiating_human"))
    user = m.user(subject, m.kind_of(subject)) if subject else m.resource_user()
    if user is None:
        user = m.actor_user()
    m.set_actor(m.actor_user())
    if user is not None:
        m.out["user"] = user
    m.out["service"] = {"name": m.source or PRODUCT["name"]}
    m.out["auth_protocol_id"] = 6
    m.out["auth_protocol"] = "OAUTH 2.0"
    session: dict[str, Any] = {}
    if jti := _text(m.details.get("jti")):
        session["uid"] = jti
        m.used_details.add("jti")
    exp = m.details.get("exp")
    if isinstance(exp, int) and not isinstance(exp, bool):
        session["expiration_time"] = exp * 1000
        m.used_details.add("exp")
    if jkt := _text(m.details.get("jkt")):
        session["credential_uid"] = jkt
        m.used_details.add("jkt")
    if session:
        m.out["session"] = session


def _account_change(m: _Mapper) -> None:
    """Account Change (3001): ``user`` is the agent or human account changed."""
    user = m.resource_user()
    m.set_actor(m.actor_user())
    if user is None:  # an account event without its account: name the caller's
        user = m.actor_user()
    if user is not None:
        m.out["user"] = user


def _entity(m: _Mapper) -> dict[str, Any]:
    """The managed entity: the token, key or grant the details name, else the
    resource; ``user`` is the agent or human it belongs to; ``data`` the details."""
    named: dict[str, tuple[str, str | None]] = {
        "token.revoked": ("token", "jti"),
        "agent.tokens_revoked": ("token", None),
        "agent.key.added": ("agent_key", "key_id"),
        "agent.key.retired": ("agent_key", "key_id"),
        "delegation.granted": ("grant", "grant_id"),
        "delegation.revoked": ("grant", "grant_id"),
        "delegation.human_revoked": ("grant", None),
        **{
            f"approval.{state}": ("approval", "approval_id")
            for state in ("requested", "approved", "denied", "expired", "consumed")
        },
    }
    entity: dict[str, Any] = {}
    owner = m.resource_user()  # the agent or human the entity belongs to (or is)
    if m.type in named:
        kind, key = named[m.type]
        uid = _text(m.details.get(key)) if key else None
    elif m.resource is not None:
        kind, uid = str(m.resource.get("type")), str(m.resource["id"])
    else:
        kind, uid = None, None
    if owner is not None or (m.resource is not None and uid == m.resource["id"]):
        m.used.add("resource")
    if kind is not None:
        type_id, type_name = _ENTITY_TYPES.get(kind, (99, kind))
        entity.update(type_id=type_id, type=type_name)
    if uid:
        entity["uid"] = uid
        m.ids.add(uid)
    if owner is not None:
        entity["user"] = owner
    if m.type == "admin_key.created" and (name := _text(m.details.get("name"))):
        entity["name"] = name
    if kind == "policy_set":
        version = m.details.get("version")
        text = str(version) if _number(version) is not None or _text(version) else None
        entity["policy"] = {"type": "policy_set", **({"version": text} if text else {})}
        if text:
            entity["version"] = text
    if not entity.keys() & {"uid", "user", "policy"}:
        entity["name"] = m.type or "unknown"  # nothing identifies it: name what happened
    if m.details:
        entity["data"] = dict(m.details)
        m.used_details.update(m.details)
    return entity


def _entity_management(m: _Mapper) -> None:
    """Entity Management (3004): ``entity`` is what was created, changed or revoked."""
    m.set_actor(m.actor_user())
    m.out["entity"] = _entity(m)
    if m.type == "response.action":
        verb = (m.action or "").rsplit(".", 1)[-1].lower()
        if verb in _CUTS_ACCESS and m.outcome == "success":
            m.out["disposition_id"], m.out["disposition"] = 24, "Access Revoked"


def _resource_details(m: _Mapper) -> list[dict[str, Any]]:
    if m.resource is None:
        return []
    m.used.add("resource")
    m.ids.add(str(m.resource["id"]))
    return [{"uid": m.resource["id"], "type": str(m.resource.get("type"))}]


def _principal(m: _Mapper) -> dict[str, Any] | None:
    """Whose call a decision or tool call is: the agent, else the request's principal."""
    agent = _text(m.event.get("agent_id"))
    if agent is not None:
        return m.user(agent, "agent")
    principal = m.details.get("principal")
    if isinstance(principal, Mapping) and (uid := _text(principal.get("id"))):
        m.used_details.add("principal")
        return m.user(uid, str(principal.get("type") or "unknown"))
    return None


def _api_activity(m: _Mapper) -> None:
    """API Activity (6003): ``api.operation`` is the action; for decisions and tool
    calls the actor is the agent (the event's actor, which asked, is ``invoked_by``),
    ``api.request.uid`` the decision id; ``src_endpoint.name`` is the event's source
    (the interface the call came in by), and ``src_endpoint.ip`` the network address
    of the connection a gateway refused or decided (``details.peer``), when it is one
    address (a summary's ``other``, ``unknown`` or IPv6 /64 stays in ``unmapped``)."""
    decided = m.type in ("authz.decision", "tool.call")
    m.set_actor((_principal(m) if decided else None) or m.actor_user())
    api: dict[str, Any] = {"operation": m.action or m.type}
    tool = _text(m.details.get("tool")) if m.type == "tool.call" else None
    if tool:
        m.used_details.add("tool")
    api["service"] = {"name": tool or m.source or PRODUCT["name"]}
    if decision_id := _text(m.event.get("decision_id")):
        m.used.add("decision_id")
        request: dict[str, Any] = {"uid": decision_id}
        arguments = m.details.get("arguments")
        if m.type == "tool.call" and isinstance(arguments, Mapping):
            request["data"] = {"arguments": dict(arguments)}
            m.used_details.add("arguments")
        api["request"] = request
    m.out["api"] = api
    m.out["src_endpoint"] = {"name": m.source or PRODUCT["name"], **_peer(m)}
    if resources := _resource_details(m):
        m.out["resources"] = resources
    if m.type == "api.request.rejected":
        match = _HTTP_RE.match(m.action or "")
        if match:
            m.out["http_request"] = {"http_method": match.group(1), "url": {"path": match.group(2)}}
    if m.type in ("api.request.rejected", "mcp.stream.opened"):
        status = m.details.get("status")
        if isinstance(status, int) and not isinstance(status, bool):
            m.out["http_response"] = {"code": status}
            m.used_details.add("status")
    if m.type == "api.request.rejected.summary":
        _summary_counts(m)
    if m.type == "authz.decision":
        decision = _text(m.details.get("decision"))
        policies = m.details.get("policies")
        version = _text(m.event.get("policy_version"))
        if decision is not None:
            m.used_details.add("decision")
            names: list[str] = []
            if isinstance(policies, list) and all(_text(p) for p in policies):
                m.used_details.add("policies")
                names = policies
            versioned = {"version": version} if version else {}
            m.out["authorizations"] = [
                {"decision": decision, "policy": {"uid": p, **versioned}} for p in names
            ] or [{"decision": decision}]
    if trace_id := _text(m.trace.get("trace_id")):
        m.out["trace"] = {"uid": trace_id}


def _peer(m: _Mapper) -> dict[str, str]:
    """``{"ip": <details.peer>}`` when the peer is one IP address (RFC 4291 section
    2.2 text for IPv6, as ``ipaddress`` writes it), else nothing."""
    address = peer_address(m.details.get("peer"))
    if address is None:
        return {}
    m.used_details.add("peer")
    return {"ip": address}


def peer_address(peer: Any) -> str | None:
    """A gateway event's ``details.peer`` as one IP address in its canonical text, or
    None when it is not one (absent, ``unknown``, ``other``, a /64 network)."""
    if not isinstance(peer, str) or len(peer) > 64:
        return None
    try:
        return str(ipaddress.ip_address(peer))
    except ValueError:
        return None


def _summary_counts(m: _Mapper) -> None:
    """A summary of refusals: OCSF's base ``count`` ("the number of times that events
    in the same logical group occurred during the event Start Time to End Time
    period"), ``start_time`` and ``end_time`` from ``details.count``, ``first_time``
    and ``last_time``."""
    count = m.details.get("count")
    if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
        m.out["count"] = count
        m.used_details.add("count")
    for member, attribute in (("first_time", "start_time"), ("last_time", "end_time")):
        if (at := epoch_millis(m.details.get(member))) is not None:
            m.out[attribute] = at
            m.used_details.add(member)


def _detection_finding(m: _Mapper) -> None:
    """Detection Finding (2004): ``finding_info.uid`` is ``details.alert_id`` (else the
    event id), ``title`` ``details.title`` (else the reason), ``analytic.name``
    ``details.detector``; ``resources`` the resource and the agent concerned."""
    m.set_actor(m.actor_user())
    info: dict[str, Any] = {"uid": _text(m.details.get("alert_id")) or m.event.get("event_id")}
    if _text(m.details.get("alert_id")):
        m.used_details.add("alert_id")
    reason = _text(m.event.get("reason"))
    title = _text(m.details.get("title"))
    if title:
        m.used_details.add("title")
    if title or reason:
        info["title"] = title or reason
    if reason and title:
        info["desc"] = reason
    if detector := _text(m.details.get("detector")):
        m.used_details.add("detector")
        info["analytic"] = {"name": detector, "type_id": 0, "type": "Unknown"}
    if (created := epoch_millis(m.event.get("time"))) is not None:
        info["created_time"] = created
    if not _text(info["uid"]):
        info["uid"] = m.type or "unknown"
    m.out["finding_info"] = info
    m.out["is_alert"] = True
    resources = _resource_details(m)
    agent = _text(m.event.get("agent_id"))
    if agent and agent not in m.ids:
        resources.append({"uid": agent, "type": "agent"})
        m.ids.add(agent)
    if resources:
        m.out["resources"] = resources


def _base_event(m: _Mapper) -> None:
    m.set_actor(m.actor_user())


_FILL: dict[int, Callable[[_Mapper], None]] = {
    _AUTHENTICATION.uid: _authentication,
    _ACCOUNT_CHANGE.uid: _account_change,
    _ENTITY_MANAGEMENT.uid: _entity_management,
    _API_ACTIVITY.uid: _api_activity,
    _DETECTION_FINDING.uid: _detection_finding,
    _BASE.uid: _base_event,
}


# -- shared attributes -------------------------------------------------------------------


def _status(m: _Mapper, cls: _Class) -> None:
    out = m.out
    if m.outcome:
        out["status_code"] = m.outcome
    if cls is _DETECTION_FINDING:
        if m.outcome == "success":
            out["status_id"], out["status"] = 1, "New"
        else:
            out["status_id"], out["status"] = 99, m.outcome or "Unknown"
    elif m.outcome == "success":
        out["status_id"], out["status"] = 1, "Success"
    elif m.outcome in ("failure", "denied"):
        out["status_id"], out["status"] = 2, "Failure"
    else:
        out["status_id"], out["status"] = (99, m.outcome) if m.outcome else (0, "Unknown")
    if m.outcome == "denied":
        out["action_id"], out["action"] = 2, "Denied"
        if m.type in _UNAUTHORIZED:
            out["disposition_id"], out["disposition"] = 26, "Unauthorized"
        else:
            out["disposition_id"], out["disposition"] = 2, "Blocked"
    elif m.outcome == "success" and m.type in _ACCESS_DECISIONS:
        out["action_id"], out["action"] = 1, "Allowed"
        out["disposition_id"], out["disposition"] = 1, "Allowed"
    reason = _text(m.event.get("reason"))
    if reason is not None:
        if m.outcome in ("failure", "denied"):
            out["status_detail"] = reason
        else:
            out["message"] = reason
        m.used.add("reason")
    m.used.add("outcome")


def _policy_and_risk(m: _Mapper) -> None:
    if version := _text(m.event.get("policy_version")):
        m.out["policy"] = {"type": "policy_set", "version": version}
        m.used.add("policy_version")
    risk = _number(m.event.get("risk_score"))
    if risk is not None:
        m.out["risk_score"] = round(risk)
        if risk == round(risk):
            m.used.add("risk_score")


def _metadata(m: _Mapper) -> dict[str, Any]:
    meta: dict[str, Any] = {"version": OCSF_VERSION, "product": dict(PRODUCT)}
    if event_id := _text(m.event.get("event_id")):
        meta["uid"] = event_id
        meta["original_event_uid"] = event_id
    if m.type:
        meta["event_code"] = m.type
    if schema := _text(m.event.get("schema_version")):
        meta["log_version"] = schema
    meta["sequence"] = m.log_index
    if trace_id := _text(m.trace.get("trace_id")):
        meta["correlation_uid"] = trace_id
    if m.source:
        meta["source"] = m.source
    return meta


def _unmapped(m: _Mapper) -> dict[str, Any]:
    """What the OCSF event does not otherwise carry, under the audit event's names."""
    event = m.event
    out: dict[str, Any] = {}
    if "actor" not in m.used and m.actor:
        out["actor"] = dict(m.actor)
    if m.action and m.action not in (
        m.type,  # metadata.event_code
        m.out.get("activity_name"),
        m.out.get("api", {}).get("operation"),
    ):
        out["action"] = m.action
    resource = event.get("resource")
    if (
        resource is not None
        and "resource" not in m.used
        and (m.resource is None or m.resource["id"] not in m.ids)
    ):
        out["resource"] = resource
    agent = event.get("agent_id")
    if agent is not None and agent not in m.ids:
        out["agent_id"] = agent
    human = event.get("initiating_human")
    if human is not None and human not in m.ids:
        out["initiating_human"] = human
    if chain := event.get("delegation_chain"):
        out["delegation_chain"] = chain  # OCSF has no delegation chain
    if (decision := event.get("decision_id")) is not None and "decision_id" not in m.used:
        out["decision_id"] = decision
    if (version := event.get("policy_version")) is not None and "policy_version" not in m.used:
        out["policy_version"] = version
    if (risk := event.get("risk_score")) is not None and "risk_score" not in m.used:
        out["risk_score"] = risk  # the exact value (risk_score in OCSF is an integer)
    if span := _text(m.trace.get("span_id")):
        out["span_id"] = span
    if "time" not in m.out and event.get("time") is not None:
        out["time"] = event.get("time")
    details = {k: v for k, v in m.details.items() if k not in m.used_details}
    if details:
        out["details"] = details
    known = {
        "schema_version", "event_id", "time", "type", "outcome", "actor", "action",
        "resource", "source", "agent_id", "initiating_human", "delegation_chain",
        "decision_id", "policy_version", "risk_score", "trace", "reason", "details",
    }  # fmt: skip
    for key, value in event.items():
        if key not in known and value is not None:
            out[str(key)] = value  # a member a later schema version added
    return out


def _profiles(out: Mapping[str, Any], cls: _Class) -> list[str]:
    profiles = set()
    gated = _SECURITY_CONTROL if cls is _DETECTION_FINDING else _SECURITY_CONTROL | _RISK
    if gated & out.keys():
        profiles.add("security_control")
    if "trace" in out:
        profiles.add("trace")
    if "actor" in out and cls.uid in _HOST_ACTOR:
        profiles.add("host")
    return sorted(profiles)


def to_ocsf(log_index: int, event: Mapping[str, Any]) -> dict[str, Any]:
    """The OCSF 1.7.0 event for one trail entry (see the module docstring for classes).

    ``unmapped`` holds, under the audit event's own names, what no OCSF attribute
    carries: ``delegation_chain``, the ``initiating_human`` and ``agent_id`` when no user
    object names them, the ``actor`` when the OCSF actor is someone else (a decision's
    agent), the ``resource`` where the class has no place for it, ``span_id`` (an OCSF
    span needs start and end times that events do not have), an exact fractional
    ``risk_score``, and the ``details`` members not mapped. A ``time`` that is not RFC
    3339 is left out of ``time`` (never guessed) and kept in ``unmapped.time``.
    """
    m = _Mapper(log_index, event)
    route = _ROUTES.get(m.type, _Route(_BASE, _other))
    cls = route.cls
    if isinstance(route.activity, int):
        activity_id, other = route.activity, route.other_name
    else:
        activity_id, other = route.activity(m)
    m.out.update(
        category_uid=cls.category_uid,
        category_name=cls.category_name,
        class_uid=cls.uid,
        class_name=cls.name,
        activity_id=activity_id,
        activity_name=other if activity_id == 99 and other else cls.activities[activity_id],
        type_uid=cls.uid * 100 + activity_id,
    )
    m.out["type_name"] = f"{cls.name}: {m.out['activity_name']}"
    if (time := epoch_millis(event.get("time"))) is not None:
        m.out["time"] = time
    severity = severity_id(event)
    m.out["severity_id"], m.out["severity"] = severity, _SEVERITY_CAPTIONS[severity]
    named = m.details.get("severity")
    if m.type in ("detection.alert", "response.action") and str(named).lower() in _SEVERITIES:
        m.used_details.add("severity")
    _FILL[cls.uid](m)
    _status(m, cls)
    _policy_and_risk(m)
    m.out["metadata"] = _metadata(m)
    if unmapped := _unmapped(m):
        m.out["unmapped"] = unmapped
    if profiles := _profiles(m.out, cls):
        m.out["metadata"]["profiles"] = profiles
    return m.out


def ocsf(log_index: int, event: Mapping[str, Any]) -> str:
    """The formatter: :func:`to_ocsf` as compact JSON on one line (sorted keys; every
    non-ASCII and control character escaped, so no character can split the line)."""
    return json.dumps(to_ocsf(log_index, event), sort_keys=True, separators=(",", ":"))
