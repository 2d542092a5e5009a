"""The question bank (core/assessment/bank.py): the shipped bank loads, its references
are well formed, its evidence keys are the declared ones, its commands and templates
are real; malformed banks are refused naming the question and the key."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest
import typer
import yaml
from tests.unit.test_assessment_scoring import small_bank_data

from agentiam.cli.main import app
from agentiam.core.assessment.bank import LADDER_STAGES, QuestionBank, load_bank, shipped_bank_text
from agentiam.core.assessment.evidence_keys import EVIDENCE_KEYS, MEASURED_EVIDENCE_KEYS
from agentiam.core.assessment.model import (
    AI_RMF_SUBCATEGORIES,
    CSF_SUBCATEGORIES,
    Domain,
    EvidenceType,
)
from agentiam.core.policy.templates import TEMPLATES
from agentiam.errors import InvalidInput


@pytest.fixture(scope="module")
def shipped() -> QuestionBank:
    return load_bank(yaml.safe_load(shipped_bank_text()))


def test_the_shipped_bank_loads_with_a_version_and_covers_every_domain(
    shipped: QuestionBank,
) -> None:
    assert shipped.version
    assert 30 <= len(shipped.questions) <= 45
    per_domain = Counter(q.domain for q in shipped.questions)
    assert set(per_domain) == set(Domain)
    assert all(count >= 3 for count in per_domain.values())
    assert any(q.agentic_only for q in shipped.questions)
    # every domain keeps questions a non-agentic inventory is asked
    assert {q.domain for q in shipped.in_scope(agentic=False)} == set(Domain)
    kinds = Counter(q.evidence for q in shipped.questions)
    assert kinds[EvidenceType.MEASURED] >= 15
    assert kinds[EvidenceType.SELF_REPORTED] >= 10


def test_every_reference_is_well_formed(shipped: QuestionBank) -> None:
    for q in shipped.questions:
        refs = q.references
        assert refs.csf, q.id  # every question maps to CSF 2.0
        for ref in refs.csf:
            assert re.fullmatch(r"(GV|ID|PR|DE|RS|RC)\.[A-Z]{2}-\d\d", ref)
            assert ref in CSF_SUBCATEGORIES
        for ref in refs.ai_rmf:
            assert re.fullmatch(r"(GOVERN|MAP|MEASURE|MANAGE) \d\.\d{1,2}", ref)
            assert ref in AI_RMF_SUBCATEGORIES
        assert set(refs.ai_rmf_functions) <= {"GOVERN", "MAP", "MEASURE", "MANAGE"}
        assert all(1 <= article <= 113 for article in refs.eu_ai_act)
        assert all(re.fullmatch(r"ASI(0[1-9]|10)", ref) for ref in refs.owasp_agentic)
        if q.agentic_only:
            assert refs.owasp_agentic, q.id


def test_measured_evidence_keys_are_the_declared_set(shipped: QuestionBank) -> None:
    used = {q.evidence_key for q in shipped.questions if q.evidence_key is not None}
    assert used <= MEASURED_EVIDENCE_KEYS
    assert used == MEASURED_EVIDENCE_KEYS  # no declared key goes unused
    assert frozenset(EVIDENCE_KEYS) == MEASURED_EVIDENCE_KEYS
    for q in shipped.questions:
        has_key = q.evidence is not EvidenceType.SELF_REPORTED
        assert (q.evidence_key is not None) == has_key
        assert bool(q.thresholds) == has_key


def _resolve(command_line: str) -> tuple[Any, list[str]]:
    """The (typer/click) command an 'agentiam ...' line names, and the options it uses."""
    words = command_line.split()
    assert words[0] == "agentiam"
    command: Any = typer.main.get_command(app)
    rest = words[1:]
    # descend through groups; a placeholder (TRACE_ID) is a group's own argument
    while hasattr(command, "commands") and rest and re.fullmatch(r"[a-z][a-z-]*", rest[0]):
        sub = command.commands.get(rest[0])
        assert sub is not None, f"{command_line}: no command {rest[0]!r}"
        command, rest = sub, rest[1:]
    return command, [w.split("=", 1)[0] for w in rest if w.startswith("-")]


def test_every_remedy_command_is_a_real_agentiam_command(shipped: QuestionBank) -> None:
    seen = 0
    for q in shipped.questions:
        for line in q.remedy.commands:
            command, options = _resolve(line)
            known = {"--help"}
            for param in command.params:
                known.update(getattr(param, "opts", ()))
                known.update(getattr(param, "secondary_opts", ()))
            for option in options:
                assert option in known, f"{q.id}: {line}: no option {option}"
            seen += 1
    assert seen >= 30


def test_the_command_check_catches_a_made_up_command() -> None:
    with pytest.raises(AssertionError, match="no command 'frobnicate'"):
        _resolve("agentiam agents frobnicate AGENT")


def test_every_remedy_template_is_a_real_policy_template(shipped: QuestionBank) -> None:
    named = {t for q in shipped.questions for t in q.remedy.templates}
    assert named
    assert named <= set(TEMPLATES)
    for q in shipped.questions:
        for line in q.remedy.commands:
            match = re.search(r"--template (\S+)", line)
            if match:
                assert match.group(1) in TEMPLATES


def test_the_shipped_ladders_have_their_stages_and_known_questions(
    shipped: QuestionBank,
) -> None:
    assert [ladder.name for ladder in shipped.ladders] == list(LADDER_STAGES)
    for ladder in shipped.ladders:
        assert tuple(s.name for s in ladder.stages) == LADDER_STAGES[ladder.name]
        for stage in ladder.stages[1:]:
            assert stage.requires, (ladder.name, stage.name)
            for qid, _ in stage.requires:
                assert shipped.question(qid) is not None


def test_the_core_loader_does_not_import_yaml() -> None:
    code = (
        "import sys, agentiam.core.assessment as a; "
        "a.shipped_bank_text(); print('yaml' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


# -- strict loading ---------------------------------------------------------------------


def _question(data: dict[str, Any], qid: str) -> dict[str, Any]:
    return next(q for q in data["questions"] if q["id"] == qid)


def _refused(data: Any) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        load_bank(data)
    return caught.value


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("colour", "blue", "question govern.q_owners: colour"),
        ("weight", 0, "question govern.q_owners: weight"),
        ("weight", -1, "question govern.q_owners: weight"),
        ("weight", 11, "question govern.q_owners: weight"),
        ("weight", "3", "question govern.q_owners: weight"),
        ("weight", True, "question govern.q_owners: weight"),
        ("weight", float("nan"), "question govern.q_owners: weight"),
        ("risk", 6, "question govern.q_owners: risk"),
        ("effort", 0, "question govern.q_owners: effort"),
        ("evidence", "guessed", "question govern.q_owners: evidence"),
        ("evidence_key", "agents.made_up", "question govern.q_owners: evidence_key"),
        ("practice", "govern.nope", "question govern.q_owners: practice"),
        ("practice", "protect.p3", "question govern.q_owners: id"),  # domain mismatch
        ("text", "", "question govern.q_owners: text"),
        ("agentic_only", "yes", "question govern.q_owners: agentic_only"),
        ("references", {"csf": ["PR.AA-99"]}, "question govern.q_owners: references: csf[0]"),
        ("references", {"csf": ["XX.YY-01"]}, "question govern.q_owners: references: csf[0]"),
        (
            "references",
            {"ai_rmf": ["GOVERN 9.1"]},
            "question govern.q_owners: references: ai_rmf[0]",
        ),
        (
            "references",
            {"eu_ai_act": [114]},
            "question govern.q_owners: references: eu_ai_act[0]",
        ),
        (
            "references",
            {"owasp_agentic": ["ASI11"]},
            "question govern.q_owners: references: owasp_agentic[0]",
        ),
        ("references", {"nist": ["x"]}, "question govern.q_owners: references: nist"),
        (
            "remedy",
            {"templates": ["allow_everything"]},
            "question govern.q_owners: remedy: templates[0]",
        ),
        ("remedy", {"commands": ["rm -rf /"]}, "question govern.q_owners: remedy: commands[0]"),
        # thresholds: wrong direction for the key, wrong order, out of range
        (
            "thresholds",
            [{"level": 4, "at_most": 0.1}],
            "question govern.q_owners: thresholds[0]: at_most: this key is better higher",
        ),
        (
            "thresholds",
            [{"level": 3, "at_least": 0.5}, {"level": 4, "at_least": 0.9}],
            "question govern.q_owners: thresholds[1]",
        ),
        (
            "thresholds",
            [{"level": 4, "at_least": 0.5}, {"level": 3, "at_least": 0.9}],
            "question govern.q_owners: thresholds[1]",
        ),
        ("thresholds", [{"level": 4, "at_least": 1.5}], "question govern.q_owners: thresholds[0]"),
        ("thresholds", [{"level": 5, "at_least": 0.5}], "question govern.q_owners: thresholds[0]"),
        ("thresholds", [], "question govern.q_owners: thresholds"),
    ],
)
def test_a_bad_question_is_refused_naming_it_and_the_key(key: str, value: Any, named: str) -> None:
    data = copy.deepcopy(small_bank_data())
    _question(data, "govern.q_owners")[key] = value
    err = _refused(data)
    assert err.detail.startswith(named), err.detail


def test_a_duplicate_question_id_is_refused() -> None:
    data = small_bank_data()
    data["questions"].append(copy.deepcopy(_question(data, "govern.q_policy")))
    assert _refused(data).detail.startswith("question govern.q_policy: duplicate id")


def test_a_missing_key_is_refused() -> None:
    data = small_bank_data()
    del _question(data, "govern.q_policy")["weight"]
    assert _refused(data).detail.startswith("question govern.q_policy: weight: is required")


def test_self_reported_questions_take_no_evidence_key_and_measured_ones_need_one() -> None:
    data = small_bank_data()
    _question(data, "govern.q_policy")["evidence_key"] = "agents.owner_share"
    assert _refused(data).detail.startswith("question govern.q_policy: evidence_key")
    data = small_bank_data()
    del _question(data, "govern.q_owners")["evidence_key"]
    assert _refused(data).detail.startswith("question govern.q_owners: evidence_key")


def test_an_unknown_domain_is_refused_naming_the_practice() -> None:
    data = small_bank_data()
    data["practices"][0]["domain"] = "monetise"
    assert _refused(data).detail.startswith("practice govern.p1: domain: unknown domain")


@pytest.mark.parametrize(
    ("mutate", "named"),
    [
        (lambda d: d.pop("version"), "bank: version"),
        (lambda d: d.update(extra=1), "bank: extra"),
        (lambda d: d.update(questions=[]), "bank: questions"),
        (lambda d: d["ladders"].pop("governance"), "bank: ladders: governance"),
        (
            lambda d: d["ladders"]["agent_iam"]["stages"].reverse(),
            "ladder agent_iam: stages",
        ),
        (
            lambda d: d["ladders"]["agent_iam"]["stages"][1]["requires"].update(
                {"govern.ghost": 2}
            ),
            "ladder agent_iam stage foundation: requires: govern.ghost",
        ),
        (
            lambda d: d["ladders"]["agent_iam"]["stages"][1]["requires"].update(
                {"govern.q_policy": 9}
            ),
            "ladder agent_iam stage foundation: requires: govern.q_policy",
        ),
        (
            lambda d: d["practices"].append(
                {"id": "recover.empty", "domain": "recover", "title": "t", "description": "d"}
            ),
            "practice recover.empty: has no question",
        ),
    ],
)
def test_a_malformed_bank_is_refused_naming_where(mutate: Any, named: str) -> None:
    data = small_bank_data()
    mutate(data)
    assert _refused(data).detail.startswith(named)


def test_a_bank_that_is_not_a_mapping_is_refused() -> None:
    assert _refused(["a", "list"]).detail.startswith("bank: must be a mapping")
    assert _refused(None).detail.startswith("bank: must be a mapping")


def test_an_oversized_bank_is_refused_before_it_is_read() -> None:
    data = small_bank_data()
    one = _question(data, "govern.q_policy")
    data["questions"] = [dict(one, id=f"govern.q{i:04d}") for i in range(501)]
    assert _refused(data).detail.startswith("bank: questions: holds 501 items")
