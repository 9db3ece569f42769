"""The call page's speech-analytics panel: the transcript beside the player (click a word to seek),
the script adherence results and any spoken card data found (:mod:`linetap.sync.central.analytics`).

:func:`call_context` adds to the call page (after its scope check); ``/search?q=PHRASE`` finds calls by what
was said, each hit linking to the call page at that moment (``#t=MS``), only among the calls the user may see.
A transcript says what the audio says, so it is shown and searched only for a user who may hear the call
(``scope.audio``); the others see that one exists. Words are buttons with ``data-seek-ms``, which the page's
``qa.js`` binds to the player.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from linetap.sync.central.web.access import Scope, scope_of
from linetap.sync.central.web.audit import audit
from linetap.sync.central.web.pages import page

MAX_HITS = 200  # asked of the index before the scope filter; a page shows what the user may see of them


def routes() -> list[Route]:
    return [Route("/search", search, name="transcript_search")]


def search(request: Request) -> Response:
    """``GET /search?q=PHRASE``: transcript lines holding the phrase, in calls this user may hear."""
    from linetap.sync.central.analytics.cli import hit_of
    from linetap.sync.central.analytics.tables import MAX_QUERY

    index = request.app.state.settings.stored.index
    scope = scope_of(index, request.state.user)
    phrase = request.query_params.get("q", "").strip()[:MAX_QUERY]
    hits: list[dict] = []
    if phrase and scope.audio:
        for row in index.search_transcripts(phrase, MAX_HITS):
            call = index.recording(row["recording_id"], row["device_id"])
            if call is not None and call["erased_ms"] is None and scope.covers(call):
                hits.append({**hit_of(row, phrase), "started_ms": call["started_ms"]})
        audit(request, "search", detail=f"transcripts: {len(phrase)} characters, {len(hits)} hits")
    return page(request, "search.html", {"phrase": phrase, "hits": hits, "may_read": scope.audio})


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
