"""Policy records: a named Cedar policy, its mode, and a numbered version of the set."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

from agentiam.errors import InvalidInput

__all__ = [
    "EntityRef",
    "Mode",
    "PolicyRecord",
    "PolicySetVersion",
    "ResourceRecord",
    "check_policy_id",
]

_RESERVED_IDS = frozenset({"export", "import", "validate"})
_POLICY_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


class Mode(StrEnum):
    """``enforce`` policies decide; ``dry_run`` policies are evaluated and their
    would-be outcome is reported and logged, but they never change a decision."""

    ENFORCE = "enforce"
    DRY_RUN = "dry_run"


def check_policy_id(policy_id: str) -> str:
    """Policy ids are short, printable and free of quotes and backticks (they appear
    in Cedar annotations and in Cedar's diagnostics)."""
    if isinstance(policy_id, str) and policy_id in _RESERVED_IDS:
        raise InvalidInput(
            f"policy id {policy_id!r} is reserved (it names an API route)",
            hint="Choose another id.",
        )
    if not isinstance(policy_id, str) or not _POLICY_ID_RE.fullmatch(policy_id):
        raise InvalidInput(
            f"policy id {policy_id!r} is not valid",
            hint="Use 1-128 characters: letters, digits and _ . : - (starting with a "
            "letter or digit).",
        )
    return policy_id


@dataclass(frozen=True, slots=True)
class PolicyRecord:
    """One named policy as stored: canonical Cedar text without its ``@id``/``@mode``
    annotations (those are columns), and where it came from."""

    id: str
    text: str
    mode: Mode = Mode.ENFORCE
    description: str = ""
    template: str | None = None  # the template it was rendered from, if any


@dataclass(frozen=True, slots=True)
class PolicySetVersion:
    """One entry of the policy set's history: every change makes a new version."""

    version: int
    created_at: datetime
    created_by: str
    change: str  # put | delete | import | rollback | schema
    comment: str
    schema_extension: str
    policy_count: int = 0


class EntityRef(NamedTuple):
    """A Cedar entity uid. A named tuple, not a dataclass: uids are hashed and
    compared many times per decision (scope index, ancestors), and tuples do that in C.
    """

    type: str
    id: str

    def __str__(self) -> str:
        return f'{self.type}::"{self.id}"'

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "id": self.id}

    @classmethod
    def parse(cls, text: str) -> EntityRef:
        """``Type::id`` or ``Type::"id"`` (as people type them in files and on the
        command line)."""
        etype, sep, eid = text.partition("::")
        eid = eid.strip('"')
        if not sep or not etype or not eid:
            raise InvalidInput(f'{text!r} is not Type::"id"')
        return cls(etype, eid)


@dataclass(frozen=True, slots=True)
class ResourceRecord:
    """A resource in the catalog (a tool, MCP server, API, endpoint, data set or an
    operator-defined type): its attributes, tags and parents, as policies see them."""

    type: str
    id: str
    attributes: Mapping[str, Any] = field(default_factory=dict)
    parents: tuple[EntityRef, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    updated_at: datetime | None = None
    version: int = 1

    @property
    def ref(self) -> EntityRef:
        return EntityRef(self.type, self.id)
