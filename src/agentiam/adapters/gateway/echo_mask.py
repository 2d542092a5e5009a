"""Masking the brokered credential in a response an upstream echoes it in.

The gateways inject a credential the agent must never see (DESIGN.md, "data safety").
An upstream that reflects its request (an echo or debug endpoint, an error page that
quotes the ``Authorization`` field) would hand it to the agent in the body it
answers, often not as the bytes it was sent but *encoded*: inside a JSON string, a
query string, a base64 blob (an echoed ``Authorization: Basic ...``, a body that
base64s the request's headers), a hex dump. :class:`EchoForms` lists the forms of a
credential an upstream is likely to write (below), and :class:`EchoMask` replaces
every occurrence of any of them in a body relayed chunk by chunk with as many fill
bytes, so the body keeps its length: a ``Content-Length`` stays true and the chunk
framing is the gateway's own.

The forms of a credential ``s`` (bytes of the header field value, so ISO-8859-1,
RFC 9110 section 5.5; its text ``t`` is those bytes read as ISO-8859-1):

* **verbatim**: ``s``, and ``t`` in UTF-8 (differs when ``s`` has a byte over 0x7F);
* **JSON string** (RFC 8259 section 7): ``t`` as the common encoders escape it:
  ``\\"``, ``\\\\``, ``\\t`` (and the other short escapes); non-ASCII as UTF-8 or as
  ``\\u00e9`` / ``\\u00E9`` (Python's ``ensure_ascii``, PHP, .NET, Jackson); ``/`` as
  ``\\/`` (PHP); ``<>&`` as ``\\u003c`` (Go), ``<>&='`` (Gson), ``"&'+<>``` as
  ``\\u0022``... (.NET ``System.Text.Json``). Also JSON in JSON (a tool that returns
  ``json.dumps(headers)`` as the text of an MCP result): each of these escaped again,
  as Python's default and the UTF-8 encoders do;
* **percent-encoded** (RFC 3986 section 2.1): the bytes of ``s``, or of ``t`` in
  UTF-8, with upper- or lower-case hex digits, keeping the unreserved characters
  (section 2.3), or also ``/`` (Python's ``quote``), or ``!'()*``
  (``encodeURIComponent``); with a space as ``+`` (``quote_plus``, Go's
  ``QueryEscape``, the WHATWG ``application/x-www-form-urlencoded`` serializer);
* **HTML** character references: ``&amp; &lt; &gt;`` with ``&quot; &#x27;`` (Python's
  ``html.escape``) or ``&#34; &#39;`` (MarkupSafe, Jinja) or ``&#34; &#39; &#43;``
  (Go's ``html/template``);
* **base64** (RFC 4648 section 4) and **base64url** (section 5): the credential
  inside a longer base64 text is written differently depending on its offset in
  it modulo 3, so each of the three alignments has a form: the characters whose six
  bits all come from the credential (the "stable core"; the one or two characters at
  each end that also hold bits of the neighbouring bytes are not masked, so up to
  about 8 bits of the credential stay visible). The standard alphabet's ``/`` and
  ``+`` are also searched JSON-escaped (``\\/``, ``\\u002B``);
* **hex** (RFC 4648 section 8): lower and upper case.

The re-encodings into another alphabet (base64, hex) are searched only for a
credential of at least :data:`MIN_ENCODED_LENGTH` bytes: a shorter one's core is a
few characters any base64 or hex text may hold by chance (a false positive masks
innocent bytes). The escapings keep the credential's own characters and are always
searched. Not found: other encodings (UTF-16, quoted-printable, base64 broken into
lines, a compressed body: the HTTP gateway refuses a body in a content coding on the
routes it injects a credential for, :func:`content_coded`), and the credential split
or transformed any other way (reversed, decoded as base64).

An occurrence may be split across the chunks the body arrives in. The mask holds
back the end of a chunk only when it could begin a form (the longest tail that is a
proper prefix of one, at most the longest form's length - 1 bytes), and hands it on
with the next chunk or at the end: memory is bounded by that, and a chunk that
cannot end in a form's first bytes (an event stream's ``\\n\\n``) is relayed at
once, not held until the next one. The work per chunk is C-level searches: one
``bytes`` search per form for the usual chunk that holds none, a compiled
alternation of the forms only for one that holds some (and one ``bytes.find`` per
form over the last bytes for the tail).

Computing a credential's forms costs far more than masking one answer with them, so
they are computed once per credential value, and since each of them is the
credential, they are held exactly where the credential is: by the broker, with its own
copy (:meth:`~agentiam.adapters.gateway.broker.CredentialBroker.injection_for`), and
dropped with it (a rotation, a refreshed OAuth token, a secret that is gone), never in
a cache of this module's.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Iterator
from typing import Final, NamedTuple

__all__ = ["MIN_ENCODED_LENGTH", "EchoForms", "EchoMask", "content_coded"]

# a credential shorter than this (bytes) is not searched in base64 or hex: its core
# would be a handful of characters that base64 or hex text holds by chance
MIN_ENCODED_LENGTH: Final = 8
_FILLS = b"*#x0"  # the first of these the credential does not hold fills a masked form


# -- the forms ---------------------------------------------------------------------------


class _JsonStyle(NamedTuple):
    """How one family of JSON encoders writes a string's characters."""

    upper: bool  # hex digits of a \\u escape in upper case
    non_ascii: bool  # U+007F and past as \\u escapes (else as UTF-8)
    escaped: str = ""  # further characters written as \\u escapes
    slash: bool = False  # "/" written as "\\/"


_JSON_STYLES: Final = (
    _JsonStyle(upper=False, non_ascii=True),  # Python json (ensure_ascii), Jackson's lower
    _JsonStyle(upper=False, non_ascii=False),  # JSON.stringify, serde, pydantic, ensure_ascii=False
    _JsonStyle(upper=True, non_ascii=True),  # Jackson ESCAPE_NON_ASCII
    _JsonStyle(upper=False, non_ascii=False, escaped="<>&"),  # Go encoding/json
    _JsonStyle(upper=False, non_ascii=False, escaped="<>&='"),  # Gson (HTML-safe)
    _JsonStyle(upper=False, non_ascii=True, slash=True),  # PHP json_encode
    _JsonStyle(upper=True, non_ascii=True, escaped="\"&'+<>`"),  # .NET System.Text.Json
)
# the encoders of an outer JSON document around a string already JSON-escaped
_OUTER_JSON: Final = _JSON_STYLES[:2]
_JSON_SHORT: Final = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n",
                      "\r": "\\r", "\t": "\\t"}  # fmt: skip


def _json_string(text: str, style: _JsonStyle) -> str:
    """``text`` as the contents of a JSON string (RFC 8259 section 7) in ``style``."""
    out = []
    for ch in text:
        code = ord(ch)
        if (
            ch in style.escaped
            or (code < 0x20 and ch not in _JSON_SHORT)
            or (code >= 0x7F and style.non_ascii)
        ):
            out.append(f"\\u{code:04X}" if style.upper else f"\\u{code:04x}")
        elif ch in _JSON_SHORT:
            out.append(_JSON_SHORT[ch])
        elif ch == "/" and style.slash:
            out.append("\\/")
        else:
            out.append(ch)
    return "".join(out)


_ALNUM = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
# the bytes a percent-encoder keeps (RFC 3986 section 2.3's unreserved, and what some
# encoders add) and whether it writes a space as "+"
_PERCENT_STYLES: Final = (
    (_ALNUM + b"-._~", False),  # RFC 3986; Python quote(safe="")
    (_ALNUM + b"-._~", True),  # Python quote_plus, urlencode; Go url.QueryEscape
    (_ALNUM + b"-._~/", False),  # Python quote()
    (_ALNUM + b"-._~!'()*", False),  # JavaScript encodeURIComponent
    (_ALNUM + b"*-._", True),  # WHATWG application/x-www-form-urlencoded
)


def _percent(data: bytes, keep: bytes, plus: bool, upper: bool) -> bytes:
    """``data`` percent-encoded (RFC 3986 section 2.1), keeping the bytes ``keep``."""
    pattern = "%{:02X}" if upper else "%{:02x}"
    return b"".join(
        bytes([b]) if b in keep else b"+" if plus and b == 0x20 else pattern.format(b).encode()
        for b in data
    )


_HTML_STYLES: Final = (
    {"&": "&amp;", "<": "&lt;", ">": "&gt;"},  # element content
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;"},  # html.escape
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&#34;", "'": "&#39;"},  # MarkupSafe
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&#34;", "'": "&#39;", "+": "&#43;"},  # Go
)


_URLSAFE: Final = bytes.maketrans(b"+/", b"-_")  # base64 to base64url


def _base64_cores(data: bytes) -> Iterator[bytes]:
    """The stable cores of ``data`` in base64 (RFC 4648 section 4) at each of the three
    alignments: ``data`` preceded by ``a`` bytes modulo 3 starts at bit ``8a`` of a
    group, and the characters ``k`` with ``6k >= 8a`` and ``6k + 6 <= 8a + 8n``
    depend on its bytes only."""
    for a in range(3):
        encoded = base64.b64encode(bytes(a) + data + bytes(2))
        yield encoded[(8 * a + 5) // 6 : (8 * a + 8 * len(data)) // 6]


def _forms(secret: bytes) -> Iterator[bytes]:
    """Every form of ``secret`` (see the module docstring), with repeats."""
    text = secret.decode("latin-1")
    sources = (secret, text.encode("utf-8"))  # the same unless a byte is over 0x7F
    yield from sources
    for style in _JSON_STYLES:
        inner = _json_string(text, style)
        yield inner.encode("utf-8")
        for outer in _OUTER_JSON:
            yield _json_string(inner, outer).encode("utf-8")
    for source in sources:
        for keep, plus in _PERCENT_STYLES:
            for upper in (True, False):
                yield _percent(source, keep, plus, upper)
    for entities in _HTML_STYLES:
        yield "".join(entities.get(ch, ch) for ch in text).encode("utf-8")
    if len(secret) < MIN_ENCODED_LENGTH:
        return
    for source in sources:
        for core in _base64_cores(source):
            yield core
            yield core.translate(_URLSAFE)  # RFC 4648 section 5
            yield core.replace(b"/", b"\\/")  # in a JSON string by PHP
            yield core.replace(b"+", b"\\u002B")  # in a JSON string by .NET
        yield source.hex().encode("ascii")
        yield source.hex().upper().encode("ascii")


class EchoForms:
    """The forms of one credential an upstream may echo it in (module docstring),
    longest first, each once; searched as a whole (:meth:`holds`, :meth:`mask`) or in
    a stream (:class:`EchoMask`). Made once per credential by whoever holds the
    credential (the broker) and held no longer than it (module docstring)."""

    __slots__ = ("_any_case", "_firsts", "fill", "forms", "pattern")

    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise ValueError("an empty secret cannot be masked")
        self.forms: tuple[bytes, ...] = tuple(
            sorted(dict.fromkeys(_forms(secret)), key=len, reverse=True)
        )
        # a regular expression's alternation takes the first alternative that matches
        # at a position: the longest form, when one holds another
        alternation = b"|".join(re.escape(form) for form in self.forms)
        self.pattern = re.compile(alternation)
        self._any_case = re.compile(alternation, re.IGNORECASE)  # ASCII folding (bytes)
        self._firsts = tuple((form, form[:1]) for form in self.forms)
        self.fill = next((bytes([b]) for b in _FILLS if b not in secret), b"*")

    @property
    def longest(self) -> int:
        """The length of the longest form."""
        return len(self.forms[0])

    def __repr__(self) -> str:  # never the forms: each one is the credential
        return f"EchoForms({len(self.forms)} forms)"

    def seen_in(self, data: bytes) -> bool:
        """Whether ``data`` holds a form: one ``bytes`` search per form (faster than
        the alternation, which tries every form at every position)."""
        return any(form in data for form in self.forms)

    def holds(self, data: bytes, *, any_case: bool = False) -> bool:
        """Whether ``data`` holds a form (in any ASCII case with ``any_case``: a field
        name, RFC 9110 section 5.1)."""
        if any_case:
            return self._any_case.search(data) is not None
        return self.seen_in(data)

    def mask(self, data: bytes, *, any_case: bool = False) -> tuple[bytes, int]:
        """``data`` with every form replaced by as many fill bytes, and how many were."""
        pattern = self._any_case if any_case else self.pattern
        return pattern.subn(lambda m: self.fill * (m.end() - m.start()), data)

    def tail(self, data: bytes, start: int = 0) -> int:
        """Where the longest tail of ``data`` from ``start`` on that is a proper prefix
        of a form begins; ``len(data)`` if there is none. Only positions holding a
        form's first byte, within its length of the end, are tried."""
        end = len(data)
        best = end
        view = memoryview(data)
        for form, first in self._firsts:
            at = data.find(first, max(start, end - len(form) + 1), best)
            while at != -1:
                if form.startswith(view[at:]):
                    best = at
                    break
                at = data.find(first, at + 1, best)
        return best


class EchoMask:
    """Streams a body with every occurrence of a form of a credential (``forms``, its
    :class:`EchoForms`) replaced by as many fill bytes (``*``, or another byte the
    credential does not hold). :meth:`feed` each chunk in order and relay what it
    returns, then relay :meth:`flush`. ``masked`` counts the occurrences, whatever
    their form. ``forms`` may also be the credential's bytes: its forms are then
    computed for this mask alone (a gateway passes the broker's, computed once).

    The result is the same as masking the whole body at once, however it is cut:
    a match is taken only where the bytes seen decide it (before the held tail), the
    held tail is kept unmasked and searched again with the next chunk."""

    __slots__ = ("_forms", "_held", "masked")

    def __init__(self, forms: EchoForms | bytes) -> None:
        self._forms = forms if isinstance(forms, EchoForms) else EchoForms(forms)
        self._held = b""
        self.masked = 0

    @property
    def longest(self) -> int:
        """The length of the longest form: at most that less one byte is held back."""
        return self._forms.longest

    def feed(self, chunk: bytes) -> bytes:
        """The bytes of the body up to ``chunk`` that can be relayed, masked; a tail
        that may begin a form is held back for the next chunk."""
        data = self._held + chunk if self._held else chunk
        out, self._held = self._scan(data, self._forms.tail(data))
        return out

    def flush(self) -> bytes:
        """What is still held back at the end of the body, masked (too short to be
        the form it began, but it may hold a shorter one)."""
        held, self._held = self._held, b""
        out, _ = self._scan(held, len(held))
        return out

    def _scan(self, data: bytes, cut: int) -> tuple[bytes, bytes]:
        """``data`` up to ``cut`` (moved past a match that ends beyond it) masked, and
        the rest, unmasked."""
        forms = self._forms
        if not forms.seen_in(data):
            return (data, b"") if cut == len(data) else (data[:cut], data[cut:])
        pieces: list[bytes] = []
        done = 0
        for match in forms.pattern.finditer(data):
            start, end = match.span()
            if start >= cut:  # may be part of a longer form the next chunk completes
                break
            pieces += (data[done:start], forms.fill * (end - start))
            done = end
            self.masked += 1
            if end > cut:
                cut = forms.tail(data, end)
        pieces.append(data[done:cut])
        return b"".join(pieces), data[cut:]


# the HTTP Content Coding Registry's names: an upstream's other words are never
# repeated in a log line or the audit trail (one could hold the echoed credential)
_REGISTERED = frozenset(
    {"aes128gcm", "br", "compress", "dcb", "dcz", "deflate", "exi", "gzip",
     "pack200-gzip", "x-compress", "x-gzip", "zstd"}
)  # fmt: skip


def content_coded(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The content coding of a message (RFC 9110 section 8.4.1) if it has one other
    than ``identity``: its registered name (the first listed), or
    ``"unregistered"``; None for none. ``headers``: lower-case field names."""
    for name, value in headers:
        if name != b"content-encoding":
            continue
        for token in value.split(b","):
            coding = token.strip(b" \t").lower().decode("latin-1")
            if coding not in ("", "identity"):
                return coding if coding in _REGISTERED else "unregistered"
    return None
