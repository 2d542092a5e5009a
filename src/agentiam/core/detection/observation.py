"""From a stored audit event (the :meth:`AuditEvent.to_dict` form) to the
:class:`~agentiam.core.detection.model.Observation` detectors read.

What each event type becomes (docs/detection.md, "What detection reads"):

- ``authz.decision`` (``services/decisions.py`` ``decision_event``; the gateways'
  decisions go through the same function): one **call** by ``agent_id`` (the principal),
  ``allowed`` from the outcome, ``resource`` ``Type::id``.
- ``api.request.rejected`` (``adapters/gateway/enforcer.py`` ``_record_refusal``): a
  **call** refused before policy (rate limit, task scope, no route) when it names a
  resource; otherwise an authentication refusal. ``attributes.refusal`` classifies it:
  ``key_mismatch`` (a DPoP proof made with a key other than the token's ``cnf.jkt``, or
  a DPoP-bound token shown as Bearer: the token is in hands without its key),
  ``proof_replay``, ``rate_limited``, ``authentication``, ``forbidden``, ``not_found``,
  ``unavailable``, ``other``. An event with no agent (an authentication refusal made
  before the token was read) is attributed through ``details.client_id`` when present,
  else ignored.
- ``tool.call`` (``Enforcer.record_outcome``): the outcome of a call already counted by
  its decision; it adds facts (status, ``jti``) but is not a second call.
- ``token.issued`` / ``token.exchanged`` (``services/tokens.py``,
  ``services/delegation.py``): ``jti``, ``parent_jti``, ``jkt``, ``aud`` and the
  granted scope.
- ``token.denied`` (``TokenService.deny``): ``attributes.error`` is the OAuth error
  (``invalid_scope``, ``invalid_target``, ``access_denied`` ...) and ``widening`` is
  True when the refusal names a widening attempt in token exchange.
- ``agent.created`` with a ``parent_id``: a **spawn** by the parent, action
  ``spawn_agent``, resource ``Agent::<child>``; the child's environment is the target's.

Everything else (admin changes, introspection ...) is ignored. Strings are cut to
:data:`MAX_TEXT` characters so a hostile event cannot make detection state unbounded.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any

from agentiam.core.detection.model import Observation

__all__ = [
    "AGENT_CREATED",
    "CALL_KINDS",
    "DECISION",
    "MAX_TEXT",
    "REJECTED",
    "TOKEN_DENIED",
    "TOKEN_EXCHANGED",
    "TOKEN_ISSUED",
    "TOOL_CALL",
    "is_call",
    "observe",
]

DECISION = "authz.decision"
TOOL_CALL = "tool.call"
REJECTED = "api.request.rejected"
TOKEN_ISSUED = "token.issued"  # noqa: S105 - an event type, not a secret
TOKEN_EXCHANGED = "token.exchanged"  # noqa: S105
TOKEN_DENIED = "token.denied"  # noqa: S105
AGENT_CREATED = "agent.created"
SPAWN_ACTION = "spawn_agent"
CALL_KINDS = frozenset({DECISION, REJECTED})
MAX_TEXT = 256

_EMPTY: Mapping[str, Any] = MappingProxyType({})
# the normalised attributes an event may carry (details, or details.target)
_TARGET_KEYS = (("host", "host"), ("environment", "environment"), ("tenant", "tenant"))
_DOMAIN_KEYS = ("data_domain", "domain")


def is_call(obs: Observation) -> bool:
    """An attempted call on a resource: a decision, or a refusal naming a resource."""
    return obs.kind in CALL_KINDS and obs.resource is not None


def observe(index: int, event: Mapping[str, Any]) -> Observation | None:
    """The observation of one trail event (``index`` is its position in the trail), or
    None when detection ignores it."""
    kind = event.get("type")
    if kind in _CONTROL_PLANE_KINDS and _from_enforcement_point(event):
        return None  # only the control plane states these facts (ingest refuses them too)
    if kind in (DECISION, TOOL_CALL):
        return _call(index, event, kind)
    if kind == REJECTED:
        return _rejected(index, event)
    if kind in (TOKEN_ISSUED, TOKEN_EXCHANGED):
        return _token(index, event, kind)
    if kind == TOKEN_DENIED:
        return _token_denied(index, event)
    if kind == AGENT_CREATED:
        return _spawn(index, event)
    return None


_CONTROL_PLANE_KINDS = frozenset({TOKEN_ISSUED, TOKEN_EXCHANGED, TOKEN_DENIED, AGENT_CREATED})
_ENFORCEMENT_SOURCES = ("gateway/", "guard/")


def _from_enforcement_point(event: Mapping[str, Any]) -> bool:
    source = event.get("source")
    return not isinstance(source, str) or source.startswith(_ENFORCEMENT_SOURCES)


# -- per type ----------------------------------------------------------------------------


def _call(index: int, event: Mapping[str, Any], kind: str) -> Observation | None:
    agent = _agent(event)
    if agent is None:
        return None
    details = _details(event)
    attributes = _targets(event, details)
    if kind == TOOL_CALL:
        attributes = dict(attributes)
        if isinstance(details.get("status"), int):
            attributes["status"] = details["status"]
        if isinstance(details.get("tool"), str):
            attributes["tool"] = _cut(details["tool"])
    return _make(
        index,
        event,
        kind,
        agent,
        _cut(str(event.get("action") or "")),
        # a tool.call is the outcome of an allowed call (its own outcome is the
        # upstream's); a decision's outcome is the decision
        allowed=True if kind == TOOL_CALL else event.get("outcome") == "success",
        attributes=attributes,
        details=details,
    )


def _rejected(index: int, event: Mapping[str, Any]) -> Observation | None:
    details = _details(event)
    agent = _agent(event) or _text(details.get("client_id"))
    if agent is None:
        return None
    reason = _cut(str(event.get("reason") or ""))
    status = details.get("status")
    attributes = dict(_targets(event, details))
    attributes["reason"] = reason
    attributes["refusal"] = _refusal(reason, status if isinstance(status, int) else None)
    if isinstance(status, int):
        attributes["status"] = status
    jkt = _text(details.get("jkt"))
    if jkt is not None:
        attributes["jkt"] = jkt
    return _make(
        index,
        event,
        REJECTED,
        agent,
        _cut(str(event.get("action") or "")),
        allowed=False,
        attributes=attributes,
        details=details,
    )


def _token(index: int, event: Mapping[str, Any], kind: str) -> Observation | None:
    agent = _agent(event)
    if agent is None:
        return None
    details = _details(event)
    attributes: dict[str, Any] = {}
    for key, name in (
        ("jti", "jti"),
        ("parent_jti", "parent_jti"),
        ("root_jti", "root_jti"),
        ("jkt", "jkt"),
        ("aud", "audience"),
        ("scope", "granted_scope"),
        ("grant_type", "grant_type"),
    ):
        value = _text(details.get(key))
        if value is not None:
            attributes[name] = value
    return _make(
        index,
        event,
        kind,
        agent,
        "token",
        allowed=True,
        attributes=attributes,
        details=details,
    )


def _token_denied(index: int, event: Mapping[str, Any]) -> Observation | None:
    agent = _agent(event)
    # Only a refusal after the client was proven is the agent's doing: anyone can
    # claim an agent's id in a failed token request (services/tokens.py ``deny``).
    if agent is None or _details(event).get("authenticated") is not True:
        return None
    reason = _cut(str(event.get("reason") or ""))
    error, _, detail = reason.partition(":")
    attributes = {
        "reason": reason,
        "error": error.strip(),
        "widening": "widening" in detail,
    }
    if "not bound to the proof key" in detail:  # a token shown with another key's proof
        attributes["refusal"] = "key_mismatch"
    return _make(
        index,
        event,
        TOKEN_DENIED,
        agent,
        "token",
        allowed=False,
        attributes=attributes,
        details=_details(event),
    )


def _spawn(index: int, event: Mapping[str, Any]) -> Observation | None:
    details = _details(event)
    parent = _text(details.get("parent_id"))
    if parent is None:
        return None
    child = _text(event.get("agent_id"))
    attributes: dict[str, Any] = {"parent_id": parent}
    if child is not None:
        attributes["child_id"] = child
    environment = _text(details.get("environment"))
    if environment is not None:
        attributes["environment"] = environment
    return _make(
        index,
        event,
        AGENT_CREATED,
        parent,
        SPAWN_ACTION,
        allowed=True,
        attributes=attributes,
        details=details,
        resource=f"Agent::{child}" if child is not None else None,
    )


# -- helpers -----------------------------------------------------------------------------


def _make(
    index: int,
    event: Mapping[str, Any],
    kind: str,
    agent: str,
    action: str,
    *,
    allowed: bool | None,
    attributes: Mapping[str, Any],
    details: Mapping[str, Any],
    resource: str | None = None,
) -> Observation | None:
    when = _time(event.get("time"))
    event_id = _text(event.get("event_id"))
    if when is None or event_id is None:
        return None
    if resource is None:
        resource = _resource(event.get("resource"))
    chain = event.get("delegation_chain")
    return Observation(
        index=index,
        event_id=event_id,
        time=when,
        kind=kind,
        agent_id=agent,
        action=action,
        resource=resource,
        allowed=allowed,
        session=_session(event, details),
        initiating_human=_text(event.get("initiating_human")),
        chain=tuple(_cut(str(a)) for a in chain[:16]) if isinstance(chain, list) else (),
        attributes=attributes or _EMPTY,
    )


def _agent(event: Mapping[str, Any]) -> str | None:
    agent = _text(event.get("agent_id"))
    if agent is not None:
        return agent
    actor = event.get("actor")
    if isinstance(actor, Mapping) and actor.get("type") == "agent":
        return _text(actor.get("id"))
    return None


def _details(event: Mapping[str, Any]) -> Mapping[str, Any]:
    details = event.get("details")
    return details if isinstance(details, Mapping) else _EMPTY


def _session(event: Mapping[str, Any], details: Mapping[str, Any]) -> str | None:
    """The root token of the delegation tree, else the token, else the trace."""
    for key in ("root_jti", "jti"):
        value = _text(details.get(key))
        if value is not None:
            return value
    trace = event.get("trace")
    if isinstance(trace, Mapping):
        return _text(trace.get("trace_id"))
    return None


def _targets(event: Mapping[str, Any], details: Mapping[str, Any]) -> Mapping[str, Any]:
    """``host``, ``environment``, ``data_domain`` and ``tenant`` of the call's target,
    from ``details.target`` (or ``details`` itself); an ``Environment::x`` resource is
    in environment ``x``. Nothing is guessed: a field the event lacks stays absent."""
    source = details.get("target")
    if not isinstance(source, Mapping):
        source = details
    out: dict[str, Any] | None = None
    for key, name in _TARGET_KEYS:
        value = _text(source.get(key))
        if value is not None:
            if out is None:
                out = {}
            out[name] = value.lower() if name == "host" else value
    for key in _DOMAIN_KEYS:
        value = _text(source.get(key))
        if value is not None:
            if out is None:
                out = {}
            out["data_domain"] = value
            break
    resource = event.get("resource")
    if (
        isinstance(resource, Mapping)
        and resource.get("type") == "Environment"
        and (env := _text(resource.get("id"))) is not None
    ):
        if out is None:
            out = {}
        out.setdefault("environment", env)
    return out or _EMPTY


def _refusal(reason: str, status: int | None) -> str:
    if "cnf.jkt" in reason or "DPoP-bound token presented as Bearer" in reason:
        return "key_mismatch"
    if "proof jti replayed" in reason:
        return "proof_replay"
    if status == 429:
        return "rate_limited"
    if status == 401:
        return "authentication"
    if status == 403:
        return "forbidden"
    if status == 404:
        return "not_found"
    if status is not None and status >= 500:
        return "unavailable"
    return "other"


def _resource(value: Any) -> str | None:
    if isinstance(value, Mapping):
        kind = value.get("type")
        ident = value.get("id")
        if isinstance(kind, str) and isinstance(ident, str):
            return _cut(f"{kind}::{ident}")
    return None


def _time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return value[:MAX_TEXT]
    return None


def _cut(value: str) -> str:
    return value[:MAX_TEXT]
