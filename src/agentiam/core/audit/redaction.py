"""Redaction of tool arguments before they enter an audit event.

Tool-call and decision events record the arguments an agent sent, so an investigator
can see what it asked for. Arguments can carry personal data or secrets, so they pass
through configurable rules first (``AGENTIAM_AUDIT_REDACTION_FILE``, YAML or JSON;
see docs/audit.md#redaction)::

    record_arguments: values      # names (default): record argument names only
    max_string: 256               # longer strings are cut, with a marker (16-4096)
    rules:
      - paths: ["card.number"]    # dotted paths; * is one key or list item, ** any depth
        action: mask              # mask: replace the value; drop: remove the member
        keep_last: 4              # mask only: keep the last N characters of a string
        match:                    # optional: the calls a rule applies to (globs)
          action: "call_tool"
          resource_type: "Tool"
          resource_id: "payments.*"

Rules apply in order; ``drop`` removes a member (and all below it), ``mask`` replaces
a value with ``[masked]`` (or ``…1234`` with ``keep_last``), whatever its type. After
the rules, the built-in guard of :func:`agentiam.core.audit.events.redact` still
masks every member whose *name* looks secret (token, password, api_key, …) and bounds
the depth: configuration can add redaction, never remove it. Path segments match
keys case-insensitively.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentiam.core.audit.events import redact

__all__ = ["MASK", "RedactionRule", "Redactor", "load_redaction"]

MASK = "[masked]"
_CUT = "…[cut]"
_SEGMENT = re.compile(r"^(\*\*|\*|[^.*]{1,128})$")
_MAX_RULES = 1000
_MAX_PATHS = 100
_MAX_SEGMENTS = 16


@dataclass(frozen=True, slots=True)
class RedactionRule:
    paths: tuple[tuple[str, ...], ...]
    action: str  # "mask" or "drop"
    keep_last: int = 0
    match: Mapping[str, str] = field(default_factory=dict)  # call attribute -> glob

    def applies(self, call: Mapping[str, str]) -> bool:
        return all(
            fnmatch.fnmatchcase(call.get(name, ""), pattern) for name, pattern in self.match.items()
        )


def _matches(pattern: Sequence[str], path: Sequence[str]) -> bool:
    """Whether a concrete key path matches a rule path (``*`` one segment, ``**`` any
    number, including none); keys compare case-insensitively.

    Dynamic programming over (pattern position, path position): O(len(pattern) *
    len(path)) whatever the arguments' shape, so a hostile argument cannot make a
    pattern with several ``**`` take exponential time."""
    keys = [k.lower() for k in path]
    # reach[j]: the pattern so far matches the first j keys
    reach = [True] + [False] * len(keys)
    for segment in pattern:
        if segment == "**":
            for j in range(1, len(keys) + 1):
                reach[j] = reach[j] or reach[j - 1]
            continue
        wanted = segment.lower()
        reach = [False] + [
            reach[j] and (segment == "*" or keys[j] == wanted) for j in range(len(keys))
        ]
    return reach[-1]


def _mask(value: Any, keep_last: int) -> Any:
    if keep_last and isinstance(value, str) and len(value) > keep_last * 2:
        return "…" + value[-keep_last:]
    return MASK


@dataclass(frozen=True, slots=True)
class Redactor:
    """Applies the configured rules. The default records no values at all (names
    only, in ``argument_names``): values enter the trail only when configured."""

    rules: tuple[RedactionRule, ...] = ()
    record_values: bool = False
    max_string: int = 256

    def arguments(self, arguments: Mapping[str, Any], call: Mapping[str, str]) -> dict[str, Any]:
        """The arguments of one call as an event may record them. ``call`` names the
        call (``action``, ``resource_type``, ``resource_id``) for the rules' match."""
        if not self.record_values:
            return {}
        rules = [r for r in self.rules if r.applies(call)]
        out = self._walk(dict(arguments), (), rules, 0)
        guarded: dict[str, Any] = redact(out)
        return guarded

    def _walk(
        self, value: Any, path: tuple[str, ...], rules: list[RedactionRule], depth: int
    ) -> Any:
        if depth > 8:
            return MASK
        if isinstance(value, Mapping):
            result: dict[str, Any] = {}
            for key, item in value.items():
                sub = (*path, str(key))
                verdict = self._verdict(sub, rules)
                if verdict is not None and verdict.action == "drop":
                    continue
                if verdict is not None:
                    result[str(key)] = _mask(item, verdict.keep_last)
                else:
                    result[str(key)] = self._walk(item, sub, rules, depth + 1)
            return result
        if isinstance(value, list | tuple):
            items: list[Any] = []
            for i, item in enumerate(value):
                sub = (*path, str(i))
                verdict = self._verdict(sub, rules)
                if verdict is not None and verdict.action == "drop":
                    continue
                if verdict is not None:
                    items.append(_mask(item, verdict.keep_last))
                else:
                    items.append(self._walk(item, sub, rules, depth + 1))
            return items
        if isinstance(value, str) and len(value) > self.max_string:
            return value[: self.max_string] + _CUT
        if value is None or isinstance(value, bool | int | float | str):
            return value
        return str(value)[: self.max_string]

    @staticmethod
    def _verdict(path: tuple[str, ...], rules: list[RedactionRule]) -> RedactionRule | None:
        """The first rule naming this path; a drop anywhere wins over a mask."""
        found: RedactionRule | None = None
        for rule in rules:
            if any(_matches(p, path) for p in rule.paths):
                if rule.action == "drop":
                    return rule
                found = found or rule
        return found


def _path(text: Any, where: str) -> tuple[str, ...]:
    if not isinstance(text, str) or not text or len(text) > 512:
        raise ValueError(f"{where}: a path is a non-empty dotted string")
    segments = tuple(text.split("."))
    if not all(_SEGMENT.match(s) for s in segments) or len(segments) > _MAX_SEGMENTS:
        raise ValueError(
            f"{where}: bad path {text!r} (at most {_MAX_SEGMENTS} segments: keys, * or **, "
            "separated by dots)"
        )
    # "**.**" means no more than "**"
    return tuple(
        s for i, s in enumerate(segments) if not (s == "**" and i and segments[i - 1] == "**")
    )


def load_redaction(definition: Any) -> Redactor:
    """Build a :class:`Redactor` from the configuration file's content;
    ``ValueError`` names what is wrong."""
    if definition is None:
        return Redactor()
    if not isinstance(definition, Mapping):
        raise ValueError("the redaction file must hold a mapping")
    unknown = set(definition) - {"record_arguments", "max_string", "rules", "version"}
    if unknown:
        raise ValueError(f"unknown keys {', '.join(sorted(map(str, unknown)))}")
    record = definition.get("record_arguments", "names")
    if record not in ("values", "names"):
        raise ValueError("record_arguments must be 'values' or 'names'")
    if record == "names" and definition.get("rules"):
        raise ValueError(
            "rules apply to recorded values: set record_arguments: values to record them"
        )
    max_string = definition.get("max_string", 256)
    if isinstance(max_string, bool) or not isinstance(max_string, int):
        raise ValueError("max_string must be an integer")
    if not 16 <= max_string <= 4096:
        raise ValueError("max_string must be between 16 and 4096")
    raw_rules = definition.get("rules") or []
    if not isinstance(raw_rules, list) or len(raw_rules) > _MAX_RULES:
        raise ValueError(f"rules must be a list of at most {_MAX_RULES} rules")
    rules: list[RedactionRule] = []
    for i, raw in enumerate(raw_rules, 1):
        where = f"rule #{i}"
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where} must be a mapping")
        extra = set(raw) - {"paths", "action", "keep_last", "match"}
        if extra:
            raise ValueError(f"{where}: unknown keys {', '.join(sorted(map(str, extra)))}")
        paths = raw.get("paths")
        if not isinstance(paths, list) or not paths or len(paths) > _MAX_PATHS:
            raise ValueError(f"{where}: paths must be a list of 1 to {_MAX_PATHS} paths")
        action = raw.get("action")
        if action not in ("mask", "drop"):
            raise ValueError(f"{where}: action must be 'mask' or 'drop'")
        keep_last = raw.get("keep_last", 0)
        if isinstance(keep_last, bool) or not isinstance(keep_last, int):
            raise ValueError(f"{where}: keep_last must be an integer")
        if not 0 <= keep_last <= 8 or (keep_last and action != "mask"):
            raise ValueError(f"{where}: keep_last must be 0-8, and only with mask")
        match = raw.get("match") or {}
        if not isinstance(match, Mapping) or not set(match) <= {
            "action",
            "resource_type",
            "resource_id",
        }:
            raise ValueError(f"{where}: match takes action, resource_type and resource_id")
        if not all(isinstance(v, str) and 0 < len(v) <= 256 for v in match.values()):
            raise ValueError(f"{where}: match values are non-empty glob strings")
        rules.append(
            RedactionRule(
                paths=tuple(_path(p, where) for p in paths),
                action=action,
                keep_last=keep_last,
                match=dict(match),
            )
        )
    return Redactor(rules=tuple(rules), record_values=record == "values", max_string=max_string)
