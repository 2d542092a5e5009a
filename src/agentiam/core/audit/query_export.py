"""Render queried audit events as JSON Lines or CSV (the API and the CLI share this).

JSONL lines are the events' stored form (``AuditEvent.to_dict``, the record the trail
hashes), one per line. CSV is a fixed, flat column set for spreadsheets and SIEM
imports; it is a view, not the covered record. Every CSV cell that a spreadsheet would
read as a formula (``= + - @``, tab, carriage return first) is prefixed with a single
quote (OWASP "CSV injection"), and the ``csv`` module quotes the rest.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

__all__ = ["CSV_COLUMNS", "csv_cell", "csv_lines", "csv_row", "jsonl_lines", "paged"]

CSV_COLUMNS = (
    "event_id",
    "time",
    "type",
    "outcome",
    "actor",
    "action",
    "resource",
    "agent_id",
    "initiating_human",
    "delegation_chain",
    "decision_id",
    "trace_id",
    "reason",
)
T = TypeVar("T")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> str:
    """One cell: text, with a leading quote if a spreadsheet could run it."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def csv_row(event: Mapping[str, Any]) -> list[str]:
    actor = event.get("actor") or {}
    resource = event.get("resource")
    trace = event.get("trace") or {}
    values = {
        "event_id": event.get("event_id"),
        "time": event.get("time"),
        "type": event.get("type"),
        "outcome": event.get("outcome"),
        "actor": f"{actor.get('type')}:{actor.get('id')}" if actor else None,
        "action": event.get("action"),
        "resource": f"{resource['type']}:{resource['id']}" if resource else None,
        "agent_id": event.get("agent_id"),
        "initiating_human": event.get("initiating_human"),
        "delegation_chain": " ".join(event.get("delegation_chain") or ()),
        "decision_id": event.get("decision_id"),
        "trace_id": trace.get("trace_id"),
        "reason": event.get("reason"),
    }
    return [csv_cell(values[c]) for c in CSV_COLUMNS]


def csv_lines(events: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    """The header, then one CSV record per event (RFC 4180, CRLF line ends)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_MINIMAL)

    def flush() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow(CSV_COLUMNS)
    yield flush()
    for event in events:
        writer.writerow(csv_row(event))
        yield flush()


def jsonl_lines(events: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    for event in events:
        yield json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"


def paged(
    fetch: Callable[[str | None, int], tuple[Sequence[T], str | None]],
    max_rows: int,
    page_size: int = 1000,
) -> Iterator[T]:
    """Walk a keyset-paginated query, ``fetch(after, limit)`` returning a page's items
    and the next cursor, stopping after ``max_rows`` items."""
    after: str | None = None
    left = max_rows
    while left > 0:
        items, after = fetch(after, min(page_size, left))
        yield from items[:left]
        left -= len(items)
        if after is None:
            return
