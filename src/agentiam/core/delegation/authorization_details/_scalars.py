"""JSON scalars and numbers: comparison keys that keep JSON types apart (``true`` is not
``1``), and the checks for finite numbers and scalar values that constraints and field
kinds share."""

from __future__ import annotations

import math
from typing import Any, TypeAlias

from agentiam.core.delegation.authorization_details._limits import (
    MAX_SAFE_INTEGER,
    DetailsRejected,
    _json_kind,
)

Number: TypeAlias = int | float
_Key: TypeAlias = tuple[int, Any]  # (0 null | 1 boolean | 2 number | 3 string, value)


def _key(value: Any) -> _Key | None:
    """A comparison key that keeps JSON types apart (``true`` is not ``1``); None for
    anything that is not a finite JSON scalar."""
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (1, int(value))
    if isinstance(value, int):
        return (2, int(value))
    if isinstance(value, float):
        return (2, value) if math.isfinite(value) else None
    if isinstance(value, str):
        return (3, value)
    return None


def _from_key(key: _Key) -> Any:
    tag, value = key
    if tag == 0:
        return None
    if tag == 1:
        return bool(value)
    return value


def _as_number(value: Any) -> Number | None:
    """A finite JSON number (never a boolean), integral floats as ints; else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if value.is_integer() and abs(value) <= MAX_SAFE_INTEGER:
            return int(value)
    return value


def _number(value: Any, where: str) -> Number:
    number = _as_number(value)
    if number is None:
        raise DetailsRejected(f"{where} must be a number, not {_json_kind(value)}")
    return number


def _scalar(value: Any, where: str) -> Any:
    if isinstance(value, str) or value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return _number(value, where)
    raise DetailsRejected(f"{where} must be a JSON scalar, not {_json_kind(value)}")
