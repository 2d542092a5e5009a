"""A resource's URI is decided, listed and read in one canonical form (RFC 3986 section
6.2.2: ``canonical_uri`` and ``resource_uris`` in adapters/gateway/mcp_visibility.py,
used by ``read_call`` in adapters/gateway/mcp_calls.py, the one read question of the MCP
gateway and the guard). The SDK's URI template match percent-decodes each variable, so
every spelling it reads as one resource must be decided as that resource: a forbid on
``DataSet::"file:///users/admin"`` must catch ``file:///users/%61dmin``. Pure functions
here; the live attacks are tests/api/test_guard_mcp_read_canonical.py (the guard) and
tests/unit/test_mcp_gateway_read_canonical_live.py (the gateway)."""

from __future__ import annotations

from typing import Any

import pytest

from agentiam.adapters.gateway.enforcer import Call
from agentiam.adapters.gateway.mcp_calls import read_call
from agentiam.adapters.gateway.mcp_visibility import Listed, canonical_uri, resource_uris
from agentiam.core.delegation.authorization_details import ApiCall
from agentiam.core.policy.model import EntityRef

ADMIN = "file:///users/admin"

# every spelling the SDK's template match gives the function "admin" (or the scheme
# case, which RFC 3986 says is one scheme): each is the forbidden URI
ADMIN_SPELLINGS = [
    "file:///users/%61dmin",  # the review's attack
    "file:///users/%61%64min",
    "file:///users/adm%69n",
    "file:///users/%61%64%6D%69%6E",  # upper-case hex
    "file:///users/%61%64%6d%69%6e",  # lower-case hex
    "FILE:///users/admin",
    "File:///%75sers/admin",  # an encoded letter in the literal part
]


@pytest.mark.parametrize("spelling", ADMIN_SPELLINGS)
def test_every_spelling_of_a_uri_is_its_canonical_form(spelling: str) -> None:
    assert canonical_uri(spelling) == ADMIN


@pytest.mark.parametrize(
    ("sent", "canonical"),
    [
        # 6.2.2.2: unreserved '-', '.', '_', '~' decoded, whatever the hex case
        ("file:///users/ops%2Dteam", "file:///users/ops-team"),
        ("file:///users/ops%2dteam", "file:///users/ops-team"),
        ("file:///a%2E%5f%7E", "file:///a._~"),
        # 6.2.2.1: anything else stays encoded, hex upper-cased
        ("file:///a%2fb%3a", "file:///a%2Fb%3A"),
        ("file:///users/j%c3%b6rg", "file:///users/j%C3%B6rg"),
        # left as they are: a policy names the URI as the server lists it, and a
        # rewritten spelling would make its forbid miss (the host's case, characters
        # beyond ASCII or a space, as themselves or percent-encoded)
        ("file:///users/jörg", "file:///users/jörg"),
        ("file:///users/a b", "file:///users/a b"),
        ("users://ALICE/profile", "users://ALICE/profile"),
        ("resource://MyApp/config", "resource://MyApp/config"),
        # 6.2.2.1: the scheme lower-cased; hex upper-cased anywhere
        ("HTTPS://Alice@API.Example.COM:8443/A?B=C", "https://Alice@API.Example.COM:8443/A?B=C"),
        ("http://%c3%a9X.example/", "http://%C3%A9X.example/"),
        # no authority: only the scheme
        ("URN:ISBN:0451450523", "urn:ISBN:0451450523"),
        ("greeting", "greeting"),
        ("%70rompt:summarize", "prompt:summarize"),
    ],
)
def test_rfc_3986_section_6_2_2(sent: str, canonical: str) -> None:
    assert canonical_uri(sent) == canonical
    assert canonical_uri(canonical) == canonical  # idempotent


@pytest.mark.parametrize("malformed", ["file:///a%", "file:///a%6", "file:///%zz", "x\ud800"])
def test_a_percent_without_two_hex_digits_is_malformed(malformed: str) -> None:
    assert canonical_uri(malformed) is None


def test_a_percent_encoded_percent_is_not_decoded_twice() -> None:
    """``%2561`` is the text ``%61``: a different name, not ``a``."""
    assert canonical_uri("file:///users/%2561dmin") == "file:///users/%2561dmin"


# -- read_call: the guard's (no route) and the gateway's (routed) -----------------------------


@pytest.mark.parametrize("spelling", ADMIN_SPELLINGS)
def test_the_guards_read_is_decided_on_the_canonical_uri(spelling: str) -> None:
    call = read_call("resources/read", {"uri": spelling})
    assert isinstance(call, Call)
    assert call.resource == EntityRef("DataSet", ADMIN)
    assert call.tool == ADMIN  # what the guard hands the SDK
    assert call.detail == ApiCall(action="read", url=ADMIN)


def _bank(exposed: str) -> tuple[str, str] | None:
    prefix = "Bank."  # a configured prefix keeps its case: it is a name, not a scheme
    return ("bank", exposed[len(prefix) :]) if exposed.startswith(prefix) else None


@pytest.mark.parametrize("spelling", ADMIN_SPELLINGS)
def test_the_gateways_read_is_decided_and_forwarded_canonical(spelling: str) -> None:
    call = read_call("resources/read", {"uri": "Bank." + spelling}, _bank)
    assert isinstance(call, Call)
    assert call.resource == EntityRef("DataSet", "Bank." + ADMIN)
    assert call.tool == "Bank." + ADMIN  # what the gateway routes
    assert call.detail == ApiCall(action="read", url=ADMIN)  # what it forwards
    assert call.resource_parents == (EntityRef("McpServer", "bank"),)


@pytest.mark.parametrize(
    ("params", "why"),
    [
        ({"uri": "file:///users/%6"}, "percent-encoding"),
        ({"uri": "file:///users/ad%"}, "percent-encoding"),
        ({"uri": "%70rompt:summarize"}, "names a prompt"),  # prompt: once canonical
        ({"uri": "PROMPT:summarize"}, "names a prompt"),
        ({"uri": "file:///" + "é" * 500}, "at most 500"),
        (["file:///users/admin"], "params: an object"),  # JSON-RPC allows arrays
    ],
)
def test_a_malformed_read_says_why(params: Any, why: str) -> None:
    refused = read_call("resources/read", params)
    assert isinstance(refused, str)
    assert why in refused


def test_non_object_params_of_a_prompt_are_malformed() -> None:
    assert read_call("prompts/get", ["summarize"]) == "params: an object"


# -- listings: a listed resource is decided as a read of it -----------------------------------


def test_a_listed_resource_is_asked_of_policy_in_canonical_form() -> None:
    listed = Listed("resource", "Bank.file:///users/%61dmin", "file:///users/%61dmin", "bank")
    canonical = listed.canonical()
    assert canonical == Listed("resource", "Bank." + ADMIN, ADMIN, "bank")
    action, resource, _ = canonical.question()
    read = read_call("resources/read", {"uri": listed.exposed}, _bank)
    assert isinstance(read, Call)
    assert (action, resource) == (read.action, read.resource)


def test_a_listed_resource_with_a_malformed_uri_is_never_shown() -> None:
    assert Listed("resource", "file:///a%", "file:///a%").canonical() is None
    assert resource_uris("file:///a%", "file:///a%") is None


def test_templates_tools_and_prompts_are_listed_as_they_are() -> None:
    """A template's ``{var}`` is not a URI; its id is what completions ask too."""
    for item in (
        Listed("template", "FILE:///users/{Name}", "FILE:///users/{Name}"),
        Listed("tool", "Search", "Search"),
        Listed("prompt", "p%61", "p%61"),
    ):
        assert item.canonical() is item
