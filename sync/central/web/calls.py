"""The calls page: search (scoped by role), sort, page, saved filters, and bulk download as a zip.

Feature modules may add to the search and the table: a module with
``search_conditions(params) -> list[(SQL condition, values)]`` narrows the
search (console-qa's score filter: a condition on ``recordings`` such as an
``EXISTS`` on its own table), and one with ``row_extras(index, rows) ->
{(device, recording): {column: value}}`` adds columns (``score``).
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from linetap.sync.central.consoleindex import CONSENT_STATES, COUNT_CAP, SORTS, Search
from linetap.sync.central.web.access import USER_NAME, Scope, agent_at, agent_spans, scope_of, team_agents
from linetap.sync.central.web.audit import audit
from linetap.sync.central.web.callquery import FIELDS, MAX_QUERY, METRICS, PAGE_SIZES, CallQuery, parse
from linetap.sync.central.web.pages import error_page, page

logger = logging.getLogger(__name__)

CONSENT_BADGES = {"announcement-end": "announced", "pause-start": "paused", "opt-out": "opted out",
                  "private": "private", "flag": "flag", "fault": "fault"}


def routes() -> list[Route]:
    from linetap.sync.central.web.bulk import download

    return [Route("/calls", calls, name="calls"),
            Route("/calls/download", download, methods=["POST"], name="calls_download"),
            Route("/calls/filters", save_filter, methods=["POST"], name="filters_save"),
            Route("/calls/filters/drop", drop_filter, methods=["POST"], name="filters_drop")]


def _hooks(name: str) -> list[Any]:
    from linetap.sync.central.web.app import feature_modules

    return [getattr(m, name) for m in feature_modules() if hasattr(m, name)]


def search_of(index: Any, scope: Scope, query: CallQuery) -> Search:
    """The user's scope and the query's filters as one search."""
    within = None
    if query.agent is not None or query.team is not None:
        assignments = index.desk_assignments()
        agents: set[str] = set()
        if query.agent is not None:
            agents = {query.agent}
        if query.team is not None:
            team = team_agents(index.users(), query.team)
            agents = agents & team if query.agent is not None else team
        within = agent_spans(assignments, agents)
    extra = tuple(c for hook in _hooks("search_conditions") for c in hook(query.values))
    return Search(spans=scope.spans, within=within, extra=extra, limit=query.size,
                  offset=(query.page - 1) * query.size, **query.filters)


def calls(request: Request) -> Response:
    index = request.app.state.settings.stored.index
    user = request.state.user
    query = parse(request.query_params)
    scope = scope_of(index, user)
    rows, total = index.search_recordings(search_of(index, scope, query))
    assignments, users = index.desk_assignments(), index.users()
    extras: dict[tuple[str, str], dict[str, Any]] = {}
    for hook in _hooks("row_extras"):
        for key, values in hook(index, rows).items():
            extras.setdefault(key, {}).update(values)
    for row in rows:
        row["agent"] = agent_at(assignments, row["device_id"], row["started_ms"])
        row["badges"] = sorted({CONSENT_BADGES[e.get("kind")] for e in row["consent"] or []
                                if e.get("kind") in CONSENT_BADGES})
        row["extras"] = extras.get((row["device_id"], row["recording_id"]), {})
    audit(request, "search", detail=urlencode(query.values)[:MAX_QUERY] or "(all)")
    # Past COUNT_CAP matches the search stops counting: the page says "more than" and offers Next while
    # pages come full.
    more = total > COUNT_CAP
    pages = max(1, -(-total // query.size))
    return page(request, "calls.html", {
        "rows": rows, "total": total, "more": more, "count_cap": COUNT_CAP, "query": query, "pages": pages,
        "has_next": len(rows) == query.size if more else query.page < pages,
        "consent_states": list(CONSENT_STATES), "metrics": METRICS,
        "sorts": list(SORTS), "sizes": PAGE_SIZES, "link": lambda **change: _link(query, change),
        "saved": index.saved_filters(user["name"]), "scope": scope, **_choices(user, assignments, users),
        "querystring": urlencode(query.values), "extra_columns": sorted({k for e in extras.values() for k in e})})


def _choices(user: dict[str, Any], assignments: list[dict[str, Any]],
             users: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The agents and teams the filter offers: those of the user's scope only (an agent sees no colleague's
    name; a supervisor their team)."""
    agents = sorted({a["agent"] for a in assignments})
    teams = sorted({u["team"] for u in users if u["team"]})
    if user["role"] == "agent":
        return {"agents": [user["name"]], "teams": [user["team"]] if user["team"] else []}
    if user["role"] in ("supervisor", "reviewer"):
        mine = team_agents(users, user["team"])
        return {"agents": [a for a in agents if a in mine], "teams": [user["team"]] if user["team"] else []}
    return {"agents": agents, "teams": teams}


def _link(query: CallQuery, change: dict[str, Any]) -> str:
    values = {**query.values, **{k: str(v) for k, v in change.items() if v is not None}}
    if "page" not in change:
        values.pop("page", None)
    return "/calls?" + urlencode({k: v for k, v in values.items() if k in FIELDS})


def save_filter(request: Request) -> Response:
    form = request.state.form
    name, query = str(form.get("name", "")).strip(), str(form.get("query", ""))
    if not USER_NAME.match(name) or len(query) > MAX_QUERY:
        return error_page(request, 400, "Filter not saved", "name it with 1-64 letters, digits, dots, dashes or "
                                                            "underscores (no spaces)")
    try:
        parsed = parse(_pairs(query))
    except ValueError:  # more fields than a calls query has
        return error_page(request, 400, "Filter not saved", "the search has more fields than the calls page uses")
    if parsed.problems:
        return error_page(request, 400, "Filter not saved", "; ".join(parsed.problems))
    request.app.state.settings.stored.index.save_filter(request.state.user["name"], name,
                                                        urlencode(parsed.values))
    return RedirectResponse("/calls?" + urlencode(parsed.values), status_code=303)


def drop_filter(request: Request) -> Response:
    name = str(request.state.form.get("name", ""))[:64]
    request.app.state.settings.stored.index.drop_filter(request.state.user["name"], name)
    return RedirectResponse("/calls", status_code=303)


def _pairs(query: str) -> dict[str, str]:
    from urllib.parse import parse_qsl

    return dict(parse_qsl(query, keep_blank_values=False, max_num_fields=len(FIELDS) + 5))
