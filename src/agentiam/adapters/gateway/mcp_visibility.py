"""What an MCP listing shows one caller, and how the listing is recorded: the one
listing decision of every MCP enforcement point, the MCP gateway's
(:mod:`~agentiam.adapters.gateway.mcp_proxy`) and the in-process guard's
(:meth:`Guard.visible_tools <agentiam.adapters.gateway.guard.Guard.visible_tools>`,
used by :mod:`~agentiam.adapters.gateway.guard_mcp`).

Each listed item is asked of policy as a call to it without arguments would be (MCP
2026-07-28 "Tools", "Resources" and "Prompts": the ``*/list`` results): a tool is
``invoke_tool`` on ``Tool::"<name>"``, a resource or resource template ``read`` on
``DataSet::"<uri>"`` (a resource's URI in canonical form, :func:`canonical_uri`, as a
read of it is decided; a template's as listed), a prompt ``read`` on
``DataSet::"prompt:<name>"``. A task-scoped token (RFC 9396 ``authorization_details``)
sees only what its entries could permit.
Every listing is one ``mcp.list`` audit event (:func:`listing_event`): the names shown
(at most :data:`LISTED_NAMES`), how many were shown and hidden, and the token's ``jti``.

This module needs no MCP SDK: the guard imports it whether or not the ``mcp`` extra is
installed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from agentiam.core.audit.events import Actor, ActorType, AuditEvent, Outcome, TraceContext
from agentiam.core.credentials.verifier import VerifiedAccess
from agentiam.core.delegation.authorization_details import ApiCall, CustomCall, permits
from agentiam.core.delegation.enforcement import delegation_context
from agentiam.core.ids import is_id
from agentiam.core.policy.authorizer import Authorizer, AuthzRequest
from agentiam.core.policy.model import EntityRef

__all__ = [
    "LISTED_NAMES",
    "LISTING_METHODS",
    "LIST_EVENT",
    "MAX_URI",
    "PROMPT_ID_PREFIX",
    "READ_ACTION",
    "TOOL_ACTION",
    "Listed",
    "ListedKind",
    "Visibility",
    "canonical_uri",
    "in_server",
    "listing_event",
    "resource_uris",
]

TOOL_ACTION: Final = "invoke_tool"
READ_ACTION: Final = "read"
# a prompt's DataSet id is this and its exposed name
PROMPT_ID_PREFIX: Final = "prompt:"
LIST_EVENT: Final = "mcp.list"
MAX_URI: Final = 500  # characters of an exposed resource URI (audit ids hold 512)
LISTED_NAMES: Final = 200  # names a listing's audit event records
# the four MCP listings (MCP 2026-07-28 "Tools", "Resources", "Prompts"), decided here
# for the MCP gateway and the in-process guard alike
LISTING_METHODS: Final = frozenset(
    {"tools/list", "resources/list", "resources/templates/list", "prompts/list"}
)

ListedKind = Literal["tool", "resource", "template", "prompt"]

# RFC 3986 section 2.3 (unreserved) and 2.2 (reserved): what a URI holds as it is
_UNRESERVED: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)
_PERCENT: Final = re.compile(r"%([0-9A-Fa-f]{2})")
_STRAY_PERCENT: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def _normalised_octet(match: re.Match[str]) -> str:
    """One percent-encoded octet in canonical form (RFC 3986 section 6.2.2.2: an
    unreserved character decoded; section 6.2.2.1: the rest with upper-case hex)."""
    code = int(match.group(1), 16)
    return chr(code) if code in _UNRESERVED else f"%{code:02X}"


def canonical_uri(uri: str) -> str | None:
    """``uri`` in the one form an MCP resource is decided, listed and read as (its
    ``DataSet`` id, and what is read), or None when it is malformed: a ``%`` not
    followed by two hex digits (RFC 3986 section 2.1), or a lone surrogate.

    The part of RFC 3986 section 6.2.2's syntax-based normalisation that no one
    writes a policy in the other spelling of: percent-encodings with upper-case hex
    digits (6.2.2.1), percent-encoded unreserved characters decoded (6.2.2.2), and
    the scheme lower-cased (6.2.2.1). So ``file:///users/%61dmin``,
    ``file:///users/adm%69n`` and ``FILE:///users/admin`` are
    ``file:///users/admin``, which is what the SDK's URI template match
    (``mcp.shared.uri_template`` unquotes each variable) reads them as.

    Left as they are, because a policy names the URI as the server lists it and a
    rewritten spelling would make that policy's ``forbid`` miss: the host's case
    (``resource://MyApp/…``), characters beyond ASCII and others a URI does not
    allow unencoded (``jörg``, a space), and their percent-encodings (``j%C3%B6rg``,
    ``%20``); these spellings stay different ids (docs/policy.md: permit the URIs to
    serve, rather than forbid their spellings). Dot segments (6.2.2.3) are left as
    they are (the SDK refuses a template variable that holds ``..``). Idempotent."""
    if _STRAY_PERCENT.search(uri):
        return None
    try:
        uri.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no UTF-8 spelling
        return None
    text = _PERCENT.sub(_normalised_octet, uri)
    scheme = _SCHEME.match(text)
    if scheme is None:
        return text
    return scheme.group(0).lower() + text[scheme.end() :]


def in_server(server: str) -> tuple[EntityRef, ...]:
    """The parents every entity the gateway routes to ``server`` has in its decisions,
    whatever the catalog says: ``McpServer::"<server>"``. Tools get it from their
    derived records (:func:`~agentiam.adapters.gateway.mcp_tools.tool_records`);
    resources, resource templates and prompts, whose URIs a template makes unbounded,
    per decision (:attr:`~agentiam.core.policy.authorizer.AuthzRequest.resource_parents`),
    found in the snapshot when listed or catalogued, else through the server's
    stand-in."""
    return (EntityRef("McpServer", server),)


def resource_uris(exposed: str, upstream: str) -> tuple[str, str] | None:
    """A resource's URIs as it is decided and read: ``(exposed, upstream)`` where
    ``upstream`` (the URI at its server) is in canonical form (:func:`canonical_uri`)
    and ``exposed`` (``<prefix><upstream>``, the MCP gateway's namespacing; the guard's
    is the upstream URI itself) is the server's prefix, as configured, followed by
    it; None when the URI is malformed."""
    canonical = canonical_uri(upstream)
    if canonical is None or not exposed.endswith(upstream):
        return None
    return exposed[: len(exposed) - len(upstream)] + canonical, canonical


@dataclass(frozen=True, slots=True)
class Listed:
    """One item of an upstream listing: its kind, its exposed name (or URI, or URI
    template), its upstream one and the server that listed it (None for the guard's
    own tools, which are in no gateway's server)."""

    kind: ListedKind
    exposed: str
    upstream: str
    server: str | None = None

    def canonical(self) -> Listed | None:
        """This item as policy sees it: a resource with its URIs in canonical form
        (:func:`resource_uris`, as a read of it is decided), or None when they are
        malformed (never shown); any other kind as it is."""
        if self.kind != "resource":
            return self
        uris = resource_uris(self.exposed, self.upstream)
        if uris is None:
            return None
        return Listed(self.kind, uris[0], uris[1], self.server)

    def question(self) -> tuple[str, EntityRef, tuple[EntityRef, ...]]:
        """What a listing asks policy about it: the action, the entity, and the
        parents the entity has whatever the catalog says (a gateway tool's come from
        its derived record, :mod:`~agentiam.adapters.gateway.mcp_tools`)."""
        if self.kind == "tool":
            return TOOL_ACTION, EntityRef("Tool", self.exposed), ()
        parents = in_server(self.server) if self.server is not None else ()
        if self.kind == "prompt":
            return READ_ACTION, EntityRef("DataSet", PROMPT_ID_PREFIX + self.exposed), parents
        return READ_ACTION, EntityRef("DataSet", self.exposed), parents


def _without_arguments(details: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``tool_invocation`` entries without their argument constraints: a listing asks
    whether the tool may be called at all; the arguments are checked per call."""
    return [{k: v for k, v in entry.items() if k != "arguments"} for entry in details]


class Visibility:
    """Which listed items one caller may see.

    Each item is one Cedar decision without arguments (``context.args`` empty), so a
    permit that depends on arguments hides its tool from listings; write argument
    limits as ``forbid ... when { context.args has x && ... }`` to keep the tool listed.
    A task-scoped token (``authorization_details``) also sees only what its entries
    could permit. Decisions are the live authorizer's what-if questions
    (``count=False``): they see what a call would (the agent's risk score from the
    control plane, its request rate, the control plane's time zone) and are not
    counted as calls in ``context.request_rate``.
    """

    def __init__(self, live: Callable[[], Authorizer], *, location: str) -> None:
        """``live`` gives the enforcement point's current authorizer (raising past the
        outage bound); ``location`` is its resource URI (the gateway's ``public_url``,
        the guard's ``resource``): the RFC 9396 ``locations`` a tool is served at."""
        self._live = live
        self._location = location

    def visible(self, access: VerifiedAccess, items: Sequence[Listed]) -> list[bool]:
        """One flag per item: may ``access`` see it? A resource, template or prompt is
        decided in its server's ``McpServer`` (:meth:`Listed.question`); one that
        cannot be placed there (the schema refuses its record) is denied, so hidden.
        A resource is decided on its canonical URI (:meth:`Listed.canonical`), as a
        read of it is; one whose URI is malformed is hidden."""
        if not items:
            return []
        authorizer = self._live()
        details = list(access.chain.authorization_details)
        principal = EntityRef("Agent", access.client_id)
        base = delegation_context(access)
        out: list[bool] = []
        for listed in items:
            item = listed.canonical()
            if item is None or not self._scope_permits(details, item):
                out.append(False)
                continue
            if item.kind in ("resource", "template") and item.exposed.startswith(PROMPT_ID_PREFIX):
                out.append(False)  # would alias a prompt's entity
                continue
            action, resource, parents = item.question()
            question = AuthzRequest(
                principal, action, resource, {**base, "args": {}}, resource_parents=parents
            )
            out.append(authorizer.decide(question, count=False).allowed)
        return out

    def _scope_permits(self, details: list[Mapping[str, Any]], item: Listed) -> bool:
        if not details:
            return True
        if item.kind == "tool":
            call = CustomCall(
                type="tool_invocation", values={"tools": item.exposed, "locations": self._location}
            )
            return permits(_without_arguments(details), call).allowed
        if item.kind == "resource":
            return permits(details, ApiCall(action=READ_ACTION, url=item.upstream)).allowed
        return False  # templates and prompts: no detail type covers them


def listing_event(
    access: VerifiedAccess,
    method: str,
    items: Sequence[Listed],
    flags: Sequence[bool],
    *,
    source: str,
    trace: TraceContext,
    now: datetime,
    unavailable: Sequence[str] = (),
) -> AuditEvent:
    """The ``mcp.list`` event of one listing: ``method`` (``tools/list``, ...) is its
    action; ``flags`` are :meth:`Visibility.visible`'s for ``items``; ``details``
    name what was shown (the first :data:`LISTED_NAMES`, each cut at :data:`MAX_URI`
    characters), how many items were shown and hidden, the servers whose listing
    could not be fetched (``unavailable``, the gateway's) and the token's ``jti``."""
    shown = [item.exposed[:MAX_URI] for item, ok in zip(items, flags, strict=True) if ok]
    return AuditEvent.create(
        type=LIST_EVENT,
        actor=Actor(ActorType.AGENT, access.client_id),
        action=method,
        source=source,
        trace=trace,
        now=now,
        outcome=Outcome.SUCCESS,
        agent_id=access.client_id,
        initiating_human=access.subject if is_id(access.subject, "human") else None,
        delegation_chain=tuple(access.chain.actors) or (access.client_id,),
        details={
            "shown": shown[:LISTED_NAMES],
            "shown_count": len(shown),
            "hidden_count": len(items) - len(shown),
            "unavailable_servers": list(unavailable),
            "jti": access.jti,
        },
    )
