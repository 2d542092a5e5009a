"""agentiam guard: the operator's commands for an in-process guard (the guard itself
runs inside the agent, :mod:`agentiam.adapters.gateway.guard`; docs/guard.md).

``agentiam guard spool rejected list|resend|discard`` works on the events the
guard's audit spool set aside (its ``rejected.jsonl``), with the same command bodies
as ``agentiam gateway spool rejected`` (:mod:`agentiam.cli.spool`). A guard has no
configuration file, so what a gateway's commands read from theirs is given as
options, with the values the agent passes to ``Guard.connect``:

- ``--spool-dir``: its ``spool_dir`` (every command);
- ``--control-plane``: its control plane URL, and ``--key-env``: the variable holding
  its verifier key (its ``admin_key_env``, default ``AGENTIAM_GUARD_KEY``), for
  ``resend`` and ``discard``; the key itself is never an option (the process list
  shows command lines to every user of the machine);
- ``--name``: its ``name``, for ``discard``, whose audit record is written as the
  guard's source ``guard/<name>`` (the key is bound to it);
- ``--rejected-max-bytes``: its ``spool_rejected_max_bytes``, for ``list``, which
  compares the file with that bound.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agentiam.cli.output import fail
from agentiam.cli.spool import (
    ControlPlane,
    JsonOpt,
    LimitOpt,
    Spool,
    YesOpt,
    discard_rejected,
    list_rejected,
    resend_rejected,
)

__all__ = ["app", "rejected_app", "spool_app"]

DEFAULT_KEY_ENV = "AGENTIAM_GUARD_KEY"
"""``Guard.connect``'s default ``admin_key_env``."""

app = typer.Typer(
    help=(
        "The in-process guard's operator commands (the guard runs inside the agent: "
        "see docs/guard.md)."
    ),
    no_args_is_help=True,
)
spool_app = typer.Typer(
    help="A guard's local audit spool (the spool_dir the agent gives Guard.connect).",
    no_args_is_help=True,
)
rejected_app = typer.Typer(
    help=(
        "Events the control plane refused for good, kept in the guard's spool's "
        "rejected.jsonl: list them, send them again once the cause is fixed, or discard "
        "them (audited). resend and discard need the agent (its guard) stopped."
    ),
    no_args_is_help=True,
)
app.add_typer(spool_app, name="spool")
spool_app.add_typer(rejected_app, name="rejected")

SpoolDirOpt = Annotated[
    Path,
    typer.Option("--spool-dir", help="The guard's spool directory (Guard.connect's spool_dir)."),
]
ControlPlaneOpt = Annotated[
    str,
    typer.Option(
        "--control-plane",
        help="The control plane URL the guard connects to (https; http only on loopback).",
    ),
]
KeyEnvOpt = Annotated[
    str,
    typer.Option(
        "--key-env",
        help=(
            "The environment variable holding the guard's verifier key "
            "(Guard.connect's admin_key_env). Never the key itself."
        ),
    ),
]
NameOpt = Annotated[
    str,
    typer.Option(
        "--name", help="The guard's name (Guard.connect's name): the record's source guard/NAME."
    ),
]
BoundOpt = Annotated[
    int | None,
    typer.Option(
        "--rejected-max-bytes",
        help=(
            "The guard's bound for rejected.jsonl (Guard.connect's spool_rejected_max_bytes; "
            "default 64 MiB, as there)."
        ),
        show_default=False,
    ),
]


def _spool(directory: Path, bound: int | None = None) -> Spool:
    """The guard's spool: a directory that exists (a typo must not read as an empty
    spool), and a bound checked as ``Guard.connect`` checks it (None: its default)."""
    from agentiam.adapters.gateway.config import spool_bound
    from agentiam.adapters.gateway.spool import DEFAULT_REJECTED_MAX_BYTES

    if not directory.is_dir():
        fail(
            f"no spool directory at {directory}",
            "Pass the spool_dir the agent gives Guard.connect.",
        )
    try:
        checked = spool_bound(
            DEFAULT_REJECTED_MAX_BYTES if bound is None else bound, "--rejected-max-bytes"
        )
    except ValueError as exc:
        fail(str(exc))
    return Spool("guard", directory, checked)


def _control_plane(url: str, key_env: str) -> ControlPlane:
    """The guard's control plane, checked as a gateway's ``control_plane.url`` (the
    verifier key is sent to it), and its key, read from ``key_env`` when needed."""
    from agentiam.adapters.gateway.config import from_env, https_url

    try:
        checked = https_url(url, "--control-plane")
    except ValueError as exc:
        fail(str(exc))
    return ControlPlane(
        checked,
        key_env,
        lambda: from_env(None, key_env, "--key-env", "the guard's verifier-role admin key"),
    )


def _source(name: str) -> str:
    """``guard/<name>``, the name checked as ``Guard.connect`` checks it."""
    from agentiam.adapters.gateway.config import point_name

    try:
        return f"guard/{point_name(name, '--name')}"
    except ValueError as exc:
        fail(str(exc))


@rejected_app.command("list")
def rejected_list(
    spool_dir: SpoolDirOpt,
    rejected_max_bytes: BoundOpt = None,
    as_json: JsonOpt = False,
    limit: LimitOpt = 100,
) -> None:
    """How many events are set aside, why, and their ids, sources and actions (never
    their bodies). Safe while the agent and its guard run."""
    list_rejected(_spool(spool_dir, rejected_max_bytes), as_json=as_json, limit=limit)


@rejected_app.command("resend")
def rejected_resend(
    spool_dir: SpoolDirOpt,
    control_plane: ControlPlaneOpt,
    key_env: KeyEnvOpt = DEFAULT_KEY_ENV,
    as_json: JsonOpt = False,
) -> None:
    """Send the set-aside events to the control plane again, with the guard's key.
    Those it accepts leave the file; those it refuses again stay, with the new reason
    (exit code 2). Stop the agent (its guard) first."""
    resend_rejected(_spool(spool_dir), _control_plane(control_plane, key_env), as_json=as_json)


@rejected_app.command("discard")
def rejected_discard(
    spool_dir: SpoolDirOpt,
    control_plane: ControlPlaneOpt,
    name: NameOpt,
    key_env: KeyEnvOpt = DEFAULT_KEY_ENV,
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete the set-aside events for good. The control plane must first store an
    audit record of it (who, how many, every event id) as the guard's source
    guard/NAME, shipped with the guard's key; if it does not, nothing is deleted. Stop
    the agent (its guard) first."""
    discard_rejected(
        _spool(spool_dir),
        _control_plane(control_plane, key_env),
        source=_source(name),
        yes=yes,
        as_json=as_json,
    )
