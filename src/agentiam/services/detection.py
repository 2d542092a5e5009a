"""Behavioural detection over the audit trail, off the decision path.

The trail is the one stream every fact passes through: the control plane's own
decisions and token events, and what enforcement points ship. This service reads it in
trail order behind a durable cursor (``detection``, a row beside the exporters'
cursors, so retention never prunes an entry detection has not seen), turns each entry
into an observation (:mod:`agentiam.core.detection.observation`), runs the detectors
(:class:`~agentiam.core.detection.engine.DetectionEngine`), records every alert as a
``detection.alert`` audit event, and hands it to the responder (the playbooks, see
``services/response.py``).

Nothing here runs inside a decision: the only cost on the decision path is reading the
agent's current risk score (a dictionary look-up), which the PDP puts in
``context.risk_score``. Alerts are recorded durably **before** any response acts on
them, so every response traces back to a recorded alert.

At start the engine is warmed from the trail: the entries before the cursor (at most
``replay`` of them) are replayed with their alerts discarded, so baselines, dedupe
windows and risk scores survive a restart without a second copy of their state.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from agentiam.core.audit.events import Actor, ActorType, AuditEvent, Outcome, ResourceRef
from agentiam.core.audit.trail import decoded_body
from agentiam.core.detection.config import DetectionConfig
from agentiam.core.detection.engine import DetectionEngine
from agentiam.core.detection.model import Alert, Observation
from agentiam.core.detection.observation import observe
from agentiam.core.detection.profile import AgentInfo
from agentiam.core.detection.risk import RiskLedger
from agentiam.core.identities.models import Agent
from agentiam.core.policy.model import EntityRef, ResourceRecord
from agentiam.ports import AuditQuery, Clock, UnitOfWorkFactory
from agentiam.services.audit import AuditService
from agentiam.services.context import CallContext

__all__ = [
    "ALERT_EVENT",
    "DETECTION_CURSOR",
    "AlertResponder",
    "DetectionService",
    "DetectionStatus",
]

log = logging.getLogger(__name__)

ALERT_EVENT = "detection.alert"
# An alert about events older than this (a backlog read after an outage) is recorded
# but not acted on: containment is for what is happening now.
MAX_RESPONSE_AGE = timedelta(minutes=10)
# How often an event naming an agent the registry snapshot lacks may trigger a reload.
_UNKNOWN_AGENT_REFRESH_SECONDS = 1.0
DETECTION_CURSOR = "detection"
SOURCE = "control-plane/detection"


class AlertResponder(Protocol):
    """What acts on an alert (``services/response.py``); it must not raise."""

    def handle(
        self, alert: Alert, *, agent_risk: int, session_risk: int | None
    ) -> Sequence[Any]: ...


class Snapshot(Protocol):
    """The registry and catalog as the PDP holds them (``EntitySnapshot``)."""

    @property
    def agents(self) -> Mapping[str, Agent]: ...

    @property
    def resources(self) -> Mapping[EntityRef, ResourceRecord]: ...


@dataclass(frozen=True, slots=True)
class DetectionStatus:
    enabled: bool
    position: int  # the next trail index to read
    processed: int  # entries read since start (replay excluded)
    alerts: int  # alerts raised since start
    last_run_at: datetime | None
    errors: int  # passes that failed (retried)
    engine: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "position": self.position,
            "processed": self.processed,
            "alerts": self.alerts,
            "last_run_at": self.last_run_at.isoformat() if self.last_run_at else None,
            "errors": self.errors,
            "engine": dict(self.engine),
        }


def _target_attributes(record: ResourceRecord) -> dict[str, Any]:
    """The catalog's view of a target: its environment, data domain, tenant, host."""
    attrs = record.attributes
    found: dict[str, Any] = {}
    for key, name in (("environment", "environment"), ("data_domain", "domain")):
        value = attrs.get(name)
        if isinstance(value, str) and value:
            found[key] = value
    for key in ("tenant", "host"):
        value = record.tags.get(key) or attrs.get(key)
        if isinstance(value, str) and value:
            found[key] = value.lower() if key == "host" else value
    return found


class DetectionService:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        clock: Clock,
        audit: AuditService,
        snapshot: Callable[[], Snapshot],
        *,
        config: DetectionConfig | None = None,
        integrate: Callable[[], object] | None = None,
        refresh: Callable[[], object] | None = None,
        batch: int = 500,
        replay: int = 50_000,
    ) -> None:
        self._uow = uow
        self._clock = clock
        self._audit = audit
        self._snapshot = snapshot
        self._integrate = integrate
        self._refresh = refresh
        self._refreshed_at = float("-inf")
        self._batch = batch
        self._replay = replay
        self.config = config or DetectionConfig()
        self._infos: dict[str, tuple[Agent, AgentInfo]] = {}
        self.engine = DetectionEngine(self.config, self._profile)
        self.responder: AlertResponder | None = None
        # Given the risk table (agent -> score, > 0) whenever it changed, at most once
        # a second: how enforcement points get the scores (EnforcementSync.set_risk).
        self.on_scores: Callable[[Mapping[str, int]], None] | None = None
        self._scores: dict[str, int] = {}
        self._scores_at = float("-inf")
        self._lock = threading.Lock()  # one pass at a time
        # The engine is single-threaded: passes observe, the PDP's threads read scores.
        self._engine_lock = threading.Lock()
        self._warm = False
        self._position = 0
        self._processed = 0
        self._alerts = 0
        self._errors = 0
        self._last_run_at: datetime | None = None

    # -- what the rest of the control plane asks ----------------------------------------

    def risk(self, principal: EntityRef) -> int:
        """The server's risk score for a principal (0-100), for ``context.risk_score``.
        Only agents are scored; anything else is 0."""
        if principal.type != "Agent":
            return 0
        return self.agent_risk(principal.id)

    def agent_risk(self, agent_id: str) -> int:
        now = self._clock.now()
        with self._engine_lock:
            return self.engine.risk(agent_id, now)

    def session_risk(self, session: str) -> int:
        now = self._clock.now()
        with self._engine_lock:
            return self.engine.session_risk(session, now)

    def status(self) -> DetectionStatus:
        return DetectionStatus(
            enabled=True,
            position=self._position,
            processed=self._processed,
            alerts=self._alerts,
            last_run_at=self._last_run_at,
            errors=self._errors,
            engine=self._engine_stats(),
        )

    def top(self, *, minimum: float = 1, limit: int = 100) -> list[tuple[str, int]]:
        """The agents whose risk is at least ``minimum`` now, highest first, each with
        its score as the PDP reads it (a whole number, rounded up)."""
        now = self._clock.now()
        with self._engine_lock:
            ranked = self.engine.ledger.top(now, minimum=minimum, limit=limit)
        return [(agent, math.ceil(score)) for agent, score in ranked]

    def recent_alerts(self, agent_id: str | None, *, limit: int = 20) -> list[AuditEvent]:
        """The latest ``detection.alert`` events (of one agent, or all) from the trail,
        newest last, over the window in which an alert still weighs on a score (twelve
        half-lives: what is older counts for less than 1/4096 of its points)."""
        window = timedelta(seconds=self.config.risk.half_life_seconds * 12)
        since = self._clock.now() - window
        kept: list[AuditEvent] = []
        after: str | None = None
        for _ in range(50):  # bounded: at most 50,000 alerts read
            page = self._audit.find(
                AuditQuery(
                    limit=1000, type=ALERT_EVENT, agent_id=agent_id, since=since, after=after
                )
            )
            kept = (kept + list(page.items))[-limit:]
            if page.next_after is None:
                break
            after = page.next_after
        return kept

    @staticmethod
    def alert_sessions(alerts: Sequence[AuditEvent]) -> list[str]:
        """The sessions ``alerts`` named, newest first, each once."""
        named = dict.fromkeys(
            s for e in alerts if isinstance(s := e.details.get("session"), str) and s
        )
        return list(reversed(named))

    def recorded_scores(self, *, limit: int = 50_000) -> RiskLedger:
        """Risk scores rebuilt from the recorded alerts alone, for a process that does
        not run detection (the CLI): a score is a function of the alerts, so this
        agrees with the serving replica's."""
        ledger = RiskLedger(self.config.risk)
        for event in self.recent_alerts(None, limit=limit):
            points = event.details.get("score")
            session = event.details.get("session")
            if event.agent_id and isinstance(points, int | float):
                ledger.add(
                    event.agent_id,
                    session if isinstance(session, str) else None,
                    float(points),
                    event.time,
                )
        return ledger

    def _publish_scores(self) -> None:
        """Hand the current scores to ``on_scores`` when they changed (scores decay,
        so at most once a second; at most the 10,000 highest)."""
        if self.on_scores is None:
            return
        now = time.monotonic()
        if now - self._scores_at < 1.0:
            return
        self._scores_at = now
        # every score the PDP would read as 1 or more (it rounds up), so a gateway
        # decides with the same number
        scores = dict(self.top(minimum=1e-9, limit=10_000))
        if scores == self._scores:
            return
        self._scores = scores
        try:
            self.on_scores(scores)
        except Exception:
            log.warning("publishing risk scores failed", exc_info=True)

    def _engine_stats(self) -> Mapping[str, Any]:
        with self._engine_lock:
            return self.engine.stats()

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> int:
        """Read what the trail holds past the cursor, detect, record and respond;
        returns the number of entries read. Safe to call from any thread (one pass at a
        time). A failed pass leaves the cursor where the last good page left it."""
        with self._lock:
            try:
                if not self._warm:
                    self._warm_up()
                if self._integrate is not None:
                    self._integrate()  # log what was just written, for a short delay
                total = 0
                while True:
                    read = self._page()
                    total += read
                    if read < self._batch:
                        break
                self._last_run_at = self._clock.now()
                self._publish_scores()
                return total
            except Exception:
                # The engine may have read part of a page whose cursor did not move: a
                # retry would count those entries twice. Rebuild from the trail instead.
                self._errors += 1
                with self._engine_lock:
                    self.engine = DetectionEngine(self.config, self._profile)
                self._warm = False
                raise

    def _page(self) -> int:
        with self._uow(read_only=True) as uow:
            position = uow.trail.cursor(DETECTION_CURSOR)
            page = uow.trail.entries(position, self._batch)
        if not page:
            self._position = position
            return 0
        for entry, body in page:
            for alert in self._detect(entry.index, body):
                self._raise(alert)
        last = page[-1][0].index + 1
        with self._uow() as uow:
            uow.trail.advance(DETECTION_CURSOR, last, self._clock.now())
            uow.commit()
        self._position = last
        self._processed += len(page)
        return len(page)

    def _detect(self, index: int, body: str | None) -> list[Alert]:
        if not body:
            return []
        observation = self._observation(index, body)
        if observation is None:
            return []
        with self._engine_lock:
            return self.engine.observe(observation)

    def _observation(self, index: int, body: str) -> Observation | None:
        try:
            event = decoded_body(body)
        except ValueError:
            return None
        if not isinstance(event, dict):
            return None
        observation = observe(index, event)
        if observation is None or not self._registered(observation.agent_id):
            return None
        return self._enriched(observation)

    def _registered(self, agent_id: str) -> bool:
        """Only registered agents are watched: an id nobody registered (a forged claim,
        a flood of random ids meant to evict real baselines) creates no state. An id
        the snapshot lacks reloads it, at most once a second."""
        if agent_id in self._snapshot().agents:
            return True
        if self._refresh is None:
            return False
        now = time.monotonic()
        if now - self._refreshed_at < _UNKNOWN_AGENT_REFRESH_SECONDS:
            return False
        self._refreshed_at = now
        try:
            self._refresh()
        except Exception:
            log.warning("registry reload for detection failed", exc_info=True)
            return False
        return agent_id in self._snapshot().agents

    def _enriched(self, observation: Observation) -> Observation:
        """Add what the catalog knows of the target (environment, data domain, tenant,
        host) where the event itself did not say."""
        if observation.resource is None or "::" not in observation.resource:
            return observation
        type_, _, id_ = observation.resource.partition("::")
        record = self._snapshot().resources.get(EntityRef(type_, id_.strip('"')))
        if record is None:
            return observation
        extra = {
            k: v for k, v in _target_attributes(record).items() if k not in observation.attributes
        }
        if not extra:
            return observation
        return replace(observation, attributes={**observation.attributes, **extra})

    def _raise(self, alert: Alert) -> None:
        """Record the alert, then respond to it: nothing acts on an unrecorded alert."""
        now = self._clock.now()
        agent_risk = self.agent_risk(alert.agent_id)
        session_risk = self.session_risk(alert.session) if alert.session is not None else None
        self._audit.append([alert_event(alert, agent_risk, now)])
        self._alerts += 1
        responder = self.responder
        if responder is None:
            return
        if now - alert.time > MAX_RESPONSE_AGE:
            log.warning(
                "alert %s is about events older than %s; recorded, not acted on",
                alert.alert_id,
                MAX_RESPONSE_AGE,
            )
            return
        try:
            responder.handle(alert, agent_risk=agent_risk, session_risk=session_risk)
        except Exception:  # a responder must not stop detection; it audits its failures
            log.exception("the response to alert %s failed", alert.alert_id)

    def start(self) -> None:
        """Warm up now, before the loop runs (``Container.start_background``). On the
        first start over an existing trail the cursor is set to its end: history
        trains the baselines but is not judged as if it were happening now."""
        with self._lock:
            if not self._warm:
                self._warm_up()

    def _warm_up(self) -> None:
        """Replay the entries before the cursor, alerts discarded (see module doc)."""
        with self._uow(read_only=True) as uow:
            position = uow.trail.cursor(DETECTION_CURSOR)
        if position == 0:  # never ran here: what the trail holds is history
            if self._integrate is not None:
                self._integrate()
            with self._uow() as uow:
                position = uow.trail.head()[0]
                if position:
                    uow.trail.advance(DETECTION_CURSOR, position, self._clock.now())
                    uow.commit()
        start = max(0, position - self._replay)
        replayed = 0
        while start < position:
            with self._uow(read_only=True) as uow:
                page = uow.trail.entries(start, min(self._batch, position - start))
            if not page:
                break
            for entry, body in page:
                if entry.index >= position:
                    break
                self._detect(entry.index, body)
                replayed += 1
            start = page[-1][0].index + 1
        self._position = position
        self._warm = True
        if replayed:
            log.info("detection warmed from %d trail entries", replayed)

    def _profile(self, agent_id: str) -> AgentInfo | None:
        agent = self._snapshot().agents.get(agent_id)
        if agent is None:
            return None
        cached = self._infos.get(agent_id)
        if cached is not None and cached[0] is agent:
            return cached[1]
        info = AgentInfo.of(agent)
        self._infos[agent_id] = (agent, info)
        return info


def alert_event(alert: Alert, agent_risk: int, now: datetime) -> AuditEvent:
    """The ``detection.alert`` audit event: the alert with its evidence, the agent as
    the resource, the human it traces back to, and the agent's risk after it."""
    ctx = CallContext.system(SOURCE)
    return AuditEvent.create(
        type=ALERT_EVENT,
        actor=Actor(ActorType.SYSTEM, SOURCE),
        action=alert.detector,
        source=SOURCE,
        trace=ctx.trace,
        now=now,
        outcome=Outcome.SUCCESS,
        resource=ResourceRef("agent", alert.agent_id),
        agent_id=alert.agent_id,
        initiating_human=alert.initiating_human,
        risk_score=float(agent_risk),
        reason=alert.evidence.summary[:500],
        details=alert.to_dict(),
    )
