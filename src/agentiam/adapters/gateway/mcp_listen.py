"""Telling agents that a server's list changed, and the streams that carry it.

MCP has two carriers for ``notifications/{tools,resources,prompts}/list_changed``
(MCP, server/tools, server/resources, server/prompts, "List Changed Notification"):

- **Handshake era** (2024-11-05 to 2025-11-25): the standalone GET stream of a session
  (Streamable HTTP, "Listening for Messages from the Server").
- **2026-07-28**: only a ``subscriptions/listen`` stream the client opened (SEP-2575):
  a POST whose response is the stream; the server acknowledges the filter it honours
  first, then sends the notifications the filter covers. The gateway serves it with
  the SDK's :class:`~mcp.server.subscriptions.ListenHandler` over an
  :class:`AudienceBus`, which delivers an event to a stream only when the stream's
  agent was shown something of the event's server.

**Who is told** (:class:`Shown`). An agent is told of a server's change of one group
(tools; resources and resource templates; prompts) only if its last listing of that
group showed it at least one item of that server. Others are not told: the
notification carries no data, but telling an agent that a server it cannot see
changed would still say that the server exists and changed.

- A handshake-era session is judged by its own last listings (per session).
- A listen stream is judged by its agent's (``client_id`` and token subject: the
  human of a delegated token) last listings in either era, whenever they were made,
  before or after the stream was opened. A 2026-07-28 request carries no session, so
  nothing ties one listing to one stream but the identity both were made with; the
  listing a stock client makes after it opens a stream is the one that counts. Kept
  for at most :data:`MAX_OWNERS` agents (least recently listed forgotten first: such
  an agent is not told until it lists again).

**A policy change** (a new policy set in force: :class:`PolicyChanges`) may hide or
show items of any server, so it is told, for each group, to every session and
stream whose agent listed that group at least once, whatever it was shown (``server``
None in :meth:`Shown.sessions_told`, :meth:`Shown.owner_saw` and
:meth:`AudienceBus.tell`). It names no server, so it says nothing about one; it is
told at most once per :data:`POLICY_SECONDS`, however many policy sets are activated.

**Streams end** (:class:`Streams`). A stream is opened with a DPoP-bound token, as
every request is, and outlives the request's verification, so the gateway checks
each open stream's token every :data:`WATCH_SECONDS`: when the token expires (as
requests judge it: ``exp`` plus the verifier's clock skew), is revoked (the
revocation set the control plane pushes, :class:`~agentiam.adapters.verification.
RevocationFeedClient`), was signed by a key no longer in the key set the gateway
holds (a retired signing key), or the control plane has been unreachable past the
outage bound (or the revocation set is stale), the stream ends. A listen stream ends
gracefully first (its final frame is a JSON-RPC error naming the reason); any
stream not over :data:`GRACE_SECONDS` later is cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Final, Literal

import anyio
import anyio.lowlevel
from mcp.server.connection import Connection
from mcp.shared.subscriptions import (
    PromptsListChanged,
    ResourcesListChanged,
    ServerEvent,
    ToolsListChanged,
)
from mcp_types import SubscriptionFilter

from agentiam.adapters.gateway.mcp_upstream import LISTING_KINDS, ListingKind, Owner
from agentiam.core.audit.events import TraceContext
from agentiam.core.credentials.verifier import VerifiedAccess

__all__ = [
    "GRACE_SECONDS",
    "GROUPS",
    "LISTEN",
    "MAX_OWNERS",
    "POLICY_SECONDS",
    "WATCH_SECONDS",
    "AudienceBus",
    "Group",
    "PolicyChanges",
    "Shown",
    "Stream",
    "Streams",
    "group_of",
    "honoured",
    "listening_as",
    "send_on_session",
]

log = logging.getLogger("agentiam.gateway.mcp")

LISTEN: Final = "subscriptions/listen"
Group = Literal["tools", "resources", "prompts"]
GROUPS: Final[tuple[Group, ...]] = ("tools", "resources", "prompts")
MAX_OWNERS: Final = 10_000  # agents whose last listings are kept for listen streams
WATCH_SECONDS: Final = 0.1  # how often each open stream's token is checked again
GRACE_SECONDS: Final = 0.5  # after a graceful end, before a stream is cut
POLICY_SECONDS: Final = 1.0  # at least this long between two rounds of policy notices

_GROUP_OF_KIND: Final[Mapping[ListingKind, Group]] = {
    "tools": "tools",
    "resources": "resources",
    "templates": "resources",
    "prompts": "prompts",
}


def group_of(kind: ListingKind) -> Group:
    """The notification group an upstream listing kind belongs to
    (``resources/list_changed`` covers resources and resource templates)."""
    return _GROUP_OF_KIND[kind]


# -- who was shown what ------------------------------------------------------------------

# per listing method: the servers whose items it showed
_Record = dict[str, frozenset[str]]


def _saw(record: _Record | None, server: str | None, group: Group) -> bool:
    """Did the last listing of ``group`` in ``record`` show something of ``server``
    (None: was ``group`` listed at all, whatever it showed)?"""
    if record is None:
        return False
    return any(
        server is None or server in servers
        for m, servers in record.items()
        if group_of(LISTING_KINDS[m]) == group
    )


class Shown:
    """The servers each agent session (handshake era, weakly: forgotten with the
    session) and each agent (``client_id`` and subject, for listen streams) was shown
    something of by its last listing of each method."""

    def __init__(self, max_owners: int = MAX_OWNERS) -> None:
        self._sessions: weakref.WeakKeyDictionary[Connection, _Record] = weakref.WeakKeyDictionary()
        self._owners: OrderedDict[Owner, _Record] = OrderedDict()
        self._max_owners = max_owners

    def record(
        self, method: str, servers: frozenset[str], owner: Owner, session: Connection | None
    ) -> None:
        """A listing ``method`` showed ``owner`` items of ``servers`` (over the
        handshake-era ``session``, or none at 2026-07-28)."""
        if method not in LISTING_KINDS:
            return
        if session is not None:
            self._sessions.setdefault(session, {})[method] = servers
        held = self._owners.pop(owner, None) or {}
        held[method] = servers
        self._owners[owner] = held
        while len(self._owners) > self._max_owners:
            self._owners.popitem(last=False)

    def sessions_told(self, server: str | None, group: Group) -> list[Connection]:
        """The handshake-era sessions whose last listing of ``group`` showed them
        something of ``server`` (None, a policy change: that listed ``group``)."""
        return [c for c, record in list(self._sessions.items()) if _saw(record, server, group)]

    def owner_saw(self, owner: Owner, server: str | None, group: Group) -> bool:
        """Did ``owner``'s last listing of ``group`` show it something of ``server``
        (None, a policy change: did ``owner`` list ``group``)?"""
        return _saw(self._owners.get(owner), server, group)


# -- 2026-07-28: the bus behind the SDK's ListenHandler ----------------------------------


# ``server``: whose list changed; None: the policy set changed (any server's items)
@dataclass(frozen=True)
class _ToolsChanged(ToolsListChanged):
    server: str | None


@dataclass(frozen=True)
class _ResourcesChanged(ResourcesListChanged):
    server: str | None


@dataclass(frozen=True)
class _PromptsChanged(PromptsListChanged):
    server: str | None


_EVENTS: Final[Mapping[Group, type[_ToolsChanged | _ResourcesChanged | _PromptsChanged]]] = {
    "tools": _ToolsChanged,
    "resources": _ResourcesChanged,
    "prompts": _PromptsChanged,
}


@dataclass(frozen=True, slots=True)
class _Audience:
    """Whom one listen stream speaks for, and which groups it asked for."""

    owner: Owner
    groups: frozenset[Group]


_AUDIENCE: ContextVar[_Audience | None] = ContextVar("agentiam_listen_audience", default=None)


def honoured(requested: SubscriptionFilter) -> SubscriptionFilter:
    """What the gateway delivers of a listen request's filter: the three
    ``list_changed`` kinds it asked for. Resource subscriptions
    (``resources/updated``) are not relayed, so they are never acknowledged."""
    return SubscriptionFilter(
        tools_list_changed=True if requested.tools_list_changed else None,
        prompts_list_changed=True if requested.prompts_list_changed else None,
        resources_list_changed=True if requested.resources_list_changed else None,
    )


@contextmanager
def listening_as(owner: Owner, wanted: SubscriptionFilter) -> Iterator[None]:
    """Within: a listen stream of ``owner`` for ``wanted`` subscribes to the bus
    (:meth:`AudienceBus.subscribe` reads it; the SDK's ListenHandler subscribes
    in the handler's own task)."""
    groups: set[Group] = set()
    if wanted.tools_list_changed:
        groups.add("tools")
    if wanted.resources_list_changed:
        groups.add("resources")
    if wanted.prompts_list_changed:
        groups.add("prompts")
    token = _AUDIENCE.set(_Audience(owner, frozenset(groups)))
    try:
        yield
    finally:
        _AUDIENCE.reset(token)


class AudienceBus:
    """A :class:`~mcp.server.subscriptions.SubscriptionBus` (in-process) that gives an
    event of one server only to the listen streams whose agent was shown something
    of that server in that group (:class:`Shown`). A listener subscribed outside
    :func:`listening_as` gets nothing."""

    def __init__(self, shown: Shown) -> None:
        self._shown = shown
        self._listeners: dict[object, tuple[_Audience, Callable[[ServerEvent], None]]] = {}

    def __len__(self) -> int:
        return len(self._listeners)

    async def publish(self, event: ServerEvent) -> None:
        """Deliver an event of :meth:`tell` (any other is no server's: dropped)."""
        self._deliver(event)
        await anyio.lowlevel.checkpoint()

    async def tell(self, server: str | None, group: Group) -> int:
        """``server``'s ``group`` list changed (None: the policy set changed, told to
        every stream whose agent listed ``group``): the number of streams told."""
        told = self._deliver(_EVENTS[group](server=server))
        await anyio.lowlevel.checkpoint()  # let the streams drain between events
        return told

    def _deliver(self, event: ServerEvent) -> int:
        group: Group | None = next(
            (g for g, kind in _EVENTS.items() if isinstance(event, kind)), None
        )
        if group is None:  # not made by tell: no server's, no policy's
            return 0
        server: str | None = getattr(event, "server", None)
        told = 0
        for audience, listener in list(self._listeners.values()):
            if group in audience.groups and self._shown.owner_saw(audience.owner, server, group):
                try:
                    listener(event)
                except Exception:  # one stream's failure must not starve the others
                    log.exception("a listen stream's listener raised; continuing")
                    continue
                told += 1
        return told

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        audience = _AUDIENCE.get()
        token = object()
        if audience is not None:
            self._listeners[token] = (audience, listener)

        def unsubscribe() -> None:
            self._listeners.pop(token, None)

        return unsubscribe


async def send_on_session(connection: Connection, group: Group) -> None:
    """Send ``group``'s ``list_changed`` on a handshake-era session's standalone
    stream (the SDK drops it when the session has none)."""
    if group == "tools":
        await connection.send_tool_list_changed()
    elif group == "resources":
        await connection.send_resource_list_changed()
    else:
        await connection.send_prompt_list_changed()


# -- policy changes -----------------------------------------------------------------------


class PolicyChanges:
    """Rounds of policy notices: :meth:`changed` (from any thread: the bundle thread
    calls it, :meth:`~agentiam.adapters.gateway.link.ControlPlaneLink.watch_policy`)
    says a new policy set is in force; :meth:`run` then calls ``tell(version)`` on the
    event loop, at once if no round ran in the last :data:`POLICY_SECONDS`, else when
    that much time has passed since the last one began. A burst of activations is
    told in at most two rounds (the first, and one after every change it did not
    cover), and the last change is always told after it is in force."""

    def __init__(self, seconds: float = POLICY_SECONDS) -> None:
        self._seconds = seconds
        self._version: int | None = None  # the newest version not yet told
        self._lock = threading.Lock()  # _version: set on the bundle thread, taken here
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    def changed(self, version: int) -> None:
        """Policy set ``version`` is in force (thread-safe; never blocks)."""
        with self._lock:
            self._version = version
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return  # run() has not started: it looks at _version when it does
        with contextlib.suppress(RuntimeError):  # the loop has closed: shutting down
            loop.call_soon_threadsafe(wake.set)

    async def run(self, tell: Callable[[int], Awaitable[None]]) -> None:
        """Tell each round with ``tell`` for as long as the gateway runs. A ``tell``
        that raises is logged; the next change gets its round."""
        self._loop = asyncio.get_running_loop()
        self._wake = wake = asyncio.Event()
        if self._version is not None:
            wake.set()
        while True:
            await wake.wait()
            wake.clear()
            with self._lock:
                version, self._version = self._version, None
            if version is None:  # woken for a change an earlier round covered
                continue
            began = time.monotonic()
            try:
                await tell(version)
            except Exception:
                log.exception("telling agents of policy version %s failed", version)
            await anyio.sleep(max(0.0, self._seconds - (time.monotonic() - began)))


# -- streams and their tokens --------------------------------------------------------------

# why an open stream's token is no longer good: (HTTP status a request would get, reason,
# the /metrics label: expired, revoked, unavailable or invalid)
Ending = tuple[int, str, str]


@dataclass(eq=False)
class Stream:
    """One long-lived response the gateway serves: a ``subscriptions/listen``
    stream, or a handshake-era session's GET stream. ``forced`` is the cancel scope
    around the whole request; ``graceful`` the one around a listen handler (set
    while it runs); ``ended`` why the gateway ended it."""

    owner: Owner
    access: VerifiedAccess
    trace: TraceContext
    action: str  # LISTEN or "GET"
    forced: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    graceful: anyio.CancelScope | None = None
    ended: Ending | None = None
    ended_at: float = 0.0

    def end(self, why: Ending) -> None:
        """End the stream now: gracefully when its listen handler runs, else cut."""
        if self.ended is None:
            self.ended, self.ended_at = why, time.monotonic()
        if self.graceful is not None:
            self.graceful.cancel()
        else:
            self.forced.cancel()


class Streams:
    """The open streams, bounded per agent (``per_owner``) and in all (``total``) for
    listen streams, and the watch that ends a stream whose token is no longer good
    (``check``: None, or why)."""

    def __init__(
        self,
        check: Callable[[VerifiedAccess], Ending | None],
        *,
        per_owner: int,
        total: int,
        on_end: Callable[[str], None] | None = None,
    ) -> None:
        """``on_end``: told the ``/metrics`` label of each stream the watch ends."""
        self._check = check
        self.per_owner = per_owner
        self.total = total
        self._on_end = on_end
        self._open: set[Stream] = set()
        self._listens: dict[Owner, int] = {}

    def listens(self, owner: Owner | None = None) -> int:
        """Listen streams open (or being opened) in all, or of ``owner``."""
        if owner is None:
            return sum(self._listens.values())
        return self._listens.get(owner, 0)

    def refusal(self, owner: Owner) -> tuple[int, str] | None:
        """Why one more listen stream of ``owner`` is refused (429 past its own
        bound, 503 past the gateway's), or None."""
        if self.listens(owner) >= self.per_owner:
            return 429, f"more than {self.per_owner} open listen streams"
        if self.listens() >= self.total:
            return 503, f"the gateway holds {self.total} listen streams; retry later"
        return None

    @contextmanager
    def holding(
        self, owner: Owner, access: VerifiedAccess, trace: TraceContext, action: str
    ) -> Iterator[Stream]:
        """Hold a stream open for the duration of its request."""
        stream = Stream(owner, access, trace, action)
        self._open.add(stream)
        if action == LISTEN:
            self._listens[owner] = self._listens.get(owner, 0) + 1
        try:
            yield stream
        finally:
            self._open.discard(stream)
            if action == LISTEN:
                left = self._listens[owner] - 1
                if left:
                    self._listens[owner] = left
                else:
                    del self._listens[owner]

    def sweep(self) -> None:
        """Check every open stream once: end those whose token is no longer good,
        cut those ended more than :data:`GRACE_SECONDS` ago and still open."""
        now = time.monotonic()
        for stream in list(self._open):
            if stream.ended is not None:
                if now - stream.ended_at >= GRACE_SECONDS:
                    stream.forced.cancel()
                continue
            why = self._check(stream.access)
            if why is None:
                continue
            stream.end(why)
            if self._on_end is not None:
                self._on_end(why[2])
            log.info("%s stream of agent %s ended: %s", stream.action, stream.owner[0], why[1])

    async def watch(self) -> None:
        """Sweep every :data:`WATCH_SECONDS`, for as long as the gateway runs."""
        while True:
            await anyio.sleep(WATCH_SECONDS)
            self.sweep()
