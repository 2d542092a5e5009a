"""Normalisation and safety checks for names and identifiers.

Identifiers (agent names, environments, label keys) are compared in one canonical
form: Unicode NFKC followed by case folding (UAX #15, Unicode 15 section 3.13), so
``Invoice-Bot``, ``invoice-bot`` and the fullwidth-letter spelling of it are one name.

Characters that let two different-looking strings compare equal, or two equal-looking
strings compare different, are refused outright: control and format characters
(zero-width joiners, bidi overrides), private-use and unassigned code points, and
labels that mix scripts the way spoofed names do (UTS #39 section 5.2, "highly
restrictive": one script, or Han with Hiragana/Katakana, or Han with Hangul, plus
common characters such as digits and punctuation).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from agentiam.errors import InvalidInput

__all__ = [
    "normalize_display_text",
    "normalize_identifier",
    "plain",
    "scripts_of",
]

# General categories never allowed: Cc control, Cf format (zero-width, bidi), Cs
# surrogate, Co private use, Cn unassigned; Zl/Zp line/paragraph separators.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})

# Script combinations that UTS #39 "highly restrictive" admits besides a single script.
_ALLOWED_SCRIPT_SETS = (
    frozenset({"CJK", "HIRAGANA", "KATAKANA"}),
    frozenset({"CJK", "HANGUL"}),
    frozenset({"CJK", "BOPOMOFO"}),
)

# Identifier shape after normalisation: letters/digits, inner '.', '_' and '-'.
_IDENTIFIER_RE = re.compile(r"^[^\W_](?:[\w.-]*[^\W_])?$")


def _script_of(char: str) -> str | None:
    """Return the script of a letter, derived from its Unicode character name.

    The first word of a letter's name is its script for every script that matters for
    spoofing (``LATIN``, ``CYRILLIC``, ``GREEK``, ``ARMENIAN``, ``CJK``, ...). Digits,
    punctuation and symbols are "Common" and return None.
    """
    if not unicodedata.category(char).startswith("L"):
        return None
    name = unicodedata.name(char, "")
    if not name:
        return "UNKNOWN"
    first = name.split(" ", 1)[0]
    if first in {"HALFWIDTH", "FULLWIDTH"}:
        parts = name.split(" ")
        first = parts[1] if len(parts) > 1 else first
    if first in {"CJK", "IDEOGRAPHIC"}:
        return "CJK"
    if first == "KATAKANA-HIRAGANA":  # the prolonged sound mark is shared by both kana
        return None
    return first


def scripts_of(text: str) -> frozenset[str]:
    """The set of scripts used by the letters of ``text``."""
    return frozenset(s for s in (_script_of(c) for c in text) if s is not None)


def _refuse_invisible(text: str, field: str) -> None:
    for char in text:
        category = unicodedata.category(char)
        if category in _FORBIDDEN_CATEGORIES:
            raise InvalidInput(
                f"{field} contains a forbidden character U+{ord(char):04X} ({category})",
                hint="Remove control, zero-width and formatting characters.",
            )


def _check_characters(text: str, field: str) -> None:
    _refuse_invisible(text, field)
    scripts = scripts_of(text)
    if len(scripts) > 1 and not any(scripts <= allowed for allowed in _ALLOWED_SCRIPT_SETS):
        raise InvalidInput(
            f"{field} mixes scripts ({', '.join(sorted(scripts))}), as spoofed names do",
            hint="Write the name in one script.",
        )


def normalize_identifier(value: str, *, field: str, max_length: int) -> str:
    """Return the canonical form of an identifier or raise :class:`InvalidInput`.

    The checks run on the raw input and again on the normalised form, since NFKC can
    map a harmless-looking compatibility character onto a forbidden sequence.
    """
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a string")
    if len(value) > max_length * 4:
        raise InvalidInput(f"{field} is longer than {max_length} characters")
    _check_characters(value, field)
    canonical = unicodedata.normalize("NFKC", value).casefold()
    canonical = unicodedata.normalize("NFKC", canonical)
    _check_characters(canonical, field)
    if not canonical:
        raise InvalidInput(f"{field} must not be empty")
    if len(canonical) > max_length:
        raise InvalidInput(f"{field} is longer than {max_length} characters")
    if not _IDENTIFIER_RE.match(canonical):
        raise InvalidInput(
            f"{field} {canonical!r} is not a valid identifier",
            hint="Use letters and digits, with '.', '_' or '-' between them.",
        )
    return canonical


def normalize_display_text(
    value: str, *, field: str, max_length: int, allow_empty: bool = False
) -> str:
    """Normalise free text shown to people (display names, purposes): NFKC, trimmed,
    inner whitespace collapsed, forbidden characters refused. Case is kept."""
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a string")
    if len(value) > max_length * 4:
        raise InvalidInput(f"{field} is longer than {max_length} characters")
    _refuse_invisible(value, field)
    text = " ".join(unicodedata.normalize("NFKC", value).split())
    if not text and not allow_empty:
        raise InvalidInput(f"{field} must not be empty")
    if len(text) > max_length:
        raise InvalidInput(f"{field} is longer than {max_length} characters")
    return text


def plain(value: Any) -> Any:
    """``value`` with every mapping made a dict (string keys) and every sequence a
    list: JSON types, ready to serialise."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value
