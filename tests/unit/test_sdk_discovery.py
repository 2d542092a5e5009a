"""RFC 9728 section 3.1: where a protected resource's metadata lives."""

from __future__ import annotations

import pytest

from agentiam.sdk.discovery import DiscoveryError, metadata_url, resource_metadata_param


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


# -- RFC 9728 section 5.1: the resource_metadata parameter of a 401's challenge ----------


@pytest.mark.parametrize(
    ("challenges", "found"),
    [
        (['Bearer resource_metadata="https://gw.example.com/m"'], "https://gw.example.com/m"),
        (  # DPoP, after other parameters; names are case-insensitive
            ['DPoP error="invalid_token", Resource_Metadata = "https://gw/m", algs="ES256"'],
            "https://gw/m",
        ),
        (  # two challenges in one value; a quoted-string is unescaped
            ['Basic realm="x", DPoP resource_metadata="https://gw/a\\"b"'],
            'https://gw/a"b',
        ),
        (  # the second header value
            ["Basic dXNlcjpwYXNz==", 'Bearer resource_metadata="https://gw/m"'],
            "https://gw/m",
        ),
        ([], None),
        (["Basic realm=x"], None),
    ],
)
def test_the_challenge_names_the_metadata(challenges: list[str], found: str | None) -> None:
    assert resource_metadata_param(challenges) == found


def test_a_parameter_inside_a_quoted_string_is_not_taken() -> None:
    """The attack: a server-controlled description that spells the parameter out."""
    challenge = 'Bearer error_description="retry; resource_metadata=https://evil/m"'
    assert resource_metadata_param([challenge]) is None
