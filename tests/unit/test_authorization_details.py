"""Rich authorization requests (RFC 9396): parsing and normalising
``authorization_details``, narrowing (section 6.1), the ``permits`` check enforcement
points make, operator-defined types and the policy context shape."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agentiam.core.delegation.authorization_details import (
    BUILTIN,
    MAX_CUSTOM_TYPES,
    MAX_DEPTH,
    MAX_ENTRIES,
    MAX_FIELDS,
    MAX_JSON_BYTES,
    MAX_LIST,
    MAX_STRING,
    ApiCall,
    CustomCall,
    DetailsRejected,
    DetailsVerdict,
    DetailTypeRegistry,
    ToolCall,
    permits,
    policy_context,
)
from agentiam.core.policy.schema import BASE_SCHEMA, CONTEXT_TYPE

GW = "https://gw.example.com/mcp"
API = "https://api.example.com/v1"


def tool(*tools: str, **members: Any) -> dict[str, Any]:
    return {"type": "tool_invocation", "tools": list(tools), **members}


def api(locations: list[str], actions: list[str], **members: Any) -> dict[str, Any]:
    return {"type": "api_access", "locations": locations, "actions": actions, **members}


def parse(*entries: Any) -> tuple[dict[str, Any], ...]:
    return BUILTIN.parse(list(entries))


def narrowing(requested: list[Any], granted: list[Any]) -> str | None:
    return BUILTIN.narrowing_problem(requested, granted)


PAYMENTS = BUILTIN.with_types(
    [
        {
            "type": "payment_initiation",
            "description": "Initiate a payment",
            "fields": {
                "locations": {"kind": "uri_set", "required": True},
                "actions": {"kind": "set"},
                "currency": {"kind": "exact"},
                "max_amount": {"kind": "max_number"},
                "min_amount": {"kind": "min_number"},
            },
        }
    ]
)


def payment(**members: Any) -> dict[str, Any]:
    return {"type": "payment_initiation", "locations": ["https://bank.example/pay"], **members}


# -- parsing and normalisation ---------------------------------------------------------------


class TestParse:
    def test_json_text_and_decoded_list_agree(self) -> None:
        entries = [tool("search", "fetch"), api([API], ["get"])]
        assert BUILTIN.parse(json.dumps(entries)) == BUILTIN.parse(entries)
        assert BUILTIN.parse(json.dumps(entries).encode()) == BUILTIN.parse(entries)
        assert BUILTIN.parse(tuple(entries)) == BUILTIN.parse(entries)

    def test_empty_array_is_nothing_requested(self) -> None:
        assert BUILTIN.parse("[]") == ()
        assert BUILTIN.parse([]) == ()

    def test_sets_are_sorted_and_deduplicated(self) -> None:
        (entry,) = parse(tool("b", "a", "b", "a"))
        assert entry == {"type": "tool_invocation", "tools": ["a", "b"]}

    def test_http_methods_are_upper_cased_and_action_names_kept(self) -> None:
        (entry,) = parse(api([API], ["get", "Post", "GET", "read", "Write"]))
        assert entry["actions"] == ["GET", "POST", "Write", "read"]

    def test_uris_are_normalised(self) -> None:
        (entry,) = parse(
            api(
                [
                    "HTTPS://API.Example.COM:443/v1/%7euser/%2f".replace("%2f", "a%3Ab"),
                    "http://api.example.com:80",
                    "https://api.example.com:8443/x",
                    "https://[2001:DB8:0:0::1]/y",
                ],
                ["GET"],
            )
        )
        assert entry["locations"] == [
            "http://api.example.com/",
            "https://[2001:db8::1]/y",
            "https://api.example.com/v1/~user/a%3Ab",
            "https://api.example.com:8443/x",
        ]

    def test_integral_numbers_become_integers(self) -> None:
        (entry,) = parse(tool("t", arguments={"n": {"min": 1.0, "max": 2.5, "enum": [2.0, 2]}}))
        constraint = entry["arguments"]["n"]
        assert constraint == {"enum": [2], "min": 1, "max": 2.5}
        assert isinstance(constraint["min"], int)

    def test_enum_keeps_booleans_apart_from_numbers(self) -> None:
        (entry,) = parse(tool("t", arguments={"x": {"enum": [1, True, 0, False, None, "1", 1.0]}}))
        assert entry["arguments"]["x"]["enum"] == [None, False, True, 0, 1, "1"]

    def test_duplicate_entries_are_dropped_order_kept(self) -> None:
        a, b = tool("a"), api([API], ["GET"])
        assert BUILTIN.parse([a, b, a, tool("a", "a"), b]) == parse(a, b)

    def test_equal_requests_compare_equal(self) -> None:
        one = parse(tool("b", "a", arguments={"y": {"enum": [2, 1]}, "x": {"prefix": "p"}}))
        two = parse(tool("a", "b", "a", arguments={"x": {"prefix": "p"}, "y": {"enum": [1, 2, 1]}}))
        assert one == two

    def test_parse_is_idempotent(self) -> None:
        parsed = parse(
            tool(
                "t", locations=[GW.upper().replace("HTTPS", "https")], arguments={"n": {"max": 3}}
            ),
            api([API + "/"], ["delete"], datatypes=["b", "a"], identifier="doc-1"),
        )
        assert BUILTIN.parse(parsed) == parsed
        assert BUILTIN.parse(json.dumps(parsed)) == parsed

    def test_result_is_plain_json(self) -> None:
        parsed = parse(tool("t", arguments={"n": {"enum": [1, "a", None, True]}}))
        assert json.loads(json.dumps(list(parsed))) == list(parsed)

    def test_constraint_keywords(self) -> None:
        (entry,) = parse(
            tool(
                "t",
                arguments={
                    "a": {"const": "x"},
                    "b": {"enum": ["x", "y"], "const": "x"},
                    "c": {"min": 0},
                    "d": {"max": 0},
                    "e": {"max_length": 0},
                    "f": {"prefix": ""},
                    "g": {"prefix": "ab", "max_length": 2},
                },
            )
        )
        assert set(entry["arguments"]) == set("abcdefg")


def rejected(raw: Any, match: str, registry: DetailTypeRegistry = BUILTIN) -> str:
    with pytest.raises(DetailsRejected, match=match) as info:
        registry.parse(raw)
    return str(info.value)


class TestParseRefuses:
    @pytest.mark.parametrize(
        ("raw", "match"),
        [
            ('{"type": "tool_invocation"}', "JSON array"),
            ('"tool_invocation"', "JSON array"),
            ("7", "JSON array"),
            ({"type": "tool_invocation", "tools": ["a"]}, "JSON array"),
            (None, "JSON array"),
            ("[1]", r"\[0\] must be an object"),
            ([["a"]], r"\[0\] must be an object"),
            ([{"tools": ["a"]}], 'string "type"'),
            ([{"type": 7, "tools": ["a"]}], 'string "type"'),
            ([{"type": ""}], 'string "type"'),
            ([{"type": "payment_initiation"}], 'unknown type "payment_initiation"'),
            ([{"type": "Tool_Invocation", "tools": ["a"]}], "unknown type"),
            ("[", "not valid JSON"),
            ("[{'type': 'x'}]", "not valid JSON"),
            ("", "not valid JSON"),
        ],
    )
    def test_shape(self, raw: Any, match: str) -> None:
        rejected(raw, match)

    @pytest.mark.parametrize(
        ("entry", "match"),
        [
            (tool("a", privileges=["admin"]), 'unknown member "privileges"'),
            (tool("a", datatypes=["x"]), 'unknown member "datatypes"'),
            (tool("a", identifier="x"), 'unknown member "identifier"'),
            (tool("a", actions=["x"]), 'unknown member "actions"'),
            (api([API], ["GET"], tools=["a"]), 'unknown member "tools"'),
            (api([API], ["GET"], arguments={}), 'unknown member "arguments"'),
            (api([API], ["GET"], privileges=["x"]), 'unknown member "privileges"'),
            ({"type": "tool_invocation"}, "tools is required"),
            ({"type": "api_access", "actions": ["GET"]}, "locations is required"),
            ({"type": "api_access", "locations": [API]}, "actions is required"),
        ],
    )
    def test_members(self, entry: dict[str, Any], match: str) -> None:
        rejected([entry], match)

    @pytest.mark.parametrize(
        ("tools", "match"),
        [
            ([], "non-empty array"),
            ("search", "non-empty array"),
            ([""], "non-empty string"),
            ([1], "non-empty string"),
            (["has space"], "tool name"),
            (["*"], "tool name"),
            (["search*"], "tool name"),
            (["x" * 129], "tool name"),
            (["naïve"], "tool name"),
            (["-leading"], "tool name"),
        ],
    )
    def test_tools(self, tools: Any, match: str) -> None:
        rejected([{"type": "tool_invocation", "tools": tools}], match)

    def test_tool_name_alphabet(self) -> None:
        name = "a" * 128
        (entry,) = parse(tool(name, "srv/read_file", "ns:tool.v2", "_x-y"))
        assert entry["tools"] == sorted([name, "srv/read_file", "ns:tool.v2", "_x-y"])

    @pytest.mark.parametrize(
        ("location", "match"),
        [
            ("/relative/path", "absolute URI"),
            ("gw.example.com/mcp", "absolute URI"),
            ("urn:example:gateway", "absolute URI"),
            ("https://gw.example.com/mcp#frag", "fragment"),
            ("https://gw.example.com/mcp?x=1", "query"),
            ("https://user:pw@gw.example.com/mcp", "user information"),
            ("https://gw.example.com@evil.example/mcp", "user information"),
            ("https://gw.example.com\\@evil.example/", "backslash"),
            ("https://gw.example.com/a b", "printable ASCII"),
            ("https://bücher.example/", "printable ASCII"),
            ("https://gw.example.com/mcp/../admin", r"'\.\.'"),
            ("https://gw.example.com/mcp/./x", r"'\.'"),
            ("https://gw.example.com/mcp/%2e%2e/admin", r"'\.\.'"),
            ("https://gw.example.com/mcp/..;/admin", r"'\.\.'"),
            ("https://gw.example.com/mcp/..%3B/admin", r"'\.\.'"),
            ("https://gw.example.com/mcp/.%3bx/admin", r"'\.'"),
            ("https://gw.example.com/mcp/..%20/admin", r"'\.\.'"),
            ("https://gw.example.com/mcp%2Fadmin", "percent-encode"),
            ("https://gw.example.com/mcp%5cadmin", "percent-encode"),
            ("https://gw.example.com/mcp%00", "percent-encode"),
            ("https://gw.example.com/mcp%zz", "malformed percent"),
            ("https://gw.example.com:99999/", "invalid port"),
            ("https://gw.example.com:0/", "invalid port"),
            ("https://gw.example.com:8o/", "invalid port"),
            ("https://gw.example.com:1:2/", "invalid port"),
            ("https://[::1/", "unterminated"),
            ("https://[zz::1]/", "invalid IPv6"),
            ("https:///path", "host"),
            ("https://gw..example/", "host"),
            ("https://gw.example.com./", "host"),
            ("https://%67w.example/", "host"),
            ("https://" + "a" * MAX_STRING, "limited to 512"),
        ],
    )
    def test_locations(self, location: str, match: str) -> None:
        rejected([tool("a", locations=[location])], match)

    def test_locations_must_not_be_empty(self) -> None:
        rejected([tool("a", locations=[])], "non-empty array")

    @pytest.mark.parametrize(
        "location", ["ftp://files.example.com/x", "wss://api.example.com/", "mcp://gw/x"]
    )
    def test_api_locations_are_http(self, location: str) -> None:
        rejected([api([location], ["GET"])], "http or https")
        assert parse(tool("a", locations=[location]))  # any hierarchical URI for tools

    @pytest.mark.parametrize(
        ("actions", "match"),
        [([], "non-empty array"), (["has space"], "action"), (["*"], "action"), ([None], "string")],
    )
    def test_actions(self, actions: Any, match: str) -> None:
        rejected([api([API], actions)], match)

    @pytest.mark.parametrize(
        ("members", "match"),
        [
            ({"datatypes": []}, "non-empty array"),
            ({"datatypes": ["ok", 3]}, "non-empty string"),
            ({"datatypes": "x"}, "non-empty array"),
            ({"identifier": None}, "non-empty string"),
            ({"identifier": ""}, "non-empty string"),
            ({"identifier": ["a"]}, "non-empty string"),
        ],
    )
    def test_api_optional_members(self, members: dict[str, Any], match: str) -> None:
        rejected([api([API], ["GET"], **members)], match)

    @pytest.mark.parametrize(
        ("arguments", "match"),
        [
            ({}, "non-empty object"),
            ([{"x": {"max": 1}}], "non-empty object"),
            ({"x": {}}, "non-empty object"),
            ({"x": 5}, "non-empty object"),
            ({"has space": {"max": 1}}, "argument name"),
            ({"x": {"pattern": "^a+$"}}, "regular expressions"),
            ({"x": {"regex": "a"}}, "regular expressions"),
            ({"x": {"minimum": 1}}, 'unknown constraint "minimum"'),
            ({"x": {"enum": []}}, "non-empty array"),
            ({"x": {"enum": "a"}}, "non-empty array"),
            ({"x": {"enum": [[1]]}}, "JSON scalar"),
            ({"x": {"enum": [{"a": 1}]}}, "JSON scalar"),
            ({"x": {"const": [1]}}, "JSON scalar"),
            ({"x": {"min": "5"}}, "must be a number"),
            ({"x": {"min": True}}, "must be a number, not a boolean"),
            ({"x": {"max": False}}, "must be a number, not a boolean"),
            ({"x": {"max": None}}, "must be a number"),
            ({"x": {"max_length": -1}}, "non-negative integer"),
            ({"x": {"max_length": 1.5}}, "non-negative integer"),
            ({"x": {"max_length": True}}, "non-negative integer"),
            ({"x": {"prefix": 7}}, "prefix must be a string"),
            ({"x": {"min": 5, "max": 1}}, "min is greater than max"),
            ({"x": {"min": 0, "prefix": "a"}}, "mixes number bounds"),
            ({"x": {"max": 9, "max_length": 3}}, "mixes number bounds"),
            ({"x": {"prefix": "abc", "max_length": 2}}, "longer than max_length"),
            ({"x": {"enum": [1, 2], "const": 3}}, "const is not one of enum"),
            ({"x": {"enum": [True], "const": 1}}, "const is not one of enum"),
            ({"x": {"const": 5, "min": 6}}, "never be satisfied"),
            ({"x": {"enum": ["a", "b"], "prefix": "c"}}, "never be satisfied"),
            ({"x": {"enum": [1, 2], "max_length": 4}}, "never be satisfied"),
        ],
    )
    def test_arguments(self, arguments: Any, match: str) -> None:
        rejected([tool("t", arguments=arguments)], match)

    def test_too_many_entries(self) -> None:
        entries = [tool(f"t{i}") for i in range(MAX_ENTRIES + 1)]
        rejected(entries, f"limited to {MAX_ENTRIES} entries")
        rejected(json.dumps(entries), f"limited to {MAX_ENTRIES} entries")
        assert len(BUILTIN.parse(entries[:MAX_ENTRIES])) == MAX_ENTRIES

    def test_too_large_text(self) -> None:
        text = json.dumps([tool("a")]) + " " * MAX_JSON_BYTES
        rejected(text, "larger than")
        rejected(text.encode(), "larger than")
        rejected('["' + "é" * (MAX_JSON_BYTES // 2) + '"]', "larger than")

    def test_too_large_decoded(self) -> None:
        tools = [f"tool_{i:03d}_" + "x" * 100 for i in range(MAX_LIST)]
        entries = [tool(*tools) for _ in range(4)]
        rejected(entries, f"larger than {MAX_JSON_BYTES} bytes")

    def test_budget_counts_compact_json(self) -> None:
        entries = [api([f"https://h{i}.example/p/" + "x" * 200 for i in range(60)], ["GET"])]
        size = len(json.dumps(entries, separators=(",", ":")).encode())
        assert size < MAX_JSON_BYTES
        assert BUILTIN.parse(entries)
        rejected([entries[0], entries[0], entries[0]], "larger than")

    @pytest.mark.parametrize(("slack", "accepted"), [(10, False), (700, True)])
    def test_accepted_details_always_parse_again(self, slack: int, accepted: bool) -> None:
        # A URI without a path gains a "/" when normalised (480 bytes here): near the
        # limit the normal form must still fit, or the request is refused up front.
        entries = [
            api([f"https://h{j:02d}.e{i:02d}.example" for j in range(30)], ["GET"], identifier="x")
            for i in range(16)
        ]
        padding = MAX_JSON_BYTES - slack - len(json.dumps(entries, separators=(",", ":")))
        for entry in entries:
            grow = min(padding, 500)
            entry["identifier"] += "x" * grow
            padding -= grow
        assert len(json.dumps(entries, separators=(",", ":"))) == MAX_JSON_BYTES - slack
        if not accepted:
            rejected(entries, "larger than")
            return
        parsed = BUILTIN.parse(entries)
        assert BUILTIN.parse(parsed) == parsed
        call = ApiCall("GET", "https://h00.e00.example/x", identifier=entries[0]["identifier"])
        assert permits(parsed, call).entry == 0

    def test_too_deep(self) -> None:
        deep: Any = "x"
        for _ in range(MAX_DEPTH + 2):
            deep = [deep]
        rejected([tool("a", arguments={"x": {"enum": deep}})], "nested deeper")
        rejected(json.dumps([tool("a", arguments={"x": {"enum": deep}})]), "nested deeper")
        rejected("[" * 5000 + "]" * 5000, "nested deeper")

    def test_brackets_inside_strings_do_not_count_as_nesting(self) -> None:
        text = json.dumps([tool('[[[[[[[[{{{{{{{\\"')])
        rejected(text, "tool name")

    def test_long_lists_and_strings(self) -> None:
        rejected([tool(*(f"t{i}" for i in range(MAX_LIST + 1)))], f"limited to {MAX_LIST}")
        rejected([api([API], ["GET"], identifier="x" * (MAX_STRING + 1))], "limited to 512")
        rejected([tool("a", arguments={"x": {"prefix": "p" * 1000}})], "limited to 512")

    @pytest.mark.parametrize(
        "text",
        [
            '[{"type":"tool_invocation","tools":["a"],"arguments":{"x":{"max":NaN}}}]',
            '[{"type":"tool_invocation","tools":["a"],"arguments":{"x":{"max":Infinity}}}]',
            '[{"type":"tool_invocation","tools":["a"],"arguments":{"x":{"min":-Infinity}}}]',
            '[{"type":"tool_invocation","tools":["a"],"arguments":{"x":{"max":1e400}}}]',
        ],
    )
    def test_non_finite_numbers_in_text(self, text: str) -> None:
        rejected(text, "not a JSON number|finite")

    @pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
    def test_non_finite_numbers_decoded(self, number: float) -> None:
        rejected([tool("a", arguments={"x": {"max": number}})], "finite")
        rejected([tool("a", arguments={"x": {"enum": [1, number]}})], "finite")

    def test_integers_beyond_ijson(self) -> None:
        rejected([tool("a", arguments={"x": {"max": 2**53}})], "2\\^53")
        rejected('[{"type":"api_access","x":' + "9" * 40 + "}]", "2\\^53")
        assert parse(tool("a", arguments={"x": {"max": 2**53 - 1}}))

    def test_duplicate_members_in_text(self) -> None:
        rejected(
            '[{"type":"tool_invocation","tools":["a"],"tools":["b"]}]', 'repeats the member "tools"'
        )
        rejected('[{"type":"api_access","type":"tool_invocation","tools":["a"]}]', "repeats")

    def test_encoding(self) -> None:
        rejected(b'[{"type":"\xff"}]', "not UTF-8")
        rejected('[{"type":"tool_invocation","tools":["\ud800"]}]', "surrogate")
        rejected('[{"type":"tool_invocation","tools":["\\ud800"]}]', "surrogate")
        rejected([tool("a\x00")], "control character")
        rejected([api([API], ["GET"], identifier="line\nbreak")], "control character")

    @pytest.mark.parametrize(
        "entry",
        [
            {"type": "tool_invocation", "tools": {"a"}},
            {"type": "tool_invocation", "tools": [b"a"]},
            {"type": "tool_invocation", "tools": ["a"], 7: "x"},
            {"type": "tool_invocation", "tools": [object()]},
        ],
    )
    def test_non_json_values(self, entry: dict[Any, Any]) -> None:
        rejected([entry], "not allowed here|member names")

    def test_messages_are_short_and_escaped(self) -> None:
        name = "<script>" + "z" * 400
        message = rejected([{"type": name}], "unknown type")
        assert len(message) <= 400
        assert name not in message
        assert "z" * 60 not in message
        assert len(str(DetailsRejected("x" * 10_000))) <= 400
        assert DetailsRejected.error == "invalid_authorization_details"
        assert issubclass(DetailsRejected, ValueError)

    def test_json_errors_name_the_position_not_the_text(self) -> None:
        message = rejected('[{"type": "secret-value" ,,}]', "at character")
        assert "secret-value" not in message


# -- narrowing (RFC 9396 section 6.1) ----------------------------------------------------------


class TestNarrowingToolInvocation:
    def test_equal_and_empty(self) -> None:
        granted = [tool("a", "b", locations=[GW], arguments={"x": {"max": 5}})]
        assert narrowing(granted, granted) is None
        assert narrowing([], granted) is None
        assert narrowing([], []) is None
        assert BUILTIN.narrowing_problem("[]", granted) is None

    def test_nothing_granted(self) -> None:
        problem = narrowing([tool("a")], [])
        assert problem is not None
        assert "nothing of this type is granted" in problem
        problem = narrowing([tool("a")], [api([API], ["GET"])])
        assert problem is not None
        assert "tool_invocation" in problem

    def test_tools(self) -> None:
        granted = [tool("a", "b")]
        assert narrowing([tool("a")], granted) is None
        problem = narrowing([tool("a", "c")], granted)
        assert problem is not None
        assert '"c" is not granted' in problem
        assert narrowing([tool("A")], granted) is not None  # case-sensitive

    def test_locations(self) -> None:
        granted = [tool("a", locations=[GW, "https://other.example.com/"])]
        for ok in [
            GW,
            GW + "/",
            GW + "/tenant/1",
            "https://GW.example.com:443/mcp/x",
            "https://other.example.com/anything",
        ]:
            assert narrowing([tool("a", locations=[ok])], granted) is None, ok
        for wide in [
            "http://gw.example.com/mcp",  # scheme change
            "https://gw.example.com:8443/mcp",  # port change
            "https://gw2.example.com/mcp",  # host change
            "https://evil.example/mcp",
            "https://gw.example.com/mcp-admin",  # string prefix, not a path prefix
            "https://gw.example.com/mcpx/y",
            "https://gw.example.com/",  # the parent
            "https://gw.example.com/MCP",
        ]:
            problem = narrowing([tool("a", locations=[wide])], granted)
            assert problem is not None, wide
            assert "not within a granted location" in problem, wide

    def test_leaving_out_granted_locations_widens(self) -> None:
        problem = narrowing([tool("a")], [tool("a", locations=[GW])])
        assert problem is not None
        assert "locations is limited by the grant" in problem

    def test_adding_a_limit_the_grant_lacks_narrows(self) -> None:
        assert narrowing([tool("a", locations=[GW])], [tool("a")]) is None
        assert narrowing([tool("a", arguments={"x": {"max": 1}})], [tool("a")]) is None

    def test_dropped_argument_constraint_widens(self) -> None:
        granted = [tool("a", arguments={"x": {"max": 5}, "y": {"enum": ["p"]}})]
        problem = narrowing([tool("a", arguments={"x": {"max": 5}})], granted)
        assert problem is not None
        assert 'argument "y" is constrained by the grant' in problem
        problem = narrowing([tool("a")], granted)
        assert problem is not None
        assert "arguments is limited by the grant" in problem

    @pytest.mark.parametrize(
        ("requested", "granted"),
        [
            ({"max": 5}, {"max": 5}),
            ({"max": 4.5}, {"max": 5}),
            ({"min": 0, "max": 5}, {"max": 5}),
            ({"min": 2}, {"min": 1}),
            ({"min": 2, "max": 3}, {"min": 1, "max": 5}),
            ({"enum": [1, 2]}, {"enum": [1, 2, 3]}),
            ({"enum": [1, 2]}, {"min": 1, "max": 2}),
            ({"enum": [1.0]}, {"enum": [1]}),
            ({"const": 2}, {"enum": [1, 2]}),
            ({"const": 2}, {"min": 0, "max": 2}),
            ({"const": "abc"}, {"prefix": "ab", "max_length": 3}),
            ({"enum": ["aa", "ab"]}, {"prefix": "a"}),
            ({"min": 5, "max": 5}, {"enum": [5]}),
            ({"prefix": "abc"}, {"prefix": "ab"}),
            ({"prefix": "ab", "max_length": 4}, {"max_length": 4}),
            ({"max_length": 3}, {"max_length": 4}),
            ({"max_length": 3}, {"prefix": ""}),
            ({"prefix": "ab", "max_length": 2}, {"enum": ["ab", "cd"]}),
            ({"max_length": 0}, {"enum": ["", "x"]}),
            ({"enum": [None]}, {"enum": [None, 1]}),
            ({"enum": [True], "const": True}, {"enum": [False, True]}),
            ({"enum": [1, 50], "max": 10}, {"max": 10}),  # 50 can never be used
        ],
    )
    def test_argument_narrower(self, requested: dict[str, Any], granted: dict[str, Any]) -> None:
        assert (
            narrowing(
                [tool("a", arguments={"x": requested})], [tool("a", arguments={"x": granted})]
            )
            is None
        )

    @pytest.mark.parametrize(
        ("requested", "granted", "reason"),
        [
            ({"max": 6}, {"max": 5}, "max must be at most"),
            ({"min": 0}, {"max": 5}, "max must be at most"),
            ({"min": 0}, {"min": 1}, "min must be at least"),
            ({"max": 3}, {"min": 1, "max": 5}, "min must be at least"),
            ({"enum": [1, 2, 3, 4]}, {"enum": [1, 2, 3]}, "value 4"),
            ({"enum": [0, 1]}, {"min": 1}, "value 0"),
            ({"const": 6}, {"max": 5}, "value 6"),
            ({"min": 1, "max": 2}, {"enum": [1, 2]}, "wider than the granted enum"),
            ({"max": 5}, {"const": 5}, "wider than the granted enum"),
            ({"prefix": "a"}, {"prefix": "ab"}, "prefix must start with"),
            ({"prefix": "b"}, {"prefix": "a"}, "prefix must start with"),
            ({"max_length": 3}, {"prefix": "a"}, "prefix must start with"),
            ({"max_length": 5}, {"max_length": 4}, "max_length must be at most"),
            ({"prefix": "ab"}, {"max_length": 4}, "max_length must be at most"),
            ({"enum": ["abcde"]}, {"max_length": 4}, 'value "abcde"'),
            ({"enum": ["b"]}, {"prefix": "a"}, 'value "b"'),
            ({"min": 0}, {"prefix": "a"}, "only strings"),
            ({"prefix": "a"}, {"max": 9}, "only numbers"),
            ({"const": True}, {"enum": [1]}, "value true"),  # bool is not a number
            ({"enum": [True]}, {"min": 0, "max": 1}, "value true"),
            ({"const": 1}, {"enum": [True]}, "value 1"),
            ({"const": None}, {"max": 1}, "value null"),
            ({"const": "5"}, {"max": 9}, 'value "5"'),
            ({"enum": [1, "1"]}, {"enum": [1]}, 'value "1"'),
        ],
    )
    def test_argument_wider(
        self, requested: dict[str, Any], granted: dict[str, Any], reason: str
    ) -> None:
        problem = narrowing(
            [tool("a", arguments={"x": requested})], [tool("a", arguments={"x": granted})]
        )
        assert problem is not None
        assert 'argument "x"' in problem
        assert reason in problem

    def test_covered_by_some_granted_entry(self) -> None:
        granted = [tool("a", arguments={"x": {"max": 1}}), tool("a", "b")]
        assert narrowing([tool("a", "b")], granted) is None
        assert narrowing([tool("a")], granted) is None

    def test_one_entry_is_not_split_across_granted_entries(self) -> None:
        granted = [tool("a"), tool("b")]
        problem = narrowing([tool("a", "b")], granted)
        assert problem is not None
        assert "and 1 other(s)" in problem
        assert narrowing([tool("a"), tool("b")], granted) is None

    def test_names_the_offending_entry(self) -> None:
        problem = narrowing([tool("a"), tool("a", "z")], [tool("a")])
        assert problem is not None
        assert problem.startswith("authorization_details[1]")

    def test_malformed_sides(self) -> None:
        with pytest.raises(DetailsRejected, match="unknown member"):
            narrowing([tool("a", extra=1)], [tool("a")])
        with pytest.raises(DetailsRejected, match="the granted details are malformed"):
            narrowing([tool("a")], [tool("a", extra=1)])


class TestNarrowingApiAccess:
    granted = [
        api([API], ["GET", "POST", "read"], datatypes=["invoice", "receipt"], identifier="acct-1")
    ]

    def test_narrower(self) -> None:
        for requested in [
            api([API], ["GET"], datatypes=["invoice"], identifier="acct-1"),
            api(
                [API + "/invoices"],
                ["get", "read"],
                datatypes=["receipt", "invoice"],
                identifier="acct-1",
            ),
            api(
                ["HTTPS://API.example.com:443/v1/x"],
                ["post"],
                datatypes=["invoice"],
                identifier="acct-1",
            ),
        ]:
            assert narrowing([requested], self.granted) is None

    @pytest.mark.parametrize(
        ("requested", "reason"),
        [
            (
                api([API], ["DELETE"], datatypes=["invoice"], identifier="acct-1"),
                '"DELETE" is not granted',
            ),
            (
                api([API], ["Read"], datatypes=["invoice"], identifier="acct-1"),
                '"Read" is not granted',
            ),
            (api([API], ["GET"], identifier="acct-1"), "datatypes is limited"),
            (api([API], ["GET"], datatypes=["invoice", "payslip"], identifier="acct-1"), "payslip"),
            (api([API], ["GET"], datatypes=["invoice"]), "identifier is limited"),
            (api([API], ["GET"], datatypes=["invoice"], identifier="acct-2"), "differs"),
            (
                api([API + "-admin"], ["GET"], datatypes=["invoice"], identifier="acct-1"),
                "location",
            ),
            (
                api(
                    ["http://api.example.com/v1"],
                    ["GET"],
                    datatypes=["invoice"],
                    identifier="acct-1",
                ),
                "location",
            ),
            (
                api(
                    ["https://api.example.com/"],
                    ["GET"],
                    datatypes=["invoice"],
                    identifier="acct-1",
                ),
                "location",
            ),
        ],
    )
    def test_wider(self, requested: dict[str, Any], reason: str) -> None:
        problem = narrowing([requested], self.granted)
        assert problem is not None
        assert reason in problem

    def test_free_fields_may_be_added(self) -> None:
        assert (
            narrowing([api([API], ["GET"], datatypes=["x"], identifier="i")], [api([API], ["GET"])])
            is None
        )


# -- permits -----------------------------------------------------------------------------------


class TestPermitsTools:
    details = [
        tool("search", locations=[GW]),
        tool(
            "write_file",
            arguments={
                "path": {"prefix": "/tmp/", "max_length": 64},
                "mode": {"enum": ["a", "w"]},
                "size": {"min": 0, "max": 1024},
                "flag": {"const": True},
            },
        ),
    ]
    good = {"path": "/tmp/x", "mode": "w", "size": 10, "flag": True}

    def check(self, call: ToolCall) -> DetailsVerdict:
        return permits(self.details, call)

    def test_allowed_names_the_entry(self) -> None:
        verdict = self.check(ToolCall("search", {}, GW + "/sub"))
        assert verdict == DetailsVerdict(True, verdict.reason, 0)
        assert "authorization_details[0]" in verdict.reason
        verdict = self.check(ToolCall("write_file", self.good))
        assert verdict.allowed
        assert verdict.entry == 1

    def test_tool_not_listed(self) -> None:
        verdict = self.check(ToolCall("delete_file", {}, GW))
        assert not verdict.allowed
        assert verdict.entry is None
        assert "tool" in verdict.reason
        assert "not listed" in verdict.reason
        assert not self.check(ToolCall("Search", {}, GW)).allowed

    def test_location(self) -> None:
        assert self.check(ToolCall("search", {}, GW)).allowed
        assert self.check(ToolCall("search", {}, GW + "/x?session=1")).allowed
        assert self.check(ToolCall("search", {}, "HTTPS://gw.EXAMPLE.com:443/mcp")).allowed
        for outside in [
            "https://gw.example.com/mcp-admin",
            "http://gw.example.com/mcp",
            "https://gw.example.com:444/mcp",
            "https://gw.example.com/",
            "https://evil.example/mcp",
            "https://gw.example.com/mcp/../admin",
            "https://gw.example.com/mcp/%2e%2e/admin",
            "https://gw.example.com/mcp/..%2fadmin",
            "https://gw.example.com@evil.example/mcp",
            "https://gw.example.com/mcp#x",
            "not a uri",
        ]:
            assert not self.check(ToolCall("search", {}, outside)).allowed, outside

    def test_unknown_location_is_denied_when_the_entry_limits_it(self) -> None:
        verdict = self.check(ToolCall("search", {}))
        assert not verdict.allowed
        assert "gives no locations" in verdict.reason

    def test_no_location_limit_admits_any_location(self) -> None:
        assert self.check(ToolCall("write_file", self.good, "https://anywhere.example/")).allowed

    def test_missing_constrained_argument_is_denied(self) -> None:
        for name in self.good:
            args = {k: v for k, v in self.good.items() if k != name}
            verdict = self.check(ToolCall("write_file", args))
            assert not verdict.allowed
            assert f'argument "{name}" is constrained but missing' in verdict.reason

    def test_unconstrained_arguments_are_free(self) -> None:
        assert self.check(ToolCall("write_file", {**self.good, "extra": [1, {"a": 2}]})).allowed

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("path", "/etc/passwd"),
            ("path", "/tmp"),
            ("path", "/tmp/" + "x" * 60),
            ("path", ["/tmp/x"]),
            ("path", None),
            ("mode", "r"),
            ("mode", "W"),
            ("size", -1),
            ("size", 1025),
            ("size", 1024.5),
            ("size", True),  # a boolean is not a number
            ("size", "10"),
            ("size", math.nan),
            ("size", math.inf),
            ("size", -math.inf),
            ("size", None),
            ("flag", 1),
            ("flag", "true"),
            ("flag", False),
        ],
    )
    def test_argument_outside_constraint(self, name: str, value: Any) -> None:
        verdict = self.check(ToolCall("write_file", {**self.good, name: value}))
        assert not verdict.allowed
        assert f'argument "{name}" is outside' in verdict.reason

    def test_numbers_compare_by_value(self) -> None:
        assert self.check(ToolCall("write_file", {**self.good, "size": 1024.0})).allowed
        assert permits(
            [tool("t", arguments={"n": {"enum": [1]}})], ToolCall("t", {"n": 1.0})
        ).allowed
        assert not permits(
            [tool("t", arguments={"n": {"enum": [1]}})], ToolCall("t", {"n": True})
        ).allowed
        assert not permits(
            [tool("t", arguments={"n": {"enum": [True]}})], ToolCall("t", {"n": 1})
        ).allowed
        assert permits(
            [tool("t", arguments={"n": {"enum": [None]}})], ToolCall("t", {"n": None})
        ).allowed

    def test_reasons_do_not_repeat_argument_values(self) -> None:
        secret = "sk-live-abcdef0123456789"
        verdict = self.check(ToolCall("write_file", {**self.good, "path": secret}))
        assert not verdict.allowed
        assert secret not in verdict.reason

    def test_arguments_must_be_an_object(self) -> None:
        verdict = self.check(ToolCall("write_file", ["x"]))  # type: ignore[arg-type]
        assert not verdict.allowed

    def test_first_permitting_entry_wins(self) -> None:
        details = [tool("a", arguments={"x": {"max": 1}}), tool("a")]
        verdict = permits(details, ToolCall("a", {"x": 5}))
        assert verdict.allowed
        assert verdict.entry == 1
        assert permits(details, ToolCall("a", {"x": 0})).entry == 0

    def test_denial_lists_why_each_entry_refused(self) -> None:
        details = [tool("a", arguments={"x": {"max": 1}}), tool("b")]
        verdict = permits(details, ToolCall("a", {"x": 5}))
        assert "[0] argument" in verdict.reason
        assert "[1] tool" in verdict.reason


class TestPermitsApi:
    details = [
        api([API], ["GET", "read"]),
        api(["https://api.example.com/v2/docs"], ["PUT"], datatypes=["doc"], identifier="d-1"),
    ]

    def check(self, call: ApiCall) -> DetailsVerdict:
        return permits(self.details, call)

    def test_allowed(self) -> None:
        assert self.check(ApiCall("GET", API)).entry == 0
        assert self.check(ApiCall("get", API + "/users/7?fields=a#")).allowed is False  # fragment
        assert self.check(ApiCall("get", API + "/users/7?fields=a")).entry == 0
        assert self.check(ApiCall("Get", "https://API.example.com:443/v1/x")).allowed
        assert self.check(ApiCall("read", API + "/x")).allowed
        call = ApiCall(
            "put", "https://api.example.com/v2/docs/d-1", datatype="doc", identifier="d-1"
        )
        assert self.check(call).entry == 1

    def test_action_names_are_case_sensitive(self) -> None:
        assert not self.check(ApiCall("READ", API)).allowed
        assert not self.check(ApiCall("POST", API)).allowed

    @pytest.mark.parametrize(
        "url",
        [
            "https://api.example.com/v1-admin",
            "https://api.example.com/v10",
            "https://api.example.com/",
            "https://api.example.com",
            "http://api.example.com/v1",
            "https://api.example.com:8443/v1",
            "https://api.example.com.evil.example/v1",
            "https://api.example.com/v1/../admin",
            "https://api.example.com/v1/%2E%2E/admin",
            "https://api.example.com/v1/..;/admin",
            "https://api.example.com/v1%2fadmin",
            "https://api.example.com/v1\\..\\admin",
            "https://user@api.example.com/v1",
            "ftp://api.example.com/v1",
            "//api.example.com/v1",
        ],
    )
    def test_url_outside(self, url: str) -> None:
        assert not self.check(ApiCall("GET", url)).allowed

    def test_datatype_and_identifier(self) -> None:
        url = "https://api.example.com/v2/docs/d-1"
        assert not self.check(ApiCall("PUT", url, identifier="d-1")).allowed
        assert not self.check(ApiCall("PUT", url, datatype="doc")).allowed
        assert not self.check(ApiCall("PUT", url, datatype="img", identifier="d-1")).allowed
        assert not self.check(ApiCall("PUT", url, datatype="doc", identifier="d-2")).allowed
        assert self.check(ApiCall("GET", API, datatype="anything", identifier="x")).allowed


class TestPermitsEdges:
    def test_no_entry_of_the_type(self) -> None:
        verdict = permits([api([API], ["GET"])], ToolCall("a", {}))
        assert not verdict.allowed
        assert "no authorization_details entry of type" in verdict.reason
        assert not permits([], ToolCall("a", {})).allowed
        assert not permits(None, ToolCall("a", {})).allowed

    def test_malformed_details_deny_without_raising(self) -> None:
        for details in [
            [tool("a", extra=1)],
            [tool("a"), {"type": "tool_invocation"}],
            "not json",
            {"type": "tool_invocation", "tools": ["a"]},
            [tool("a", arguments={"x": {"max": math.nan}})],
        ]:
            verdict = permits(details, ToolCall("a", {}))
            assert not verdict.allowed
            assert "malformed" in verdict.reason

    def test_entries_of_unknown_types_are_skipped(self) -> None:
        details = [payment(max_amount=10), tool("a")]
        verdict = permits(details, ToolCall("a", {}))
        assert verdict.allowed
        assert verdict.entry == 1
        assert not permits([payment()], ToolCall("a", {})).allowed

    def test_json_text_details(self) -> None:
        assert permits(json.dumps([tool("a")]), ToolCall("a", {})).allowed

    def test_not_a_call(self) -> None:
        verdict = BUILTIN.permits([tool("a")], "a")  # type: ignore[arg-type]
        assert not verdict.allowed

    def test_custom_call_on_builtin_type(self) -> None:
        details = [tool("a", arguments={"x": {"max": 3}})]
        assert permits(
            details, CustomCall("tool_invocation", {"tools": "a", "arguments": {"x": 1}})
        ).allowed
        assert not permits(
            details, CustomCall("tool_invocation", {"tools": "a", "arguments": {}})
        ).allowed
        verdict = permits(details, CustomCall("tool_invocation", {"tools": "a", "bogus": 1}))
        assert not verdict.allowed
        assert "does not define" in verdict.reason

    def test_unknown_call_type(self) -> None:
        verdict = permits([tool("a")], CustomCall("payment_initiation", {}))
        assert not verdict.allowed
        assert "not supported" in verdict.reason


# -- operator-defined types -------------------------------------------------------------------


class TestRegistry:
    def test_builtin(self) -> None:
        assert BUILTIN.names == ("tool_invocation", "api_access")
        assert DetailTypeRegistry.builtin().names == BUILTIN.names
        described = {d["type"]: d for d in BUILTIN.describe()}
        assert described["tool_invocation"]["builtin"] is True
        assert described["tool_invocation"]["fields"]["tools"]["required"] is True
        assert described["api_access"]["fields"]["locations"]["kind"] == "http_uri_set"
        json.dumps(BUILTIN.describe())

    def test_with_types_returns_a_new_registry(self) -> None:
        assert PAYMENTS.names == ("tool_invocation", "api_access", "payment_initiation")
        assert "payment_initiation" not in BUILTIN.names
        described = PAYMENTS.describe()[-1]
        assert described["builtin"] is False
        assert described["description"] == "Initiate a payment"
        assert described["fields"]["max_amount"] == {
            "kind": "max_number",
            "required": False,
            "description": described["fields"]["max_amount"]["description"],
        }
        described["fields"].clear()
        assert PAYMENTS.describe()[-1]["fields"]  # describe hands out copies

    def test_chained_registration(self) -> None:
        more = PAYMENTS.with_types([{"type": "urn:example:ticket", "fields": {}}])
        assert more.names[-1] == "urn:example:ticket"
        assert more.parse([{"type": "urn:example:ticket"}]) == ({"type": "urn:example:ticket"},)
        with pytest.raises(DetailsRejected, match="redefines or shadows the type"):
            more.with_types([{"type": "Payment-Initiation", "fields": {}}])

    @pytest.mark.parametrize(
        ("definitions", "match"),
        [
            ({"type": "x", "fields": {}}, "must be a list"),
            ("x", "must be a list"),
            ([{"type": "tool_invocation", "fields": {}}], "shadows the built-in type"),
            ([{"type": "API_ACCESS", "fields": {}}], "shadows the built-in type"),
            ([{"type": "tool-invocation", "fields": {}}], "shadows the built-in type"),
            ([{"type": "ToolInvocation", "fields": {}}], "shadows the built-in type"),
            ([{"type": "x", "fields": {}}, {"type": "X", "fields": {}}], "redefines or shadows"),
            ([{"type": "x", "fields": {}}, {"type": "x", "fields": {}}], "redefines or shadows"),
            ([7], "must be an object"),
            ([{"type": "", "fields": {}}], "type must be"),
            ([{"type": "has space", "fields": {}}], "type must be"),
            ([{"type": "x" * 129, "fields": {}}], "type must be"),
            ([{"type": "1abc", "fields": {}}], "type must be"),
            ([{"type": "x"}], "fields must be an object"),
            ([{"type": "x", "fields": []}], "fields must be an object"),
            ([{"type": "x", "fields": {}, "schema": {}}], 'unknown member "schema"'),
            ([{"type": "x", "description": 7, "fields": {}}], "description"),
            ([{"type": "x", "description": "a\x00", "fields": {}}], "control character"),
            ([{"type": "x", "fields": {"a": {"kind": "regex"}}}], "kind must be one of"),
            (
                [{"type": "x", "fields": {"a": {"kind": "argument_constraints"}}}],
                "kind must be one of",
            ),
            ([{"type": "x", "fields": {"a": {"kind": "tool_set"}}}], "kind must be one of"),
            ([{"type": "x", "fields": {"a": {}}}], "kind must be one of"),
            ([{"type": "x", "fields": {"a": "set"}}], "must be an object"),
            ([{"type": "x", "fields": {"a": {"kind": "set", "required": 1}}}], "true or false"),
            ([{"type": "x", "fields": {"a": {"kind": "set", "min": 1}}}], 'unknown member "min"'),
            ([{"type": "x", "fields": {"Amount": {"kind": "exact"}}}], "field names"),
            ([{"type": "x", "fields": {"type": {"kind": "exact"}}}], "'type' is not a field"),
            ([{"type": "x", "fields": {"locations": {"kind": "set"}}}], "must be of kind uri_set"),
            ([{"type": "x", "fields": {"actions": {"kind": "exact"}}}], "must be of kind set"),
            ([{"type": "x", "fields": {"identifier": {"kind": "set"}}}], "must be of kind exact"),
            ([{"type": "x", "fields": {"tools": {"kind": "uri_set"}}}], "must be of kind set"),
            (
                [
                    {
                        "type": "x",
                        "fields": {f"f{i}": {"kind": "set"} for i in range(MAX_FIELDS + 1)},
                    }
                ],
                f"at most {MAX_FIELDS} fields",
            ),
            (
                [{"type": f"t{i}", "fields": {}} for i in range(MAX_CUSTOM_TYPES + 1)],
                f"at most {MAX_CUSTOM_TYPES}",
            ),
        ],
    )
    def test_bad_definitions(self, definitions: Any, match: str) -> None:
        with pytest.raises(DetailsRejected, match=match):
            BUILTIN.with_types(definitions)

    def test_the_type_limit_counts_earlier_registrations(self) -> None:
        full = BUILTIN.with_types(
            [{"type": f"t{i}", "fields": {}} for i in range(MAX_CUSTOM_TYPES)]
        )
        with pytest.raises(DetailsRejected, match="at most"):
            full.with_types([{"type": "one_more", "fields": {}}])


class TestCustomTypes:
    def test_parse(self) -> None:
        (entry,) = PAYMENTS.parse(
            [payment(actions=["b", "a", "a"], currency="EUR", max_amount=100.0, min_amount=1)]
        )
        assert entry == {
            "type": "payment_initiation",
            "locations": ["https://bank.example/pay"],
            "actions": ["a", "b"],
            "currency": "EUR",
            "max_amount": 100,
            "min_amount": 1,
        }

    @pytest.mark.parametrize(
        ("entry", "match"),
        [
            ({"type": "payment_initiation"}, "locations is required"),
            (payment(iban="x"), 'unknown member "iban"'),
            (payment(max_amount="100"), "must be a number"),
            (payment(max_amount=True), "not a boolean"),
            (payment(currency=["EUR"]), "non-empty string"),
            (payment(actions=[]), "non-empty array"),
            (payment(locations=["https://bank.example/pay?x=1"]), "query"),
        ],
    )
    def test_parse_refuses(self, entry: dict[str, Any], match: str) -> None:
        rejected([entry], match, PAYMENTS)

    @pytest.mark.parametrize(
        ("requested", "granted", "reason"),
        [
            (payment(actions=["a"]), payment(actions=["a", "b"]), None),
            (payment(actions=["a", "c"]), payment(actions=["a", "b"]), '"c" is not granted'),
            (payment(), payment(actions=["a"]), "actions is limited"),
            (payment(locations=["https://bank.example/pay/eu"]), payment(), None),
            (payment(locations=["https://bank.example/payments"]), payment(), "not within"),
            (payment(currency="EUR"), payment(currency="EUR"), None),
            (payment(currency="USD"), payment(currency="EUR"), "differs"),
            (payment(), payment(currency="EUR"), "currency is limited"),
            (payment(max_amount=50), payment(max_amount=100), None),
            (payment(max_amount=100.5), payment(max_amount=100), "above the granted"),
            (payment(), payment(max_amount=100), "max_amount is limited"),
            (payment(min_amount=5), payment(min_amount=1), None),
            (payment(min_amount=0), payment(min_amount=1), "below the granted"),
            (payment(currency="EUR", max_amount=1), payment(), None),
        ],
    )
    def test_narrowing(
        self, requested: dict[str, Any], granted: dict[str, Any], reason: str | None
    ) -> None:
        problem = PAYMENTS.narrowing_problem([requested], [granted])
        if reason is None:
            assert problem is None
        else:
            assert problem is not None
            assert reason in problem

    def test_permits_field_by_field(self) -> None:
        details = [
            payment(actions=["initiate", "status"], currency="EUR", max_amount=100, min_amount=1)
        ]
        url = "https://bank.example/pay/123?x=1"

        def call(**values: Any) -> DetailsVerdict:
            base = {
                "locations": url,
                "actions": "initiate",
                "currency": "EUR",
                "max_amount": 50,
                "min_amount": 50,
            }
            return PAYMENTS.permits(details, CustomCall("payment_initiation", {**base, **values}))

        assert call().allowed
        assert call().entry == 0
        assert call(actions=["initiate", "status"]).allowed
        assert not call(actions=["initiate", "refund"]).allowed
        assert not call(actions=[]).allowed
        assert not call(actions=5).allowed
        assert not call(locations="https://bank.example/payments").allowed
        assert not call(locations="http://bank.example/pay").allowed
        assert not call(currency="USD").allowed
        assert not call(currency=["EUR"]).allowed
        assert call(max_amount=100).allowed
        assert not call(max_amount=100.01).allowed
        assert not call(max_amount=True).allowed
        assert not call(max_amount="50").allowed
        assert not call(max_amount=math.nan).allowed
        assert not call(min_amount=0.5).allowed
        assert not call(min_amount=-math.inf).allowed
        verdict = call(currency=None)  # None means "not given"
        assert not verdict.allowed
        assert "gives no currency" in verdict.reason
        verdict = call(iban="DE00")
        assert not verdict.allowed
        assert "does not define" in verdict.reason

    def test_module_permits_takes_a_registry(self) -> None:
        details = [payment()]
        call = CustomCall("payment_initiation", {"locations": "https://bank.example/pay"})
        assert permits(details, call, PAYMENTS).allowed
        assert not permits(details, call).allowed  # the built-in registry does not know it


# -- policy context -------------------------------------------------------------------------------


class TestPolicyContext:
    def test_shape(self) -> None:
        details = PAYMENTS.parse(
            [
                tool("a", "b", locations=[GW], arguments={"x": {"max": 1}}),
                api([API], ["get"], datatypes=["doc"], identifier="d-1"),
                payment(actions=["initiate"], currency="EUR", max_amount=5),
            ]
        )
        assert policy_context(details) == [
            {"type": "tool_invocation", "tools": ["a", "b"], "locations": [GW]},
            {
                "type": "api_access",
                "actions": ["GET"],
                "locations": [API],
                "datatypes": ["doc"],
                "identifier": "d-1",
            },
            {
                "type": "payment_initiation",
                "actions": ["initiate"],
                "locations": ["https://bank.example/pay"],
            },
        ]
        assert policy_context([]) == []

    @pytest.mark.parametrize(
        "details",
        [
            "[]",
            None,
            [7],
            [{"tools": ["a"]}],
            [{"type": "tool_invocation", "tools": "a"}],
            [{"type": "tool_invocation", "tools": [1]}],
            [{"type": "api_access", "identifier": ["x"]}],
        ],
    )
    def test_refuses_other_shapes(self, details: Any) -> None:
        with pytest.raises(DetailsRejected):
            policy_context(details)

    def test_matches_the_policy_schema_record(self) -> None:
        context = BASE_SCHEMA["commonTypes"][CONTEXT_TYPE]["attributes"]
        record = context["authorization_details"]["element"]["attributes"]
        required = {name for name, spec in record.items() if spec.get("required", True)}
        details = BUILTIN.parse(
            [tool("a", locations=[GW]), api([API], ["GET"], datatypes=["d"], identifier="i")]
        )
        for entry in policy_context(details):
            assert required <= set(entry) <= set(record)
            for name, value in entry.items():
                expected = record[name]["type"]
                assert isinstance(value, list if expected == "Set" else str)


# -- properties ---------------------------------------------------------------------------------

TOOLS = ("read", "write", "delete")
LOCATIONS = (
    "https://gw.example/mcp",
    "https://gw.example/mcp/a",
    "https://gw.example/mcp/a/b",
    "https://gw.example/mcp-admin",
    "http://gw.example/mcp",
    "https://gw.example:8443/mcp",
    "https://other.example/mcp/a",
)
ARGS = ("x", "y")
SCALARS = (None, True, False, 0, 1, 2, 2.5, 3, 10, "", "a", "ab", "abc", "b")
NUMBERS = (-1, 0, 1, 2.5, 3, 5, 10)
VALUES = (*SCALARS, -1, 0.5, 1.0, 1.5, 4, 5, 7, 11, "abcd", "aab", "ba", "bb", "x", [], {}, [1])


def valid_constraint(spec: dict[str, Any]) -> bool:
    try:
        BUILTIN.parse([tool("t", arguments={"x": spec})])
    except DetailsRejected:
        return False
    return True


@st.composite
def constraints(draw: st.DrawFn) -> dict[str, Any]:
    shape = draw(st.sampled_from(["numeric", "string", "enum", "const"]))
    keys: dict[str, st.SearchStrategy[Any]]
    if shape == "numeric":
        keys = {"min": st.sampled_from(NUMBERS), "max": st.sampled_from(NUMBERS)}
    elif shape == "string":
        keys = {
            "max_length": st.sampled_from([0, 1, 2, 3, 5]),
            "prefix": st.sampled_from(["", "a", "ab", "b"]),
        }
    elif shape == "enum":
        keys = {"enum": st.lists(st.sampled_from(SCALARS), min_size=1, max_size=4)}
    else:
        keys = {"const": st.sampled_from(SCALARS)}
    chosen = draw(st.lists(st.sampled_from(sorted(keys)), min_size=1, max_size=2, unique=True))
    spec = {key: draw(keys[key]) for key in chosen}
    if shape == "enum":
        spec.update(
            draw(
                st.sampled_from(
                    [
                        {},
                        {"min": 1},
                        {"max": 2.5},
                        {"prefix": "a"},
                        {"max_length": 2},
                        {"const": "a"},
                    ]
                )
            )
        )
    assume(valid_constraint(spec))
    return spec


@st.composite
def tool_entries(draw: st.DrawFn) -> dict[str, Any]:
    entry = tool(*draw(st.lists(st.sampled_from(TOOLS), min_size=1, max_size=3)))
    if draw(st.booleans()):
        entry["locations"] = draw(st.lists(st.sampled_from(LOCATIONS), min_size=1, max_size=2))
    arguments = draw(st.dictionaries(st.sampled_from(ARGS), constraints(), max_size=2))
    if arguments:
        entry["arguments"] = arguments
    return entry


details_strategy = st.lists(tool_entries(), min_size=1, max_size=3).map(lambda d: BUILTIN.parse(d))


def _tighten(spec: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with ``extra`` added as a conjunction: never wider than ``spec``."""
    out = dict(spec)
    for key, value in extra.items():
        if key not in out:
            out[key] = value
        elif key == "min":
            out[key] = max(out[key], value)
        elif key in {"max", "max_length"}:
            out[key] = min(out[key], value)
        elif key == "prefix":
            out[key] = value if value.startswith(out[key]) else out[key]
        elif key == "enum":
            kept = [v for v in out[key] if any(v == w and type(v) is type(w) for w in value)]
            out[key] = kept or out[key]
    return out


@st.composite
def narrower(draw: st.DrawFn, granted: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    """Details that are narrower than ``granted`` by construction."""
    out: list[dict[str, Any]] = []
    if not granted:
        return out
    for entry in draw(st.lists(st.sampled_from(granted), max_size=3)):
        tools = draw(st.lists(st.sampled_from(entry["tools"]), min_size=1, max_size=3))
        new = tool(*tools)
        if "locations" in entry:
            bases = draw(st.lists(st.sampled_from(entry["locations"]), min_size=1, max_size=2))
            new["locations"] = [b + draw(st.sampled_from(["", "/", "/s", "/s/t"])) for b in bases]
        elif draw(st.booleans()):
            new["locations"] = [draw(st.sampled_from(LOCATIONS))]
        arguments = {}
        for name, spec in entry.get("arguments", {}).items():
            extra = draw(
                st.sampled_from(
                    [
                        {},
                        {"min": 1},
                        {"max": 3},
                        {"max_length": 2},
                        {"prefix": "ab"},
                        {"enum": list(SCALARS[:6])},
                    ]
                )
            )
            tightened = _tighten(spec, extra)
            arguments[name] = tightened if valid_constraint(tightened) else spec
        for name in ARGS:
            if name not in arguments and draw(st.booleans()):
                arguments[name] = draw(constraints())
        if arguments:
            new["arguments"] = arguments
        out.append(new)
    return out


calls = st.builds(
    ToolCall,
    tool=st.sampled_from((*TOOLS, "other")),
    arguments=st.dictionaries(st.sampled_from((*ARGS, "z")), st.sampled_from(VALUES), max_size=3),
    location=st.one_of(
        st.none(), st.sampled_from(LOCATIONS), st.sampled_from([u + "/s" for u in LOCATIONS])
    ),
)

PROPERTY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)


class TestProperties:
    @PROPERTY
    @given(details_strategy)
    def test_narrowing_is_reflexive(self, details: tuple[dict[str, Any], ...]) -> None:
        assert BUILTIN.narrowing_problem(details, details) is None

    @PROPERTY
    @given(details_strategy)
    def test_parse_is_idempotent_and_order_blind(self, details: tuple[dict[str, Any], ...]) -> None:
        assert BUILTIN.parse(details) == details
        assert BUILTIN.parse(json.dumps(details)) == details
        shuffled = [
            {
                **e,
                "tools": list(reversed(e["tools"])) * 2,
                **({"locations": list(reversed(e["locations"]))} if "locations" in e else {}),
            }
            for e in details
        ]
        assert BUILTIN.parse(shuffled) == details

    @PROPERTY
    @given(st.data())
    def test_constructed_narrowing_is_accepted(self, data: st.DataObject) -> None:
        granted = data.draw(details_strategy)
        requested = data.draw(narrower(granted))
        assert BUILTIN.narrowing_problem(requested, granted) is None

    @PROPERTY
    @given(st.data())
    def test_narrowing_is_transitive(self, data: st.DataObject) -> None:
        c = data.draw(details_strategy)
        b = data.draw(st.one_of(narrower(c), details_strategy.map(list)))
        a = data.draw(st.one_of(narrower(BUILTIN.parse(b)), details_strategy.map(list)))
        assume(BUILTIN.narrowing_problem(b, c) is None)
        assume(BUILTIN.narrowing_problem(a, b) is None)
        assert BUILTIN.narrowing_problem(a, c) is None

    @PROPERTY
    @given(st.data())
    def test_narrower_details_permit_no_more(self, data: st.DataObject) -> None:
        granted = data.draw(details_strategy)
        requested = data.draw(st.one_of(narrower(granted), details_strategy.map(list)))
        assume(BUILTIN.narrowing_problem(requested, granted) is None)
        for call in data.draw(st.lists(calls, min_size=1, max_size=8)):
            if permits(requested, call).allowed:
                assert permits(granted, call).allowed, call

    @settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
    @given(constraints(), constraints(), st.lists(st.sampled_from(VALUES), min_size=1, max_size=12))
    def test_constraint_implication_is_sound(
        self, requested: dict[str, Any], granted: dict[str, Any], values: list[Any]
    ) -> None:
        problem = narrowing(
            [tool("t", arguments={"x": requested})], [tool("t", arguments={"x": granted})]
        )
        probes = [*values, *(v for spec in (requested, granted) for v in _boundaries(spec))]
        for value in probes:
            call = ToolCall("t", {"x": value})
            inside_requested = permits([tool("t", arguments={"x": requested})], call).allowed
            inside_granted = permits([tool("t", arguments={"x": granted})], call).allowed
            if problem is None and inside_requested:
                assert inside_granted, (requested, granted, value)

    @PROPERTY
    @given(
        st.lists(st.sampled_from(["a", "b", "ab", "a-b", "%41"]), max_size=3),
        st.lists(st.sampled_from(["a", "b", "ab", "a-b", "A", "%41"]), max_size=4),
    )
    def test_locations_cover_by_whole_segments(
        self, granted: list[str], requested: list[str]
    ) -> None:
        g = "https://h.example/" + "/".join(granted)
        r = "https://h.example/" + "/".join(requested)
        problem = narrowing([tool("t", locations=[r])], [tool("t", locations=[g])])
        decoded_g = [s.replace("%41", "A") for s in granted]
        decoded_r = [s.replace("%41", "A") for s in requested]
        assert (problem is None) == (decoded_r[: len(decoded_g)] == decoded_g)
        assert permits([tool("t", locations=[g])], ToolCall("t", {}, r)).allowed == (
            problem is None
        )


def _boundaries(spec: Mapping[str, Any]) -> list[Any]:
    out: list[Any] = []
    for key in ("min", "max"):
        if key in spec:
            out += [spec[key], spec[key] - 0.5, spec[key] + 0.5]
    if "prefix" in spec:
        out += [spec["prefix"], spec["prefix"] + "x", spec["prefix"][:-1]]
    if "max_length" in spec:
        out += ["x" * spec["max_length"], "x" * (spec["max_length"] + 1)]
    out += list(spec.get("enum", []))
    if "const" in spec:
        out.append(spec["const"])
    return out
