"""``Guard.connect`` checks its arguments as a gateway's configuration checks the same
settings (one function each, in adapters/gateway/config.py), and before anything is
opened: no connection to the control plane, no spool directory. The control plane
URL here is a loopback port nobody listens on, so a check that came after the
connection would fail with a connection error, not with the rule's message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from agentiam.adapters.gateway.guard import Guard

NOBODY = "http://127.0.0.1:9"  # the discard port: nothing answers
RULE = "between 1 MiB and 1 TiB"


def _connect(tmp_path: Path, url: str = NOBODY, **kwargs: Any) -> Guard:
    return Guard.connect(
        url,
        resource="https://agent.example/tools",
        spool_dir=tmp_path / "spool",
        name="g",
        environ={"AGENTIAM_GUARD_KEY": "a-key"},
        **kwargs,
    )


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        (0, RULE),
        (-1, RULE),
        (-(1 << 30), RULE),
        (64, RULE),  # what tests/api/test_guard.py passed before the rule
        ((1 << 20) - 1, RULE),
        ((1 << 40) + 1, RULE),
        (1 << 62, RULE),
        (True, "an integer"),
        (False, "an integer"),
        (2.0**20, "an integer"),
        ("1073741824", "an integer"),
        (None, "an integer"),
    ],
)
def test_spool_max_bytes_is_checked_as_the_gateways_before_anything_is_opened(
    tmp_path: Path, value: Any, rule: str
) -> None:
    """The gateway's ``spool.max_bytes`` rule and message (``spool_bound``): a zero,
    negative, tiny or huge bound, a bool, a float or a string is refused by name."""
    with pytest.raises(ValueError, match=f"^spool_max_bytes: {rule}$"):
        _connect(tmp_path, spool_max_bytes=value)
    assert not (tmp_path / "spool").exists()


@pytest.mark.parametrize("value", [1 << 20, 1 << 30, 1 << 40])
def test_spool_max_bytes_within_the_bound_passes_the_check(tmp_path: Path, value: int) -> None:
    """The bounds themselves are allowed: the guard goes on to the control plane
    (which does not answer here), so the failure is no longer the rule's."""
    with pytest.raises(httpx.ConnectError):
        _connect(tmp_path, spool_max_bytes=value)
