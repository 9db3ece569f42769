"""Evaluations and comments in the console: the call page's panels, scoring, amending, acknowledge,
dispute and resolve, and a list of evaluations.

A reviewer scores a call on its page while it plays (the panel sits under
the player): the answers are checked against the form version shown
(:mod:`~linetap.sync.central.qa.scoring`), the score is computed on the
server, and the evaluation is stored as version 1; it is never edited, only
amended as a new version. Who may do what, and when, is one table
(:mod:`~linetap.sync.central.qa.lifecycle`); the index stores a step only if
the state it was decided from is still the current one. Every endpoint that
names a call or an evaluation first passes
:func:`~linetap.sync.central.web.access.visible_recording` (an evaluation of a
call the user may not see does not exist for them), and every change is
audited (action ``evaluate`` or ``comment``).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from linetap.firmware.untrusted import MAX_SAFE_INT, ascii_int
from linetap.sync.central.qa.forms import Form, check_id, parse_form
from linetap.sync.central.qa.lifecycle import NotAllowed, actions_for, transition
from linetap.sync.central.qa.scoring import AnswerError, check_note, parse_answers, percent, score
from linetap.sync.central.web.access import NotVisible, Scope, agent_at, scope_of, visible_recording
from linetap.sync.central.web.audit import audit
from linetap.sync.central.web.pages import error_page, page

logger = logging.getLogger(__name__)

CALL = "/calls/{device_id}/{recording_id}"
STEPS = ("acknowledge", "dispute", "resolve")
MAX_LISTED = 500
MAX_POSITION_MS = 7 * 24 * 3600 * 1000


def routes() -> list[Route]:
    return [Route(f"{CALL}/evaluations", submit, methods=["POST"], name="evaluation_submit"),
            Route(f"{CALL}/comments", comment, methods=["POST"], name="comment_add"),
            Route("/evaluations", listing, name="evaluations"),
            Route("/evaluations/{evaluation_id}", evaluation_page, name="evaluation"),
            Route("/evaluations/{evaluation_id}/amend", amend, methods=["POST"], name="evaluation_amend"),
            Route("/evaluations/{evaluation_id}/{step}", step, methods=["POST"], name="evaluation_step")]


def _index(request: Request) -> Any:
    return request.app.state.settings.stored.index


def _now(request: Request) -> int:
    return int(request.app.state.settings.stored.now_ms())


def stored_form(request: Request, form_id: str, version: int | None = None) -> Form | None:
    """A stored form version, parsed once per app (a stored version never changes)."""
    cache = getattr(request.app.state, "qa_forms", None)
    if cache is None:
        cache = request.app.state.qa_forms = {}
    if version is not None and (form_id, version) in cache:
        return cache[(form_id, version)]
    row = _index(request).form(form_id, version)
    if row is None:
        return None
    form = parse_form(row["source"], source=f"stored form {form_id} v{row['version']}")
    cache[(form_id, row["version"])] = form
    return form


def newest_forms(request: Request) -> list[Form]:
    newest: dict[str, int] = {}
    for row in _index(request).forms():
        newest[row["form_id"]] = max(row["version"], newest.get(row["form_id"], 0))
    return [f for f in (stored_form(request, fid, v) for fid, v in sorted(newest.items())) if f is not None]


def _is_subject(user: dict[str, Any], evaluation: dict[str, Any]) -> bool:
    return user["role"] == "agent" and evaluation.get("agent") == user["name"]


def shown(request: Request, evaluation: dict[str, Any]) -> dict[str, Any]:
    """An evaluation as the templates show it: its form, score text and the user's buttons."""
    user = request.state.user
    return evaluation | {
        "form": stored_form(request, evaluation["form_id"], evaluation["form_version"]),
        "score_text": percent(evaluation["score"]),
        "actions": actions_for(evaluation["state"], user["role"], is_subject=_is_subject(user, evaluation))}


def call_context(request: Request, row: dict[str, Any], scope: Scope) -> dict[str, Any]:
    """The call page's evaluation and comment panels (called by the call page, after its scope check)."""
    index = _index(request)
    role = request.state.user["role"]
    evaluations = index.evaluations(device_id=row["device_id"], recording_id=row["recording_id"])
    can_submit = bool(actions_for(None, role, is_subject=False))
    forms = newest_forms(request) if can_submit else []
    chosen = request.query_params.get("form")
    return {"qa_evaluations": [shown(request, e) for e in evaluations],
            "qa_forms": forms, "qa_form": next((f for f in forms if f.id == chosen), forms[0] if forms else None),
            "qa_can_submit": can_submit, "qa_comments": index.comments(row["device_id"], row["recording_id"]),
            "qa_can_comment": role != "auditor"}


def _visible_call(request: Request) -> dict[str, Any]:
    index = _index(request)
    return visible_recording(index, scope_of(index, request.state.user), request.path_params["device_id"],
                             request.path_params["recording_id"])


def _visible_evaluation(request: Request) -> tuple[dict[str, Any], dict[str, Any]]:
    """The evaluation named in the path and its call, when the user may see the call."""
    index = _index(request)
    raw = request.path_params["evaluation_id"]
    found = index.evaluation(raw) if len(raw) <= 64 else None
    if found is None:
        raise NotVisible("no such evaluation")
    row = visible_recording(index, scope_of(index, request.state.user), found["device_id"], found["recording_id"])
    return found, row


def _back(row: dict[str, Any], flash: str, anchor: str = "evaluations") -> Response:
    url = f"/calls/{quote(row['device_id'], safe='')}/{quote(row['recording_id'], safe='')}"
    return RedirectResponse(f"{url}?flash={quote(flash)}#{anchor}", status_code=303)


def _refused(request: Request, e: Exception) -> Response:
    if isinstance(e, NotAllowed):
        return error_page(request, 403, "Not allowed", str(e))
    return error_page(request, 400, "Not accepted", f"{e}; nothing was stored")


def _scored(request: Request, fields: Any) -> tuple[Form, dict[str, Any], Any, str | None]:
    """The form version, answers, score and note a posted scoring form holds."""
    form_id = check_id(fields.get("form_id"), "form")
    version = ascii_int(fields.get("form_version"), lo=1, hi=MAX_SAFE_INT)
    form = stored_form(request, form_id, version) if version is not None else None
    if form is None:
        raise AnswerError(f"form {form_id} version {fields.get('form_version')!s:.20} is not stored; reload the "
                          "page to get the forms there are")
    answers = parse_answers(form, {k[2:]: v for k, v in fields.multi_items() if k.startswith("q_")})
    return form, answers, score(form, answers), check_note(fields.get("note"))


def _version_row(form: Form, answers: dict[str, Any], result: Any, note: str | None, **ids: Any) -> dict[str, Any]:
    return {**ids, "form_id": form.id, "form_version": form.version, "answers": answers, "score": result.score,
            "raw_score": result.raw_score, "critical_failed": result.critical_failed, "passed": result.passed,
            "note": note}


def submit(request: Request) -> Response:
    """``POST .../evaluations``: score the call on a form version (version 1 of a new evaluation)."""
    row = _visible_call(request)
    user, index = request.state.user, _index(request)
    try:
        transition(None, "submit", user["role"], is_subject=False)
        form, answers, result, note = _scored(request, request.state.form)
    except (AnswerError, NotAllowed, ValueError) as e:
        return _refused(request, e)
    now = _now(request)
    evaluation_id = uuid.uuid4().hex
    agent = agent_at(index.desk_assignments(), row["device_id"], row["started_ms"])
    index.submit_evaluation(_version_row(form, answers, result, note, evaluation_id=evaluation_id,
                                         device_id=row["device_id"], recording_id=row["recording_id"],
                                         reviewer=user["name"], agent=agent, submitted_ms=now), user["name"], now)
    audit(request, "evaluate", device_id=row["device_id"], recording_id=row["recording_id"],
          detail=f"submit {evaluation_id} form {form.id} v{form.version} score {percent(result.score)}")
    return _back(row, f"Evaluation submitted: {percent(result.score)}")


def amend(request: Request) -> Response:
    """``POST /evaluations/ID/amend``: a new version with new answers; the old ones stay as they were."""
    found, row = _visible_evaluation(request)
    user, index = request.state.user, _index(request)
    try:
        move = transition(found["state"], "amend", user["role"], is_subject=_is_subject(user, found))
        form, answers, result, note = _scored(request, request.state.form)
        if form.id != found["form_id"]:
            raise AnswerError(f"an amendment stays on form {found['form_id']}; score a new evaluation for "
                              f"form {form.id}")
    except (AnswerError, NotAllowed, ValueError) as e:
        return _refused(request, e)
    now = _now(request)
    version = index.amend_evaluation(
        _version_row(form, answers, result, note, evaluation_id=found["evaluation_id"], device_id=found["device_id"],
                     recording_id=found["recording_id"], reviewer=user["name"], agent=found["agent"],
                     submitted_ms=now), found["state"], move.to, user["name"], note, now)
    audit(request, "evaluate", device_id=row["device_id"], recording_id=row["recording_id"],
          detail=f"amend {found['evaluation_id']} to version {version} score {percent(result.score)}")
    return _back(row, f"Evaluation amended (version {version}): {percent(result.score)}")


def step(request: Request) -> Response:
    """``POST /evaluations/ID/acknowledge|dispute|resolve`` with an optional (or required) note."""
    action = request.path_params["step"]
    if action not in STEPS:
        return error_page(request, 404, "Not found", f"evaluations can be {', '.join(STEPS)}d or amended")
    found, row = _visible_evaluation(request)
    user = request.state.user
    try:
        move = transition(found["state"], action, user["role"], is_subject=_is_subject(user, found))
        note = check_note(request.state.form.get("note"), "reason" if action == "dispute" else "note",
                          required=move.note_required)
    except (AnswerError, NotAllowed) as e:
        return _refused(request, e)
    _index(request).evaluation_event(found["evaluation_id"], found["state"], action, move.to, user["name"], note,
                                     _now(request))
    audit(request, "evaluate", device_id=row["device_id"], recording_id=row["recording_id"],
          detail=f"{action} {found['evaluation_id']}")
    return _back(row, f"Evaluation {move.to}")


def comment(request: Request) -> Response:
    """``POST .../comments``: a note at a position in the call's audio (milliseconds from its start)."""
    row = _visible_call(request)
    user = request.state.user
    fields = request.state.form
    if user["role"] == "auditor":
        return error_page(request, 403, "Not allowed", "auditors read calls; they do not comment on them")
    try:
        body = check_note(fields.get("body"), "comment", required=True)
        position = ascii_int(fields.get("position_ms") or "0", lo=0, hi=MAX_POSITION_MS)
        if position is None:
            raise AnswerError("the position is not a whole number of milliseconds from the call's start; "
                              "use the player's time button")
    except AnswerError as e:
        return _refused(request, e)
    comment_id = uuid.uuid4().hex
    _index(request).add_comment({"comment_id": comment_id, "device_id": row["device_id"],
                                 "recording_id": row["recording_id"], "author": user["name"],
                                 "position_ms": position, "body": body, "created_ms": _now(request)})
    audit(request, "comment", device_id=row["device_id"], recording_id=row["recording_id"],
          detail=f"comment {comment_id} at {position} ms")
    return _back(row, "Comment added", "comments")


# The calls page's hooks (web/calls.py): a score column and a filter on the score a call was given last
# (its newest evaluation or amendment; ``min_score``, ``max_score``: whole percent).
_NEWEST_SCORE = ("EXISTS (SELECT 1 FROM evaluations e WHERE e.device_id = recordings.device_id AND "
                 "e.recording_id = recordings.recording_id AND e.submitted_ms = (SELECT MAX(v.submitted_ms) FROM "
                 "evaluations v WHERE v.device_id = e.device_id AND v.recording_id = e.recording_id) AND e.score {} ?)")


def search_conditions(values: dict[str, str]) -> list[tuple[str, tuple[Any, ...]]]:
    """Calls with an evaluation whose newest version scored at least ``min_score`` / at most ``max_score``."""
    out = []
    for name, relation in (("min_score", ">="), ("max_score", "<=")):
        percent_value = ascii_int(values.get(name), lo=0, hi=100)
        if percent_value is not None:
            out.append((_NEWEST_SCORE.format(relation), (percent_value * 100,)))
    return out


def row_extras(index: Any, rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The newest evaluation's score (and state) of each call on the page."""
    out = {}
    for row in rows:
        found = index.evaluations(device_id=row["device_id"], recording_id=row["recording_id"])
        if found:
            newest = max(found, key=lambda e: e["submitted_ms"])
            out[(row["device_id"], row["recording_id"])] = {"score": f"{percent(newest['score'])} "
                                                                     f"({newest['state']})"}
    return out


def evaluation_page(request: Request) -> Response:
    """``GET /evaluations/ID``: every version with its answers, the history, and what the user may do."""
    found, row = _visible_evaluation(request)
    versions = [v | {"form": stored_form(request, v["form_id"], v["form_version"]), "score_text": percent(v["score"])}
                for v in found["versions"]]
    return page(request, "evaluation.html", {"evaluation": shown(request, found), "versions": versions,
                                             "row": row, "events": found["events"]})


def listing(request: Request) -> Response:
    """``GET /evaluations``: the newest evaluations of calls the user may see (an agent: their own), and
    what waits for the user (an agent: to acknowledge; a supervisor: disputes to resolve)."""
    index, user = _index(request), request.state.user
    state = request.query_params.get("state")
    scope = scope_of(index, user)
    rows = []
    for evaluation in reversed(index.evaluations()):
        if state and evaluation["state"] != state:
            continue
        call = index.recording(evaluation["recording_id"], evaluation["device_id"])
        if call is None or not scope.covers(call):
            continue
        rows.append(shown(request, evaluation) | {"call": call})
        if len(rows) >= MAX_LISTED:
            break
    waiting = [r for r in rows if (r["state"] == "submitted" and "acknowledge" in r["actions"])
               or (r["state"] == "disputed" and "resolve" in r["actions"])]
    return page(request, "evaluations.html", {"rows": rows, "waiting": waiting, "state": state})
