"""Security review of the policy decision point: over real HTTP (a live uvicorn
server), then in process (the Authorizer, the template renderer, the schema and the
analyzer).

Each test reproduces an attack or a failure found in that review, which succeeded
before the fix and is refused now; its docstring describes the problem as it was found
(in the present tense of the review) and what is expected instead.
"""

from __future__ import annotations

import json
import threading
import time
from decimal import Decimal
from typing import Any

import httpx
import pytest
from tests.api.conftest import Live
from tests.api.test_policy_api import _decide
from tests.unit.policy_support import (
    ARGS_EXTENSION,
    NOW,
    agent,
    authorizer,
    decide,
    human,
    ref,
    request,
    resource,
)

from agentiam.core.access.admin_keys import Role
from agentiam.core.policy.analysis import Usage, blast_radius, unused_permissions
from agentiam.core.policy.authorizer import RequestError
from agentiam.core.policy.engine import validate
from agentiam.core.policy.parsing import parse_policies
from agentiam.core.policy.schema import Schema
from agentiam.core.policy.templates import render_template
from agentiam.errors import InvalidInput


def _agent(admin: httpx.Client) -> str:
    r = admin.post("/v1/humans", json={"display_name": "Ann", "email": "ann@example.com"})
    assert r.status_code == 201, r.text
    r = admin.post(
        "/v1/agents",
        json={
            "name": "pay-bot",
            "owners": [r.json()["id"]],
            "purpose": "moves money",
            "environment": "production",
            "activate": True,
        },
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _ok(r: httpx.Response) -> httpx.Response:
    assert r.status_code == 200, r.text
    return r


TIER = {
    "entityTypes": {
        "Tool": {"shape": {"type": "Record", "attributes": {"tier": {"type": "String"}}}}
    }
}


POLICIES = (
    ("allow", 'permit (principal, action == Action::"invoke_tool", resource == Tool::"transfer");'),
    ("no-bank", 'forbid (principal, action, resource in McpServer::"bank");'),
    (
        "no-destructive",
        "forbid (principal, action, resource is Tool) "
        "when { resource has destructive && resource.destructive };",
    ),
)


def _catalogued_and_forbidden(admin: httpx.Client) -> tuple[str, int]:
    """A tool in McpServer::"bank" carrying an extension attribute, a permit for it and
    two forbids that deny it (by hierarchy and by attribute). Returns the agent and the
    version just before the extension was stored."""
    agent = _agent(admin)
    before = admin.get("/v1/policies").json()["version"]
    _ok(admin.put("/v1/policy-schema/extension", json={"extension": TIER}))
    _ok(admin.put("/v1/resources/McpServer/bank", json={}))
    _ok(
        admin.put(
            "/v1/resources/Tool/transfer",
            json={
                "attributes": {"tier": "gold", "destructive": True},
                "parents": [{"type": "McpServer", "id": "bank"}],
            },
        )
    )
    for pid, text in POLICIES:
        _ok(admin.put(f"/v1/policies/{pid}", json={"text": text}))
    d = _decide(admin, agent, "transfer")
    assert d["decision"] == "deny", d  # baseline: both forbids apply
    return agent, before


def test_clearing_the_schema_extension_does_not_turn_forbids_off(admin: httpx.Client) -> None:
    """Clearing the schema extension is accepted because every *policy* still validates,
    but the catalog entry using the extension attribute no longer does, and
    ``EntitySnapshot`` silently leaves it out (entities.py, ``except InvalidInput:
    continue``). The tool then has no parents and no attributes in Cedar's store, so
    ``forbid … resource in McpServer::"bank"`` and the ``destructive`` forbid stop
    matching: the decision flips from deny to allow. Expected: the change is refused
    (the catalog does not fit the new schema) or the decision stays deny."""
    agent, _ = _catalogued_and_forbidden(admin)
    r = admin.put("/v1/policy-schema/extension", json={"extension": {}})
    if r.status_code == 200:
        d = _decide(admin, agent, "transfer")
        assert d["decision"] == "deny", d
    else:
        assert r.status_code == 422, r.text


def test_rolling_back_past_the_extension_does_not_turn_forbids_off(admin: httpx.Client) -> None:
    """Same fail-open through rollback: restoring a version from before the extension
    restores its (empty) extension, the catalog entry silently drops out of the
    snapshot, and both forbids stop applying."""
    agent, before = _catalogued_and_forbidden(admin)
    # keep the three policies in the target version: roll back the extension only
    r = admin.post(f"/v1/policy-versions/{before}/rollback", json={})
    if r.status_code == 200:
        for pid, text in POLICIES:
            _ok(admin.put(f"/v1/policies/{pid}", json={"text": text}))
        d = _decide(admin, agent, "transfer")
        assert d["decision"] == "deny", d
    else:
        assert r.status_code == 422, r.text


def test_a_read_only_key_cannot_stall_every_decision(live: Live, admin: httpx.Client) -> None:
    """An auditor (policies:read only) posts ~480 KB of *valid* policies (each under the
    64 KiB policy limit) whose conditions are large set literals to
    ``/v1/policies/validate``. cedarpy parses them in native code that holds the GIL for
    seconds (about 60 s for the 7.8 MB the body limit allows), so every decision on the
    replica waits (here 2-5 s at a time). Expected: decisions keep flowing (no gap of 1.5 s)."""
    agent = _agent(admin)
    _ok(admin.put("/v1/policies/all", json={"text": "permit (principal, action, resource);"}))
    assert _decide(admin, agent, "t")["decision"] == "allow"
    body = "".join(
        f'@id("s{i}") permit (principal, action, resource) when {{ ['
        + ",".join(["1"] * 30_000)
        + "].contains(1) };\n"
        for i in range(8)
    )
    done: dict[str, Any] = {}

    def validate() -> None:
        with live.client(live.key(Role.AUDITOR)) as auditor:
            auditor.timeout = httpx.Timeout(120)
            done["status"] = auditor.post("/v1/policies/validate", json={"text": body}).status_code

    thread = threading.Thread(target=validate)
    thread.start()
    worst = 0.0
    try:
        last = time.perf_counter()
        while thread.is_alive() and worst < 1.5:
            _decide(admin, agent, "t")
            now = time.perf_counter()
            # the client shares the process: a stall shows as a long gap between answers
            worst = max(worst, now - last)
            last = now
            time.sleep(0.05)
    finally:
        thread.join()
    assert done.get("status") is not None
    assert worst < 1.5, f"decisions stalled for {worst:.1f} s behind an auditor's validate call"


def test_a_mode_annotation_in_put_text_is_not_silently_dropped(admin: httpx.Client) -> None:
    """``PUT /v1/policies/trial`` with text ``@mode("dry_run") permit (…);`` (a single
    exported policy, say) stores the policy in *enforce* mode: ``parse_single`` takes
    the mode from the request (default enforce) and drops the annotation, while it keeps
    ``@description``. A permit meant as a trial grants immediately. Expected: the
    annotation is honoured, or a conflicting one is refused (422)."""
    agent = _agent(admin)
    text = '@mode("dry_run")\n@description("trial only")\npermit (principal, action, resource);'
    r = admin.put("/v1/policies/trial", json={"text": text})
    if r.status_code == 200:
        assert r.json()["policy"]["mode"] == "dry_run", r.json()
        assert _decide(admin, agent, "t")["decision"] == "deny"
    else:
        assert r.status_code == 422, r.text


ARGS = {
    "commonTypes": {
        "ToolArguments": {
            "type": "Record",
            "attributes": {
                "amount": {"type": "Long"},
                "owner": {"type": "Entity", "name": "Human"},
            },
        }
    }
}


def test_argument_values_do_not_reach_the_audit_trail(admin: httpx.Client) -> None:
    """docs/policy.md: "Tool argument values are not recorded, only their names." But
    Cedar's evaluation errors quote the values (``integer overflow while attempting to
    multiply the values `4611686018427387904` and `2```, ``entity `Human::"…"` does not
    exist``) and ``decision_event`` copies them into ``details.errors``."""
    agent = _agent(admin)
    _ok(admin.put("/v1/policy-schema/extension", json={"extension": ARGS}))
    _ok(admin.put("/v1/policies/all", json={"text": "permit (principal, action, resource);"}))
    _ok(
        admin.put(
            "/v1/policies/double",
            json={
                "text": "forbid (principal, action, resource) when "
                "{ context.args has amount && context.args.amount * 2 > 10 };"
            },
        )
    )
    _ok(
        admin.put(
            "/v1/policies/owner",
            json={
                "text": "forbid (principal, action, resource) when "
                '{ context.args has owner && context.args.owner.email == "x" };'
            },
        )
    )
    secret_amount = 4611686018427387904
    secret_id = "acct-7734-secret"
    _decide(admin, agent, "t", args={"amount": secret_amount})
    _decide(admin, agent, "t", args={"owner": {"type": "Human", "id": secret_id}})
    events = admin.get("/v1/audit/events", params={"type": "authz.decision"}).json()["items"]
    text = json.dumps(events)
    assert str(secret_amount) not in text
    assert secret_id not in text


def test_a_non_string_tool_parameter_is_a_4xx_not_a_500(admin: httpx.Client) -> None:
    """``amount_limit`` passes ``tool`` to ``entity_literal`` unchecked; an integer or a
    boolean raises ``TypeError`` in ``cedar_string`` and the API answers 500."""
    _ok(admin.put("/v1/policy-schema/extension", json={"extension": ARGS}))
    for tool in (5, True):
        r = admin.put(
            "/v1/policies/limit",
            json={"template": "amount_limit", "parameters": {"maximum": 10, "tool": tool}},
        )
        assert r.status_code == 422, (tool, r.status_code, r.text)


def test_import_with_a_form_content_type_is_not_a_500(live: Live) -> None:
    """The body middleware skips its JSON depth check for form bodies, and the import
    route parses every non-``text/plain`` body with ``json.loads``; deeply nested JSON
    sent as ``application/x-www-form-urlencoded`` raises ``RecursionError`` → 500."""
    with live.client(live.admin) as admin:
        r = admin.post(
            "/v1/policies/import",
            content=b"[" * 100_000 + b"]" * 100_000,
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
    assert 400 <= r.status_code < 500, (r.status_code, r.text)


def test_every_stored_policy_can_be_read_back(admin: httpx.Client) -> None:
    """``PUT /v1/policies/export`` stores a policy that ``GET /v1/policies/export``
    can never return (the export route shadows it). Expected: the id is refused, or
    readable."""
    policy_id = "export"
    r = admin.put(
        f"/v1/policies/{policy_id}", json={"text": "permit (principal, action, resource);"}
    )
    if r.status_code == 200:
        got = admin.get(f"/v1/policies/{policy_id}")
        assert got.headers["content-type"].startswith("application/json"), got.text[:80]
        assert got.json()["id"] == policy_id
    else:
        assert r.status_code == 422, r.text


# -- in process -------------------------------------------------------------------


ARGS_SCHEMA = Schema(ARGS_EXTENSION)
PERMIT_ALL = '@id("all") permit (principal, action, resource);\n'


@pytest.mark.parametrize(
    ("template", "parameters"),
    [
        ("amount_limit", {"maximum": 1000, "principal": "any"}),
        ("approval_above_risk", {"threshold": 50, "principal": "any"}),
        ("business_hours", {"principal": "any", "start_hour": 0, "end_hour": 1}),
    ],
)
def test_a_template_for_any_principal_also_binds_humans(
    template: str, parameters: dict[str, object]
) -> None:
    """docs/policy.md: ``principal`` is ``"any"`` (the default) or one entity, and
    "every action applies to Agent and Human principals". ``_principal("any")`` renders
    ``principal is Agent``, so a Human principal allowed by a generic permit escapes the
    amount limit, the risk gate and business hours entirely."""
    text = PERMIT_ALL + f'@id("gate")\n{render_template(template, parameters, ARGS_SCHEMA)}'
    az = authorizer(text, schema=ARGS_SCHEMA, agents=[agent()], humans=[human()])
    context = {"args": {"amount": 10**9}, "risk_score": 99}
    assert decide(az, ref("Agent", "agt_1"), context=context).decision == "deny"  # baseline
    d = decide(az, ref("Human", "hum_1"), context=context)
    assert d.decision == "deny", d.reasons


def test_blast_radius_counts_a_grant_on_a_named_uncatalogued_resource() -> None:
    """``permit (principal == Agent::"agt_1", action == Action::"delete",
    resource == DataSet::"payroll")`` with ``payroll`` not in the catalog: the decision
    allows the delete, but ``effective_permissions`` only walks catalog entries and
    skips ``==`` scopes as pattern grants, so the blast radius reports level ``low``
    with nothing reachable."""
    az = authorizer(
        '@id("del") permit (principal == Agent::"agt_1", action == Action::"delete", '
        'resource == DataSet::"payroll");',
        agents=[agent()],
        humans=[human()],
    )
    assert decide(az, action="delete", target=ref("DataSet", "payroll")).decision == "allow"
    report = blast_radius(az.engine, az.entities, "agt_1").to_dict()
    assert report["reachable"] >= 1, report
    assert report["level"] == "critical", report


def test_an_entity_type_named_like_a_primitive_cannot_blind_a_forbid() -> None:
    """An extension may name an entity type ``String``. Cedar then reads a tool argument
    declared ``{"type": "EntityOrCommon", "name": "String"}`` as that entity type (the
    validator accepts ``context.args.x == String::"bad"``), while ``to_cedar`` converts
    it as a primitive string and refuses the entity form. The forbid can never match
    and every request passes it. Expected: the extension is refused, or the argument
    is converted the way Cedar types it."""
    extension = {
        "entityTypes": {"String": {}},
        "commonTypes": {
            "ToolArguments": {
                "type": "Record",
                "attributes": {"x": {"type": "EntityOrCommon", "name": "String"}},
            }
        },
    }
    try:
        schema = Schema(json.dumps(extension))
    except InvalidInput:
        return  # refused: fine
    text = PERMIT_ALL + (
        '@id("f") forbid (principal, action, resource) '
        'when { context.args has x && context.args.x == String::"bad" };'
    )
    records = [p.record for p in parse_policies(text)]
    assert validate(schema, records) == []
    az = authorizer(text, schema=schema, agents=[agent()], humans=[human()])
    decisions = [
        decide(az, context={"args": {"x": value}})
        for value in ("bad", {"type": "String", "id": "bad"})
    ]
    assert any("forbidden by policy f" in d.reasons for d in decisions), [
        (d.decision, d.reasons) for d in decisions
    ]


def test_a_deep_type_hierarchy_in_the_extension_is_refused_or_cheap() -> None:
    """A 105 KB extension (a chain of 3 000 entity types, each ``memberOfTypes`` the
    next) is accepted, and Cedar's schema build is super-linear in it: ``Schema()``
    takes seconds, and so does every later ``validate`` (each passes the schema JSON
    to cedarpy again), i.e. every policy write and every ``/v1/policies/validate``
    call, holding the GIL (about 15 s each at the 256 KiB limit)."""
    chain = {f"T{i}": {"memberOfTypes": [f"T{i + 1}"]} for i in range(3000)}
    chain["T3000"] = {}
    text = json.dumps({"entityTypes": chain}, separators=(",", ":"))
    started = time.perf_counter()
    try:
        schema = Schema(text)
    except InvalidInput:
        assert time.perf_counter() - started < 1.0
        return
    built = time.perf_counter() - started
    started = time.perf_counter()
    validate(schema, [p.record for p in parse_policies(PERMIT_ALL)])
    checked = time.perf_counter() - started
    assert built < 1.0, f"Schema() took {built:.1f} s"
    assert checked < 1.0, f"validate() took {checked:.1f} s"


def test_the_least_privilege_proposal_handles_a_comment_after_the_effect() -> None:
    """Policies are stored as written. ``scope_span`` finds the scope only when
    ``permit``/``forbid`` is followed by whitespace and ``(``; a comment between them
    (valid Cedar) makes ``unused_permissions`` raise ``InvalidInput("the policy has no
    scope")``, so ``GET /v1/agents/{id}/unused-permissions`` answers 422 for every agent
    that used that permit."""
    text = '@id("p") permit // payments\n(principal, action, resource);'
    az = authorizer(text, agents=[agent()], humans=[human()], resources=[resource("Tool", "t")])
    usage = [Usage("invoke_tool", ref("Tool", "t"), ("p",), 1, NOW)]
    report = unused_permissions(az.engine, az.entities, "agt_1", usage, days=1, decisions=1)
    assert 'resource == Tool::"t"' in report.proposal.to_dict()["cedar"]


@pytest.mark.parametrize("maximum", ["999.99999", "12345678901234.5678"])
def test_a_decimal_limit_is_never_raised_by_rendering(maximum: str) -> None:
    """``amount_limit`` on a decimal argument formats ``float(maximum)`` with four
    digits: ``"999.99999"`` becomes ``decimal("1000.0000")`` and
    ``"12345678901234.5678"`` becomes ``…5684`` (float precision), so calls above the
    limit the operator gave are allowed. Expected: refused (more than four digits /
    not exact) or rendered exactly."""
    try:
        text = render_template(
            "amount_limit", {"maximum": maximum, "argument": "price"}, ARGS_SCHEMA
        )
    except InvalidInput:
        return
    literal = text.split('decimal("')[1].split('")')[0]
    assert Decimal(literal) <= Decimal(maximum), (maximum, literal)


@pytest.mark.parametrize(
    ("template", "parameters"),
    [
        ("amount_limit", {"maximum": 10, "tool": ["a", "b"]}),  # rendered as Tool::"ab"
        ("amount_limit", {"maximum": 10, "tool": {"x": 1}}),  # rendered as Tool::"x"
        ("amount_limit", {"maximum": 10, "tool": 0}),  # silently: every tool
        ("tool_allowlist", {"principal": "any", "tools": ["a"], "server": 5}),  # dropped
        ("tool_allowlist", {"principal": "any", "tools": ["a"], "server": ["bank"]}),
    ],
)
def test_template_parameters_of_the_wrong_type_are_refused(
    template: str, parameters: dict[str, object]
) -> None:
    """Template parameters are documented as checked against their kind. ``tool`` and
    ``server`` are not: a list is joined into one id, a mapping contributes its first
    key, a falsy value widens the policy to every tool, and a non-string ``server``
    is dropped (the allowlist is no longer limited to that server)."""
    with pytest.raises(InvalidInput):
        render_template(template, parameters, ARGS_SCHEMA)


def test_an_invalid_ip_argument_is_a_malformed_request() -> None:
    """docs/policy.md: "A declared argument of the wrong type makes the request invalid:
    422 from the API". An ``ipaddr`` argument is passed to Cedar unchecked, so
    ``validate_request`` accepts ``"not-an-ip"`` and the API answers 200 (a deny whose
    error quotes the value) instead of 422."""
    schema = Schema(
        json.dumps(
            {
                "commonTypes": {
                    "ToolArguments": {
                        "type": "Record",
                        "attributes": {"ip": {"type": "Extension", "name": "ipaddr"}},
                    }
                }
            }
        )
    )
    az = authorizer(PERMIT_ALL, schema=schema, agents=[agent()], humans=[human()])
    with pytest.raises(RequestError):
        az.validate_request(request(context={"args": {"ip": "not-an-ip"}}))
