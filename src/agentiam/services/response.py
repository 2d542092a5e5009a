"""Automatic response: carry out the playbooks an alert triggers (docs/response.md).

:meth:`ResponseService.handle` is called by the detection service for every alert.
It selects the matching playbooks (:func:`~agentiam.core.response.playbooks.matching`),
skips those cooling down for the agent, and runs each action through the service that
owns it, as ``CallContext.system("control-plane/response")``:

- ``suspend``: the agent's lifecycle transition (which also revokes its tokens and
  decommissions its ephemeral children);
- ``revoke_tokens``: :meth:`RevocationService.revoke_agent`;
- ``quarantine_subtree``: the agent and every registry descendant suspended, their
  tokens cut off, every token delegated from theirs revoked by jti, their delegation
  grants revoked;
- ``step_up``: a Cedar forbid ``response-stepup-<agent>`` that holds unless
  ``context.approval.state == "approved"``, removed by :meth:`sweep` when its time is
  up or after ``count`` allowed decisions of the agent in the class;
- ``throttle``: a temporary per-agent cap, applied by this control plane's
  ``POST /v1/authorize`` (:meth:`check_throttle`) and carried to gateways in the
  policy bundle;
- ``notify``: a Standard Webhooks signed POST, queued and retried in the background.

Every action is audited as a ``response.action`` event whose details name the
playbook, the action, ``dry_run``, the ``alert_id``, the detector and the result, so an
alert can be followed to what was done about it. A failing action is audited with
outcome ``failure`` and the next action still runs; :meth:`handle` never raises.
A ``dry_run`` playbook audits what it would do and changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from agentiam.core.audit.events import AuditEvent, Outcome, ResourceRef
from agentiam.core.credentials.revocations import MAX_TOKEN_LIFETIME
from agentiam.core.delegation.models import TokenNode
from agentiam.core.detection.model import Alert
from agentiam.core.enforcement.ratelimit import RateLimiter, Throttle
from agentiam.core.identities.lifecycle import AgentStatus, LifecycleAction
from agentiam.core.ids import new_id
from agentiam.core.policy.values import entity_literal
from agentiam.core.response.playbooks import (
    ACTION_CLASSES,
    Action,
    AgentFacts,
    Cooldowns,
    Playbook,
    PlaybookFile,
    matching,
)
from agentiam.errors import AgentIAMError, InvalidTransition, NotFound
from agentiam.ports import AuditQuery, Clock, GrantQuery, UnitOfWorkFactory
from agentiam.services.agents import AgentService
from agentiam.services.audit import AuditService
from agentiam.services.context import CallContext
from agentiam.services.decisions import DecisionPoint
from agentiam.services.enforcement_sync import EnforcementSync
from agentiam.services.grants import GrantService
from agentiam.services.policies import PolicyService
from agentiam.services.revocations import RevocationService

__all__ = [
    "RESPONSE_EVENT",
    "RESPONSE_SOURCE",
    "Notifier",
    "ResponseOutcome",
    "ResponseService",
    "step_up_policy_id",
]

log = logging.getLogger("agentiam.response")

RESPONSE_EVENT = "response.action"
RESPONSE_SOURCE = "control-plane/response"
STEP_UP_PREFIX = "response-stepup-"
MAX_SUBTREE = 1000  # registry descendants a quarantine walks
MAX_DELEGATED = 500  # delegated tokens a quarantine revokes one by one
MAX_RESTORE_EVENTS = 20_000  # trail events read back at start
_PAGE = 500
_NOTIFY_QUEUE = 1000
_NOTIFY_ATTEMPTS = 4
_NOTIFY_BACKOFF = 1.0  # seconds, doubled after each failed attempt


def step_up_policy_id(agent_id: str) -> str:
    """The id of the step-up policy written for an agent."""
    return f"{STEP_UP_PREFIX}{agent_id}"


class Notifier(Protocol):
    """Sends one notification to a configured webhook (the adapter signs it and vets
    the address); raises on failure, with a message safe to log."""

    def send(self, webhook: str, message_id: str, body: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class ResponseOutcome:
    """What one action of one playbook did: ``result`` is ``done``, ``would_do``
    (dry run), ``queued`` (a notification), ``skipped`` (nothing to do, e.g. already
    suspended; or the playbook is cooling down: action ``*``) or ``failed``."""

    playbook: str
    action: str
    dry_run: bool
    result: str
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "playbook": self.playbook,
            "action": self.action,
            "dry_run": self.dry_run,
            "result": self.result,
            "detail": dict(self.detail),
        }


@dataclass(frozen=True, slots=True)
class _AlertRef:
    """What a ``response.action`` event repeats of the alert it answers."""

    alert_id: str
    agent_id: str
    detector: str
    category: str | None = None
    severity: str | None = None
    initiating_human: str | None = None

    @classmethod
    def of(cls, alert: Alert) -> _AlertRef:
        return cls(
            alert.alert_id,
            alert.agent_id,
            alert.detector,
            alert.category.value,
            alert.severity.label,
            alert.initiating_human,
        )


@dataclass(frozen=True, slots=True)
class _Measure:
    """A time-bounded measure in force: a step-up or a throttle."""

    kind: str  # step_up | throttle
    agent_id: str
    playbook: str
    alert_id: str
    detector: str
    started: datetime
    until: datetime
    params: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class _Notice:
    playbook: str
    alert: Alert
    webhook: str
    message_id: str
    body: bytes


class ResponseService:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        clock: Clock,
        playbooks: PlaybookFile,
        *,
        agents: AgentService,
        revocations: RevocationService,
        grants: GrantService,
        policies: PolicyService,
        decisions: DecisionPoint,
        enforcement: EnforcementSync,
        audit: AuditService,
        notifier: Notifier | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._uow = uow
        self._clock = clock
        self.playbooks = playbooks
        self._agents = agents
        self._revocations = revocations
        self._grants = grants
        self._policies = policies
        self._decisions = decisions
        self._enforcement = enforcement
        self._audit = audit
        self._notifier = notifier
        self._monotonic = monotonic
        self.cooldowns = Cooldowns()
        self._lock = threading.RLock()  # the measures; one playbook run at a time
        self._measures: dict[tuple[str, str], _Measure] = {}
        self._limiter = RateLimiter(wall_clock=lambda: self._clock.now().timestamp())
        self._notices: queue.Queue[_Notice] = queue.Queue(maxsize=_NOTIFY_QUEUE)
        self._stop = threading.Event()
        self._sender: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Rebuild cool-downs and the measures in force from recent ``response.action``
        events in the trail, then start the notification sender."""
        self.restore()
        if self._notifier is not None and self._sender is None:
            self._sender = threading.Thread(target=self._send_loop, daemon=True, name="notify")
            self._sender.start()

    def close(self) -> None:
        self._stop.set()

    # -- the entry point --------------------------------------------------------------------

    def handle(
        self, alert: Alert, *, agent_risk: int, session_risk: int | None
    ) -> list[ResponseOutcome]:
        """Run every playbook the alert triggers; never raises (see the module doc)."""
        try:
            return self._handle(alert, agent_risk, session_risk)
        except Exception:  # never let a response failure reach the detection loop
            log.exception("response to alert %s failed", alert.alert_id)
            return []

    def _handle(
        self, alert: Alert, agent_risk: int, session_risk: int | None
    ) -> list[ResponseOutcome]:
        if not self.playbooks.playbooks:
            return []
        try:
            agent = self._agents.get(alert.agent_id)
            facts = AgentFacts(agent.environment, dict(agent.labels))
        except NotFound:
            facts = AgentFacts()
        selected = matching(self.playbooks.playbooks, alert, agent_risk, session_risk, facts)
        outcomes: list[ResponseOutcome] = []
        for playbook in selected:
            if not self.cooldowns.claim(playbook, alert.agent_id, self._clock.now()):
                outcomes.append(
                    ResponseOutcome(
                        playbook.name, "*", playbook.dry_run, "skipped", {"why": "cooldown"}
                    )
                )
                continue
            outcomes.extend(self._run(playbook, alert))
        return outcomes

    def _run(self, playbook: Playbook, alert: Alert) -> list[ResponseOutcome]:
        ctx = CallContext.system(RESPONSE_SOURCE)
        done: list[ResponseOutcome] = []
        # notifications last: they report what the other actions did
        ordered = [a for a in playbook.actions if a.kind != "notify"] + [
            a for a in playbook.actions if a.kind == "notify"
        ]
        for action in ordered:
            outcome = self._one(ctx, playbook, alert, action, done)
            done.append(outcome)
        return done

    def _one(
        self,
        ctx: CallContext,
        playbook: Playbook,
        alert: Alert,
        action: Action,
        done: Sequence[ResponseOutcome],
    ) -> ResponseOutcome:
        try:
            if playbook.dry_run:
                result, detail = "would_do", self._preview(alert, action)
            else:
                result, detail = self._execute(ctx, playbook, alert, action, done)
        except Exception as exc:  # one failing action never stops the next
            result, detail = "failed", {"error": _error_text(exc)}
            log.warning(
                "response %s/%s for alert %s failed: %s",
                playbook.name,
                action.kind,
                alert.alert_id,
                detail["error"],
            )
        outcome = ResponseOutcome(playbook.name, action.kind, playbook.dry_run, result, detail)
        self._record(ctx, _AlertRef.of(alert), outcome, action.params)
        return outcome

    # -- recording --------------------------------------------------------------------------

    def _record(
        self,
        ctx: CallContext,
        alert: _AlertRef,
        outcome: ResponseOutcome,
        params: Mapping[str, Any],
        *,
        verb: str | None = None,
    ) -> None:
        details = {
            "response_id": new_id("response"),
            "playbook": outcome.playbook,
            "action": outcome.action,
            "params": {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()},
            "dry_run": outcome.dry_run,
            "alert_id": alert.alert_id,
            "detector": alert.detector,
            "category": alert.category,
            "severity": alert.severity,
            "result": outcome.result,
            **dict(outcome.detail),
        }
        try:
            self._audit.record(
                ctx,
                type=RESPONSE_EVENT,
                action=f"response.{verb or outcome.action}",
                outcome=Outcome.FAILURE if outcome.result == "failed" else Outcome.SUCCESS,
                resource=ResourceRef("agent", alert.agent_id),
                reason=f"playbook {outcome.playbook} on alert {alert.alert_id} ({alert.detector})",
                details=details,
                initiating_human=alert.initiating_human,
            )
        except Exception:
            # the action itself stands; the trail is the one place that lost it
            log.error(
                "could not audit response %s/%s for alert %s",
                outcome.playbook,
                outcome.action,
                alert.alert_id,
            )

    # -- actions ----------------------------------------------------------------------------

    def _preview(self, alert: Alert, action: Action) -> dict[str, Any]:
        """What the action would do, without doing it."""
        agent_id = alert.agent_id
        if action.kind == "step_up":
            return {
                "policy_id": step_up_policy_id(agent_id),
                "policy": self._step_up_text(agent_id, action.params["actions"]),
            }
        if action.kind == "quarantine_subtree":
            return {"agents": self._subtree(agent_id)[0]}
        if action.kind == "notify":
            return {"webhook": action.params["webhook"]}
        return {"agent_id": agent_id}

    def _execute(
        self,
        ctx: CallContext,
        playbook: Playbook,
        alert: Alert,
        action: Action,
        done: Sequence[ResponseOutcome],
    ) -> tuple[str, dict[str, Any]]:
        reason = f"response playbook {playbook.name}: alert {alert.alert_id} ({alert.detector})"
        reason = reason[:400]
        kind = action.kind
        if kind == "suspend":
            return self._suspend(ctx, alert.agent_id, reason)
        if kind == "revoke_tokens":
            cutoff = self._revocations.revoke_agent(ctx, alert.agent_id, reason)
            return "done", {"cutoff": cutoff}
        if kind == "quarantine_subtree":
            return self._quarantine(ctx, alert.agent_id, reason)
        if kind == "step_up":
            return self._step_up(ctx, playbook, alert, action.params, reason)
        if kind == "throttle":
            return self._throttle(playbook, alert, action.params)
        if kind == "notify":
            return self._notify(playbook, alert, action.params["webhook"], done)
        raise ValueError(f"unknown action kind {kind}")  # load_playbooks refuses it first

    def _suspend(self, ctx: CallContext, agent_id: str, reason: str) -> tuple[str, dict[str, Any]]:
        agent = self._agents.get(agent_id)
        if agent.status is not AgentStatus.ACTIVE:
            return "skipped", {"why": f"agent is {agent.status.value}"}
        self._agents.transition(ctx, agent_id, LifecycleAction.SUSPEND, reason)
        self._propagate()
        return "done", {"from": agent.status.value, "to": AgentStatus.SUSPENDED.value}

    def _propagate(self) -> None:
        """Make a registry change and its revocations effective at once on this replica
        (and, through the bundle and the feed, on every gateway)."""
        self._revocations.sync()
        try:
            self._decisions.refresh()
        except Exception:
            log.warning("policy refresh after a response failed; the poll will retry")

    def _subtree(self, agent_id: str) -> tuple[list[str], bool]:
        """The agent and its registry descendants, breadth first, at most MAX_SUBTREE."""
        found = [agent_id]
        frontier = [agent_id]
        truncated = False
        with self._uow(read_only=True) as uow:
            while frontier and not truncated:
                following: list[str] = []
                for parent in frontier:
                    for child in uow.agents.children(parent):
                        if child.id in found:
                            continue
                        if len(found) >= MAX_SUBTREE:
                            truncated = True
                            break
                        found.append(child.id)
                        following.append(child.id)
                frontier = following
        return found, truncated

    def _delegated(self, agent_ids: Sequence[str]) -> tuple[list[TokenNode], bool]:
        """Every live delegated token derived from a token issued to one of
        ``agent_ids`` within the longest token lifetime (from the trail's
        ``token.issued``/``token.exchanged`` events and the delegation graph)."""
        since = self._clock.now() - timedelta(seconds=MAX_TOKEN_LIFETIME)
        roots: list[str] = []
        for agent_id in agent_ids:
            for kind in ("token.issued", "token.exchanged"):
                page = self._audit.find(
                    AuditQuery(limit=_PAGE, agent_id=agent_id, type=kind, since=since)
                )
                for event in page.items:
                    jti = event.details.get("jti")
                    if isinstance(jti, str):
                        roots.append(jti)
        nodes: list[TokenNode] = []
        seen = set(roots)
        frontier = list(dict.fromkeys(roots))
        truncated = False
        now = self._clock.now()
        with self._uow(read_only=True) as uow:
            while frontier and not truncated:
                children = uow.token_graph.children(frontier[:_PAGE])
                frontier = frontier[_PAGE:]
                for node in children:
                    if node.jti in seen:
                        continue
                    seen.add(node.jti)
                    frontier.append(node.jti)
                    if node.expires_at <= now:
                        continue
                    if len(nodes) >= MAX_DELEGATED:
                        truncated = True
                        break
                    nodes.append(node)
        return nodes, truncated

    def _quarantine(
        self, ctx: CallContext, agent_id: str, reason: str
    ) -> tuple[str, dict[str, Any]]:
        agents, truncated = self._subtree(agent_id)
        suspended: list[str] = []
        for member in agents:  # the root first: its cascade takes most children down
            try:
                current = self._agents.get(member)
                if current.status is AgentStatus.ACTIVE:
                    self._agents.transition(ctx, member, LifecycleAction.SUSPEND, reason)
                    suspended.append(member)
            except (NotFound, InvalidTransition):
                continue  # gone, or taken down by the cascade meanwhile
        for member in agents:  # a cut-off for each, whatever its state
            self._revocations.revoke_agent(ctx, member, reason)
        nodes, delegated_truncated = self._delegated(agents)
        for node in nodes:
            self._revocations.revoke_token(
                ctx,
                node.jti,
                expires=int(node.expires_at.timestamp()),
                agent_id=node.client_id,
                reason=reason,
            )
        grants: list[str] = []
        now = self._clock.now()
        for member in agents:
            page = self._grants.find(GrantQuery(limit=100, agent_id=member, active_at=now))
            for grant in page.items:
                self._grants.revoke(ctx, grant.id, reason)
                grants.append(grant.id)
        self._propagate()
        return "done", {
            "agents": agents,
            "suspended": suspended,
            "delegated_jtis": [n.jti for n in nodes],
            "delegatees": sorted({n.client_id for n in nodes} - set(agents)),
            "grants": grants,
            "truncated": truncated or delegated_truncated,
        }

    @staticmethod
    def _step_up_text(agent_id: str, scope: Any) -> str:
        principal = f"principal == {entity_literal('Agent', agent_id)}"
        if isinstance(scope, tuple | list):
            listed = ", ".join(entity_literal("Action", a) for a in scope)
            actions = f"action in [{listed}]"
        elif scope == "any":
            actions = "action"
        elif scope == "invoke_tool":
            actions = 'action == Action::"invoke_tool"'
        else:
            actions = f"action in {entity_literal('Action', str(scope))}"
        return (
            f"forbid ({principal}, {actions}, resource)\n"
            'when { context.approval.state != "approved" };'
        )

    def _step_up(
        self,
        ctx: CallContext,
        playbook: Playbook,
        alert: Alert,
        params: Mapping[str, Any],
        reason: str,
    ) -> tuple[str, dict[str, Any]]:
        agent_id = alert.agent_id
        policy_id = step_up_policy_id(agent_id)
        scope = params["actions"]
        description = f"step-up by response playbook {playbook.name} (alert {alert.alert_id})"
        if isinstance(scope, str) and scope in ACTION_CLASSES:
            # the approval_above_risk template at threshold 0: approval always needed
            self._policies.put(
                ctx,
                policy_id,
                template="approval_above_risk",
                parameters={
                    "principal": {"type": "Agent", "id": agent_id},
                    "actions": scope,
                    "threshold": 0,
                },
                description=description,
                comment=reason,
            )
        else:
            self._policies.put(
                ctx,
                policy_id,
                text=self._step_up_text(agent_id, scope),
                description=description,
                comment=reason,
            )
        now = self._clock.now()
        until = now + timedelta(minutes=int(params["for_minutes"]))
        measure = _Measure(
            "step_up", agent_id, playbook.name, alert.alert_id, alert.detector, now, until, params
        )
        with self._lock:
            self._measures[("step_up", agent_id)] = measure
        return "done", {
            "policy_id": policy_id,
            "until": until.isoformat(),
            "count": params.get("count"),
            "started": now.isoformat(),
        }

    def _throttle(
        self, playbook: Playbook, alert: Alert, params: Mapping[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        now = self._clock.now()
        until = now + timedelta(minutes=int(params["for_minutes"]))
        measure = _Measure(
            "throttle",
            alert.agent_id,
            playbook.name,
            alert.alert_id,
            alert.detector,
            now,
            until,
            params,
        )
        with self._lock:
            self._measures[("throttle", alert.agent_id)] = measure
            self._install_throttles()
        return "done", {
            "per_minute": params["per_minute"],
            "until": until.isoformat(),
            "started": now.isoformat(),
        }

    def _install_throttles(self) -> None:
        throttles = [
            Throttle(m.agent_id, int(m.params["per_minute"]), m.until.timestamp())
            for m in self._measures.values()
            if m.kind == "throttle"
        ]
        self._limiter.set_throttles(throttles)
        self._enforcement.set_throttles(self._limiter.throttles)

    def check_throttle(self, agent_id: str) -> int | None:
        """The ``Retry-After`` seconds if a throttle refuses this call of the agent now
        (the call's token is taken otherwise), else None."""
        retry = self._limiter.check(agent_id, None, self._monotonic())
        return None if retry is None else int(retry)

    @property
    def throttles(self) -> list[Throttle]:
        return self._limiter.throttles

    def _notify(
        self,
        playbook: Playbook,
        alert: Alert,
        webhook: str,
        done: Sequence[ResponseOutcome],
    ) -> tuple[str, dict[str, Any]]:
        if self._notifier is None:
            raise RuntimeError("no webhook notifier is configured")
        message_id = new_id("response")
        body = json.dumps(
            {
                "type": "agentiam.response",
                "playbook": playbook.name,
                "alert": alert.to_dict(),
                "actions": [o.to_dict() for o in done],
            },
            separators=(",", ":"),
            default=str,
        ).encode()
        try:
            self._notices.put_nowait(_Notice(playbook.name, alert, webhook, message_id, body))
        except queue.Full:
            raise RuntimeError("the notification queue is full") from None
        return "queued", {"webhook": webhook, "message_id": message_id}

    def _send_loop(self) -> None:
        assert self._notifier is not None
        while not self._stop.is_set():
            try:
                notice = self._notices.get(timeout=0.5)
            except queue.Empty:
                continue
            self._deliver(notice)

    def _deliver(self, notice: _Notice) -> None:
        """Send with a bounded number of attempts; the result is audited."""
        assert self._notifier is not None
        delay = _NOTIFY_BACKOFF
        result, detail = "failed", dict[str, Any]()
        for attempt in range(1, _NOTIFY_ATTEMPTS + 1):
            try:
                self._notifier.send(notice.webhook, notice.message_id, notice.body)
                result, detail = "delivered", {"attempts": attempt}
                break
            except Exception as exc:
                detail = {"attempts": attempt, "error": _error_text(exc)}
                if attempt == _NOTIFY_ATTEMPTS or self._stop.wait(delay):
                    break
                delay *= 2
        outcome = ResponseOutcome(
            notice.playbook,
            "notify",
            False,
            result,
            {"webhook": notice.webhook, "message_id": notice.message_id, **detail},
        )
        self._record(
            CallContext.system(RESPONSE_SOURCE),
            _AlertRef.of(notice.alert),
            outcome,
            {"webhook": notice.webhook},
            verb="notify_delivery",
        )

    # -- background -----------------------------------------------------------------------

    def sweep(self) -> int:
        """End measures whose time is up, and step-ups whose count of allowed actions
        is reached; returns how many ended. Each end is a ``response.action`` event
        (``response.step_up_ended`` / ``response.throttle_ended``)."""
        now = self._clock.now()
        with self._lock:
            measures = list(self._measures.values())
        ended = 0
        for measure in measures:
            why = None
            if measure.until <= now:
                why = "expired"
            elif measure.kind == "step_up" and measure.params.get("count"):
                used = self._allowed_since(measure)
                if used >= int(measure.params["count"]):
                    why = f"count reached ({used} approved actions)"
            if why is None:
                continue
            try:
                self._end(measure, why)
                ended += 1
            except Exception:
                log.warning("could not end %s of %s", measure.kind, measure.agent_id, exc_info=True)
        return ended

    def _allowed_since(self, measure: _Measure) -> int:
        """Allowed decisions of the agent in the step-up's class since it began: with
        the step-up policy in force, each one went through with a human's approval."""
        count = int(measure.params["count"])
        scope = measure.params["actions"]
        page = self._audit.find(
            AuditQuery(
                limit=min(_PAGE, max(count * 4, 50)),
                agent_id=measure.agent_id,
                type="authz.decision",
                outcome="success",
                since=measure.started,
            )
        )
        schema = self._decisions.authorizer.engine.schema
        used = 0
        for event in page.items:
            if _in_class(event.action, scope, schema.action_ancestors):
                used += 1
        return used

    def _end(self, measure: _Measure, why: str) -> None:
        ctx = CallContext.system(RESPONSE_SOURCE)
        with self._lock:
            if self._measures.get((measure.kind, measure.agent_id)) is not measure:
                return
            if measure.kind == "step_up":
                with contextlib.suppress(NotFound):  # an operator removed it already
                    self._policies.delete(
                        ctx, step_up_policy_id(measure.agent_id), comment=f"step-up {why}"
                    )
            del self._measures[(measure.kind, measure.agent_id)]
            if measure.kind == "throttle":
                self._install_throttles()
        alert = _AlertRef(measure.alert_id, measure.agent_id, measure.detector)
        outcome = ResponseOutcome(measure.playbook, measure.kind, False, "ended", {"why": why})
        self._record(ctx, alert, outcome, {}, verb=f"{measure.kind}_ended")

    # -- restart ----------------------------------------------------------------------------

    def restore(self) -> int:
        """Rebuild cool-downs and the measures in force from the trail's recent
        ``response.action`` events; returns how many events were read."""
        if not self.playbooks.playbooks:
            return 0
        now = self._clock.now()
        longest = max(
            [p.cooldown_seconds for p in self.playbooks.playbooks]
            + [
                int(a.params.get("for_minutes", 0)) * 60
                for p in self.playbooks.playbooks
                for a in p.actions
            ]
        )
        since = now - timedelta(seconds=longest)
        events = self._recent(since)
        fired: list[tuple[str, str, datetime]] = []
        started: dict[tuple[str, str], _Measure] = {}
        for event in events:
            d = event.details
            name, agent_id = d.get("playbook"), event.agent_id
            if not isinstance(name, str) or agent_id is None:
                continue
            action = event.action.removeprefix("response.")
            if action in ("step_up_ended", "throttle_ended"):
                started.pop((action.removesuffix("_ended"), agent_id), None)
                continue
            if action == "notify_delivery":
                continue
            fired.append((name, agent_id, event.time))
            if action in ("step_up", "throttle") and d.get("result") == "done":
                measure = _restored(event, action, name, agent_id)
                if measure is not None and measure.until > now:
                    started[(action, agent_id)] = measure
        self.cooldowns.restore(fired, self.playbooks.playbooks)
        with self._lock:
            for key, measure in started.items():
                self._measures.setdefault(key, measure)
            self._install_throttles()
        return len(events)

    def _recent(self, since: datetime) -> list[AuditEvent]:
        out: list[AuditEvent] = []
        after: str | None = None
        while len(out) < MAX_RESTORE_EVENTS:
            page = self._audit.find(
                AuditQuery(limit=_PAGE, type=RESPONSE_EVENT, since=since, after=after)
            )
            out.extend(page.items)
            if page.next_after is None:
                break
            after = page.next_after
        return out

    # -- reads ------------------------------------------------------------------------------

    def recent(
        self, *, agent_id: str | None, limit: int, after: str | None = None
    ) -> tuple[list[AuditEvent], str | None]:
        """Recent ``response.action`` events (oldest first within the page)."""
        page = self._audit.find(
            AuditQuery(limit=limit, type=RESPONSE_EVENT, agent_id=agent_id, after=after)
        )
        return list(page.items), page.next_after

    def measures(self) -> list[dict[str, Any]]:
        """The step-ups and throttles in force."""
        with self._lock:
            items = list(self._measures.values())
        return [
            {
                "kind": m.kind,
                "agent_id": m.agent_id,
                "playbook": m.playbook,
                "alert_id": m.alert_id,
                "started": m.started.isoformat(),
                "until": m.until.isoformat(),
                "params": {k: list(v) if isinstance(v, tuple) else v for k, v in m.params.items()},
            }
            for m in items
        ]


def _in_class(action: str, scope: Any, ancestors: Callable[[str], Iterable[str]]) -> bool:
    if isinstance(scope, tuple | list):
        return action in scope
    if scope == "any":
        return True
    if scope == "invoke_tool":
        return action == "invoke_tool"
    try:
        return str(scope) in set(ancestors(action))
    except Exception:  # an action the schema does not know is in no group
        return False


def _restored(event: AuditEvent, kind: str, name: str, agent_id: str) -> _Measure | None:
    d = event.details
    try:
        until = datetime.fromisoformat(str(d["until"]))
        start = datetime.fromisoformat(str(d.get("started") or event.time.isoformat()))
        params = dict(d.get("params") or {})
        if kind == "step_up" and isinstance(params.get("actions"), list):
            params["actions"] = tuple(params["actions"])
        if kind == "throttle":
            int(params["per_minute"])
    except (KeyError, TypeError, ValueError):
        return None
    return _Measure(
        kind,
        agent_id,
        name,
        str(d.get("alert_id", "")),
        str(d.get("detector", "")),
        start,
        until,
        params,
    )


def _error_text(exc: BaseException) -> str:
    """A failure, for the trail: the domain error's message, else the class name."""
    if isinstance(exc, AgentIAMError):
        return f"{type(exc).__name__}: {exc.detail}"[:300]
    return f"{type(exc).__name__}: {str(exc)[:200]}"
