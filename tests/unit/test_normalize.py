"""Identifier normalisation and confusable-character refusal."""

from __future__ import annotations

import pytest

from agentiam.core.normalize import normalize_display_text, normalize_identifier
from agentiam.errors import InvalidInput


def ident(value: str) -> str:
    return normalize_identifier(value, field="name", max_length=63)


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("Invoice-Bot", "invoice-bot"),
        ("\uff49\uff4e\uff56\uff4f\uff49\uff43\uff45-bot", "invoice-bot"),  # fullwidth letters
        ("STRASSE", "strasse"),
        ("Straße", "strasse"),  # case folding, not just lower()
        ("agent.v2_prod", "agent.v2_prod"),
        ("日本語エージェント", "日本語エージェント"),  # Han + Katakana is one writing system
    ],
)
def test_identifiers_compare_in_one_canonical_form(raw: str, canonical: str) -> None:
    assert ident(raw) == canonical


@pytest.mark.parametrize(
    "raw",
    [
        "invoice\u200bbot",  # zero-width space
        "invoice\u200dbot",  # zero-width joiner
        "invoice\u202ebot",  # right-to-left override
        "invoice\x00bot",
        "invoice\nbot",
        "inv\ue000oice",  # private use
    ],
)
def test_invisible_and_control_characters_are_refused(raw: str) -> None:
    with pytest.raises(InvalidInput, match="forbidden character"):
        ident(raw)


def test_mixed_script_confusable_is_refused() -> None:
    # Cyrillic er and a followed by Latin "ypal": renders as "paypal".
    with pytest.raises(InvalidInput, match="mixes scripts"):
        ident("\u0440\u0430ypal")


@pytest.mark.parametrize("raw", ["", "-leading", "trailing-", "has space", "a/b", "x" * 64])
def test_malformed_identifiers_are_refused(raw: str) -> None:
    with pytest.raises(InvalidInput):
        ident(raw)


def test_display_text_keeps_case_and_collapses_whitespace() -> None:
    assert normalize_display_text("  Ada   Lovelace ", field="n", max_length=20) == "Ada Lovelace"
    with pytest.raises(InvalidInput):
        normalize_display_text("Ada\u200bLovelace", field="n", max_length=20)
    with pytest.raises(InvalidInput):
        normalize_display_text("x" * 21, field="n", max_length=20)
    with pytest.raises(InvalidInput):
        normalize_display_text("   ", field="n", max_length=20)
