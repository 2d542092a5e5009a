"""An agent's declared expectations: parsing, limits and the plain-JSON form.

The owner declares what the agent is meant to do (``expectations`` on the agent, set at
registration or update). The detectors treat a declaration as authoritative: it takes
precedence over what they learned (:class:`~agentiam.core.detection.model.Expectations`
says how each field is read). Input is bounded: at most :data:`MAX_ITEMS` entries per
list, :data:`MAX_ITEM_LENGTH` characters per entry, :data:`MAX_WORKFLOW_STEPS` workflow
keys; anything else is refused with the field named.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from agentiam.core.detection.model import Expectations
from agentiam.errors import InvalidInput

__all__ = [
    "MAX_ITEMS",
    "MAX_ITEM_LENGTH",
    "MAX_WORKFLOW_STEPS",
    "WORKFLOW_START",
    "expectations_dict",
    "parse_expectations",
]

MAX_ITEMS = 200
MAX_ITEM_LENGTH = 200
MAX_WORKFLOW_STEPS = 200
WORKFLOW_START = "*start"
_LISTS = ("actions", "hosts", "environments", "data_domains", "tenants")
_LIMITS = ("max_calls_per_minute", "max_spawns_per_hour")
_KEYS = frozenset((*_LISTS, *_LIMITS, "workflow"))
# printable, no whitespace or control characters: these end up in evidence and logs
_ITEM_RE = re.compile(r"^[\x21-\x7e]+$")


def _items(value: Any, field: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise InvalidInput(f"expectations.{field}: expected a list of strings")
    if len(value) > MAX_ITEMS:
        raise InvalidInput(f"expectations.{field}: at most {MAX_ITEMS} entries")
    out: list[str] = []
    for item in value:
        if not isinstance(item, str) or not item:
            raise InvalidInput(f"expectations.{field}: entries must be non-empty strings")
        if len(item) > MAX_ITEM_LENGTH or not _ITEM_RE.match(item):
            raise InvalidInput(
                f"expectations.{field}: entries are printable ASCII without spaces, "
                f"at most {MAX_ITEM_LENGTH} characters"
            )
        if item not in out:
            out.append(item)
    return tuple(out)


def _limit(value: Any, field: str, ceiling: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= ceiling:
        raise InvalidInput(f"expectations.{field}: expected an integer from 1 to {ceiling}")
    return value


def parse_expectations(data: Mapping[str, Any] | None) -> Expectations:
    """Validate a declaration (plain JSON/YAML data) into :class:`Expectations`.
    ``None`` or ``{}`` declares nothing."""
    if data is None:
        return Expectations()
    if not isinstance(data, Mapping):
        raise InvalidInput("expectations: expected an object")
    unknown = sorted(str(k) for k in data if k not in _KEYS)
    if unknown:
        raise InvalidInput(
            f"expectations: unknown field {unknown[0]!r} (known: {', '.join(sorted(_KEYS))})"
        )
    lists = {name: _items(data[name], name) for name in _LISTS if data.get(name) is not None}
    workflow_raw = data.get("workflow")
    workflow: dict[str, tuple[str, ...]] = {}
    if workflow_raw is not None:
        if not isinstance(workflow_raw, Mapping):
            raise InvalidInput("expectations.workflow: expected an object {action: [next]}")
        if len(workflow_raw) > MAX_WORKFLOW_STEPS:
            raise InvalidInput(f"expectations.workflow: at most {MAX_WORKFLOW_STEPS} steps")
        for step, following in workflow_raw.items():
            if not isinstance(step, str) or not step or len(step) > MAX_ITEM_LENGTH:
                raise InvalidInput("expectations.workflow: steps are non-empty action ids")
            workflow[step] = _items(following, f"workflow.{step[:40]}")
    return Expectations(
        actions=lists.get("actions", ()),
        hosts=tuple(h.lower() for h in lists.get("hosts", ())),
        environments=lists.get("environments", ()),
        data_domains=lists.get("data_domains", ()),
        tenants=lists.get("tenants", ()),
        max_calls_per_minute=_limit(
            data.get("max_calls_per_minute"), "max_calls_per_minute", 10**6
        ),
        max_spawns_per_hour=_limit(data.get("max_spawns_per_hour"), "max_spawns_per_hour", 10**6),
        workflow=workflow,
    )


def expectations_dict(expectations: Expectations) -> dict[str, Any]:
    """The plain-JSON form (only what is declared); ``parse_expectations`` reads it back."""
    out: dict[str, Any] = {}
    for name in _LISTS:
        items = getattr(expectations, name)
        if items:
            out[name] = list(items)
    for name in _LIMITS:
        value = getattr(expectations, name)
        if value is not None:
            out[name] = value
    if expectations.workflow:
        out["workflow"] = {k: list(v) for k, v in expectations.workflow.items()}
    return out
