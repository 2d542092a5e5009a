"""The in-process guard for MCP servers built with the official MCP Python SDK
(``MCPServer``, formerly ``FastMCP``; the ``mcp`` extra).

:class:`GuardMiddleware` is an SDK server middleware: it sees every ``tools/call``,
``resources/read`` and ``prompts/get`` before the tool, resource or prompt function
runs, whichever it is and whenever it was registered, and decides it with
:class:`~agentiam.adapters.gateway.guard.Guard`::

    server = MCPServer("tools")
    guard.protect(server)              # or MCPServer(..., middleware=[GuardMiddleware(guard)])

    @server.tool()
    def search(query: str) -> list[str]: ...

The tool name and the arguments as the client sent them are the call
(``Tool::"<name>"``, ``context.args``); a read is decided as the MCP gateway decides
it (:mod:`~agentiam.adapters.gateway.mcp_calls`, MCP 2026-07-28 "Resources" and
"Prompts"): ``read`` on ``DataSet::"<uri>"`` (a templated resource's concrete URI,
in canonical form, RFC 3986 section 6.2.2: the SDK's template match decodes
``%61dmin`` to ``admin``, so it is decided as ``admin`` and the SDK is handed the
canonical URI to read) or on ``DataSet::"prompt:<name>"`` with the prompt's arguments
as ``context.args``. The principal is, with ``principal="auto"``:

* **over HTTP** (Streamable HTTP), the agent that sent the request: its
  ``Authorization: DPoP <token>`` and ``DPoP`` proof are verified exactly as a
  gateway verifies them (RFC 9449 section 7: the proof's ``htm``/``htu`` are this
  request's, its ``ath`` the token's hash, its key the token's ``cnf.jkt``; RFC 9068:
  the audience is the guard's ``resource``). The guard's own token is never used for
  an HTTP request, so an unauthenticated caller cannot act as the agent.
* **over stdio or in memory**, the guard's configured token (the agent's own): the
  server runs inside, or as a child of, the agent.

``principal="request"`` or ``"configured"`` forces one. The SDK's own bearer-token
auth (``AuthSettings`` + ``TokenVerifier``) is not used: it takes only ``Bearer``
tokens and never sees the DPoP proof, so it would accept a stolen DPoP-bound token.

A refused call is answered with a tool error result (``isError: true``) naming the
reason and the decision id (``_meta["dev.agentiam/refusal"]``); the tool does not run.
A tool that answers ``isError: true`` is recorded as failed (``tool_error``). Results
the guard answers itself carry the SDK's ``serverInfo`` ``_meta`` stamp on a
2026-07-28 connection when the middleware was installed with ``guard.protect(server)``
(or :meth:`GuardMiddleware.install`), which tells it the server.

A read is decided, rate-limited and audited as a call is: a token from the agent's
buckets (and the per-tool one, keyed by the URI or prompt name), the decision event
durable before the function runs, a ``tool.call`` outcome event after it (a function
that raises is recorded as failed with the exception's class). A refused read is a
JSON-RPC error, as the gateway's, with ``data["dev.agentiam/refusal"]`` (``error``,
``reason``, ``decision_id``): ``-32003`` (the gateway's ``POLICY_DENIED``) for a
policy deny, ``-32602`` for a malformed request (a URI over 500 characters or
starting with ``prompt:``, a prompt name over 256 characters, non-string prompt
arguments: audited with status 400), ``-32603`` for the guard's own state (past the
outage bound, the spool), else ``-32600`` (no or a bad token, the rate limit, the
token's task scope); the function does not run. No human's approval is asked for a
read, as at the gateway (which asks for ``tools/call`` only): a deny an approval
would lift is refused, its reason saying so. A ``resources/read`` result is never
cacheable beyond this caller (SEP-2549: ``ttlMs: 0``, ``cacheScope: private``).

``tools/list``, ``resources/list``, ``resources/templates/list`` and ``prompts/list``
show each caller only what policy lets it call or read, decided as the MCP gateway
decides its listings (:meth:`Guard.visible
<agentiam.adapters.gateway.guard.Guard.visible>`,
:class:`~agentiam.adapters.gateway.mcp_visibility.Visibility`: a call or read without
arguments, ``context.args`` empty, and the token's ``authorization_details``; a
template is asked as ``DataSet::"<uri template>"``), for the same principal as a
call. Each listing takes a token from the agent's rate-limit bucket (the caller is
authenticated and admitted before the server's listing handler runs) and is one
``mcp.list`` audit event (its action the method), durable before the answer; the
result is never cacheable beyond this caller (SEP-2549: ``ttlMs: 0``, ``cacheScope:
private``). A listing the guard refuses (no or a bad token, the rate limit, past the
outage bound, its event not durable) is a JSON-RPC error (``-32603`` for the guard's
own state, else ``-32600``) with ``data["dev.agentiam/refusal"]``, and shows nothing.
Hidden items are still decided per call or read: calling a hidden tool, reading a
hidden resource or getting a hidden prompt by name is refused as any denied one is.

A call that waits for a human's approval (docs/approvals.md) is answered as the MCP
gateway answers it: a tool error result whose ``_meta["agentiam/approval"]`` names
the approval, its state and ``retry_after``
(:func:`agentiam.core.approvals_wire.mcp_result_meta`); the client retries the same
call with ``params._meta["agentiam/approval"]`` set to the approval id, which the
guard uses for exactly that call, once (``AgentClient.mcp_session(approval_wait=…)``
does this by itself).

A ``completion/complete`` (MCP 2026-07-28 "Completion": argument suggestions, which a
server answers when it registers a completion handler, ``@server.completion()``) is
decided before the handler runs, as the listing decides the item it references
(:meth:`Guard.complete <agentiam.adapters.gateway.guard.Guard.complete>`: ``read`` on
``DataSet::"prompt:<name>"`` for a ``ref/prompt``, on ``DataSet::"<uri template>"``
for a ``ref/resource``, ``context.args`` empty), so a caller is offered completions
exactly for what its listings show it. It takes a token from the agent's rate-limit
buckets (the per-tool one keyed ``completion/complete``) and is one ``authz.decision``
event, durable before the handler runs (no ``tool.call`` outcome follows). A refusal
is a JSON-RPC error as a refused read's (``-32602`` for a malformed ``ref``,
``argument`` or ``context``, audited with status 400), and the handler does not run.

Not done: an authentication failure is a tool error (or, for a listing, a read or a
completion, a JSON-RPC error), not an HTTP 401 challenge; a policy change does not send
``notifications/*/list_changed`` (the next listing shows it). Not guarded:
``resources/subscribe``, which ``MCPServer`` does not serve (nor does the MCP gateway).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import anyio.to_thread
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    SERVER_INFO_META_KEY,
    CallToolResult,
    Implementation,
    TextContent,
)
from mcp_types.methods import is_input_required, serialize_server_result
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel

from agentiam.adapters.gateway.guard import (
    ApprovalRefusal,
    Authenticate,
    Guard,
    GuardedCall,
    Principal,
    ToolCallDenied,
)
from agentiam.adapters.gateway.mcp_calls import COMPLETE_METHOD, POLICY_DENIED, READ_METHODS
from agentiam.adapters.gateway.mcp_visibility import Listed, ListedKind
from agentiam.core.approvals_wire import META_KEY, mcp_result_meta, mcp_result_text
from agentiam.core.audit.events import TraceContext
from agentiam.core.credentials.verifier import VerifiedAccess

__all__ = ["REFUSAL_META", "GuardMiddleware"]

REFUSAL_META = "dev.agentiam/refusal"

# each MCP listing (MCP 2026-07-28 "Tools", "Resources", "Prompts"): the result's
# member holding the items, the member naming an item, and what an item is to policy
_LISTINGS: dict[str, tuple[str, str, ListedKind]] = {
    "tools/list": ("tools", "name", "tool"),
    "resources/list": ("resources", "uri", "resource"),
    "resources/templates/list": ("resourceTemplates", "uriTemplate", "template"),
    "prompts/list": ("prompts", "name", "prompt"),
}


class GuardMiddleware:
    """An ``mcp`` server middleware (``ServerMiddleware[Any]``) guarding every
    ``tools/call``, ``resources/read``, ``prompts/get`` and ``completion/complete`` and
    showing each caller, in the four listings, only what it may call or read; see the
    module doc."""

    def __init__(
        self, guard: Guard, *, principal: Principal = "auto", public_url: str | None = None
    ) -> None:
        """``public_url`` is the MCP endpoint's URL as clients reach it (the ``htu``
        their proofs name), when a proxy in front changes scheme or host; by default
        the request's own URL."""
        if principal not in ("auto", "request", "configured"):
            raise ValueError('principal: "auto", "request" or "configured"')
        self.guard = guard
        self.principal = principal
        self.public_url = public_url
        self.server_info: dict[str, Any] | None = None  # taken by install()

    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        if ctx.method in _LISTINGS and ctx.request_id is not None:
            return await self._listing(ctx, call_next)
        if ctx.method in READ_METHODS and ctx.request_id is not None:
            return await self._read(ctx, call_next)
        if ctx.method == COMPLETE_METHOD and ctx.request_id is not None:
            return await self._complete(ctx, call_next)
        if ctx.method != "tools/call" or ctx.request_id is None:
            return await call_next(ctx)
        params = ctx.params or {}
        if not isinstance(params, Mapping):  # a JSON array: the SDK refuses it, no tool runs
            return await call_next(ctx)
        name = params.get("name")
        arguments = params.get("arguments")
        if arguments is None:
            arguments = {}
        if not isinstance(name, str) or not isinstance(arguments, Mapping):
            return await call_next(ctx)  # malformed: the SDK refuses it before any tool runs
        meta = params.get("_meta")
        approval = meta.get(META_KEY) if isinstance(meta, Mapping) else None
        try:
            if approval is not None and not isinstance(approval, str):
                raise ValueError(f'params._meta["{META_KEY}"]: an approval id')
            guarded = self._guarded(ctx, name, arguments, approval)
        except ValueError as exc:  # a tool name the guard cannot record, a bad approval id
            return self._stamp(ctx, _refusal(ctx, name, str(exc), "invalid_request", None))
        try:
            await guarded.__aenter__()
        except ApprovalRefusal as waiting:
            return self._stamp(ctx, _approval_result(ctx, name, waiting))
        except ToolCallDenied as denied:
            refusal = _refusal(ctx, name, denied.reason, denied.error, denied.decision_id)
            return self._stamp(ctx, refusal)
        try:
            result = await call_next(ctx)
        except BaseException as exc:
            await guarded.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        if _is_error(result):
            guarded.fail("tool_error")
        await guarded.__aexit__(None, None, None)
        return result

    async def _listing(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        """A listing (``tools/list``, ``resources/list``, ``resources/templates/list``,
        ``prompts/list``): the server's, showing only what this caller may call or
        read (:meth:`Guard.visible`, the MCP gateway's listing decision), never
        cacheable beyond this caller (SEP-2549 ``ttlMs: 0``, ``cacheScope:
        private``). The caller is authenticated and admitted (its rate limit)
        before the server's listing handler runs (:meth:`Guard.admit_listing`), then
        the items are decided (:meth:`Guard.shown`). A listing the guard refuses (no
        or a bad token, the rate limit, past the outage bound, its ``mcp.list`` event
        not durable) is a JSON-RPC error and shows nothing, as the gateway's."""
        method = ctx.method
        member, key, kind = _LISTINGS[method]
        if self._mode(ctx) == "configured":
            admit = functools.partial(self.guard.admit_listing, method)
        else:
            authenticate = self._from_request(ctx.request)
            admit = functools.partial(self.guard.admit_listing, method, authenticate=authenticate)
        try:
            # the caller first (cheap): the listing handler, user code on a low-level
            # Server, never runs for one who may not list
            admitted = await anyio.to_thread.run_sync(admit)
        except ToolCallDenied as denied:
            raise _mcp_error(denied, "the listing") from None
        result = await call_next(ctx)  # the SDK's own listing: it runs no tool or read
        listing = _as_dict(result)
        found = listing.get(member)
        if not isinstance(found, list):
            raise MCPError(INTERNAL_ERROR, "the listing could not be read; it was refused")
        named = [t for t in found if isinstance(t, Mapping) and isinstance(t.get(key), str)]
        items = [Listed(kind, str(t[key]), str(t[key])) for t in named]
        try:
            flags = await anyio.to_thread.run_sync(self.guard.shown, admitted, items)
        except ToolCallDenied as denied:
            raise _mcp_error(denied, "the listing") from None
        listing[member] = [t for t, ok in zip(named, flags, strict=True) if ok]
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            listing["ttlMs"], listing["cacheScope"] = 0, "private"
        return listing

    async def _read(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        """``resources/read`` or ``prompts/get``, decided before the server's resource
        or prompt function runs (:meth:`Guard.read`, the MCP gateway's decision). A
        refusal is a JSON-RPC error, as the gateway's: :data:`POLICY_DENIED` for a
        policy deny, else as a refused listing (``-32602`` for a malformed request),
        with ``data["dev.agentiam/refusal"]``. A read's result depends on the
        caller's rights: never cacheable beyond it (SEP-2549)."""
        method = ctx.method
        params = ctx.params or {}
        if self._mode(ctx) == "configured":
            guarded = self.guard.read(method, params)
        else:
            guarded = self.guard.read(method, params, authenticate=self._from_request(ctx.request))
        what = "this read" if method == "resources/read" else "this prompt"
        try:
            await guarded.__aenter__()
        except ToolCallDenied as denied:
            raise _mcp_error(denied, what) from None
        if method == "resources/read" and params.get("uri") != guarded.tool:
            # decided on the canonical URI (Guard.read): the SDK reads that one, not
            # the spelling its template match would decode to the same resource
            ctx = dataclasses.replace(ctx, params={**params, "uri": guarded.tool})
        try:
            result = await call_next(ctx)
        except BaseException as exc:
            await guarded.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        await guarded.__aexit__(None, None, None)
        if method == "resources/read" and ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            read = _as_dict(result)
            if not is_input_required(read):  # an interim result has no cache hints
                read["ttlMs"], read["cacheScope"] = 0, "private"
            return read
        return result

    async def _complete(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        """``completion/complete`` (MCP 2026-07-28 "Completion"), decided before the
        server's completion handler runs (:meth:`Guard.complete`: the question the
        listing asks of the referenced prompt or resource template). A refusal is a
        JSON-RPC error as a refused read's (``-32602`` for a malformed request,
        :data:`POLICY_DENIED` for a policy deny), and the handler does not run."""
        params = ctx.params or {}
        if self._mode(ctx) == "configured":
            complete = functools.partial(self.guard.complete, params)
        else:
            authenticate = self._from_request(ctx.request)
            complete = functools.partial(self.guard.complete, params, authenticate=authenticate)
        try:
            await anyio.to_thread.run_sync(complete)
        except ToolCallDenied as denied:
            raise _mcp_error(denied, "this completion") from None
        return await call_next(ctx)

    def _mode(self, ctx: ServerRequestContext[Any, Any]) -> Principal:
        """Whose token decides: ``request`` (the HTTP caller's) or ``configured``."""
        if self.principal != "auto":
            return self.principal
        request = ctx.request
        return "request" if request is not None and hasattr(request, "headers") else "configured"

    def _guarded(
        self,
        ctx: ServerRequestContext[Any, Any],
        name: str,
        arguments: Mapping[str, Any],
        approval: str | None,
    ) -> GuardedCall:
        if self._mode(ctx) == "configured":
            return self.guard.call(name, arguments, approval=approval)
        return self.guard.call(
            name, arguments, authenticate=self._from_request(ctx.request), approval=approval
        )

    def _from_request(self, request: Any) -> Authenticate:
        enforcer = self.guard.enforcer
        if request is None or not hasattr(request, "headers"):

            def no_request(trace: TraceContext) -> VerifiedAccess:
                return enforcer.authenticate(
                    authorization=[], dpop=[], method="POST", url="", trace=trace
                )

            return no_request
        authorization = list(request.headers.getlist("authorization"))
        dpop = list(request.headers.getlist("dpop"))
        method = str(request.method)
        url = self.public_url or str(request.url)

        def from_request(trace: TraceContext) -> VerifiedAccess:
            return enforcer.authenticate(
                authorization=authorization, dpop=dpop, method=method, url=url, trace=trace
            )

        return from_request

    def install(self, server: Any) -> None:
        """Append to ``server.middleware`` (an ``MCPServer`` or low-level ``Server``),
        and take its ``serverInfo`` for the results the guard answers itself."""
        server.middleware.append(self)
        self.server_info = Implementation(
            name=server.name,
            version=server.version,
            title=server.title,
            description=server.description,
            website_url=server.website_url,
            icons=server.icons,
        ).model_dump(by_alias=True, mode="json", exclude_none=True)

    def _stamp(self, ctx: ServerRequestContext[Any, Any], result: dict[str, Any]) -> dict[str, Any]:
        """``result`` (one the guard answers itself: a middleware that answers owns
        its envelope) with the SDK's ``serverInfo`` ``_meta`` stamp, as the SDK stamps
        its handlers' results (MCP 2026-07-28, spec #3002); handshake-era results have
        none, and neither has a middleware that was not installed (no server known)."""
        if self.server_info is not None and ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            meta = result.get("_meta")
            result["_meta"] = {
                **(meta if isinstance(meta, dict) else {}),
                SERVER_INFO_META_KEY: copy.deepcopy(self.server_info),
            }
        return result


def _mcp_error(denied: ToolCallDenied, what: str) -> MCPError:
    """A refusal of a listing, a read or a completion as a JSON-RPC error, in the MCP
    gateway's codes: a policy deny (a decision id) :data:`POLICY_DENIED`, a malformed
    request ``INVALID_PARAMS``, the guard's own state (5xx) ``INTERNAL_ERROR``, else (no
    or a bad token, the rate limit, the token's task scope) ``INVALID_REQUEST``; the
    reason, its wire code and the decision id in ``data["dev.agentiam/refusal"]``."""
    if denied.decision_id is not None:
        code = POLICY_DENIED
    elif denied.refusal_status >= 500:
        code = INTERNAL_ERROR
    elif denied.error == "invalid_request":
        code = INVALID_PARAMS
    else:
        code = INVALID_REQUEST
    refusal = {"error": denied.error, "reason": denied.reason, "decision_id": denied.decision_id}
    return MCPError(code, f"AgentIAM refused {what}: {denied.reason}", {REFUSAL_META: refusal})


def _as_dict(result: HandlerResult) -> dict[str, Any]:
    """A result as its wire members (the SDK's handlers hand the chain a dict already)."""
    if isinstance(result, BaseModel):
        return result.model_dump(by_alias=True, mode="json", exclude_none=True)
    return dict(result or {})


def _is_error(result: HandlerResult) -> bool:
    if isinstance(result, Mapping):
        return result.get("isError") is True
    return getattr(result, "is_error", False) is True


def _approval_result(
    ctx: ServerRequestContext[Any, Any], tool: str, waiting: ApprovalRefusal
) -> dict[str, Any]:
    """The tool error result of a call that waits on (or was refused by) a human's
    approval, in the MCP gateway's wire shape."""
    meta = mcp_result_meta(
        waiting.approval_id,
        waiting.approval_state,
        expires_at=waiting.expires_at,
        retry_after=None if waiting.retry_after is None else max(1, round(waiting.retry_after)),
        status_url=waiting.status_url,
        decision_id=waiting.decision_id,
    )
    text = mcp_result_text(tool, waiting.approval_id, waiting.approval_state)
    result = CallToolResult(
        content=[TextContent(type="text", text=text)], is_error=True, _meta=meta
    )
    dumped = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    return serialize_server_result("tools/call", ctx.protocol_version, dumped)


def _refusal(
    ctx: ServerRequestContext[Any, Any],
    tool: str,
    reason: str,
    error: str,
    decision_id: str | None,
) -> dict[str, Any]:
    """A tool error result, in the wire shape of the connection's protocol version (a
    middleware that answers itself owns the result's envelope)."""
    text = f"AgentIAM refused the call to {tool}: {reason}"
    if decision_id is not None:
        text += f" (decision {decision_id})"
    result = CallToolResult(
        content=[TextContent(type="text", text=text)],
        is_error=True,
        _meta={REFUSAL_META: {"error": error, "reason": reason, "decision_id": decision_id}},
    )
    dumped = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    return serialize_server_result("tools/call", ctx.protocol_version, dumped)
