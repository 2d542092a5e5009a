"""Wire shapes of the admin API. Unknown fields are refused; lengths are bounded here
so the OpenAPI document states them, and again in the core, which is the authority."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from agentiam.core.access.admin_keys import AdminKey, IngestBinding, IssuedAdminKey, Role
from agentiam.core.detection.expectations import expectations_dict
from agentiam.core.identities.lifecycle import AgentStatus
from agentiam.core.identities.models import Agent, AgentKey, AutonomyLevel, Human, Transition

Name = Annotated[str, Field(min_length=1, max_length=63)]
Text = Annotated[str, Field(min_length=1, max_length=1000)]
Display = Annotated[str, Field(min_length=1, max_length=200)]
Id = Annotated[str, Field(min_length=1, max_length=64)]
Reason = Annotated[str, Field(min_length=1, max_length=500)]
Jwk = Annotated[dict[str, Annotated[str, Field(max_length=512)]], Field(max_length=12)]
Scopes = Annotated[list[Annotated[str, Field(min_length=1, max_length=128)]], Field(max_length=64)]
Audiences = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=512)]], Field(max_length=16)
]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExternalIdentityIn(_In):
    issuer: Annotated[str, Field(min_length=1, max_length=512)]
    subject: Annotated[str, Field(min_length=1, max_length=255)]


class HumanCreate(_In):
    display_name: Display
    email: Annotated[str, Field(min_length=3, max_length=254)]
    external_identity: ExternalIdentityIn | None = None


class HumanUpdate(_In):
    display_name: Display | None = None
    email: Annotated[str, Field(min_length=3, max_length=254)] | None = None
    external_identity: ExternalIdentityIn | None = Field(
        default=None, description="Set to link an IdP identity; send null to unlink."
    )


class ExternalIdentityOut(_Out):
    issuer: str
    subject: str


class HumanOut(_Out):
    id: str
    display_name: str
    email: str
    external_identity: ExternalIdentityOut | None
    created_at: datetime
    updated_at: datetime
    version: int

    @classmethod
    def of(cls, h: Human) -> HumanOut:
        ext = h.external_identity
        return cls(
            id=h.id,
            display_name=h.display_name,
            email=h.email,
            external_identity=(
                ExternalIdentityOut(issuer=ext.issuer, subject=ext.subject) if ext else None
            ),
            created_at=h.created_at,
            updated_at=h.updated_at,
            version=h.version,
        )


class RuntimeIn(_In):
    framework: Display | None = None
    model: Display | None = None
    version: Display | None = None


class AgentCreate(_In):
    name: Name
    owners: Annotated[list[Id], Field(max_length=16)] = Field(
        default_factory=list, description="Human ids; required unless parent_id is given."
    )
    sponsors: Annotated[list[Id], Field(max_length=16)] = Field(
        default_factory=list, description="Human ids of accountable sponsors (optional)."
    )
    purpose: Text
    environment: Name
    autonomy: AutonomyLevel = AutonomyLevel.APPROVE_EACH
    runtime: RuntimeIn | None = None
    labels: Annotated[
        dict[Annotated[str, Field(max_length=63)], Annotated[str, Field(max_length=63)]],
        Field(max_length=32),
    ] = Field(default_factory=dict)
    next_access_review: date | None = None
    parent_id: Id | None = Field(default=None, description="Create an ephemeral child agent.")
    ttl_seconds: Annotated[int, Field(ge=1, le=86400)] | None = None
    activate: bool = False
    keys: Annotated[list[Jwk], Field(max_length=10)] = Field(default_factory=list)
    scopes: Scopes = Field(
        default_factory=list, description="OAuth scopes the agent may be granted."
    )
    audiences: Audiences = Field(
        default_factory=list,
        description="Resource indicators (RFC 8707) its tokens may be issued for.",
    )
    dpop_required: bool = Field(
        default=True, description="Refuse tokens without a DPoP proof (RFC 9449)."
    )
    expectations: dict[str, Any] | None = Field(
        default=None,
        description="What the agent is meant to do, for behavioural detection "
        "(docs/detection.md#declared-expectations).",
    )


class AgentUpdate(_In):
    owners: Annotated[list[Id], Field(min_length=1, max_length=16)] | None = None
    sponsors: Annotated[list[Id], Field(max_length=16)] | None = None
    purpose: Text | None = None
    environment: Name | None = None
    autonomy: AutonomyLevel | None = None
    runtime: RuntimeIn | None = None
    labels: (
        Annotated[
            dict[Annotated[str, Field(max_length=63)], Annotated[str, Field(max_length=63)]],
            Field(max_length=32),
        ]
        | None
    ) = None
    next_access_review: date | None = None
    scopes: Scopes | None = None
    audiences: Audiences | None = None
    dpop_required: bool | None = None
    expectations: dict[str, Any] | None = Field(
        default=None,
        description="What the agent is meant to do, for behavioural detection "
        "(docs/detection.md#declared-expectations); {} clears it.",
    )


class ReasonIn(_In):
    reason: Reason


class OptionalReasonIn(_In):
    reason: Reason | None = None


class RuntimeOut(_Out):
    framework: str | None
    model: str | None
    version: str | None


class AgentOut(_Out):
    id: str
    name: str
    owners: list[str]
    sponsors: list[str]
    purpose: str
    environment: str
    autonomy: AutonomyLevel
    runtime: RuntimeOut
    labels: dict[str, str]
    status: AgentStatus
    ephemeral: bool
    parent_id: str | None
    expires_at: datetime | None
    next_access_review: date
    created_at: datetime
    updated_at: datetime
    scopes: list[str]
    audiences: list[str]
    dpop_required: bool
    task_scope: list[dict[str, Any]] = Field(
        default_factory=list,
        description="RFC 9396 authorization_details all its tokens carry (JIT sub-agents).",
    )
    expectations: dict[str, Any] = Field(default_factory=dict)
    version: int

    @classmethod
    def of(cls, a: Agent) -> AgentOut:
        return cls(
            id=a.id,
            name=a.name,
            owners=list(a.owners),
            sponsors=list(a.sponsors),
            purpose=a.purpose,
            environment=a.environment,
            autonomy=a.autonomy,
            runtime=RuntimeOut(
                framework=a.runtime.framework, model=a.runtime.model, version=a.runtime.version
            ),
            labels=dict(a.labels),
            status=a.status,
            ephemeral=a.is_ephemeral,
            parent_id=a.parent_id,
            expires_at=a.expires_at,
            next_access_review=a.next_access_review,
            created_at=a.created_at,
            updated_at=a.updated_at,
            scopes=list(a.scopes),
            audiences=list(a.audiences),
            dpop_required=a.dpop_required,
            task_scope=[dict(d) for d in a.task_scope],
            expectations=expectations_dict(a.expectations),
            version=a.version,
        )


class AgentKeyIn(_In):
    jwk: Jwk


class AgentKeyOut(_Out):
    id: str
    agent_id: str
    kid: str
    alg: str
    jwk: dict[str, str]
    thumbprint: str
    status: str
    created_at: datetime
    created_by: str
    retired_at: datetime | None
    retired_by: str | None
    retire_reason: str | None

    @classmethod
    def of(cls, k: AgentKey) -> AgentKeyOut:
        return cls(
            id=k.id,
            agent_id=k.agent_id,
            kid=k.kid,
            alg=k.alg,
            jwk=dict(k.jwk),
            thumbprint=k.thumbprint,
            status=k.status.value,
            created_at=k.created_at,
            created_by=k.created_by,
            retired_at=k.retired_at,
            retired_by=k.retired_by,
            retire_reason=k.retire_reason,
        )


class TransitionOut(_Out):
    id: str
    action: str
    from_status: str
    to_status: str
    actor: str
    reason: str
    at: datetime

    @classmethod
    def of(cls, t: Transition) -> TransitionOut:
        return cls(
            id=t.id,
            action=t.action.value,
            from_status=t.from_status.value,
            to_status=t.to_status.value,
            actor=t.actor,
            reason=t.reason,
            at=t.at,
        )


class AdminKeyCreate(_In):
    name: Annotated[str, Field(min_length=1, max_length=100)]
    role: Role
    expires_at: AwareDatetime | None = Field(default=None, description="With a time zone.")
    sources: list[Annotated[str, Field(max_length=140)]] = Field(
        default_factory=list,
        max_length=64,
        description=(
            "A verifier key only, and required for it (unless any_source): the "
            "enforcement points (gateway/<name>, guard/<name>) whose audit events it "
            "may ingest."
        ),
    )
    agents: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=list,
        max_length=64,
        description=(
            "A verifier key only: the agents its ingested events may be about (events "
            "about no agent pass). Empty: any."
        ),
    )
    any_source: bool = Field(
        default=False,
        strict=True,  # an opt-out of a security default: true itself, not "yes" or 1
        description=(
            "A verifier key only: true makes a key that may ingest events in any "
            "enforcement point's name, instead of naming sources. Listed as "
            'binding "any_source"; ingest with it is logged once and counted.'
        ),
    )


class AdminKeyOut(_Out):
    id: str
    prefix: str
    name: str
    role: Role
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None
    revoked_by: str | None
    sources: list[str] = Field(description="Enforcement points it may ingest for; [] any.")
    agents: list[str] = Field(description="Agents its ingested events may name; [] any.")
    bound: bool | None = Field(
        description="A verifier key: whether its ingest is bound to named sources; "
        "null for other roles."
    )
    binding: IngestBinding | None = Field(
        description='A verifier key: "bound" (sources), "any_source" (unbound by its '
        'creator\'s choice) or "legacy" (unbound, made before bindings were required: '
        "re-issue it bound); null for other roles."
    )

    @classmethod
    def of(cls, k: AdminKey) -> AdminKeyOut:
        return cls(
            id=k.id,
            prefix=k.prefix,
            name=k.name,
            role=k.role,
            created_at=k.created_at,
            created_by=k.created_by,
            expires_at=k.expires_at,
            revoked_at=k.revoked_at,
            revoked_by=k.revoked_by,
            sources=list(k.sources),
            agents=list(k.agents),
            bound=None if k.binding is None else k.binding is IngestBinding.BOUND,
            binding=k.binding,
        )


class IssuedAdminKeyOut(AdminKeyOut):
    secret: str = Field(description="The key itself. Shown once; store it now.")

    @classmethod
    def issued(cls, issued: IssuedAdminKey) -> IssuedAdminKeyOut:
        return cls(**AdminKeyOut.of(issued.key).model_dump(), secret=issued.secret)


class PageOut(_Out):
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page.")


class HumanPage(PageOut):
    items: list[HumanOut]


class AgentPage(PageOut):
    items: list[AgentOut]


class AuditPage(PageOut):
    items: list[dict[str, Any]]


class AdminKeyList(_Out):
    items: list[AdminKeyOut]


class AgentKeyList(_Out):
    items: list[AgentKeyOut]


class TransitionList(_Out):
    items: list[TransitionOut]


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    hint: str | None = None
    errors: list[dict[str, Any]] | None = None
