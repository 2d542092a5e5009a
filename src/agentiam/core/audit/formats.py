"""Wire formats of audit events for exporters (see docs/audit.md#formats).

A formatter turns one trail entry, ``(log_index, event as stored)``, into the text a
destination receives, always one line. The transports (file, syslog, webhook) take any
formatter by name:

- ``native``: the event exactly as stored, so it still verifies against the trail;
- ``ocsf``: an OCSF 1.7.0 event of the class that fits the event type, as compact JSON
  (:mod:`agentiam.core.audit.ocsf`);
- ``cef``: an ArcSight CEF:0 line (:mod:`agentiam.core.audit.cef`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from agentiam.core.audit.cef import cef
from agentiam.core.audit.ocsf import ocsf

__all__ = ["FORMATS", "Formatter", "formatter", "native"]

Formatter = Callable[[int, Mapping[str, Any]], str]


def native(log_index: int, event: Mapping[str, Any]) -> str:
    """``{"event": {...}, "log_index": n}`` as compact JSON with sorted keys."""
    return json.dumps(
        {"log_index": log_index, "event": event}, sort_keys=True, separators=(",", ":")
    )


FORMATS: dict[str, Formatter] = {"native": native, "ocsf": ocsf, "cef": cef}


def formatter(name: str) -> Formatter:
    """The formatter called ``name``; ``ValueError`` names the known ones."""
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(
            f"unknown format {name!r}; supported: {', '.join(sorted(FORMATS))}"
        ) from None
