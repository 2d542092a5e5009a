"""The e2e tests' ``agentiam`` runner (tests.support.cli) answers as the real console
script does: the same exit status, stdout and stderr for the same command and
environment, and no module of the command line imported before a run's environment
is set (its rich consoles read ``COLUMNS`` and the like when they are made)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from tests.e2e.test_quickstart import env_for
from tests.support.cli import AGENTIAM, PRELOAD
from tests.support.cli import run as run_cli
from tests.support.live import free_port

pytestmark = pytest.mark.e2e


def test_nothing_of_the_command_line_is_imported_before_a_run() -> None:
    listed = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys\nfor m in {PRELOAD!r}: __import__(m)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[:2] == ['agentiam', 'cli']))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert listed.stdout.strip() == "[]", listed.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["agents", "show", "nobody"],  # an error naming a next step, exit 1
        ["agents", "show"],  # a usage error, exit 2
        ["--help"],  # rendered to the width COLUMNS gives
        ["gateway", "secrets", "put", "k", "--kind", "api_key", "--store", "{tmp}/s.json"],
    ],
)
def test_a_run_answers_as_the_console_script_does(
    sqlite_url: str, tmp_path: object, args: list[str]
) -> None:
    env = {**env_for(sqlite_url, free_port()), "COLUMNS": "71"}
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    real = subprocess.run(
        [AGENTIAM, *args], env=env, input="", capture_output=True, text=True, timeout=60
    )
    forked = run_cli(args, env)
    assert (forked.returncode, forked.stdout, forked.stderr) == (
        real.returncode,
        real.stdout,
        real.stderr,
    )
    if args == ["--help"]:
        assert max(len(line) for line in forked.stdout.splitlines()) == 71
