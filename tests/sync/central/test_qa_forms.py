"""Evaluation forms, scoring and the evaluation life cycle (sans-IO)."""

from __future__ import annotations

import pytest

from linetap.firmware.errors import ConfigError
from linetap.sync.central.qa import lifecycle
from linetap.sync.central.qa.forms import MAX_FORM_BYTES, parse_form
from linetap.sync.central.qa.lifecycle import NotAllowed, transition
from linetap.sync.central.qa.scoring import AnswerError, check_note, parse_answers, percent, score

FORM = """
id = "inbound"
version = 2
title = "Inbound service call"
pass_score = 75

[[sections]]
title = "Opening"
weight = 2

[[sections.questions]]
id = "greeting"
text = "Greeted the caller with the company's name"
kind = "yes_no"
critical = true

[[sections.questions]]
id = "verified"
text = "Verified who the caller is"
kind = "yes_no"
weight = 3
allow_na = true

[[sections]]
title = "Manner"

[[sections.questions]]
id = "empathy"
text = "Showed empathy"
kind = "scale"
scale_max = 4
weight = 2
allow_na = true
"""


def form():
    return parse_form(FORM, source="inbound.toml")


def test_a_good_form_reads_with_its_version_and_defaults() -> None:
    f = form()
    assert (f.id, f.version, f.title, f.pass_score) == ("inbound", 2, "Inbound service call", 75)
    assert [q.id for _, q in f.questions()] == ["greeting", "verified", "empathy"]
    assert f.question("greeting").weight == 1 and f.question("greeting").critical
    assert f.sections[1].weight == 1 and f.question("empathy").top == 4


@pytest.mark.parametrize(("change", "named"), [
    (('id = "inbound"', 'id = "In Bound"'), "id = 'In Bound': not an id; use 1 to 64 lower-case"),
    (("version = 2", "version = 0"), "version = 0: out of range; use a value >= 1"),
    (("version = 2", 'version = "2"'), "version = '2': must be a whole number, not a string"),
    (('title = "Inbound service call"', 'titel = "x"'), "titel = 'x': unknown key; did you mean 'title'?"),
    (("scale_max = 4", "scale_max = 11"), "sections[1].questions[0].scale_max = 11: out of range"),
    (("scale_max = 4", ""), "sections[1].questions[0].scale_max: a scale question needs scale_max"),
    (('kind = "scale"', 'kind = "stars"'), "sections[1].questions[0].kind = 'stars': not an allowed value"),
    (("weight = 3", "weight = 0"), "sections[0].questions[1].weight = 0: out of range; use a value >= 1 and <= 100"),
    (('id = "verified"', 'id = "greeting"'), "sections[0].questions[1].id = 'greeting': the same id as "
                                             "sections[0].questions[0]"),
    (("pass_score = 75", "pass_score = 101"), "pass_score = 101: out of range; use a value >= 0 and <= 100"),
])
def test_each_mistake_is_named_with_its_fix(change: tuple[str, str], named: str) -> None:
    text = FORM.replace(*change, 1)
    with pytest.raises(ConfigError) as e:
        parse_form(text, source="inbound.toml")
    assert f"inbound.toml: {named}" in str(e.value)


def test_critical_needs_yes_no_and_scale_max_only_on_scales() -> None:
    text = FORM.replace('kind = "scale"', 'kind = "scale"\ncritical = true').replace(
        'kind = "yes_no"\nweight = 3', 'kind = "yes_no"\nweight = 3\nscale_max = 3')
    with pytest.raises(ConfigError) as e:
        parse_form(text, source="f.toml")
    lines = str(e.value).splitlines()
    assert any("questions[0].critical = True: only a yes_no question can be critical" in line for line in lines)
    assert any("questions[1].scale_max = 3: only a scale question has scale_max" in line for line in lines)


def test_every_mistake_at_once_and_no_section_is_a_mistake() -> None:
    with pytest.raises(ConfigError) as e:
        parse_form('id = "x"\nversion = 1\ntitle = "t"\nsections = []\nbogus = 1\n', source="f.toml")
    message = str(e.value)
    assert "sections = []: needs at least 1" in message and "bogus = 1: unknown key" in message


@pytest.mark.parametrize("text", ["id = ", "x" * (MAX_FORM_BYTES + 1), b"id = \"\xff\"", "a = [" * 100])
def test_hostile_files_are_refused_with_a_reason(text: str | bytes) -> None:
    with pytest.raises(ConfigError, match="f.toml"):
        parse_form(text, source="f.toml")


# -- scoring --

def answers(**given: str) -> dict[str, str | int]:
    return parse_answers(form(), given)


def test_weights_of_question_and_section() -> None:
    # greeting yes: 2*1 of 2; verified no: 0 of 2*3; empathy 2 of 4: 1*2*0.5 of 2 -> (2 + 0 + 1) / 10
    s = score(form(), answers(greeting="yes", verified="no", empathy="2"))
    assert (s.score, s.raw_score, s.critical_failed, s.passed) == (3000, 3000, (), False)
    s = score(form(), answers(greeting="yes", verified="yes", empathy="4"))
    assert (s.score, s.passed) == (10000, True)


def test_not_applicable_leaves_the_question_out_of_both_sides() -> None:
    s = score(form(), answers(greeting="yes", verified="na", empathy="3"))  # (2 + 1.5) / (2 + 2)
    assert (s.score, s.passed) == (8750, True)
    assert percent(s.score) == "87.5 %"


def test_a_critical_no_fails_the_whole_form() -> None:
    s = score(form(), answers(greeting="no", verified="yes", empathy="4"))
    assert (s.score, s.raw_score, s.critical_failed, s.passed) == (0, 8000, ("greeting",), False)


def test_every_question_not_applicable_has_no_score() -> None:
    f = parse_form(FORM.replace('critical = true', 'allow_na = true'), source="f.toml")
    s = score(f, parse_answers(f, {"greeting": "na", "verified": "na", "empathy": "na"}))
    assert (s.score, s.passed, percent(s.score)) == (None, False, "n/a")


@pytest.mark.parametrize(("given", "named"), [
    ({"greeting": "yes", "verified": "yes"}, "question 'empathy': no answer given"),
    ({"greeting": "na", "verified": "yes", "empathy": "1"}, "question 'greeting' cannot be not applicable"),
    ({"greeting": "maybe", "verified": "yes", "empathy": "1"}, "'maybe' is not an answer; send yes or no"),
    ({"greeting": "yes", "verified": "yes", "empathy": "5"}, "from 0 to 4"),
    ({"greeting": "yes", "verified": "yes", "empathy": "٣"}, "from 0 to 4"),
    ({"greeting": "yes", "verified": "yes", "empathy": "01"}, "from 0 to 4"),
    ({"greeting": "yes", "verified": "yes", "empathy": "1", "extra": "yes"}, "has no question 'extra'"),
])
def test_bad_answers_are_named(given: dict[str, str], named: str) -> None:
    with pytest.raises(AnswerError, match=named):
        parse_answers(form(), given)


def test_notes_are_bounded() -> None:
    assert check_note("  why \x00 ") == "why"
    assert check_note("") is None
    with pytest.raises(AnswerError, match="required"):
        check_note(" ", "reason", required=True)
    with pytest.raises(AnswerError, match="at most 2000"):
        check_note("x" * 2001)


# -- the life cycle --

# (state, action, role, is the evaluated agent) -> the state it leads to, or None: refused
CASES = [
    (None, "submit", "reviewer", False, "submitted"),
    (None, "submit", "supervisor", False, "submitted"),
    (None, "submit", "agent", True, None),
    (None, "submit", "auditor", False, None),
    (None, "acknowledge", "agent", True, None),
    ("submitted", "amend", "reviewer", False, "submitted"),
    ("submitted", "acknowledge", "agent", True, "acknowledged"),
    ("submitted", "acknowledge", "agent", False, None),  # another agent
    ("submitted", "acknowledge", "supervisor", False, None),
    ("submitted", "dispute", "agent", True, "disputed"),
    ("submitted", "resolve", "supervisor", False, None),
    ("disputed", "resolve", "supervisor", False, "resolved"),
    ("disputed", "resolve", "reviewer", False, None),
    ("disputed", "resolve", "agent", True, None),
    ("disputed", "amend", "supervisor", False, "submitted"),
    ("disputed", "amend", "reviewer", False, None),
    ("disputed", "acknowledge", "agent", True, None),
    ("acknowledged", "dispute", "agent", True, None),
    ("acknowledged", "amend", "admin", False, "submitted"),
    ("resolved", "dispute", "agent", True, None),
    ("resolved", "amend", "supervisor", False, "submitted"),
]


@pytest.mark.parametrize(("state", "action", "role", "subject", "to"), CASES)
def test_the_life_cycle_table(state: str | None, action: str, role: str, subject: bool, to: str | None) -> None:
    if to is None:
        with pytest.raises(NotAllowed):
            transition(state, action, role, is_subject=subject)
    else:
        assert transition(state, action, role, is_subject=subject).to == to


def test_refusals_say_what_may_be_done() -> None:
    with pytest.raises(NotAllowed, match="cannot be disputed; it can be: amend"):
        transition("acknowledged", "dispute", "agent", is_subject=True)
    with pytest.raises(NotAllowed, match="only the evaluated agent may acknowledge"):
        transition("submitted", "acknowledge", "agent", is_subject=False)
    with pytest.raises(NotAllowed, match="only admin or supervisor may resolve"):
        transition("disputed", "resolve", "reviewer", is_subject=False)


def test_every_state_is_reachable_and_every_row_is_well_formed() -> None:
    reached = {t.to for t in lifecycle.TRANSITIONS}
    assert reached == set(lifecycle.STATES)
    assert {t.action for t in lifecycle.TRANSITIONS} == set(lifecycle.ACTIONS)
    assert all(t.state in (None, *lifecycle.STATES) for t in lifecycle.TRANSITIONS)
    assert lifecycle.actions_for("submitted", "agent", is_subject=True) == ["acknowledge", "dispute"]
    assert lifecycle.actions_for("submitted", "agent", is_subject=False) == []
    assert lifecycle.actions_for("disputed", "supervisor", is_subject=False) == ["amend", "resolve"]


# -- the forms command --

def test_forms_add_and_list(tmp_path, capsys) -> None:
    from linetap.sync.central.cli import main

    def run(*argv: str) -> int:
        return main(["--data-dir", str(tmp_path / "central"), *argv])

    path = tmp_path / "inbound.toml"
    path.write_text(FORM)
    assert run("forms", "add", str(path)) == 0
    assert "form inbound version 2 ('Inbound service call', 3 questions): added" in capsys.readouterr().out
    assert run("forms", "add", str(path), "--json") == 0
    assert '"added": false' in capsys.readouterr().out
    path.write_text(FORM.replace("Showed empathy", "Showed some empathy"))
    assert run("forms", "add", str(path)) != 0
    assert "form inbound version 2 is stored already with other content" in capsys.readouterr().err
    path.write_text(FORM.replace("scale_max = 4", "scale_max = 1"))
    assert run("forms", "add", str(path)) != 0
    assert "questions[0].scale_max = 1: out of range; use a value >= 2" in capsys.readouterr().err
    assert run("forms", "add", str(tmp_path)) != 0
    assert "is a folder" in capsys.readouterr().err
    assert run("forms", "list") == 0
    assert capsys.readouterr().out.startswith("inbound  v2  Inbound service call  added ")
