"""Bounded ``IN (...)`` lists for the SQL repositories."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

__all__ = ["IN_LIST_SIZE", "chunks"]

T = TypeVar("T")

# Values per ``IN (...)`` list: far below SQLite's and PostgreSQL's bound-parameter
# limits, and few enough statements that a 10,000-policy import stays a handful of
# round trips.
IN_LIST_SIZE = 500


def chunks(items: Sequence[T], size: int = IN_LIST_SIZE) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
