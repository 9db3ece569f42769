"""The access log page's filters and exports: query parameters in, entries and CSV/JSONL text out.

Filters come from a browser's query string, so each is bounded and checked:
``actor`` and ``origin`` (a part of the text, any case), ``action`` (one of
the log's actions), ``device`` and ``recording`` (exact ids), ``since`` and
``until`` (ISO dates or date-times, UTC). A bad value is named with its fix
and leaves that filter out; it never stops the page.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from linetap.sync.central.accesslog import ACTIONS, COLUMNS
from linetap.sync.central.qa.stats import to_csv

MAX_TEXT = 200
PAGE_SIZE = 100
MAX_PAGE = 100_000
FIELDS = ("actor", "action", "origin", "device", "recording", "since", "until", "page")


@dataclass
class LogQuery:
    values: dict[str, str] = field(default_factory=dict)  # the accepted parameters, as given
    problems: list[str] = field(default_factory=list)
    since_ms: int | None = None
    until_ms: int | None = None
    page: int = 1


def when_ms(text: str, name: str) -> int:
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{name} {text[:40]!r} is not a date; write e.g. 2026-12-01 or 2026-12-01T09:30") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return round(when.timestamp() * 1000)


def parse(params: Mapping[str, str]) -> LogQuery:
    """The filters of a query string; every bad one named in ``problems`` and left out."""
    query = LogQuery()
    for name in FIELDS:
        raw = params.get(name)
        if not raw:
            continue
        if len(raw) > MAX_TEXT:
            query.problems.append(f"{name} is {len(raw)} characters; at most {MAX_TEXT} are searched")
            continue
        try:
            _accept(query, name, raw)
        except ValueError as e:
            query.problems.append(str(e))
            continue
        query.values[name] = raw
    return query


def _accept(query: LogQuery, name: str, raw: str) -> None:
    if name == "action" and raw not in ACTIONS:
        raise ValueError(f"action {raw[:40]!r} is not logged; choose one of {', '.join(ACTIONS)}")
    if name in ("since", "until"):
        setattr(query, f"{name}_ms", when_ms(raw, name))
    if name == "page":
        if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
            raise ValueError(f"page {raw[:20]!r} is not a page number; use 1 to {MAX_PAGE}")
        query.page = int(raw)


def matches(entry: Mapping[str, Any], query: LogQuery) -> bool:
    v = query.values
    for name, column in (("actor", "actor"), ("origin", "origin")):
        if name in v and v[name].lower() not in str(entry[column]).lower():
            return False
    for name, column in (("action", "action"), ("device", "device_id"), ("recording", "recording_id")):
        if name in v and entry[column] != v[name]:
            return False
    if query.since_ms is not None and entry["at_ms"] < query.since_ms:
        return False
    return query.until_ms is None or entry["at_ms"] < query.until_ms


def select(entries: Iterable[Mapping[str, Any]], query: LogQuery) -> list[Mapping[str, Any]]:
    """The entries the filters keep, in log order."""
    return [e for e in entries if matches(e, query)]


def page_of(selected: list[Mapping[str, Any]], query: LogQuery) -> tuple[list[Mapping[str, Any]], int]:
    """The query's page of the selection, newest first, and how many pages there are."""
    pages = max(1, -(-len(selected) // PAGE_SIZE))
    newest = selected[::-1]
    start = (min(query.page, pages) - 1) * PAGE_SIZE
    return newest[start:start + PAGE_SIZE], pages


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat(timespec="milliseconds")


def as_csv(entries: Iterable[Mapping[str, Any]]) -> str:
    """Every column (hashes too, so a reader can check the chain) plus the time as ISO text."""
    return to_csv(("at", *COLUMNS), ([iso(e["at_ms"]), *(e[c] for c in COLUMNS)] for e in entries))


def as_jsonl(entries: Iterable[Mapping[str, Any]]) -> str:
    """One JSON object per line with every column, as the log holds it."""
    return "".join(json.dumps({c: e[c] for c in COLUMNS}, sort_keys=True) + "\n" for e in entries)
