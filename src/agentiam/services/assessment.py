"""The assessment's evidence collector, and one assessment run end to end
(docs/assessment.md#evidence-keys).

:meth:`AssessmentService.collect` measures every key of
:data:`~agentiam.core.assessment.evidence_keys.MEASURED_EVIDENCE_KEYS` from the control
plane's own state: the registry, the loaded policy set, the audit trail (through
:class:`~agentiam.ports.AuditQuery`, never raw SQL), the trail's verification, the
exporters' health, detection's settings, the playbooks and the signing-key ring. Each
:class:`~agentiam.core.assessment.scoring.Measurement` carries the counts it came from.

Rules every measurement follows:

* a share over an empty population is 0 with its counts (``0 of 0``): nothing is
  shown, so nothing is credited (fail closed);
* something the trail never recorded is :data:`~agentiam.core.assessment.NEVER` days;
* every scan of the trail is bounded (``max_scan`` events per key). A share measured
  over a capped scan says so (``capped: 1``); a "days since" found under the cap can
  only be older than the truth, never newer.

:meth:`AssessmentService.run` then scores the evidence with people's answers, places
the result on both ladders and builds the roadmap (the pure core does all three).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from agentiam.core.assessment import (
    MEASURED_EVIDENCE_KEYS,
    NEVER,
    AISystem,
    Answers,
    Evidence,
    Measurement,
    QuestionBank,
    inventory_is_agentic,
    load_bank,
    questions_to_ask,
    registry_system,
    require_complete,
    shipped_bank_text,
)
from agentiam.core.assessment.autonomy import MAX_SYSTEMS
from agentiam.core.assessment.model import Question
from agentiam.core.assessment.report import (
    AssessmentInputs,
    AssessmentReport,
    load_inputs,
    report_summary,
    score,
)
from agentiam.core.audit.events import AuditEvent, Outcome, ResourceRef
from agentiam.core.audit.trail import canonical
from agentiam.core.credentials.signing_keys import signing_key_at
from agentiam.core.delegation.models import DelegationGrant
from agentiam.core.identities.lifecycle import AgentStatus
from agentiam.core.identities.models import Agent, AutonomyLevel
from agentiam.core.ids import new_id
from agentiam.core.policy.engine import ANY, CompiledPolicy, PolicyEngine, TypeKey
from agentiam.core.policy.entities import EntitySnapshot, agent_parents
from agentiam.core.policy.model import EntityRef, Mode
from agentiam.core.response.playbooks import PlaybookFile
from agentiam.errors import Conflict, InvalidInput, NotFound, TooManyRequests
from agentiam.ports import (
    AgentQuery,
    AssessmentQuery,
    AuditQuery,
    Clock,
    GrantQuery,
    Page,
    StoredAssessment,
    UnitOfWorkFactory,
)
from agentiam.services.audit_export import ExportRunner
from agentiam.services.audit_trail import AuditTrail
from agentiam.services.context import CallContext
from agentiam.services.decisions import DECISION_EVENT, DecisionPoint
from agentiam.services.detection import ALERT_EVENT, DetectionService
from agentiam.services.response import RESPONSE_EVENT
from agentiam.services.signing_keys import SigningKeyService

__all__ = [
    "DETECTOR_FAMILIES",
    "SHORT_LIVED_SECONDS",
    "AssessmentService",
]

SHORT_LIVED_SECONDS = 900  # "short-lived": an access token that lives 15 minutes or less
# The detector families a DetectionConfig switches on and off (core/detection/config.py).
DETECTOR_FAMILIES = ("escalation", "unexpected_use", "sequence", "boundary", "velocity")
# Actions that take an agent's access away (core/response/playbooks.py ACTION_KINDS).
_CONTAINING_ACTIONS = frozenset({"suspend", "revoke_tokens", "quarantine_subtree"})
# Autonomy levels at which an agent acts without a person approving each step.
_NO_PER_STEP_APPROVAL = frozenset(
    {AutonomyLevel.APPROVE_RISKY, AutonomyLevel.MONITORED, AutonomyLevel.UNSUPERVISED}
)
# Results of a response action that did something (not skipped, failed or a dry run).
_ACTED = frozenset({"done", "queued"})
_TOKEN_EVENTS = ("token.issued", "token.exchanged")
_REVOCATION_EVENTS = ("token.revoked", "agent.tokens_revoked")
_UNUSED_REVIEW = ("api.read", "agents.unused_permissions")
_ENFORCEMENT_SOURCES = ("gateway/", "guard/")
# "Days since" looks back through these windows, newest first: the first that holds a
# match holds the latest one, so a recent event is found without reading old ones.
_LOOKBACK_DAYS: tuple[float | None, ...] = (1, 7, 30, 90, 365, 3650, None)
_PAGE = 1000
_DAY = 86_400.0


def _share(part: int, whole: int) -> float:
    """``part`` of ``whole``; 0 when ``whole`` is 0 (nothing shown, nothing credited)."""
    return part / whole if whole else 0.0


def _days(since: datetime | None, now: datetime) -> float:
    if since is None:
        return NEVER
    return min(max((now - since).total_seconds() / _DAY, 0.0), NEVER)


@dataclass
class _AgentTally:
    """Counts over the active agents, gathered in one paged pass."""

    active: int = 0
    with_purpose: int = 0
    with_owner: int = 0
    review_current: int = 0
    children: int = 0
    children_with_ttl: int = 0
    dpop: int = 0
    named_by_permit: int = 0
    unsupervised: int = 0
    stepped_up: int = 0
    systems: list[AISystem] = field(default_factory=list)
    agentic: bool = False


@dataclass(frozen=True, slots=True)
class _Scan:
    matched: int
    scanned: int
    capped: bool


class AssessmentService:
    """Measures the evidence keys from the live control plane and runs assessments.

    ``window_days`` is the window of the shares read from the trail (tokens issued,
    decisions at enforcement points); ``max_scan`` bounds the events read per key;
    ``grant_max_days`` is the longest lifetime a delegation grant may have to count as
    bounded."""

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        clock: Clock,
        *,
        decisions: DecisionPoint,
        trail: AuditTrail,
        exporters: ExportRunner,
        signing_keys: SigningKeyService,
        playbooks: PlaybookFile,
        detection: DetectionService | None,
        window_days: int = 30,
        max_scan: int = 200_000,
        grant_max_days: int = 90,
        bank: QuestionBank | None = None,
    ) -> None:
        if window_days < 1 or max_scan < 1 or grant_max_days < 1:
            raise ValueError("window_days, max_scan and grant_max_days must be positive")
        self._uow = uow
        self._clock = clock
        self._decisions = decisions
        self._trail = trail
        self._exporters = exporters
        self._signing_keys = signing_keys
        self._playbooks = playbooks
        self._detection = detection
        self.window_days = window_days
        self.max_scan = max_scan
        self.grant_max_days = grant_max_days
        self._bank = bank
        self._running = threading.Lock()

    @property
    def bank(self) -> QuestionBank:
        """The question bank in use (the shipped one unless another was given)."""
        if self._bank is None:
            import yaml

            self._bank = load_bank(yaml.safe_load(shipped_bank_text()))
        return self._bank

    # -- running an assessment --------------------------------------------------------------

    def run(
        self,
        answers: Answers | None = None,
        *,
        declared: Sequence[AISystem] = (),
        complete: bool = False,
    ) -> AssessmentReport:
        """Collect, score with ``answers``, place on both ladders, build the roadmap;
        nothing is stored. With ``complete``, answers that leave out a question the
        evidence cannot answer are refused (InvalidInput naming the first; a
        non-interactive run)."""
        return self._run(answers, declared, complete, None)[0]

    def run_and_save(
        self,
        ctx: CallContext,
        answers: Answers | None = None,
        *,
        declared: Sequence[AISystem] = (),
        complete: bool = False,
    ) -> tuple[str, AssessmentReport]:
        """:meth:`run`, then add the assessment to the history with an
        ``assessment.completed`` audit event (in one transaction); its id and report."""
        report, assessment_id = self._run(answers, declared, complete, ctx)
        assert assessment_id is not None
        return assessment_id, report

    def _run(
        self,
        answers: Answers | None,
        declared: Sequence[AISystem],
        complete: bool,
        save: CallContext | None,
    ) -> tuple[AssessmentReport, str | None]:
        with self._exclusive():
            inputs = self._inputs(answers, declared=declared, complete=complete)
            report = score(self.bank, inputs)
            return report, (self._save(save, inputs, report) if save is not None else None)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One collection at a time per process: collecting verifies the whole trail,
        so a second caller meanwhile gets 429 with Retry-After rather than a queue."""
        if not self._running.acquire(blocking=False):
            raise TooManyRequests(
                "an assessment is running already",
                retry_after=5,
                hint="Retry when it is done; GET /v1/assessments lists the finished ones.",
            )
        try:
            yield
        finally:
            self._running.release()

    def _inputs(
        self, answers: Answers | None, *, declared: Sequence[AISystem], complete: bool
    ) -> AssessmentInputs:
        bank = self.bank
        evidence, tally = self._collect()
        agentic = tally.agentic or inventory_is_agentic(declared)
        answers = answers if answers is not None else Answers(bank.version)
        if complete:
            require_complete(answers, bank, evidence, agentic=agentic)
        return AssessmentInputs(
            bank_version=bank.version,
            assessed_at=self._clock.now(),
            evidence=evidence,
            answers=answers,
            systems=tuple([*tally.systems, *declared][:MAX_SYSTEMS]),
            systems_total=tally.active + len(declared),
            agentic=agentic,
        )

    # -- the history --------------------------------------------------------------------------

    def _save(self, ctx: CallContext, inputs: AssessmentInputs, report: AssessmentReport) -> str:
        data = report.to_dict()
        summary = report_summary(data)
        assessment_id = new_id("assessment")
        body = canonical(data)
        record = StoredAssessment(
            id=assessment_id,
            assessed_at=inputs.assessed_at,
            bank_version=inputs.bank_version,
            overall=report.assessment.overall,
            requested_by=ctx.actor.label[:140],
            summary=summary,
            report=data,
            inputs=inputs.to_dict(),
        )
        event = ctx.event(
            "assessment.completed",
            now=self._clock.now(),
            action="assessment.run",
            outcome=Outcome.SUCCESS,
            resource=ResourceRef("assessment", assessment_id),
            details={
                "overall": round(report.assessment.overall, 4),
                "bank_version": inputs.bank_version,
                "measured_share": round(report.assessment.measured_share, 4),
                "ladders": {p["ladder"]: p["reached"] for p in summary["ladders"]},
                # the stored report can be checked against the tamper-evident trail
                "report_sha256": hashlib.sha256(body).hexdigest(),
            },
        )
        with self._uow() as uow:
            uow.assessments.add(record)
            uow.audit.append(event)
            uow.commit()
        return assessment_id

    def history(self, *, limit: int, before: str | None = None) -> Page[StoredAssessment]:
        """Stored assessments newest first (summaries; no report or inputs)."""
        with self._uow(read_only=True) as uow:
            return uow.assessments.find(AssessmentQuery(limit=limit, before=before))

    def stored(self, assessment_id: str) -> StoredAssessment:
        """One stored assessment with its JSON report and inputs (404 if unknown)."""
        with self._uow(read_only=True) as uow:
            record = uow.assessments.get(assessment_id)
        if record is None:
            raise NotFound(f"no assessment {assessment_id}")
        return record

    def rescore(self, record: StoredAssessment) -> AssessmentReport:
        """The report of a stored assessment, scored again from its inputs (the same
        report, since scoring is pure). Conflict (only its JSON is available) when it
        was made with another bank, or its stored inputs no longer read back."""
        try:
            inputs = load_inputs(record.inputs, self.bank)
        except InvalidInput as exc:
            raise Conflict(
                f"the stored inputs of assessment {record.id} cannot be read back ({exc.detail})",
                hint="Its stored JSON report is unchanged (format=json).",
            ) from exc
        return score(self.bank, inputs)

    def trend_before(self, assessment_id: str | None, *, limit: int) -> list[Mapping[str, Any]]:
        """Up to ``limit`` summaries of the assessments stored before ``assessment_id``
        (before all of them when None), oldest first: the points of a report's trend
        (pass them through ``trend_history``, which leaves out damaged ones)."""
        page = self.history(limit=limit, before=assessment_id)
        return [dict(r.summary) for r in reversed(page.items)]

    def to_ask(
        self, *, declared: Sequence[AISystem] = (), agentic: bool = False
    ) -> tuple[Question, ...]:
        """The questions in scope the evidence does not answer (what a person answers).
        The agent-specific ones are in scope when the registry or ``declared`` holds an
        agentic system, or with ``agentic`` (a caller about to declare one)."""
        return self.unmeasured(declared=declared, agentic=agentic)[0]

    def unmeasured(
        self, *, declared: Sequence[AISystem] = (), agentic: bool = False
    ) -> tuple[tuple[Question, ...], bool]:
        """:meth:`to_ask`, and whether the agent-specific questions are in scope
        without ``agentic`` (the registry or ``declared`` holds an agentic system).

        Nothing is collected: the collector measures every key of
        ``MEASURED_EVIDENCE_KEYS`` on every run, so which questions it answers is known
        from the bank; only the scope needs a pass over the registry. (So a reader
        cannot make the control plane verify its whole trail, or hold the run lock.)"""
        in_scope = self._registry_agentic() or inventory_is_agentic(declared)
        questions = questions_to_ask(self.bank, MEASURED_EVIDENCE_KEYS, agentic=in_scope or agentic)
        return questions, in_scope

    def _registry_agentic(self) -> bool:
        """Whether an active registry agent is agentic (the Autonomy Test's verdict
        does not depend on its children, so none are looked up)."""
        return any(
            registry_system(
                agent_id=a.id, name=a.name, autonomy=a.autonomy, has_children=False
            ).classification.autonomy.is_agentic
            for a in self._active_agents(self._clock.now())
        )

    # -- collecting ---------------------------------------------------------------------------

    def collect(self) -> Evidence:
        """Every measured evidence key, from the control plane as it is now."""
        return self._collect()[0]

    def _collect(self) -> tuple[Evidence, _AgentTally]:
        now = self._clock.now()
        self._decisions.refresh()  # the policy set and registry as stored now
        authorizer = self._decisions.authorizer
        engine, entities = authorizer.engine, authorizer.entities
        tally = self._agents(engine, entities, now)
        out: list[Measurement] = []

        def put(key: str, value: float, source: str, **numbers: float) -> None:
            out.append(Measurement(key, float(value), now, source, numbers))

        put(
            "inventory.purpose_share",
            _share(tally.with_purpose, tally.active),
            "active agents in the registry with a stated purpose",
            agents=tally.active,
            with_purpose=tally.with_purpose,
        )
        put(
            "agents.owner_share",
            _share(tally.with_owner, tally.active),
            "active agents in the registry with at least one human owner",
            agents=tally.active,
            with_owner=tally.with_owner,
        )
        put(
            "agents.access_review_current_share",
            _share(tally.review_current, tally.active),
            "active agents whose next access review date is today or later",
            agents=tally.active,
            review_current=tally.review_current,
        )
        put(
            "agents.ephemeral_ttl_share",
            _share(tally.children_with_ttl, tally.children),
            "active sub-agents (agents with a parent) that carry an expiry",
            sub_agents=tally.children,
            with_ttl=tally.children_with_ttl,
        )
        put(
            "credentials.dpop_share",
            _share(tally.dpop, tally.active),
            "active agents whose tokens must be DPoP-bound (dpop_required)",
            agents=tally.active,
            dpop_required=tally.dpop,
        )
        put(
            "policy.agent_coverage_share",
            _share(tally.named_by_permit, tally.active),
            "active agents named by an enforced permit (directly, by group or environment)",
            agents=tally.active,
            named=tally.named_by_permit,
        )
        put(
            "approvals.risky_agent_share",
            _share(tally.stepped_up, tally.unsupervised),
            "active agents acting without per-step approval that an enforced forbid "
            "reading context.approval covers",
            agents_without_per_step_approval=tally.unsupervised,
            covered=tally.stepped_up,
        )
        out.extend(self._policy(engine, now))
        out.append(self._short_lived(now))
        out.append(self._grants(now))
        out.append(self._enforcement(now))
        out.append(
            self._since(
                "access.unused_rights_review_days",
                now,
                "the last unused-rights report read through the API "
                "(GET /v1/agents/{id}/unused-permissions)",
                _UNUSED_REVIEW[0],
                action=_UNUSED_REVIEW[1],
            )
        )
        out.append(self._verified(now))
        out.append(self._export_health(now))
        out.append(self._detectors(now))
        out.append(
            self._since(
                "detection.last_exercised_days",
                now,
                f"the last {ALERT_EVENT} event in the trail",
                ALERT_EVENT,
            )
        )
        out.append(self._auto_revocation(now))
        out.append(
            self._since(
                "response.last_triggered_days",
                now,
                f"the last {RESPONSE_EVENT} a playbook carried out (not a dry run)",
                RESPONSE_EVENT,
                keep=lambda e: (
                    e.details.get("dry_run") is False and e.details.get("result") in _ACTED
                ),
            )
        )
        out.append(self._key_age(now))
        out.append(self._revocation(now))
        return Evidence(out), tally

    # -- the registry -------------------------------------------------------------------------

    def _active_agents(self, now: datetime) -> Iterator[Agent]:
        after: str | None = None
        while True:
            with self._uow(read_only=True) as uow:
                page = uow.agents.find(
                    AgentQuery(limit=_PAGE, after=after, status=AgentStatus.ACTIVE)
                )
            yield from (a for a in page.items if a.is_usable(now))
            if page.next_after is None:
                return
            after = page.next_after

    def _agents(self, engine: PolicyEngine, entities: EntitySnapshot, now: datetime) -> _AgentTally:
        tally = _AgentTally()
        today = now.date()
        permits = _enforced(engine, "permit")
        step_ups = [p for p in _enforced(engine, "forbid") if "approval" in p.context_attrs]
        parents: set[str] = set()
        pending: list[Agent] = []
        for agent in self._active_agents(now):
            tally.active += 1
            tally.with_purpose += bool(agent.purpose.strip())
            tally.with_owner += bool(agent.owners)
            tally.review_current += agent.next_access_review >= today
            tally.dpop += agent.dpop_required
            if agent.parent_id is not None:
                parents.add(agent.parent_id)
                tally.children += 1
                tally.children_with_ttl += agent.expires_at is not None
            keys = _principal_keys(agent, entities)
            tally.named_by_permit += any(_names(p, keys) for p in permits)
            if agent.autonomy in _NO_PER_STEP_APPROVAL:
                tally.unsupervised += 1
                tally.stepped_up += any(p.principal in keys for p in step_ups)
            if len(pending) < MAX_SYSTEMS:
                pending.append(agent)
        # whether each agent has children is known only after the pass
        for agent in pending:
            system = registry_system(
                agent_id=agent.id,
                name=agent.name,
                autonomy=agent.autonomy,
                has_children=agent.id in parents,
                owner=agent.owners[0] if agent.owners else None,
                purpose=agent.purpose,
            )
            tally.systems.append(system)
            tally.agentic = tally.agentic or system.classification.autonomy.is_agentic
        if not tally.agentic and tally.active > len(pending):
            tally.agentic = True  # agents past the cap were not classified: assume so
        return tally

    # -- policy -------------------------------------------------------------------------------

    def _policy(self, engine: PolicyEngine, now: datetime) -> list[Measurement]:
        total = len(engine.policies)
        enforced = sum(p.mode is Mode.ENFORCE for p in engine.policies)
        permit_all = [p.id for p in _enforced(engine, "permit") if _allows_everything(p)]
        version = float(engine.version)
        return [
            Measurement(
                "policy.enforced_share",
                _share(enforced, total),
                now,
                f"policies of the policy set version {engine.version} in enforce mode",
                {"policies": total, "enforced": enforced, "dry_run": total - enforced},
            ),
            Measurement(
                "policy.default_deny",
                0.0 if permit_all else 1.0,
                now,
                "enforced permits without conditions whose principal, action and resource "
                "scopes are all unconstrained (every principal of a type counts as all)"
                + (f"; found: {', '.join(permit_all[:5])}" if permit_all else ""),
                {"policy_version": version, "enforced": enforced, "permit_all": len(permit_all)},
            ),
        ]

    # -- the trail ----------------------------------------------------------------------------

    def _events(
        self,
        type_: str,
        *,
        since: datetime | None,
        until: datetime | None = None,
        action: str | None = None,
        budget: int,
    ) -> Iterator[AuditEvent]:
        """Events of ``type_`` in ``[since, until)`` in append order, at most ``budget``."""
        after: str | None = None
        read = 0
        while read < budget:
            with self._uow(read_only=True) as uow:
                page = uow.audit.find(
                    AuditQuery(
                        limit=min(_PAGE, budget - read),
                        after=after,
                        type=type_,
                        action=action,
                        since=since,
                        until=until,
                    )
                )
            read += len(page.items)
            yield from page.items
            if page.next_after is None:
                return
            after = page.next_after

    def _count(
        self, types: Iterable[str], since: datetime, match: Callable[[AuditEvent], bool]
    ) -> _Scan:
        matched = scanned = 0
        for type_ in types:
            budget = self.max_scan - scanned
            if budget <= 0:
                break
            for event in self._events(type_, since=since, budget=budget):
                scanned += 1
                matched += match(event)
        return _Scan(matched, scanned, scanned >= self.max_scan)

    def _latest(
        self,
        type_: str,
        now: datetime,
        *,
        action: str | None = None,
        keep: Callable[[AuditEvent], bool] | None = None,
    ) -> tuple[datetime | None, bool]:
        """The time of the latest matching event (None: none), and whether the scan hit
        its bound (then the time found can only be older than the truth)."""
        budget = self.max_scan
        until: datetime | None = None
        for days in _LOOKBACK_DAYS:
            since = None if days is None else now - timedelta(days=days)
            found: datetime | None = None
            read = 0
            for event in self._events(
                type_, since=since, until=until, action=action, budget=budget
            ):
                read += 1
                if keep is None or keep(event):
                    found = event.time if found is None else max(found, event.time)
            budget -= read
            if found is not None or budget <= 0:
                return found, budget <= 0
            until = since
        return None, False

    def _since(
        self,
        key: str,
        now: datetime,
        source: str,
        type_: str,
        *,
        action: str | None = None,
        keep: Callable[[AuditEvent], bool] | None = None,
    ) -> Measurement:
        last, capped = self._latest(type_, now, action=action, keep=keep)
        numbers = {"recorded": float(last is not None), "capped": float(capped)}
        return Measurement(key, _days(last, now), now, source, numbers)

    def _window(self, now: datetime) -> datetime:
        return now - timedelta(days=self.window_days)

    def _short_lived(self, now: datetime) -> Measurement:
        def short(event: AuditEvent) -> bool:
            exp = event.details.get("exp")
            if isinstance(exp, bool) or not isinstance(exp, int | float):
                return False  # no stated lifetime: not shown to be short
            return exp - event.time.timestamp() <= SHORT_LIVED_SECONDS + 1

        scan = self._count(_TOKEN_EVENTS, self._window(now), short)
        return Measurement(
            "credentials.short_lived_share",
            _share(scan.matched, scan.scanned),
            now,
            f"access tokens issued or exchanged in the last {self.window_days} days that "
            f"live {SHORT_LIVED_SECONDS // 60} minutes or less",
            {
                "tokens": scan.scanned,
                "short_lived": scan.matched,
                "window_days": self.window_days,
                "capped": float(scan.capped),
            },
        )

    def _enforcement(self, now: datetime) -> Measurement:
        scan = self._count(
            (DECISION_EVENT,),
            self._window(now),
            lambda e: e.source.startswith(_ENFORCEMENT_SOURCES),
        )
        return Measurement(
            "enforcement.tool_call_share",
            _share(scan.matched, scan.scanned),
            now,
            f"{DECISION_EVENT} events of the last {self.window_days} days whose source is "
            "an enforcement point (gateway/… or guard/…) rather than the PDP API",
            {
                "decisions": scan.scanned,
                "at_enforcement_points": scan.matched,
                "window_days": self.window_days,
                "capped": float(scan.capped),
            },
        )

    def _revocation(self, now: datetime) -> Measurement:
        latest: datetime | None = None
        capped = False
        for type_ in _REVOCATION_EVENTS:
            found, hit = self._latest(type_, now)
            capped = capped or hit
            if found is not None and (latest is None or found > latest):
                latest = found
        return Measurement(
            "revocation.last_exercised_days",
            _days(latest, now),
            now,
            f"the last {' or '.join(_REVOCATION_EVENTS)} event in the trail",
            {"recorded": float(latest is not None), "capped": float(capped)},
        )

    # -- grants -------------------------------------------------------------------------------

    def _grants(self, now: datetime) -> Measurement:
        longest = timedelta(days=self.grant_max_days)

        def bounded(g: DelegationGrant) -> bool:
            return bool(g.scopes) and bool(g.audiences) and g.expires_at - g.created_at <= longest

        total = good = 0
        after: str | None = None
        while total < self.max_scan:
            with self._uow(read_only=True) as uow:
                page = uow.grants.find(GrantQuery(limit=_PAGE, after=after, active_at=now))
            for grant in page.items:
                total += 1
                good += bounded(grant)
            if page.next_after is None:
                break
            after = page.next_after
        return Measurement(
            "delegation.bounded_grant_share",
            _share(good, total),
            now,
            "active delegation grants naming scopes and audiences and expiring within "
            f"{self.grant_max_days} days of their creation",
            {
                "grants": total,
                "bounded": good,
                "grant_max_days": self.grant_max_days,
                "capped": float(total >= self.max_scan),
            },
        )

    # -- audit, detection, response, keys ---------------------------------------------------------

    def _verified(self, now: datetime) -> Measurement:
        report = self._trail.verify()
        return Measurement(
            "audit.last_verified_days",
            0.0 if report.ok else NEVER,
            now,
            "the audit trail verified now (hash chain, Merkle tree, signed tree heads); "
            "a failed verification counts as never verified",
            {
                "entries": report.entries,
                "tree_heads": report.tree_heads,
                "heads_verified": report.heads_verified,
                "findings": len(report.findings),
            },
        )

    def _export_health(self, now: datetime) -> Measurement:
        health = self._exporters.health()
        healthy = sum(h.healthy for h in health)
        return Measurement(
            "audit.exporters_healthy_share",
            _share(healthy, len(health)),
            now,
            "configured audit exporters that are healthy (within their lag and not failing)"
            if health
            else "no audit exporter is configured",
            {"configured": len(health), "healthy": healthy},
        )

    def _detectors(self, now: datetime) -> Measurement:
        detection = self._detection
        on = 0
        if detection is not None and detection.config.enabled:
            on = sum(bool(getattr(detection.config, f).enabled) for f in DETECTOR_FAMILIES)
        return Measurement(
            "detection.detectors_enabled_share",
            on / len(DETECTOR_FAMILIES),
            now,
            "detector families switched on in the detection settings"
            if detection is not None
            else "behavioural detection is switched off (AGENTIAM_DETECTION_ENABLED)",
            {"detectors": len(DETECTOR_FAMILIES), "enabled": on},
        )

    def _auto_revocation(self, now: datetime) -> Measurement:
        books = self._playbooks.playbooks
        containing = [
            p
            for p in books
            if not p.dry_run and any(a.kind in _CONTAINING_ACTIONS for a in p.actions)
        ]
        return Measurement(
            "response.auto_revocation_playbooks",
            float(len(containing)),
            now,
            "enforced playbooks with a suspend, revoke_tokens or quarantine_subtree action",
            {"playbooks": len(books), "enforced_containing": len(containing)},
        )

    def _key_age(self, now: datetime) -> Measurement:
        keys = self._signing_keys.keys()
        current = signing_key_at(keys, now)
        return Measurement(
            "keys.signing_key_age_days",
            _days(current.created_at if current else None, now),
            now,
            "age of the signing key that signs tokens now"
            if current
            else "no signing key signs now",
            {"keys": len(keys), "signing": float(current is not None)},
        )


def _enforced(engine: PolicyEngine, effect: str) -> list[CompiledPolicy]:
    return [p for p in engine.members(engine.enforce_mask) if p.effect == effect]


def _principal_keys(agent: Agent, entities: EntitySnapshot) -> frozenset[Any]:
    """The principal-scope keys a policy naming ``agent`` can be filed under: any, its
    type, itself, and everything it is in (environment, label groups, parent agents)."""
    ancestors: set[EntityRef] = set()
    for parent in agent_parents(agent):
        ancestors.add(parent)
        ancestors |= entities.ancestors(parent)
    return frozenset({ANY, TypeKey("Agent"), EntityRef("Agent", agent.id), *ancestors})


def _names(policy: CompiledPolicy, keys: frozenset[Any]) -> bool:
    """Whether ``policy`` names the agent: directly, or by a group or environment it is
    in (a scope of "any principal" or "every Agent" names nobody)."""
    return policy.principal in keys and isinstance(policy.principal, EntityRef)


def _allows_everything(policy: CompiledPolicy) -> bool:
    """A permit without conditions for every principal (of a type), every action and
    every resource: one such enforced policy undoes default deny."""
    unconstrained_principal = policy.principal == ANY or isinstance(policy.principal, TypeKey)
    return (
        not policy.conditional
        and unconstrained_principal
        and policy.actions == (ANY,)
        and policy.resource == ANY
    )
