"""The retention page: legal holds set and released, erasure with a reason, tombstones, the next run's preview.

Every action goes through the same functions as ``linetap-central hold`` and
``erase`` (:mod:`~linetap.sync.central.retention`): an erase writes the
operator-signed tombstone first and is refused for a call on legal hold.
Each post names a recording by box and id; it reaches the index only through
:func:`~linetap.sync.central.web.access.visible_recording` with the user's
scope, and is appended to the access log with the reason. An erase asks for
the recording id typed again before it runs. The preview is
:func:`~linetap.sync.central.retention.retention_due` under the store's
``[retention]`` config: what ``retention run`` would erase now.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from linetap.firmware.errors import AuthError, ConfigError, LinetapError
from linetap.sync.central import retention as rules
from linetap.sync.central.keys import operator_public_key
from linetap.sync.central.tombstone import verify_tombstone
from linetap.sync.central.web.access import scope_of, visible_recording
from linetap.sync.central.web.audit import audit
from linetap.sync.central.web.pages import iso, page
from linetap.sync.central.web.retentionview import MAX_ROWS, Target, confirmed, due_rows, policy_text, target

logger = logging.getLogger(__name__)


def routes() -> list[Route]:
    return [Route("/retention", retention_page, name="retention"),
            Route("/retention/hold", hold, methods=["POST"], name="retention_hold"),
            Route("/retention/erase", erase, methods=["POST"], name="retention_erase")]


def _context(request: Request, **extra: Any) -> dict[str, Any]:
    settings = request.app.state.settings
    stored, policy = settings.stored, settings.config.retention
    scope = scope_of(stored.index, request.state.user)
    every = [r for r in stored.index.recordings(erased=None) if scope.covers(r)]  # one pass for both tables
    held = [r for r in every if r["hold"] and r["erased_ms"] is None]
    erased = sorted((r for r in every if r["erased_ms"] is not None), key=lambda r: r["erased_ms"], reverse=True)
    due, kept = rules.retention_due(stored, policy)
    preview = due_rows([r for r in due if scope.covers(r)], [r for r in kept if scope.covers(r)], policy)
    role = request.state.user["role"]
    query = request.query_params
    return {"policy": policy_text(policy), "may_act": role in ("admin", "auditor"), "may_erase": role == "admin",
            "selected": {"device": query.get("device", "")[:64], "recording": query.get("recording", "")[:64]},
            "held": [_row(r) for r in held[:MAX_ROWS]], "held_count": len(held),
            "due": [_due(r) for r in preview[:MAX_ROWS]], "due_count": sum(not r.held for r in preview),
            "tombstones": _tombstones(stored, erased[:MAX_ROWS]), "erased_count": len(erased), **extra}


def _row(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "started": iso(row["started_ms"])}


def _due(row: Any) -> dict[str, Any]:
    return {**row.__dict__, "started": iso(row.started_ms), "due": iso(row.due_ms)}


def _tombstones(stored: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each erased recording with its tombstone read back and its operator signature checked."""
    try:
        key = operator_public_key(stored.data_dir)
    except LinetapError as e:
        key, missing = None, str(e)
    shown = []
    for row in rows:
        check, verified = "", False
        if key is None:
            check = f"not checked: {missing}"
        elif not row["tombstone_key"]:
            check = "MISSING: the index names no tombstone"
        else:
            try:
                verify_tombstone(stored.store.get(row["tombstone_key"]), key)
                check, verified = "signed by the operator key, verified", True
            except (AuthError, OSError, LinetapError) as e:
                check = f"DOES NOT VERIFY: {e}"
        shown.append({"device_id": row["device_id"], "seq": row["seq"], "recording_id": row["recording_id"],
                      "erased": iso(row["erased_ms"]), "reason": row["erase_reason"] or "-", "check": check,
                      "verified": verified})
    return shown


def retention_page(request: Request) -> Response:
    return page(request, "retention.html", _context(request))


def _target(request: Request, *, reason_required: bool = True) -> tuple[Target, dict[str, Any]]:
    """The recording the form names, checked against the user's scope (else 404, as for no such call)."""
    wanted = target(request.state.form, reason_required=reason_required)
    index = request.app.state.settings.stored.index
    row = visible_recording(index, scope_of(index, request.state.user), wanted.device_id, wanted.recording_id)
    return wanted, row


def _refused(request: Request, error: str) -> Response:
    return page(request, "retention.html", _context(request, error=error), status_code=400)


def hold(request: Request) -> Response:
    action = request.state.form.get("hold")
    if action not in ("set", "clear"):
        return _refused(request, "the form must say whether to set or release the hold; use the page's buttons")
    try:
        wanted, row = _target(request)
    except ConfigError as e:
        return _refused(request, str(e))
    setting = action == "set"
    rules.set_hold(request.app.state.settings.stored, wanted.recording_id, setting,
                   wanted.reason if setting else None, device_id=wanted.device_id)
    audit(request, "hold" if setting else "unhold", device_id=wanted.device_id, recording_id=wanted.recording_id,
          detail=wanted.reason)
    what = "on legal hold" if setting else "released from legal hold"
    return _done(f"Recording {wanted.recording_id} of {wanted.device_id} {what}.", wanted)


def erase(request: Request) -> Response:
    try:
        wanted, row = _target(request)
    except ConfigError as e:
        return _refused(request, str(e))
    if row["erased_ms"] is not None:
        return _refused(request, f"recording {wanted.recording_id} of {wanted.device_id} is already erased; its "
                                 "tombstone is listed below")
    if row["hold"]:
        return _refused(request, f"recording {wanted.recording_id} of {wanted.device_id} is on legal hold "
                                 f"({row['hold_reason'] or 'no reason given'}); release the hold first")
    if not confirmed(request.state.form, wanted):
        return page(request, "confirm.html", {
            "heading": "Erase a recording", "action": "/retention/erase",
            "hidden": [("device", wanted.device_id), ("recording", wanted.recording_id),
                       ("reason", wanted.reason)],
            "question": f"Erase recording {wanted.recording_id} of {wanted.device_id} (seq {row['seq']}, started "
                        f"{iso(row['started_ms'])}) for good? Its audio, manifest and caller details go; a "
                        "tombstone signed with the operator key keeps its place in the chain, with the reason.",
            "details": f"Reason: {wanted.reason}", "typed": True,
            "typed_label": "Type the recording id to confirm", "button": "Erase for good", "cancel": "/retention"})
    key = rules.erase(request.app.state.settings.stored, wanted.recording_id, wanted.reason,
                      device_id=wanted.device_id)
    audit(request, "erase", device_id=wanted.device_id, recording_id=wanted.recording_id, detail=wanted.reason)
    logger.info("console erase device=%s recording=%s tombstone=%s", wanted.device_id, wanted.recording_id, key)
    return _done(f"Recording {wanted.recording_id} of {wanted.device_id} erased; its tombstone is listed below.")


def _done(message: str, selected: Target | None = None) -> Response:
    """Back to the page (post, redirect, get), the recording acted on still filled in."""
    query = {"flash": message}
    if selected is not None:
        query |= {"device": selected.device_id, "recording": selected.recording_id}
    return RedirectResponse("/retention?" + urlencode(query), status_code=303)
