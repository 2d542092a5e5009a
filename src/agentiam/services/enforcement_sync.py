"""What the control plane gives remote enforcement points, and what it takes back.

**Policy bundles (push).** A gateway decides calls locally with the same policy set
and entity data as the control plane's decision point. :class:`EnforcementSync`
listens to :class:`~agentiam.services.decisions.DecisionPoint` (its ``on_change``
hook, called by the refresh that loads a new policy version or entity snapshot),
keeps the bundle's etag (:func:`~agentiam.core.policy.bundle.bundle_etag`) in memory
and wakes every subscriber at once, so a long-polling gateway (``GET
/v1/enforcement/bundle``) gets the change from the very refresh that loads it: within
``policy_refresh_seconds`` of a change on any replica, at once on the replica that
made it. The bundle is serialised from the decision point's loaded state, never from
the database, once per etag; polls that find nothing new cost no database read.
The throttles in force (the ``throttle`` response action, :meth:`set_throttles`) ride
in the same bundle: a new throttle changes the etag and wakes every subscriber at once.

**Audit ingest.** Gateways spool their audit events locally and ship them here in
batches (``POST /v1/audit/ingest``). Each event is checked strictly
(:func:`parse_ingested_event`), its ``details`` pass the built-in secret guard
(:func:`~agentiam.core.audit.events.redact`) and its tool arguments this control
plane's redaction rules (configuration adds redaction, never removes it), and the
batch is stored idempotently: an ``event_id`` already stored is skipped, so a gateway
that retries after a crash never duplicates or fails. The answer is given only once
the write is durable (503 otherwise). A verifier key bound to enforcement points and
agents (:attr:`~agentiam.core.access.admin_keys.AdminKey.sources`) may ingest only
their events; an unbound one (made with ``any_source``, or before bindings were
required) still may ingest anything, and its first use in each process is logged as a
warning and every request counted (:meth:`EnforcementSync.unbound_ingests`).
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from agentiam.core.access.admin_keys import AdminKey, IngestBinding
from agentiam.core.audit.events import (
    EVENT_MEMBERS,
    SCHEMA_VERSION,
    ActorType,
    AuditEvent,
    Outcome,
    ResourceRef,
    redact,
)
from agentiam.core.audit.ingest_limits import (
    MAX_CHAIN,
    MAX_DETAILS_BYTES,
    SOURCE_RE,
    STRING_LIMITS,
    details_size,
)
from agentiam.core.audit.redaction import Redactor
from agentiam.core.enforcement.ratelimit import Throttle
from agentiam.core.ids import is_id
from agentiam.core.policy.bundle import bundle_dict, bundle_etag
from agentiam.core.policy.engine import PolicyEngine
from agentiam.core.policy.entities import EntitySnapshot
from agentiam.errors import Forbidden, InvalidInput, PayloadTooLarge
from agentiam.ports import Clock
from agentiam.services.audit import AuditService
from agentiam.services.context import CallContext
from agentiam.services.decisions import DecisionPoint

__all__ = [
    "INGESTED_EVENT",
    "MAX_FUTURE",
    "EnforcementSync",
    "IngestResult",
    "PublishedBundle",
    "agents_named",
    "parse_ingested_event",
]

log = logging.getLogger("agentiam.enforcement")

INGESTED_EVENT = "audit.ingested"
MAX_FUTURE = timedelta(minutes=5)
_TYPE_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
_TRACE_RE = re.compile(r"^[0-9a-f]{32}$")
_SPAN_RE = re.compile(r"^[0-9a-f]{16}$")
_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$")
_MAX_SOURCES_NAMED = 16
# Unbound keys warned about, per process: one warning per key, and no more than this
# many keys remembered (past it the counter goes on, the warnings stop).
_MAX_WARNED_KEYS = 4096
_UNBOUND_WHY = {
    IngestBinding.LEGACY: "made before verifier keys had to be bound; re-issue it with "
    "admin-keys create --source gateway/NAME (or guard/NAME) and revoke this one",
    IngestBinding.ANY_SOURCE: "made unbound on purpose (any_source); if one enforcement "
    "point holds it, re-issue it with admin-keys create --source",
}


@dataclass(frozen=True, slots=True)
class PublishedBundle:
    """One serialised bundle: the whole ``GET /v1/enforcement/bundle`` answer."""

    etag: str
    policy_version: int
    body: bytes  # {"etag", "policy_version", "bundle"} as JSON


@dataclass(frozen=True, slots=True)
class IngestResult:
    accepted: int
    duplicates: int
    event: AuditEvent  # the audit.ingested record of the request


@dataclass(frozen=True, slots=True)
class _Loaded:
    etag: str
    engine: PolicyEngine
    entities: EntitySnapshot


# -- ingest: one event, checked strictly --------------------------------------------------


def _bad(index: int, member: str, problem: str) -> InvalidInput:
    where = f"events[{index}].{member}" if member else f"events[{index}]"
    return InvalidInput(
        f"{where}: {problem}",
        hint="Send events as AuditEvent.to_dict() produces them (schema version 1).",
        errors=[{"loc": ["body", "events", str(index), *member.split(".")], "msg": problem}],
    )


# STRING_LIMITS by (the dotted path of the member's parent ending in a dot, its key):
# _string's look-up, without building the path of every member it checks.
_LIMITS = {
    ("".join(f"{part}." for part in path[:-1]), path[-1]): n for path, n in STRING_LIMITS.items()
}


def _string(
    data: Mapping[str, Any],
    key: str,
    index: int,
    *,
    nullable: bool = False,
    prefix: str = "",
) -> str | None:
    """``data[key]``, a string within its :data:`STRING_LIMITS` (``prefix`` is the
    dotted path of ``data`` in the event, ending in a dot)."""
    value = data[key]
    limit = _LIMITS[prefix, key]
    if type(value) is str and 0 < len(value) <= limit:  # the usual case, at once
        return value
    member = f"{prefix}{key}"
    if value is None:
        if nullable:
            return None
        raise _bad(index, member, "must not be null")
    if not isinstance(value, str):
        raise _bad(index, member, "expected a string")
    if not value or len(value) > limit:
        raise _bad(index, member, f"must be 1-{limit} characters")
    return value


def _members(value: Any, index: int, member: str, names: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _bad(index, member, "expected an object")
    if value.keys() == names:  # the usual case, without building the differences
        return value
    missing = names - value.keys()
    unknown = value.keys() - names
    if missing or unknown:
        name = sorted(missing)[0] if missing else sorted(str(k) for k in unknown)[0]
        raise _bad(
            index, f"{member}.{name}" if member else name, "missing" if missing else "unknown"
        )
    return value


def _event_time(value: Any, index: int, now: datetime) -> datetime:
    if not isinstance(value, str) or not _TIME_RE.fullmatch(value):
        raise _bad(index, "time", "expected an ISO 8601 time with a zone")
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        raise _bad(index, "time", "not a valid time") from None
    if at > now + MAX_FUTURE:
        raise _bad(index, "time", "more than 5 minutes in the future; check the clock")
    return at


# What an enforcement point records: its decisions, its refusals, a gateway's counts of
# anonymous refusals past its audit budget (``api.request.rejected.summary``), the calls
# it made, the MCP gateway's filtered listings (``mcp.list``) and the notification
# streams it admitted (``mcp.stream.opened``), and an operator's deliberate discard of
# events the control plane had refused for good (``audit.discarded``, ``agentiam
# gateway spool rejected discard``).
ENFORCEMENT_EVENT_TYPES = frozenset(
    {
        "authz.decision",
        "tool.call",
        "api.request.rejected",
        "api.request.rejected.summary",
        "mcp.list",
        "mcp.stream.opened",
        "audit.discarded",
    }
)


_OUTCOMES = frozenset(o.value for o in Outcome)
_ACTOR_TYPES = frozenset(a.value for a in ActorType)


def parse_ingested_event(
    data: Any, index: int, *, now: datetime, redactor: Redactor | None = None
) -> AuditEvent:
    """One event an enforcement point sent, checked member by member, or
    :class:`~agentiam.errors.InvalidInput` (422) naming ``events[index].member``.

    The shape is exactly :meth:`AuditEvent.to_dict`'s (schema version 1): every member
    present, none unknown. ``source`` must name an enforcement point (``gateway/…`` or
    ``guard/…``), ``event_id`` be an event id, ``time`` not more than five minutes
    ahead of this server's clock. ``details`` pass the built-in secret guard, and,
    with ``redactor``, the tool arguments they record pass its rules too.
    """
    raw = _members(data, index, "", EVENT_MEMBERS)
    if raw["schema_version"] != SCHEMA_VERSION:
        raise _bad(index, "schema_version", f'must be "{SCHEMA_VERSION}"')
    event_id = raw["event_id"]
    if not isinstance(event_id, str) or not is_id(event_id, "event"):
        raise _bad(index, "event_id", "expected an event id (evt_ and 26 base32 characters)")
    _event_time(raw["time"], index, now)
    event_type = raw["type"]
    if not isinstance(event_type, str) or not _TYPE_RE.fullmatch(event_type):
        raise _bad(index, "type", "expected a lowercase dotted name of at most 64 characters")
    if event_type not in ENFORCEMENT_EVENT_TYPES:
        # token, registry, approval, detection and response facts are the control
        # plane's own: an enforcement point's key must not be able to write them
        raise _bad(index, "type", f"must be one of {', '.join(sorted(ENFORCEMENT_EVENT_TYPES))}")
    if raw["outcome"] not in _OUTCOMES:
        raise _bad(index, "outcome", "must be success, failure or denied")
    actor = _members(raw["actor"], index, "actor", frozenset({"type", "id", "role"}))
    if actor["type"] not in _ACTOR_TYPES:
        raise _bad(index, "actor.type", "not an actor type")
    _string(actor, "id", index, prefix="actor.")
    _string(actor, "role", index, nullable=True, prefix="actor.")
    _string(raw, "action", index)
    if raw["resource"] is not None:
        resource = _members(raw["resource"], index, "resource", frozenset({"type", "id"}))
        _string(resource, "type", index, prefix="resource.")
        _string(resource, "id", index, prefix="resource.")
    source = raw["source"]
    if not isinstance(source, str) or not SOURCE_RE.fullmatch(source):
        raise _bad(
            index, "source", 'must name an enforcement point: "gateway/<name>" or "guard/<name>"'
        )
    for member in ("agent_id", "initiating_human", "decision_id", "policy_version", "reason"):
        _string(raw, member, index, nullable=True)
    chain = raw["delegation_chain"]
    if not isinstance(chain, list) or len(chain) > MAX_CHAIN:
        raise _bad(index, "delegation_chain", f"expected a list of at most {MAX_CHAIN} ids")
    for i, link in enumerate(chain):
        if not isinstance(link, str) or not 1 <= len(link) <= 64:
            raise _bad(index, f"delegation_chain.{i}", "expected an agent id")
    risk = raw["risk_score"]
    if risk is not None and (
        isinstance(risk, bool)
        or not isinstance(risk, int | float)
        or not math.isfinite(risk)
        or not 0 <= risk <= 100
    ):
        raise _bad(index, "risk_score", "expected a number 0-100 or null")
    trace = _members(raw["trace"], index, "trace", frozenset({"trace_id", "span_id"}))
    trace_id, span_id = trace["trace_id"], trace["span_id"]
    if not isinstance(trace_id, str) or not _TRACE_RE.fullmatch(trace_id) or trace_id == "0" * 32:
        raise _bad(index, "trace.trace_id", "expected 32 lowercase hex digits, not all zero")
    if not isinstance(span_id, str) or not _SPAN_RE.fullmatch(span_id) or span_id == "0" * 16:
        raise _bad(index, "trace.span_id", "expected 16 lowercase hex digits, not all zero")
    details = raw["details"]
    if not isinstance(details, Mapping):
        raise _bad(index, "details", "expected an object")
    try:
        size = details_size(details)
    except (TypeError, ValueError):
        raise _bad(index, "details", "not plain JSON") from None
    if size > MAX_DETAILS_BYTES:
        raise _bad(index, "details", f"larger than {MAX_DETAILS_BYTES} bytes")
    # from_dict keeps details as given: the same guard AuditEvent.create applies.
    guarded = redact(dict(details))
    if redactor is not None:
        guarded = _guard_arguments(redactor, raw, guarded)
    return AuditEvent.from_dict({**raw, "details": guarded})


def agents_named(event: AuditEvent) -> frozenset[str]:
    """The agents an ingested event names, as detection charges it to one of them:
    ``agent_id``, an agent actor, and ``details.client_id`` (a refusal's token
    owner)."""
    named = {event.agent_id} if event.agent_id else set()
    if event.actor.type is ActorType.AGENT:
        named.add(event.actor.id)
    client_id = event.details.get("client_id")
    if isinstance(client_id, str) and client_id:
        named.add(client_id)
    return frozenset(named)


def _guard_arguments(
    redactor: Redactor, raw: Mapping[str, Any], details: dict[str, Any]
) -> dict[str, Any]:
    """The redaction rules of this control plane on the tool arguments an event
    records (the gateway applied its own; rules only ever remove more)."""
    arguments = details.get("arguments")
    if not isinstance(arguments, Mapping):
        return details
    resource = raw["resource"]
    call = {
        "action": raw["action"],
        "resource_type": resource["type"] if resource else "",
        "resource_id": resource["id"] if resource else "",
    }
    return {**details, "arguments": redactor.arguments(arguments, call)}


# -- the service ------------------------------------------------------------------------


class EnforcementSync:
    """Feeds remote enforcement points: the policy bundle, pushed on change, and the
    ingest of their audit events. See the module doc."""

    def __init__(
        self,
        decisions: DecisionPoint,
        audit: AuditService,
        clock: Clock,
        *,
        time_zone: str = "UTC",
        redactor: Redactor | None = None,
        max_events: int = 1000,
    ) -> None:
        self._decisions = decisions
        self._audit = audit
        self._clock = clock
        self._zone = time_zone
        self._redactor = redactor or Redactor()
        self._max_events = max_events
        self._lock = threading.Lock()  # the loaded state and the subscribers
        self._build = threading.Lock()  # one serialisation per etag
        self._loaded: _Loaded | None = None
        self._published: PublishedBundle | None = None
        self._subscribers: set[Callable[[], None]] = set()
        self._throttles: tuple[Throttle, ...] = ()
        self._risk: tuple[tuple[str, int], ...] = ()
        self._unbound_lock = threading.Lock()
        self._unbound_warned: set[str] = set()  # key ids, at most _MAX_WARNED_KEYS
        self._unbound_requests = dict.fromkeys(_UNBOUND_WHY, 0)

    # -- bundles ------------------------------------------------------------------------

    @property
    def etag(self) -> str | None:
        """The etag of the state loaded last (None before the first refresh). A plain
        memory read: what a waiting poll compares against."""
        loaded = self._loaded
        return loaded.etag if loaded is not None else None

    def loaded(self, engine: PolicyEngine, entities: EntitySnapshot) -> None:
        """The decision point loaded ``engine`` and ``entities``: take them, and wake
        every subscriber if the bundle changed. Wire it as the decision point's
        ``on_change`` hook (it runs on the refresh thread)."""
        with self._lock:
            etag = self._etag_of(engine, entities)
            changed = self._loaded is None or self._loaded.etag != etag
            self._loaded = _Loaded(etag, engine, entities)
            subscribers = list(self._subscribers) if changed else []
        self._wake(subscribers)

    def _etag_of(self, engine: PolicyEngine, entities: EntitySnapshot) -> str:
        return bundle_etag(
            engine.version,
            entities.fingerprint,
            engine.schema.extension,
            time_zone=self._zone,
            throttles=self._throttles,
            risk=dict(self._risk),
        )

    @property
    def throttles(self) -> tuple[Throttle, ...]:
        """The throttles the bundle carries."""
        return self._throttles

    def set_throttles(self, throttles: Sequence[Throttle]) -> None:
        """Carry these throttles (the complete table) in the bundle from now on; if
        that changes it, wake every subscriber so gateways get it at once."""
        table = tuple(sorted(throttles, key=lambda t: t.agent_id))
        with self._lock:
            if table == self._throttles:
                return
            self._throttles = table
        self._republish()

    def set_risk(self, scores: Mapping[str, int]) -> None:
        """Carry these agents' risk scores (the complete table, from detection) in the
        bundle from now on, so enforcement points decide with them in
        ``context.risk_score``; if that changes it, wake every subscriber."""
        table = tuple(sorted((a, s) for a, s in scores.items() if s > 0))
        with self._lock:
            if table == self._risk:
                return
            self._risk = table
        self._republish()

    def _republish(self) -> None:
        """The bundle's dynamic members changed: a new etag, and every poll woken."""
        with self._lock:
            loaded = self._loaded
            subscribers: list[Callable[[], None]] = []
            if loaded is not None:
                etag = self._etag_of(loaded.engine, loaded.entities)
                self._loaded = _Loaded(etag, loaded.engine, loaded.entities)
                subscribers = list(self._subscribers)
        self._wake(subscribers)

    @staticmethod
    def _wake(subscribers: list[Callable[[], None]]) -> None:
        for wake in subscribers:
            try:
                wake()
            except Exception:
                log.warning("a bundle subscriber failed", exc_info=True)

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake()`` (from the refresh thread; it must be quick) whenever the
        bundle changes; returns the function that unsubscribes."""
        with self._lock:
            self._subscribers.add(wake)

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers.discard(wake)

        return unsubscribe

    @property
    def waiting(self) -> int:
        """How many subscribers (held long polls) wait for the next change."""
        with self._lock:
            return len(self._subscribers)

    def current_etag(self) -> str:
        """The etag in force, after the decision point's staleness check: a control
        plane whose policy data is past ``policy_max_staleness_seconds`` refuses (503)
        rather than tell a gateway its bundle is current."""
        authorizer = self._decisions.authorizer  # refreshes, or raises 503, if stale
        if self._loaded is None:  # on_change was not wired when the state was loaded
            self.loaded(authorizer.engine, authorizer.entities)
        loaded = self._loaded
        assert loaded is not None
        return loaded.etag

    def published(self) -> PublishedBundle:
        """The current bundle, serialised once per etag from the decision point's
        loaded state (no database read)."""
        self.current_etag()
        with self._build:
            with self._lock:  # the state, its throttles and risk scores, as one
                loaded, throttles, risk = self._loaded, self._throttles, self._risk
            assert loaded is not None
            cached = self._published
            if cached is not None and cached.etag == loaded.etag:
                return cached
            engine, entities = loaded.engine, loaded.entities
            bundle = bundle_dict(
                engine.version,
                engine.schema.extension,
                [p.record for p in engine.policies],
                entities.agents.values(),
                entities.humans.values(),
                entities.resources.values(),
                entities.fingerprint,
                time_zone=self._zone,
                throttles=throttles,
                risk=dict(risk),
            )
            body = json.dumps(
                {"etag": loaded.etag, "policy_version": engine.version, "bundle": bundle},
                separators=(",", ":"),
                ensure_ascii=False,
                allow_nan=False,
            ).encode("utf-8")
            self._published = PublishedBundle(loaded.etag, engine.version, body)
            return self._published

    # -- audit ingest -------------------------------------------------------------------

    def ingest(
        self,
        ctx: CallContext,
        events: Sequence[Any],
        *,
        reporter: AdminKey | None = None,
    ) -> IngestResult:
        """Store an enforcement point's batch of events, idempotently, with one
        ``audit.ingested`` record naming the count and the enforcement points, all in
        one transaction. Raises InvalidInput (422) naming the first bad event member,
        PayloadTooLarge (413) past ``max_events``, Forbidden (403) when the binding of
        ``reporter`` (the caller's key, :meth:`AdminKey.may_report`) refuses an event's
        source or agent, ServiceUnavailable (503) if the write cannot be made
        durable. An unbound verifier ``reporter`` is let through (so keys made before
        bindings keep working) but noted: :meth:`_note_unbound`."""
        if not events:
            raise InvalidInput("events: send at least one event")
        if len(events) > self._max_events:
            raise PayloadTooLarge(
                f"at most {self._max_events} events per request",
                hint="Split the batch; the limit is AGENTIAM_LIMIT_MAX_INGEST_EVENTS.",
            )
        now = self._clock.now()
        parsed = [
            parse_ingested_event(raw, i, now=now, redactor=self._redactor)
            for i, raw in enumerate(events)
        ]
        sources = sorted({e.source for e in parsed})
        if reporter is not None:
            for i, event in enumerate(parsed):
                named = agents_named(event)
                if not reporter.may_report(event.source, named):
                    raise Forbidden(
                        f"events[{i}]: this key may not report for source {event.source} "
                        f"naming {', '.join(sorted(named)) or 'no agent'}",
                        hint="Each enforcement point ships with the key bound to it "
                        "(admin-keys create --source/--agent).",
                        errors=[{"loc": ["body", "events", str(i), "source"], "msg": "not bound"}],
                    )
            self._note_unbound(reporter, sources)
        unique: list[AuditEvent] = []  # a repeated id in one batch counts as a duplicate
        seen: set[str] = set()
        for event in parsed:
            if event.event_id not in seen:
                seen.add(event.event_id)
                unique.append(event)
        resource = ResourceRef("enforcement_point", sources[0]) if len(sources) == 1 else None

        def record(fresh: list[AuditEvent]) -> AuditEvent:
            return ctx.event(
                INGESTED_EVENT,
                now=now,
                action="audit.ingest",
                resource=resource,
                details={
                    "received": len(parsed),
                    "accepted": len(fresh),
                    "duplicates": len(parsed) - len(fresh),
                    "sources": sources[:_MAX_SOURCES_NAMED],
                    "first_event_id": parsed[0].event_id,
                    "last_event_id": parsed[-1].event_id,
                },
            )

        # One transaction: the stored ids are read in it, and ids stored meanwhile by
        # a concurrent retry are skipped too.
        fresh, made = self._audit.append_new(unique, record)
        return IngestResult(len(fresh), len(parsed) - len(fresh), made)

    def _note_unbound(self, key: AdminKey, sources: Sequence[str]) -> None:
        """Count an ingest request made with an unbound verifier key and, the first
        time this process sees that key, log a warning naming it (by prefix, never
        the secret) and what to do. Not per event: a busy gateway would flood the log."""
        binding = key.binding
        if binding is None or binding is IngestBinding.BOUND:
            return
        with self._unbound_lock:
            self._unbound_requests[binding] += 1
            first = key.id not in self._unbound_warned
            if first and len(self._unbound_warned) < _MAX_WARNED_KEYS:
                self._unbound_warned.add(key.id)
            else:
                first = False
        if first:
            log.warning(
                "verifier key %s ingests audit events unbound (%s): it may report in any "
                "enforcement point's name%s; this batch came as %s. It was %s.",
                key.prefix,
                binding.value,
                "" if key.agents else " about any agent",
                ", ".join(sources[:_MAX_SOURCES_NAMED]),
                _UNBOUND_WHY[binding],
            )

    def unbound_ingests(self) -> dict[str, int]:
        """Ingest requests this process took with an unbound verifier key since it
        started, by binding (``any_source``, ``legacy``): for ``/metrics``."""
        with self._unbound_lock:
            return {binding.value: n for binding, n in self._unbound_requests.items()}
