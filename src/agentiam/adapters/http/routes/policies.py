"""/v1/policies, /v1/policy-versions, /v1/policy-schema, /v1/policy-templates: the
versioned Cedar policy set (see docs/policy.md)."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse
from pydantic import ValidationError

from agentiam.adapters.http.policy_schemas import (
    ImportIn,
    PolicyChangeOut,
    PolicyOut,
    PolicyPut,
    PolicyPutOut,
    PolicySetOut,
    RollbackIn,
    SchemaExtensionIn,
    SchemaOut,
    TemplateList,
    TemplateOut,
    ValidateIn,
    ValidateOut,
    VersionList,
    VersionOut,
)
from agentiam.adapters.http.routes import PROBLEM_RESPONSES, audited_read
from agentiam.adapters.http.security import container_of, require
from agentiam.core.access.admin_keys import Permission
from agentiam.core.audit.events import ResourceRef
from agentiam.errors import BadRequest, InvalidInput, UnsupportedMediaType
from agentiam.services.context import CallContext
from agentiam.services.policies import PolicyChange

router = APIRouter(tags=["policies"], responses=PROBLEM_RESPONSES)
Read = Annotated[CallContext, Depends(require(Permission.POLICIES_READ))]
Write = Annotated[CallContext, Depends(require(Permission.POLICIES_WRITE))]
PolicyId = Annotated[str, Path(min_length=1, max_length=128)]
MAX_VERSION = 2**31 - 1
VersionQuery = Annotated[
    int | None, Query(ge=0, le=MAX_VERSION, description="default: the current version")
]
ExpectedQuery = Annotated[int | None, Query(ge=0, le=MAX_VERSION)]


def _change(change: PolicyChange) -> PolicyChangeOut:
    return PolicyChangeOut(
        version=VersionOut.of(change.version),
        put=list(change.put),
        deleted=list(change.deleted),
    )


@router.get("/v1/policies", response_model=PolicySetOut)
def list_policies(request: Request, ctx: Read, version: VersionQuery = None) -> PolicySetOut:
    at, records = container_of(request).policies.policies(version)
    audited_read(request, ctx, "policies.list", details={"version": at})
    return PolicySetOut(version=at, policies=[PolicyOut.of(r) for r in records])


@router.get(
    "/v1/policies/export",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {}}, "description": "the set as .cedar"}},
)
def export_policies(request: Request, ctx: Read, version: VersionQuery = None) -> PlainTextResponse:
    at, text = container_of(request).policies.export(version)
    audited_read(request, ctx, "policies.export", details={"version": at})
    return PlainTextResponse(
        text,
        headers={
            "Content-Disposition": f'attachment; filename="policies-v{at}.cedar"',
            "AgentIAM-Policy-Version": str(at),
        },
    )


@router.post("/v1/policies/validate", response_model=ValidateOut)
def validate_policies(body: ValidateIn, request: Request, ctx: Read) -> ValidateOut:
    """Check Cedar text against the current schema; nothing is stored."""
    errors = container_of(request).policies.check(body.text)
    audited_read(request, ctx, "policies.validate", details={"valid": not errors})
    return ValidateOut(valid=not errors, errors=errors)


@router.post(
    "/v1/policies/import",
    response_model=PolicyChangeOut,
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": ImportIn.model_json_schema()},
                "text/plain": {"schema": {"type": "string"}},
            },
            "required": True,
        }
    },
)
async def import_policies(
    request: Request,
    ctx: Write,
    replace: bool = False,
    expected_version: ExpectedQuery = None,
) -> PolicyChangeOut:
    """Import a ``.cedar`` file as one new version: as JSON (``ImportIn``) or as the
    raw file with ``Content-Type: text/plain`` (options then go in the query)."""
    raw = await request.body()
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith(("text/plain", "application/json")):
        raise UnsupportedMediaType(
            "send the policy file as text/plain, or JSON as application/json"
        )
    try:
        if content_type.startswith("text/plain"):
            body = ImportIn(
                text=raw.decode("utf-8"), replace=replace, expected_version=expected_version
            )
        else:
            body = ImportIn.model_validate(json.loads(raw))
    except UnicodeDecodeError:
        raise BadRequest("the policy file is not UTF-8") from None
    except RecursionError:
        raise BadRequest("the JSON body is nested too deeply") from None
    except ValueError as exc:  # JSON or model validation
        errors = exc.errors() if isinstance(exc, ValidationError) else []
        raise InvalidInput(
            "the import body is not valid",
            errors=[{"loc": list(map(str, e["loc"])), "msg": e["msg"]} for e in errors],
        ) from None
    change = await run_in_threadpool(
        container_of(request).policies.import_text,
        ctx,
        body.text,
        replace_all=body.replace,
        expected_version=body.expected_version,
        comment=body.comment,
    )
    return _change(change)


@router.get("/v1/policies/{policy_id}", response_model=PolicyOut)
def get_policy(
    policy_id: PolicyId, request: Request, ctx: Read, version: VersionQuery = None
) -> PolicyOut:
    at, record = container_of(request).policies.get(policy_id, version)
    audited_read(
        request,
        ctx,
        "policies.get",
        resource=ResourceRef("policy", policy_id),
        details={"version": at},
    )
    return PolicyOut.of(record)


@router.put("/v1/policies/{policy_id}", response_model=PolicyPutOut)
def put_policy(policy_id: PolicyId, body: PolicyPut, request: Request, ctx: Write) -> PolicyPutOut:
    record, change = container_of(request).policies.put(
        ctx,
        policy_id,
        text=body.text,
        template=body.template,
        parameters=body.parameters,
        mode=body.mode,
        description=body.description,
        expected_version=body.expected_version,
        comment=body.comment,
    )
    return PolicyPutOut(policy=PolicyOut.of(record), version=VersionOut.of(change.version))


@router.delete("/v1/policies/{policy_id}", response_model=PolicyChangeOut)
def delete_policy(
    policy_id: PolicyId,
    request: Request,
    ctx: Write,
    expected_version: ExpectedQuery = None,
    comment: Annotated[str, Query(max_length=500)] = "",
) -> PolicyChangeOut:
    change = container_of(request).policies.delete(
        ctx, policy_id, expected_version=expected_version, comment=comment
    )
    return _change(change)


@router.get("/v1/policy-versions", response_model=VersionList)
def list_versions(
    request: Request,
    ctx: Read,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[int | None, Query(ge=1, le=MAX_VERSION)] = None,
) -> VersionList:
    items = container_of(request).policies.versions(limit=limit, before=before)
    audited_read(request, ctx, "policy_versions.list")
    return VersionList(items=[VersionOut.of(v) for v in items])


@router.get("/v1/policy-versions/{version}", response_model=VersionOut)
def get_version(
    version: Annotated[int, Path(ge=1, le=MAX_VERSION)], request: Request, ctx: Read
) -> VersionOut:
    meta = container_of(request).policies.version(version)
    audited_read(request, ctx, "policy_versions.get", details={"version": version})
    return VersionOut.of(meta)


@router.post("/v1/policy-versions/{version}/rollback", response_model=PolicyChangeOut)
def rollback(
    version: Annotated[int, Path(ge=0, le=MAX_VERSION)],
    body: RollbackIn,
    request: Request,
    ctx: Write,
) -> PolicyChangeOut:
    """Make a new version whose policies and schema extension equal ``version``'s."""
    change = container_of(request).policies.rollback(
        ctx, version, expected_version=body.expected_version, comment=body.comment
    )
    return _change(change)


@router.get("/v1/policy-schema", response_model=SchemaOut)
def get_schema(request: Request, ctx: Read, version: VersionQuery = None) -> SchemaOut:
    """The effective Cedar schema (JSON format) and the operator extension in it."""
    at, schema = container_of(request).policies.schema(version)
    audited_read(request, ctx, "policy_schema.get", details={"version": at})
    return SchemaOut(
        version=at,
        schema={"": schema.document},
        extension=json.loads(schema.extension) if schema.extension else None,
    )


@router.put("/v1/policy-schema/extension", response_model=PolicyChangeOut)
def put_schema_extension(body: SchemaExtensionIn, request: Request, ctx: Write) -> PolicyChangeOut:
    change = container_of(request).policies.set_schema_extension(
        ctx,
        json.dumps(body.extension) if body.extension else "",
        expected_version=body.expected_version,
        comment=body.comment,
    )
    return _change(change)


@router.get("/v1/policy-templates", response_model=TemplateList)
def list_templates(request: Request, ctx: Read) -> TemplateList:
    templates = container_of(request).policies.templates()
    audited_read(request, ctx, "policy_templates.list")
    return TemplateList(items=[TemplateOut.model_validate(t.to_dict()) for t in templates])
