"""Schemathesis against the live OpenAPI document of a real server: no input, however
malformed, gets a 5xx. Bounded: a fixed number of generated examples per operation and
generation mode (valid per the schema, and deliberately invalid).

Schemathesis's pytest plugin does not run on pytest 9 (it writes ``node._nodeid``), so
the cases come from its Hypothesis strategies (``APIOperation.as_strategy``), which is
its documented way to use it inside other tests.

Each mode's cases are generated once per module (:meth:`Fuzzed.cases`, derandomized, so
the same cases every run) and sent by both tests: the authenticated one, and the one
without credentials. Half the run was generation, which the second test used to repeat
for an identical set of cases. Requests go over one keep-alive session per test that
keeps no cookies (a cookie from one case must not authenticate another).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.cookiejar import DefaultCookiePolicy
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from tests.support.live import serve_in_thread

from agentiam.adapters.http.app import create_app
from agentiam.adapters.storage import migrate
from agentiam.bootstrap import build
from agentiam.config import Settings
from agentiam.core.credentials.sealing import MasterKey
from agentiam.services.agents import NewAgent
from agentiam.services.context import CallContext
from agentiam.services.humans import NewHuman

EXAMPLES = {GenerationMode.POSITIVE: 25, GenerationMode.NEGATIVE: 15}
PUBLIC = {"/healthz", "/readyz"}


@dataclass
class Fuzzed:
    url: str
    token: str
    operations: list[Any]
    rows: dict[str, str]
    generated: dict[GenerationMode, list[list[schemathesis.Case]]] = field(default_factory=dict)

    def seeded(self, params: dict[str, Any]) -> dict[str, Any]:
        """Path parameters pointing at real rows, so the handlers behind 404 run too."""
        return {name: self.rows.get(name, value) for name, value in params.items()}

    def cases(self, mode: GenerationMode) -> list[list[schemathesis.Case]]:
        """Every operation's generated cases in ``mode`` (at most ``EXAMPLES[mode]``
        each; an operation with no inputs has no invalid variant, so none), made once."""
        if mode not in self.generated:
            self.generated[mode] = [_generate(operation, mode) for operation in self.operations]
        return self.generated[mode]


def _generate(operation: Any, mode: GenerationMode) -> list[schemathesis.Case]:
    cases: list[schemathesis.Case] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES[mode],
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def collect(case: schemathesis.Case) -> None:
        cases.append(case)

    try:
        collect()
    except Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise
    return cases


@pytest.fixture
def session() -> Iterator[requests.Session]:
    """Keep-alive connections, and no cookie jar carried from one case to the next."""
    with requests.Session() as s:
        s.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        yield s


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    path: Path = tmp_path_factory.mktemp("fuzz") / "agentiam.db"
    c = build(
        Settings(
            database_url=f"sqlite:///{path}",
            master_key=MasterKey.generate_text(),
            revocation_feed_max_wait_seconds=0.05,  # the long poll would stall the fuzzer
        )
    )
    migrate.upgrade(c.engine)
    ctx = CallContext.system("fuzz")
    issued = c.admin_keys.ensure_bootstrap_key(ctx)
    assert issued is not None
    owner = c.humans.create(ctx, NewHuman(display_name="Ada", email="ada@example.com"))
    spare = c.admin_keys.create(ctx, name="spare", role="auditor")
    seeded = c.agents.register(
        ctx,
        NewAgent(
            name="seed-agent", owners=[owner.id], purpose="seed", environment="staging",
            activate=True,
        ),
    )  # fmt: skip
    assessment_id, _ = c.assessment.run_and_save(ctx)
    with serve_in_thread(create_app(c)) as url:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        rows = {
            "human_id": owner.id,
            "agent_id": seeded.id,
            "key_id": spare.key.id,
            "assessment_id": assessment_id,
        }
        yield Fuzzed(url=url, token=issued.secret, operations=operations, rows=rows)
    c.close()


def _run(fuzzed: Fuzzed, mode: GenerationMode, check: Callable[[schemathesis.Case], None]) -> int:
    """Run ``check`` on the generated cases of every operation; return how many
    operations got at least one case (an operation with no inputs has no invalid
    variant)."""
    for cases in fuzzed.cases(mode):
        for case in cases:
            check(case)
    return sum(1 for cases in fuzzed.cases(mode) if cases)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_error_when_authenticated(
    fuzzed: Fuzzed, mode: GenerationMode, session: requests.Session
) -> None:
    headers = {"Authorization": f"Bearer {fuzzed.token}"}

    def send(case: schemathesis.Case) -> None:
        case.call_and_validate(
            base_url=fuzzed.url,
            session=session,
            headers=headers,
            checks=[not_a_server_error],
            timeout=10,
        )

    def check(case: schemathesis.Case) -> None:
        send(case)
        if case.path_parameters:
            generated = case.path_parameters
            case.path_parameters = fuzzed.seeded(generated)
            try:
                send(case)
            finally:  # the case as generated, for the test without credentials
                case.path_parameters = generated

    assert len(fuzzed.operations) >= 20
    covered = _run(fuzzed, mode, check)
    if mode is GenerationMode.POSITIVE:
        assert covered == len(fuzzed.operations)
    else:  # all but the input-less operations (healthz, readyz, metrics, admin-keys list)
        assert covered >= len(fuzzed.operations) - 4


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_protected_operation_refuses_anonymous_callers(
    fuzzed: Fuzzed, mode: GenerationMode, session: requests.Session
) -> None:
    def check(case: schemathesis.Case) -> None:
        generated = case.headers
        case.headers = {k: v for k, v in (generated or {}).items() if k.lower() != "authorization"}
        try:
            response = case.call(base_url=fuzzed.url, session=session, timeout=10)
        finally:  # the case as generated, for a test that runs after this one
            case.headers = generated
        assert response.status_code < 500, response.text
        if case.operation.path not in PUBLIC:
            # Authentication runs before any input is read: a 401 problem, valid or not.
            assert response.status_code == 401, response.text
            (content_type,) = response.headers["content-type"]
            assert content_type.startswith("application/problem+json")

    covered = _run(fuzzed, mode, check)
    assert covered >= len(fuzzed.operations) - (4 if mode is GenerationMode.NEGATIVE else 0)
