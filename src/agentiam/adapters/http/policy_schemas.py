"""Wire shapes of the policy, catalog, authorization and analysis API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agentiam.core.policy.authorizer import AuthzRequest, Decision
from agentiam.core.policy.entities import MAX_DERIVED_ATTRIBUTES, MAX_PARENTS
from agentiam.core.policy.model import (
    EntityRef,
    Mode,
    PolicyRecord,
    PolicySetVersion,
    ResourceRecord,
)

PolicyText = Annotated[str, Field(min_length=1, max_length=64 * 1024)]
Comment = Annotated[str, Field(max_length=500)]
EntityType = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
EntityId = Annotated[str, Field(min_length=1, max_length=512)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EntityRefIn(_In):
    type: EntityType
    id: EntityId


class PolicyPut(_In):
    text: PolicyText | None = Field(default=None, description="Cedar text of one policy")
    template: Annotated[str, Field(max_length=64)] | None = Field(
        default=None, description="render this template instead of giving text"
    )
    parameters: dict[str, Any] | None = None
    mode: Mode | None = Field(
        default=None, description="default: the text's @mode annotation, else enforce"
    )
    description: Annotated[str, Field(max_length=1000)] = ""
    expected_version: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = Field(
        default=None, description="refuse (409) unless the set is at this version"
    )
    comment: Comment = ""


class PolicyOut(_Out):
    id: str
    text: str
    mode: Mode
    description: str
    template: str | None

    @classmethod
    def of(cls, r: PolicyRecord) -> PolicyOut:
        return cls(
            id=r.id, text=r.text, mode=r.mode, description=r.description, template=r.template
        )


class PolicySetOut(_Out):
    version: int
    policies: list[PolicyOut]


class VersionOut(_Out):
    version: int
    created_at: datetime
    created_by: str
    change: str
    comment: str
    policy_count: int

    @classmethod
    def of(cls, v: PolicySetVersion) -> VersionOut:
        return cls(
            version=v.version,
            created_at=v.created_at,
            created_by=v.created_by,
            change=v.change,
            comment=v.comment,
            policy_count=v.policy_count,
        )


class VersionList(_Out):
    items: list[VersionOut]


class PolicyChangeOut(_Out):
    version: VersionOut
    put: list[str]
    deleted: list[str]


class PolicyPutOut(_Out):
    policy: PolicyOut
    version: VersionOut


class ImportIn(_In):
    text: Annotated[str, Field(min_length=1)]
    replace: bool = Field(default=False, description="the file becomes the whole set")
    expected_version: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    comment: Comment = ""


class ValidateIn(_In):
    text: Annotated[str, Field(min_length=1)]


class ValidateOut(_Out):
    valid: bool
    errors: list[dict[str, str]]


class RollbackIn(_In):
    expected_version: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    comment: Comment = ""


class SchemaOut(_Out):
    version: int
    schema_: dict[str, Any] = Field(alias="schema", serialization_alias="schema")
    extension: dict[str, Any] | None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SchemaExtensionIn(_In):
    extension: dict[str, Any] = Field(
        description="a Cedar JSON-schema fragment: entityTypes, actions, commonTypes"
    )
    expected_version: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    comment: Comment = ""


class TemplateOut(_Out):
    name: str
    description: str
    parameters: list[dict[str, Any]]


class TemplateList(_Out):
    items: list[TemplateOut]


class ResourcePut(_In):
    attributes: dict[str, Any] = Field(default_factory=dict)
    parents: Annotated[list[EntityRefIn], Field(max_length=32)] = Field(default_factory=list)
    tags: Annotated[dict[str, Annotated[str, Field(max_length=256)]], Field(max_length=64)] = Field(
        default_factory=dict
    )


class ResourceOut(_Out):
    type: str
    id: str
    attributes: dict[str, Any]
    parents: list[dict[str, str]]
    tags: dict[str, str]
    updated_at: datetime | None
    version: int

    @classmethod
    def of(cls, r: ResourceRecord) -> ResourceOut:
        return cls(
            type=r.type,
            id=r.id,
            attributes=dict(r.attributes),
            parents=[p.to_json() for p in r.parents],
            tags=dict(r.tags),
            updated_at=r.updated_at,
            version=r.version,
        )


class ResourcePage(_Out):
    items: list[ResourceOut]
    next_cursor: str | None


class AuthorizeIn(_In):
    """One call an enforcement point asks about. ``resource_parents`` are the parents
    it placed the resource in whatever the catalog says (the HTTP gateway's ``Api``,
    the MCP gateway's ``McpServer``: ``AuthzRequest.resource_parents``), and
    ``resource_attributes`` the attributes it derived for the resource (the MCP
    gateway's ``read_only`` / ``destructive`` from a trusted server's tool
    annotations: ``AuthzRequest.resource_attributes``), both from its own
    configuration, never from the agent's request. A catalogued attribute wins over a
    derived one. The control plane decides, records (``authz.decision``) and, for an
    approval, binds the call (fingerprint) placed and attributed alike; a parent of a
    type the schema does not allow, or attributes the schema does not declare for the
    resource's type or of another type, are refused (422)."""

    principal: EntityRefIn
    action: Annotated[str, Field(min_length=1, max_length=128)]
    resource: EntityRefIn
    context: dict[str, Any] = Field(
        default_factory=dict,
        description="delegation, authorization_details, risk_score, approval, args, "
        "data_classification, source_environment (time and request_rate are the server's)",
    )
    resource_parents: Annotated[list[EntityRefIn], Field(max_length=MAX_PARENTS)] = Field(
        default_factory=list
    )
    resource_attributes: Annotated[
        dict[Annotated[str, Field(min_length=1, max_length=128)], Any],
        Field(max_length=MAX_DERIVED_ATTRIBUTES),
    ] = Field(default_factory=dict)

    def to_request(self) -> AuthzRequest:
        """The :class:`AuthzRequest` this asks about (not yet validated: see
        ``Authorizer.validate_request``)."""
        return AuthzRequest(
            principal=EntityRef(self.principal.type, self.principal.id),
            action=self.action,
            resource=EntityRef(self.resource.type, self.resource.id),
            context=self.context,
            resource_parents=tuple(EntityRef(p.type, p.id) for p in self.resource_parents),
            resource_attributes=dict(self.resource_attributes),
        )


class AuthorizeBatchIn(_In):
    requests: Annotated[list[AuthorizeIn], Field(min_length=1, max_length=1000)]


class DryRunOut(_Out):
    decision: Literal["allow", "deny"]
    policies: list[str]
    would_change: bool


class ApprovalRefOut(_Out):
    """The human approval a decision opened or used (docs/approvals.md)."""

    id: str
    state: Literal["pending", "approved", "denied", "expired", "consumed"]
    expires_at: datetime
    status_url: str


class DecisionOut(_Out):
    decision: Literal["allow", "deny"]
    decision_id: str
    policies: list[str]
    reasons: list[str]
    errors: list[str]
    policy_version: int
    evaluation_us: float
    evaluated_policies: int
    dry_run: DryRunOut | None
    ignored_arguments: list[str]
    risk_score: int
    approval: ApprovalRefOut | None = None

    @classmethod
    def of(cls, d: Decision) -> DecisionOut:
        return cls.model_validate(d.to_dict())


class DecisionBatchOut(_Out):
    decisions: list[DecisionOut]
