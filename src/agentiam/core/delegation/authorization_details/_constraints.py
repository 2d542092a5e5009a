"""Tool argument constraints built from ``enum``, ``const``, ``min``, ``max``,
``max_length`` and ``prefix`` (no regular expressions): normalising one, deciding
whether it admits a value, and whether every value one admits is admitted by another."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from agentiam.core.delegation.authorization_details._limits import DetailsRejected, _show
from agentiam.core.delegation.authorization_details._scalars import (
    Number,
    _as_number,
    _from_key,
    _Key,
    _key,
    _number,
    _scalar,
)

_CONSTRAINT_KEYS: Final = ("enum", "const", "min", "max", "max_length", "prefix")
_REGEX_WORDS: Final = frozenset({"pattern", "regex", "regexp"})


@dataclass(frozen=True, slots=True)
class _Constraint:
    """The meaning of one argument constraint: a value is admitted when it satisfies
    every keyword present. ``min``/``max`` admit only numbers, ``max_length`` and
    ``prefix`` only strings; ``enum`` and ``const`` compare by JSON type and value."""

    values: frozenset[_Key] | None
    low: Number | None
    high: Number | None
    max_length: int | None
    prefix: str | None

    @classmethod
    def of(cls, spec: Mapping[str, Any]) -> _Constraint:
        values: frozenset[_Key] | None = None
        if "enum" in spec:
            values = frozenset(k for k in map(_key, spec["enum"]) if k is not None)
        if "const" in spec:
            const = _key(spec["const"])
            single = frozenset({const} if const is not None else ())
            values = single if values is None else values & single
        return cls(
            values=values,
            low=spec.get("min"),
            high=spec.get("max"),
            max_length=spec.get("max_length"),
            prefix=spec.get("prefix"),
        )

    @property
    def numeric(self) -> bool:
        return self.low is not None or self.high is not None

    @property
    def textual(self) -> bool:
        return self.max_length is not None or self.prefix is not None

    def admits_key(self, key: _Key) -> bool:
        if self.values is not None and key not in self.values:
            return False
        tag, value = key
        if self.numeric:
            if tag != 2:
                return False
            if self.low is not None and value < self.low:
                return False
            if self.high is not None and value > self.high:
                return False
        if self.textual:
            if tag != 3:
                return False
            if self.max_length is not None and len(value) > self.max_length:
                return False
            if self.prefix is not None and not value.startswith(self.prefix):
                return False
        return True

    def admits(self, value: Any) -> bool:
        key = _key(value)
        return key is not None and self.admits_key(key)

    def finite(self) -> frozenset[_Key] | None:
        """Every admitted value, when there are finitely many; else None."""
        if self.values is not None:
            return frozenset(k for k in self.values if self.admits_key(k))
        if self.low is not None and self.low == self.high:
            return frozenset({(2, self.low)})
        if self.max_length is not None and self.max_length == len(self.prefix or ""):
            key: _Key = (3, self.prefix or "")
            return frozenset({key}) if self.admits_key(key) else frozenset()
        return None

    def implication_problem(self, granted: _Constraint) -> str | None:
        """None when every value this constraint admits is admitted by ``granted``.

        Exact for these keywords: a finite constraint is checked value by value; an
        infinite numeric range or string family must carry bounds at least as tight as
        each of the granted ones."""
        finite = self.finite()
        if finite is not None:
            for key in sorted(finite):
                if not granted.admits_key(key):
                    return f"the value {_show(_from_key(key))} is not allowed by the grant"
            return None
        if granted.values is not None:
            return "an open range or prefix is wider than the granted enum/const"
        if self.numeric:
            if granted.textual:
                return "the grant allows only strings here"
            if granted.low is not None and (self.low is None or self.low < granted.low):
                return f"min must be at least the granted {_show(granted.low)}"
            if granted.high is not None and (self.high is None or self.high > granted.high):
                return f"max must be at most the granted {_show(granted.high)}"
            return None
        if granted.numeric:
            return "the grant allows only numbers here"
        if granted.max_length is not None and (
            self.max_length is None or self.max_length > granted.max_length
        ):
            return f"max_length must be at most the granted {granted.max_length}"
        if granted.prefix is not None and not (self.prefix or "").startswith(granted.prefix):
            return f"prefix must start with the granted {_show(granted.prefix)}"
        return None


def _normalize_constraint(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not value:
        raise DetailsRejected(
            f"{where} must be a non-empty object using {', '.join(_CONSTRAINT_KEYS)}"
        )
    unknown = sorted(set(value) - set(_CONSTRAINT_KEYS))
    if unknown:
        extra = " (regular expressions are not supported)" if unknown[0] in _REGEX_WORDS else ""
        raise DetailsRejected(f"{where}: unknown constraint {_show(unknown[0])}{extra}")
    out: dict[str, Any] = {}
    if "enum" in value:
        items = value["enum"]
        if not isinstance(items, list) or not items:
            raise DetailsRejected(f"{where}.enum must be a non-empty array of JSON scalars")
        keyed: dict[_Key, Any] = {}
        for i, item in enumerate(items):
            scalar = _scalar(item, f"{where}.enum[{i}]")
            key = _key(scalar)
            assert key is not None
            keyed.setdefault(key, scalar)
        out["enum"] = [keyed[k] for k in sorted(keyed)]
    if "const" in value:
        out["const"] = _scalar(value["const"], f"{where}.const")
    for bound in ("min", "max"):
        if bound in value:
            out[bound] = _number(value[bound], f"{where}.{bound}")
    if "max_length" in value:
        length = _as_number(value["max_length"])
        if not isinstance(length, int) or length < 0:
            raise DetailsRejected(f"{where}.max_length must be a non-negative integer")
        out["max_length"] = length
    if "prefix" in value:
        if not isinstance(value["prefix"], str):
            raise DetailsRejected(f"{where}.prefix must be a string")
        out["prefix"] = value["prefix"]
    compiled = _Constraint.of(out)
    if compiled.numeric and compiled.textual:
        raise DetailsRejected(
            f"{where} mixes number bounds (min/max) with string ones (max_length/prefix)"
        )
    if compiled.low is not None and compiled.high is not None and compiled.low > compiled.high:
        raise DetailsRejected(f"{where}: min is greater than max")
    if (
        compiled.prefix is not None
        and compiled.max_length is not None
        and len(compiled.prefix) > compiled.max_length
    ):
        raise DetailsRejected(f"{where}: prefix is longer than max_length")
    if "const" in out and "enum" in out and not compiled.values:
        raise DetailsRejected(f"{where}: const is not one of enum")
    if compiled.finite() == frozenset():
        raise DetailsRejected(f"{where} can never be satisfied")
    return out
