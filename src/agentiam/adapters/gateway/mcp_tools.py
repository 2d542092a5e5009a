"""The tools, resources, resource templates and prompts the MCP gateway's upstream
servers list, as the entities its decisions see (docs/gateway.md, "Tool entities",
"Resource and prompt entities").

A ``tools/call`` is decided as ``invoke_tool`` on ``Tool::"<exposed name>"``. Whatever
the catalog says, the gateway's decisions (calls and listings alike) see each tool an
upstream server lists as a member of ``McpServer::"<server name>"``: the gateway's
entity snapshot is the bundle's plus one derived record per listed tool
(:func:`tool_records`), merged by
:meth:`~agentiam.core.policy.entities.EntitySnapshot.with_derived` (the union of the
parents; the catalog's attributes first). It is rebuilt when the bundle changes
(:meth:`~agentiam.adapters.gateway.link.ControlPlaneLink.derive_with`) or when a
server's tool listing changes (:meth:`ListedTools.seen`), never per call, and is
bounded by the listing bounds (``MAX_ITEMS`` per server).

Tool names are the client's, so no entity is made for a name no upstream listed: the
gateway forwards only listed tools (:meth:`ListedTools.ensure`). A name missing from
its server's listing makes the gateway fetch that listing again, at most once per
:data:`REFRESH_SECONDS` per server (a client spraying unknown names cannot make it
hammer the upstream); still missing, the call is refused as an unknown tool.

When an upstream says its tool list changed (``notifications/tools/list_changed``,
:meth:`~agentiam.adapters.gateway.mcp_upstream.Upstream.follow`), the listing fetched
again is :meth:`ListedTools.seen` at once: a tool it dropped is no longer known (an
unknown tool, refused) and one it added is. When that fetch fails, the server's tools
are :meth:`ListedTools.forget`-ten: none is known until a listing of it is fetched
(fail closed; the next call naming one fetches it, as above).

With ``trust_annotations`` (per server, default off) a tool's ``readOnlyHint`` and
``destructiveHint`` become its ``read_only`` and ``destructive`` attributes where the
catalog sets none. MCP ("Tool annotations") says clients must consider annotations
untrusted unless they come from trusted servers, hence opt-in. A call carries the
attributes derived for its tool (:meth:`ListedTools.attributes`,
``AuthzRequest.resource_attributes``), so that the control plane, deciding it again
to open or use an approval, gives the tool the same attributes under its own catalog.

Resources, resource templates and prompts (``DataSet::"<exposed URI>"``,
``DataSet::"<exposed URI template>"``, ``DataSet::"prompt:<exposed name>"``) are in
their server's ``McpServer`` in every decision, listed or not: a URI made from a
template is named by no listing, so the parent comes from the routing, per decision
(:attr:`~agentiam.core.policy.authorizer.AuthzRequest.resource_parents`). So that
this costs no copy of the entities per decision, the same snapshot also holds

* one derived record per listed resource, template and prompt (:func:`item_records`,
  :meth:`ListedTools.items_seen`), and one per catalog ``DataSet`` the gateway routes
  to a server (:func:`catalog_records`): those are decided as they are;
* one stand-in per server (:meth:`EntitySnapshot.with_derived
  <agentiam.core.policy.entities.EntitySnapshot.with_derived>` ``places``): any
  other URI or prompt of that server is decided through it, as if its record were
  merged in.

Their records are not what makes a forbid on a server hold (the routing is, per
decision): a stale one decides as the stand-in would. Forwarding does not depend on
them either: an unlisted resource or prompt is decided and forwarded like a listed
one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from itertools import chain
from typing import Any, Final

import anyio
import anyio.to_thread
import mcp_types as types

from agentiam.adapters.gateway.mcp_upstream import ListingKind, Upstream, UpstreamServer
from agentiam.adapters.gateway.mcp_visibility import PROMPT_ID_PREFIX, in_server
from agentiam.core.policy.entities import EntitySnapshot, Place
from agentiam.core.policy.model import EntityRef, ResourceRecord

__all__ = [
    "PROMPT_ID_PREFIX",
    "REFRESH_SECONDS",
    "ListedTools",
    "catalog_records",
    "in_server",
    "item_records",
    "tool_records",
]

# a name missing from a server's listing fetches that listing again at most this often
REFRESH_SECONDS: Final = 1.0


def tool_records(server: UpstreamServer, tools: Sequence[Any]) -> tuple[ResourceRecord, ...]:
    """One ``Tool`` record per listed tool: its exposed name, in the server's
    ``McpServer``; with ``trust_annotations``, ``read_only`` and ``destructive`` from
    the tool's hints when it gives them."""
    parent = in_server(server.name)
    out: list[ResourceRecord] = []
    for tool in tools:
        if not isinstance(tool, types.Tool):
            continue
        attributes: dict[str, Any] = {}
        hints = tool.annotations
        if server.trust_annotations and hints is not None:
            if isinstance(hints.read_only_hint, bool):
                attributes["read_only"] = hints.read_only_hint
            if isinstance(hints.destructive_hint, bool):
                attributes["destructive"] = hints.destructive_hint
        out.append(ResourceRecord("Tool", server.prefix + tool.name, attributes, parent))
    return tuple(out)


def item_records(
    server: UpstreamServer, kind: ListingKind, items: Sequence[Any]
) -> tuple[ResourceRecord, ...]:
    """One ``DataSet`` record per listed resource, resource template (``kind``
    ``resources``, ``templates``) or prompt (``prompts``): its entity id, in the
    server's ``McpServer``, no attributes. A resource or template whose exposed URI
    starts with ``prompt:`` gets none: it would be a prompt's entity (it is neither
    listed nor read)."""
    ids: list[str] = []
    for item in items:
        if kind == "resources" and isinstance(item, types.Resource):
            ids.append(server.prefix + str(item.uri))
        elif kind == "templates" and isinstance(item, types.ResourceTemplate):
            ids.append(server.prefix + item.uri_template)
        elif kind == "prompts" and isinstance(item, types.Prompt):
            ids.append(PROMPT_ID_PREFIX + server.prefix + item.name)
    prompts = kind == "prompts"
    parent = in_server(server.name)
    return tuple(
        ResourceRecord("DataSet", entity, {}, parent)
        for entity in dict.fromkeys(ids)
        if prompts or not entity.startswith(PROMPT_ID_PREFIX)
    )


def catalog_records(
    base: EntitySnapshot, route: Callable[[str], tuple[UpstreamServer, str] | None]
) -> tuple[ResourceRecord, ...]:
    """One ``DataSet`` record per catalog ``DataSet`` the gateway routes to a server
    that does not have that server's ``McpServer`` among its parents: the server it is
    decided in whenever the gateway decides it (a ``prompt:<name>`` by its name, any
    other by its id, as :func:`~agentiam.adapters.gateway.mcp_calls.prompt_call` and
    :func:`~agentiam.adapters.gateway.mcp_calls.resource_call` are routed)."""
    out: list[ResourceRecord] = []
    for ref, record in base.resources.items():
        if ref.type != "DataSet":
            continue
        name = ref.id.removeprefix(PROMPT_ID_PREFIX)
        found = route(name)
        if found is None:
            continue
        parent = in_server(found[0].name)
        if parent[0] not in record.parents:
            out.append(ResourceRecord("DataSet", ref.id, {}, parent))
    return tuple(out)


class ListedTools:
    """Which exposed tool names the upstream servers list, and the derived records
    the gateway's decisions see: the listed tools', resources', templates' and
    prompts', the catalog data sets' in their servers, and each server's stand-in.

    Invariant (what makes a forbid on ``McpServer::"<server>"`` hold): a name is
    :meth:`known` only while the snapshot in force has its derived record. A new
    listing's records are swapped in (``rederive``) before its new names become
    known; names it drops stop being known before the swap. And :meth:`known` asks
    the snapshot in force (``entities``) whether the tool is in its server: a
    derived record the schema refuses is left out of the snapshot (an id over 512
    characters; a catalog entry whose parents plus the server's would pass
    ``MAX_PARENTS``), and such a tool must not be forwarded as if it had its parent.
    """

    def __init__(
        self,
        upstreams: Mapping[str, Upstream],
        route: Callable[[str], tuple[UpstreamServer, str] | None],
        rederive: Callable[[], None],
        entities: Callable[[], EntitySnapshot | None],
    ) -> None:
        """``route``: the server an exposed name belongs to (``Namespace.route``);
        ``rederive``: swaps in the snapshot :meth:`derive` makes now (blocking, run
        in a worker thread); ``entities``: the snapshot decisions use now."""
        self._upstreams = upstreams
        self._route = route
        self._rederive = rederive
        self._entities = entities
        self._by_server: dict[str, tuple[ResourceRecord, ...]] = {}
        self._source: dict[str, Sequence[Any]] = {}  # the listing each was made from
        # the listed resources', templates' and prompts' records, per (server, kind)
        self._items: dict[tuple[str, ListingKind], tuple[ResourceRecord, ...]] = {}
        self._item_source: dict[tuple[str, ListingKind], Sequence[Any] | None] = {}
        # every server's place: its resources and prompts not in the snapshot are
        # decided through its stand-in (no copy of the snapshot per decision)
        self._places: tuple[Place, ...] = tuple(Place("DataSet", in_server(n)) for n in upstreams)
        self._records: tuple[ResourceRecord, ...] = ()  # read by derive, in any thread
        # the last bundle's entities and them with the catalog placed (derive's, which
        # the link runs one at a time)
        self._catalog: tuple[EntitySnapshot, EntitySnapshot] | None = None
        self._records_lock = threading.Lock()
        self._known: dict[str, str] = {}  # exposed name -> server name
        # server name -> its listed tools' derived attributes (exposed name -> them), as
        # in the snapshot swapped in last (set with _known, after the swap)
        self._attributes: dict[str, dict[str, Mapping[str, Any]]] = {}
        self._changing: anyio.Lock | None = None
        self._refreshing: dict[str, anyio.Lock] = {}
        self._refreshed: dict[str, float] = {}  # server -> when its listing was last forced

    def derive(self, base: EntitySnapshot) -> EntitySnapshot:
        """The bundle's entities with the catalog data sets in their servers
        (:func:`catalog_records`) and the listed items' records merged in, and a
        stand-in per server."""
        with self._records_lock:
            records = self._records
        return self._catalog_placed(base).with_derived(records, places=self._places)

    def _catalog_placed(self, base: EntitySnapshot) -> EntitySnapshot:
        """``base`` with its catalog data sets in their servers
        (:func:`catalog_records`; :meth:`EntitySnapshot.with_catalog_merged
        <agentiam.core.policy.entities.EntitySnapshot.with_catalog_merged>`), built
        once per bundle: a listing change derives over it again, not from scratch."""
        cached = self._catalog
        if cached is not None and cached[0] is base:
            return cached[1]
        records = catalog_records(base, self._route)
        placed = base.with_catalog_merged(records) if records else base
        self._catalog = (base, placed)
        return placed

    def _publish(self) -> None:
        """Make the records of the last listings what :meth:`derive` merges in."""
        items = chain.from_iterable(self._items.values())
        with self._records_lock:
            self._records = (*chain.from_iterable(self._by_server.values()), *items)

    def records_of(self, server: str) -> tuple[ResourceRecord, ...]:
        """The derived records of ``server``'s listed tools, as last swapped in."""
        return self._by_server.get(server, ())

    def attributes(self, exposed: str) -> Mapping[str, Any]:
        """The attributes the gateway derived for the tool ``exposed`` (its record's:
        :func:`tool_records`, from its server's configuration and, with
        ``trust_annotations``, the hints of the listing last swapped in), for the
        call's :attr:`~agentiam.adapters.gateway.enforcer.Call.resource_attributes`:
        what the control plane deciding the call again (opening or using an approval
        for it) must give the tool to see it as the gateway's snapshot does. Empty
        for a tool that is not :meth:`known` or that was derived none. Never anything
        from the agent's request."""
        server = self._known.get(exposed)
        if server is None:
            return {}
        return dict(self._attributes.get(server, {}).get(exposed, {}))

    def known(self, exposed: str) -> bool:
        """Whether an upstream listed ``exposed`` (its server's last listing) and
        the snapshot decisions use has it in that server's ``McpServer``."""
        server = self._known.get(exposed)
        entities = self._entities()
        if server is None or entities is None:
            return False
        parents = entities.parents.get(EntityRef("Tool", exposed), ())
        return EntityRef("McpServer", server) in parents

    def _superseded(self, server: UpstreamServer, tools: Sequence[Any]) -> bool:
        """Whether ``tools`` is no longer ``server``'s last listing fetched: a newer one
        replaced it (a caller's fetch that ended after the refetch a list_changed
        caused), or it was dropped (the refetch failed, or the catalog session closed).
        Such a listing must not undo what a newer one did."""
        return self._upstreams[server.name].cached("tools") is not tools

    async def seen(self, server: UpstreamServer, tools: Sequence[Any]) -> None:
        """A tool listing of ``server`` was fetched: if its records changed, the
        gateway's snapshot is rebuilt (in a worker thread) before this returns. A
        listing already superseded by a newer fetch (or a failed one) is ignored."""
        if self._source.get(server.name) is tools:
            return  # the cached listing already seen (an upstream's is never mutated)
        if self._superseded(server, tools):
            return
        records = tool_records(server, tools)
        if self._by_server.get(server.name) == records:
            self._source[server.name] = tools
            return
        if self._changing is None:
            self._changing = anyio.Lock()
        async with self._changing:
            if self._superseded(server, tools):
                return
            if self._by_server.get(server.name) == records:
                self._source[server.name] = tools
                return
            names = {r.id for r in records}
            for name, owner in list(self._known.items()):
                if owner == server.name and name not in names:
                    del self._known[name]  # before the swap
            self._by_server[server.name] = records
            self._publish()
            await anyio.to_thread.run_sync(self._rederive)
            for name in names:  # after the swap
                self._known[name] = server.name
            self._attributes[server.name] = {r.id: r.attributes for r in records if r.attributes}
            self._source[server.name] = tools

    async def forget(self, server: UpstreamServer) -> None:
        """``server``'s tool listing could not be fetched again after it said the list
        changed: none of its tools is known (refused as unknown, not listed) until a
        listing of it is fetched. The last listing is not trusted any longer: the
        upstream said it is out of date, and a tool it dropped (or whose annotations
        changed) must not be forwarded on the strength of it."""
        if self._changing is None:
            self._changing = anyio.Lock()
        async with self._changing:
            self._source.pop(server.name, None)
            for name, owner in list(self._known.items()):
                if owner == server.name:
                    del self._known[name]  # before the swap
            self._attributes.pop(server.name, None)
            if not self._by_server.pop(server.name, ()):
                return
            self._publish()
            await anyio.to_thread.run_sync(self._rederive)

    async def items_seen(
        self, server: UpstreamServer, kind: ListingKind, items: Sequence[Any] | None
    ) -> None:
        """A listing of ``server``'s resources, templates or prompts (``kind``) was
        fetched (None: it could not be): if their records changed, the gateway's
        snapshot is rebuilt (in a worker thread) before this returns, so a listing's
        decisions find its items in the snapshot. Correctness does not depend on it
        (an item without its record is decided through the server's stand-in, the
        same way); what it saves is the stand-in's cost per decision."""
        key = (server.name, kind)
        if key in self._item_source and self._item_source[key] is items:
            return  # the cached listing already seen
        records = item_records(server, kind, items or ())
        if self._changing is None:
            self._changing = anyio.Lock()
        async with self._changing:
            self._item_source[key] = items
            if self._items.get(key, ()) == records:
                return
            self._items[key] = records
            self._publish()
            await anyio.to_thread.run_sync(self._rederive)

    async def ensure(self, exposed: str) -> bool:
        """Whether ``exposed`` may be forwarded: an upstream lists it. A name its
        server has not listed fetches that server's tool listing again, unless that
        was done less than :data:`REFRESH_SECONDS` ago."""
        if self.known(exposed):
            return True
        route = self._route(exposed)
        if route is None:
            return False
        server = route[0]
        lock = self._refreshing.setdefault(server.name, anyio.Lock())
        async with lock:
            if self.known(exposed):
                return True
            now = time.monotonic()
            last = self._refreshed.get(server.name)
            if last is not None and now - last < REFRESH_SECONDS:
                return False
            self._refreshed[server.name] = now
            tools = await self._upstreams[server.name].listing("tools", fresh=True)
            if tools is not None:
                await self.seen(server, tools)
        return self.known(exposed)
