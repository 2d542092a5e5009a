"""Where plain ``http://`` is allowed: on the loopback host only.

A control plane's issuer URL, a gateway's control plane and its upstream MCP servers
must be ``https`` (RFC 8414 section 2 for the issuer; a verifier key, tokens and
brokered credentials travel to the others). Plain http is accepted only when the
host is the loopback interface, for local development. One rule, one message, for
every place that checks it.
"""

from __future__ import annotations

from urllib.parse import SplitResult

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
"""Hosts a plain http URL may name (``urlsplit`` gives ``::1`` for ``[::1]``)."""

ONLY_ON_LOOPBACK = "plain http only on 127.0.0.1, [::1] or localhost"
"""What the refusals say, after "must be https" or "must use https"."""


def secure_or_loopback(parts: SplitResult) -> bool:
    """True for an https URL, or a plain http one whose host is a loopback host."""
    if parts.scheme == "https":
        return True
    return parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS
