"""The ``agentiam`` command line run as its own process, without paying its imports
on every run.

Each run is a child process of a fork server (:mod:`multiprocessing`'s
``forkserver``: a single-threaded process that imported the control plane's modules
once and forks one child per run): the child takes the run's environment, arguments,
stdout and stderr (redirected at the file descriptor level), runs the console script's
``main()``, and exits with the console script's exit status, after the interpreter's
exit handlers, as ``agentiam`` does. What is shared is only what importing does: no
container, database connection, or thread exists in the fork server.

The command-line package itself (``agentiam.cli``) is imported in each child, after its
environment is set: its rich consoles read ``COLUMNS`` and the like when they are made.
Settings and everything else read the environment when the command runs.

``agentiam serve`` and the gateways stay real ``agentiam`` processes (signals, the
printed first admin key, restarts), which keeps the console script itself covered.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path

AGENTIAM = str(Path(sys.executable).with_name("agentiam"))
# The heavy part of the imports: every layer below the command line, whose modules
# read no environment when imported (Settings reads it when a command runs);
# tests/e2e/test_cli_runner.py checks that nothing of agentiam.cli comes with them.
# (The preload list is the process's one forkserver's: only this module uses it.)
PRELOAD = [
    "agentiam.bootstrap",
    "agentiam.adapters.http.app",
    "agentiam.adapters.storage.migrate",
    "tests.support.cli",
]
_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(PRELOAD)


def _exit_status(code: object) -> int:
    """The exit status Python gives ``SystemExit(code)``: None is 0, an int itself,
    anything else is printed to stderr and is 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _child(
    args: Sequence[str], env: Mapping[str, str], cwd: str, stdin: str, out: str, err: str
) -> None:
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path, flags in (
        (0, stdin, os.O_RDONLY),
        (1, out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
        (2, err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
    ):
        target = os.open(path, flags, 0o600)
        os.dup2(target, fd)
        os.close(target)
    sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.argv = [AGENTIAM, *args]
    try:
        from agentiam.cli.main import main

        main()
        status = 0
    except SystemExit as exc:
        status = _exit_status(exc.code)
    except BaseException:  # as the interpreter reports an uncaught exception
        traceback.print_exc()
        status = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def run(
    args: Sequence[str], env: Mapping[str, str], *, input: str = "", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``agentiam ARGS`` with environment ``env`` (and ``input`` on its stdin) in a
    process of its own, in this one's working directory: its exit status, stdout and
    stderr, as ``subprocess.run(..., capture_output=True, text=True)`` returns them."""
    with tempfile.TemporaryDirectory(prefix="agentiam-cli-") as tmp:
        stdin, out, err = (os.path.join(tmp, name) for name in ("in", "out", "err"))
        Path(stdin).write_text(input, encoding="utf-8")
        process = _context.Process(
            target=_child, args=(list(args), dict(env), os.getcwd(), stdin, out, err)
        )
        process.start()
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired([AGENTIAM, *args], timeout)
        assert process.exitcode is not None
        return subprocess.CompletedProcess(
            [AGENTIAM, *args],
            process.exitcode,
            Path(out).read_text(encoding="utf-8"),
            Path(err).read_text(encoding="utf-8"),
        )
