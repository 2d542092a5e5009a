"""Strict readers for parsed YAML/JSON data: every failure names where it happened.

Shared by the bank, answers and inventory loaders. Each raises
:class:`~agentiam.errors.InvalidInput` whose message starts with the path of the value
(``question govern.owners: weight: ...``) and whose ``errors`` member carries the
same path as a pointer, so an API can show it next to the field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agentiam.errors import InvalidInput

MAX_TEXT = 2000
MAX_LIST = 50


def fail(where: str, problem: str, *, hint: str) -> InvalidInput:
    return InvalidInput(
        f"{where}: {problem}", hint=hint, errors=[{"pointer": where, "detail": problem}]
    )


class Reader:
    """Reads one kind of document; ``hint`` points the reader at its format's docs."""

    def __init__(self, hint: str) -> None:
        self.hint = hint

    def fail(self, where: str, problem: str) -> InvalidInput:
        return fail(where, problem, hint=self.hint)

    def mapping(
        self,
        value: Any,
        where: str,
        *,
        required: frozenset[str] = frozenset(),
        optional: frozenset[str] = frozenset(),
    ) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(where, "must be a mapping")
        allowed = required | optional
        for key in value:
            if not isinstance(key, str) or key not in allowed:
                takes = ", ".join(sorted(allowed)) or "no keys"
                raise self.fail(f"{where}: {str(key)[:64]}", f"unknown key (takes {takes})")
        for key in sorted(required):
            if key not in value:
                raise self.fail(f"{where}: {key}", "is required")
        return value

    def sequence(self, value: Any, where: str, *, limit: int = MAX_LIST) -> Sequence[Any]:
        if not isinstance(value, list):
            raise self.fail(where, "must be a list")
        if len(value) > limit:
            raise self.fail(where, f"holds {len(value)} items, more than {limit}")
        return value

    def text(self, value: Any, where: str, *, limit: int = MAX_TEXT) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(where, "must be a non-empty string")
        if len(value) > limit:
            raise self.fail(where, f"is longer than {limit} characters")
        return value.strip()

    def texts(self, value: Any, where: str) -> tuple[str, ...]:
        items = self.sequence(value, where)
        return tuple(self.text(item, f"{where}[{i}]") for i, item in enumerate(items))

    def flag(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(where, "must be true or false")
        return value

    def integer(self, value: Any, where: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(where, f"must be a whole number from {low} to {high}")
        return value

    def number(self, value: Any, where: str, low: float, high: float) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(where, "must be a number")
        number = float(value)
        if not low <= number <= high:  # also refuses NaN
            raise self.fail(where, f"must be from {low:g} to {high:g}")
        return number
