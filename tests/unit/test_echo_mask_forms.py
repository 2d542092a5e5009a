"""The gateways' mask of an echoed credential finds it encoded, not only as sent
(``EchoMask``, review "echo forms"): an upstream that puts the credential in a JSON
string (escaped), a query string (percent-encoded), an HTML page, a base64 blob (an
echoed ``Authorization: Basic ...``, at any offset) or a hex dump handed it to the
agent. Every body here is made by the encoder an upstream would use (the standard
library's ``json``, ``urllib.parse``, ``html``, ``base64``, MarkupSafe), never by the
mask's own code; where no such encoder is at hand (Go, PHP, .NET) the expected bytes
are written out by hand from that encoder's documented output.

Properties checked: the masked body keeps its length, holds no form of the
credential, is the same however it is cut into chunks, and the mask holds back less
than its longest form (and nothing for a chunk that cannot begin one).
"""

from __future__ import annotations

import base64
import html
import json
import random
import re
from collections.abc import Callable
from urllib.parse import quote, quote_plus, urlencode

import markupsafe
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentiam.adapters.gateway.echo_mask import EchoMask

PLAIN = b"upstream-secret-value-0123456789"  # an API key: letters, digits, "-"
# a key with every character an encoder treats specially that a field value can hold
# (RFC 9110 section 5.5: visible ASCII, space and tab inside, obs-text as ISO-8859-1)
SPECIAL = b"k3y\"q\\b/s+p=a&l<g>'t sp%x~!*(x)\tcaf\xe9\xff-end"


def _text(secret: bytes) -> str:
    return secret.decode("latin-1")


def _fill(secret: bytes) -> bytes:
    """The byte masked bytes are replaced by: ``*``, or ``#`` if the key holds ``*``."""
    return b"#" if b"*" in secret else b"*"


def _masked(secret: bytes, chunks: list[bytes]) -> tuple[bytes, int]:
    mask = EchoMask(secret)
    out = b"".join(mask.feed(c) for c in chunks) + mask.flush()
    return out, mask.masked


def _cut(body: bytes, rng: random.Random, n: int) -> list[bytes]:
    cuts = sorted(rng.sample(range(len(body) + 1), min(n, len(body) + 1)))
    return [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]


# -- the escapings: JSON, percent-encoding, HTML ----------------------------------------------

Encoder = Callable[[str], bytes]

ESCAPINGS: dict[str, Encoder] = {
    "json-ascii": lambda t: json.dumps({"authorization": t}).encode(),
    "json-utf8": lambda t: json.dumps({"authorization": t}, ensure_ascii=False).encode(),
    "json-in-json": lambda t: json.dumps({"text": json.dumps({"k": t})}).encode(),
    "json-in-json-utf8": lambda t: json.dumps(
        {"text": json.dumps({"k": t}, ensure_ascii=False)}, ensure_ascii=False
    ).encode(),
    "quote": lambda t: quote(t, safe="").encode(),
    "quote-default": lambda t: quote(t).encode(),  # keeps "/"
    "quote-plus": lambda t: quote_plus(t).encode(),
    "urlencode": lambda t: urlencode({"api_key": t, "x": 1}).encode(),
    "quote-latin1": lambda t: quote(t.encode("latin-1"), safe="").encode(),
    "quote-lower": lambda t: re.sub(
        "%[0-9A-F]{2}", lambda m: m[0].lower(), quote(t, safe="")
    ).encode(),
    "html-escape": lambda t: f"<td>{html.escape(t)}</td>".encode(),
    "markupsafe": lambda t: f"<td>{markupsafe.escape(t)}</td>".encode(),
    "utf8": lambda t: t.encode("utf-8"),
}


def _json_by_hand(t: str, table: dict[str, str], *, non_ascii: str | None) -> bytes:
    """A JSON string as an encoder without a Python port writes it: ``table`` for
    the characters it escapes, ``non_ascii`` the ``\\u`` format of U+007F and past
    (None: UTF-8)."""
    out = []
    for ch in t:
        if ch in table:
            out.append(table[ch])
        elif non_ascii is not None and ord(ch) >= 0x7F:
            out.append(non_ascii % ord(ch))
        else:
            out.append(ch)
    return ('{"h":"' + "".join(out) + '"}').encode("utf-8")


_BASE = {'"': '\\"', "\\": "\\\\", "\t": "\\t"}
BY_HAND: dict[str, Encoder] = {
    # Go encoding/json: <, >, & as \u003c...; non-ASCII as UTF-8
    "go": lambda t: _json_by_hand(
        t, {**_BASE, "<": "\\u003c", ">": "\\u003e", "&": "\\u0026"}, non_ascii=None
    ),
    # PHP json_encode: "/" as "\/"; non-ASCII as \u00e9
    "php": lambda t: _json_by_hand(t, {**_BASE, "/": "\\/"}, non_ascii="\\u%04x"),
    # .NET System.Text.Json (JavaScriptEncoder.Default): upper-case hex
    ".net": lambda t: _json_by_hand(
        t,
        {
            **_BASE,
            '"': "\\u0022",
            "&": "\\u0026",
            "'": "\\u0027",
            "+": "\\u002B",
            "<": "\\u003C",
            ">": "\\u003E",
        },
        non_ascii="\\u%04X",
    ),
}


@pytest.mark.parametrize("secret", [PLAIN, SPECIAL], ids=["plain", "special"])
@pytest.mark.parametrize("encoding", [*ESCAPINGS, *BY_HAND])
def test_an_escaped_credential_is_masked(secret: bytes, encoding: str) -> None:
    """Each escaping of the credential in a body is masked, in place: the body keeps
    its length, and the escaped credential is gone."""
    encode = ESCAPINGS.get(encoding) or BY_HAND[encoding]
    echoed = encode(_text(secret))
    body = b"before " + echoed + b" after"
    out, masked = _masked(secret, [body])
    assert len(out) == len(body)
    assert masked >= 1
    assert out.startswith(b"before ")
    assert out.endswith(b" after")
    for form in _escaped_credential(secret, encoding):
        assert form not in out, (encoding, out)


def _escaped_credential(secret: bytes, encoding: str) -> list[bytes]:
    """The credential itself as ``encoding`` writes it (without what surrounds it)."""
    t = _text(secret)
    if encoding.startswith("json-in-json"):
        ascii_only = encoding == "json-in-json"
        inner = json.dumps(t, ensure_ascii=ascii_only)[1:-1]
        return [json.dumps(inner, ensure_ascii=ascii_only)[1:-1].encode()]
    if encoding.startswith("json"):
        return [json.dumps(t, ensure_ascii=encoding == "json-ascii")[1:-1].encode()]
    if encoding == "urlencode":
        return [quote_plus(t).encode()]
    if encoding in BY_HAND:
        return [BY_HAND[encoding](t)[6:-2]]
    body = (ESCAPINGS[encoding])(t)
    return [body.removeprefix(b"<td>").removesuffix(b"</td>")]


def test_the_special_key_is_escaped_by_every_encoder() -> None:
    """The special key really is changed by each escaping (else the tests above
    would only test the verbatim search)."""
    for encoding in [*ESCAPINGS, *BY_HAND]:
        for form in _escaped_credential(SPECIAL, encoding):
            assert SPECIAL not in form, encoding


# -- the re-encodings: base64, base64url, hex ---------------------------------------------------


@pytest.mark.parametrize("secret", [PLAIN, SPECIAL], ids=["plain", "special"])
@pytest.mark.parametrize("alphabet", ["base64", "base64url"])
@pytest.mark.parametrize("offset", range(6))
def test_a_credential_in_base64_is_masked_at_every_alignment(
    secret: bytes, alphabet: str, offset: int
) -> None:
    """``Authorization: Basic base64(user:key)``, a body that base64s the request's
    header lines: the key sits at any offset in the encoded bytes, and each offset
    modulo 3 encodes it differently. Masked at each, leaving at most the two
    characters at each end that also hold bits of the neighbouring bytes: the
    masked text decodes (fill read as zero bits) to nothing holding the key, nor
    half of it."""
    encode = base64.b64encode if alphabet == "base64" else base64.urlsafe_b64encode
    plain = b"u" * offset + b"user:" + secret + b"\r\nnext: line"
    body = b'{"basic": "' + encode(plain) + b'"}'
    out, masked = _masked(secret, [body])
    assert len(out) == len(body)
    assert masked == 1
    blob = out[len(b'{"basic": "') : -2]
    altchars = None if alphabet == "base64" else b"-_"
    fill = _fill(secret)
    decoded = base64.b64decode(blob.replace(fill, b"A"), altchars=altchars)
    assert secret[: len(secret) // 2] not in decoded
    assert secret[len(secret) // 2 :] not in decoded
    assert blob.count(fill) >= (8 * len(secret)) // 6 - 2


@pytest.mark.parametrize("secret", [PLAIN, SPECIAL], ids=["plain", "special"])
@pytest.mark.parametrize("upper", [False, True])
def test_a_credential_in_hex_is_masked(secret: bytes, upper: bool) -> None:
    dump = secret.hex().upper() if upper else secret.hex()
    body = b"dump: 0a0b" + dump.encode() + b"0c0d"
    out, masked = _masked(secret, [body])
    assert (len(out), masked) == (len(body), 1)
    assert out == b"dump: 0a0b" + _fill(secret) * len(dump) + b"0c0d"


def test_a_short_credential_is_searched_only_as_written_and_escaped() -> None:
    """Below 8 bytes a credential's base64 core or hex is a few characters any base64
    or hex text holds by chance: not searched (the escapings still are); from 8 on,
    it is."""
    short, long = b"k3y/!+7", b"k3y/!+78"
    for secret, found in ((short, 0), (long, 1)):
        body = base64.b64encode(secret) + b" " + secret.hex().encode()
        out, masked = _masked(secret, [body])
        assert masked == 2 * found, secret
    out, masked = _masked(short, [b"q=" + quote(short, safe="").encode()])
    assert (out, masked) == (b"q=" + b"*" * len(quote(short, safe="")), 1)


def test_a_body_without_the_credential_keeps_its_bytes() -> None:
    """Other base64, hex and JSON, and the credential's forms cut short, are relayed
    as they came."""
    b64 = base64.b64encode(b"Basic " + PLAIN)
    body = b"".join(
        [
            base64.b64encode(b"user:other-secret-value-0123456789"),
            b" ",
            b64[: len(b64) // 2],
            b" ",
            PLAIN.hex().encode()[:-1],
            b" ",
            json.dumps(_text(SPECIAL)).encode()[:-3],
        ]
    )
    out, masked = _masked(PLAIN, [body])
    assert (out, masked) == (body, 0)


# -- streaming: any cut, bounded hold-back -------------------------------------------------------

ENCODERS: list[Encoder] = [
    *ESCAPINGS.values(),
    *BY_HAND.values(),
    lambda t: base64.b64encode(t.encode("latin-1")),
    lambda t: base64.urlsafe_b64encode(b"x:" + t.encode("latin-1")),
    lambda t: base64.b64encode(b"ab:" + t.encode("utf-8")),
    lambda t: t.encode("latin-1").hex().encode(),
    lambda t: t.encode("latin-1").hex().upper().encode(),
]
# what a field value can hold (RFC 9110 section 5.5), dense in what encoders escape
_KEY_ALPHABET = st.sampled_from(
    [*"abcXYZ019-_.~", *"\"\\/+=&<>'%!*() ", "\t", "\x7f", "\xe9", "\xff"]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=st.lists(_KEY_ALPHABET, min_size=8, max_size=40).map("".join),
    picks=st.lists(st.integers(0, len(ENCODERS) - 1), min_size=1, max_size=3),
    noise=st.binary(max_size=30),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_mask_is_the_same_however_the_body_is_cut(
    key: str, picks: list[int], noise: bytes, seed: int
) -> None:
    """A body holding the credential in a few forms, between noise, cut at random
    points (also inside a form): the streamed result is the whole body's, keeps its
    length, and the hold-back never reaches the longest form's length."""
    secret = key.encode("latin-1")
    body = noise
    for pick in picks:
        body += ENCODERS[pick](key) + noise
    whole, count = _masked(secret, [body])
    assert len(whole) == len(body)
    assert count >= 1
    mask = EchoMask(secret)
    relayed = 0
    out = []
    for chunk in _cut(body, random.Random(seed), 8):
        out.append(mask.feed(chunk))
        relayed += len(chunk)
        assert relayed - sum(map(len, out)) <= mask.longest - 1
    out.append(mask.flush())
    assert (b"".join(out), mask.masked) == (whole, count)


@settings(max_examples=200, deadline=None)
@given(
    key=st.lists(_KEY_ALPHABET, min_size=8, max_size=24).map("".join),
    at=st.integers(0, 200),
)
def test_a_form_cut_anywhere_is_masked(key: str, at: int) -> None:
    """One form cut in two at any byte: masked as if it came whole."""
    secret = key.encode("latin-1")
    for encode in ENCODERS:
        body = b"x=" + encode(key) + b";"
        cut = at % (len(body) + 1)
        whole = _masked(secret, [body])
        assert whole[1] >= 1, (encode(key), whole)
        assert _masked(secret, [body[:cut], body[cut:]]) == whole


def test_an_event_stream_chunk_is_relayed_at_once() -> None:
    """An event ends in ``\\n\\n``, which begins no form: relayed whole at once; a
    chunk ending in the first bytes of the base64 form holds those back, never more
    than the longest form less one byte, and hands them on with the next chunk."""
    mask = EchoMask(PLAIN)
    event = b'data: {"jsonrpc": "2.0", "id": 1}\n\n'
    assert mask.feed(event) == event
    core = base64.b64encode(PLAIN)[:30]
    assert mask.feed(b"data: " + core[:12]) == b"data: "
    assert mask.feed(b"zz\n\n") == core[:12] + b"zz\n\n"
    assert mask.masked == 0
    assert mask.feed(b"x" * 300 + PLAIN.hex().encode()[:-1]) == b"x" * 300
    assert mask.flush() == PLAIN.hex().encode()[:-1]
    assert mask.longest == 2 * len(PLAIN)  # its hex form


def test_the_mask_of_a_long_token_holds_back_a_bounded_tail() -> None:
    """An OAuth access token (a JWT, about 1 KiB): its forms are its base64 and hex
    encodings (its characters need no escaping); a body of 1 MiB that ends in the
    start of its hex form holds back only that start."""
    token = base64.urlsafe_b64encode(random.Random(3).randbytes(768)).rstrip(b"=")
    token = b"eyJhbGciOiJFUzI1NiJ9." + token
    mask = EchoMask(token)
    assert mask.longest == 2 * len(token)
    start = token.hex().encode()[: 2 * len(token) - 1]
    body = b"y" * (1 << 20) + start
    assert mask.feed(body) == b"y" * (1 << 20)
    assert mask.flush() == start
    _, masked = _masked(token, [b'{"t": "' + base64.b64encode(b"Bearer " + token) + b'"}'])
    assert masked == 1
