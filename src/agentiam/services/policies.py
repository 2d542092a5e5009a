"""Manage the policy set and the resource catalog: every change is a new version of
the set, validated against the schema before it is stored, audited in the same
transaction, and announced to the decision point."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from agentiam.core.audit.events import ResourceRef
from agentiam.core.policy.engine import validate
from agentiam.core.policy.entities import check_resource, cyclic
from agentiam.core.policy.model import (
    Mode,
    PolicyRecord,
    PolicySetVersion,
    ResourceRecord,
    check_policy_id,
)
from agentiam.core.policy.parsing import parse_policies, parse_single, render_policies
from agentiam.core.policy.schema import Schema, load_schema, parse_extension
from agentiam.core.policy.templates import TEMPLATES, PolicyTemplate, render_template
from agentiam.errors import Conflict, InvalidInput, NotFound
from agentiam.ports import Clock, Page, ResourceQuery, UnitOfWork, UnitOfWorkFactory
from agentiam.services.context import CallContext

__all__ = ["PolicyChange", "PolicyService", "ResourceService"]

MAX_COMMENT = 500
MAX_DESCRIPTION = 1000  # as for @description in a .cedar file


@dataclass(frozen=True, slots=True)
class PolicyChange:
    """A written policy version: its history entry and what changed."""

    version: PolicySetVersion
    put: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Plan:
    """What one write does to the current set: the kind of change, the schema
    extension of the new version, the policies written and the ids deleted."""

    kind: str
    extension: str
    put: Sequence[PolicyRecord] = ()
    deleted: Sequence[str] = ()


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _invalid(diagnostics: list[dict[str, str]]) -> InvalidInput:
    return InvalidInput(
        "the policy does not validate against the schema",
        hint="Fix the errors listed; GET /v1/policy-schema shows the schema.",
        errors=[dict(d) for d in diagnostics],
    )


class PolicyService:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        clock: Clock,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._uow = uow
        self._clock = clock
        self._on_change = on_change or (lambda: None)

    # -- reads ------------------------------------------------------------------------

    def head(self) -> tuple[int, Schema]:
        with self._uow(read_only=True) as uow:
            return self._head(uow)

    @staticmethod
    def _head(uow: UnitOfWork) -> tuple[int, Schema]:
        version = uow.policies.head()
        meta = uow.policies.version(version) if version else None
        return version, load_schema(meta.schema_extension if meta else "")

    def policies(self, version: int | None = None) -> tuple[int, list[PolicyRecord]]:
        with self._uow(read_only=True) as uow:
            at = self._resolve(uow, version)
            return at, uow.policies.policies(at)

    def get(self, policy_id: str, version: int | None = None) -> tuple[int, PolicyRecord]:
        at, records = self.policies(version)
        for record in records:
            if record.id == policy_id:
                return at, record
        raise NotFound(f"policy {policy_id} does not exist at version {at}")

    def versions(self, *, limit: int, before: int | None = None) -> list[PolicySetVersion]:
        with self._uow(read_only=True) as uow:
            return uow.policies.versions(limit=limit, before=before)

    def version(self, version: int) -> PolicySetVersion:
        with self._uow(read_only=True) as uow:
            meta = uow.policies.version(version)
        if meta is None:
            raise NotFound(f"policy version {version} does not exist")
        return meta

    def export(self, version: int | None = None) -> tuple[int, str]:
        """The set at ``version`` (default: current) as a ``.cedar`` file."""
        at, records = self.policies(version)
        return at, render_policies(records)

    def schema(self, version: int | None = None) -> tuple[int, Schema]:
        with self._uow(read_only=True) as uow:
            at = self._resolve(uow, version)
            meta = uow.policies.version(at) if at else None
            return at, load_schema(meta.schema_extension if meta else "")

    @staticmethod
    def _resolve(uow: UnitOfWork, version: int | None) -> int:
        head = uow.policies.head()
        if version is None:
            return head
        if not 0 <= version <= head or (version and uow.policies.version(version) is None):
            raise NotFound(f"policy version {version} does not exist")
        return version

    @staticmethod
    def templates() -> list[PolicyTemplate]:
        return [TEMPLATES[name] for name in sorted(TEMPLATES)]

    def check(self, text: str) -> list[dict[str, str]]:
        """Validate ``text`` (one or more policies) against the current schema without
        storing anything; returns Cedar's diagnostics (empty when valid)."""
        _, schema = self.head()
        records = [p.record for p in parse_policies(text)]
        return validate(schema, records)

    # -- writes -----------------------------------------------------------------------

    def put(
        self,
        ctx: CallContext,
        policy_id: str,
        *,
        text: str | None = None,
        template: str | None = None,
        parameters: dict[str, Any] | None = None,
        mode: Mode | None = None,
        description: str = "",
        expected_version: int | None = None,
        comment: str = "",
    ) -> tuple[PolicyRecord, PolicyChange]:
        """Create or replace one policy, from Cedar text or from a template."""
        check_policy_id(policy_id)
        if (text is None) == (template is None):
            raise InvalidInput("give either the policy text or a template, not both")
        if len(description) > MAX_DESCRIPTION:
            raise InvalidInput(f"a description is limited to {MAX_DESCRIPTION} characters")

        def build(schema: Schema) -> PolicyRecord:
            if template is not None:
                source = render_template(template, parameters or {}, schema)
                record = replace(
                    parse_single(
                        source,
                        policy_id=policy_id,
                        mode=mode or Mode.ENFORCE,
                        description=description,
                    ),
                    template=template,
                )
            else:
                assert text is not None
                record = parse_single(text, policy_id=policy_id, mode=mode, description=description)
            diagnostics = validate(schema, [record])
            if diagnostics:
                raise _invalid(diagnostics)
            return record

        # The same PUT again changes nothing and makes no version: it answers as before.
        with self._uow(read_only=True) as uow:
            head, schema = self._head(uow)
            stored = next((r for r in uow.policies.policies(head) if r.id == policy_id), None)
            meta = uow.policies.version(head) if head else None
        record = build(schema)
        if stored == record and meta is not None and expected_version in (None, head):
            return record, PolicyChange(meta)

        checked_under = schema

        def change(uow: UnitOfWork, schema: Schema, current: dict[str, PolicyRecord]) -> _Plan:
            # load_schema is cached: the same extension gives the same object, and the
            # record built above is reused unless the schema changed in between.
            nonlocal record
            if schema is not checked_under:
                record = build(schema)
            if current.get(policy_id) == record:
                raise Conflict(
                    f"policy {policy_id} was just written with this text by another call"
                )
            return _Plan("put", schema.extension, put=[record])

        result = self._write(ctx, change, expected_version, comment)
        return result.put_records[0], result.change

    def delete(
        self,
        ctx: CallContext,
        policy_id: str,
        *,
        expected_version: int | None = None,
        comment: str = "",
    ) -> PolicyChange:
        def change(uow: UnitOfWork, schema: Schema, current: dict[str, PolicyRecord]) -> _Plan:
            if policy_id not in current:
                raise NotFound(f"policy {policy_id} does not exist")
            return _Plan("delete", schema.extension, deleted=[policy_id])

        return self._write(ctx, change, expected_version, comment).change

    def import_text(
        self,
        ctx: CallContext,
        text: str,
        *,
        replace_all: bool = False,
        expected_version: int | None = None,
        comment: str = "",
    ) -> PolicyChange:
        """Import a ``.cedar`` file as one version. With ``replace_all`` the file
        becomes the whole set (policies not in it are deleted; unnamed policies get
        ``policy<N>`` ids); otherwise its policies are added or replaced by ``@id``,
        which every policy must then have."""
        parsed = parse_policies(text)
        if not replace_all:
            unnamed = [p.record.id for p in parsed if not p.named]
            if unnamed:
                raise InvalidInput(
                    f"{len(unnamed)} policies have no @id annotation",
                    hint='Name each policy with @id("…"), or import with replace=true.',
                )
        records = [p.record for p in parsed]

        def change(uow: UnitOfWork, schema: Schema, current: dict[str, PolicyRecord]) -> _Plan:
            diagnostics = validate(schema, records)
            if diagnostics:
                raise _invalid(diagnostics)
            put = [r for r in records if current.get(r.id) != r]
            ids = {r.id for r in records}
            deleted = [pid for pid in current if pid not in ids] if replace_all else []
            if not put and not deleted:
                raise Conflict("the import changes nothing")
            return _Plan("import", schema.extension, put=put, deleted=deleted)

        return self._write(ctx, change, expected_version, comment).change

    def rollback(
        self,
        ctx: CallContext,
        to_version: int,
        *,
        expected_version: int | None = None,
        comment: str = "",
    ) -> PolicyChange:
        """Make a new version whose set (and schema extension) equals ``to_version``'s."""

        def change(uow: UnitOfWork, schema: Schema, current: dict[str, PolicyRecord]) -> _Plan:
            meta = uow.policies.version(to_version) if to_version else None
            if to_version and meta is None:
                raise NotFound(f"policy version {to_version} does not exist")
            target = {r.id: r for r in uow.policies.policies(to_version)} if meta else {}
            put = [r for pid, r in target.items() if current.get(pid) != r]
            deleted = [pid for pid in current if pid not in target]
            extension = meta.schema_extension if meta else ""
            if not put and not deleted and extension == schema.extension:
                raise Conflict(f"the current set already equals version {to_version}")
            return _Plan("rollback", extension, put=put, deleted=deleted)

        return self._write(
            ctx, change, expected_version, comment or f"rollback to {to_version}"
        ).change

    def set_schema_extension(
        self,
        ctx: CallContext,
        extension: str,
        *,
        expected_version: int | None = None,
        comment: str = "",
    ) -> PolicyChange:
        """Replace the operator's schema extension. Every current policy must still
        validate against the new schema, or nothing is stored."""
        canonical = (
            json.dumps(parse_extension(extension), sort_keys=True) if extension.strip() else ""
        )
        new_schema = load_schema(canonical)  # raises InvalidInput on a bad extension

        def change(uow: UnitOfWork, schema: Schema, current: dict[str, PolicyRecord]) -> _Plan:
            if canonical == schema.extension:
                raise Conflict("the schema extension is unchanged")
            diagnostics = validate(new_schema, list(current.values()))
            if diagnostics:
                raise InvalidInput(
                    "current policies do not validate against the new schema",
                    hint="Change or delete those policies first.",
                    errors=[dict(d) for d in diagnostics],
                )
            return _Plan("schema", canonical)

        return self._write(ctx, change, expected_version, comment).change

    # -- the one write path -----------------------------------------------------------

    @dataclass(frozen=True, slots=True)
    class _Written:
        change: PolicyChange
        put_records: Sequence[PolicyRecord]

    def _write(
        self,
        ctx: CallContext,
        change: Callable[[UnitOfWork, Schema, dict[str, PolicyRecord]], _Plan],
        expected_version: int | None,
        comment: str,
    ) -> PolicyService._Written:
        if len(comment) > MAX_COMMENT:
            raise InvalidInput(f"a comment is limited to {MAX_COMMENT} characters")
        now = self._clock.now()
        with self._uow() as uow:
            head, schema = self._head(uow)
            if expected_version is not None and expected_version != head:
                raise Conflict(
                    f"the policy set is at version {head}, not {expected_version}",
                    hint="Re-read the set and apply your change again.",
                )
            current = {r.id: r for r in uow.policies.policies(head)} if head else {}
            plan = change(uow, schema, current)
            put, deleted, kind, extension = plan.put, plan.deleted, plan.kind, plan.extension
            if extension != schema.extension:
                _check_catalog(uow, load_schema(extension))
            count = len(set(current) - set(deleted) | {r.id for r in put})
            meta = PolicySetVersion(
                version=head + 1,
                created_at=now,
                created_by=ctx.actor.label,
                change=kind,
                comment=comment,
                schema_extension=extension,
                policy_count=count,
            )
            uow.policies.commit_version(meta, put=put, delete=deleted)
            uow.audit.append(
                ctx.event(
                    "policy.changed",
                    now=now,
                    action=f"policy.{kind}",
                    resource=ResourceRef("policy_set", str(meta.version)),
                    details={
                        "version": meta.version,
                        "previous_version": head,
                        "put": {r.id: _digest(r.text) for r in put[:1000]},
                        "deleted": list(deleted[:1000]),
                        "modes": {r.id: r.mode.value for r in put[:1000]},
                        "changed": len(put) + len(deleted),
                        "comment": comment,
                    },
                )
            )
            uow.commit()
        self._on_change()
        return PolicyService._Written(
            PolicyChange(meta, tuple(r.id for r in put), tuple(deleted)), put
        )


def _check_catalog(uow: UnitOfWork, schema: Schema) -> None:
    """Refuse a schema under which catalog entries would no longer be valid: they
    would drop out of the entity store, and forbids on their attributes or parents
    would stop matching."""
    problems: list[dict[str, str]] = []
    for record in uow.resources.all():
        try:
            check_resource(schema, record)
        except InvalidInput as exc:
            problems.append({"resource": f"{record.type}::{record.id}", "message": exc.detail})
    if problems:
        raise InvalidInput(
            f"{len(problems)} catalog entries do not fit the new schema",
            hint="Change or delete those entries first (PUT/DELETE /v1/resources/…).",
            errors=problems[:100],
        )


class ResourceService:
    """The resource catalog: the tools, servers, APIs, endpoints and data sets
    policies name, with the attributes they test."""

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        clock: Clock,
        policies: PolicyService,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._uow = uow
        self._clock = clock
        self._policies = policies
        self._on_change = on_change or (lambda: None)

    def put(self, ctx: CallContext, record: ResourceRecord) -> ResourceRecord:
        _, schema = self._policies.head()
        check_resource(schema, record)
        now = self._clock.now()
        with self._uow() as uow:
            others = [r for r in uow.resources.all() if r.ref != record.ref]
            if record.ref in cyclic([*others, record]):
                raise InvalidInput(
                    f"{record.type}::{record.id} would be its own ancestor",
                    hint="A resource's parents may not lead back to it.",
                )
            stored = uow.resources.put(replace(record, updated_at=now))
            uow.audit.append(
                ctx.event(
                    "resource.put",
                    now=now,
                    resource=ResourceRef(record.type, record.id),
                    details={
                        "attributes": dict(record.attributes),
                        "parents": [p.to_json() for p in record.parents],
                        "tags": dict(record.tags),
                        "version": stored.version,
                    },
                )
            )
            uow.commit()
        self._on_change()
        return stored

    def get(self, type_: str, id_: str) -> ResourceRecord:
        with self._uow(read_only=True) as uow:
            record = uow.resources.get(type_, id_)
        if record is None:
            raise NotFound(f"resource {type_}::{id_} is not in the catalog")
        return record

    def find(self, query: ResourceQuery) -> Page[ResourceRecord]:
        with self._uow(read_only=True) as uow:
            return uow.resources.find(query)

    def delete(self, ctx: CallContext, type_: str, id_: str) -> None:
        now = self._clock.now()
        with self._uow() as uow:
            if not uow.resources.delete(type_, id_):
                raise NotFound(f"resource {type_}::{id_} is not in the catalog")
            uow.audit.append(
                ctx.event("resource.deleted", now=now, resource=ResourceRef(type_, id_))
            )
            uow.commit()
        self._on_change()
