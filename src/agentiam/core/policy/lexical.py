"""A small lexical pass over Cedar text, run before (and beside) the real parser.

It only tracks what matters for splitting safely: string literals (with escapes),
``//`` comments and bracket depth. Uses:

* :func:`check_nesting` refuses deep bracket nesting before cedarpy's native parser
  sees it (that parser overflows its stack, crashing the process, on a few hundred
  nested brackets);
* :func:`split_policies` cuts a file into one text per policy, at each ``;`` outside
  strings, comments and brackets, so each policy is stored as its author wrote it
  (comments and formatting kept) instead of as a re-printed syntax tree;
* :func:`take_annotations` reads the leading ``@name("value")`` annotations;
* :func:`scope_span` finds the ``( principal, action, resource )`` head.

The parser stays the authority: callers check that what this module cut out parses
to the same policies (see :mod:`agentiam.core.policy.parsing`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from agentiam.errors import InvalidInput

__all__ = [
    "MAX_ELEMENTS",
    "MAX_NESTING",
    "MAX_OPERATORS",
    "check_complexity",
    "check_nesting",
    "scope_span",
    "split_policies",
    "take_annotations",
]

MAX_NESTING = 32
MAX_OPERATORS = 128
MAX_ELEMENTS = 2_000
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TRAILING_COMMENT_RE = re.compile(r"[ \t]*//[^\r\n]*")
_EOL_RE = re.compile(r"[\r\n]")
# Operators and keywords that each add (at most) one level to an expression tree.
_OPERATOR_RE = re.compile(r"&&|\|\||==|!=|<=|>=|[<>!+*.-]|\b(?:if|has|like|is|in)\b")
_SCOPE_HEAD_RE = re.compile(r"(?<![A-Za-z0-9_@])(?:permit|forbid)\s*\(")


def _line_end(text: str, i: int) -> int:
    """Where a ``//`` comment starting at ``i`` ends: Cedar ends it at CR or LF."""
    match = _EOL_RE.search(text, i)
    return match.start() if match else len(text)


def _scan(text: str) -> Iterator[tuple[int, str, int]]:
    """Yield (index, char, depth-before) for every character outside strings and
    comments; strings and comments are skipped whole."""
    depth = 0
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            continue
        if ch == "/" and i + 1 < n and text[i + 1] == "/":
            i = _line_end(text, i)
            continue
        yield i, ch, depth
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        i += 1


def check_nesting(text: str, *, limit: int = MAX_NESTING) -> None:
    """Refuse text whose brackets nest deeper than ``limit`` levels."""
    for _, ch, depth in _scan(text):
        if ch in "([{" and depth + 1 > limit:
            raise InvalidInput(
                f"the policy text nests brackets deeper than {limit} levels",
                hint="Flatten the expression.",
            )


def check_complexity(policy_text: str, *, limit: int = MAX_OPERATORS) -> None:
    """Refuse one policy with more than ``limit`` operators and keywords outside
    strings and comments. Chains without brackets (``a && b && …``, ``if … then if``,
    ``context.a.b.c…``, ``has a.b.c…``) nest as deeply as they are long; cedarpy's
    native code crashes, or runs for minutes, on long ones."""
    code = "".join(ch if depth >= 0 else "" for _, ch, depth in _scan(policy_text))
    elements = code.count(",")
    if elements > MAX_ELEMENTS:
        raise InvalidInput(
            f"a policy has {elements} list or record elements; at most {MAX_ELEMENTS}",
            hint="Group resources in the catalog and test membership with `in`.",
        )
    count = len(_OPERATOR_RE.findall(code))
    if count > limit:
        raise InvalidInput(
            f"a policy has {count} operators; at most {limit} are allowed",
            hint="Split it into several policies, or test membership with a set: "
            '[Tool::"a", Tool::"b"].contains(resource).',
        )


def split_policies(text: str) -> list[str]:
    """One chunk per policy (each ending with its ``;``); trailing comments and
    whitespace after the last policy are dropped."""
    chunks: list[str] = []
    start = 0
    for i, ch, depth in _scan(text):
        if ch == ";" and depth == 0 and i >= start:
            end = i + 1
            trailing = _TRAILING_COMMENT_RE.match(text, end)  # "…; // note" stays with it
            if trailing:
                end = trailing.end()
            chunks.append(text[start:end])
            start = end
    return chunks


def _skip_trivia(text: str, i: int) -> int:
    n = len(text)
    while i < n:
        if text[i].isspace():
            i += 1
        elif text.startswith("//", i):
            i = _line_end(text, i)
        else:
            break
    return i


def take_annotations(chunk: str, names: frozenset[str]) -> tuple[dict[str, str], str]:
    """Read the leading annotations of one policy; remove those in ``names``.

    Returns ({name: value} for the removed ones, the chunk without them). Comments
    and the other annotations are kept in place.
    """
    taken: dict[str, str] = {}
    kept: list[str] = []
    i = 0
    while True:
        j = _skip_trivia(chunk, i)
        if j >= len(chunk) or chunk[j] != "@":
            break
        match = _IDENT_RE.match(chunk, j + 1)
        if match is None:
            break
        end = match.end()
        value = ""
        k = _skip_trivia(chunk, end)
        if k < len(chunk) and chunk[k] == "(":
            k = _skip_trivia(chunk, k + 1)
            if k < len(chunk) and chunk[k] == '"':
                m = k + 1
                while m < len(chunk) and chunk[m] != '"':
                    m += 2 if chunk[m] == "\\" else 1
                value = chunk[k + 1 : m]
                k = _skip_trivia(chunk, m + 1)
            if k < len(chunk) and chunk[k] == ")":
                end = k + 1
        if match.group(0) in names:
            taken[match.group(0)] = value  # raw (escaped) text; the parser's value wins
            kept.append(chunk[i:j])
        else:
            kept.append(chunk[i:end])
        i = end
    kept.append(chunk[i:])
    return taken, "".join(kept)


def _code_view(text: str) -> str:
    """``text`` with strings and comments blanked out (same length, same offsets)."""
    chars = [" "] * len(text)
    for i, ch, _ in _scan(text):
        chars[i] = ch
    return "".join(chars)


def scope_span(text: str) -> tuple[int, int]:
    """The index of the ``(`` opening the scope of the (single) policy in ``text``
    and of its matching ``)``; comments and strings anywhere are skipped."""
    code = _code_view(text)
    head = _SCOPE_HEAD_RE.search(code)
    if head is None:
        raise InvalidInput("the policy has no scope")
    open_at = head.end() - 1
    depth = 0
    for i in range(open_at, len(code)):
        if code[i] in "([{":
            depth += 1
        elif code[i] in ")]}":
            depth -= 1
            if depth == 0:
                return open_at, i
    raise InvalidInput("the policy has no scope")
