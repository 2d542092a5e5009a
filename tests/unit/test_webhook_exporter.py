"""The signed webhook exporter against a real HTTP receiver on 127.0.0.1 that verifies
every request with ``webhook_signature.verify``, as a customer's receiver would; the
signature scheme against the Standard Webhooks specification's published vector and
against ``hmac`` directly; and the exporter's refusals (SSRF vetting, plain http,
secrets in loose files, secrets in error messages)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tests.support.audit_events import stored_event
from tests.support.network import FakeResolver, Handler, resolver_for, serve_http
from tests.support.tls import ServerPki, server_context, server_pki

from agentiam.adapters.exporters import webhook
from agentiam.adapters.exporters.webhook import WebhookDeliveryError, WebhookExporter
from agentiam.adapters.outbound import OutboundError, OutboundRefused
from agentiam.core.audit.webhook_signature import (
    InvalidSecret,
    MalformedHeaders,
    NoMatchingSignature,
    SignatureError,
    TimestampOutOfTolerance,
    WebhookSecret,
    sign,
    signature_headers,
    verify,
)

SECRET = WebhookSecret.parse("whsec_" + base64.b64encode(b"k" * 32).decode())
SECRET_TEXT = SECRET.serialize()
OTHER = WebhookSecret.parse("whsec_" + base64.b64encode(b"o" * 32).decode())


def _event(i: int) -> dict[str, Any]:
    return stored_event(details={"n": i})


def _batch(start: int, n: int) -> list[tuple[int, dict[str, Any]]]:
    return [(i, _event(i)) for i in range(start, start + n)]


# -- a real receiver -------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: str | None  # None when verify() passed, else the error's class name


@dataclass
class Receiver:
    secrets: list[WebhookSecret]
    status: int = 204
    answer: bytes = b""
    location: str | None = None
    log: list[Received] = field(default_factory=list)
    connections: set[tuple[str, int]] = field(default_factory=set)


def _handler(receiver: Receiver) -> type[Handler]:
    class Receiving(Handler):
        def do_POST(self) -> None:
            headers, body = self.request_body()
            try:
                verify(receiver.secrets, headers, body)
                verified = None
            except SignatureError as exc:
                verified = type(exc).__name__
            receiver.connections.add(self.client_address)
            receiver.log.append(Received(self.path, headers, body, verified))
            location = {"Location": receiver.location} if receiver.location else {}
            self.answer(receiver.status if verified is None else 401, receiver.answer, location)

    return Receiving


@dataclass
class Server:
    receiver: Receiver
    port: int

    def url(self, path: str = "/hook", host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"


@pytest.fixture
def server() -> Iterator[Server]:
    receiver = Receiver([SECRET])
    with serve_http(_handler(receiver)) as port:
        yield Server(receiver, port)


def _exporter(url: str, **kwargs: Any) -> WebhookExporter:
    kwargs.setdefault("allow_private_network", True)
    kwargs.setdefault("timeout", 5.0)
    kwargs.setdefault("connect_timeout", 2.0)
    kwargs.setdefault("read_timeout", 2.0)
    return WebhookExporter("siem-hook", url, [SECRET], **kwargs)


# -- delivery --------------------------------------------------------------------------


def test_delivers_a_signed_batch_the_receiver_verifies(server: Server) -> None:
    sink = _exporter(server.url("/hook?tenant=a"), headers={"X-Source": "agentiam-test"})
    batch = _batch(7, 3)
    sink.deliver(batch)
    [got] = server.receiver.log
    assert got.verified is None  # the receiver's verify() accepted it
    assert got.path == "/hook?tenant=a"
    assert got.headers["content-type"] == "application/json"
    assert got.headers["x-source"] == "agentiam-test"
    assert got.headers["host"] == f"127.0.0.1:{server.port}"
    body = json.loads(got.body)
    assert body == {"events": [{"log_index": i, "event": e} for i, e in batch]}
    assert got.headers["webhook-id"] == sink.message_id(7, 9)
    assert got.headers["webhook-signature"].startswith("v1,")
    sink.close()


def test_a_redelivered_batch_has_the_same_id_and_a_fresh_signature(server: Server) -> None:
    now = float(int(time.time()))
    clock = iter([now, now + 1]).__next__  # the second attempt, a second later
    sink = _exporter(server.url(), clock=clock)
    batch = _batch(0, 2)
    sink.deliver(batch)
    sink.deliver(batch)  # the runner retries the whole batch (at least once)
    first, second = server.receiver.log
    assert first.verified is None
    assert second.verified is None
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body
    assert first.headers["webhook-timestamp"] != second.headers["webhook-timestamp"]
    assert first.headers["webhook-signature"] != second.headers["webhook-signature"]
    # another range, another id; another exporter name, another id
    assert sink.message_id(0, 2) != sink.message_id(0, 1)
    other = WebhookExporter("other", server.url(), [SECRET], allow_private_network=True)
    assert other.message_id(0, 1) != sink.message_id(0, 1)
    assert "." not in sink.message_id(0, 1)  # the spec forbids '.' in ids
    sink.close()
    other.close()


def test_keeps_the_connection_open_between_batches(server: Server) -> None:
    sink = _exporter(server.url())
    for start in range(0, 6, 2):
        sink.deliver(_batch(start, 2))
    assert len(server.receiver.log) == 3
    assert len(server.receiver.connections) == 1  # one TCP connection, kept alive
    sink.close()


def test_a_big_batch_is_split_in_order_under_max_body_bytes(server: Server) -> None:
    sink = _exporter(server.url(), max_body_bytes=4096)
    batch = _batch(100, 20)
    sink.deliver(batch)
    log = server.receiver.log
    assert len(log) > 1
    indexes = []
    for got in log:
        assert got.verified is None
        assert len(got.body) <= 4096
        items = json.loads(got.body)["events"]
        first, last = items[0]["log_index"], items[-1]["log_index"]
        assert got.headers["webhook-id"] == sink.message_id(first, last)
        indexes += [item["log_index"] for item in items]
    assert indexes == list(range(100, 120))
    # the same batch splits the same way: every request keeps its id
    ids = [got.headers["webhook-id"] for got in log]
    sink.deliver(batch)
    assert [got.headers["webhook-id"] for got in log[len(ids) :]] == ids
    sink.close()


def test_an_entry_over_max_body_bytes_is_sent_as_a_stub(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """An entry that can never fit would hold the exporter on it for good: it goes as a
    stub saying what it was, and the entries around it are delivered."""
    sink = _exporter(server.url(), max_body_bytes=1024)
    big = _event(2)
    big["details"] = {"pad": "x" * 2000}
    batch = [(1, _event(1)), (2, big), (3, _event(3))]
    with caplog.at_level("WARNING"):
        sink.deliver(batch)
    items = [item for got in server.receiver.log for item in json.loads(got.body)["events"]]
    assert [item["log_index"] for item in items] == [1, 2, 3]
    stub = items[1]
    full = len(json.dumps({"event": big, "log_index": 2}, separators=(",", ":")))
    assert stub == {
        "log_index": 2,
        "event_id": big["event_id"],
        "type": "agent.created",
        "truncated": True,
        "original_size": stub["original_size"],
    }
    assert abs(stub["original_size"] - full) < 64
    assert items[0]["event"] == batch[0][1]
    assert all(got.verified is None and len(got.body) <= 1024 for got in server.receiver.log)
    assert sink.truncated == 1
    assert "entry 2 is" in caplog.text
    sink.close()


def test_a_stub_never_repeats_long_or_odd_ids(server: Server) -> None:
    sink = _exporter(server.url(), max_body_bytes=1024)
    big = _event(1)
    big["details"] = {"pad": "x" * 2000}
    big["event_id"] = "\U0001d11e" * 128  # 1,536 octets once escaped
    big["type"] = ["not", "text"]
    sink.deliver([(1, big)])
    [got] = server.receiver.log
    [stub] = json.loads(got.body)["events"]
    assert stub == {"log_index": 1, "truncated": True, "original_size": stub["original_size"]}
    sink.close()


def test_a_text_format_sends_items_as_strings(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentiam.core.audit import formats

    monkeypatch.setitem(formats.FORMATS, "cef", lambda i, e: f"CEF:0|AgentIAM|{i}|{e['type']}")
    sink = _exporter(server.url(), format="cef")
    sink.deliver(_batch(3, 2))
    items = json.loads(server.receiver.log[0].body)["events"]
    assert items == ["CEF:0|AgentIAM|3|agent.created", "CEF:0|AgentIAM|4|agent.created"]
    sink.close()


def test_signs_with_every_secret_during_a_rotation(server: Server) -> None:
    server.receiver.secrets = [OTHER]  # the receiver already has only the new secret
    sink = WebhookExporter("rotating", server.url(), [SECRET, OTHER], allow_private_network=True)
    sink.deliver(_batch(0, 1))
    [got] = server.receiver.log
    assert got.verified is None
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    sink.close()


# -- failures --------------------------------------------------------------------------


def test_a_500_raises_with_the_status_and_reason_only(server: Server) -> None:
    """A receiver's reply may echo what it was sent (a token in a header): the error
    keeps the status code and reason phrase, never the body."""
    server.receiver.status = 500
    server.receiver.answer = b"database \x1b[31mdown\x00 Bearer sekrit " + b"A" * 5000
    sink = _exporter(server.url())
    with pytest.raises(WebhookDeliveryError) as caught:
        sink.deliver(_batch(0, 1))
    message = str(caught.value)
    assert "HTTP 500 Internal Server Error" in message
    assert "database" not in message
    assert "sekrit" not in message
    assert "\x1b" not in message
    assert len(message) < 300
    assert sink.message_id(0, 0) in message
    sink.close()


def test_a_reason_phrase_is_cleaned_and_cut(server: Server) -> None:
    class Odd(Handler):
        def do_POST(self) -> None:
            self.request_body()
            self.send_response(418, "Teapot\x7f\u00e9 " + "y" * 300)
            self.send_header("Content-Length", "0")
            self.end_headers()

    with serve_http(Odd) as port:
        sink = _exporter(f"http://127.0.0.1:{port}/hook")
        with pytest.raises(WebhookDeliveryError) as caught:
            sink.deliver(_batch(0, 1))
        sink.close()
    message = str(caught.value)
    assert "HTTP 418 Teapot" in message
    assert "y" * 61 not in message
    assert all(" " <= ch <= "~" for ch in message)


def test_a_redirect_is_not_followed(server: Server) -> None:
    server.receiver.status = 307
    server.receiver.location = server.url("/elsewhere")
    sink = _exporter(server.url())
    with pytest.raises(WebhookDeliveryError, match=r"HTTP 307, a redirect: not followed"):
        sink.deliver(_batch(0, 1))
    assert [got.path for got in server.receiver.log] == ["/hook"]  # nothing sent after it
    sink.close()


def test_a_receiver_that_is_down_raises() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        sink = _exporter(f"http://127.0.0.1:{port}/hook")
        with pytest.raises(WebhookDeliveryError, match="cannot connect"):
            sink.deliver(_batch(0, 1))


def test_a_receiver_that_never_answers_times_out_within_the_deadline() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)  # accepts the connection, never answers
        port = s.getsockname()[1]
        sink = _exporter(
            f"http://127.0.0.1:{port}/hook", timeout=1.0, connect_timeout=1.0, read_timeout=1.0
        )
        started = time.monotonic()
        with pytest.raises(WebhookDeliveryError, match="timed out"):
            sink.deliver(_batch(0, 1))
        assert time.monotonic() - started < 3


# -- signature verification refuses what it must ---------------------------------------


def _signed(body: bytes, secret: WebhookSecret = SECRET, ts: int = 1_700_000_000) -> dict[str, str]:
    return signature_headers(secret, "agentiam-abc-1-2", body, timestamp=ts)


def test_verify_refuses_a_tampered_body() -> None:
    headers = _signed(b'{"events":[1]}')
    verify(SECRET, headers, b'{"events":[1]}', now=1_700_000_000)
    with pytest.raises(NoMatchingSignature):
        verify(SECRET, headers, b'{"events":[2]}', now=1_700_000_000)


def test_verify_refuses_a_wrong_secret() -> None:
    headers = _signed(b"{}")
    with pytest.raises(NoMatchingSignature):
        verify(OTHER, headers, b"{}", now=1_700_000_000)
    verify([OTHER, SECRET], headers, b"{}", now=1_700_000_000)  # a receiver mid-rotation


def test_verify_refuses_a_stale_or_future_timestamp() -> None:
    headers = _signed(b"{}", ts=1_700_000_000)
    verify(SECRET, headers, b"{}", now=1_700_000_000 + 300)  # the edge of the window
    with pytest.raises(TimestampOutOfTolerance, match="old"):
        verify(SECRET, headers, b"{}", now=1_700_000_000 + 301)
    with pytest.raises(TimestampOutOfTolerance, match="future"):
        verify(SECRET, headers, b"{}", now=1_700_000_000 - 301)
    verify(SECRET, headers, b"{}", now=1_700_000_000 + 3000, tolerance=3600)


def test_verify_refuses_a_changed_id_or_timestamp() -> None:
    headers = _signed(b"{}")
    with pytest.raises(NoMatchingSignature):
        verify(SECRET, {**headers, "webhook-id": "agentiam-abc-1-3"}, b"{}", now=1_700_000_000)
    with pytest.raises(NoMatchingSignature):
        verify(SECRET, {**headers, "webhook-timestamp": "1700000001"}, b"{}", now=1_700_000_000)


def test_verify_refuses_missing_or_malformed_headers() -> None:
    headers = _signed(b"{}")
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        partial = {k: v for k, v in headers.items() if k != name}
        with pytest.raises(MalformedHeaders, match=name):
            verify(SECRET, partial, b"{}", now=1_700_000_000)
    with pytest.raises(MalformedHeaders):
        verify(SECRET, {**headers, "webhook-timestamp": "1.7e9"}, b"{}", now=1_700_000_000)
    with pytest.raises(MalformedHeaders):
        verify(SECRET, {**headers, "webhook-id": "a.b"}, b"{}", now=1_700_000_000)
    # a v1a (asymmetric) or garbled entry is skipped, not an error by itself
    sig = headers["webhook-signature"]
    garbled = {**headers, "webhook-signature": f"v1a,AAAA v1,!!! {sig}"}
    verify(SECRET, garbled, b"{}", now=1_700_000_000)
    with pytest.raises(NoMatchingSignature):
        verify(SECRET, {**headers, "webhook-signature": "v1a,AAAA"}, b"{}", now=1_700_000_000)


def test_headers_are_matched_case_insensitively() -> None:
    headers = {k.upper(): v for k, v in _signed(b"{}").items()}
    verify(SECRET, headers, b"{}", now=1_700_000_000)


# -- the scheme is the Standard Webhooks one -------------------------------------------


def test_the_published_standard_webhooks_vector() -> None:
    """The example of the Standard Webhooks reference implementations (and their
    tests): whoever uses any Standard Webhooks library verifies what we send."""
    secret = WebhookSecret.parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    msg_id, ts, body = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign(secret, msg_id, ts, body) == expected
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": expected}
    verify(secret, headers, body, now=ts)
    # the prefix is optional, as in the reference implementations
    assert sign(WebhookSecret.parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), msg_id, ts, body) == (
        expected
    )


def test_sign_is_hmac_sha256_over_id_timestamp_body() -> None:
    key = os.urandom(32)
    secret = WebhookSecret(key)
    body = '{"é": 1}'
    mac = hmac.new(key, f"m_1.42.{body}".encode(), hashlib.sha256).digest()
    assert sign(secret, "m_1", 42, body) == "v1," + base64.b64encode(mac).decode()
    assert secret.serialize() == "whsec_" + base64.b64encode(key).decode()
    assert WebhookSecret.parse(secret.serialize()) == secret
    assert base64.b64encode(key).decode() not in repr(secret)


def test_secrets_must_be_24_to_64_bytes_of_base64() -> None:
    for bad in ("", "whsec_", "whsec_" + base64.b64encode(b"s" * 23).decode(), "whsec_$$$$"):
        with pytest.raises(InvalidSecret):
            WebhookSecret.parse(bad)
    with pytest.raises(InvalidSecret):
        WebhookSecret(b"x" * 65)
    WebhookSecret.parse("whsec_" + base64.b64encode(b"s" * 64).decode())
    assert len(WebhookSecret.generate().key) == 32
    with pytest.raises(ValueError, match=r"never '\.'"):
        sign(SECRET, "a.b", 1, b"")


# -- refusals --------------------------------------------------------------------------


def _config(**entry: Any) -> dict[str, Any]:
    return {"secret_env": "AGENTIAM_TEST_HOOK_SECRET", **entry}


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AGENTIAM_TEST_HOOK_SECRET", SECRET_TEXT)
    return SECRET_TEXT


@pytest.mark.usefixtures("secret_env")
def test_loopback_metadata_and_private_addresses_are_refused_without_the_flag() -> None:
    for url in (
        "https://127.0.0.1/hook",
        "https://169.254.169.254/latest",
        "https://10.1.2.3/hook",
        "https://[::1]/hook",
    ):
        with pytest.raises(ValueError, match="url refused"):
            webhook.from_config("h", _config(url=url))
    # with the flag, loopback is allowed (tests, on-premises receivers)
    webhook.from_config("h", _config(url="https://127.0.0.1/hook", allow_private_network=True))


def test_a_name_resolving_to_loopback_is_refused_at_delivery(server: Server) -> None:
    resolver = resolver_for("hooks.example.com", "127.0.0.1")
    sink = WebhookExporter(
        "h", f"https://hooks.example.com:{server.port}/", [SECRET], resolver=resolver
    )
    with pytest.raises(OutboundRefused, match="loopback"):
        sink.deliver(_batch(0, 1))
    assert server.receiver.log == []


@pytest.mark.usefixtures("secret_env")
def test_plain_http_is_refused_without_the_flag() -> None:
    with pytest.raises(ValueError, match="only https"):
        webhook.from_config("h", _config(url="http://hooks.example.com/hook"))
    with pytest.raises(ValueError, match="user information"):
        webhook.from_config("h", _config(url="https://u:p@hooks.example.com/hook"))
    sink = webhook.from_config("h", _config(url="https://hooks.example.com/hook"))
    assert sink.kind == "webhook"
    assert sink.name == "h"


def test_a_secret_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "hook.secret"
    path.write_text(SECRET_TEXT + "\n")
    os.chmod(path, 0o644)
    entry = {"url": "https://hooks.example.com/", "secret_file": str(path)}
    with pytest.raises(ValueError, match="mode 0644") as caught:
        webhook.from_config("h", entry)
    assert SECRET_TEXT not in str(caught.value)
    os.chmod(path, 0o640)
    with pytest.raises(ValueError, match="group and others"):
        webhook.from_config("h", entry)
    os.chmod(path, 0o600)
    assert webhook.from_config("h", entry).name == "h"


def test_secret_configuration_is_strict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = "https://hooks.example.com/"
    with pytest.raises(ValueError, match="exactly one of secret_env"):
        webhook.from_config("h", {"url": url})
    with pytest.raises(ValueError, match="exactly one of secret_env"):
        webhook.from_config("h", {"url": url, "secret_env": "A", "secret_file": "/x"})
    monkeypatch.delenv("AGENTIAM_TEST_HOOK_SECRET", raising=False)
    with pytest.raises(ValueError, match="is not set"):
        webhook.from_config("h", _config(url=url))
    short = "whsec_" + base64.b64encode(b"s" * 16).decode()
    monkeypatch.setenv("AGENTIAM_TEST_HOOK_SECRET", short)
    with pytest.raises(ValueError, match="24-64 random bytes") as caught:
        webhook.from_config("h", _config(url=url))
    assert short not in str(caught.value)
    monkeypatch.setenv("AGENTIAM_TEST_HOOK_SECRET", "whsec_not-base64-at-all!")
    with pytest.raises(ValueError, match="base64") as caught:
        webhook.from_config("h", _config(url=url))
    assert "at-all" not in str(caught.value)
    with pytest.raises(ValueError, match="absolute"):
        webhook.from_config("h", {"url": url, "secret_file": "relative/path"})
    with pytest.raises(ValueError, match="cannot be read"):
        webhook.from_config("h", {"url": url, "secret_file": str(tmp_path / "missing")})


@pytest.mark.usefixtures("secret_env")
def test_other_settings_are_validated() -> None:
    url = "https://hooks.example.com/"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"format": "xml"}, "unknown format"),
        ({"timeout": 0}, "timeout must be"),
        ({"timeout": True}, "timeout must be"),
        ({"timeout": 5, "read_timeout": 10}, "must not exceed timeout"),
        ({"max_body_bytes": 10}, "max_body_bytes"),
        ({"allow_private_network": "yes"}, "true or false"),
        ({"ca_file": "ca.pem"}, "absolute"),
        ({"ca_file": "/nonexistent/ca.pem"}, "ca_file"),
        ({"headers": {"Authorization": "Bearer x"}}, "not allowed"),
        ({"headers": {"Host": "evil"}}, "not allowed"),
        ({"headers": {"webhook-id": "x"}}, "not allowed"),
        ({"headers": {"X-A": "line\r\nbreak"}}, "printable"),
        ({"headers": {"bad name": "x"}}, "field name"),
        ({"headers": ["X-A"]}, "mapping"),
        ({"url": 5}, "url must be a string"),
        ({"url": "ftp://hooks.example.com/"}, "url refused"),
    ]
    for extra, message in cases:
        with pytest.raises(ValueError, match=message):
            webhook.from_config("h", _config(**{"url": url, **extra}))
    assert {"url", "secret_env", "secret_file", "headers", "ca_file"} <= webhook.SETTINGS


def test_error_messages_never_contain_the_secret(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTIAM_TEST_HOOK_SECRET", SECRET_TEXT)
    key_b64 = SECRET_TEXT.removeprefix("whsec_")
    sink = webhook.from_config("h", _config(url=server.url(), allow_private_network=True))
    messages = [repr(sink)]
    server.receiver.status = 500
    server.receiver.answer = b"nope"
    with pytest.raises(OutboundError) as caught:
        sink.deliver(_batch(0, 1))
    messages.append(str(caught.value))
    server.receiver.secrets = [OTHER]  # the receiver answers 401 to a bad signature
    with pytest.raises(OutboundError) as caught:
        sink.deliver(_batch(0, 1))
    messages.append(str(caught.value))
    assert "HTTP 401" in messages[-1]
    for message in messages:
        assert key_b64 not in message
        assert key_b64[:16] not in message
    sink.close()


# -- TLS: SNI and certificate checks use the name, the socket the vetted IP ------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ServerPki:
    return server_pki(tmp_path_factory.mktemp("pki"), "hooks.example.test")


def test_https_checks_the_certificate_against_the_name(pki: ServerPki) -> None:
    tls = server_context((pki.cert_file, pki.key_file))
    resolver = FakeResolver(
        {"hooks.example.test": [["127.0.0.1"]], "evil.example.test": [["127.0.0.1"]]}
    )
    receiver = Receiver([SECRET])
    with serve_http(_handler(receiver), tls=tls) as port:
        server = Server(receiver, port)
        good = _exporter(
            server.url(host="hooks.example.test", scheme="https"),
            ca_file=str(pki.ca_file),
            resolver=resolver,
        )
        good.deliver(_batch(0, 1))
        [got] = server.receiver.log
        assert got.verified is None
        assert got.headers["host"] == f"hooks.example.test:{server.port}"
        good.close()
        # same IP, same certificate, another name: refused by the certificate check
        evil = _exporter(
            server.url(host="evil.example.test", scheme="https"),
            ca_file=str(pki.ca_file),
            resolver=resolver,
        )
        with pytest.raises(WebhookDeliveryError, match=r"(?i)certificate|hostname"):
            evil.deliver(_batch(0, 1))
        # and without the test CA the chain is not trusted at all
        untrusted = _exporter(
            server.url(host="hooks.example.test", scheme="https"), resolver=resolver
        )
        with pytest.raises(WebhookDeliveryError, match=r"(?i)certificate"):
            untrusted.deliver(_batch(0, 1))
        assert len(server.receiver.log) == 1
