"""Output for people (rich tables) and scripts (``--json``), and errors with a next step."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from agentiam.errors import AgentIAMError

__all__ = ["emit", "fail", "handle_errors"]

console = Console()
err_console = Console(stderr=True)


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def emit(
    data: BaseModel | Sequence[BaseModel] | Sequence[dict[str, Any]] | dict[str, Any],
    *,
    as_json: bool,
    columns: Sequence[str],
    title: str | None = None,
) -> None:
    """Print ``data`` as JSON (scripts) or as a table of ``columns`` (people)."""
    plain = _plain(list(data) if isinstance(data, Sequence) else data)
    if as_json:
        sys.stdout.write(json.dumps(plain, indent=2, sort_keys=True) + "\n")
        return
    rows = plain if isinstance(plain, list) else [plain]
    table = Table(title=title, show_lines=False)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(row.get(col)) for col in columns))
    console.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)


def fail(message: str, hint: str | None = None, code: int = 1) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    if hint:
        err_console.print(f"[bold]next:[/] {hint}", highlight=False)
    raise typer.Exit(code)


@contextmanager
def handle_errors() -> Iterator[None]:
    """Turn domain errors into a message, a next step and a non-zero exit."""
    try:
        yield
    except AgentIAMError as exc:
        for item in exc.errors:  # e.g. Cedar's diagnostics, one per line
            err_console.print(
                "  " + "; ".join(f"{k}: {v}" for k, v in item.items()),
                highlight=False,
                markup=False,
            )
        fail(exc.detail, exc.hint)
