"""Tool-argument redaction: configured mask/drop rules, the built-in secret guard that
configuration cannot switch off, bounds, and clear errors for bad rule files."""

from __future__ import annotations

from typing import Any

import pytest

from agentiam.core.audit.redaction import MASK, Redactor, load_redaction

CALL = {"action": "call_tool", "resource_type": "Tool", "resource_id": "payments.transfer"}
ARGS: dict[str, Any] = {
    "amount": 120,
    "card": {"number": "4111111111111111", "cvc": "123", "holder": "Ada"},
    "patients": [{"name": "Bob", "ssn": "078-05-1120"}, {"name": "Eve", "SSN": "1"}],
    "note": "x" * 1000,
    "password": "hunter2",
}


def test_by_default_no_value_is_recorded() -> None:
    assert Redactor().arguments(ARGS, CALL) == {}
    assert load_redaction({}).arguments(ARGS, CALL) == {}


def test_without_rules_values_are_kept_but_secret_names_and_size_are_guarded() -> None:
    out = load_redaction({"record_arguments": "values"}).arguments(ARGS, CALL)
    assert out["amount"] == 120
    assert out["card"]["number"] == "4111111111111111"
    assert out["password"] == "[redacted]"
    assert len(out["note"]) < 300
    assert out["note"].endswith("…[cut]")


def test_mask_and_drop_rules_by_path_with_wildcards() -> None:
    redactor = load_redaction(
        {
            "record_arguments": "values",
            "rules": [
                {"paths": ["card.number"], "action": "mask", "keep_last": 4},
                {"paths": ["card.cvc", "**.ssn"], "action": "drop"},
                {"paths": ["patients.*.name"], "action": "mask"},
            ],
        }
    )
    out = redactor.arguments(ARGS, CALL)
    assert out["card"] == {"number": "…1111", "holder": "Ada"}
    assert out["patients"] == [{"name": MASK}, {"name": MASK}]  # SSN: keys match any case
    assert "078-05-1120" not in str(out)
    assert "4111111111111111" not in str(out)


def test_a_rule_applies_only_to_the_calls_it_matches() -> None:
    redactor = load_redaction(
        {
            "record_arguments": "values",
            "rules": [
                {
                    "paths": ["amount"],
                    "action": "drop",
                    "match": {"resource_id": "payments.*"},
                }
            ],
        }
    )
    assert "amount" not in redactor.arguments(ARGS, CALL)
    other = {**CALL, "resource_id": "search.web"}
    assert redactor.arguments(ARGS, other)["amount"] == 120


def test_drop_wins_over_mask_and_masks_hide_any_type() -> None:
    redactor = load_redaction(
        {
            "record_arguments": "values",
            "rules": [
                {"paths": ["card"], "action": "mask"},
                {"paths": ["card"], "action": "drop"},
                {"paths": ["amount", "patients"], "action": "mask", "keep_last": 2},
            ],
        }
    )
    out = redactor.arguments(ARGS, CALL)
    assert "card" not in out
    assert out["amount"] == MASK  # not a string: keep_last cannot apply
    assert out["patients"] == MASK


def test_configuration_cannot_switch_off_the_secret_guard() -> None:
    redactor = load_redaction(
        {"record_arguments": "values", "rules": [{"paths": ["note"], "action": "mask"}]}
    )
    assert redactor.arguments({"api_key": "sk-1", "nested": {"token": "t"}}, CALL) == {
        "api_key": "[redacted]",
        "nested": {"token": "[redacted]"},
    }


def test_names_only_mode_and_depth_bound() -> None:
    assert load_redaction({"record_arguments": "names"}).arguments(ARGS, CALL) == {}
    deep: dict[str, Any] = {}
    cursor = deep
    for _ in range(50):
        cursor["k"] = {}
        cursor = cursor["k"]
    out = Redactor(record_values=True).arguments(deep, CALL)
    assert "[masked]" in str(out) or "[redacted]" in str(out)
    assert str(out).count("{") < 20


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        ([], "must hold a mapping"),
        ({"rule": []}, "unknown keys rule"),
        ({"record_arguments": "all"}, "record_arguments"),
        ({"max_string": 3}, "between 16 and 4096"),
        ({"rules": [{"paths": ["a"], "action": "drop"}]}, "set record_arguments: values"),
        (
            {"record_arguments": "values", "rules": [{"paths": ["a"], "action": "hash"}]},
            "rule #1: action",
        ),
        (
            {"record_arguments": "values", "rules": [{"paths": [], "action": "drop"}]},
            "rule #1: paths",
        ),
        (
            {"record_arguments": "values", "rules": [{"paths": ["a..b"], "action": "drop"}]},
            "bad path",
        ),
        (
            {
                "record_arguments": "values",
                "rules": [{"paths": ["a"], "action": "drop", "keep_last": 4}],
            },
            "only with mask",
        ),
        (
            {
                "record_arguments": "values",
                "rules": [{"paths": ["a"], "action": "mask", "match": {"tool": "x"}}],
            },
            "match takes",
        ),
        (
            {
                "record_arguments": "values",
                "rules": [{"paths": ["a"], "action": "mask", "extra": 1}],
            },
            "unknown keys extra",
        ),
    ],
)
def test_bad_rule_files_are_refused_with_a_clear_reason(definition: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_redaction(definition)


def test_wildcards_on_hostile_shapes_finish() -> None:
    """A rule with eight ** and a path of 40 keys that almost matches: a backtracking
    matcher tries tens of millions of splits (minutes); the O(pattern x path) one
    answers at once. The suite's per-test timeout is the bound; the answer is checked."""
    from agentiam.core.audit.redaction import _matches

    pattern = ("**", "a") * 8 + ("**", "b")
    assert not _matches(pattern, ("a",) * 40)
    assert _matches(pattern, ("a",) * 40 + ("b",))
    redactor = load_redaction(
        {
            "record_arguments": "values",
            "rules": [{"paths": [".".join(pattern[2:])], "action": "drop"}],  # 16 segments
        }
    )
    deep: dict[str, Any] = {}
    cursor = deep
    for _ in range(7):
        cursor["a"] = {}
        cursor = cursor["a"]
    cursor["b"] = "gone"
    assert "gone" not in str(redactor.arguments(deep, CALL))


def test_double_star_semantics() -> None:
    from agentiam.core.audit.redaction import _matches

    assert _matches(("**", "ssn"), ("ssn",))
    assert _matches(("**", "ssn"), ("a", "b", "SSN"))
    assert not _matches(("**", "ssn"), ("ssn", "x"))
    assert _matches(("a", "**"), ("a",))
    assert _matches(("a", "*", "c"), ("a", "b", "c"))
    assert not _matches(("a", "*", "c"), ("a", "c"))
    assert _matches(("**",), ())
