"""The calls page's query string, read as hostile input: each filter bounded and checked, problems named.

:func:`parse` turns the query parameters into the filter values of a
:class:`~linetap.sync.central.consoleindex.Search` plus the agent and team
asked for (which the page turns into desk spans), and a list of problems,
one per parameter it could not use (the page shows them and leaves that
filter out, so one bad value never hides every call).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from linetap.firmware.untrusted import ascii_int
from linetap.sync.central.consoleindex import CONSENT_STATES, SORTS
from linetap.sync.central.qa.stats import FIGURES

PAGE_SIZES = (25, 50, 100, 200)
MAX_TEXT = 100
MAX_QUERY = 2000  # a saved filter's query string
MAX_SECONDS = 7 * 86400
FIELDS = ("since", "until", "desk", "agent", "team", "caller", "min_s", "max_s", "flagged", "consent", "sort",
          "min_score", "max_score",  # console-qa: web/evaluations.py search_conditions
          "metric", "min", "max",  # a QA figure (figuresindex.py) from min to max in its unit
          "dir", "page", "n")
# The QA figures the calls page filters on: label, unit in the query string, and how many of that unit
# make one of the figure's own (shares are kept 0..1 and asked in whole percent; hold in whole seconds).
METRICS = {"talk_ratio": ("agent's talk ratio", "%", 100), "silence_share": ("silence", "%", 100),
           "overtalk_share": ("over-talk", "%", 100), "hold_s": ("hold", "s", 1)}
UNITS = {"%": "a whole percent", "s": "a whole number of seconds"}


@dataclass
class CallQuery:
    filters: dict[str, Any] = field(default_factory=dict)  # Search keyword arguments
    agent: str | None = None
    team: str | None = None
    page: int = 1
    size: int = 50
    problems: list[str] = field(default_factory=list)
    values: dict[str, str] = field(default_factory=dict)  # what the form shows back


def when_ms(text: str) -> int | None:
    """An ISO date or date-time (naive: UTC) as epoch ms; None when it is not one."""
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return round(moment.timestamp() * 1000)


def parse(params: Mapping[str, str]) -> CallQuery:
    q = CallQuery()
    for name in FIELDS:
        raw = params.get(name)
        if raw is None or raw == "":
            continue
        if len(raw) > MAX_TEXT:
            q.problems.append(f"{name}: longer than {MAX_TEXT} characters; shorten it")
            continue
        q.values[name] = raw
        problem = _one(q, name, raw)
        if problem:
            q.problems.append(f"{name} {raw!r}: {problem}")
    _metric(q)
    return q


def _metric(q: CallQuery) -> None:
    """``metric`` with ``min`` and/or ``max``, whole numbers in the metric's unit, as ``Search.figure``."""
    name, raw = q.values.get("metric"), {end: q.values.get(end) for end in ("min", "max")}
    if name is None:
        if any(raw.values()):
            q.problems.append(f"min/max: choose a QA metric ({', '.join(METRICS)}) for them to apply to")
        return
    if name not in METRICS:
        q.problems.append(f"metric {name!r}: must be one of {', '.join(METRICS)}")
        return
    _, unit, per = METRICS[name]
    top = round(FIGURES[name][1] * per)
    ends: dict[str, float | None] = {"min": None, "max": None}
    for end, text in raw.items():
        if text is None:
            continue
        number = ascii_int(text, hi=top)
        if number is None:
            q.problems.append(f"{end} {text!r}: not {UNITS[unit]} from 0 to {top} (metric {name})")
            return
        ends[end] = number / per
    if ends["min"] is not None and ends["max"] is not None and ends["min"] > ends["max"]:
        q.problems.append(f"min {raw['min']} is more than max {raw['max']}; swap them")
        return
    q.filters["figure"] = (name, ends["min"], ends["max"])


def _one(q: CallQuery, name: str, raw: str) -> str | None:
    if name in ("since", "until"):
        ms = when_ms(raw)
        if ms is None:
            return "not an ISO date or date-time (2026-01-31 or 2026-01-31T09:00)"
        q.filters["since_ms" if name == "since" else "until_ms"] = ms
    elif name in ("min_s", "max_s"):
        seconds = ascii_int(raw, hi=MAX_SECONDS)
        if seconds is None:
            return f"not a whole number of seconds from 0 to {MAX_SECONDS}"
        q.filters["min_duration_ms" if name == "min_s" else "max_duration_ms"] = seconds * 1000
    elif name in ("desk", "caller"):
        q.filters["device_id" if name == "desk" else "caller"] = raw
    elif name in ("agent", "team"):
        setattr(q, name, raw)
    elif name in ("metric", "min", "max"):
        return None  # together: _metric
    elif name in ("min_score", "max_score") and ascii_int(raw, hi=100) is None:
        return "not a whole percent from 0 to 100"  # the condition itself: web/evaluations.py
    elif name == "flagged":
        if raw not in ("yes", "no"):
            return "must be yes or no"
        q.filters["flagged"] = raw == "yes"
    elif name == "consent":
        if raw not in CONSENT_STATES:
            return f"must be one of {', '.join(CONSENT_STATES)}"
        q.filters["consent"] = raw
    elif name == "sort":
        if raw not in SORTS:
            return f"must be one of {', '.join(SORTS)}"
        q.filters["sort"] = raw
    elif name == "dir":
        if raw not in ("asc", "desc"):
            return "must be asc or desc"
        q.filters["descending"] = raw == "desc"
    elif name == "page":
        page = ascii_int(raw, lo=1, hi=1_000_000)
        if page is None:
            return "not a page number"
        q.page = page
    elif name == "n":
        size = ascii_int(raw, lo=1, hi=max(PAGE_SIZES))
        if size not in PAGE_SIZES:
            return f"must be one of {', '.join(map(str, PAGE_SIZES))}"
        q.size = size
    return None
