"""The built-in secret guard of event details (``core/audit/events.py: redact``): its
fast paths answer exactly as the plain recursive definition does."""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agentiam.core.audit.events import REDACTED, redact

_SECRET = re.compile(
    r"(secret|password|passwd|token|api[_-]?key|authorization|cookie|private|credential|^d$)",
    re.IGNORECASE,
)


def _reference(value: Any, *, depth: int = 0) -> Any:
    """The definition: names searched every time, isinstance checks in this order."""
    if depth > 8:
        return REDACTED
    if isinstance(value, Mapping):
        return {
            str(k): (REDACTED if _SECRET.search(str(k)) else _reference(v, depth=depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_reference(v, depth=depth + 1) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


class _Kind(StrEnum):
    A = "a"


_NAMES = st.one_of(
    st.sampled_from(["token", "api_key", "Api-Key", "d", "D", "dd", "name", "status", "x" * 70]),
    st.text(max_size=8),
    st.integers(-3, 3),
    st.just(_Kind.A),
)
_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=6),
    st.just(_Kind.A),
    st.just(b"bytes"),
    st.just(1.5j),
)
_VALUE = st.recursive(
    _LEAF,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(_NAMES, inner, max_size=4),
        st.dictionaries(_NAMES, inner, max_size=3).map(MappingProxyType),
    ),
    max_leaves=30,
)


def _deep(levels: int, leaf: Any) -> Any:
    value = leaf
    for i in range(levels):
        value = {f"k{i}": value} if i % 2 else [value]
    return value


@settings(max_examples=2000, deadline=None)
@given(_VALUE)
def test_redact_is_the_plain_definition(value: Any) -> None:
    assert redact(value) == _reference(value)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 14), _LEAF)
def test_the_depth_cut_is_where_it_was(levels: int, leaf: Any) -> None:
    value = _deep(levels, leaf)
    assert redact(value) == _reference(value)
    assert redact({"a": value}, depth=3) == _reference({"a": value}, depth=3)


def test_names_are_remembered_but_long_ones_are_not() -> None:
    long_secret = "x" * 100 + "token"
    for _ in range(2):
        assert redact({"token": 1, "tok": 2, long_secret: 3}) == {
            "token": REDACTED,
            "tok": 2,
            long_secret: REDACTED,
        }
