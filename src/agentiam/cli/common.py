"""What every command shares: settings, the wired container, the CLI actor."""

from __future__ import annotations

import getpass
from collections.abc import Iterator
from contextlib import contextmanager

from agentiam.adapters.storage import migrate
from agentiam.adapters.storage.engine import redact_url
from agentiam.bootstrap import Container, build
from agentiam.cli.output import fail
from agentiam.config import Settings
from agentiam.core.audit.events import Actor, ActorType, TraceContext
from agentiam.services.context import CallContext

__all__ = ["cli_context", "container"]


def cli_context() -> CallContext:
    """The CLI acts as the local OS user, recorded as ``cli:<user>`` in the trail."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return CallContext(
        actor=Actor(type=ActorType.CLI, id=user[:64]), source="cli", trace=TraceContext.new()
    )


@contextmanager
def container(*, require_current_schema: bool = True) -> Iterator[Container]:
    settings = Settings.from_env()
    c = build(settings)
    try:
        if require_current_schema:
            try:
                current = migrate.is_current(c.engine)
            except Exception as exc:
                fail(
                    f"cannot reach the database at {redact_url(settings.database_url)}: "
                    f"{type(exc).__name__}",
                    "Check AGENTIAM_DATABASE_URL and that the server is running.",
                )
            if not current:
                fail(
                    "the database schema is not current",
                    "Run 'agentiam db upgrade' first.",
                )
        yield c
    finally:
        c.close()
