"""Audit events as ArcSight CEF:0 lines.

Format per "Implementing ArcSight Common Event Format (CEF)", Version 25 (Micro Focus,
September 28, 2017)::

    CEF:0|AgentIAM|AgentIAM|<version>|<event type>|<name>|<severity>|<extension>

- **Header.** Device Event Class ID is the event type (``token.issued``), Name a short
  description of the type (the type itself for types this module does not know),
  Severity 0-10 from the OCSF severity (:func:`agentiam.core.audit.ocsf.severity_id`:
  Unknown 0, Informational 1, Low 3, Medium 5, High 7, Critical 9, Fatal 10). In header
  fields ``\\`` and ``|`` are escaped with a backslash (the spec's header rule); a
  header cannot carry a line break, so control characters there become U+FFFD.
- **Extension.** ``key=value`` pairs separated by single spaces, in a fixed order; keys
  are fixed names from the spec's extension dictionary. In values ``\\`` and ``=`` are
  escaped with a backslash and CR and LF are written ``\\r`` and ``\\n`` (the spec's
  extension rules); every other control character, the Unicode line and paragraph
  separators and lone surrogates become U+FFFD, so one event is always one line
  whatever splits lines downstream, and always encodes as UTF-8. A ``|`` needs no
  escape in the extension. Values are not cut to the dictionary's lengths (a consumer
  with limits cuts them; the line stays lossless).

Extension keys (absent members are left out):

================  ==============================================================
key               value
================  ==============================================================
rt                event time, ms since the epoch
externalId        event id
act               action
outcome           success, failure or denied
suser, suid       the actor as ``type:id``, and its id
spriv             the actor's role
duser, duid       the agent concerned (``agent_id``) as ``agent:id``, and its id;
                  for an event about a human, that human
sourceServiceName the event's source (``control-plane/oauth``, ``cli``, …)
src               the network address of the connection a gateway refused or
                  decided (``details.peer``), an IPv4 address
c6a2 / c6a2Label  the same for an IPv6 address / ``Source IPv6 Address``
requestMethod,    HTTP method and path of a rejected API request
request           (``api.request.rejected``, parsed from its action)
reason            the reason
msg               the details as compact JSON (sorted keys)
cn1 / cn1Label    log index / ``logIndex``
cfp1 / cfp1Label  risk score / ``riskScore``
cs1 / cs1Label    initiating human / ``initiatingHuman``
cs2 / cs2Label    delegation chain, agent ids joined by ``,`` / ``delegationChain``
cs3 / cs3Label    decision id / ``decisionId``
cs4 / cs4Label    policy version / ``policyVersion``
cs5 / cs5Label    W3C trace id / ``traceId``
cs6 / cs6Label    resource as ``type:id`` / ``resource``
flexString1 /     W3C span id / ``spanId``
flexString1Label
================  ==============================================================

Not carried: the schema version and members a later schema adds (use the ``native`` or
``ocsf`` format for those).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from agentiam import __version__
from agentiam.core.audit.ocsf import epoch_millis, peer_address, severity_id

__all__ = ["NAMES", "cef", "escape_extension", "escape_header"]

# Device Event Class ID -> Name ("a human-readable and understandable description of
# the event", CEF Version 25).
NAMES = {
    "token.issued": "Access token issued",
    "token.exchanged": "Access token exchanged (delegation)",
    "token.denied": "Token request denied",
    "token.introspected": "Token introspected",
    "token.revoked": "Token revoked",
    "authz.decision": "Authorization decision",
    "tool.call": "Tool call",
    "audit.discarded": "Refused audit events discarded",
    "api.read": "Admin API read",
    "api.request.rejected": "Admin API request rejected",
    "api.request.rejected.summary": "Anonymous refusals summarized",
    "mcp.stream.opened": "MCP notification stream opened",
    "agent.created": "Agent created",
    "agent.updated": "Agent updated",
    "agent.activate": "Agent activated",
    "agent.suspend": "Agent suspended",
    "agent.resume": "Agent resumed",
    "agent.decommission": "Agent decommissioned",
    "agent.key.added": "Agent key added",
    "agent.key.retired": "Agent key retired",
    "agent.tokens_revoked": "Agent tokens revoked",
    "human.created": "Human created",
    "human.updated": "Human updated",
    "admin_key.created": "Admin key created",
    "admin_key.revoked": "Admin key revoked",
    "signing_key.created": "Signing key created",
    "signing_key.retired": "Signing key retired",
    "master_key.rewrapped": "Master key rewrapped",
    "policy.changed": "Policy changed",
    "resource.put": "Resource put",
    "resource.deleted": "Resource deleted",
    "delegation.granted": "Delegation granted",
    "delegation.revoked": "Delegation revoked",
    "delegation.human_revoked": "Delegations of a human revoked",
    "detection.alert": "Detection alert",
    "response.action": "Response action",
    "approval.requested": "Approval requested",
    "approval.approved": "Approval approved",
    "approval.denied": "Approval denied",
    "approval.expired": "Approval expired",
    "approval.consumed": "Approval used",
}

_CEF_SEVERITY = {0: 0, 1: 1, 2: 3, 3: 5, 4: 7, 5: 9, 6: 10}
_HTTP_RE = re.compile(r"^(GET|HEAD|OPTIONS|POST|PUT|PATCH|DELETE|TRACE|CONNECT) (/\S*)$")
# Control characters (C0, DEL, C1), the Unicode line/paragraph separators, and lone
# surrogates (a str read from JSON can hold one; it has no UTF-8 encoding).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_EXTENSION_ESCAPES = {"\\": "\\\\", "=": "\\=", "\n": "\\n", "\r": "\\r"}
_EXTENSION_RE = re.compile(r"[\\=\n\r]")


def escape_header(value: str) -> str:
    """A header field: ``\\`` and ``|`` escaped, control characters replaced."""
    value = value.replace("\\", "\\\\").replace("|", "\\|")
    return _UNSAFE.sub("\ufffd", value)


def escape_extension(value: str) -> str:
    """An extension value: ``\\``, ``=``, CR and LF escaped, other control characters
    replaced (after escaping, so ``\\n`` is never mistaken for a replaced character)."""
    value = _EXTENSION_RE.sub(lambda m: _EXTENSION_ESCAPES[m.group()], value)
    return _UNSAFE.sub("\ufffd", value)


def _text(value: Any) -> str | None:
    """A member as text: strings as they are, other JSON values as compact JSON."""
    if value is None or isinstance(value, str):
        return value or None
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _millis(value: Any) -> str | None:
    millis = epoch_millis(value)
    return None if millis is None else str(millis)


def _label(kind: Any, uid: Any) -> str | None:
    uid_text = _text(uid)
    return f"{_text(kind) or 'unknown'}:{uid_text}" if uid_text else None


def _member(event: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = event.get(key)
    return value if isinstance(value, Mapping) else {}


def _pairs(log_index: int, event: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    actor, trace = _member(event, "actor"), _member(event, "trace")
    resource = _member(event, "resource")
    details = event.get("details")
    agent = _text(event.get("agent_id"))
    if agent is not None:
        target: tuple[str | None, str | None] = (f"agent:{agent}", agent)
    elif resource.get("type") == "human":
        target = (_label("human", resource.get("id")), _text(resource.get("id")))
    else:
        target = (None, None)
    http = _HTTP_RE.match(str(event.get("action") or ""))
    if event.get("type") != "api.request.rejected":
        http = None
    chain = event.get("delegation_chain")
    risk = event.get("risk_score")
    peer = peer_address(details.get("peer")) if isinstance(details, Mapping) else None
    ipv6 = peer is not None and ":" in peer
    return [
        ("rt", _millis(event.get("time"))),
        ("externalId", _text(event.get("event_id"))),
        ("act", _text(event.get("action"))),
        ("outcome", _text(event.get("outcome"))),
        ("suser", _label(actor.get("type"), actor.get("id"))),
        ("suid", _text(actor.get("id"))),
        ("spriv", _text(actor.get("role"))),
        ("duser", target[0]),
        ("duid", target[1]),
        ("sourceServiceName", _text(event.get("source"))),
        ("src", None if ipv6 else peer),
        ("requestMethod", http.group(1) if http else None),
        ("request", http.group(2) if http else None),
        ("reason", _text(event.get("reason"))),
        ("msg", _text(details) if details else None),
        ("cn1Label", "logIndex"),
        ("cn1", str(log_index)),
        *(
            [("cfp1Label", "riskScore"), ("cfp1", _text(float(risk)))]
            if isinstance(risk, int | float) and not isinstance(risk, bool)
            else []
        ),
        *_custom("cs1", "initiatingHuman", _text(event.get("initiating_human"))),
        *_custom(
            "cs2",
            "delegationChain",
            ",".join(str(a) for a in chain) if isinstance(chain, list) else _text(chain),
        ),
        *_custom("cs3", "decisionId", _text(event.get("decision_id"))),
        *_custom("cs4", "policyVersion", _text(event.get("policy_version"))),
        *_custom("cs5", "traceId", _text(trace.get("trace_id"))),
        *_custom("cs6", "resource", _label(resource.get("type"), resource.get("id"))),
        *_custom("flexString1", "spanId", _text(trace.get("span_id"))),
        *_custom("c6a2", "Source IPv6 Address", peer if ipv6 else None),
    ]


def _custom(key: str, label: str, value: str | None) -> list[tuple[str, str | None]]:
    return [(f"{key}Label", label), (key, value)] if value else []


def cef(log_index: int, event: Mapping[str, Any]) -> str:
    """One trail entry as one CEF:0 line (no syslog prefix; the transport adds it)."""
    event_type = _text(event.get("type")) or "unknown"
    header = [
        "CEF:0",
        "AgentIAM",
        "AgentIAM",
        escape_header(__version__),
        escape_header(event_type),
        escape_header(NAMES.get(event_type, event_type)),
        str(_CEF_SEVERITY.get(severity_id(event), 0)),
    ]
    extension = " ".join(
        f"{key}={escape_extension(value)}" for key, value in _pairs(log_index, event) if value
    )
    return "|".join(header) + "|" + extension
