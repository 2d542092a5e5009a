"""The composition root: the one place that reads settings and wires adapters into
services."""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, text

from agentiam.adapters.exporters.metrics import register_export_metrics
from agentiam.adapters.ingest_metrics import register_ingest_metrics
from agentiam.adapters.policy_metrics import PolicyMetrics
from agentiam.adapters.storage import migrate
from agentiam.adapters.storage.engine import make_engine
from agentiam.adapters.storage.unit_of_work import SqlUnitOfWork
from agentiam.config import Settings
from agentiam.core.audit.redaction import Redactor, load_redaction
from agentiam.core.credentials.dpop import DpopWindow
from agentiam.core.credentials.nonces import NonceIssuer
from agentiam.core.credentials.revocations import RevocationSet
from agentiam.core.credentials.sealing import MasterKey
from agentiam.core.credentials.verifier import AccessTokenVerifier, VerifierConfig
from agentiam.core.delegation.authorization_details import DetailsRejected, DetailTypeRegistry
from agentiam.core.delegation.issuers import load_trusted_issuers
from agentiam.core.detection.config import DetectionConfig
from agentiam.core.policy.model import EntityRef
from agentiam.core.response.playbooks import PlaybookFile, load_playbooks
from agentiam.errors import InvalidInput
from agentiam.ports import Clock, UnitOfWork
from agentiam.services.admin_keys import AdminKeyService
from agentiam.services.agents import AgentService
from agentiam.services.analysis import AccessAnalysisService
from agentiam.services.approvals import ApprovalPolicy, ApprovalService, ApproverTokens
from agentiam.services.assessment import AssessmentService
from agentiam.services.audit import AuditService
from agentiam.services.audit_export import Exporter, ExportRunner
from agentiam.services.audit_retention import AuditRetention, RetentionPolicy
from agentiam.services.audit_trail import AuditTrail, TrailPolicy
from agentiam.services.audit_writer import GroupCommitWriter
from agentiam.services.context import CallContext, SystemClock
from agentiam.services.decisions import DecisionPoint
from agentiam.services.delegation import DelegationPolicy, DelegationService, ExternalTokens
from agentiam.services.delegation_graph import DelegationGraph
from agentiam.services.detection import DetectionService
from agentiam.services.enforcement_sync import EnforcementSync
from agentiam.services.grants import GrantService
from agentiam.services.humans import HumanService
from agentiam.services.policies import PolicyService, ResourceService
from agentiam.services.response import ResponseService
from agentiam.services.revocations import RevocationService
from agentiam.services.signing_keys import SigningKeyService
from agentiam.services.tokens import TokenPolicy, TokenService

__all__ = ["Container", "build", "load_master_key"]

log = logging.getLogger("agentiam.background")
T = TypeVar("T")

# How often each audit exporter looks for new trail entries.
_EXPORT_SECONDS = 0.5


def _export_task(runner: ExportRunner, name: str) -> Any:
    def export() -> None:
        runner.run(name)

    export.__name__ = f"export_{name}"
    return export


@dataclass
class Container:
    settings: Settings
    engine: Engine
    clock: Clock
    humans: HumanService
    agents: AgentService
    admin_keys: AdminKeyService
    audit: AuditService
    signing_keys: SigningKeyService
    revocations: RevocationService
    tokens: TokenService
    policies: PolicyService
    resources: ResourceService
    decisions: DecisionPoint
    analysis: AccessAnalysisService
    delegation: DelegationService
    grants: GrantService
    delegation_graph: DelegationGraph
    audit_trail: AuditTrail
    audit_writer: GroupCommitWriter
    audit_export: ExportRunner
    audit_retention: AuditRetention | None
    enforcement: EnforcementSync
    approvals: ApprovalService
    approver_tokens: ApproverTokens
    response: ResponseService
    # Behavioural detection over the trail (docs/detection.md); None when switched off.
    detection: DetectionService | None
    # The maturity assessment's evidence collector (docs/assessment.md).
    assessment: AssessmentService
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    _stop: threading.Event = field(default_factory=threading.Event)

    def database_ready(self) -> bool:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return migrate.is_current(self.engine)

    def start_background(self) -> None:
        """Start the loops a serving replica runs: revocation feed sync (every
        ``revocation_poll_seconds``), signing-key refresh, and purging of expired
        single-use values and revocations."""
        self.revocations.sync()
        self.signing_keys.ensure_key(CallContext.system("control-plane/keys"))
        self.decisions.refresh()
        self.response.start()  # cool-downs and measures in force, from the trail
        loops: list[tuple[float, Any]] = [
            (self.settings.revocation_poll_seconds, self.revocations.sync),
            (self.settings.policy_refresh_seconds, self.decisions.refresh),
            (self.settings.key_refresh_seconds, self.signing_keys.refresh),
            (60.0, self.revocations.purge),
            (60.0, self.delegation_graph.purge),
            (self.settings.audit_integrate_seconds, self._audit_tick),
            (self.settings.expiry_sweep_seconds, self._expire_agents),
            (self.settings.approval_sweep_seconds, self._expire_approvals),
            (1.0, self.response.sweep),
        ]
        if self.detection is not None:
            self.detection.start()  # history trains it; only what comes next is judged
            loops.append((self.settings.detection_poll_seconds, self.detection.run))
        if self.audit_retention is not None and self.settings.audit_retention_days:
            loops.append((self.settings.audit_retention_check_seconds, self._prune_audit))
        for interval, task in loops:
            threading.Thread(
                target=self._loop, args=(interval, task), daemon=True, name=task.__name__
            ).start()
        for name in self.audit_export.names:  # one loop each: a slow sink holds up no other
            threading.Thread(
                target=self._loop,
                args=(_EXPORT_SECONDS, _export_task(self.audit_export, name)),
                daemon=True,
                name=f"export-{name}",
            ).start()

    def _audit_tick(self) -> None:
        """Log new events into the trail and sign a tree head when one is due. Without
        a master key nothing can be signed: events are still chained and logged."""
        self.audit_trail.integrate_all()
        if self.signing_keys.can_sign:
            self.audit_trail.sign_head()

    def _prune_audit(self) -> None:
        """Archive and prune the trail past its retention period (docs/audit.md)."""
        if self.audit_retention is None or not self.signing_keys.can_sign:
            return
        keep = timedelta(days=self.settings.audit_retention_days)
        passes = self.audit_retention.run(
            CallContext.system("control-plane/audit-retention"), RetentionPolicy(keep=keep)
        )
        if passes:
            log.info("audit retention: %d segments archived and pruned", passes)

    def _expire_agents(self) -> None:
        """Decommission ephemeral agents whose TTL ran out."""
        expired = self.agents.expire_due(CallContext.system("control-plane/expiry-sweeper"))
        if expired:
            log.info("decommissioned %d expired ephemeral agents", len(expired))

    def _expire_approvals(self) -> None:
        """Approval requests past their deadline: expired (a pending one is denied)."""
        self.approvals.expire_due(CallContext.system("control-plane/approval-sweeper"))

    def _loop(self, interval: float, task: Any) -> None:
        while not self._stop.wait(interval):
            try:
                task()
            except Exception:  # keep looping; staleness makes verifiers fail closed
                log.warning("background task %s failed; retrying", task.__name__, exc_info=True)

    def close(self) -> None:
        self._stop.set()
        self.response.close()
        self.audit_writer.close(timeout=5.0)  # what is queued is written first
        try:  # log what this replica wrote last; the next start would otherwise
            self.audit_trail.integrate_all()
        except Exception:
            log.warning("could not log the last audit events at shutdown; the next start will")
        self.audit_export.close()
        self.engine.dispose()


def load_master_key(settings: Settings) -> MasterKey | None:
    """The master key from ``master_key`` or ``master_key_file``; None if neither is
    set (the service then runs, but cannot sign tokens)."""
    text = settings.master_key
    if text is None and settings.master_key_file:
        path = Path(settings.master_key_file)
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(
                f"cannot read the master key file {path}: {exc.__class__.__name__}"
            ) from None
    if text is None:
        return None
    try:
        return MasterKey.from_text(text)
    except ValueError as exc:
        raise InvalidInput(
            str(exc), hint="Create one with 'agentiam keys generate-master-key'."
        ) from None


def _data_file(path: str, what: str) -> Any:
    """A YAML (or JSON, which is YAML) configuration file, decoded."""
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InvalidInput(f"cannot read the {what} file {path}: {exc}") from None


def _detail_types(settings: Settings) -> DetailTypeRegistry:
    registry = DetailTypeRegistry.builtin()
    if settings.authorization_details_types_file:
        definitions = _data_file(
            settings.authorization_details_types_file, "authorization_details types"
        )
        try:
            registry = registry.with_types(definitions or [])
        except (DetailsRejected, ValueError) as exc:
            raise InvalidInput(f"authorization_details types: {exc}") from None
    return registry


def _exporters(settings: Settings) -> list[Exporter]:
    if not settings.audit_exporters_file:
        return []
    from agentiam.adapters.exporters import load_exporters

    return _config_file(
        settings.audit_exporters_file, "audit exporters", load_exporters, "exporters"
    )


def _external_tokens(settings: Settings) -> ExternalTokens | None:
    if not settings.trusted_issuers_file:
        return None
    from agentiam.adapters.jwks import ExternalTokenVerifier, JwksCache

    issuers = load_trusted_issuers(_data_file(settings.trusted_issuers_file, "trusted issuers"))
    return ExternalTokenVerifier(issuers, JwksCache(), skew=settings.clock_skew_seconds)


def build(
    settings: Settings, *, clock: Clock | None = None, engine: Engine | None = None
) -> Container:
    """Wire everything for ``settings``. Pass ``clock`` or ``engine`` to substitute them."""
    engine = engine or make_engine(settings.database_url)
    clock = clock or SystemClock()

    def uow(*, read_only: bool = False) -> UnitOfWork:
        return SqlUnitOfWork(engine, read_only=read_only)

    master = load_master_key(settings)
    playbooks = _playbooks(settings)  # a bad file stops the start, naming the key
    notifier = _notifier(settings, playbooks)
    exporters = _exporters(settings)  # refused before any thread starts
    issuer = settings.issuer_url
    skew = settings.clock_skew_seconds
    revoked = RevocationSet(max_staleness=settings.revocation_max_staleness_seconds)
    revocations = RevocationService(uow, clock, revoked)
    signing_keys = SigningKeyService(
        uow,
        clock,
        master=master,
        alg=settings.signing_alg,
        publish_delay=timedelta(seconds=settings.signing_key_publish_seconds),
        verify_for=timedelta(seconds=settings.access_token_ttl_seconds + skew),
        refresh_seconds=settings.key_refresh_seconds,
        revocations=revocations,
    )
    # a retirement another replica wrote: re-read the ring before the feed moves past it
    revocations.on_signing_key_retired(signing_keys.refresh)
    window = DpopWindow(max_age=settings.dpop_max_age_seconds)
    # Nonces must verify on every replica: derive their key from the shared master key.
    nonce_key = master.derive("dpop-nonce") if master else secrets.token_bytes(32)
    nonces = NonceIssuer(nonce_key)
    # Stand-alone events (decisions, reads, refusals) are group-committed.
    writer = GroupCommitWriter(uow)
    writer.start()
    audit = AuditService(uow, clock, writer)
    verifier = AccessTokenVerifier(
        VerifierConfig(issuer=issuer, audience=issuer, skew=skew, dpop_window=window),
        signing_keys,
        revoked,
    )
    tokens = TokenService(
        uow,
        clock,
        policy=TokenPolicy(
            issuer=issuer,
            access_token_ttl=settings.access_token_ttl_seconds,
            skew=skew,
            dpop_window=window,
            nonce_required=settings.dpop_nonce_required,
        ),
        keys=signing_keys,
        revocations=revocations,
        audit=audit,
        verifier=verifier,
        nonces=nonces,
    )
    redactor = _redactor(settings)
    detection: DetectionService | None = None

    def risk(principal: EntityRef) -> int:
        # the server's own score for context.risk_score: 0 while detection is off
        return detection.risk(principal) if detection is not None else 0

    decisions = DecisionPoint(
        uow,
        clock,
        zone=settings.policy_time_zone,
        max_staleness_seconds=settings.policy_max_staleness_seconds,
        audit=audit,
        redactor=redactor,
        risk=risk,
    )
    # Remote enforcement points: the policy bundle, pushed by the refresh that loads a
    # change, and the ingest of their audit events.
    enforcement = EnforcementSync(
        decisions,
        audit,
        clock,
        time_zone=settings.policy_time_zone,
        redactor=redactor,
        max_events=settings.limits.max_ingest_events,
    )
    decisions.on_change = enforcement.loaded

    def policy_changed() -> None:
        # The writer's own replica sees its change at once; others within a poll.
        try:
            decisions.refresh()
        except Exception:
            log.warning("policy refresh after a change failed; the poll will retry")

    policies = PolicyService(uow, clock, on_change=policy_changed)
    agents = AgentService(
        uow,
        clock,
        settings.limits,
        access_review_interval_days=settings.access_review_interval_days,
    )
    details = _detail_types(settings)
    external_tokens = _external_tokens(settings)
    delegation = DelegationService(
        uow,
        clock,
        policy=DelegationPolicy(
            issuer=issuer,
            max_depth=settings.delegation_max_depth,
            access_token_ttl=settings.access_token_ttl_seconds,
            skew=skew,
            limits=settings.limits,
        ),
        tokens=tokens,
        verifier=verifier,
        revocations=revocations,
        agents=agents,
        details=details,
        external=external_tokens,
        on_agent_created=policy_changed,
    )
    tokens.exchange_handler = delegation
    grants = GrantService(
        uow,
        clock,
        issuer=issuer,
        limits=settings.limits,
        max_depth=settings.delegation_max_depth,
        human_token_ttl=settings.human_token_ttl_seconds,
        details=details,
        revocations=revocations,
        sign=tokens.sign,
    )
    registry = CollectorRegistry()
    audit_export = ExportRunner(uow, clock, exporters)
    trail = AuditTrail(
        uow,
        clock,
        policy=TrailPolicy(
            issuer=issuer,
            head_interval=timedelta(seconds=settings.audit_tree_head_seconds),
        ),
        sign=lambda claims, typ: signing_keys.sign(claims, typ=typ),
        keys=signing_keys.every_public_jwk,
    )
    if settings.detection_enabled:
        detection = DetectionService(
            uow,
            clock,
            audit,
            lambda: decisions.authorizer.entities,
            config=_detection_config(settings),
            integrate=trail.integrate_all,
            refresh=decisions.refresh,
        )
    approvals = ApprovalService(
        uow,
        clock,
        decisions=decisions,
        policy=ApprovalPolicy(
            timeout_seconds=settings.approval_timeout_seconds,
            use_seconds=settings.approval_use_seconds,
            max_pending_per_agent=settings.approval_max_pending_per_agent,
            max_wait_seconds=settings.approval_max_wait_seconds,
        ),
        limits=settings.limits,
        redactor=redactor,
    )
    approver_tokens = ApproverTokens(
        uow,
        issuer=issuer,
        verifier=verifier,
        ensure_fresh=revocations.ensure_fresh,
        external=external_tokens,
    )
    register_export_metrics(registry, audit_export)
    register_ingest_metrics(registry, enforcement)
    decisions.on_decision = PolicyMetrics(registry, lambda: decisions.loaded_engine).observe
    container = Container(
        settings=settings,
        engine=engine,
        clock=clock,
        humans=HumanService(uow, clock, settings.limits),
        agents=agents,
        admin_keys=AdminKeyService(uow, clock),
        audit=audit,
        signing_keys=signing_keys,
        revocations=revocations,
        tokens=tokens,
        policies=policies,
        resources=ResourceService(uow, clock, policies, on_change=policy_changed),
        decisions=decisions,
        analysis=AccessAnalysisService(uow, clock, decisions),
        delegation=delegation,
        grants=grants,
        audit_trail=trail,
        audit_writer=writer,
        audit_export=audit_export,
        audit_retention=_retention(settings, trail, uow, clock, audit, audit_export.names),
        delegation_graph=DelegationGraph(
            uow, clock, revocations, max_depth=settings.delegation_max_depth
        ),
        enforcement=enforcement,
        approvals=approvals,
        approver_tokens=approver_tokens,
        response=ResponseService(
            uow,
            clock,
            playbooks,
            agents=agents,
            revocations=revocations,
            grants=grants,
            policies=policies,
            decisions=decisions,
            enforcement=enforcement,
            audit=audit,
            notifier=notifier,
        ),
        detection=detection,
        assessment=AssessmentService(
            uow,
            clock,
            decisions=decisions,
            trail=trail,
            exporters=audit_export,
            signing_keys=signing_keys,
            playbooks=playbooks,
            detection=detection,
        ),
        registry=registry,
    )
    if detection is not None:
        detection.responder = container.response
        detection.on_scores = enforcement.set_risk  # enforcement points decide with them
    return container


def _detection_config(settings: Settings) -> DetectionConfig:
    """The detectors' settings (docs/detection.md#configuration); defaults without a
    file, and a bad file stops the start with the key named."""
    if not settings.detection_file:
        return DetectionConfig()
    path = settings.detection_file
    try:
        return DetectionConfig.from_mapping(_data_file(path, "detection settings"))
    except InvalidInput as exc:
        raise InvalidInput(f"detection settings ({path}): {exc.detail}", hint=exc.hint) from None


def _playbooks(settings: Settings) -> PlaybookFile:
    """The response playbooks (docs/response.md); none without a file."""
    if not settings.playbooks_file:
        return PlaybookFile()
    path = settings.playbooks_file
    try:
        return load_playbooks(_data_file(path, "playbooks"))
    except InvalidInput as exc:
        raise InvalidInput(f"playbooks ({path}): {exc.detail}", hint=exc.hint) from None


def _notifier(settings: Settings, playbooks: PlaybookFile) -> Any:
    """The signed-webhook sender of ``notify`` actions (its secrets read now)."""
    if not playbooks.webhooks:
        return None
    from agentiam.adapters.response_webhook import WebhookNotifier

    try:
        return WebhookNotifier(playbooks.webhooks)
    except InvalidInput as exc:
        raise InvalidInput(
            f"playbooks ({settings.playbooks_file}): {exc.detail}", hint=exc.hint
        ) from None


def _redactor(settings: Settings) -> Redactor:
    """The tool-argument redaction rules; refused at start when malformed."""
    if not settings.audit_redaction_file:
        return Redactor()
    return _config_file(
        settings.audit_redaction_file, "audit redaction rules", load_redaction, "redaction"
    )


def _config_file(path: str, what: str, load: Callable[[Any], T], anchor: str) -> T:
    """Read a YAML or JSON configuration file and build from it; any problem stops the
    start with the file named and a pointer to its documentation."""
    definitions = _data_file(path, what)
    try:
        return load(definitions)
    except ValueError as exc:
        raise InvalidInput(
            f"{what} ({path}): {exc}", hint=f"See docs/audit.md#{anchor} for the file's format."
        ) from None


def _retention(
    settings: Settings,
    trail: AuditTrail,
    uow: Any,
    clock: Clock,
    audit: AuditService,
    exporters: list[str],
) -> AuditRetention | None:
    """Retention needs an archive directory; without one, nothing is ever pruned."""
    if not settings.audit_archive_dir:
        return None
    from agentiam.adapters.archive import DirectoryArchive

    def record(ctx: CallContext, type_: str, outcome: Any, resource: Any, details: Any) -> None:
        audit.record(
            ctx, type=type_, action=type_, outcome=outcome, resource=resource, details=details
        )

    return AuditRetention(
        trail,
        uow,
        clock,
        archive=DirectoryArchive(settings.audit_archive_dir),
        exporters=exporters,
        record=record,
    )


def create_app(settings: Settings | None = None) -> Any:
    """ASGI factory for ``uvicorn --factory agentiam.bootstrap:create_app``."""
    from agentiam.adapters.http.app import create_app as _create

    return _create(build(settings or Settings.from_env()))
