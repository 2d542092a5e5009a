"""RFC 9728 section 3.1: where a protected resource's metadata lives."""

from __future__ import annotations

import pytest

from agentiam.sdk.discovery import DiscoveryError, metadata_url


@pytest.mark.parametrize(
    ("resource", "url"),
    [
        ("https://gw.example.com", "https://gw.example.com/.well-known/oauth-protected-resource"),
        (
            "https://gw.example.com/mcp",
            "https://gw.example.com/.well-known/oauth-protected-resource/mcp",
        ),
        (
            "https://gw.example.com:8443/a/b/",
            "https://gw.example.com:8443/.well-known/oauth-protected-resource/a/b",
        ),
    ],
)
def test_the_well_known_path_goes_between_host_and_path(resource: str, url: str) -> None:
    assert metadata_url(resource) == url


@pytest.mark.parametrize(
    "resource", ["ftp://gw.example.com", "gw.example.com", "https://gw.example.com/#x"]
)
def test_urls_that_are_no_resource_are_refused(resource: str) -> None:
    with pytest.raises(DiscoveryError):
        metadata_url(resource)
