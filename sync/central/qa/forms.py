"""Evaluation forms: a TOML file read through the project's schema into a frozen :class:`Form`.

A form is sections of questions; each question is ``yes_no`` or ``scale``
(0 to ``scale_max``), has a weight, may allow "not applicable" (``allow_na``),
and may be ``critical``: a critical question answered "no" fails the whole
evaluation whatever else scored (:mod:`~linetap.sync.central.qa.scoring`).
A form is versioned: ``id`` names it, ``version`` (1, 2, ...) one wording of
it, and every evaluation keeps the version it was scored on, so a later
version never changes an old score. The store keeps each version's TOML as
added (``linetap-central forms add FILE``).

Example::

    id = "inbound"
    version = 1
    title = "Inbound service call"
    pass_score = 80

    [[sections]]
    title = "Opening"

    [[sections.questions]]
    id = "greeting"
    text = "Greeted the caller with the company's name"
    kind = "yes_no"
    weight = 2
    critical = true

Every mistake in a form is named with its key path and how to fix it
(:func:`~linetap.firmware.schema.load_model`), all at once.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from linetap.firmware.errors import ConfigError
from linetap.firmware.schema import Invalid, Problem, Schema, load_model, parse_toml

MAX_FORM_BYTES = 64 * 1024  # a form's TOML; forms of peers run to a few KiB
MAX_SECTIONS = 20
MAX_QUESTIONS = 100  # in one section
MAX_TEXT = 500
_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}\Z")
ID_HINT = "use 1 to 64 lower-case letters, digits, '-' or '_', starting with a letter or digit"



def _id(value: str) -> str:
    if not _ID.match(value):
        raise ValueError(f"not an id; {ID_HINT}")
    return value


Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]
FormId = Annotated[str, AfterValidator(_id)]


class Question(Schema):
    id: FormId
    text: Text
    kind: Literal["yes_no", "scale"]
    weight: Annotated[int, Field(ge=1, le=100)] = 1
    scale_max: Annotated[int, Field(ge=2, le=10)] | None = None
    allow_na: bool = False
    critical: bool = False

    @model_validator(mode="after")
    def _kind_fits(self) -> Question:
        problems = []
        if self.kind == "scale" and self.scale_max is None:
            problems.append(Problem(("scale_max",), None, "a scale question needs scale_max; add e.g. "
                                    "scale_max = 5 (answers run from 0 to it)"))
        if self.kind == "yes_no" and self.scale_max is not None:
            problems.append(Problem(("scale_max",), self.scale_max, "only a scale question has scale_max; "
                                    "remove it, or set kind = \"scale\""))
        if self.critical and self.kind != "yes_no":
            problems.append(Problem(("critical",), True, "only a yes_no question can be critical (a \"no\" "
                                    "fails the form); make it kind = \"yes_no\" or remove critical"))
        if problems:
            raise Invalid(problems)
        return self

    @property
    def top(self) -> int:
        """The best answer's value: 1 for yes/no, ``scale_max`` for a scale."""
        return 1 if self.kind == "yes_no" else int(self.scale_max or 1)


class Section(Schema):
    title: Text
    weight: Annotated[int, Field(ge=1, le=100)] = 1
    questions: Annotated[list[Question], Field(min_length=1, max_length=MAX_QUESTIONS)]


class Form(Schema):
    id: FormId
    version: Annotated[int, Field(ge=1, le=1_000_000)]
    title: Text
    pass_score: Annotated[int, Field(ge=0, le=100)] = 80
    sections: Annotated[list[Section], Field(min_length=1, max_length=MAX_SECTIONS)]

    @model_validator(mode="after")
    def _question_ids_unique(self) -> Form:
        seen: dict[str, tuple[int, int]] = {}
        problems = []
        for s, section in enumerate(self.sections):
            for q, question in enumerate(section.questions):
                if question.id in seen:
                    first = seen[question.id]
                    problems.append(Problem(("sections", s, "questions", q, "id"), question.id,
                                            f"the same id as sections[{first[0]}].questions[{first[1]}]; "
                                            "give every question of a form its own id"))
                seen.setdefault(question.id, (s, q))
        if problems:
            raise Invalid(problems)
        return self

    def questions(self) -> list[tuple[Section, Question]]:
        """Every question with its section, in the form's order."""
        return [(section, question) for section in self.sections for question in section.questions]

    def question(self, question_id: str) -> Question | None:
        return next((q for _, q in self.questions() if q.id == question_id), None)


def parse_form(text: str | bytes, *, source: str) -> Form:
    """A form from its TOML; :class:`ConfigError` naming every mistake (``source`` starts each line)."""
    if len(text) > MAX_FORM_BYTES:
        raise ConfigError(f"{source}: the form is {len(text)} bytes; at most {MAX_FORM_BYTES} are accepted "
                          "(split it into several forms)")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{source}: byte {e.start} is not UTF-8 text; save the form as UTF-8") from None
    data = parse_toml(text, source=source)
    return load_model(Form, data, source=source, guide="the example in `linetap-central forms --help`")


def check_id(value: Any, what: str) -> str:
    """A form or question id from outside (a URL, a form field), or ValueError naming it."""
    if not isinstance(value, str) or not _ID.match(value):
        raise ValueError(f"{what} {str(value)[:70]!r} is not an id; {ID_HINT}")
    return value


def to_dict(form: Form) -> dict[str, Any]:
    """The form as plain data (for templates and JSON output)."""
    return form.model_dump(mode="json")
