"""The trail's canonical JSON (``core/audit/trail.py``): its fast path writes exactly
what ``rfc8785`` writes (RFC 8785), and refuses exactly what it refuses."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from agentiam.core.audit import trail
from agentiam.core.audit.merkle import leaf_hash
from agentiam.core.audit.trail import canonical, canonical_text, decoded_body, event_leaf

# Strings that stress the escaping and the key order: control characters, the
# characters JSON escapes, U+007F, U+2028/U+2029, characters on both sides of the
# surrogate range (U+E000-U+FFFF sort after astral ones in UTF-16, before them in code
# points) and astral ones.
_TRICKY = st.sampled_from(
    [
        "\x00",
        "\x1f",
        "\x7f",
        '"',
        "\\",
        "/",
        "\b",
        "\f",
        "\n",
        "\r",
        "\t",
        "\u2028",
        "\u2029",
        "\ud7ff",
        "\ue000",
        "\uffff",
        "\U00010000",
        "\U0001f600",
        "\U0010ffff",
        "é",
        "a",
        "Z",
    ]
)
_TEXT = st.one_of(
    st.text(max_size=12),
    st.lists(_TRICKY, max_size=6).map("".join),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=8),
)
_NUMBER = st.one_of(
    st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1),
    st.integers(),  # beyond +-(2**53 - 1): rfc8785 refuses
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(
        [
            0.0,
            -0.0,
            1.0,
            -1.0,
            1e-4,
            9.99e-5,
            1e-7,
            1e16,
            1e15 + 0.5,
            9007199254740991.0,
            9007199254740992.0,
            1e21,
            1e22,
            123456789012345680000.0,
            5e-324,
            1.7976931348623157e308,
            0.1,
            2.5,
            1234.5678,
            round(12.3456, 3),
        ]
    ),
)
_SCALAR = st.one_of(st.none(), st.booleans(), _NUMBER, _TEXT)
_JSON = st.recursive(
    _SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(_TEXT, inner, max_size=5),
    ),
    max_leaves=25,
)


def _reference(value: Any) -> bytes | type[BaseException]:
    try:
        return rfc8785.dumps(value)
    except Exception as exc:  # what it raises is part of what must not change
        return type(exc)


def _ours(value: Any) -> bytes | type[BaseException]:
    try:
        return canonical(value)
    except Exception as exc:
        return type(exc)


# 1,000 values (was 2,000; generating them was nearly all of the test's 10 s): the
# values that matter are drawn by the strategies above (tricky strings, numbers at the
# edges) and pinned in test_edge_cases_match_rfc8785, and the 1,000 of
# test_a_written_text_is_logged_and_read_as_if_it_were_decoded go through the same
# fast path, compared with rfc8785 byte for byte too.
@settings(max_examples=1000, deadline=None)
@given(_JSON)
def test_canonical_is_rfc8785_byte_for_byte(value: Any) -> None:
    assert _ours(value) == _reference(value)


@settings(max_examples=1000, deadline=None)
@given(_JSON)
def test_event_leaf_hashes_what_rfc8785_writes(value: Any) -> None:
    """From stored text, as the integrator reads it: ASCII-escaped (what the store
    writes), raw UTF-8 and with NaN/Infinity (which Python's encoder writes)."""
    for ensure_ascii in (True, False):
        try:
            text = json.dumps(value, ensure_ascii=ensure_ascii)
        except (ValueError, RecursionError):
            continue
        reference = _reference(json.loads(text))
        try:
            ours: bytes | type[BaseException] = event_leaf(text)
        except Exception as exc:
            ours = type(exc)
        expected = leaf_hash(reference) if isinstance(reference, bytes) else reference
        assert ours == expected


@pytest.mark.parametrize(
    "value",
    [
        {"\U0001f600": 1, "\uffff": 2, "a": 3},  # UTF-16 order differs from code points
        {"k": "\ud800"},  # a lone surrogate in a value
        {"\udc00": 1},  # a lone surrogate in a key
        ["\udbff"],
        {"n": 2**53},
        {"n": -(2**53)},
        {"f": math.nan},
        {"f": math.inf},
        {1: "a non-string key"},
        {"f": 1e21},
        {"f": 1e-7},
        {"f": -0.0},
        {"f": 100.0},
        {"s": '\x00\x1f\x7f\u2028\u2029"\\/\b\f\n\r\t'},
        ("a", "tuple"),
        {"deep": [[[[{"x": [1.5, None, True, False]}]]]]},
        {"set": {1, 2}},
    ],
)
def test_edge_cases_match_rfc8785(value: Any) -> None:
    assert _ours(value) == _reference(value)


def test_a_lone_surrogate_still_raises() -> None:
    with pytest.raises(rfc8785.CanonicalizationError):
        canonical({"k": "\ud800"})
    with pytest.raises(UnicodeEncodeError):
        canonical({"\ud800": 1})  # rfc8785 fails sorting such a key, as before
    with pytest.raises(rfc8785.CanonicalizationError):
        event_leaf('{"k": "\\ud800"}')


def test_numbers_rfc8785_refuses_are_still_refused() -> None:
    with pytest.raises(rfc8785.IntegerDomainError):
        event_leaf('{"n": 9007199254740992}')
    with pytest.raises(rfc8785.FloatDomainError):
        event_leaf('{"f": NaN}')
    with pytest.raises(rfc8785.FloatDomainError):
        canonical({"f": -math.inf})


@settings(max_examples=1000, deadline=None)
@given(_JSON)
def test_a_written_text_is_logged_and_read_as_if_it_were_decoded(value: Any) -> None:
    """What the store writes (:func:`canonical_text`): when it is not None, it is the
    RFC 8785 text of the value, its leaf (from the memo) is what rfc8785 gives, and
    detection reads it (:func:`decoded_body`, from the memo, then decoding) as the
    text decodes."""
    text = canonical_text(value)
    if text is None:
        return
    reference = _reference(value)
    try:
        ours: bytes | type[BaseException] = event_leaf(text)
    except Exception as exc:
        ours = type(exc)
    if isinstance(reference, bytes):
        assert text.encode("utf-8") == reference
        assert ours == leaf_hash(reference)
    else:  # a lone surrogate: refused by the trail as before
        assert ours == reference
    assert decoded_body(text) == json.loads(text)  # from the memo
    assert decoded_body(text) == json.loads(text)  # decoded: the memo forgot it


def test_a_text_not_written_here_is_canonicalised_not_trusted() -> None:
    """The memo vouches only for the exact text written: the same event in another
    formatting (an integral float, spaces, other key order) still gets the leaf of
    its canonical form, and a text one byte off a written one is not vouched for."""
    written = canonical_text({"b": 1, "a": 3.0})
    assert written == '{"a":3,"b":1}'
    expected = leaf_hash(rfc8785.dumps({"a": 3, "b": 1}))
    assert event_leaf(written) == expected
    assert event_leaf('{"b": 1, "a": 3.0}') == expected
    assert event_leaf('{"a":3,"b":2}') == leaf_hash(rfc8785.dumps({"a": 3, "b": 2}))
    assert decoded_body('{"a":3,"b":1 }') == {"a": 3, "b": 1}


def test_the_memo_is_bounded() -> None:
    """Texts nobody reads back (no detection, or another replica logs them) are
    forgotten oldest first: memory stays bounded and nothing is read differently."""
    first = canonical_text({"n": -1})
    assert first is not None
    for n in range(trail._WRITTEN._bound + 10):
        canonical_text({"n": n})
    assert len(trail._WRITTEN._texts) == trail._WRITTEN._bound
    assert first not in trail._WRITTEN
    assert event_leaf(first) == leaf_hash(b'{"n":-1}')
    assert decoded_body(first) == {"n": -1}
