"""The HTTP gateway's catch-all placeholder ``{name*}`` and its routes' derived resource
attributes (``resource.attributes``), in process: how templates and attributes are
checked at start, which route a path takes (a route of literal and ``{name}`` segments
beats a catch-all, whatever the order), that no path a server could read another way
reaches a catch-all route (``..``, ``%2e%2e``, ``%2f``, ``%5c``, ``//``, backslashes,
``;``, overlong UTF-8, Unicode lookalikes of ``.``, ``/`` and ``\\``), that what is
forwarded is the checked path beneath the upstream's prefix, that routes the order of
the list alone would choose between stop the start, and that a route's attributes are
what policy sees of its calls (the catalog's win) and checked against the schema when
the gateway starts.

The ASGI application is driven with raw ``raw_path`` bytes (httpx would remove the
dot segments before the gateway saw them); the upstream is a real HTTP/1.1 server on
a loopback port (``Upstream`` of test_gateway_http.py)."""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path
from typing import Any

import pytest
from tests.unit.gateway_support import AGENT, GATEWAY, Parties
from tests.unit.test_gateway_http import ALLOW, App, _config, _runtime

from agentiam.adapters.gateway import http_proxy
from agentiam.adapters.gateway.http_proxy import (
    HttpGateway,
    PathRejected,
    Route,
    load_config,
    split_path,
)
from agentiam.core.policy.entities import MAX_DERIVED_ATTRIBUTES, MAX_DERIVED_ATTRIBUTES_BYTES
from agentiam.core.policy.model import ResourceRecord
from agentiam.core.policy.schema import Schema

DESTRUCTIVE = Schema(
    '{"entityTypes": {"Endpoint": {"shape": {"type": "Record", "attributes": '
    '{"destructive": {"type": "Boolean"}, "tier": {"type": "Long"}}}}}}'
)


def _r(method: str, path: str, rid: str, upstream: str = "plain", **resource: Any) -> Any:
    return {
        "match": {"method": method, "path": path},
        "upstream": upstream,
        "action": method,
        "resource": {"type": "Endpoint", "id": rid, **resource},
    }


ROUTES = [
    _r("GET", "/files/{path*}", "file:{path}"),  # listed first: still after the others
    _r("GET", "/files/readme", "readme"),
    _r("GET", "/files/{name}", "one:{name}"),
    _r("GET", "/{all*}", "all:{all}"),
    _r("DELETE", "/files/{dir}/{path*}", "del:{dir}:{path}", upstream="billing"),
]


def _gateway(routes: list[dict[str, Any]], parties: Parties | None = None) -> HttpGateway:
    config = load_config(_config(routes=routes))
    return HttpGateway(config, _runtime(parties or Parties(ALLOW), None))


def _load(*routes: dict[str, Any]) -> tuple[Route, ...]:
    return load_config(_config(routes=list(routes))).routes


# -- templates ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "rid", "message"),
    [
        ("/v1/{rest*}/x", "x", "the catch-all {rest*} must be the last segment"),
        ("/v1/{a*}/{b*}", "x", "the catch-all {a*} must be the last segment"),
        ("/v1/{rest*}/", "x", "the catch-all {rest*} must be the last segment"),
        ("/v1/x{rest*}", "x", "is neither a literal, a {name} nor a last {name*}"),
        ("/v1/{rest**}", "x", "is neither a literal"),
        ("/v1/{*}", "x", "is neither a literal"),
        ("/v1/{a}/{a*}", "x", "placeholder {a} appears twice"),
        ("/v1/{rest*}", "f-{rest*}", "write the catch-all as {rest}"),
        ("/v1/{rest*}", "f-{other}", "{other} is not a placeholder of the path"),
    ],
)
def test_bad_catch_all_templates_stop_the_start(path: str, rid: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"routes\[0\]") as caught:
        _load(_r("GET", path, rid))
    assert message in str(caught.value)


def test_a_catch_all_template_is_parsed() -> None:
    [route] = _load(_r("GET", "/files/{dir}/{path*}", "f:{dir}:{path}"))
    assert (route.segments, route.params, route.rest) == (
        ("files", None, None),
        ("dir", "path"),
        True,
    )
    assert route.name == "GET /files/{dir}/{path*}"  # the default name takes the '*'
    [plain] = _load(_r("GET", "/files/{dir}", "f:{dir}"))
    assert not plain.rest


# -- overlapping routes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        (  # the same template with other names: the second is dead
            [("GET", "/v1/a/{id}"), ("GET", "/v1/a/{x}")],
            "routes[0] (GET /v1/a/{id}) and routes[1] (GET /v1/a/{x}): the second is never matched",
        ),
        (  # a special case listed after the general route: never reached
            [("GET", "/v1/a/{id}"), ("GET", "/v1/a/me")],
            "routes[0] (GET /v1/a/{id}) and routes[1] (GET /v1/a/me): the second is never",
        ),
        (  # neither covers the other: /a/b/c would go to whichever is listed first
            [("GET", "/a/{x}/c"), ("GET", "/a/b/{y}")],
            "routes[0] (GET /a/{x}/c) and routes[1] (GET /a/b/{y}) both match GET /a/b/c",
        ),
        (  # catch-alls: the general one first swallows the other
            [("GET", "/{all*}"), ("GET", "/files/{path*}")],
            "routes[0] (GET /{all*}) and routes[1] (GET /files/{path*}): the second is never",
        ),
        (
            [("DELETE", "/f/{a*}"), ("DELETE", "/f/{b*}")],
            "routes[0] (DELETE /f/{a*}) and routes[1] (DELETE /f/{b*}): the second is never",
        ),
        (  # catch-alls whose prefixes cross: /a/b/... matches both
            [("GET", "/a/{x}/{p*}"), ("GET", "/{y}/b/{q*}")],
            "routes[0] (GET /a/{x}/{p*}) and routes[1] (GET /{y}/b/{q*}) both match GET /a/b/{…*}",
        ),
        (  # a catch-all with a longer prefix crossing a shorter one
            [("GET", "/{x}/b/{p*}"), ("GET", "/a/{q*}")],
            "routes[0] (GET /{x}/b/{p*}) and routes[1] (GET /a/{q*}) both match GET /a/b/{…*}",
        ),
    ],
)
def test_overlapping_routes_stop_the_start(routes: list[tuple[str, str]], message: str) -> None:
    """Two routes of one method, both with or both without a catch-all, that match a
    path in common where the order of the list alone would pick one: the gateway
    does not start, and the error names both."""
    with pytest.raises(ValueError, match=r"^routes\[\d+\] \(") as caught:
        _load(*(_r(method, path, "x") for method, path in routes))
    assert message in str(caught.value)


def test_literals_are_compared_decoded() -> None:
    """``%7E`` is ``~``: the second route is the first's template written otherwise."""
    routes = [{**_r("PUT", p, "x"), "name": n} for p, n in (("/v1/~x", "a"), ("/v1/%7Ex", "b"))]
    with pytest.raises(ValueError, match=r"routes\[0\] \(a\) and routes\[1\] \(b\)"):
        _load(*routes)


@pytest.mark.parametrize(
    "routes",
    [
        [("GET", "/v1/a/me"), ("GET", "/v1/a/{id}")],  # the special case first
        [("GET", "/files/{path*}"), ("GET", "/{all*}")],
        # a route before both takes every path they share
        [("GET", "/a/b/c"), ("GET", "/a/{x}/c"), ("GET", "/a/b/{y}")],
        [("GET", "/a/{x}"), ("POST", "/a/{x}")],  # another method
        [("GET", "/a/"), ("GET", "/a/{x}")],  # a {name} never matches the empty segment
        [("GET", "/a/{x}"), ("GET", "/a/{x}/{y}")],  # another number of segments
        [("GET", "/v1/{p*}"), ("GET", "/v1/a/{id}")],  # no catch-all always wins
        [("GET", "/a/{p*}"), ("GET", "/b/{p*}")],
        [("GET", "/a/{x}/c"), ("GET", "/a/b/d")],
    ],
)
def test_routes_that_cannot_be_confused_start(routes: list[tuple[str, str]]) -> None:
    assert len(_load(*(_r(method, path, "x") for method, path in routes))) == len(routes)


def test_the_overlap_check_is_not_quadratic_in_the_usual_case() -> None:
    """Thousands of routes that differ in a literal are compared through the trie
    only with those that could match a path of theirs (timed loosely: seconds, not
    the minutes comparing every pair would take)."""
    import time

    routes = [_r("GET", f"/v1/r{i}/{{id}}", "x") for i in range(4000)]
    routes += [_r("GET", f"/v1/r{i}/{{id}}/{{p*}}", "x") for i in range(4000)]
    started = time.perf_counter()
    assert len(_load(*routes)) == 8000
    assert time.perf_counter() - started < 30


def _random_routes(rnd: random.Random) -> list[dict[str, Any]]:
    """A few to a hundred routes of literals from a small alphabet, placeholders,
    catch-alls and trailing slashes; half of them listed most specific first, so that
    many configurations start and many do not."""
    routes = []
    alphabet = [f"l{k}" for k in range(rnd.choice([1, 2, 3, 8]))]
    placeholders = rnd.choice([0.2, 0.5, 0.8])
    for _ in range(rnd.choice([2, 4, 10, 40, 100])):
        rest = rnd.random() < 0.35
        segments = [
            f"{{p{k}}}" if rnd.random() < placeholders else rnd.choice(alphabet)
            for k in range(rnd.randint(0 if rest else 1, 4))
        ]
        if rest:
            segments.append("{r*}")
        elif rnd.random() < 0.15:
            segments.append("")
        routes.append(_r(rnd.choice(["GET", "PUT"]), "/" + "/".join(segments), "x"))
    if rnd.random() < 0.5:
        routes.sort(key=lambda r: (r["match"]["path"].count("{"), -r["match"]["path"].count("/")))
    return routes


def _outcome(routes: list[dict[str, Any]]) -> str:
    try:
        _load(*routes)
    except ValueError as exc:
        return str(exc)
    return "started"


@pytest.mark.parametrize("seed", range(3))
def test_the_overlap_lookups_agree_with_comparing_every_pair(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The overlap check finds the routes listed before a new one through a trie
    walked within a budget, else through an index by position: on random
    configurations, the outcome (started, or the exact error) is the same as when
    the index answers every lookup it can, and as when every earlier route of the
    method is compared with the new one (:func:`_both_match`)."""
    rnd = random.Random(seed)
    configs = [_random_routes(rnd) for _ in range(120)]
    usual = [_outcome(routes) for routes in configs]
    assert 20 < usual.count("started") < 100  # both outcomes are exercised

    walk = http_proxy._Trie.overlapping

    def index_first(
        self: Any, prefix: Any, rest: bool, budget: int | None = None
    ) -> list[Any] | None:
        return None if budget is not None else walk(self, prefix, rest, budget)

    with monkeypatch.context() as patched:
        patched.setattr(http_proxy._Trie, "overlapping", index_first)
        assert [_outcome(routes) for routes in configs] == usual

    added: dict[int, list[Any]] = {}
    add = http_proxy._Overlaps.add

    def keep(self: Any, entry: Any) -> None:
        added.setdefault(id(self), []).append(entry)
        add(self, entry)

    def every_pair(self: Any, prefix: Any) -> list[Any]:
        earlier = added.get(id(self), [])
        return [e for e in earlier if http_proxy._both_match(e[2], prefix, self.rest) is not None]

    monkeypatch.setattr(http_proxy._Overlaps, "add", keep)
    monkeypatch.setattr(http_proxy._Overlaps, "overlapping", every_pair)
    compared = []
    for routes in configs:
        added.clear()
        compared.append(_outcome(routes))
    assert compared == usual


# -- matching -----------------------------------------------------------------------------


def _found(gateway: HttpGateway, method: str, raw: bytes) -> tuple[str, str] | None:
    found = gateway.route_for(method, split_path(raw))
    if found is None:
        return None
    route, values = found
    return route.name, route.resource(values).id


def test_literal_and_single_segment_routes_beat_a_catch_all_listed_before_them() -> None:
    gateway = _gateway(ROUTES)
    assert _found(gateway, "GET", b"/files/readme") == ("GET /files/readme", "readme")
    assert _found(gateway, "GET", b"/files/x") == ("GET /files/{name}", "one:x")
    # among catch-alls, the first in the configuration: /files/{path*} before /{all*}
    assert _found(gateway, "GET", b"/files/a/b/c") == ("GET /files/{path*}", "file:a/b/c")
    assert _found(gateway, "GET", b"/other/a") == ("GET /{all*}", "all:other/a")
    assert _found(gateway, "GET", b"/files") == ("GET /{all*}", "all:files")
    assert _found(gateway, "GET", b"/x") == ("GET /{all*}", "all:x")


def test_a_catch_all_takes_one_or_more_non_empty_segments() -> None:
    gateway = _gateway(ROUTES)
    delete = "DELETE /files/{dir}/{path*}"
    assert _found(gateway, "DELETE", b"/files/d/x") == (delete, "del:d:x")
    assert _found(gateway, "DELETE", b"/files/d/x/y/z") == (delete, "del:d:x/y/z")
    found = gateway.route_for("DELETE", split_path(b"/files/d/x/y"))
    assert found is not None
    assert found[1] == {"dir": "d", "path": "x/y"}
    assert _found(gateway, "DELETE", b"/files/d") is None  # no segment for the catch-all
    assert _found(gateway, "DELETE", b"/files/d/") is None  # an empty one
    assert _found(gateway, "DELETE", b"/files/d/x/") is None  # a trailing slash
    assert _found(gateway, "GET", b"/files/a/b/") is None
    assert _found(gateway, "GET", b"/") is None
    assert _found(gateway, "PUT", b"/files/d/x") is None  # the method matters
    assert _found(gateway, "DELETE", b"/other/d/x") is None  # and the literal prefix


def test_a_catch_all_value_is_the_checked_and_decoded_segments() -> None:
    gateway = _gateway(ROUTES)
    assert _found(gateway, "GET", b"/files/a%20b/caf%C3%A9") == (
        "GET /files/{path*}",
        "file:a b/café",
    )
    # an encoded '%' stays data: no second decoding
    assert _found(gateway, "GET", b"/files/a/%252e%252e") == ("GET /files/{path*}", "file:a/%2e%2e")
    # an encoded ';' is data; a raw one is refused (split_path)
    assert _found(gateway, "GET", b"/files/a/b%3Bc") == ("GET /files/{path*}", "file:a/b;c")


def test_route_match_directly() -> None:
    [route] = _load(_r("GET", "/a/{x}/{rest*}", "r:{x}:{rest}"))
    assert route.match(("a", "1", "2")) == {"x": "1", "rest": "2"}
    assert route.match(("a", "1", "2", "3")) == {"x": "1", "rest": "2/3"}
    assert route.match(("a", "", "2", "3")) is None  # an empty {x}
    assert route.match(("b", "1", "2", "3")) is None
    assert route.match(("a", "1")) is None
    assert route.match(("a", "1", "2", "")) is None


# -- attacks, through the application -----------------------------------------------------


async def _asgi(app: App, method: str, raw: bytes) -> tuple[int, bytes]:
    """One request through the gateway with exactly ``raw`` as its path (and a valid
    token and proof for it), as uvicorn hands it over."""
    signed = app.parties.headers(method, GATEWAY + raw.decode("latin-1"))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": raw.decode("latin-1"),
        "raw_path": raw,
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"gw.example"),
            (b"authorization", signed["authorization"][0].encode()),
            (b"dpop", signed["dpop"][0].encode()),
        ],
        "client": ("198.51.100.9", 4000),
        "server": ("127.0.0.1", 8443),
    }
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await app.gateway(scope, receive, send)
    status = next(m["status"] for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return status, body


def _through(app: App, calls: list[tuple[str, bytes]]) -> list[tuple[int, bytes]]:
    async def run() -> list[tuple[int, bytes]]:
        server = await app.upstream.serve()
        await app.gateway.startup()
        try:
            return [await _asgi(app, method, raw) for method, raw in calls]
        finally:
            await app.gateway.shutdown()
            if server is not None:
                server.close()

    return asyncio.run(run())


# read as '.', '..', '/' or '\\' by an upstream folding Unicode (NFKC, best-fit code pages)
LOOKALIKES = [
    b"/files/%E2%80%A4%E2%80%A4/admin",  # U+2024 ONE DOT LEADER, twice
    b"/files/%EF%BC%8E%EF%BC%8E/admin",  # U+FF0E FULLWIDTH FULL STOP
    b"/files/%EF%B9%92/a",  # U+FE52 SMALL FULL STOP alone: '.'
    b"/files/%E2%80%A5/admin",  # U+2025 TWO DOT LEADER: '..'
    b"/files/.%EF%BC%8E/admin",  # '.' and U+FF0E
    b"/files/%EF%BC%8E%EF%BC%8E%3Bx/admin",  # '..;x' once folded
    b"/files/..%EF%BC%8Fadmin",  # U+FF0F FULLWIDTH SOLIDUS
    b"/files/a%EF%BC%BCb",  # U+FF3C FULLWIDTH REVERSE SOLIDUS
    b"/files/a%EF%B9%A8b",  # U+FE68 SMALL REVERSE SOLIDUS
    b"/files/..%E2%88%95admin",  # U+2215 DIVISION SLASH
    b"/files/..%E2%81%84admin",  # U+2044 FRACTION SLASH
    b"/files/..%E2%A7%B8admin",  # U+29F8 BIG SOLIDUS
    b"/files/a%E2%88%96b",  # U+2216 SET MINUS
    # cp932 and cp949 best fit: U+00A5 YEN SIGN and U+20A9 WON SIGN are 0x5C, their '\\'
    b"/files/..%C2%A5..%C2%A5win.ini",
    b"/files/..%E2%82%A9x",
    b"/files/a%C2%BDb",  # U+00BD folds to '1' U+2044 FRACTION SLASH '2'
]

# another text once NFKC-folded (UAX #15): an upstream that normalises reads another
# path (U+FF41 FULLWIDTH SMALL A and "dmin" is "admin" to it)
NFKC_CHANGED = [
    b"/%EF%BD%81dmin",  # U+FF41 FULLWIDTH SMALL A
    b"/files/%EF%BC%A1",  # U+FF21 FULLWIDTH A
    b"/%EF%AC%81le",  # U+FB01 LATIN SMALL LIGATURE FI: "file"
    b"/%F0%9D%90%9Admin",  # U+1D41A MATHEMATICAL BOLD SMALL A
    b"/caf%65%CC%81",  # 'e' and U+0301 COMBINING ACUTE ACCENT: NFC and NFKC compose them
    b"/files/%E2%80%A4x",  # U+2024 ONE DOT LEADER: ".x"
    b"/files/%EF%BC%85%32e%EF%BC%85%32e",  # U+FF05 FULLWIDTH PERCENT SIGN: "%2e%2e"
    b"/files/a%EF%BC%9Bx",  # U+FF1B FULLWIDTH SEMICOLON: a ';' path parameter
    b"/files/%E2%85%A0",  # U+2160 ROMAN NUMERAL ONE: "I"
]

TRAVERSALS = [
    b"/files/../admin",
    b"/files/a/../../admin",
    b"/files/./a",
    b"/files/a/.",
    b"/files/..",
    b"/files/%2e%2e/admin",
    b"/files/a/%2E%2e/%2e%2E/admin",
    b"/files/%2e/a",
    b"/files/..;/admin",
    b"/files/a;x/b",
    b"/files/a%2fb",
    b"/files/a%2F..%2F..%2Fadmin",
    b"/files/..%2f..%2fadmin",
    b"/files/a%5cb",
    b"/files/..%5c..%5cadmin",
    b"/files/a\\b",
    b"/files/..\\admin",
    b"/files//etc/passwd",
    b"/files/a//b",
    b"/files/a%00b",
    b"/files/%c0%ae%c0%ae/admin",  # overlong UTF-8 for '.': not UTF-8
    b"/files/%e0%80%ae/admin",
    b"/files/a%",
    b"/files/a%2",
    *LOOKALIKES,
    *NFKC_CHANGED,
]


def test_no_traversal_reaches_a_catch_all_route(tmp_path: Path) -> None:
    """Each is refused with 400 before any decision, audited, and nothing reaches the
    upstream; a plain catch-all path beside them is forwarded as the client wrote it,
    beneath the upstream's path prefix."""
    routes = [_r("GET", "/files/{path*}", "file:{path}", upstream="billing")]
    app = App(tmp_path, routes=routes)
    answers = _through(app, [("GET", raw) for raw in TRAVERSALS] + [("GET", b"/files/a/b%20c")])
    for raw, (status, body) in zip(TRAVERSALS, answers, strict=False):
        assert status == 400, (raw, status, body)
        assert b"the request path is refused" in body, raw
    assert answers[-1][0] == 200
    assert [r.target for r in app.upstream.requests] == [b"/base/files/a/b%20c"]
    statuses = [e["details"]["status"] for e in app.events() if e["type"] != "authz.decision"]
    assert statuses[: len(TRAVERSALS)] == [400] * len(TRAVERSALS)
    decisions = [e for e in app.events() if e["type"] == "authz.decision"]
    assert [d["resource"]["id"] for d in decisions] == ["file:a/b c"]


@pytest.mark.parametrize("raw", LOOKALIKES)
def test_a_segment_that_folds_to_a_separator_or_dot_segment_is_refused(raw: bytes) -> None:
    with pytest.raises(PathRejected, match=r"NFKC\)$|a lookalike of '/'"):
        split_path(raw)


@pytest.mark.parametrize("raw", NFKC_CHANGED)
def test_a_segment_that_nfkc_changes_is_refused(raw: bytes) -> None:
    with pytest.raises(PathRejected, match=r"Unicode normalisation \(NFKC\) changes"):
        split_path(raw)


@pytest.mark.parametrize(
    ("raw", "segments"),
    [
        (b"/files/caf%C3%A9", ("files", "café")),  # NFC text NFKC keeps stays data
        (b"/files/%E6%97%A5%E6%9C%AC", ("files", "日本")),
        (b"/files/%ED%95%9C", ("files", "한")),  # a precomposed Hangul syllable
        (b"/files/x%E2%80%94y", ("files", "x\u2014y")),  # U+2014 EM DASH: no fold
    ],
)
def test_other_non_ascii_segments_pass(raw: bytes, segments: tuple[str, ...]) -> None:
    assert split_path(raw) == segments


def test_a_segment_another_route_reads_once_folded_is_refused_not_routed(
    tmp_path: Path,
) -> None:
    """``GET /admin`` (a specific route) and ``GET /{page}`` listed after it: the
    fullwidth ``/%EF%BD%81dmin``, "admin" to an upstream that NFKC-normalises, is
    refused with 400 before any decision and audited, not decided as ``page:\\uff41dmin``
    and forwarded; ``/admin`` and an NFKC-stable ``/caf%C3%A9`` pass."""
    routes = [_r("GET", "/admin", "admin"), _r("GET", "/{page}", "page:{page}")]
    app = App(tmp_path, routes=routes)
    calls = [("GET", raw) for raw in (b"/%EF%BD%81dmin", b"/%EF%AC%81le", b"/admin")]
    answers = _through(app, [*calls, ("GET", b"/caf%C3%A9")])
    for (_, raw), (status, body) in zip(calls[:2], answers, strict=False):
        assert status == 400, (raw, status, body)
        assert b"the request path is refused" in body
        assert b"(NFKC) changes" in body
    assert [status for status, _ in answers[2:]] == [200, 200]
    assert [r.target for r in app.upstream.requests] == [b"/admin", b"/caf%C3%A9"]
    rejected = [e for e in app.events() if e["type"] == "api.request.rejected"]
    assert [e["details"]["status"] for e in rejected] == [400, 400]
    assert all("(NFKC) changes" in e["reason"] for e in rejected)
    decisions = [e for e in app.events() if e["type"] == "authz.decision"]
    assert [d["resource"]["id"] for d in decisions] == ["admin", "page:café"]


@pytest.mark.parametrize(
    "literal",
    ["%EF%BD%81dmin", "%EF%AC%81le", "..%C2%A5x", "a%C2%BDb", "caf%65%CC%81"],
)
def test_a_route_literal_the_path_check_refuses_stops_the_start(literal: str) -> None:
    """A route could never be matched by a segment the path check refuses: its
    template is a configuration error naming the route."""
    with pytest.raises(ValueError, match=r"routes\[0\]\.match\.path: a segment that"):
        _load(_r("GET", f"/v1/{literal}", "x"))


def test_an_overlong_catch_all_value_is_denied_by_the_id_bound(tmp_path: Path) -> None:
    """A resource id made from a catch-all is bounded as every id is (512 characters):
    a longer one is denied (403, audited) and not forwarded; 512 exactly passes."""
    routes = [_r("GET", "/files/{path*}", "{path}", upstream="billing")]
    app = App(tmp_path, routes=routes)
    exact = b"/files/" + b"/".join([b"a" * 99] * 5) + b"/" + b"b" * 12  # 499 + 1 + 12
    assert len(exact) - len(b"/files/") == 512
    long = b"/files/" + b"/".join([b"a" * 200] * 3)  # 602 characters
    (ok, _), (denied, body) = _through(app, [("GET", exact), ("GET", long)])
    assert ok == 200
    assert denied == 403, body
    assert b"512" in body
    assert len(app.upstream.requests) == 1


# -- attributes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ([1], "expected a mapping"),
        ({}, "name at least one attribute"),
        ({"bad-name": True}, "'bad-name' is not an attribute name"),
        ({"1st": True}, "is not an attribute name"),
        ({f"a{i}": True for i in range(MAX_DERIVED_ATTRIBUTES + 1)}, "at most"),
        ({"x": "y" * MAX_DERIVED_ATTRIBUTES_BYTES}, "bytes of JSON"),
        ({"x": float("nan")}, "not JSON"),
        ({"x": {1, 2}}, "not JSON"),
    ],
)
def test_bad_route_attributes_stop_the_start(attributes: Any, message: str) -> None:
    with pytest.raises(ValueError, match=r"routes\[0\]\.resource\.attributes") as caught:
        _load(_r("DELETE", "/files/{path*}", "f:{path}", attributes=attributes))
    assert message in str(caught.value)


def test_route_attributes_are_kept_read_only() -> None:
    [route] = _load(_r("DELETE", "/f/{id}", "f:{id}", attributes={"destructive": True}))
    assert dict(route.attributes) == {"destructive": True}
    with pytest.raises(TypeError):
        route.attributes["destructive"] = False  # type: ignore[index]
    [plain] = _load(_r("GET", "/f/{id}", "f:{id}"))
    assert not plain.attributes


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"destructive": True}, "destructive: is not declared for a Endpoint"),
        ({"sensitive": "yes"}, "resource.attributes.sensitive"),
    ],
)
def test_attributes_the_schema_refuses_stop_the_start(attributes: Any, message: str) -> None:
    """The base schema declares no ``destructive`` for an Endpoint, and ``sensitive``
    is a Boolean: the gateway does not start (it would deny every call of the route)."""
    routes = [_r("DELETE", "/f/{id}", "f:{id}", attributes=attributes)]
    with pytest.raises(ValueError, match=r"routes\[0\] \(DELETE /f/\{id\}\)") as caught:
        _gateway(routes)
    assert message in str(caught.value)
    assert "extend-schema" in str(caught.value)


FORBID_DESTRUCTIVE = f"""
permit (principal == Agent::"{AGENT}", action, resource);
@id("no-destructive") forbid (principal, action, resource)
  when {{ resource has destructive && resource.destructive }};
"""


def _decide(gateway: HttpGateway, method: str, raw: bytes) -> Any:
    found = gateway.route_for(method, split_path(raw))
    assert found is not None
    call = gateway.call_for(found[0], found[1], method=method, url=GATEWAY + raw.decode())
    request = gateway.enforcer.request_for(_access(), call)
    return call, gateway.enforcer.link.authorizer().decide(request)


def _access() -> Any:
    from agentiam.core.credentials.verifier import VerifiedAccess

    return VerifiedAccess(
        subject=AGENT, client_id=AGENT, scope=(), jti="j", issued_at=0, expires_at=0,
        jkt="k", claims={"aud": GATEWAY},
    )  # fmt: skip


def test_a_routes_attributes_are_what_policy_sees_of_its_calls() -> None:
    """``DELETE /files/{path*}`` gives its resource ``destructive: true``: every call of
    it carries them (and is forbidden), with an id made from the path or a constant
    one; ``GET`` on the same ids gives none and is allowed: attributes belong to the
    route, not to the id. An id made from the path, or a constant one no other route
    names, is decided through its place's stand-in (no copy of the entities); a
    constant one that a route without attributes also names (its derived record is
    in the entities) on a copy, made once and kept."""
    routes = [
        _r("DELETE", "/files/{path*}", "file:{path}", attributes={"destructive": True}),
        _r("GET", "/files/{path*}", "file:{path}"),
        _r("DELETE", "/alone", "alone", attributes={"destructive": True}),
        _r("GET", "/alone/{x}", "{x}"),
        _r("DELETE", "/tmp", "tmp", attributes={"destructive": True}),
        _r("GET", "/tmp", "tmp"),
    ]
    gateway = _gateway(routes, Parties(FORBID_DESTRUCTIVE, schema=DESTRUCTIVE))
    authorizer = gateway.enforcer.link.authorizer()
    for raw, get in ((b"/files/a/b", b"/files/a/b"), (b"/files/c", b"/files/c"),
                     (b"/alone", b"/alone/alone"), (b"/tmp", b"/tmp")):  # fmt: skip
        for _ in range(3):
            call, decision = _decide(gateway, "DELETE", raw)
            assert dict(call.resource_attributes) == {"destructive": True}
            assert not decision.allowed, raw
            assert decision.policies == ("no-destructive",), raw
            call, decision = _decide(gateway, "GET", get)
            assert not call.resource_attributes
            assert decision.allowed, (raw, decision.reasons)
        if raw != b"/tmp":
            assert not authorizer._placed[1], f"{raw!r}: through a stand-in, never a copy"
    assert [key[0].id for key in authorizer._placed[1]] == ["tmp"]


def test_the_catalogs_attributes_win_over_a_routes() -> None:
    parties = Parties(FORBID_DESTRUCTIVE, schema=DESTRUCTIVE)
    routes = [_r("DELETE", "/files/{path*}", "file:{path}", attributes={"destructive": True})]
    authorizer = parties.link.authorizer()
    entities = authorizer.entities
    catalogued = ResourceRecord("Endpoint", "file:kept", {"destructive": False}, ())
    from agentiam.core.policy.entities import EntitySnapshot

    authorizer.update(
        entities=EntitySnapshot(
            entities.schema, agents=entities.agents.values(), resources=[catalogued]
        )
    )
    gateway = _gateway(routes, parties)
    _, decision = _decide(gateway, "DELETE", b"/files/kept")
    assert decision.allowed, decision.reasons
    _, decision = _decide(gateway, "DELETE", b"/files/other")
    assert not decision.allowed


def test_a_bundle_whose_schema_refuses_the_attributes_denies_and_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Accepted at start, then a bundle without the attribute in its schema: logged at
    error level naming the route, and the route's calls are denied (fail closed)."""
    routes = [_r("DELETE", "/files/{path*}", "file:{path}", attributes={"destructive": False})]
    parties = Parties(FORBID_DESTRUCTIVE, schema=DESTRUCTIVE)
    gateway = _gateway(routes, parties)
    _, decision = _decide(gateway, "DELETE", b"/files/a")
    assert decision.allowed, decision.reasons
    other = Parties(FORBID_DESTRUCTIVE)  # the base schema: no destructive
    authorizer = parties.link.authorizer()
    base = other.link.authorizer()
    with caplog.at_level(logging.ERROR, logger="agentiam.gateway.http"):
        derive = _derive_of(gateway, parties)
        authorizer.update(base.engine, derive(base.entities))
    assert "routes[0] (DELETE /files/{path*}).resource.attributes.destructive" in caplog.text
    _, decision = _decide(gateway, "DELETE", b"/files/a")
    assert not decision.allowed
    assert "cannot be given its derived attributes" in decision.reasons[0]


def test_an_attributed_call_does_no_per_call_schema_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """A route's attributes are checked, merged and serialised once (at start, per
    bundle): a call through its place's stand-in neither checks a record against the
    schema, nor merges one, nor serialises the attributes again (the route's
    ``DerivedAttributes`` carry their key)."""
    import json

    from agentiam.core.policy import authorizer as authorizer_module
    from agentiam.core.policy.entities import DerivedAttributes

    routes = [_r("DELETE", "/files/{path*}", "file:{path}", attributes={"destructive": True})]
    gateway = _gateway(routes, Parties(FORBID_DESTRUCTIVE, schema=DESTRUCTIVE))
    [route] = gateway.config.routes
    assert isinstance(route.attributes, DerivedAttributes)
    assert route.attributes.key == '{"destructive":true}'
    work: list[str] = []
    for name in ("check_resource", "merge_derived"):

        def counted(
            *args: Any, _name: str = name, _real: Any = getattr(authorizer_module, name)
        ) -> Any:
            work.append(_name)
            return _real(*args)

        monkeypatch.setattr(authorizer_module, name, counted)
    dumps = json.dumps

    def counting_dumps(*args: Any, **kwargs: Any) -> str:
        if kwargs.get("sort_keys"):
            work.append("sorted dumps")
        return dumps(*args, **kwargs)

    monkeypatch.setattr(json, "dumps", counting_dumps)
    for raw in (b"/files/a", b"/files/b/c", b"/files/a"):
        _, decision = _decide(gateway, "DELETE", raw)
        assert not decision.allowed
        assert decision.policies == ("no-destructive",)
    assert work == []
    assert not gateway.enforcer.link.authorizer()._placed[1]  # no copy either


def test_the_schema_check_runs_once_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checked against the bundle in force when the gateway starts, not a second time
    when its derive step is installed on that same bundle; every later bundle is
    checked (and logged: test_a_bundle_whose_schema_refuses_the_attributes_denies_and_logs),
    even one whose schema is the same cached object."""
    from agentiam.adapters.gateway import http_proxy

    seen: list[Schema] = []
    real = http_proxy.route_attribute_problems

    def counting(routes: Any, schema: Schema) -> list[str]:
        seen.append(schema)
        return real(routes, schema)

    monkeypatch.setattr(http_proxy, "route_attribute_problems", counting)
    routes = [_r("DELETE", "/files/{path*}", "file:{path}", attributes={"destructive": False})]
    parties = Parties(FORBID_DESTRUCTIVE, schema=DESTRUCTIVE)
    gateway = _gateway(routes, parties)
    assert len(seen) == 1
    derive = _derive_of(gateway, parties)  # a second gateway: its own start check
    assert len(seen) == 2
    entities = parties.link.authorizer().entities
    derive(entities)  # installed on the bundle in force at its start: not again
    assert len(seen) == 2
    derive(entities)  # a later bundle, even with the same (cached) schema: checked
    assert len(seen) == 3


def _derive_of(gateway: HttpGateway, parties: Parties) -> Any:
    """The derive step the gateway installed on its link (captured by a second
    installation on a link that records it)."""
    seen: list[Any] = []
    link: Any = parties.link
    original = link.derive_with
    link.derive_with = seen.append
    try:
        HttpGateway(gateway.config, gateway.runtime)
    finally:
        link.derive_with = original
    return seen[0]
