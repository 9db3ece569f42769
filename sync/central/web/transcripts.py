"""The call page's speech-analytics panel: the transcript beside the player (click a word to seek),
the script adherence results and any spoken card data found (:mod:`linetap.sync.central.analytics`).

No route of its own: :func:`call_context` adds to the call page (after its scope check). A transcript says
what the audio says, so it is shown only to a user who may hear the call (``scope.audio``); the others see
that one exists. Words are buttons with ``data-seek-ms``, which the page's ``qa.js`` binds to the player.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from linetap.sync.central.web.access import Scope


def routes() -> list[Route]:
    return []


def call_context(request: Request, row: dict[str, Any], scope: Scope) -> dict[str, Any]:
    index = request.app.state.settings.stored.index
    key = (row["device_id"], row["recording_id"])
    summary = index.analysis_summary().get(key) if hasattr(index, "analysis_summary") else None
    if summary is None:
        return {"analytics": None}
    lines = index.transcript(*key) if scope.audio else []
    return {"analytics": {
        "summary": summary, "may_read": scope.audio,
        "lines": [{"speaker": "Agent" if line["channel"] == "near" else "Caller", "start_ms": line["start_ms"],
                   "words": [{"at_ms": w[0], "text": w[3], "unsure": w[2] < 50} for w in line["words"]]}
                  for line in lines],
        "adherence": index.adherence_results(*key),
        "card_events": index.analysis_events(*key)}}
