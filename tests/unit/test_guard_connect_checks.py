"""``Guard.connect`` checks its arguments as a gateway's configuration checks the same
settings (one function each, in adapters/gateway/config.py), and before anything is
opened: no connection to the control plane, no spool directory. The control plane
URL here is a loopback port nobody listens on, so a check that came after the
connection would fail with a connection error, not with the rule's message."""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentiam.adapters.gateway.guard import Guard

NOBODY = "http://127.0.0.1:9"  # the discard port: nothing answers
RULE = "between 1 MiB and 1 TiB"
HTTPS = "control_plane_url: must be https (plain http only on 127.0.0.1, [::1] or localhost)"
BARE = "control_plane_url: a URL without user info, query or fragment"


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


# -- the control plane's URL ------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://cp.example.com", HTTPS),
        ("http://cp.example.com:8080/", HTTPS),
        ("HTTP://cp.example.com", HTTPS),
        ("http://localhost.example.com", HTTPS),
        ("http://127.0.0.1.nip.io", HTTPS),
        ("http://10.0.0.7:8080", HTTPS),
        ("ws://cp.example.com", HTTPS),
        ("cp.example.com", HTTPS),
        ("", HTTPS),
        ("https://user:secret@cp.example.com", BARE),
        ("https://cp.example.com/?key=1", BARE),
        ("https://", BARE),
    ],
)
def test_a_control_plane_over_plain_http_to_another_host_is_refused_before_connecting(
    tmp_path: Path, url: str, message: str
) -> None:
    """The guard sends its admin key to the control plane and takes the policies,
    keys and revocations it enforces from it: plain http to another host would give
    both to anyone on the path. The gateway's rule (``https_url``) and message,
    before anything connects (``cp.example.com`` is never resolved) or is made."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        _connect(tmp_path, url)
    assert not (tmp_path / "spool").exists()


def _host_address() -> str | None:
    """This host's address on its outward interface (not loopback), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: it only picks the interface
            address = str(s.getsockname()[0])
        except OSError:
            return None
    ip = ipaddress.ip_address(address)
    return None if ip.is_loopback or ip.is_unspecified else address


class _Listener:
    """A real TCP listener on ``address`` that counts the connections made to it."""

    def __init__(self, address: str) -> None:
        self.sock = socket.create_server((address, 0))
        self.sock.settimeout(0.1)
        self.url = f"http://{address}:{self.sock.getsockname()[1]}"
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def outward() -> Iterator[_Listener]:
    address = _host_address()
    if address is None:
        pytest.skip("this host has no address besides loopback")
    listener = _Listener(address)
    yield listener
    listener.close()


def test_no_connection_is_made_to_a_plain_http_control_plane_on_another_host(
    tmp_path: Path, outward: _Listener
) -> None:
    """A control plane on this host's outward address, over plain http: refused, and
    the listener there saw no connection (the key was never sent)."""
    with pytest.raises(ValueError, match=f"^{re.escape(HTTPS)}$"):
        _connect(tmp_path, outward.url)
    with pytest.raises(httpx.ConnectError):  # the listener works: https gets through
        _connect(tmp_path, outward.url.replace("http://", "https://"))
    outward.close()
    assert outward.accepted == 1  # only the https attempt
    assert not (tmp_path / "spool").exists()


@pytest.mark.parametrize(
    "url",
    ["https://127.0.0.1:9", "http://127.0.0.1:9", "http://[::1]:9", "http://localhost:9/"],
)
def test_https_and_plain_http_on_loopback_are_accepted(tmp_path: Path, url: str) -> None:
    """https anywhere, plain http on 127.0.0.1, ``[::1]`` and ``localhost`` (the rule
    the gateways and ``agentiam guard spool rejected`` apply): past the check, the
    guard tries the control plane, which does not answer on this port."""
    with pytest.raises(httpx.ConnectError):
        _connect(tmp_path, url)


# -- the outage bound and the JWKS safety net ---------------------------------------------

SECONDS = "a number between 1 and 86400"


@pytest.mark.parametrize("setting", ["jwks_refresh_seconds", "outage_seconds"])
@pytest.mark.parametrize(
    "value",
    [0, 0.5, -1, -60, 86_401, 1e9, float("nan"), float("inf"), True, False, "60", "1m", None],
)
def test_seconds_settings_are_checked_as_the_gateways_before_anything_is_opened(
    tmp_path: Path, setting: str, value: Any
) -> None:
    """The gateway's ``control_plane.jwks_refresh_seconds`` and ``outage_seconds`` rule
    (``control_plane_seconds``: 1 to 86400): zero, a fraction of a second, a negative,
    more than a day, NaN, infinity, a bool, a string or None is refused by name, with no
    connection made (a zero or negative interval would spin or stop the re-read)."""
    with pytest.raises(ValueError, match=f"^{setting}: {SECONDS}$"):
        _connect(tmp_path, **{setting: value})
    assert not (tmp_path / "spool").exists()


@pytest.mark.parametrize("value", [1, 1.5, 60, 86_400])
def test_jwks_refresh_seconds_within_the_bound_passes_the_check(
    tmp_path: Path, value: float
) -> None:
    """The bounds themselves are allowed (more than a quarter of the outage bound too:
    it is capped, not refused, as a gateway's): past the check, the guard tries the
    control plane, which does not answer here."""
    with pytest.raises(httpx.ConnectError):
        _connect(tmp_path, jwks_refresh_seconds=value)
