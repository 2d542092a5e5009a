"""What the client gets back from the HTTP gateway (review: "echo"), red-teamed against
real upstreams on loopback ports (the test upstream of ``test_gateway_http.py``, and
raw sockets under uvicorn as ``run()`` serves the gateway):

* an upstream that echoes the brokered credential in its response *body* (an echo or
  debug endpoint) never hands it to the agent: every occurrence is masked in place,
  as sent or encoded (base64 at any offset, hex, JSON, a query string, HTML; in a
  field, the field is dropped), also split across the reads it arrives in, the
  call's ``tool.call`` event says so
  (never the value), a counter counts it; a body in a content coding on such a route
  cannot be looked at and is refused (502);
* a response body in a transfer coding other than ``chunked`` alone is refused (502),
  never relayed still coded;
* ``Content-Length`` with whitespace around the digits (RFC 9110 section 5.5) is
  taken, not refused;
* a refusal of a request whose body the gateway did not read closes the connection
  instead of uvicorn reading (and discarding) the body to keep it open.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import html
import json
import random
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from tests.unit.test_gateway_http import API_KEY, Action, App, _problem
from tests.unit.test_gateway_http_hardening import (
    _apply,
    _auth,
    _get,
    _metrics,
    _rebuild,
    _run,
    _status,
)
from tests.unit.test_gateway_http_wire import _attack, _head

from agentiam.adapters.gateway.broker import Secret
from agentiam.adapters.gateway.echo_mask import EchoMask, content_coded
from agentiam.adapters.gateway.http_proxy import ListenerProtocol

PATH = "/v1/invoices/7"  # GET to the billing upstream, X-Api-Key brokered
PLAIN = "/v1/invoices/export"  # GET to the plain upstream: no credential
KEY = API_KEY.encode()
STARS = b"*" * len(KEY)
HEAD = b"HTTP/1.1 200 OK\r\n"
ROUTE = "upstream billing, route GET /v1/invoices/{id}"


@pytest.fixture
def app(tmp_path: Path) -> App:
    return App(tmp_path)


def _sized(body: bytes, fields: bytes = b"") -> bytes:
    return HEAD + fields + b"content-length: %d\r\n\r\n" % len(body) + body


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _outcome(app: App) -> dict[str, Any]:
    event = app.events()[-1]
    assert event["type"] == "tool.call"
    return event


# -- 1. the credential echoed in the body ---------------------------------------------------


def test_a_body_that_echoes_the_credential_is_masked_in_place(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """An echo endpoint answers with the request's fields: the agent used to read the
    upstream's API key in the body. Every occurrence is masked with as many bytes, so
    the Content-Length the upstream sent stays true; the outcome event counts the
    occurrences and a warning names the upstream and route, never the value."""
    body = b'{"headers": {"X-Api-Key": "' + KEY + b'"}, "raw": "x-api-key: ' + KEY + b'"}'
    app.upstream.reply = lambda _r: [_sized(body, b"content-type: application/json\r\n")]
    r = app.request("GET", PATH)
    assert r.status_code == 200
    assert r.content == body.replace(KEY, STARS)
    assert r.headers["content-length"] == str(len(body))
    outcome = _outcome(app)
    assert (outcome["outcome"], outcome["details"]["status"]) == ("success", 200)
    assert outcome["details"]["echoed"] == {"fields": 0, "body": 2}
    assert API_KEY not in str(app.events())
    assert API_KEY not in caplog.text
    assert f"{ROUTE}: the upstream echoed the brokered credential 2 times" in caplog.text
    assert 'agentiam_gateway_credential_echoes_total{where="body"} 1.0' in _metrics(app)


@pytest.mark.parametrize(
    "pieces",
    [
        [KEY[:1], KEY[1:]],
        [KEY[:16], KEY[16:]],
        [KEY[:-1], KEY[-1:]],
        [KEY[:1], KEY[1:-1], KEY[-1:]],
        [KEY[i : i + 1] for i in range(len(KEY))],  # one byte a read
    ],
    ids=["first-byte", "middle", "last-byte", "three", "bytewise"],
)
@pytest.mark.parametrize("framing", ["chunked", "length"])
def test_an_echo_split_across_reads_is_masked(app: App, pieces: list[bytes], framing: str) -> None:
    """The upstream writes the key in pieces, each in a read of its own (a pause
    between them): the gateway holds back a tail that may begin the key until the
    next read, so no piece reaches the client unmasked."""
    before, after = b"key=", b"; and again " + KEY
    parts = [before + pieces[0], *pieces[1:-1], pieces[-1] + after]
    actions: list[Action] = []
    if framing == "chunked":
        actions.append(HEAD + b"transfer-encoding: chunked\r\n\r\n")
        for part in parts:
            actions += [_chunk(part), 0.02]
        actions.append(b"0\r\n\r\n")
    else:
        actions.append(HEAD + b"content-length: %d\r\n\r\n" % sum(map(len, parts)))
        for part in parts:
            actions += [part, 0.02]
    app.upstream.reply = lambda _r: actions
    r = app.request("GET", PATH)
    assert r.status_code == 200
    assert r.content == before + STARS + b"; and again " + STARS
    assert KEY not in r.content
    assert _outcome(app)["details"]["echoed"] == {"fields": 0, "body": 2}


def test_an_echo_in_a_field_name_or_value_is_dropped_and_counted(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """A field whose *name* holds the key (an upstream that reflects request fields
    as response field names) went to the agent: only values were looked at. Both
    are dropped now; the log names the fields with the key masked out of a name."""
    fields = b"X-Echo: " + KEY + b"\r\nX-" + KEY + b": 1\r\nX-Safe: 1\r\n"
    app.upstream.reply = lambda _r: [_sized(b"ok", fields)]
    r = app.request("GET", PATH)
    assert (r.status_code, r.content) == (200, b"ok")
    assert API_KEY not in str(r.headers).lower()
    assert r.headers["x-safe"] == "1"
    assert _outcome(app)["details"]["echoed"] == {"fields": 2, "body": 0}
    assert API_KEY not in caplog.text
    assert "x-echo" in caplog.text
    assert "x-" + "*" * len(KEY) in caplog.text
    assert 'agentiam_gateway_credential_echoes_total{where="field"} 1.0' in _metrics(app)


def _b64_echoes(key: bytes) -> bytes:
    """A body that echoes ``key`` base64-encoded at each alignment (an echoed
    ``Authorization: Basic``, a dump of the request's header lines), in base64url,
    and as hex in both cases."""
    return json.dumps(
        {
            "basic": [base64.b64encode(b"u" * n + b"user:" + key).decode() for n in range(3)],
            "url": base64.urlsafe_b64encode(b"X-Api-Key: " + key).decode(),
            "hex": key.hex(),
            "HEX": key.hex().upper(),
        }
    ).encode()


def test_a_body_that_echoes_the_credential_encoded_is_masked(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """The upstream echoes the key base64-encoded (at each offset modulo 3, in both
    alphabets) and hex-encoded: the agent used to read it there (only the bytes as
    sent were looked for). Each is masked in place, with as many bytes, the
    Content-Length stays true, the event counts the 6 occurrences."""
    body = _b64_echoes(KEY)
    app.upstream.reply = lambda _r: [_sized(body, b"content-type: application/json\r\n")]
    r = app.request("GET", PATH)
    assert r.status_code == 200
    assert len(r.content) == len(body) == int(r.headers["content-length"])
    data = r.json()
    for blob in [*data["basic"], data["url"]]:
        decoded = base64.urlsafe_b64decode(blob.replace("*", "A").translate(_TO_URL) + "==")
        assert KEY[:16] not in decoded
        assert KEY[16:] not in decoded
    assert set(data["hex"]) == set(data["HEX"]) == {"*"}
    assert _outcome(app)["details"]["echoed"] == {"fields": 0, "body": 6}
    assert API_KEY not in caplog.text
    assert 'agentiam_gateway_credential_echoes_total{where="body"} 1.0' in _metrics(app)


_TO_URL = str.maketrans("+/", "-_")
# an API key with the characters the usual encoders escape (a field value's, RFC 9110
# section 5.5: the test upstream reads fields as UTF-8, so ASCII only)
SPECIAL = "k3y\"with\\back/slash+plus&amp<lt>gt'quote sp%ce-0123456789"


def _rotated(app: App, value: str) -> None:
    """The billing upstream's key rotated to ``value`` (the gateway injects it from the
    next call on)."""
    app.gateway.runtime.broker.store.rotate("billing-key", Secret(value))


def _escaping_echo(request: Any) -> bytes:
    """The key the upstream received, written back as encoders write it: in JSON
    (``ensure_ascii`` or not, and JSON in JSON), a query string, an HTML page."""
    key = request.header("x-api-key")
    return "\n".join(
        [
            json.dumps({"headers": {"x-api-key": key}}),
            json.dumps({"text": json.dumps({"x-api-key": key})}, ensure_ascii=False),
            "https://api.example/v1?" + urlencode({"api_key": key}),
            "/v1?key=" + quote(key, safe=""),
            f"<p>key: {html.escape(key)}</p>",
        ]
    ).encode()


@pytest.mark.parametrize("framing", ["whole", "bytewise"])
def test_a_body_that_echoes_the_credential_escaped_is_masked(app: App, framing: str) -> None:
    """A key holding ``"`` ``\\`` ``/`` ``+`` ``&`` ``<`` ``'`` and a space, echoed as
    JSON, JSON in JSON, a query string (``urlencode``, ``quote``) and HTML: none of
    these is the key as sent, and each reached the agent. All masked, also when the
    body comes in chunks of one byte (a pause between them); the JSON still parses."""
    _rotated(app, SPECIAL)

    def reply(request: Any) -> list[Action]:
        body = _escaping_echo(request)
        if framing == "whole":
            return [_sized(body)]
        actions: list[Action] = [HEAD + b"transfer-encoding: chunked\r\n\r\n"]
        for i in range(len(body)):
            actions += [_chunk(body[i : i + 1]), 0.001]
        return [*actions, b"0\r\n\r\n"]

    app.upstream.reply = reply
    r = app.request("GET", PATH)
    assert r.status_code == 200
    [sent] = app.upstream.requests
    assert sent.header("x-api-key") == SPECIAL  # the upstream got the key, and echoed it
    lines = r.content.split(b"\n")
    escaped = _escaping_echo(sent).split(b"\n")
    assert [len(line) for line in lines] == [len(line) for line in escaped]
    masked_json = json.loads(lines[0])["headers"]["x-api-key"]
    assert set(masked_json) == {"*"}
    assert set(json.loads(json.loads(lines[1])["text"])["x-api-key"]) == {"*"}
    for line in lines:
        assert b"k3y" not in line  # not one form left, not even in part
    assert _outcome(app)["details"]["echoed"] == {"fields": 0, "body": 5}


def test_an_encoded_echo_in_a_field_is_dropped(app: App, caplog: pytest.LogCaptureFixture) -> None:
    """A field whose value holds the key in base64 (an echoed ``Authorization:
    Basic``), one whose name holds it hex-encoded (in upper case, as a field name's
    case does not count): both dropped, the log names the second with the form
    masked."""
    basic = base64.b64encode(b"user:" + KEY)
    fields = b"X-Basic: Basic " + basic + b"\r\nX-" + KEY.hex().upper().encode() + b": 1\r\n"
    app.upstream.reply = lambda _r: [_sized(b"ok", fields + b"X-Safe: 1\r\n")]
    r = app.request("GET", PATH)
    assert (r.status_code, r.content) == (200, b"ok")
    assert set(r.headers) >= {"x-safe"}
    assert "x-basic" not in r.headers
    assert not any(KEY.hex() in name.lower() for name in r.headers)
    assert _outcome(app)["details"]["echoed"] == {"fields": 2, "body": 0}
    assert "x-basic" in caplog.text
    assert "x-" + "*" * (2 * len(KEY)) in caplog.text
    assert KEY.hex() not in caplog.text.lower()


def test_a_body_without_the_credential_is_relayed_as_it_came(app: App) -> None:
    """Parts of the key, a near miss and the key's first bytes at the end of the body
    are not the key: all relayed, and the event records no echo."""
    body = b"key=" + KEY[:-1] + b"! and " + KEY[1:] + b" then " + KEY[:10]
    app.upstream.reply = lambda _r: [_sized(body)]
    r = app.request("GET", PATH)
    assert (r.status_code, r.content) == (200, body)
    assert "echoed" not in _outcome(app)["details"]


def test_a_route_without_a_credential_is_not_looked_at(app: App) -> None:
    """No credential was sent to the plain upstream, so there is nothing to mask: its
    body (whatever it holds) and its content coding are relayed, and the client's
    Accept-Encoding reaches it."""
    compressed = gzip.compress(b"key=" + KEY)
    app.upstream.reply = lambda _r: [_sized(compressed, b"content-encoding: gzip\r\n")]
    r = app.request("GET", PLAIN, headers={"Accept-Encoding": "gzip"})
    assert r.status_code == 200
    assert r.headers["content-encoding"] == "gzip"
    assert r.content == b"key=" + KEY  # httpx decoded the gzip the upstream sent
    [sent] = app.upstream.requests
    assert sent.header("accept-encoding") == "gzip"
    assert "echoed" not in _outcome(app)["details"]


@pytest.mark.parametrize("coding", [b"gzip", b"br", b"identity, gzip", b"x-" + KEY])
def test_a_coded_body_on_a_credential_route_is_502_and_never_relayed(
    app: App, coding: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """The gateway asks for ``Accept-Encoding: identity`` on a route that injects a
    credential; an upstream that compresses all the same would hand the agent a
    body the gateway cannot look into (the key inside the gzip). It is not relayed:
    502, the call recorded as failed with the reason (the coding's name only if it
    is a registered one: an upstream's words could hold the key)."""
    compressed = gzip.compress(b'{"x-api-key": "' + KEY + b'"}')
    reply = _sized(compressed, b"content-encoding: " + coding + b"\r\n")
    app.upstream.reply = lambda _r: [reply]
    r = app.request("GET", PATH, headers={"Accept-Encoding": "gzip, br"})
    _problem(r, 502)
    assert compressed not in r.content
    [sent] = app.upstream.requests
    assert sent.header("accept-encoding") == "identity"
    outcome = _outcome(app)
    assert (outcome["outcome"], outcome["details"]["status"]) == ("failure", 502)
    assert "content coding" in outcome["reason"]
    assert API_KEY not in str(app.events())
    assert API_KEY not in caplog.text
    assert 'agentiam_gateway_calls_total{outcome="upstream_error"} 1.0' in _metrics(app)


def test_a_coding_named_on_an_answer_without_a_body_is_relayed(app: App) -> None:
    """A 304 names the coding its body would have had; there is no body to look at."""
    app.upstream.reply = lambda _r: [b"HTTP/1.1 304 Not Modified\r\ncontent-encoding: gzip\r\n\r\n"]
    r = app.request("GET", PATH)
    assert r.status_code == 304
    assert _outcome(app)["outcome"] == "success"


# -- the mask itself ----------------------------------------------------------------------


def _masked(secret: bytes, chunks: list[bytes]) -> tuple[bytes, int]:
    mask = EchoMask(secret)
    out = b"".join(mask.feed(c) for c in chunks) + mask.flush()
    return out, mask.masked


def test_the_mask_equals_a_whole_body_replace_for_any_split() -> None:
    """Random bodies dense in the key's bytes, cut at random points: the streamed
    result is the whole body's, and never holds the key."""
    rng = random.Random(7)
    for secret in (KEY, b"abcab", b"aaaa", b"ab", b"x"):
        for _ in range(300):
            alphabet = secret + b"*-"
            body = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 200)))
            body += secret * rng.randrange(0, 3)
            cuts = sorted(rng.sample(range(len(body) + 1), min(len(body) + 1, 6)))
            chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
            out, masked = _masked(secret, chunks)
            fill = b"#" if b"*" in secret else b"*"
            assert out == body.replace(secret, fill * len(secret)), (secret, chunks)
            assert masked == body.count(secret)
            assert secret not in out


def test_the_mask_holds_back_only_what_may_begin_the_secret() -> None:
    """An event stream's chunk ends in ``\\n\\n``: relayed at once, not held until the
    next chunk; a chunk ending in the key's first bytes holds those back, never more
    than the key's length less one."""
    mask = EchoMask(KEY)
    assert mask.feed(b"data: 1\n\n") == b"data: 1\n\n"
    assert mask.feed(b"data: 2 " + KEY[:5]) == b"data: 2 "
    assert mask.feed(KEY[5:-1]) == b""
    assert mask.feed(b"!") == KEY[:-1] + b"!"
    assert mask.feed(b"x" * 100 + KEY[:-1]) == b"x" * 100
    assert mask.flush() == KEY[:-1]
    assert mask.masked == 0


def test_the_fill_byte_is_never_one_of_the_secret() -> None:
    out, masked = _masked(b"a*", [b"a", b"*a*", b"*"])
    assert (out, masked) == (b"####*", 2)
    with pytest.raises(ValueError, match="empty"):
        EchoMask(b"")


@pytest.mark.parametrize(
    ("fields", "coding"),
    [
        ([], None),
        ([(b"content-encoding", b"identity")], None),
        ([(b"content-encoding", b"")], None),
        ([(b"content-encoding", b"GZIP")], "gzip"),
        ([(b"content-encoding", b"identity"), (b"content-encoding", b" br ")], "br"),
        ([(b"content-encoding", b"my-secret-coding")], "unregistered"),
    ],
)
def test_content_coded(fields: list[tuple[bytes, bytes]], coding: str | None) -> None:
    assert content_coded(fields) == coding


# -- 2. transfer codings of a response ------------------------------------------------------


def _coded(coding: bytes, body: bytes) -> list[Action]:
    """A response in ``Transfer-Encoding: coding``: chunked framing when ``chunked``
    is the last coding (llhttp's reading), else the bytes until the connection ends."""
    head = HEAD + b"transfer-encoding: " + coding + b"\r\n\r\n"
    if coding.split(b",")[-1].strip().lower() == b"chunked":
        return [head + _chunk(body) + b"0\r\n\r\n"]
    return [head + body, None]


@pytest.mark.parametrize(
    "coding", [b"gzip, chunked", b"chunked\t", b"identity", b"gzip", b"chunked, chunked"]
)
@pytest.mark.parametrize("path", [PATH, PLAIN])
def test_a_response_transfer_coding_other_than_chunked_alone_is_502(
    app: App, coding: bytes, path: str
) -> None:
    """``gzip, chunked``: llhttp removed the chunking and the client got gzip bytes with
    no field saying so (Transfer-Encoding is hop-by-hop). ``chunked`` and a tab:
    llhttp reads no chunking at all, and the chunk framing went out as the body.
    Now 502 (RFC 9112 section 6.1), nothing relayed, the call recorded as failed."""
    compressed = gzip.compress(b"the content")
    app.upstream.reply = lambda _r: _coded(coding, compressed)
    r = app.request("GET", path)
    _problem(r, 502)
    assert compressed not in r.content
    outcome = _outcome(app)
    assert (outcome["outcome"], outcome["details"]["status"]) == ("failure", 502)
    assert outcome["reason"] == "the upstream answered with a transfer coding other than chunked"


@pytest.mark.parametrize("coding", [b"chunked", b"Chunked", b"chunked  "])
def test_chunked_alone_is_relayed(app: App, coding: bytes) -> None:
    app.upstream.reply = lambda _r: _coded(coding, b"hello")
    r = app.request("GET", PATH)
    assert (r.status_code, r.content) == (200, b"hello")


# -- 3. Content-Length with whitespace -------------------------------------------------------


@pytest.mark.parametrize("value", [b" 3 ", b" 3\t", b"\t3", b" 3 \t ", b"3"])
def test_content_length_with_whitespace_around_the_digits_is_taken(app: App, value: bytes) -> None:
    """RFC 9110 section 5.5: a field value excludes the whitespace around it. llhttp
    reads ``3 `` as 3 (and frames the body so); the gateway refused it with 400."""
    [answer], upstream = _attack(app, _head(app) + b"Content-Length:" + value + b"\r\n\r\nabc")
    assert _status(answer) == 200
    [sent], cut = upstream.requests()
    assert (cut, sent.body, sent.header("content-length")) == (0, b"abc", "3")


@pytest.mark.parametrize("value", [b" 3 3", b" 0x3", b" 3;", b" ", b" 3\x0b"])
def test_content_length_is_still_only_digits(app: App, value: bytes) -> None:
    [answer], upstream = _attack(app, _head(app) + b"Content-Length:" + value + b"\r\n\r\nabc")
    assert _status(answer) == 400
    assert upstream.raw() == b""


# -- 4. a refusal does not read the body it refused ------------------------------------------

FLOOD = 32 * 1024 * 1024  # bytes of body the client offers after the head


async def _offer(port: int, head: bytes, *, limit: int = FLOOD) -> tuple[bytes, int, bool]:
    """Send ``head``, then up to ``limit`` bytes of body while reading the answer:
    the answer, the bytes of body written, and whether the gateway ended the
    connection (end of file or reset) before the client stopped writing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    answer = bytearray()
    ended = asyncio.Event()

    async def read() -> None:
        try:
            while data := await reader.read(65536):
                answer.extend(data)
        except ConnectionError:
            pass
        ended.set()

    reading = asyncio.create_task(read())
    written = 0
    block = b"a" * 65536
    try:
        while written < limit and not ended.is_set():
            writer.write(block)
            await asyncio.wait_for(writer.drain(), 5)
            written += len(block)
    except (ConnectionError, TimeoutError):
        pass
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ended.wait(), 2)
    closed = ended.is_set()
    reading.cancel()
    writer.close()
    return bytes(answer), written, closed


@pytest.fixture
def read_by_gateway(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The bytes the gateway's listener took off its connections (a counting spy on
    :meth:`ListenerProtocol.data_received`, which still does all it did)."""
    seen = [0]
    original = ListenerProtocol.data_received

    def counting(self: ListenerProtocol, data: bytes) -> None:
        seen[0] += len(data)
        original(self, data)

    monkeypatch.setattr(ListenerProtocol, "data_received", counting)
    return seen


@pytest.mark.parametrize(
    ("case", "status"),
    [("no-token", 401), ("no-route", 404), ("bad-path", 400), ("too-large", 413)],
)
def test_a_refusal_before_the_body_is_read_closes_the_connection(
    app: App, read_by_gateway: list[int], case: str, status: int
) -> None:
    """A head with a large Content-Length and no token (or no route, a refused path,
    a length past the limit): uvicorn used to read and discard the whole body after
    the refusal to keep the connection, so an anonymous client made the gateway read
    up to the body limit for nothing. Now the answer says ``Connection: close`` and
    the connection ends: the gateway reads little more than the head."""
    limit = 1 << 30 if case != "too-large" else 1 << 20
    _apply(app, _rebuild(app, max_request_bytes=limit))
    path = {"no-route": "/v1/orders", "bad-path": "/v1/a/../b"}.get(case, PATH)
    auth = b"" if case == "no-token" else _auth(app, "POST", path)
    head = b"POST %s HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n" % (
        path.encode(),
        auth,
        1 << 30,
    )
    answer, written, closed = _run(app, lambda port: _offer(port, head))
    assert closed
    assert written < FLOOD
    assert read_by_gateway[0] < 2 * 1024 * 1024, read_by_gateway[0]
    if answer:  # a reset can overtake the answer on the client's side
        assert _status(answer) == status
        assert b"\r\nconnection: close\r\n" in answer.lower()
    assert app.events()[-1]["details"]["status"] == status


def test_a_chunked_body_past_the_limit_closes_the_connection(
    app: App, read_by_gateway: list[int]
) -> None:
    """A chunked body is only found too large while it is forwarded: 413, and the
    connection ends instead of the rest of the body being read and discarded."""
    _apply(app, _rebuild(app, max_request_bytes=100_000))
    head = _head(app) + b"Transfer-Encoding: chunked\r\n\r\n" + b"10000\r\n"
    # one chunk of 64 KiB announced, then a huge one: the bytes keep coming
    answer, written, closed = _run(
        app, lambda port: _offer(port, head + b"a" * 65536 + b"\r\n40000000\r\n")
    )
    assert closed
    assert written < FLOOD
    assert read_by_gateway[0] < 4 * 1024 * 1024, read_by_gateway[0]
    if answer:
        assert _status(answer) == 413
        assert b"\r\nconnection: close\r\n" in answer.lower()


def test_a_refusal_without_a_body_keeps_the_connection(app: App) -> None:
    """A GET without a body (or with ``Content-Length: 0``) that is refused leaves
    nothing unread: the connection stays open for the next request, as before."""
    no_token = b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % PATH.encode()
    empty = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n" % PATH.encode()

    async def client(port: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        out = b""
        for request in (no_token, empty, _get(app, PATH)):  # one after the other
            writer.write(request)
            out += await asyncio.wait_for(reader.readuntil(b"}"), 2)  # a JSON body's end
        writer.close()
        return out

    app.upstream.reply = lambda _r: [_sized(b'{"ok": 1}')]
    answer = _run(app, client)
    assert answer.count(b"HTTP/1.1 401 ") == 2
    assert answer.count(b"HTTP/1.1 200 ") == 1
    assert b"connection: close" not in answer.lower()


def test_an_upstream_failure_before_the_body_is_read_closes_the_connection(
    app: App, read_by_gateway: list[int]
) -> None:
    """The upstream cannot be reached: nothing of the body was read (the gateway reads
    it only as it sends it), so the 502 ends the connection too."""
    _apply(app, _rebuild(app, max_request_bytes=1 << 30))
    app.upstream.down = True
    head = _head(app) + b"Content-Length: %d\r\n\r\n" % (1 << 30)
    answer, written, closed = _run(app, lambda port: _offer(port, head))
    assert closed
    assert written < FLOOD
    assert read_by_gateway[0] < 2 * 1024 * 1024, read_by_gateway[0]
    if answer:
        assert _status(answer) == 502
        assert b"\r\nconnection: close\r\n" in answer.lower()
    outcome = _outcome(app)
    assert (outcome["outcome"], outcome["details"]["status"]) == ("failure", 502)
    assert outcome["reason"].startswith("cannot connect to the upstream")
