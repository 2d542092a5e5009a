"""The policy question of one guarded MCP request: the one definition every MCP
enforcement point decides with, the MCP gateway's
(:mod:`~agentiam.adapters.gateway.mcp_proxy`) and the in-process guard's
(:mod:`~agentiam.adapters.gateway.guard_mcp`).

MCP 2026-07-28 "Tools", "Resources" and "Prompts" (``tools/call``, ``resources/read``,
``prompts/get``) map to Cedar as the listings do
(:mod:`~agentiam.adapters.gateway.mcp_visibility`): a tool call is ``invoke_tool`` on
``Tool::"<name>"`` with its arguments as ``context.args``; a resource read ``read`` on
``DataSet::"<uri>"``, the URI in canonical form (RFC 3986 section 6.2.2,
:func:`~agentiam.adapters.gateway.mcp_visibility.canonical_uri`), which is also what
is read; a prompt ``read`` on ``DataSet::"prompt:<name>"`` with its
arguments as ``context.args``. A policy denial of a read or a prompt is a JSON-RPC
error with code :data:`POLICY_DENIED`. :func:`read_call` is the one place a read's
request is checked (the URI and name bounds), for the gateway (which routes exposed
names to its servers) and the guard (which does not).

MCP 2026-07-28 "Completion" (``completion/complete``, served by the in-process guard's
servers and relayed by the MCP gateway) asks the question the listing asks of the
referenced prompt or resource template (:meth:`Listed.question
<agentiam.adapters.gateway.mcp_visibility.Listed.question>`, ``context.args`` empty):
:func:`completion_call`, routed by the gateway as its reads are.

This module needs no MCP SDK: the guard imports it whether or not the ``mcp`` extra is
installed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, TypeGuard

from agentiam.adapters.gateway.enforcer import Call
from agentiam.adapters.gateway.mcp_visibility import (
    MAX_URI,
    PROMPT_ID_PREFIX,
    READ_ACTION,
    TOOL_ACTION,
    Listed,
    ListedKind,
    in_server,
    resource_uris,
)
from agentiam.core.delegation.authorization_details import ApiCall, CustomCall, ToolCall
from agentiam.core.policy.model import EntityRef

__all__ = [
    "COMPLETE_METHOD",
    "MAX_ARGUMENTS",
    "MAX_NAME",
    "POLICY_DENIED",
    "READ_METHODS",
    "Route",
    "completion_call",
    "completion_ref",
    "named_call",
    "prompt_call",
    "read_call",
    "resource_call",
    "tool_call",
]

POLICY_DENIED: Final = -32003  # JSON-RPC server error: refused by the gateway's policy
MAX_NAME: Final = 256  # characters of an exposed tool or prompt name
MAX_ARGUMENTS: Final = 256  # top-level arguments of one call
READ_METHODS: Final = frozenset({"resources/read", "prompts/get"})
COMPLETE_METHOD: Final = "completion/complete"
# no built-in authorization_details type covers a prompt or a resource template (a
# listing shows neither to a task-scoped token): their calls are of these types
PROMPT_DETAIL: Final = "mcp_prompt"
TEMPLATE_DETAIL: Final = "mcp_resource_template"

Route = Callable[[str], tuple[str, str] | None]
"""Where an exposed name or URI goes: ``(server, upstream name)``, or None when it is
no server's (the MCP gateway's :meth:`Namespace.route
<agentiam.adapters.gateway.mcp_proxy.Namespace.route>`)."""


def tool_call(
    exposed: str, arguments: Mapping[str, Any], *, location: str, server: str | None = None
) -> Call:
    """``tools/call``: ``invoke_tool`` on ``Tool::"<exposed>"``, in
    ``McpServer::"<server>"`` (the server the gateway routes it to); the arguments are
    ``context.args``; the token's ``tool_invocation`` entries are matched with the
    gateway's ``public_url`` as the location (RFC 9396). A listed tool is in its
    server in the gateway's snapshot already (its derived record), so placing it
    costs the decision nothing; the call carries the parent so that whoever decides
    it again (the control plane opening or using an approval for it) places it alike,
    and so that it is forwarded only to where it was decided (:meth:`Call.decided_in`)."""
    return Call(
        action=TOOL_ACTION,
        resource=EntityRef("Tool", exposed),
        detail=ToolCall(tool=exposed, arguments=dict(arguments), location=location),
        tool=exposed,
        args=dict(arguments),
        resource_parents=in_server(server) if server is not None else (),
    )


def resource_call(exposed_uri: str, upstream_uri: str, server: str | None = None) -> Call:
    """``resources/read``: ``read`` on ``DataSet::"<exposed uri>"``, in
    ``McpServer::"<server>"`` (the server the gateway routes it to) whatever the
    catalog says; a task-scoped token needs an ``api_access`` entry with action
    ``read`` covering the upstream URI (only http(s) URIs can be covered)."""
    return Call(
        action=READ_ACTION,
        resource=EntityRef("DataSet", exposed_uri),
        detail=ApiCall(action=READ_ACTION, url=upstream_uri),
        tool=exposed_uri,
        args=None,
        resource_parents=in_server(server) if server is not None else (),
    )


def prompt_call(exposed: str, arguments: Mapping[str, str], server: str | None = None) -> Call:
    """``prompts/get``: ``read`` on ``DataSet::"prompt:<exposed>"``, in
    ``McpServer::"<server>"`` whatever the catalog says, with the prompt arguments as
    ``context.args``. No built-in ``authorization_details`` type covers prompts, so a
    task-scoped token cannot get one."""
    return Call(
        action=READ_ACTION,
        resource=EntityRef("DataSet", PROMPT_ID_PREFIX + exposed),
        detail=CustomCall(type=PROMPT_DETAIL, values={"prompt": exposed}),
        tool=exposed,
        args=dict(arguments),
        resource_parents=in_server(server) if server is not None else (),
    )


def _is_name(value: object) -> TypeGuard[str]:
    """Whether ``value`` is a name a request may carry: a string of 1 to
    :data:`MAX_NAME` characters (a tool's, a prompt's, a completed argument's)."""
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME


def named_call(params: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | str:
    """The ``name`` and ``arguments`` of a ``tools/call`` or ``prompts/get`` (MCP
    2026-07-28 "Tools", "Prompts"), or why they are malformed: a name of at most
    :data:`MAX_NAME` characters, an object of at most :data:`MAX_ARGUMENTS` members
    (absent: none)."""
    name = params.get("name")
    if not _is_name(name):
        return f"params.name: a name of at most {MAX_NAME} characters"
    arguments = params.get("arguments")
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict) or len(arguments) > MAX_ARGUMENTS:
        return f"params.arguments: an object of at most {MAX_ARGUMENTS} members"
    return name, arguments


def _uri(uri: Any, where: str) -> str | None:
    """Why ``uri`` (a resource's URI or template) is malformed, or None: at most
    :data:`MAX_URI` characters, not starting with ``prompt:`` (it would be decided
    as that prompt's entity)."""
    if not isinstance(uri, str) or not uri or len(uri) > MAX_URI:
        return f"{where}: a URI of at most {MAX_URI} characters"
    if uri.startswith(PROMPT_ID_PREFIX):
        return f'{where}: a URI starting with "{PROMPT_ID_PREFIX}" names a prompt'
    return None


def read_call(method: str, params: Any, route: Route | None = None) -> Call | str:
    """The policy question of a ``resources/read`` or ``prompts/get`` (``method``, one of
    :data:`READ_METHODS`), or why the request is malformed, with the gateway's bounds:
    ``params`` an object (JSON-RPC 2.0 section 4.2 also allows an array; MCP's are
    objects), a URI of at most :data:`MAX_URI` characters that does not start with
    ``prompt:`` (it would be decided as that prompt's entity), a prompt name of at
    most :data:`MAX_NAME` characters, at most :data:`MAX_ARGUMENTS` string arguments.

    A resource's URI is decided, and must be read, in canonical form (RFC 3986
    section 6.2.2: :func:`~agentiam.adapters.gateway.mcp_visibility.resource_uris`):
    the SDK's URI template match percent-decodes the variables, so
    ``file:///users/%61dmin`` reads what ``file:///users/admin`` does and is
    decided as it. The call's :attr:`~Call.tool` is the canonical exposed URI, its
    ``api_access`` URL the canonical upstream one: the enforcement point reads that
    (the guard hands it to the SDK, the gateway forwards it). A URI with a ``%`` not
    followed by two hex digits is malformed; the bounds hold for the URI as sent
    and for its canonical form.

    ``route`` places the exposed URI or name in its server (``McpServer`` parent) and
    gives the upstream URI a task-scoped token is checked against (the MCP gateway's
    namespace); without it (the guard's server exposes its own names), or where it
    finds no server, the URI is its own upstream one and nothing is placed."""
    if method not in READ_METHODS:
        raise ValueError(f"not a read: {method}")
    if not isinstance(params, Mapping):
        return "params: an object"
    if method == "resources/read":
        uri = params.get("uri")
        malformed = _uri(uri, "params.uri")
        if malformed is not None:
            return malformed
        assert isinstance(uri, str)
        routed = route(uri) if route is not None else None
        uris = resource_uris(uri, routed[1] if routed is not None else uri)
        if uris is None:
            return "params.uri: a URI whose every '%' starts a percent-encoding (RFC 3986)"
        exposed, upstream = uris
        malformed = _uri(exposed, "params.uri")
        if malformed is not None:
            return malformed
        return resource_call(exposed, upstream, routed[0] if routed is not None else None)
    named = named_call(params)
    if isinstance(named, str):
        return named
    name, arguments = named
    if not all(isinstance(v, str) for v in arguments.values()):
        return "params.arguments: prompt arguments are strings"
    routed = route(name) if route is not None else None
    return prompt_call(name, arguments, routed[0] if routed is not None else None)


def completion_ref(params: Mapping[str, Any]) -> tuple[ListedKind, str] | str:
    """What a ``completion/complete`` (MCP 2026-07-28 "Completion") references: the
    kind of item (``prompt`` for a ``ref/prompt``, ``template`` for a ``ref/resource``)
    and its name or URI template as the client sent it, or why ``params.ref`` is
    malformed: not a ``ref/prompt`` with a name of at most :data:`MAX_NAME`
    characters or a ``ref/resource`` with a URI as :func:`read_call` takes one."""
    ref = params.get("ref")
    if not isinstance(ref, Mapping) or ref.get("type") not in ("ref/prompt", "ref/resource"):
        return 'params.ref: an object of type "ref/prompt" or "ref/resource"'
    if ref["type"] == "ref/prompt":
        name = ref.get("name")
        if not _is_name(name):
            return f"params.ref.name: a name of at most {MAX_NAME} characters"
        return "prompt", name
    uri = ref.get("uri")
    malformed = _uri(uri, "params.ref.uri")
    if malformed is not None:
        return malformed
    assert isinstance(uri, str)
    return "template", uri


def completion_call(params: Mapping[str, Any], route: Route | None = None) -> Call | str:
    """The policy question of a ``completion/complete`` (MCP 2026-07-28 "Completion"),
    or why the request is malformed: the question the listing asks of the item the
    request references (:meth:`Listed.question
    <agentiam.adapters.gateway.mcp_visibility.Listed.question>`), so that an agent is
    offered completions exactly for what its listings show it: ``read`` on
    ``DataSet::"prompt:<name>"`` for a ``ref/prompt``, on ``DataSet::"<uri template>"``
    for a ``ref/resource``, with ``context.args`` empty. The argument being completed
    is not ``context.args``: its value is a prefix being typed, not a value the prompt
    or resource will be read with (that read is decided with its own arguments).
    A task-scoped token is checked against entries no built-in type has (as a listing
    shows it no prompt or template). The rate-limit key (:attr:`Call.tool`) is
    :data:`COMPLETE_METHOD`, so that typing does not spend the budget of the prompt's
    own reads.

    ``route`` places the referenced item in its server (``McpServer`` parent), as
    :func:`read_call` places a read and as the gateway's listing places the item (the
    MCP gateway's namespace); without it (the guard's server names its own items), or
    where it finds no server, nothing is placed.

    Malformed: ``params.ref`` as :func:`completion_ref` says; ``params.argument`` not
    an object with a string ``name`` (1 to :data:`MAX_NAME` characters) and a string
    ``value`` (at most :data:`MAX_URI` characters: a template's variable is part of a
    URI of at most that many); ``params.context.arguments`` present and not an object
    of at most :data:`MAX_ARGUMENTS` strings."""
    referenced = completion_ref(params)
    if isinstance(referenced, str):
        return referenced
    kind, item = referenced
    routed = route(item) if route is not None else None
    server, upstream = routed if routed is not None else (None, item)
    listed = Listed(kind, item, upstream, server)
    if kind == "prompt":
        detail = CustomCall(type=PROMPT_DETAIL, values={"prompt": item})
    else:
        detail = CustomCall(type=TEMPLATE_DETAIL, values={"uri_template": item})
    argument = params.get("argument")
    if (
        not isinstance(argument, Mapping)
        or not _is_name(argument.get("name"))
        or not isinstance(value := argument.get("value"), str)
        or len(value) > MAX_URI
    ):
        return (
            f"params.argument: an object with a string name of at most {MAX_NAME} "
            f"characters and a string value of at most {MAX_URI}"
        )
    context = params.get("context")
    resolved = context.get("arguments") if isinstance(context, Mapping) else None
    if (context is not None and not isinstance(context, Mapping)) or (
        resolved is not None
        and (
            not isinstance(resolved, Mapping)
            or len(resolved) > MAX_ARGUMENTS
            or not all(isinstance(v, str) for v in resolved.values())
        )
    ):
        return f"params.context.arguments: an object of at most {MAX_ARGUMENTS} strings"
    action, resource, parents = listed.question()
    return Call(
        action=action,
        resource=resource,
        detail=detail,
        tool=COMPLETE_METHOD,
        args={},
        resource_parents=parents,
    )
