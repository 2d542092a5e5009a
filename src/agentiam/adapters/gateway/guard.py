"""The in-process guard: an enforcement point inside the agent's own process, for
Python tool functions.

A guarded call is decided and audited locally, by the same parts the gateways use:
the :class:`~agentiam.adapters.gateway.link.ControlPlaneLink` (keys, revocations and
the policy bundle, pushed by the control plane; fail closed past the outage bound),
the :class:`~agentiam.adapters.gateway.enforcer.Enforcer` (rate limit, task scope,
Cedar policy) and the durable :class:`~agentiam.adapters.gateway.spool.AuditSpool`
(shipped to ``POST /v1/audit/ingest``). For every call, in order:

1. **Who.** The agent's current access token (a string, or a callable returning it)
   is verified locally as a gateway verifies it: signature against the cached JWKS,
   ``iss``, ``aud`` exactly the guard's ``resource`` (RFC 8707 section 2; RFC 9068
   section 4), ``exp``/``nbf``, and revocation, including every token, agent, human
   and grant its delegation chain derives from (RFC 8693 ``act``). The principal is
   its ``client_id``; the chain and ``authorization_details`` (RFC 9396) go into the
   decision. No token, or a bad one: the call is refused (``invalid_token``).
2. **What.** ``Call(action="invoke_tool", resource=Tool::"<name>",
   detail=ToolCall(<name>, <args>), args=<args>)``, where ``args`` are the function's
   bound arguments (defaults applied, reduced to JSON values: :func:`plain_arguments`).
   An argument with no JSON form refuses the call (``invalid_request``, 400): policy
   must see every argument it could forbid on.
3. **Decide, durably.** :meth:`Enforcer.decide`: the verdict's audit event (source
   ``guard/<name>``) is fsynced to the spool *before* the body may run. A refusal
   raises :class:`ToolCallDenied` (reason, decision id): the body never runs.
4. **Outcome.** After the body, a ``tool.call`` event records success or the
   exception's class (never its message, which may hold data) and the duration.

**MCP reads.** :meth:`Guard.read` guards a ``resources/read`` or ``prompts/get`` as
the MCP gateway decides it (:mod:`~agentiam.adapters.gateway.mcp_calls`: ``read`` on
``DataSet::"<canonical uri>"`` or ``DataSet::"prompt:<name>"``), with steps 1, 3 and 4
as for a call; no human's approval is asked for a read (as at the gateway). :meth:`Guard.complete`
decides an MCP ``completion/complete`` as the listing decides the prompt or resource
template it references, with steps 1 and 3.

**Listings.** :meth:`Guard.visible` (and :meth:`Guard.visible_tools`) says which tools,
resources, resource templates and prompts a principal may see: those a call without
arguments would be allowed, decided as the MCP gateway decides its listings
(:mod:`~agentiam.adapters.gateway.mcp_visibility`) and recorded as one ``mcp.list``
event; the MCP integration filters the four ``*/list`` results with it. A hidden item
is still decided per call or read.

**Fail closed.** If the decision cannot be made or recorded (the control plane has
been unreachable longer than the outage bound, the revocation state is stale, the
spool is full, closed or cannot fsync), the call is refused with
:class:`GuardUnavailable`, a :class:`ToolCallDenied`.

**Why no DPoP proof here.** A gateway checks that the caller holds the token's DPoP
key (RFC 9449 section 7) because the token crossed a network. The guard runs in the
process that holds that key, so a proof would be signed and checked by the same code
and prove nothing more. Tokens that arrive over HTTP (the MCP integration,
:mod:`agentiam.adapters.gateway.guard_mcp`) are checked with their proof, as a
gateway checks them. Like a gateway, the guard refuses a token that is not DPoP-bound
unless its verifier accepts Bearer tokens.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import functools
import inspect
import logging
import math
import os
import re
import shlex
import threading
import time
from collections.abc import (
    Awaitable,
    Callable,
    Collection,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, is_dataclass, replace
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar, cast, overload
from urllib.parse import urlsplit
from uuid import UUID

import anyio
import anyio.to_thread
from pydantic import BaseModel

from agentiam.adapters.gateway.approval_flow import ApprovalFlow, ApprovalOutcome
from agentiam.adapters.gateway.approvals import ApprovalClient
from agentiam.adapters.gateway.config import (
    control_plane_seconds,
    from_env,
    https_url,
    point_name,
    spool_bound,
)
from agentiam.adapters.gateway.enforcer import Call, Enforcer, Verdict
from agentiam.adapters.gateway.link import KEYS_SECONDS, ControlPlaneLink
from agentiam.adapters.gateway.mcp_calls import (
    COMPLETE_METHOD,
    READ_METHODS,
    completion_call,
    read_call,
    tool_call,
)
from agentiam.adapters.gateway.mcp_visibility import LISTING_METHODS, Listed, Visibility
from agentiam.adapters.gateway.runtime import _Shipper
from agentiam.adapters.gateway.spool import (
    DEFAULT_REJECTED_MAX_BYTES,
    REJECTED_FILE,
    AuditSpool,
    SpoolFull,
)
from agentiam.core.audit.events import (
    Outcome,
    TraceContext,
)
from agentiam.core.audit.redaction import Redactor
from agentiam.core.credentials.verifier import VerifiedAccess
from agentiam.core.enforcement.ratelimit import RateLimiter
from agentiam.core.ids import is_id
from agentiam.core.policy.values import MAX_DEPTH
from agentiam.errors import AgentIAMError, OAuthError, ServiceUnavailable

if TYPE_CHECKING:
    from agentiam.adapters.gateway.guard_mcp import GuardMiddleware

__all__ = [
    "LIST_TOOLS",
    "AdmittedListing",
    "ApprovalDenied",
    "ApprovalExpired",
    "ApprovalPending",
    "ApprovalRefusal",
    "Authenticate",
    "Guard",
    "GuardEnforcer",
    "GuardUnavailable",
    "GuardedCall",
    "Principal",
    "TokenSource",
    "ToolCallDenied",
    "plain_arguments",
]

log = logging.getLogger("agentiam.guard")

TokenSource = str | Callable[[], str]
"""The agent's current access token, or a callable returning it (called once per
guarded call, so it may refresh: ``lambda: agent.token().value``)."""

Authenticate = Callable[[TraceContext], VerifiedAccess]
"""How one call's principal is established: returns the verified access, or raises
:class:`~agentiam.errors.OAuthError` after auditing the refusal."""

Principal = Literal["auto", "request", "configured"]
"""Whose token decides a guarded MCP tool call (see ``guard_mcp``)."""

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

_TOOL = re.compile(r"^[\x21-\x7e]{1,128}$")  # printable ASCII, as the ingest accepts
LIST_TOOLS = "tools/list"  # a listing's action in the trail (Guard.visible_tools)
# why an MCP read that a human's approval would lift is refused all the same
_NO_READ_APPROVALS = "approval is asked for tool calls only, not for reads"
_MAX_DEPTH = MAX_DEPTH  # Cedar reads no deeper (plain_arguments)

_current_token: contextvars.ContextVar[TokenSource | None] = contextvars.ContextVar(
    "agentiam_guard_token", default=None
)


@dataclass(slots=True)
class _Presented:
    """An approval offered by :meth:`Guard.using_approval` to the calls of a block;
    the first call that needs approval takes it (once)."""

    approval_id: str
    taken: bool = False


_presented: contextvars.ContextVar[_Presented | None] = contextvars.ContextVar(
    "agentiam_guard_approval", default=None
)


# -- errors -------------------------------------------------------------------------------


class ToolCallDenied(AgentIAMError):
    """The guard refused a call; the function body did not run.

    ``error`` is the wire code of the refusal (``invalid_token``, ``insufficient_scope``,
    ``rate_limited``, ``temporarily_unavailable``), ``refusal_status`` the HTTP status a
    gateway would have answered (401, 403, 429, 503), ``decision_id`` the policy
    decision's id when policy decided (None for refusals before it), ``retry_after``
    the seconds to wait after a rate-limit refusal, and ``trace_id`` the call's trace
    in the audit trail.
    """

    code: ClassVar[str] = "tool-call-denied"
    title: ClassVar[str] = "Tool call denied"
    status: ClassVar[int] = 403

    def __init__(
        self,
        tool: str,
        reason: str,
        *,
        error: str = "insufficient_scope",
        refusal_status: int = 403,
        decision_id: str | None = None,
        retry_after: float | None = None,
        trace_id: str | None = None,
        hint: str | None = None,
    ) -> None:
        detail = f"the call to {tool} was refused: {reason}"
        if decision_id is not None:
            detail += f" (decision {decision_id})"
        super().__init__(detail, hint=hint)
        self.tool = tool
        self.reason = reason
        self.error = error
        self.refusal_status = refusal_status
        self.decision_id = decision_id
        self.retry_after = retry_after
        self.trace_id = trace_id


class GuardUnavailable(ToolCallDenied):
    """The guard could not decide or could not record the call, so it refused it (fail
    closed): the control plane has been unreachable past the outage bound, the
    revocation state is stale, or the audit spool cannot take the event."""

    code: ClassVar[str] = "guard-unavailable"
    title: ClassVar[str] = "Guard unavailable"
    status: ClassVar[int] = 503

    def __init__(
        self, tool: str, reason: str, *, trace_id: str | None = None, hint: str | None = None
    ) -> None:
        super().__init__(
            tool,
            reason,
            error="temporarily_unavailable",
            refusal_status=503,
            trace_id=trace_id,
            hint=hint or "Check the control plane, the guard's link to it and its audit spool.",
        )


class ApprovalRefusal(ToolCallDenied):
    """The call is a deny that a human's approval lifts (docs/approvals.md), and it has
    not (or not yet) been approved: the body did not run. ``approval_id`` names the
    approval request (``agentiam approvals show ID``), ``approval_state`` is its state
    (pending, approved, denied, expired, consumed, or mismatch: approved for another
    call), ``expires_at`` and ``status_url`` as the control plane answered."""

    code: ClassVar[str] = "approval-denied"
    title: ClassVar[str] = "Approval refused"

    def __init__(
        self,
        tool: str,
        reason: str,
        *,
        approval_id: str,
        approval_state: str,
        decision_id: str | None = None,
        expires_at: str | None = None,
        status_url: str | None = None,
        retry_after: float | None = None,
        trace_id: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(
            tool,
            reason,
            decision_id=decision_id,
            retry_after=retry_after,
            trace_id=trace_id,
            hint=hint,
        )
        self.approval_id = approval_id
        self.approval_state = approval_state
        self.expires_at = expires_at
        self.status_url = status_url


class ApprovalPending(ApprovalRefusal):
    """The call waits for a human's approval (beyond the guard's ``approval_wait``).
    Once approved, make the same call again inside
    ``with guard.using_approval(exc.approval_id):`` (or ``guard.call(...,
    approval=exc.approval_id)``); ``retry_after`` is a sensible polling interval."""

    code: ClassVar[str] = "approval-pending"
    title: ClassVar[str] = "Approval pending"


class ApprovalDenied(ApprovalRefusal):
    """A human denied the call, or the approval offered was already used or is for
    another call (``approval_state`` denied, consumed or mismatch)."""


class ApprovalExpired(ApprovalRefusal):
    """Nobody decided in time, or the approval was not used in time: a timeout denies."""

    code: ClassVar[str] = "approval-expired"
    title: ClassVar[str] = "Approval expired"


def _approval_refusal(
    tool: str,
    outcome: ApprovalOutcome,
    *,
    decision_id: str | None,
    retry_after: float,
    trace_id: str,
) -> ApprovalRefusal:
    state = outcome.state or "denied"
    approval_id = outcome.approval_id or ""
    kind: type[ApprovalRefusal] = ApprovalDenied
    if state in ("pending", "approved"):
        kind, reason = ApprovalPending, f"waits for a human's approval ({approval_id})"
    elif state == "expired":
        kind, reason = ApprovalExpired, f"the approval request {approval_id} expired"
    elif state == "mismatch":
        reason = f"approval {approval_id} is for another call"
    elif state == "consumed":
        reason = f"approval {approval_id} was already used"
    else:
        reason = f"the approval request {approval_id} is {state}"
    return kind(
        tool,
        reason,
        approval_id=approval_id,
        approval_state=state,
        decision_id=decision_id,
        expires_at=outcome.expires_at,
        status_url=outcome.status_url,
        retry_after=retry_after if kind is ApprovalPending else None,
        trace_id=trace_id,
    )


# -- the enforcer, for an in-process principal ----------------------------------------------


class GuardEnforcer(Enforcer):
    """The gateways' :class:`Enforcer` with two guard-specific steps: authenticating a
    bare token (no request to bind a proof to), and an outcome event that names the
    exception class instead of an upstream status. Build it with ``kind="guard"``."""

    def authenticate_token(self, token: str, *, trace: TraceContext) -> VerifiedAccess:
        """Verify ``token`` alone (RFC 9068 section 4 and revocation, see
        :meth:`AccessTokenVerifier.verify_token`); a refusal is audited and raised."""
        verifier = self.link.verifier
        try:
            access = verifier.verify_token(token, now=int(time.time()))
            if access.jkt is None and not verifier.config.accept_bearer:
                raise OAuthError(
                    "invalid_token",
                    "the access token is not valid",
                    status=401,
                    reason="token is not DPoP-bound",
                )
            return access
        except OAuthError as exc:
            self.refuse(
                None, trace=trace, status=exc.oauth_status, reason=f"{exc.error}: {exc.reason}"
            )
            raise

    def refuse_anonymous(self, call: Call, reason: str, *, trace: TraceContext) -> None:
        """Audit a call refused because no token was available."""
        self.refuse(None, trace=trace, status=401, reason=reason, call=call)

    def record_guarded_outcome(
        self,
        access: VerifiedAccess,
        call: Call,
        verdict: Verdict,
        *,
        trace: TraceContext,
        error: str | None,
        duration_ms: float,
    ) -> None:
        """The ``tool.call`` event after the body (:meth:`Enforcer.record_outcome`),
        with ``error`` (the exception's class name, None on success) in place of an
        upstream status, and no brokered credential (there is none in-process)."""
        self.record_outcome(
            access,
            call,
            verdict,
            trace=trace,
            outcome=Outcome.SUCCESS if error is None else Outcome.FAILURE,
            status=None,
            secret=None,
            duration_ms=duration_ms,
            error=error,
        )


# -- one call -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Decided:
    access: VerifiedAccess
    call: Call
    verdict: Verdict
    trace: TraceContext
    started: float = field(default_factory=time.perf_counter)


@dataclass(slots=True)
class _Handover:
    """One ``async with`` entry: the worker thread's allowed decision for the task,
    or, once the task was cancelled, the cancellation the worker records instead."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    decided: _Decided | None = None
    abandoned: str | None = None


@dataclass(frozen=True, slots=True)
class AdmittedListing:
    """A listing whose principal :meth:`Guard.admit_listing` authenticated and
    admitted (rate limit): what it shows is :meth:`Guard.shown`'s to decide."""

    method: str
    access: VerifiedAccess
    trace: TraceContext


class GuardedCall:
    """One guarded call: a context manager, sync (``with``) or async (``async with``).

    Entering decides the call (and raises :class:`ToolCallDenied` on a refusal, so the
    block never runs); leaving records the outcome: success, or the class of the
    exception that left the block (which is re-raised, never swallowed).
    """

    def __init__(
        self,
        guard: Guard,
        tool: str,
        args: Mapping[str, Any] | None,
        authenticate: Authenticate | None,
        token: TokenSource | None,
        *,
        approval: str | None = None,
        approval_wait: float | None = None,
        read: tuple[str, Call | str] | None = None,
    ) -> None:
        self._guard = guard
        self.tool = tool
        self._not_json: str | None = None  # then the call is refused (plain_arguments)
        try:
            self.args: dict[str, Any] = plain_arguments(args or {})
        except _ArgumentNotJSON as exc:
            self.args, self._not_json = {}, str(exc)
        # an MCP read (Guard.read): its method, and its policy question or why it is
        # malformed (mcp_calls.read_call)
        self._read = read
        self._authenticate = authenticate
        self._token = token
        self._approval = approval
        self._approval_wait = approval_wait
        self._decided: _Decided | None = None
        self._failure: str | None = None

    # -- what the block can read ---------------------------------------------------------

    @property
    def decision_id(self) -> str | None:
        return self._decided.verdict.decision_id if self._decided else None

    @property
    def agent_id(self) -> str | None:
        return self._decided.access.client_id if self._decided else None

    @property
    def access(self) -> VerifiedAccess | None:
        """The verified token the call was allowed for (None before entering)."""
        return self._decided.access if self._decided else None

    @property
    def trace_id(self) -> str | None:
        return self._decided.trace.trace_id if self._decided else None

    def fail(self, error: str) -> None:
        """Record the call as failed (outcome ``failure``, ``error``) even though no
        exception leaves the block: e.g. a tool that reports its error in its result."""
        self._failure = error[:128]

    # -- sync ------------------------------------------------------------------------

    def __enter__(self) -> GuardedCall:
        self._decided = self._guard._decide(self, self._token or _current_token.get())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        decided, self._decided = self._decided, None
        if decided is not None:
            self._guard._outcome(decided, self._error(exc_type))

    # -- async: the same steps on a worker thread (they fsync), outcome shielded ----------

    async def __aenter__(self) -> GuardedCall:
        handover = _Handover()
        token = self._token or _current_token.get()
        try:
            await anyio.to_thread.run_sync(self._decide_for, handover, token)
        except BaseException as exc:
            # Cancelled while the worker decides (task.cancel() does not wait for the
            # thread): whichever comes second, this or the worker's decision, records
            # the outcome of an allowed call whose block will never run.
            with handover.lock:
                handover.abandoned = type(exc).__name__
                self._decided = handover.decided
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._decided = handover.decided
        return self

    def _decide_for(self, handover: _Handover, token: TokenSource | None) -> None:
        """On the worker thread: decide, and hand an allowed call to the task that
        entered, or record its outcome if that task was cancelled meanwhile."""
        decided = self._guard._decide(self, token)
        with handover.lock:
            abandoned = handover.abandoned
            if abandoned is None:
                handover.decided = decided
        if abandoned is not None:
            self._guard._outcome(decided, abandoned)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        decided, self._decided = self._decided, None
        if decided is not None:
            # A cancelled task still records what happened to the call it was allowed.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._guard._outcome, decided, self._error(exc_type))

    def _defer(self, awaitable: Awaitable[T]) -> Coroutine[Any, Any, T]:
        """The sync block produced ``awaitable`` (a guarded function that is not a
        coroutine function returned it): its body runs only when awaited, so leaving
        the block records nothing and the coroutine returned records the outcome once
        ``awaitable`` finished (or raised, or was cancelled)."""
        decided, self._decided = self._decided, None
        return self._finish(decided, awaitable)

    async def _finish(self, decided: _Decided | None, awaitable: Awaitable[T]) -> T:
        self._decided = decided
        try:
            result = await awaitable
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        await self.__aexit__(None, None, None)
        return result

    def _error(self, exc_type: type[BaseException] | None) -> str | None:
        failure, self._failure = self._failure, None
        return exc_type.__name__ if exc_type is not None else failure


# -- the guard ------------------------------------------------------------------------------


class Guard:
    """Decides and audits Python tool calls in the agent's own process.

    Build one with :meth:`connect` (or from parts, sharing a gateway's link and
    spool), then guard functions with :meth:`tool` or blocks with :meth:`call`::

        guard = Guard.connect("https://iam.example.com", resource="https://agent.example/tools",
                              spool_dir="/var/lib/my-agent/spool", name="my-agent",
                              token=lambda: agent.token().value)

        @guard.tool()                  # the tool name is the function's name
        def search(query: str) -> list[str]: ...

        @guard.tool("files.write")
        async def write(path: str, text: str) -> None: ...

        with guard.call("search", {"query": "x"}) as call:   # or: async with
            ...
    """

    def __init__(
        self,
        enforcer: GuardEnforcer,
        *,
        resource: str,
        token: TokenSource | None = None,
        spool: AuditSpool | None = None,
        on_close: Callable[[], None] | None = None,
        approval_wait: float = 0.0,
        approval_retry_after: float = 2.0,
    ) -> None:
        """``enforcer`` decides (its ``source`` should be ``guard/<name>``: build it
        with ``kind="guard"``); ``resource`` is the audience tokens must name and the
        location tool calls are checked at (RFC 9396 ``locations``); ``token`` is the
        default principal; ``spool`` is the enforcer's spool (for :meth:`drain`);
        ``on_close`` releases what the guard owns. With an enforcer that has an
        approvals client, an approvable deny asks a human (docs/approvals.md): a call
        waits up to ``approval_wait`` seconds for the approval (0: raise
        :class:`ApprovalPending` at once, naming ``approval_retry_after`` seconds)."""
        _check_wait(approval_wait)
        self.enforcer = enforcer
        self.resource = resource
        self.token = token
        self.spool = spool
        self._on_close = on_close
        self.approval_wait = approval_wait
        self.approval_retry_after = approval_retry_after
        client = enforcer.approvals
        self.approvals = ApprovalFlow(enforcer, client) if client is not None else None
        # what a listing shows (visible_tools): the MCP gateway's decision, at resource
        self.visibility = Visibility(enforcer.link.authorizer, location=resource)

    @classmethod
    def connect(
        cls,
        control_plane_url: str,
        *,
        resource: str,
        spool_dir: str | os.PathLike[str],
        name: str,
        admin_key_env: str = "AGENTIAM_GUARD_KEY",
        token: TokenSource | None = None,
        outage_seconds: float = 300.0,
        jwks_refresh_seconds: float = KEYS_SECONDS,
        spool_max_bytes: int = 1 << 30,
        spool_rejected_max_bytes: int = DEFAULT_REJECTED_MAX_BYTES,
        rate_limits: RateLimiter | None = None,
        redactor: Redactor | None = None,
        ship_timeout: float = 30.0,
        poll_wait: float = 20.0,
        environ: Mapping[str, str] | None = None,
        approvals: bool = True,
        approval_wait: float = 0.0,
    ) -> Guard:
        """Connect to the control plane and start the guard's parts: the link (keys,
        revocations and the first policy bundle are loaded now, and a control plane
        that cannot be reached fails here), the audit spool in ``spool_dir`` (one
        process per directory) and its shipper.

        ``control_plane_url`` must be https, or plain http only on the loopback host
        (``127.0.0.1``, ``[::1]``, ``localhost``), as a gateway's ``control_plane.url``
        (:func:`~agentiam.adapters.gateway.config.https_url`): the admin key is sent
        there, and the policies, keys and revocations the guard enforces come from
        there. ``admin_key_env`` names the environment variable holding a ``verifier``-role
        admin key (``enforcement:sync`` and ``audit:ingest``); ``name`` is the guard's
        name in the audit trail (``guard/<name>``); ``spool_max_bytes`` bounds the
        spool's events not yet shipped (1 MiB to 1 TiB, as a gateway's
        ``spool.max_bytes``): at that bound every guarded call is refused
        (:class:`GuardUnavailable`) until the shipper catches up;
        ``spool_rejected_max_bytes`` bounds
        the spool's ``rejected.jsonl`` (1 MiB to 1 TiB, as a gateway's
        ``spool.rejected_max_bytes``): at that bound every guarded call is refused
        (:class:`GuardUnavailable`) until an operator empties it (``agentiam guard
        spool rejected``); ``outage_seconds`` how long it
        decides from cache without the control plane before refusing every call
        (1 to 86400, as a gateway's ``control_plane.outage_seconds``);
        ``jwks_refresh_seconds`` how often the JWKS (RFC 7517 section 5) is re-read
        when no signing-key retirement asks for it (1 to 86400, at most a quarter of
        ``outage_seconds`` is used: a gateway's ``control_plane.jwks_refresh_seconds``,
        :class:`~agentiam.adapters.gateway.link.ControlPlaneLink`'s ``keys_seconds``);
        ``poll_wait`` how long one policy-bundle long poll is held; ``environ``
        replaces ``os.environ`` when reading ``admin_key_env``. ``approvals``: a deny
        that a human's approval lifts opens an approval request at the control plane
        (the key's ``approvals:request``) instead of a plain refusal; ``approval_wait``
        how long a call waits for the human (see :class:`Guard`).
        """
        # the admin key goes there, and the policies, keys and revocations come from
        # there: https, as a gateway's control_plane.url (plain http only on loopback)
        control_plane_url = https_url(control_plane_url, "control_plane_url")
        point_name(name, "name")
        _check_resource(resource)
        outage_seconds = control_plane_seconds(outage_seconds, "outage_seconds")
        jwks_refresh_seconds = control_plane_seconds(jwks_refresh_seconds, "jwks_refresh_seconds")
        max_bytes = spool_bound(spool_max_bytes, "spool_max_bytes")
        rejected_max_bytes = spool_bound(spool_rejected_max_bytes, "spool_rejected_max_bytes")
        admin_key = from_env(
            environ, admin_key_env, "admin_key_env", "the guard's verifier-role admin key"
        )
        # the bundle's throttles need one (a limiter with no entries yet is falsy)
        limiter = rate_limits if rate_limits is not None else RateLimiter()
        link = ControlPlaneLink(
            control_plane_url,
            resource,
            admin_key=admin_key,
            outage_seconds=outage_seconds,
            wait=poll_wait,
            limiter=limiter,
            keys_seconds=jwks_refresh_seconds,  # capped there, as a gateway's
        ).start()
        shipper: _Shipper | None = None
        try:
            _check_wait(approval_wait)
            shipper = _Shipper(control_plane_url, admin_key, ship_timeout)
            spool = AuditSpool(
                Path(spool_dir),
                shipper,
                max_bytes=max_bytes,
                rejected_max_bytes=rejected_max_bytes,
                rejected_hint=_rejected_hint(spool_dir, control_plane_url, admin_key_env, name),
                body_only=True,  # _Shipper posts json_body: the lines are not decoded
            )
        except BaseException:
            if shipper is not None:
                shipper.close()
            link.close()
            raise
        client = ApprovalClient(control_plane_url, admin_key) if approvals else None
        enforcer = GuardEnforcer(
            name,
            link,
            spool,
            resource_metadata=_metadata_url(resource),
            limiter=limiter,
            redactor=redactor,
            kind="guard",
            approvals=client,
        )

        def close() -> None:
            spool.close()
            assert shipper is not None
            shipper.close()
            if client is not None:
                client.close()
            link.close()

        return cls(
            enforcer,
            resource=resource,
            token=token,
            spool=spool,
            on_close=close,
            approval_wait=approval_wait,
        )

    # -- the two ways in -----------------------------------------------------------------

    @overload
    def tool(self, name: F, /) -> F: ...

    @overload
    def tool(
        self,
        name: str | None = None,
        /,
        *,
        token: TokenSource | None = None,
        exclude: Collection[str] = (),
        approval_wait: float | None = None,
    ) -> Callable[[F], F]: ...

    def tool(
        self,
        name: str | F | None = None,
        /,
        *,
        token: TokenSource | None = None,
        exclude: Collection[str] = (),
        approval_wait: float | None = None,
    ) -> F | Callable[[F], F]:
        """Guard a function (``def`` or ``async def``) as the tool ``name`` (default:
        the function's name). Each call binds its arguments to the signature (defaults
        applied; ``self``/``cls`` and the parameters named in ``exclude`` left out),
        is decided before the body runs and its outcome recorded after it.

        ``token`` overrides the guard's default principal for this tool,
        ``approval_wait`` the guard's (seconds a call waits for a human's approval).
        Generator functions are refused (their body would run after the decision's
        scope), and so is a generator returned by a guarded function (a generator
        function behind a plain decorator): TypeError, recorded as a failed call. An
        object with an ``async def __call__`` is guarded as an ``async def``; a sync
        function that returns an awaitable (an ``async def`` behind a plain decorator)
        is decided when called and its outcome recorded when the awaitable finishes."""
        if approval_wait is not None:
            _check_wait(approval_wait)
        if callable(name):
            return self._wrap(name, None, token, exclude, approval_wait)

        def decorator(fn: F) -> F:
            return self._wrap(fn, name, token, exclude, approval_wait)

        return decorator

    def call(
        self,
        tool: str,
        args: Mapping[str, Any] | None = None,
        *,
        token: TokenSource | None = None,
        authenticate: Authenticate | None = None,
        approval: str | None = None,
        approval_wait: float | None = None,
    ) -> GuardedCall:
        """A guarded block: ``with guard.call("search", {"q": q}) as call: ...`` (or
        ``async with``). ``authenticate`` replaces token verification for callers that
        verify a request themselves (the MCP integration verifies a DPoP proof).
        ``approval``: an approval id to use if the call needs one (as
        :meth:`using_approval`); ``approval_wait`` overrides the guard's."""
        _check_tool(tool)
        if approval is not None:
            _check_approval_id(approval)
        if approval_wait is not None:
            _check_wait(approval_wait)
        return GuardedCall(
            self, tool, args, authenticate, token, approval=approval, approval_wait=approval_wait
        )

    def read(
        self,
        method: str,
        params: Mapping[str, Any],
        *,
        token: TokenSource | None = None,
        authenticate: Authenticate | None = None,
    ) -> GuardedCall:
        """A guarded MCP ``resources/read`` or ``prompts/get`` (``method``, with its
        JSON-RPC ``params``), decided as the MCP gateway decides it
        (:func:`~agentiam.adapters.gateway.mcp_calls.read_call`: ``read`` on
        ``DataSet::"<uri>"`` or ``DataSet::"prompt:<name>"``, a prompt's arguments as
        ``context.args``) and otherwise as a tool call: the principal as
        :meth:`call`'s, a token from the rate limits (keyed by the URI or prompt
        name), the decision durable before the block runs, the outcome recorded
        after it. A malformed request (a URI over 500 characters, one starting
        with ``prompt:``, a name over 256 characters, non-string prompt arguments)
        is refused (``invalid_request``, 400, audited). No human's approval is
        asked for a read, as at the MCP gateway: a deny an approval would lift is
        refused, its reason saying so. A resource's URI is decided in canonical form
        (RFC 3986 section 6.2.2, as ``read_call`` gives it): the block must read the
        returned call's :attr:`GuardedCall.tool`, that canonical URI, not the one
        sent (the SDK's template match decodes ``%61dmin`` to ``admin``). Non-object
        ``params`` and a URI with a ``%`` not followed by two hex digits are
        malformed."""
        if method not in READ_METHODS:
            raise ValueError(f"method: one of {sorted(READ_METHODS)}")
        call = read_call(method, params)
        tool = call.tool if isinstance(call, Call) else method
        args = call.args if isinstance(call, Call) else None
        return GuardedCall(self, tool, args, authenticate, token, read=(method, call))

    def complete(
        self,
        params: Mapping[str, Any],
        *,
        token: TokenSource | None = None,
        authenticate: Authenticate | None = None,
    ) -> str | None:
        """Decide an MCP ``completion/complete`` (its JSON-RPC ``params``; MCP
        2026-07-28 "Completion"): the question the listing asks of the prompt
        (``ref/prompt``) or resource template (``ref/resource``) it references
        (:func:`~agentiam.adapters.gateway.mcp_calls.completion_call`: ``read`` on
        ``DataSet::"prompt:<name>"`` or ``DataSet::"<uri template>"``, ``context.args``
        empty), so a principal is offered completions exactly for what its listings
        show it. Otherwise decided as a read is (:meth:`read`): the principal as
        :meth:`call`'s, a token from the agent's rate-limit buckets (the per-tool one
        keyed ``completion/complete``, not by the item, so typing does not spend the
        item's own budget), one ``authz.decision`` event durable before this returns
        (and no ``tool.call`` outcome: a completion runs no tool and reads no
        resource). A malformed request is refused (``invalid_request``, 400,
        audited). Returns the decision id; raises :class:`ToolCallDenied` (a
        :class:`GuardUnavailable` past the outage bound or when the event cannot be
        recorded). It waits for the spool's fsync: from async code, run it in a
        worker thread."""
        # JSON-RPC 2.0 section 4.2 allows array params; MCP's are objects: malformed
        call = completion_call(params) if isinstance(params, Mapping) else "params: an object"
        trace = TraceContext.new()
        decided = self._decide_mcp(
            COMPLETE_METHOD,
            call,
            COMPLETE_METHOD,
            authenticate,
            token or _current_token.get(),
            trace,
        )
        return decided.verdict.decision_id

    @contextmanager
    def using_approval(self, approval_id: str) -> Iterator[None]:
        """Within this block (this thread or task, and what it starts), the first
        guarded call that needs a human's approval uses ``approval_id``: the control
        plane checks it was approved for exactly that call (agent, tool and complete
        arguments) and consumes it, once. Calls that need no approval are not
        affected; a later call that needs one opens a request of its own::

            try:
                pay(invoice=42, amount=900)
            except ApprovalPending as pending:
                ...                                  # the owner approves meanwhile
                with guard.using_approval(pending.approval_id):
                    pay(invoice=42, amount=900)      # runs once
        """
        _check_approval_id(approval_id)
        reset = _presented.set(_Presented(approval_id))
        try:
            yield
        finally:
            _presented.reset(reset)

    @contextmanager
    def acting_as(self, token: TokenSource) -> Iterator[None]:
        """Within this block (this thread or task, and what it starts), guarded calls
        without their own ``token`` use ``token``: e.g. a delegated token while the
        agent acts for a human (RFC 8693)."""
        reset = _current_token.set(token)
        try:
            yield
        finally:
            _current_token.reset(reset)

    # -- MCP servers (the ``mcp`` extra) -------------------------------------------------

    def mcp_middleware(
        self, *, principal: Principal = "auto", public_url: str | None = None
    ) -> GuardMiddleware:
        """A middleware for an ``mcp`` SDK server guarding every ``tools/call``; see
        :mod:`agentiam.adapters.gateway.guard_mcp` for whose token decides."""
        from agentiam.adapters.gateway.guard_mcp import GuardMiddleware

        return GuardMiddleware(self, principal=principal, public_url=public_url)

    def protect(
        self, server: Any, *, principal: Principal = "auto", public_url: str | None = None
    ) -> GuardMiddleware:
        """Guard every tool of ``server`` (an ``mcp`` ``MCPServer``, formerly
        ``FastMCP``), including tools registered later; returns the middleware."""
        middleware = self.mcp_middleware(principal=principal, public_url=public_url)
        middleware.install(server)
        return middleware

    # -- LangChain tools (the ``langchain`` extra) ----------------------------------------

    def langchain_tools(
        self,
        tools: Sequence[Any],
        *,
        on_refusal: Literal["message", "raise"] = "message",
        token: TokenSource | None = None,
    ) -> list[Any]:
        """``tools`` (LangChain ``BaseTool`` objects) guarded: every call decided and
        recorded first; a refusal answers the model with why (``on_refusal="message"``)
        or raises :class:`ToolCallDenied` (``"raise"``). See
        :mod:`agentiam.adapters.gateway.guard_langchain`."""
        from agentiam.adapters.gateway.guard_langchain import guard_tools

        return guard_tools(self, tools, on_refusal=on_refusal, token=token)

    # -- housekeeping --------------------------------------------------------------------

    def drain(self, timeout: float) -> bool:
        """Wait until every audit event was shipped to the control plane."""
        return self.spool.drain(timeout) if self.spool is not None else True

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()
            self._on_close = None

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------

    def _wrap(
        self,
        fn: F,
        name: str | None,
        token: TokenSource | None,
        exclude: Collection[str],
        approval_wait: float | None = None,
    ) -> F:
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(
                f"{fn.__qualname__} is a generator function: its body would run after the "
                "guard's decision; guard the function that consumes it, or use guard.call()"
            )
        tool = name if name is not None else fn.__name__
        _check_tool(tool)
        signature = inspect.signature(fn)
        skip = set(exclude)
        params = list(signature.parameters)
        if params and params[0] in ("self", "cls"):
            skip.add(params[0])

        def bind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
            bound = signature.bind(*args, **kwargs)  # a TypeError here: no call happened
            bound.apply_defaults()
            out: dict[str, Any] = {}
            for key, value in bound.arguments.items():
                if key in skip:
                    continue
                kind = signature.parameters[key].kind
                if kind is inspect.Parameter.VAR_KEYWORD:
                    out.update({k: v for k, v in value.items() if k not in out})
                else:
                    out[key] = value
            return out

        if _is_async(fn):

            @functools.wraps(fn)
            async def guarded_async(*args: Any, **kwargs: Any) -> Any:
                guarded = GuardedCall(
                    self, tool, bind(args, kwargs), None, token, approval_wait=approval_wait
                )
                async with guarded:
                    return await cast(Callable[..., Awaitable[Any]], fn)(*args, **kwargs)

            return cast(F, guarded_async)

        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            guarded = GuardedCall(
                self, tool, bind(args, kwargs), None, token, approval_wait=approval_wait
            )
            with guarded:
                result = fn(*args, **kwargs)
                if inspect.isawaitable(result):  # e.g. async def behind a plain decorator
                    return guarded._defer(result)
                if inspect.isgenerator(result) or inspect.isasyncgen(result):
                    # a generator function behind a plain decorator: its body would run
                    # after the decision, unrecorded; refused (and recorded as failed)
                    _close(result)
                    raise TypeError(
                        f"{fn.__qualname__} returned a generator: its body would run after "
                        "the guard's decision; guard the function that consumes it, or use "
                        "guard.call()"
                    )
                return result

        return cast(F, guarded)

    def _decide(self, guarded: GuardedCall, token: TokenSource | None) -> _Decided:
        """Steps 1-3 of the module doc (for an MCP read, :meth:`read`'s question);
        raises ToolCallDenied unless allowed."""
        enforcer = self.enforcer
        tool, args, authenticate = guarded.tool, guarded.args, guarded._authenticate
        trace = TraceContext.new()
        if guarded._read is not None:
            return self._decide_read(guarded, token, trace)
        call = tool_call(tool, args, location=self.resource)
        with _refusals(tool, trace):
            access = self._principal(tool, authenticate, token, trace, call=call)
            if guarded._not_json is not None:  # policy could not see it: refuse, audited
                enforcer.refuse(
                    access, trace=trace, status=400, reason=guarded._not_json, call=call
                )
                raise ToolCallDenied(
                    tool,
                    guarded._not_json,
                    error="invalid_request",
                    refusal_status=400,
                    trace_id=trace.trace_id,
                    hint="Pass JSON values, a pydantic model or a dataclass, or leave the "
                    "argument out of the decision (guard.tool(exclude=...)).",
                )
            verdict = enforcer.decide(access, call, trace=trace)
            if not verdict.allowed and verdict.approvable and self.approvals is not None:
                verdict = self._approval(
                    access, call, verdict, trace, guarded._approval, guarded._approval_wait
                )
        if not verdict.allowed:
            raise _denied(tool, verdict, trace)
        return _Decided(access, call, verdict, trace)

    def _decide_read(
        self, guarded: GuardedCall, token: TokenSource | None, trace: TraceContext
    ) -> _Decided:
        """:meth:`_decide` for an MCP read (:meth:`_decide_mcp`)."""
        assert guarded._read is not None
        method, call = guarded._read
        return self._decide_mcp(method, call, guarded.tool, guarded._authenticate, token, trace)

    def _decide_mcp(
        self,
        method: str,
        call: Call | str,
        tool: str,
        authenticate: Authenticate | None,
        token: TokenSource | None,
        trace: TraceContext,
    ) -> _Decided:
        """The decision of an MCP read or completion (``method``) as the MCP gateway
        decides a read: a malformed request (``call`` says why) is refused (400,
        audited with the method as its action); no human's approval is asked (the
        gateway asks for ``tools/call`` only), so a deny that an approval would lift
        stays a deny and says so."""
        enforcer = self.enforcer
        with _refusals(tool, trace):
            if isinstance(call, str):
                access = self._principal(method, authenticate, token, trace)
                enforcer.refuse(access, trace=trace, status=400, reason=call, action=method)
                raise ToolCallDenied(
                    method,
                    call,
                    error="invalid_request",
                    refusal_status=400,
                    trace_id=trace.trace_id,
                )
            access = self._principal(call.tool, authenticate, token, trace, call=call)
            verdict = enforcer.decide(access, call, trace=trace)
        if not verdict.allowed:
            if verdict.approvable:
                verdict = replace(verdict, reason=f"{verdict.reason} ({_NO_READ_APPROVALS})")
            raise _denied(call.tool, verdict, trace)
        return _Decided(access, call, verdict, trace)

    def _principal(
        self,
        tool: str,
        authenticate: Authenticate | None,
        token: TokenSource | None,
        trace: TraceContext,
        *,
        call: Call | None = None,
    ) -> VerifiedAccess:
        """Step 1 of the module doc, for ``call`` (or, without one, for the request
        ``tool`` names, a listing): the verified access, or ToolCallDenied with the
        refusal audited (an OAuthError of ``authenticate`` or of the token check is
        audited there, and turned into a refusal by :func:`_refusals`)."""
        if authenticate is not None:
            return authenticate(trace)
        value, problem = _resolve(token if token is not None else self.token)
        if value is None:
            if call is not None:
                self.enforcer.refuse_anonymous(call, problem, trace=trace)
            else:
                self.enforcer.refuse(None, trace=trace, status=401, reason=problem, action=tool)
            raise ToolCallDenied(
                tool,
                problem,
                error="invalid_token",
                refusal_status=401,
                trace_id=trace.trace_id,
                hint="Give the guard the agent's token (token=...) or use acting_as().",
            )
        return self.enforcer.authenticate_token(value, trace=trace)

    # -- listings ----------------------------------------------------------------------

    def visible_tools(
        self,
        tools: Sequence[str],
        *,
        token: TokenSource | None = None,
        authenticate: Authenticate | None = None,
    ) -> list[str]:
        """The names in ``tools`` the principal may see, in their order: those a call
        without arguments would be allowed (:meth:`visible` for ``tools/list``). A
        name the guard cannot record as a tool (see :meth:`call`) is never shown."""
        items = [Listed("tool", name, name) for name in tools]
        flags = self.visible(LIST_TOOLS, items, token=token, authenticate=authenticate)
        return [name for name, ok in zip(tools, flags, strict=True) if ok]

    def visible(
        self,
        method: str,
        items: Sequence[Listed],
        *,
        token: TokenSource | None = None,
        authenticate: Authenticate | None = None,
    ) -> list[bool]:
        """One flag per item of the listing ``method`` (``tools/list``,
        ``resources/list``, ``resources/templates/list``, ``prompts/list``): may the
        principal see it? Decided as the MCP gateway decides its listings
        (:class:`~agentiam.adapters.gateway.mcp_visibility.Visibility`: the token's
        ``authorization_details``, RFC 9396, and Cedar policy with empty
        ``context.args``; a tool is ``invoke_tool`` on ``Tool::"<name>"``, a
        resource or template ``read`` on ``DataSet::"<uri>"``, a prompt ``read`` on
        ``DataSet::"prompt:<name>"``). A tool name the guard cannot record (see
        :meth:`call`) is never shown. The principal is found as a call's is
        (``authenticate``, else ``token``, the :meth:`acting_as` token or the
        guard's).

        As a gateway's listing, it takes a token from the agent's own rate-limit
        bucket and the pooled ones that apply (``per_human``, ``per_chain``)
        (:meth:`Enforcer.admit_request
        <agentiam.adapters.gateway.enforcer.Enforcer.admit_request>`) and is recorded
        as one ``mcp.list`` event (action ``method``), durable before this returns.
        It fails closed: :class:`ToolCallDenied` for no or a bad token
        (``invalid_token``) or over the rate limit (``rate_limited``),
        :class:`GuardUnavailable` past the outage bound or when the event cannot be
        recorded; each refusal is audited (``api.request.rejected``). It waits for
        the spool's fsync: from async code, run it in a worker thread."""
        admitted = self.admit_listing(method, token=token, authenticate=authenticate)
        return self.shown(admitted, items)

    def admit_listing(
        self,
        method: str,
        *,
        token: TokenSource | None = None,
        authenticate: Authenticate | None = None,
    ) -> AdmittedListing:
        """The first step of :meth:`visible`, before the listing is made: the
        principal authenticated and a token taken from its rate-limit bucket, so
        that an MCP server's listing handler (user code) runs only for a caller who
        may list (:class:`~agentiam.adapters.gateway.guard_mcp.GuardMiddleware`).
        Raises and audits as :meth:`visible` does; :meth:`shown` then decides the
        items."""
        if method not in LISTING_METHODS:
            raise ValueError(f"method: one of {sorted(LISTING_METHODS)}")
        trace = TraceContext.new()
        with _refusals(method, trace):
            access = self._principal(method, authenticate, token or _current_token.get(), trace)
            refused = self.enforcer.admit_request(access, method, trace=trace)
            if refused is not None:
                raise _denied(method, refused, trace)
        return AdmittedListing(method, access, trace)

    def shown(self, admitted: AdmittedListing, items: Sequence[Listed]) -> list[bool]:
        """The second step of :meth:`visible`, for a caller :meth:`admit_listing`
        admitted: one flag per item, the ``mcp.list`` event durable before this
        returns (:class:`GuardUnavailable` past the outage bound or when it cannot
        be recorded)."""
        method, access, trace = admitted.method, admitted.access, admitted.trace
        enforcer = self.enforcer
        with _refusals(method, trace):
            recordable = [
                item.kind != "tool" or _TOOL.match(item.exposed) is not None for item in items
            ]
            try:
                enforcer.link.authorizer()  # past the outage bound: refused, as a call
                asked = [item for item, ok in zip(items, recordable, strict=True) if ok]
                decided = iter(self.visibility.visible(access, asked))
                flags = [ok and next(decided) for ok in recordable]
                enforcer.record_listing(access, method, items, flags, trace=trace)
            except ServiceUnavailable as exc:
                with contextlib.suppress(ServiceUnavailable):  # refused all the same
                    enforcer.refuse(
                        access, trace=trace, status=503, reason=exc.detail, action=method
                    )
                raise
        return flags

    def _approval(
        self,
        access: VerifiedAccess,
        call: Call,
        denied: Verdict,
        trace: TraceContext,
        approval: str | None,
        approval_wait: float | None,
    ) -> Verdict:
        """The approval step of an approvable deny (docs/approvals.md): use the
        approval offered (``approval``, else the block's :meth:`using_approval`, once)
        or open a request; wait up to ``approval_wait`` for the human. The verdict
        once an approval was consumed for the call; else the typed refusal."""
        assert self.approvals is not None
        wait = self.approval_wait if approval_wait is None else approval_wait
        if approval is None:
            presented = _presented.get()
            if presented is not None and not presented.taken:
                presented.taken = True
                approval = presented.approval_id
        if approval is not None:
            outcome = self.approvals.retry(access, call, approval, trace=trace, wait=wait)
        else:
            outcome = self.approvals.open(access, call, denied, trace=trace, wait=wait)
        if outcome.verdict is not None:
            return outcome.verdict
        raise _approval_refusal(
            call.tool,
            outcome,
            decision_id=denied.decision_id,
            retry_after=self.approval_retry_after,
            trace_id=trace.trace_id,
        )

    def _outcome(self, decided: _Decided, error: str | None) -> None:
        """Step 4. The body already ran, so a failure to record its outcome is logged,
        not raised (the allow decision before it is durable)."""
        try:
            self.enforcer.record_guarded_outcome(
                decided.access,
                decided.call,
                decided.verdict,
                trace=decided.trace,
                error=error,
                duration_ms=(time.perf_counter() - decided.started) * 1000,
            )
        except ServiceUnavailable:
            log.error(
                "the outcome of %s (decision %s) could not be recorded",
                decided.call.tool,
                decided.verdict.decision_id,
            )


# -- helpers --------------------------------------------------------------------------------


@contextmanager
def _refusals(tool: str, trace: TraceContext) -> Iterator[None]:
    """The enforcer's refusals (already audited) as the guard's: an OAuthError is a
    :class:`ToolCallDenied` with its code and status (a 5xx one a
    :class:`GuardUnavailable`), a ServiceUnavailable a :class:`GuardUnavailable`."""
    try:
        yield
    except OAuthError as exc:
        if exc.oauth_status >= 500:
            raise GuardUnavailable(tool, exc.reason, trace_id=trace.trace_id) from None
        raise ToolCallDenied(
            tool,
            exc.reason,
            error=exc.error,
            refusal_status=exc.oauth_status,
            trace_id=trace.trace_id,
        ) from None
    except ServiceUnavailable as exc:
        # a full spool's hint says how the operator empties it: keep it
        hint = exc.hint if isinstance(exc, SpoolFull) else None
        raise GuardUnavailable(tool, exc.detail, trace_id=trace.trace_id, hint=hint) from None


def _denied(tool: str, verdict: Verdict, trace: TraceContext) -> ToolCallDenied:
    """The refusal a verdict that does not allow is raised as."""
    retry = verdict.headers.get("Retry-After")
    return ToolCallDenied(
        tool,
        verdict.reason,
        error=verdict.error or "insufficient_scope",
        refusal_status=verdict.status,
        decision_id=verdict.decision_id,
        retry_after=float(retry) if retry is not None else None,
        trace_id=trace.trace_id,
    )


def _resolve(source: TokenSource | None) -> tuple[str | None, str]:
    """The token, or None and why not. A failing source (the token endpoint refused,
    the network is down) refuses the call like a missing token."""
    if source is None:
        return None, "no agent access token"
    if isinstance(source, str):
        value = source
    else:
        try:
            value = source()
        except Exception as exc:
            return None, f"the token source failed ({type(exc).__name__})"
    if not isinstance(value, str) or not value:
        return None, "no agent access token"
    return value, ""


def _close(generator: Any) -> None:
    """Close a generator that will never run (an async one is only dropped: closing it
    needs a loop; not started, it holds nothing)."""
    if inspect.isgenerator(generator):
        generator.close()


def _is_async(fn: Callable[..., Any]) -> bool:
    """A coroutine function, or an object whose ``__call__`` is one (its calls return
    coroutines, though :func:`inspect.iscoroutinefunction` says no)."""
    if inspect.iscoroutinefunction(fn):
        return True
    return not inspect.isroutine(fn) and inspect.iscoroutinefunction(type(fn).__call__)


def _check_wait(seconds: float) -> None:
    if not 0 <= seconds <= 86_400:
        raise ValueError("approval_wait: seconds between 0 and 86400")


def _check_approval_id(approval_id: str) -> None:
    if not isinstance(approval_id, str) or not is_id(approval_id, "approval"):
        raise ValueError("an approval id is apr_ and 26 characters (ApprovalPending.approval_id)")


def _check_tool(tool: str) -> None:
    if not isinstance(tool, str) or not _TOOL.match(tool):
        raise ValueError("a tool name is 1-128 printable ASCII characters without spaces")


def _check_resource(resource: str) -> None:
    parts = urlsplit(resource)
    if not parts.scheme or parts.fragment or len(resource) > 2048:
        raise ValueError("resource: an absolute URI without a fragment (RFC 8707 section 2)")


def _rejected_hint(
    spool_dir: str | os.PathLike[str], control_plane_url: str, key_env: str, name: str
) -> str:
    """What a call refused at the bound of the guard's ``rejected.jsonl`` tells the
    operator: the command for this guard's spool, with its own values."""
    resend = shlex.join(
        [
            "agentiam", "guard", "spool", "rejected", "resend",
            "--spool-dir", os.fspath(spool_dir),
            "--control-plane", control_plane_url,
            "--key-env", key_env,
        ]
    )  # fmt: skip
    return (
        f"{REJECTED_FILE}, in the guard's spool directory, is full. Fix why the control "
        f"plane refused its events (the key in {key_env} must be bound to guard/{name}), "
        f"stop the agent and, as its user, run: {resend} (or discard, with the same "
        f"options and --name {name}); then start it."
    )


def _metadata_url(resource: str) -> str:
    """RFC 9728 section 3.1: the well-known metadata URL of an http(s) resource."""
    parts = urlsplit(resource)
    if parts.scheme not in ("http", "https"):
        return resource
    path = parts.path.rstrip("/")
    return f"{parts.scheme}://{parts.netloc}/.well-known/oauth-protected-resource{path}"


def plain_arguments(args: Mapping[str, Any]) -> dict[str, Any]:
    """Tool arguments as JSON values, for the policy context and the audit trail:
    strings, numbers, booleans, null, lists and objects with string keys.

    Paths become strings, enums their values, dates ISO 8601, UUIDs and decimals their
    text; a pydantic model becomes its JSON form (``model_dump(mode="json")``, what a
    model sends for it) and a dataclass an object of its fields, inside lists and
    objects too. Any other value (bytes, a non-finite number, an object key that is not
    a string, an arbitrary object) raises :class:`TypeError` naming the argument: it
    must not vanish from what policy sees, or a forbid on it would not apply (fail
    closed). Nesting is cut below :data:`~agentiam.core.policy.values.MAX_DEPTH` levels:
    Cedar refuses a declared attribute that deep, so no policy can read what is cut.
    """
    out: dict[str, Any] = {}
    for key, value in args.items():
        try:
            converted = _plain(value, 0)
        except _NotJSON as exc:
            raise _ArgumentNotJSON(
                f"the argument {str(key)[:64]!r} holds {exc.what}, which is not JSON: "
                "policy could not read it"
            ) from None
        if converted is not _SKIP:
            out[str(key)] = converted
    return out


class _ArgumentNotJSON(TypeError):
    """Raised by :func:`plain_arguments`; its message names the argument and the type,
    never the value."""


class _NotJSON(Exception):
    """A value :func:`_plain` has no JSON form for; ``what`` names its type (never
    the value itself, which may hold data)."""

    def __init__(self, value: object, role: str = "a value") -> None:
        super().__init__()
        self.what = f"{role} of type {type(value).__qualname__[:64]}"


_SKIP = object()


def _plain(value: Any, depth: int) -> Any:
    """``value`` as a JSON value (see :func:`plain_arguments`), or _SKIP below the depth
    bound; raises _NotJSON. Work is linear in the value's size, never deeper."""
    if depth > _MAX_DEPTH:
        return _SKIP
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _NotJSON(value, "a non-finite number")
        return value
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise _NotJSON(value, "a non-finite number")
        return str(value)
    if isinstance(value, enum.Enum):
        return _plain(value.value, depth + 1)
    if isinstance(value, os.PathLike):
        path = os.fspath(value)
        if not isinstance(path, str):
            raise _NotJSON(path)
        return path
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, BaseModel):
        try:
            dumped = value.model_dump(mode="json")  # its own JSON form, aliases aside
        except (TypeError, ValueError):  # PydanticSerializationError: a field with none
            raise _NotJSON(value) from None
        return _plain(dumped, depth)
    if is_dataclass(value) and not isinstance(value, type):
        # not dataclasses.asdict: it deep-copies every leaf and has no depth bound
        value = {f.name: getattr(value, f.name) for f in fields(value)}
    if isinstance(value, Mapping):
        items = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise _NotJSON(k, "an object key")
            converted = _plain(v, depth + 1)
            if converted is not _SKIP:
                items[k] = converted
        return items
    if isinstance(value, list | tuple | set | frozenset):
        ordered = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        elements = [_plain(v, depth + 1) for v in ordered]
        return [e for e in elements if e is not _SKIP]
    raise _NotJSON(value)
