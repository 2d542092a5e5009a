"""Register and maintain the humans who own and sponsor agents."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from agentiam.config import Limits
from agentiam.core.audit.events import ResourceRef
from agentiam.core.identities.models import Human
from agentiam.core.identities.validation import validate_email, validate_external_identity
from agentiam.core.ids import new_id
from agentiam.core.normalize import normalize_display_text
from agentiam.errors import InvalidInput, NotFound
from agentiam.ports import Clock, HumanQuery, Page, UnitOfWorkFactory
from agentiam.services.context import CallContext

__all__ = ["HumanChanges", "HumanService", "NewHuman"]

_UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class NewHuman:
    display_name: str
    email: str
    external_issuer: str | None = None
    external_subject: str | None = None


@dataclass(frozen=True, slots=True)
class HumanChanges:
    """Fields to change; ``_UNSET`` leaves a field as it is, None clears the IdP link."""

    display_name: str | None = None
    email: str | None = None
    external_issuer: Any = _UNSET
    external_subject: Any = _UNSET


def _human_details(human: Human) -> dict[str, Any]:
    return {
        "display_name": human.display_name,
        "email": human.email,
        "external_issuer": human.external_identity.issuer if human.external_identity else None,
        "external_subject": human.external_identity.subject if human.external_identity else None,
    }


class HumanService:
    def __init__(self, uow: UnitOfWorkFactory, clock: Clock, limits: Limits) -> None:
        self._uow = uow
        self._clock = clock
        self._limits = limits

    def create(self, ctx: CallContext, spec: NewHuman) -> Human:
        now = self._clock.now()
        human = Human(
            id=new_id("human"),
            display_name=normalize_display_text(
                spec.display_name, field="display_name", max_length=self._limits.max_display_length
            ),
            email=validate_email(spec.email, self._limits),
            external_identity=validate_external_identity(
                spec.external_issuer, spec.external_subject
            ),
            created_at=now,
            updated_at=now,
        )
        with self._uow() as uow:
            uow.humans.add(human)
            uow.audit.append(
                ctx.event(
                    "human.created",
                    now=now,
                    resource=ResourceRef("human", human.id),
                    details=_human_details(human),
                )
            )
            uow.commit()
        return human

    def get(self, human_id: str) -> Human:
        with self._uow(read_only=True) as uow:
            human = uow.humans.get(human_id)
        if human is None:
            raise NotFound(f"human {human_id} does not exist", hint="List humans to find the id.")
        return human

    def find(self, query: HumanQuery) -> Page[Human]:
        with self._uow(read_only=True) as uow:
            return uow.humans.find(query)

    def update(self, ctx: CallContext, human_id: str, changes: HumanChanges) -> Human:
        with self._uow() as uow:
            current = uow.humans.get(human_id)
            if current is None:
                raise NotFound(f"human {human_id} does not exist")
            updated = current
            if changes.display_name is not None:
                updated = replace(
                    updated,
                    display_name=normalize_display_text(
                        changes.display_name,
                        field="display_name",
                        max_length=self._limits.max_display_length,
                    ),
                )
            if changes.email is not None:
                updated = replace(updated, email=validate_email(changes.email, self._limits))
            if changes.external_issuer is not _UNSET or changes.external_subject is not _UNSET:
                if changes.external_issuer is _UNSET or changes.external_subject is _UNSET:
                    raise InvalidInput("change external issuer and subject together")
                updated = replace(
                    updated,
                    external_identity=validate_external_identity(
                        changes.external_issuer, changes.external_subject
                    ),
                )
            if updated == current:
                return current
            updated = replace(updated, updated_at=self._clock.now(), version=current.version + 1)
            uow.humans.update(updated, expected_version=current.version)
            before, after = _human_details(current), _human_details(updated)
            diff = {k: {"from": before[k], "to": after[k]} for k in after if before[k] != after[k]}
            uow.audit.append(
                ctx.event(
                    "human.updated",
                    now=updated.updated_at,
                    resource=ResourceRef("human", human_id),
                    details={"changes": diff},
                )
            )
            uow.commit()
        return updated
