"""AGENTIAM_SHUTDOWN_GRACE_SECONDS: read from the environment and range-checked."""

from __future__ import annotations

import pytest

from agentiam.config import Settings
from agentiam.errors import InvalidInput


def test_the_grace_is_read_from_the_environment() -> None:
    assert Settings.from_env({}).shutdown_grace_seconds == 5.0
    env = {"AGENTIAM_SHUTDOWN_GRACE_SECONDS": "2.5"}
    assert Settings.from_env(env).shutdown_grace_seconds == 2.5


@pytest.mark.parametrize("value", ["0", "-1", "301", "nan"])
def test_a_grace_out_of_range_is_refused(value: str) -> None:
    with pytest.raises(InvalidInput, match="shutdown_grace_seconds"):
        Settings.from_env({"AGENTIAM_SHUTDOWN_GRACE_SECONDS": value})
