"""The policy question of one guarded MCP request: the one definition every MCP
enforcement point decides with, the MCP gateway's
(:mod:`~agentiam.adapters.gateway.mcp_proxy`) and the in-process guard's
(:mod:`~agentiam.adapters.gateway.guard_mcp`).

MCP 2026-07-28 "Tools", "Resources" and "Prompts" (``tools/call``, ``resources/read``,
``prompts/get``) map to Cedar as the listings do
(:mod:`~agentiam.adapters.gateway.mcp_visibility`): a tool call is ``invoke_tool`` on
``Tool::"<name>"`` with its arguments as ``context.args``; a resource read ``read`` on
``DataSet::"<uri>"``; a prompt ``read`` on ``DataSet::"prompt:<name>"`` with its
arguments as ``context.args``. A policy denial of a read or a prompt is a JSON-RPC
error with code :data:`POLICY_DENIED`.

This module needs no MCP SDK: the guard imports it whether or not the ``mcp`` extra is
installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from agentiam.adapters.gateway.enforcer import Call
from agentiam.adapters.gateway.mcp_visibility import (
    MAX_URI,
    PROMPT_ID_PREFIX,
    READ_ACTION,
    TOOL_ACTION,
    in_server,
)
from agentiam.core.delegation.authorization_details import ApiCall, CustomCall, ToolCall
from agentiam.core.policy.model import EntityRef

__all__ = [
    "MAX_ARGUMENTS",
    "MAX_NAME",
    "POLICY_DENIED",
    "READ_METHODS",
    "prompt_call",
    "read_call",
    "resource_call",
    "tool_call",
]

POLICY_DENIED: Final = -32003  # JSON-RPC server error: refused by the gateway's policy
MAX_NAME: Final = 256  # characters of an exposed tool or prompt name
MAX_ARGUMENTS: Final = 256  # top-level arguments of one call
READ_METHODS: Final = frozenset({"resources/read", "prompts/get"})


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
        detail=CustomCall(type="mcp_prompt", values={"prompt": exposed}),
        tool=exposed,
        args=dict(arguments),
        resource_parents=in_server(server) if server is not None else (),
    )


def read_call(method: str, params: Mapping[str, Any]) -> Call | str:
    """The policy question of a ``resources/read`` or ``prompts/get`` (``method``, one of
    :data:`READ_METHODS`) of a server that exposes its own names (no namespace, no
    ``McpServer`` parent: the guard's), or why the request is malformed, with the
    gateway's bounds: a URI of at most :data:`MAX_URI` characters that does not start
    with ``prompt:`` (it would be decided as that prompt's entity), a prompt name of
    at most :data:`MAX_NAME` characters, at most :data:`MAX_ARGUMENTS` string
    arguments."""
    if method not in READ_METHODS:
        raise ValueError(f"not a read: {method}")
    if method == "resources/read":
        uri = params.get("uri")
        if not isinstance(uri, str) or not uri or len(uri) > MAX_URI:
            return f"params.uri: a URI of at most {MAX_URI} characters"
        if uri.startswith(PROMPT_ID_PREFIX):
            return f'params.uri: a URI starting with "{PROMPT_ID_PREFIX}" names a prompt'
        return resource_call(uri, uri)
    name = params.get("name")
    if not isinstance(name, str) or not name or len(name) > MAX_NAME:
        return f"params.name: a name of at most {MAX_NAME} characters"
    arguments = params.get("arguments")
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict) or len(arguments) > MAX_ARGUMENTS:
        return f"params.arguments: an object of at most {MAX_ARGUMENTS} members"
    if not all(isinstance(v, str) for v in arguments.values()):
        return "params.arguments: prompt arguments are strings"
    return prompt_call(name, arguments)
