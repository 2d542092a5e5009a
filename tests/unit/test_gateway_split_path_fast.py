"""``split_path``'s fast path (a path with no percent-encoding is not decoded segment by
segment) refuses and answers exactly as decoding every segment does."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agentiam.adapters.gateway.http_proxy import (
    _SAFE_RAW,
    MAX_PATH,
    PathRejected,
    _decode_segment,
    split_path,
)

_SEGMENT = st.text(alphabet="abc.;%2F5e\\ /-_~", max_size=6)
_PATHS = st.lists(_SEGMENT, min_size=1, max_size=5).map(lambda s: "/" + "/".join(s))


def _segment_by_segment(raw: bytes, prefix: str = "") -> tuple[str, ...] | str:
    """The answer with every segment decoded: ``split_path`` as it was before its fast
    path."""
    if len(raw) > MAX_PATH or not raw.startswith(b"/") or not _SAFE_RAW.match(raw):
        return "refused"
    if b"\\" in raw or b";" in raw:
        return "refused"
    path = raw.decode("ascii")
    if prefix:
        if path != prefix and not path.startswith(prefix + "/"):
            return "refused"
        path = path[len(prefix) :] or "/"
    parts = path[1:].split("/")
    if not all(parts[:-1]):
        return "refused"
    try:
        return tuple(_decode_segment(p) for p in parts)
    except PathRejected:
        return "refused"


def _answer(raw: bytes, prefix: str = "") -> tuple[str, ...] | str:
    try:
        return split_path(raw, prefix)
    except PathRejected:
        return "refused"


@settings(max_examples=600)
@given(_PATHS, st.sampled_from(["", "/api"]))
def test_the_fast_path_answers_as_decoding_every_segment(path: str, prefix: str) -> None:
    raw = (prefix + path).encode("utf-8")
    assert _answer(raw, prefix) == _segment_by_segment(raw, prefix)


def test_dot_segments_are_refused_without_percent_encoding() -> None:
    for raw in (b"/a/./b", b"/a/../b", b"/..", b"/.", b"/a/.."):
        assert _answer(raw) == "refused", raw
    assert _answer(b"/a/.b/c..d/...") == ("a", ".b", "c..d", "...")
