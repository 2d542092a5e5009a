"""One upstream MCP server's client sessions, as the MCP gateway holds them
(:mod:`agentiam.adapters.gateway.mcp_proxy` is the server side that agents talk to).

For each upstream server (:class:`UpstreamServer`) the gateway keeps
(:class:`Upstream`):

- **a catalog session**, over which the four listings are fetched (paged and bounded:
  :data:`MAX_PAGES`, :data:`MAX_ITEMS`) and cached; a stateless (2026-07-28) upstream's
  calls go over it too;
- **for a handshake-era server** (2024-11-05 to 2025-11-25), one session for calls per
  agent and subject (:data:`Owner`), bounded in number (``sessions.max_open``; the
  least recently used idle one is closed at the bound, and when all are busy a call is
  refused: :class:`AllSessionsBusy`) and in idle time (``sessions.idle_seconds``).

Every request to the upstream carries the brokered credential (an ``httpx2`` auth hook)
and records which secret version it used, whether it timed out, and how often the
upstream echoed the credential, in the calling task's :data:`UPSTREAM_USE`; the
agent's token never goes upstream. An echo never reaches the agent: every occurrence
of the credential in an upstream's response body is masked before the SDK parses it
(:class:`~agentiam.adapters.gateway.upstream_transport.UpstreamTransport`), logged
(naming the server, never the value) and counted. See docs/gateway.md, "Upstream
calls".

**List changes** (MCP, server/tools, server/resources and server/prompts, "List Changed
Notification"). Every session of an upstream hands the server's notifications to
:meth:`Upstream._notice`: ``notifications/tools/list_changed``, ``.../resources/...``
and ``.../prompts/...`` mark those listings stale, and :meth:`Upstream.follow` fetches
them again, at most once per :data:`CHANGE_SECONDS` per server whatever the number of
notifications (a burst is coalesced into one fetch after it, and a notification that
arrives during a fetch causes one more, so the last change is never lost). Where they
arrive: a handshake-era session's standalone GET stream (Streamable HTTP, "Listening
for Messages from the Server"; the SDK opens it after ``initialized``), or a reply
stream; at 2026-07-28 only a ``subscriptions/listen`` stream (SEP-2575), which the
gateway keeps open on a stateless upstream's catalog session (:meth:`Upstream._listen`).
See docs/gateway.md, "Tool entities".
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import anyio
import anyio.to_thread
import httpx2
import mcp_types as types
from anyio.abc import TaskGroup
from mcp.client.client import Client
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import listen
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from agentiam import __version__
from agentiam.adapters.gateway.broker import (
    ApiKeyInjection,
    CredentialBroker,
    CredentialRef,
)
from agentiam.adapters.gateway.config import Timeouts, UpstreamTls
from agentiam.adapters.gateway.upstream_transport import ECHO_EXTENSION, UpstreamTransport
from agentiam.errors import AgentIAMError

__all__ = [
    "CHANGE_SECONDS",
    "MAX_ITEMS",
    "MAX_PAGES",
    "MAX_UPSTREAM_SESSIONS",
    "SESSION_IDLE_SECONDS",
    "UPSTREAM_USE",
    "AllSessionsBusy",
    "Changed",
    "ListingKind",
    "Owner",
    "Upstream",
    "UpstreamServer",
    "UpstreamSessions",
    "UpstreamUse",
]

log = logging.getLogger("agentiam.gateway.mcp")

MAX_PAGES: Final = 100  # pages of one upstream listing
MAX_ITEMS: Final = 10_000  # items of one upstream listing
# how long a handshake-era session lives without a request in flight: the gateway's own
# sessions with agents (mcp_proxy; the SDK's default is 30 minutes), and by default an
# upstream's sessions for calls (servers[].sessions.idle_seconds)
SESSION_IDLE_SECONDS: Final = 600.0
# upstream sessions for calls (handshake-era upstreams): one per agent and subject, at
# most this many open per server by default (servers[].sessions.max_open)
MAX_UPSTREAM_SESSIONS: Final = 256

# after a list_changed notification, a server's listings are fetched again at most this
# often (a flood of notifications costs the upstream one fetch per kind a second)
CHANGE_SECONDS: Final = 1.0
# a subscriptions/listen stream that failed or ended is opened again after this long,
# doubled after each failure in a row up to LISTEN_RETRY_MAX
LISTEN_RETRY_MAX: Final = 30.0
# after an upstream could not be reached to learn its capabilities, how long the
# answers that declare the gateway's capabilities go on without asking it again
# (otherwise every initialize would wait for it while it is down)
LEARN_RETRY_SECONDS: Final = 30.0

ListingKind = Literal["tools", "resources", "templates", "prompts"]
# the MCP listing methods and the kind of upstream listing each shows
LISTING_KINDS: Final[Mapping[str, ListingKind]] = {
    "tools/list": "tools",
    "resources/list": "resources",
    "resources/templates/list": "templates",
    "prompts/list": "prompts",
}
# what each list_changed notification makes stale (MCP "List Changed Notification";
# a resource template is listed with the resources, so it is refetched with them)
_CHANGED: Final[dict[str, tuple[ListingKind, ...]]] = {
    "notifications/tools/list_changed": ("tools",),
    "notifications/resources/list_changed": ("resources", "templates"),
    "notifications/prompts/list_changed": ("prompts",),
}
# what Upstream.follow hands on: per kind fetched again, the listing cached before and
# the one fetched (None: none cached, or the fetch failed)
Changed = Callable[
    [Mapping[ListingKind, tuple[list[Any] | None, list[Any] | None]]], Awaitable[None]
]
_KINDS: Final[tuple[ListingKind, ...]] = ("tools", "resources", "templates", "prompts")
# whose calls an upstream session carries: an agent (client_id) and its token's subject
# (the human of a delegated token, the agent itself otherwise)
Owner = tuple[str, str]


# -- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpstreamSessions:
    """The bounds of a handshake-era upstream's sessions for calls (one per agent and
    subject, :class:`Upstream`): at most ``max_open`` open at once, besides the one
    catalog session, and each closed once it has had no call in flight for
    ``idle_seconds``."""

    max_open: int = MAX_UPSTREAM_SESSIONS
    idle_seconds: float = SESSION_IDLE_SECONDS


@dataclass(frozen=True, slots=True)
class UpstreamServer:
    """One upstream MCP server: its name, Streamable HTTP endpoint, the prefix that
    namespaces its tools, resources and prompts, the brokered credential sent
    with every request to it (None: the upstream takes no credential), the CAs and
    client certificate of an https endpoint (None: the system's CAs, no certificate),
    the bounds of its sessions for calls, and whether its tools' annotations
    (``readOnlyHint``, ``destructiveHint``) are trusted as the ``Tool`` attributes
    ``read_only`` and ``destructive`` where the catalog sets none (MCP: annotations
    are untrusted unless they come from a trusted server)."""

    name: str
    url: str
    prefix: str
    credential: CredentialRef | None = None
    tls: UpstreamTls | None = None
    sessions: UpstreamSessions = UpstreamSessions()
    trust_annotations: bool = False


# -- the brokered credential ------------------------------------------------------------------


@dataclass
class UpstreamUse:
    """What the upstream requests of one call did: which brokered secret they used
    (``label``, ``name@version``) or why none could be had (``error``), whether
    one of them timed out (``timed_out``: the upstream did not connect or answer
    within ``timeouts.connect``/``timeouts.read``), and how many occurrences of the
    credential their answers echoed (``echoed``, masked)."""

    label: str | None = None
    error: str | None = None
    timed_out: bool = False
    echoed: int = 0


UPSTREAM_USE: ContextVar[UpstreamUse | None] = ContextVar("agentiam_mcp_upstream_use")


def _note_timeout() -> None:
    """A request to the upstream timed out: noted in the calling task's record (the
    SDK sends a call's requests from tasks that run in the caller's context)."""
    use = UPSTREAM_USE.get(None)
    if use is not None:
        use.timed_out = True


class _BrokeredAuth(httpx2.Auth):
    """Adds the brokered upstream credential to every request to one upstream. The
    SDK's transport sends a message from a task that runs in the sender's context, so
    the call that caused the request learns which secret version was used. A secret
    that cannot be had is not sent at all (the upstream then refuses the call). The
    request names the credential it carries by its echo forms, the broker's (the
    transport's :data:`~agentiam.adapters.gateway.upstream_transport.ECHO_EXTENSION`),
    so that an echo of it in the answer is masked: that of this request, whatever the
    rotation."""

    def __init__(self, broker: CredentialBroker, ref: CredentialRef) -> None:
        self._broker = broker
        self._ref = ref

    async def async_auth_flow(self, request: httpx2.Request) -> AsyncIterator[httpx2.Request]:  # type: ignore[override]
        use = UPSTREAM_USE.get(None)
        try:
            destination = str(request.url)  # its allowed_upstreams are checked
            if isinstance(self._ref, ApiKeyInjection):  # local: the sealed store only
                injection = self._broker.injection_for(self._ref, destination)
            else:  # may fetch a token from the token endpoint
                injection = await anyio.to_thread.run_sync(
                    self._broker.injection_for, self._ref, destination
                )
        except AgentIAMError as exc:
            log.warning("brokered credential unavailable: %s", exc.detail)
            if use is not None:
                use.error = exc.detail
        else:
            for name, value in injection.headers.items():
                request.headers[name] = value
            request.extensions[ECHO_EXTENSION] = injection.echo
            if use is not None:
                use.label = injection.label
        yield request


class _EchoNotice:
    """Told by an upstream's transport when it masked the credential in an answer
    (in the task of the request): the occurrences go to the calling task's
    :data:`UPSTREAM_USE`; each answer holding any is logged, naming the server
    (never the value), and counted (``counted``: the gateway's metric)."""

    __slots__ = ("_counted", "_server")

    def __init__(self, server: str, counted: Callable[[], None] | None) -> None:
        self._server = server
        self._counted = counted

    def __call__(self, masked: int, first: bool) -> None:
        use = UPSTREAM_USE.get(None)
        if use is not None:
            use.echoed += masked
        if first:
            log.warning(
                "upstream %s: the upstream echoed the brokered credential in its answer: masked",
                self._server,
            )
            if self._counted is not None:
                self._counted()


# -- sessions --------------------------------------------------------------------------------


class AllSessionsBusy(Exception):
    """Every upstream session for calls of a server has a call in flight, at its bound."""


@dataclass(eq=False)
class _Held:
    """One upstream MCP client session, held open by a task of the gateway's task group.
    ``owner``: whose calls it carries (None: the catalog session); ``busy``: the calls
    in flight over it; ``last_used``: when one last ended (``time.monotonic``);
    ``lost``: the upstream answered 404 to its ``Mcp-Session-Id``."""

    owner: Owner | None
    stop: anyio.Event = field(default_factory=anyio.Event)
    ready: anyio.Event = field(default_factory=anyio.Event)
    session: ClientSession | None = None
    busy: int = 0
    last_used: float = field(default_factory=time.monotonic)
    lost: bool = False


def _stateless(held: _Held) -> bool:
    """Whether ``held`` negotiated the stateless era (2026-07-28): its requests carry
    no ``Mcp-Session-Id`` (the SDK takes one only from an ``initialize`` answer), so the
    upstream has no session in which callers could meet."""
    session = held.session
    return session is not None and session.protocol_version in MODERN_PROTOCOL_VERSIONS


def _broken(exc: Exception) -> bool:
    """Whether a call's failure leaves its session unusable: the connection closed, or a
    transport error."""
    if isinstance(exc, MCPError):
        return exc.code == CONNECTION_CLOSED
    return isinstance(exc, httpx2.HTTPError | OSError | anyio.BrokenResourceError | RuntimeError)


class Upstream:
    """One upstream server: its MCP client sessions, each opened on first use and held
    by a task of the gateway's task group, and its cached listings.

    - **The catalog session** is opened first. Listings go over it (cached
      ``catalog_seconds``; the gateway filters them per caller). When it negotiated the
      stateless era (2026-07-28) calls go over it too: such an upstream keeps no
      session, so there is nothing for callers to share.
    - **Sessions for calls.** A handshake-era upstream (2024-11-05 to 2025-11-25) keeps
      state per session (a shell, a cart, a log level), so each owner
      (:data:`Owner`: the agent, and the human of a delegated token) gets a
      session of its own; two owners never share one. At most ``sessions.max_open``
      are open at once: at the bound the least recently used one with no call in
      flight is closed to make room; when every one has a call in flight the call is
      refused at once (:class:`AllSessionsBusy`), never queued. One with no call in
      flight for ``sessions.idle_seconds`` is closed; the owner's next call opens a
      new one (the upstream's state of the old one is gone).
    - **Failures.** A session is closed, and the next call reopens it, after a
      transport failure or when the upstream answers 404 to its ``Mcp-Session-Id``
      (it expired or restarted: Streamable HTTP, "Session Management").
    - **Bounded.** Opening a session is bounded by ``timeouts.connect`` +
      ``timeouts.read``, closing it (the SDK's DELETE to the upstream) by
      ``timeouts.connect``; so at most ``max_open`` + 1 tasks hold sessions, besides
      those still closing for that long.
    """

    def __init__(
        self,
        server: UpstreamServer,
        broker: CredentialBroker | None,
        timeouts: Timeouts,
        catalog_seconds: float,
        *,
        echoed: Callable[[], None] | None = None,
    ) -> None:
        """``echoed``: called once per upstream answer in which the brokered
        credential was masked (the gateway counts them)."""
        self.server = server
        self._broker = broker
        self._echo = _EchoNotice(server.name, echoed)
        self._timeouts = timeouts
        self._open_seconds = timeouts.connect + timeouts.read
        self._limits = server.sessions
        self._catalog_seconds = catalog_seconds
        self._tg: TaskGroup | None = None
        self._lock: anyio.Lock | None = None  # opening the catalog session
        self._catalog: _Held | None = None
        self._calls: OrderedDict[Owner, _Held] = OrderedDict()  # least recently used first
        self._holding = 0  # tasks holding a session (opening, open or closing)
        self._drained: anyio.Event | None = None
        # kind -> (when its fetch started, the listing); fetches of a kind are serialised
        self._lists: dict[str, tuple[float, list[Any]]] = {}
        self._list_locks: dict[str, anyio.Lock] = {}
        self._stale: set[ListingKind] = set()  # listings a list_changed made stale
        self._changed: anyio.Event | None = None  # set when _stale gains a kind
        self.notices = 0  # list_changed notifications received
        self.refetches = 0  # listings fetched again after one
        self.refetch_failures = 0  # of which failed
        # what the server declared when a session with it last opened (None: none has)
        self.capabilities: types.ServerCapabilities | None = None
        self._learn_after = 0.0  # monotonic: learn_capabilities skips until then
        # made once: loading a CA bundle takes milliseconds, and sessions are reopened
        self._ssl = None if server.tls is None else server.tls.client_context()

    @property
    def holding(self) -> int:
        """The tasks holding a session: opening, open, or closing."""
        return self._holding

    @property
    def open_for_calls(self) -> int:
        """The sessions for calls, open or being opened (at most ``max_open``)."""
        return len(self._calls)

    @property
    def completes(self) -> bool:
        """Whether the server declared ``completions`` (MCP 2026-07-28 "Completion",
        "Capabilities") when a session with it last opened; False while none has."""
        return self.capabilities is not None and self.capabilities.completions is not None

    async def learn_capabilities(self, seconds: float) -> None:
        """Open the catalog session if no session has opened yet, so that
        :attr:`capabilities` is known, waiting at most ``seconds``; a server that
        cannot be reached in that time stays unknown (nothing is raised), and is not
        asked again for :data:`LEARN_RETRY_SECONDS` (its catalog refresh, or a call
        to it, may learn them sooner)."""
        if self.capabilities is not None or time.monotonic() < self._learn_after:
            return
        # unreachable (MCPError): unknown, so nothing is declared for it
        with anyio.move_on_after(seconds), contextlib.suppress(MCPError):
            await self.session()
        if self.capabilities is None:  # not asked again for LEARN_RETRY_SECONDS
            self._learn_after = time.monotonic() + LEARN_RETRY_SECONDS

    def attach(self, tg: TaskGroup) -> None:
        self._tg = tg
        self._lock = anyio.Lock()
        self._changed = anyio.Event()

    async def session(self) -> ClientSession:
        """The catalog session, opened if need be; an MCPError (connection closed)
        when the upstream cannot be reached."""
        held = await self._catalog_held()
        assert held.session is not None  # _ready returned it
        return held.session

    async def _catalog_held(self) -> _Held:
        held = self._catalog
        if held is not None and held.session is not None:
            return held
        assert self._lock is not None, "the gateway is not running"
        async with self._lock:
            held = self._catalog
            if held is None:
                held = self._catalog = self._start(None)
            await self._ready(held)
            return held

    @asynccontextmanager
    async def for_call(self, owner: Owner) -> AsyncIterator[ClientSession]:
        """The session one call of ``owner``'s goes over, for the call's duration: the
        catalog session when the upstream is stateless, else ``owner``'s own
        (:class:`AllSessionsBusy` when none can be had, an MCPError when it cannot be
        opened). A failure that breaks the session closes it."""
        catalog = await self._catalog_held()
        held = catalog if _stateless(catalog) else self._held_for(owner)
        held.busy += 1
        try:
            yield await self._ready(held)
        except Exception as exc:
            if held.lost or _broken(exc):
                self._close(held)
            raise
        finally:
            held.busy -= 1
            held.last_used = time.monotonic()

    def _held_for(self, owner: Owner) -> _Held:
        """``owner``'s session for calls, started if it has none. At the bound the least
        recently used session with no call in flight is closed first; when every one
        has a call in flight, :class:`AllSessionsBusy`."""
        held = self._calls.get(owner)
        if held is not None:
            self._calls.move_to_end(owner)
            return held
        if len(self._calls) >= self._limits.max_open:
            idle = next((h for h in self._calls.values() if h.busy == 0), None)
            if idle is None:
                log.warning(
                    "upstream %s: all %d sessions for calls are busy; a call was refused",
                    self.server.name,
                    self._limits.max_open,
                )
                raise AllSessionsBusy
            self._close(idle)
        held = self._calls[owner] = self._start(owner)
        return held

    async def _ready(self, held: _Held) -> ClientSession:
        """``held``'s session once open; an MCPError (connection closed) when it could
        not be opened in time."""
        with anyio.move_on_after(self._open_seconds):
            await held.ready.wait()
        if held.session is None:
            self._close(held)
            raise MCPError(CONNECTION_CLOSED, f"upstream {self.server.name} is unavailable")
        return held.session

    def _start(self, owner: Owner | None) -> _Held:
        assert self._tg is not None, "the gateway is not running"
        held = _Held(owner)
        self._tg.start_soon(self._hold, held, name=f"mcp-upstream-{self.server.name}")
        return held

    def _close(self, held: _Held) -> None:
        """Take ``held`` out of use at once (no call gets it from now on); its task
        then closes the session."""
        held.stop.set()
        held.session = None
        held.ready.set()
        if held.owner is None:
            if self._catalog is held:
                self._catalog = None
                self._lists.clear()
        elif self._calls.get(held.owner) is held:
            del self._calls[held.owner]

    async def _hold(self, held: _Held) -> None:
        """Open ``held``'s session, keep it until it is closed or has been idle too
        long, then close it (the SDK tells the upstream: DELETE), each step bounded."""
        self._holding += 1
        try:
            with anyio.CancelScope(deadline=anyio.current_time() + self._open_seconds) as scope:
                async with self._open(held) as session:
                    scope.deadline = math.inf
                    self.capabilities = session.server_capabilities
                    modern = session.protocol_version in MODERN_PROTOCOL_VERSIONS
                    if held.stop.is_set():
                        pass
                    elif held.owner is None and modern:  # the stateless catalog session
                        await self._listening(held, session)
                    else:
                        held.session = session
                        held.ready.set()
                        await self._until_idle(held)
                    self._close(held)
                    scope.deadline = anyio.current_time() + self._timeouts.connect
        except Exception as exc:  # a failed upstream must not take the gateway down
            log.warning("upstream %s: session failed (%s)", self.server.name, type(exc).__name__)
        finally:
            self._close(held)
            self._holding -= 1
            if self._holding == 0 and self._drained is not None:
                self._drained.set()

    async def _until_idle(self, held: _Held) -> None:
        """Wait until ``held`` is closed or, a session for calls, has had no call in
        flight for ``idle_seconds``."""
        if held.owner is None:
            await held.stop.wait()
            return
        idle = self._limits.idle_seconds
        while not held.stop.is_set():
            left = held.last_used + idle - time.monotonic()
            if held.busy == 0 and left <= 0:
                return
            with anyio.move_on_after(left if held.busy == 0 else idle):
                await held.stop.wait()

    async def _listening(self, held: _Held, session: ClientSession) -> None:
        """A stateless upstream's catalog session: ready once its first
        ``subscriptions/listen`` stream is acknowledged (or failed, or not acknowledged
        within ``timeouts.connect``: an upstream that never acknowledges must not hold
        every listing and call up for ``timeouts.read``), so that no listing is fetched
        over it before changes can be heard; the stream is kept open until the session
        is closed."""
        first = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._listen, session, first)
            with anyio.move_on_after(min(self._timeouts.connect, self._timeouts.read)):
                await first.wait()
            if not held.stop.is_set():
                held.session = session
                held.ready.set()
                await held.stop.wait()
            tg.cancel_scope.cancel()

    async def _listen(self, session: ClientSession, first: anyio.Event) -> None:
        """At 2026-07-28 change notifications reach a client only over a
        ``subscriptions/listen`` stream it opened (SEP-2575; the server sends none
        otherwise): one is kept open for the list changes the upstream advertises
        (``listChanged`` in its capabilities), and opened again when it fails or ends
        (after :data:`CHANGE_SECONDS`, doubling up to :data:`LISTEN_RETRY_MAX`). Its
        notifications reach :meth:`_notice` through the session's message handler, as
        in the handshake era. There is no replay: once a stream is acknowledged again
        every listing is fetched again (a change may have been missed meanwhile).
        ``first`` is set once the first stream is acknowledged or has failed."""
        caps = session.server_capabilities
        wanted = {
            "tools": bool(caps and caps.tools and caps.tools.list_changed),
            "resources": bool(caps and caps.resources and caps.resources.list_changed),
            "prompts": bool(caps and caps.prompts and caps.prompts.list_changed),
        }
        if not any(wanted.values()):
            first.set()
            return
        delay = CHANGE_SECONDS
        while True:
            try:
                async with listen(
                    session,
                    tools_list_changed=wanted["tools"],
                    resources_list_changed=wanted["resources"],
                    prompts_list_changed=wanted["prompts"],
                ) as stream:
                    delay = CHANGE_SECONDS
                    if first.is_set():  # not the first: a change may have been missed
                        self._mark(_KINDS)
                    first.set()
                    async for _ in stream:  # each also reaches _notice (the message handler)
                        pass
            except Exception as exc:  # the stream failed: opened again below
                first.set()
                log.info(
                    "upstream %s: subscriptions/listen stream ended (%s)",
                    self.server.name,
                    type(exc).__name__,
                )
            await anyio.sleep(delay)
            delay = min(delay * 2, LISTEN_RETRY_MAX)

    async def _on_message(self, message: Any) -> None:
        """The message handler of every session with this upstream."""
        kinds = _CHANGED.get(getattr(message, "method", ""))
        if kinds is not None:
            self.notices += 1
            self._mark(kinds)

    def _mark(self, kinds: tuple[ListingKind, ...]) -> None:
        """Mark ``kinds`` stale: :meth:`follow` fetches them again. Only sets a flag,
        so a flood of notifications costs no more than the fetches it coalesces into."""
        self._stale.update(kinds)
        if self._changed is not None:
            self._changed.set()

    async def follow(self, changed: Changed) -> None:
        """Fetch the listings a list_changed made stale, for as long as the gateway
        runs: at most once per :data:`CHANGE_SECONDS` (notifications arriving during a
        fetch or the pause after it are served together by the next). The tools
        listing is always fetched (the gateway's ``Tool`` entities are made from it)
        and handed to ``changed`` at once; another kind only when a listing of it is
        cached, and those are handed over together once all are fetched. ``changed``
        gets, per kind, the listing cached before and the one fetched (None when the
        fetch failed). A failed fetch leaves no cached listing of its kind, so the
        next use fetches it."""
        assert self._changed is not None, "the gateway is not running"
        while True:
            await self._changed.wait()
            self._changed = anyio.Event()
            stale, self._stale = self._stale, set()
            started = time.monotonic()
            try:
                await self._refetch(stale, changed)
            except Exception:  # a failure here must not take the gateway down
                log.exception("upstream %s: fetching a changed listing failed", self.server.name)
            await anyio.sleep(started + CHANGE_SECONDS - time.monotonic())

    async def _refetch(self, stale: set[ListingKind], changed: Changed) -> None:
        others: dict[ListingKind, tuple[list[Any] | None, list[Any] | None]] = {}
        for kind in _KINDS:
            if kind not in stale or (kind != "tools" and kind not in self._lists):
                continue
            before = self.cached(kind)
            items = await self.listing(kind, fresh=True)
            self.refetches += 1
            if items is None:
                self.refetch_failures += 1
                self._lists.pop(kind, None)
            log.info(
                "upstream %s: %s list changed; fetched again (%s)",
                self.server.name,
                kind,
                "failed" if items is None else f"{len(items)} listed",
            )
            if kind == "tools":
                await changed({"tools": (before, items)})
            else:
                others[kind] = (before, items)
        if others:
            await changed(others)

    async def aclose(self) -> None:
        """Close every session (at shutdown) and wait for their tasks, at most
        ``timeouts.connect``: each upstream session is ended (DELETE), not left to
        expire there."""
        for held in [*self._calls.values(), *filter(None, [self._catalog])]:
            self._close(held)
        if self._holding:
            self._drained = anyio.Event()
            with anyio.move_on_after(self._timeouts.connect):
                await self._drained.wait()

    @asynccontextmanager
    async def _open(self, held: _Held) -> AsyncIterator[ClientSession]:
        auth = None
        if self.server.credential is not None and self._broker is not None:
            auth = _BrokeredAuth(self._broker, self.server.credential)
        connect, read = self._timeouts.connect, self._timeouts.read
        transport = UpstreamTransport(
            self.server.url,
            connect_timeout=connect,
            read_timeout=read,
            ssl_context=self._ssl,
            on_timeout=_note_timeout,
            on_echo=self._echo,
        )

        async def on_response(response: httpx2.Response) -> None:
            # Streamable HTTP, "Session Management": a 404 to a request carrying the
            # session's id means the upstream no longer has that session
            if response.status_code == 404 and MCP_SESSION_ID_HEADER in response.request.headers:
                held.lost = True

        async with httpx2.AsyncClient(
            auth=auth,
            timeout=httpx2.Timeout(connect, read=read),  # the transport's, for the record
            follow_redirects=False,
            transport=transport,
            event_hooks={"response": [on_response]},
        ) as http:
            client = Client(
                streamable_http_client(self.server.url, http_client=http),
                read_timeout_seconds=self._timeouts.total,
                client_info=types.Implementation(name="agentiam-mcp-gateway", version=__version__),
                cache=None,
                message_handler=self._on_message,
            )
            async with client:
                yield client.session

    def cached(self, kind: ListingKind) -> list[Any] | None:
        """The last listing of ``kind`` fetched and still cached (expired or not)."""
        entry = self._lists.get(kind)
        return None if entry is None else entry[1]

    def cached_tool(self, name: str) -> types.Tool | None:
        entry = self._lists.get("tools")
        if entry is not None:
            for tool in entry[1]:
                if isinstance(tool, types.Tool) and tool.name == name:
                    return tool
        return None

    async def listing(self, kind: ListingKind, *, fresh: bool = False) -> list[Any] | None:
        """The upstream's full listing of ``kind``, cached ``catalog_seconds``
        (``fresh``: fetched now, whatever the cache holds: a fetch that started after
        this call was made will do); None when the upstream cannot be reached. A
        cached listing is timed from when its fetch started, so one that was under
        way when a list_changed arrived never counts as fetched after it."""
        seconds = 0.0 if fresh else self._catalog_seconds
        entry = self._lists.get(kind)
        if entry is not None and time.monotonic() - entry[0] < seconds:
            return entry[1]
        lock = self._list_locks.setdefault(kind, anyio.Lock())
        asked = time.monotonic()
        async with lock:
            entry = self._lists.get(kind)
            # fresh: one fetched since this call asked will do
            if entry is not None and (
                time.monotonic() - entry[0] < seconds or (fresh and entry[0] >= asked)
            ):
                return entry[1]
            held: _Held | None = None
            started = time.monotonic()
            try:
                held = await self._catalog_held()
                items = await self._fetch(kind, held)
            except Exception as exc:
                log.warning(
                    "upstream %s: %s listing failed (%s)",
                    self.server.name,
                    kind,
                    type(exc).__name__,
                )
                broken = held is not None and (held.lost or not isinstance(exc, MCPError))
                if held is not None and (broken or _broken(exc)):
                    self._close(held)
                return None
            self._lists[kind] = (started, items)
            return items

    async def _fetch(self, kind: ListingKind, held: _Held) -> list[Any]:
        session = held.session
        if session is None:  # closed meanwhile
            raise MCPError(CONNECTION_CLOSED, f"upstream {self.server.name} is unavailable")
        capabilities = session.server_capabilities
        if capabilities is not None:
            wanted = {"tools": capabilities.tools, "prompts": capabilities.prompts}.get(
                kind, capabilities.resources
            )
            if wanted is None:
                return []
        items: list[Any] = []
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
            page: Any
            if kind == "tools":
                page = await session.list_tools(params=params)
                items.extend(page.tools)
            elif kind == "resources":
                page = await session.list_resources(params=params)
                items.extend(page.resources)
            elif kind == "templates":
                page = await session.list_resource_templates(params=params)
                items.extend(page.resource_templates)
            else:
                page = await session.list_prompts(params=params)
                items.extend(page.prompts)
            cursor = page.next_cursor
            if not cursor or len(items) >= MAX_ITEMS:
                break
        return items[:MAX_ITEMS]
