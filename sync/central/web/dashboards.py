"""Dashboards: per agent and per team, evaluations and scores by week, failures per question, the calls'
talk ratio, silence, over-talk and hold, and calls per day; charts drawn as SVG on the server, every
table as CSV.

Who is shown follows the user's scope: an agent sees themself, a reviewer or
supervisor their team's agents, an admin everyone (narrowed with ``agent``
or ``team``). Calls are the index's recordings in the period (default: the
last 12 weeks) on the desks the user may see, each with the agent whose desk
it was when it started; evaluations those of the shown agents. The figures
are :mod:`~linetap.sync.central.qa.stats`, the charts
:mod:`~linetap.sync.central.qa.svg`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from linetap.sync.central.qa import stats, svg
from linetap.sync.central.qa.auditview import when_ms
from linetap.sync.central.qa.forms import Form
from linetap.sync.central.web.access import USER_NAME, agent_at, scope_of, team_agents
from linetap.sync.central.web.evaluations import stored_form
from linetap.sync.central.web.pages import page

DEFAULT_DAYS = 84
MAX_DAYS = 3660
TABLES = ("agents", "teams", "weekly", "questions", "days", "distributions")


def routes() -> list[Route]:
    return [Route("/dashboards", dashboards, name="dashboards"),
            Route("/dashboards.csv", dashboards_csv, name="dashboards_csv")]


@dataclass
class View:
    """Whom and which period a dashboard shows, from the user's role and the query."""

    agents: set[str] | None  # None: every agent (an admin's view)
    since_ms: int
    until_ms: int
    values: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _period(params: Any, now_ms: int, view_values: dict[str, str], problems: list[str]) -> tuple[int, int]:
    until, since = now_ms + 1, now_ms - DEFAULT_DAYS * 86_400_000
    for name in ("since", "until"):
        raw = params.get(name)
        if not raw:
            continue
        try:
            value = when_ms(raw[:40], name)
        except ValueError as e:
            problems.append(str(e))
            continue
        view_values[name] = raw
        since, until = (value, until) if name == "since" else (since, value)
    if until - since > MAX_DAYS * 86_400_000:
        problems.append(f"the period is longer than {MAX_DAYS} days; the last {MAX_DAYS} are shown")
        since = until - MAX_DAYS * 86_400_000
    return since, until


def view_of(index: Any, user: dict[str, Any], params: Any, now_ms: int) -> View:
    """The agents this user may see narrowed by ``agent``/``team``, and the period."""
    values: dict[str, str] = {}
    problems: list[str] = []
    since, until = _period(params, now_ms, values, problems)
    users = index.users()
    if user["role"] == "agent":
        allowed: set[str] | None = {user["name"]}
    elif user["role"] == "admin":
        allowed = None
    else:
        allowed = team_agents(users, user.get("team"))
    agents = allowed
    team, agent = params.get("team"), params.get("agent")
    if team and USER_NAME.match(team):
        values["team"] = team
        members = team_agents(users, team)
        agents = members if agents is None else agents & members
    if agent and USER_NAME.match(agent):
        values["agent"] = agent
        agents = {agent} if agents is None or agent in agents else set()
    return View(agents, since, until, values, problems)


def gather(request: Request, view: View) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(evaluations, calls) of the view, each with its ``agent`` and ``team``."""
    index = request.app.state.settings.stored.index
    teams = {u["name"]: u["team"] for u in index.users()}
    scope = scope_of(index, request.state.user)
    assignments = index.desk_assignments()
    calls = []
    for call in index.recordings(since_ms=view.since_ms, until_ms=view.until_ms):
        if not scope.covers(call):
            continue
        agent = agent_at(assignments, call["device_id"], call["started_ms"])
        if view.agents is None or agent in view.agents:
            calls.append(call | {"agent": agent, "team": teams.get(agent) if agent else None})
    evaluations = [e | {"team": teams.get(e["agent"]) if e["agent"] else None}
                   for e in index.evaluations(since_ms=view.since_ms, until_ms=view.until_ms)
                   if view.agents is None or e["agent"] in view.agents]
    return evaluations, calls


def _forms(request: Request, evaluations: list[dict[str, Any]]) -> dict[tuple[str, int], Form]:
    keys = {(e["form_id"], e["form_version"]) for e in evaluations}
    found = {key: stored_form(request, *key) for key in keys}
    return {key: form for key, form in found.items() if form is not None}


def tables(request: Request, view: View) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """Every table of the dashboard as (header, rows): what the page shows and the CSV holds."""
    evaluations, calls = gather(request, view)
    out: dict[str, tuple[list[str], list[list[Any]]]] = {}
    for key in ("agent", "team"):
        rows = stats.group_rows(evaluations, calls, key=key)
        out[f"{key}s"] = ([key, *stats.GROUP_COLUMNS], [[r[key], *(_cell(c, r[c]) for c in stats.GROUP_COLUMNS)]
                                                          for r in rows])
    out["weekly"] = (["week", "evaluations", "average"],
                     [[w["week"], w["evaluations"], _cell("average", w["average"])] for w in stats.weekly(evaluations)])
    out["questions"] = (["form", "version", "question", "text", "answered", "failed", "rate"],
                        [[q["form"], q["version"], q["question"], q["text"], q["answered"], q["failed"], q["rate"]]
                         for q in stats.question_failures(evaluations, _forms(request, evaluations))])
    out["days"] = (["day", "calls"], [[d["day"], d["calls"]] for d in stats.calls_per_day(calls)])
    out["distributions"] = (["figure", "from", "to", "calls"],
                            [[name, b["from"], b["to"], b["calls"]]
                             for name, bins in stats.distributions(calls).items() for b in bins])
    return out


def _cell(column: str, value: Any) -> Any:
    """Scores (hundredths of a percent) as percent for people and spreadsheets."""
    if column == "average":
        return None if value is None else round(value / 100, 2)
    return value


def charts(made: dict[str, tuple[list[str], list[list[Any]]]]) -> list[Markup]:
    """The dashboard's SVG charts, from its tables."""
    weekly = made["weekly"][1]
    out = [svg.line_chart("Average score by week", [w[0] for w in weekly], [w[2] for w in weekly], y_max=100,
                          unit="%"),
           svg.bar_chart("Evaluations by week", [w[0] for w in weekly], [w[1] for w in weekly]),
           svg.bar_chart("Calls per day", [d[0] for d in made["days"][1]], [d[1] for d in made["days"][1]])]
    titles = {"talk_ratio": "Talk ratio (agent's share of talk)", "silence_share": "Silence share",
              "overtalk_share": "Over-talk share", "hold_s": "Hold per call (s)"}
    for name, title in titles.items():
        bins = [r for r in made["distributions"][1] if r[0] == name]
        labels = [f"{_short(r[1])}-{_short(r[2])}" for r in bins]
        out.append(svg.bar_chart(f"{title}: calls", labels, [r[3] for r in bins]))
    return [Markup(c) for c in out]  # built by svg.py, every label escaped there


def _short(value: float) -> str:
    return f"{value:g}"


def dashboards(request: Request) -> Response:
    stored = request.app.state.settings.stored
    view = view_of(stored.index, request.state.user, request.query_params, stored.now_ms())
    made = tables(request, view)
    users = stored.index.users()
    choices = sorted(u["name"] for u in users if u["role"] == "agent" and (view.agents is None or
                                                                       u["name"] in view.agents))
    return page(request, "dashboards.html", {
        "view": view, "tables": made, "charts": charts(made), "agent_choices": choices,
        "team_choices": sorted({u["team"] for u in users if u["team"]}) if request.state.user["role"] == "admin"
        else [], "since_text": _day(view.since_ms), "until_text": _day(view.until_ms - 1),
        "query": urlencode(view.values)})


def _day(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).date().isoformat()


def dashboards_csv(request: Request) -> Response:
    """``GET /dashboards.csv?table=NAME`` with the page's filters: one table as CSV."""
    name = request.query_params.get("table", "")
    if name not in TABLES:
        return Response(f"table {name[:40]!r} is not a dashboard table; use one of {', '.join(TABLES)}\n",
                        status_code=400, media_type="text/plain")
    stored = request.app.state.settings.stored
    view = view_of(stored.index, request.state.user, request.query_params, stored.now_ms())
    header, rows = tables(request, view)[name]
    return Response(stats.to_csv(header, rows), media_type="text/csv; charset=utf-8",
                    headers={"content-disposition": f'attachment; filename="linetap-{name}.csv"',
                             "cache-control": "no-store"})
