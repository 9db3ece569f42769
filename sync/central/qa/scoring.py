"""Scoring an evaluation against its form version.

Answers are ``"yes"``, ``"no"``, ``"na"`` (only where the question allows
it) or, for a scale question, a whole number from 0 to its ``scale_max``.
Each answered question earns its answer's share of the best answer (yes 1,
no 0, a scale ``value / scale_max``) times its weight times its section's
weight; the score is what was earned over what could have been, in percent,
with not-applicable questions left out of both. A form with every question
not applicable has no score (``None``). A critical question answered "no"
fails the evaluation: its score is 0 whatever the rest earned (the earned
figure is kept as ``raw_score``), and it does not pass. Otherwise it passes
at the form's ``pass_score`` or above.

Scores are kept in hundredths of a percent (an integer, 0..10000), so both
index backends hold them exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from linetap.firmware.untrusted import ascii_int
from linetap.sync.central.qa.forms import Form, Question

NA = "na"
MAX_NOTE = 2000


class AnswerError(ValueError):
    """Answers that do not fit the form; the message names the question and what to send."""


@dataclass(frozen=True)
class Score:
    score: int | None  # hundredths of a percent; None when every question was not applicable
    raw_score: int | None  # before a critical failure set it to 0
    critical_failed: tuple[str, ...]  # ids of critical questions answered "no"
    passed: bool


def parse_answer(question: Question, raw: Any) -> str | int:
    """One answer from outside (a form field: a string), checked against its question."""
    if not isinstance(raw, str):
        raise AnswerError(f"question {question.id!r}: no answer given; choose one")
    if raw == NA:
        if not question.allow_na:
            raise AnswerError(f"question {question.id!r} cannot be not applicable; answer it")
        return NA
    if question.kind == "yes_no":
        if raw not in ("yes", "no"):
            raise AnswerError(f"question {question.id!r}: {raw[:20]!r} is not an answer; send yes or no")
        return raw
    value = ascii_int(raw, lo=0, hi=question.top)
    if value is None:
        raise AnswerError(f"question {question.id!r}: {raw[:20]!r} is not an answer; send a whole number "
                          f"from 0 to {question.top}")
    return value


def parse_answers(form: Form, raw: Mapping[str, Any]) -> dict[str, str | int]:
    """Every question's answer from ``raw`` (question id -> text); unknown ids and missing answers refused."""
    known = {q.id for _, q in form.questions()}
    unknown = sorted(str(k)[:64] for k in raw if k not in known)
    if unknown:
        raise AnswerError(f"form {form.id} v{form.version} has no question {unknown[0]!r}; "
                          "reload the page to get the form's questions")
    return {q.id: parse_answer(q, raw.get(q.id)) for _, q in form.questions()}


def score(form: Form, answers: Mapping[str, str | int]) -> Score:
    """The score of checked answers (:func:`parse_answers`)."""
    earned, possible = Fraction(0), Fraction(0)
    failed = []
    for section, question in form.questions():
        answer = answers[question.id]
        if answer == NA:
            continue
        weight = section.weight * question.weight
        value = 1 if answer == "yes" else 0 if answer == "no" else int(answer)
        earned += Fraction(value * weight, question.top)
        possible += weight
        if question.critical and answer == "no":
            failed.append(question.id)
    raw = None if possible == 0 else round(earned / possible * 10000)
    final = 0 if failed and raw is not None else raw
    passed = not failed and final is not None and final >= form.pass_score * 100
    return Score(final, raw, tuple(failed), passed)


def answer_fraction(question: Question, answer: str | int) -> float | None:
    """How much of the best answer an answer is (0..1); None for not applicable."""
    if answer == NA:
        return None
    value = 1 if answer == "yes" else 0 if answer == "no" else int(answer)
    return value / question.top


def percent(centi: int | None) -> str:
    """A score in hundredths of a percent as text ("87.5 %", "n/a")."""
    if centi is None:
        return "n/a"
    return f"{centi / 100:.1f} %"


def check_note(raw: Any, what: str = "note", *, required: bool = False) -> str | None:
    """A free-text note from a form field: bounded, stripped; refused when required and empty."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        if required:
            raise AnswerError(f"a {what} is required; write why")
        return None
    if not isinstance(raw, str):
        raise AnswerError(f"the {what} must be text")
    if len(raw) > MAX_NOTE:
        raise AnswerError(f"the {what} is {len(raw)} characters; at most {MAX_NOTE} are kept, shorten it")
    return raw.replace("\x00", "").strip()
