"""The operator's commands on an audit spool's set-aside events (``rejected.jsonl``),
one body each for both enforcement points that keep a spool:

- ``agentiam gateway spool rejected list|resend|discard --config FILE``
  (:mod:`agentiam.cli.gateway`: everything comes from the gateway's configuration);
- ``agentiam guard spool rejected list|resend|discard --spool-dir DIR …``
  (:mod:`agentiam.cli.guard`: an in-process guard has no configuration file, so the
  directory, the control plane and the key's variable are options).

Both describe the spool with a :class:`Spool` (and, for ``resend`` and ``discard``,
the :class:`ControlPlane` it ships to); the commands here do the rest. Their
guarantees are :class:`~agentiam.adapters.gateway.spool.RejectedFile`'s: ``list``
prints no event body and takes no lock (safe while the gateway or guard runs);
``resend`` and ``discard`` hold the spool directory's lock (so they refuse while a
gateway or guard has it open) and run only as the directory's owner; ``discard``
deletes only after the control plane stored its ``audit.discarded`` record. Exit
codes: 0 done, 1 refused or stopped (nothing lost), 2 some events refused again.

The verifier key is read from an environment variable, never from the command line
(which other users of the machine can see in the process list), and never printed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from agentiam.cli.output import console, emit, fail, handle_errors

__all__ = [
    "ControlPlane",
    "JsonOpt",
    "LimitOpt",
    "Spool",
    "YesOpt",
    "discard_rejected",
    "list_rejected",
    "resend_rejected",
]

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
LimitOpt = Annotated[
    int,
    typer.Option("--limit", min=0, max=100_000, help="Show at most this many events."),
]
YesOpt = Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")]

_LIST_COLUMNS = ["line", "rejected_at", "event_id", "type", "source", "action", "reason"]


@dataclass(frozen=True, slots=True)
class Spool:
    """One enforcement point's spool, as the commands need it. ``kind`` is
    ``gateway`` or ``guard`` (for the messages: who refuses calls, whose user to run
    as); ``rejected_max_bytes`` is the bound ``list`` compares the file with."""

    kind: str
    directory: Path
    rejected_max_bytes: int

    @property
    def refuses(self) -> str:
        """What a full file does to calls, in the holder's words."""
        if self.kind == "guard":
            return "the guard refuses every guarded call"
        return "the gateway refuses every call"

    @property
    def runs_as(self) -> str:
        """The user the commands that rewrite the directory must run as."""
        if self.kind == "guard":
            return "Run it as the user the guarded agent runs as (it owns the spool directory)."
        return "Run it as the user the gateway runs as."


@dataclass(frozen=True, slots=True)
class ControlPlane:
    """How ``resend`` and ``discard`` reach the control plane for the spool's
    enforcement point: its ``url``, and ``key_env``, the environment variable that
    holds the enforcement point's verifier key, read by ``read_key`` (which raises
    ValueError naming the variable when it is not set)."""

    url: str
    key_env: str
    read_key: Callable[[], str]

    def admin_key(self, spool: Spool) -> str:
        """The verifier key; the command fails naming the variable when it is not set
        (before anything is read or changed)."""
        try:
            return self.read_key()
        except ValueError as exc:
            fail(str(exc), f"Export {self.key_env} as the {spool.kind} has it.")


def _when(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    try:
        return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return None


def _printable(text: str) -> str:
    """``text`` without control characters (an event's strings reach a terminal)."""
    return "".join(c if c.isprintable() else "?" for c in text)


def _cell_text(value: Any) -> Any:
    """A table cell: a string printable and with rich markup escaped."""
    from rich.markup import escape

    return escape(_printable(value)) if isinstance(value, str) else value


def _os_error(exc: OSError, what: str, spool: Spool) -> NoReturn:
    fail(
        f"cannot {what}: {exc.strerror or type(exc).__name__}"
        + (f" ({exc.filename})" if exc.filename else ""),
        spool.runs_as,
    )


def list_rejected(spool: Spool, *, as_json: bool, limit: int) -> None:
    """How many events are set aside, why, and their ids, sources and actions (never
    their bodies). Takes no lock: safe while the gateway or guard runs."""
    from agentiam.adapters.gateway.spool import RejectedFile

    rejected = RejectedFile(spool.directory)
    shown: list[dict[str, Any]] = []
    reasons: dict[str, int] = {}
    count = unreadable = 0
    try:
        size = rejected.size()
        for entry in rejected.entries():
            if not entry.readable:
                unreadable += 1
            else:
                count += 1
                reason = entry.reason or "(none)"
                if reason in reasons or len(reasons) < 32:
                    reasons[reason] = reasons.get(reason, 0) + 1
                else:
                    reasons["(other)"] = reasons.get("(other)", 0) + 1
            if len(shown) < limit:
                row = entry.to_dict()
                row["rejected_at"] = _when(entry.rejected_at)
                row["retried_at"] = _when(entry.retried_at)
                if not entry.readable:
                    row["reason"] = "(not a set-aside event; kept as it is)"
                shown.append(row)
        discarded = rejected.discarded()
    except OSError as exc:
        _os_error(exc, f"read {rejected.path}", spool)
    bound = spool.rejected_max_bytes
    summary: dict[str, Any] = {
        "file": str(rejected.path),
        "events": count,
        "unreadable_lines": unreadable,
        "bytes": size,
        "max_bytes": bound,
        "full": size >= bound,
        "reasons": reasons,
        "discarded_events": discarded.get("events", 0),
        "shown": len(shown),
        "entries": shown,
    }
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        return
    state = f"FULL: {spool.refuses}" if summary["full"] else "within its bound"
    console.print(
        f"{count} event{'s' if count != 1 else ''} set aside in {rejected.path} "
        f"({size} of {bound} bytes, {state})"
        + (f"; {unreadable} unreadable line{'s' if unreadable != 1 else ''}" if unreadable else ""),
        highlight=False,
        markup=False,
    )
    for reason, n in sorted(reasons.items(), key=lambda item: -item[1]):
        console.print(f"  {n:>7}  {_printable(reason)}", highlight=False, markup=False)
    if shown:
        rows = [{k: _cell_text(v) for k, v in row.items()} for row in shown]
        emit(rows, as_json=False, columns=_LIST_COLUMNS, title="Rejected audit events")
    if len(shown) < count + unreadable:
        console.print(f"(first {len(shown)} shown; --limit to see more)", markup=False)


def resend_rejected(spool: Spool, control_plane: ControlPlane, *, as_json: bool) -> None:
    """Send the set-aside events to the control plane again, with the enforcement
    point's key. Those it accepts leave the file; those it refuses again stay, with the
    new reason (exit code 2); the first other failure stops (exit code 1)."""
    from agentiam.adapters.gateway import runtime

    key = control_plane.admin_key(spool)
    with handle_errors():
        try:
            result = runtime.resend_rejected(spool.directory, url=control_plane.url, admin_key=key)
        except OSError as exc:
            _os_error(exc, f"rewrite {spool.directory}", spool)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n")
    elif result.kept + result.sent == 0:
        console.print("nothing to resend", markup=False)
    else:
        console.print(
            f"{result.sent} accepted and removed; {result.refused} refused again and "
            f"{result.unsent} not sent (kept); {result.unreadable} unreadable lines kept"
            + ("; a torn last line cut off (never acknowledged)" if result.torn else ""),
            highlight=False,
            markup=False,
        )
    if result.error is not None:
        fail(
            f"sending stopped: {result.error}",
            "Check the control plane and the key, then run resend again.",
        )
    if result.refused:
        raise typer.Exit(2)


def discard_rejected(
    spool: Spool, control_plane: ControlPlane, *, source: str, yes: bool, as_json: bool
) -> None:
    """Delete the set-aside events for good, once the control plane stored an audit
    record of it (who, how many, every event id), shipped with the enforcement point's
    key as its ``source`` (``gateway/<name>``, ``guard/<name>``); if it does not,
    nothing is deleted (exit code 1)."""
    import httpx

    from agentiam.adapters.gateway import runtime
    from agentiam.adapters.gateway.spool import Refused, RejectedFile
    from agentiam.services.audit_export import redact

    key = control_plane.admin_key(spool)
    rejected = RejectedFile(spool.directory)
    if not yes:
        try:
            count = sum(1 for entry in rejected.entries() if entry.readable)
        except OSError as exc:
            _os_error(exc, f"read {rejected.path}", spool)
        typer.confirm(
            f"Discard the {count} events in {rejected.path}, for good (an audit record of "
            "it is shipped first)?",
            abort=True,
        )
    with handle_errors():
        try:
            summary = runtime.discard_rejected(
                spool.directory,
                url=control_plane.url,
                admin_key=key,
                source=source,
                by=runtime.operator_name(),
            )
        except OSError as exc:
            _os_error(exc, f"discard {rejected.path}", spool)
        except (Refused, RuntimeError, httpx.HTTPError) as exc:
            fail(
                f"nothing was discarded: the control plane did not store the audit record "
                f"of the discard ({redact(exc)})",
                f"Check the control plane and the key (bound to the source {source}), "
                "then run discard again.",
            )
    if summary is None:
        result: dict[str, Any] = {"discarded_events": 0, "unreadable_lines": 0}
    else:
        result = {
            "discarded_events": summary.events,
            "unreadable_lines": summary.unreadable,
            "bytes": summary.bytes,
            "by": summary.by,
        }
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, sort_keys=True) + "\n")
    elif summary is None:
        console.print("nothing to discard", markup=False)
    else:
        console.print(
            f"discarded {summary.events} events ({summary.unreadable} unreadable lines) "
            f"from {rejected.path}, recorded in the audit trail as done by {summary.by}",
            highlight=False,
            markup=False,
        )
