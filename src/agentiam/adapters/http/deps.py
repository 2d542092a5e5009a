"""What the HTTP adapter needs from the composition root, as a Protocol, so the adapter
never imports the bootstrap layer above it."""

from __future__ import annotations

from typing import Protocol

from prometheus_client import CollectorRegistry

from agentiam.config import Settings
from agentiam.ports import Clock
from agentiam.services.admin_keys import AdminKeyService
from agentiam.services.agents import AgentService
from agentiam.services.analysis import AccessAnalysisService
from agentiam.services.approvals import ApprovalService, ApproverTokens
from agentiam.services.audit import AuditService
from agentiam.services.audit_export import ExportRunner
from agentiam.services.audit_trail import AuditTrail
from agentiam.services.decisions import DecisionPoint
from agentiam.services.delegation import DelegationService
from agentiam.services.delegation_graph import DelegationGraph
from agentiam.services.enforcement_sync import EnforcementSync
from agentiam.services.grants import GrantService
from agentiam.services.humans import HumanService
from agentiam.services.policies import PolicyService, ResourceService
from agentiam.services.revocations import RevocationService
from agentiam.services.signing_keys import SigningKeyService
from agentiam.services.tokens import TokenService

__all__ = ["SOURCE", "ApiDependencies"]

SOURCE = "control-plane/admin-api"


class ApiDependencies(Protocol):
    settings: Settings
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
    enforcement: EnforcementSync
    approvals: ApprovalService
    approver_tokens: ApproverTokens
    audit_trail: AuditTrail
    audit_export: ExportRunner
    clock: Clock
    registry: CollectorRegistry

    def database_ready(self) -> bool: ...

    def start_background(self) -> None: ...

    def close(self) -> None: ...
