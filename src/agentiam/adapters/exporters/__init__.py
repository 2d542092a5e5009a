"""Audit exporters (see docs/audit.md#exporters) and their configuration file
(``AGENTIAM_AUDIT_EXPORTERS_FILE``): a YAML or JSON list of mappings, each with a
unique ``name``, a ``type`` and that type's settings; anything else is refused.

Each type is a module with ``SETTINGS`` (the keys it takes besides ``name`` and
``type``) and ``from_config(name, entry)``; the checks they share are in
:mod:`agentiam.adapters.exporters._config`."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from agentiam.adapters.exporters import jsonl_file, otel, syslog, webhook
from agentiam.adapters.exporters._config import check_keys
from agentiam.adapters.exporters.jsonl_file import JsonlFileExporter
from agentiam.services.audit_export import Exporter

__all__ = ["SUPPORTED_TYPES", "JsonlFileExporter", "load_exporters"]

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

# type -> (settings allowed besides name and type, factory)
_TYPES: dict[str, tuple[frozenset[str], Callable[[str, Mapping[str, Any]], Exporter]]] = {
    "jsonl": (jsonl_file.SETTINGS, jsonl_file.from_config),
    "otel": (otel.SETTINGS, otel.from_config),
    "syslog": (syslog.SETTINGS, syslog.from_config),
    "webhook": (webhook.SETTINGS, webhook.from_config),
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
        try:
            check_keys(entry, allowed, kind)
            exporters.append(factory(name, entry))
        except ValueError as exc:
            _close(exporters)
            raise ValueError(f"{where}: {exc}") from None
    return exporters


def _close(exporters: list[Exporter]) -> None:
    """Release what the exporters built so far hold (connection pools, sessions)."""
    for exporter in exporters:
        close = getattr(exporter, "close", None)
        if callable(close):
            close()
