"""The one rule for plain http (core/plain_http.py) and the places that apply it."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from agentiam.adapters.gateway.config import https_url
from agentiam.core.plain_http import ONLY_ON_LOOPBACK, secure_or_loopback


@pytest.mark.parametrize(
    "url",
    [
        "https://iam.example.com",
        "https://10.0.0.5:8443/x",
        "http://127.0.0.1:8080",
        "http://[::1]:8080/",
        "http://localhost",
        "http://LOCALHOST:1",  # host names are case-insensitive; urlsplit lowers them
    ],
)
def test_https_anywhere_and_plain_http_on_loopback_pass(url: str) -> None:
    assert secure_or_loopback(urlsplit(url))
    assert https_url(url, "u") == url.rstrip("/")


@pytest.mark.parametrize(
    "url",
    [
        "http://iam.example.com",
        "http://localhost.evil.example",  # a name that merely starts with localhost
        "http://127.0.0.1.nip.io",  # a public name that resolves to loopback
        "http://[::ffff:127.0.0.1]",  # not one of the three hosts
        "http://0.0.0.0",
        "ftp://127.0.0.1",
        "ws://localhost",
        "127.0.0.1:8080",
        "",
    ],
)
def test_plain_http_elsewhere_and_other_schemes_are_refused(url: str) -> None:
    assert not secure_or_loopback(urlsplit(url))
    expected = f"control_plane.url: must be https ({ONLY_ON_LOOPBACK})"
    with pytest.raises(ValueError, match=re.escape(expected)):
        https_url(url, "control_plane.url")


def test_the_message_names_every_host_the_rule_accepts() -> None:
    assert ONLY_ON_LOOPBACK == "plain http only on 127.0.0.1, [::1] or localhost"


def test_a_gateway_that_must_not_use_plain_http_refuses_it_on_loopback_too() -> None:
    with pytest.raises(ValueError, match="must be https"):
        https_url("http://127.0.0.1:9", "public_url", allow_http_loopback=False)
    assert https_url("https://127.0.0.1:9", "public_url", allow_http_loopback=False)
