"""The access log page for auditors: view, filter and export (CSV, JSONL) the hash-chained log, and
whether its chain holds (what ``linetap-central audit verify`` checks).

The page reads the whole log, checks the chain over it
(:func:`~linetap.sync.central.accesslog.verify_log`) and shows the filtered
entries newest first, a page at a time; an export holds every filtered entry
in log order with every column, hashes included, so the reader can check the
chain of an unfiltered export alone. Each export is itself logged (action
``export``), so the log says who took a copy of it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from linetap.sync.central.accesslog import ACTIONS, verify_log
from linetap.sync.central.qa import auditview
from linetap.sync.central.web.audit import audit
from linetap.sync.central.web.pages import page

FORMATS = {"csv": ("text/csv; charset=utf-8", auditview.as_csv),
           "jsonl": ("application/x-ndjson", auditview.as_jsonl)}


def routes() -> list[Route]:
    return [Route("/auditlog", auditlog, name="auditlog"),
            Route("/auditlog.{format}", auditlog_export, name="auditlog_export")]


def _entries(request: Request) -> list[dict[str, Any]]:
    return request.app.state.settings.stored.index.access_log()


def verdict(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether the chain holds, in the words ``audit verify`` uses."""
    broken = verify_log(entries)
    if broken is None:
        return {"ok": True, "text": f"the chain holds: {len(entries)} entries, each naming the one before"}
    pos, why = broken
    return {"ok": False, "text": f"the chain breaks at position {pos}: {why}"}


def auditlog(request: Request) -> Response:
    entries = _entries(request)
    query = auditview.parse(request.query_params)
    selected = auditview.select(entries, query)
    shown, pages = auditview.page_of(selected, query)
    filters = {k: v for k, v in query.values.items() if k != "page"}
    return page(request, "auditlog.html", {
        "entries": shown, "query": query, "pages": pages, "page_no": min(query.page, pages),
        "total": len(entries), "matched": len(selected), "verdict": verdict(entries), "actions": ACTIONS,
        "filters": urlencode(filters), "prev_page": urlencode(filters | {"page": str(query.page - 1)}),
        "next_page": urlencode(filters | {"page": str(query.page + 1)})})


def auditlog_export(request: Request) -> Response:
    """``GET /auditlog.csv`` or ``/auditlog.jsonl`` with the page's filters: every matching entry."""
    kind = request.path_params["format"]
    if kind not in FORMATS:
        return Response(f"no export as {kind[:20]!r}; use /auditlog.csv or /auditlog.jsonl\n", status_code=404,
                        media_type="text/plain")
    query = auditview.parse(request.query_params)
    selected = auditview.select(_entries(request), query)
    audit(request, "export", detail=f"access log {kind} {urlencode(query.values)[:500] or '(all)'}: "
                                    f"{len(selected)} entries")
    media_type, render = FORMATS[kind]
    return Response(render(selected), media_type=media_type,
                    headers={"content-disposition": f'attachment; filename="linetap-access-log.{kind}"',
                             "cache-control": "no-store"})
