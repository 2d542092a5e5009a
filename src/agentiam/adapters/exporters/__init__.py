"""Audit exporters (see docs/audit.md#exporters) and their configuration file
(``AGENTIAM_AUDIT_EXPORTERS_FILE``): a YAML or JSON list of mappings, each with a
unique ``name``, a ``type`` and that type's settings; anything else is refused."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from agentiam.adapters.exporters.jsonl_file import JsonlFileExporter
from agentiam.services.audit_export import Exporter

__all__ = ["SUPPORTED_TYPES", "JsonlFileExporter", "load_exporters"]

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def _int(entry: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{key} must be an integer between {low} and {high}")
    return value


def _jsonl(name: str, entry: Mapping[str, Any]) -> Exporter:
    path = entry.get("path")
    if not isinstance(path, str) or not path.startswith("/") or "\x00" in path:
        raise ValueError("path must be an absolute file path")
    return JsonlFileExporter(
        name,
        path,
        max_bytes=_int(entry, "max_bytes", 100 * 1024 * 1024, 1024, 2**40),
        keep=_int(entry, "keep", 10, 1, 1000),
    )


# type -> (settings allowed besides name and type, factory)
_TYPES: dict[str, tuple[frozenset[str], Callable[[str, Mapping[str, Any]], Exporter]]] = {
    "jsonl": (frozenset({"path", "max_bytes", "keep"}), _jsonl),
}
SUPPORTED_TYPES = tuple(sorted(_TYPES))


def load_exporters(definitions: Any) -> list[Exporter]:
    """Build the exporters a configuration file defines; ``ValueError`` says which
    entry is wrong and why."""
    if definitions is None:
        return []
    if not isinstance(definitions, list):
        raise ValueError("the exporters file must hold a list of exporters")
    exporters: list[Exporter] = []
    seen: set[str] = set()
    for i, entry in enumerate(definitions):
        where = f"exporter #{i + 1}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be a mapping")
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"{where}: name must be 1-64 characters of a-z, 0-9, '.', '_' or '-'")
        where = f"exporter {name!r}"
        if name in seen:
            raise ValueError(f"{where}: the name is used twice")
        seen.add(name)
        kind = entry.get("type")
        if kind not in _TYPES:
            raise ValueError(
                f"{where}: unknown type {kind!r}; supported: {', '.join(SUPPORTED_TYPES)}"
            )
        allowed, factory = _TYPES[kind]
        unknown = sorted(set(entry) - allowed - {"name", "type"}, key=str)
        if unknown:
            raise ValueError(
                f"{where}: unknown keys {', '.join(map(str, unknown))}; "
                f"{kind} takes {', '.join(sorted(allowed))}"
            )
        try:
            exporters.append(factory(name, entry))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return exporters
