"""The QA console's tables in the index: users, sessions, failed logins, desk assignments, saved filters.

Part of :class:`~linetap.sync.central.index.IndexTables`, so the embedded
SQLite index and PostgreSQL run the same statements. The console
(:mod:`linetap.sync.central.web`) and the ``users``/``desks`` commands are
their only writers.

- ``console_users``: one row per console user (role, team, argon2id hash,
  disabled, whether an auditor may hear audio);
- ``console_sessions``: server-side sessions keyed by the SHA-256 of the
  cookie's random id (a copy of the table gives nobody a live cookie), with
  the CSRF token and when the session was last seen (idle timeout);
- ``console_failures``: failed logins by user name and by client address
  (throttling counts them in a window; a good login clears the user's);
- ``desk_assignments``: which agent a device (a desk) belonged to from when,
  until the device's next assignment (hot-desking); a call belongs to the
  agent whose assignment covers its start;
- ``saved_filters``: a user's named call searches (the query string).

:meth:`ConsoleTables.search_recordings` is the calls page's one search:
the caller's scope (the desk spans a user may see) and filters become one
``WHERE``, sorted by a whitelisted column, paged with ``LIMIT``/``OFFSET``,
counted up to :data:`COUNT_CAP` + 1 matches (the page then says "more than").
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from linetap.sync.central.figuresindex import figure_condition

USER_COLUMNS = ("name", "role", "team", "password_hash", "disabled", "audio_granted", "created_ms")
SORTS = {"started": "started_ms", "duration": "duration_ms", "device": "device_id", "caller": "caller_number",
         "stored": "stored_ms"}
# Consent states the calls page filters on -> the consent event kind a recording must hold.
CONSENT_STATES = {"announced": "announcement-end", "paused": "pause-start", "opted-out": "opt-out",
                  "private": "private"}
MAX_SPANS = 2000  # desk spans in one search's WHERE (an agent's or a team's assignments)
MAX_PAGE = 500
LEAD_PROBE = 2000  # rows one of SQLite's indexes may find and still lead a calls search (_few)
COUNT_CAP = 10_000  # matches a calls search counts; past it the page says "more than" (search_recordings)
COUNT_LEAD = 5000  # rows a figure's index (SQLite) may find and still lead the count of a calls search


class DuplicateUser(ValueError):
    """A console user of that name exists already."""


@dataclass(frozen=True)
class Span:
    """A desk (device) from ``from_ms`` until ``until_ms`` (None: still)."""

    device_id: str
    from_ms: int
    until_ms: int | None = None


@dataclass(frozen=True)
class Search:
    """One calls search. ``spans`` None: every recording; else only calls started in one of them."""

    spans: tuple[Span, ...] | None = None
    within: tuple[Span, ...] | None = None  # a filter (an agent's or a team's desks), inside ``spans``
    since_ms: int | None = None
    until_ms: int | None = None
    device_id: str | None = None
    caller: str | None = None
    min_duration_ms: int | None = None
    max_duration_ms: int | None = None
    flagged: bool | None = None
    consent: str | None = None  # a key of CONSENT_STATES
    figure: tuple[str, float | None, float | None] | None = None  # a QA figure's name, lowest, highest
    erased: bool | None = False
    sort: str = "started"
    descending: bool = True
    limit: int = 50
    offset: int = 0
    extra: tuple[tuple[str, tuple[Any, ...]], ...] = field(default=())  # (SQL condition, params) from hooks


def like_pattern(text: str) -> str:
    """``%text%`` lower-cased with LIKE's wildcards escaped (``ESCAPE '\\'``)."""
    return "%" + text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def spans_condition(spans: tuple[Span, ...]) -> tuple[str, ...]:
    """(SQL condition, its parameters...): a call started on one of the desks within its span."""
    if not spans:
        return ("1 = 0",)
    parts, values = [], []
    for span in spans[:MAX_SPANS]:
        bounded = span.until_ms is not None
        parts.append("(device_id = ? AND started_ms >= ?" + (" AND started_ms < ?)" if bounded else ")"))
        values += [span.device_id, span.from_ms] + ([span.until_ms] if bounded else [])
    return ("(" + " OR ".join(parts) + ")", *values)


def caller_condition(text: str, *, trigram: bool) -> tuple[str, list[Any]]:
    """(SQL condition, parameters): a caller number or name holding ``text``, any case.

    The ``LIKE`` decides on both engines. With ``trigram`` (SQLite, when :func:`trigram_narrows`) the
    calls the trigram table ``caller_fts`` finds come first (a superset: it folds case beyond ASCII), so
    the ``LIKE`` runs on those rows only instead of on every row; PostgreSQL's planner takes its pg_trgm
    indexes for the ``LIKE`` itself."""
    pattern = like_pattern(text)
    condition = "(LOWER(caller_number) LIKE ? ESCAPE '\\' OR LOWER(caller_name) LIKE ? ESCAPE '\\')"
    if not trigram:
        return condition, [pattern, pattern]
    return ("(device_id, recording_id) IN (SELECT k.device_id, k.recording_id FROM caller_fts JOIN caller_keys k "
            "ON k.id = caller_fts.rowid WHERE caller_fts MATCH ?) AND " + condition, [_phrase(text), pattern, pattern])


def _phrase(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def _few(db: Any, source: str, condition: str, params: list[Any], probe: int | None = None) -> bool:
    """Whether fewer than ``probe`` (:data:`LEAD_PROBE`) rows of ``source`` meet ``condition`` (counted up
    to that many).

    SQLite's planner has no histogram to tell a narrow range or a rare substring from a wide one, and
    an index that leads costs a lookup per row it finds (4-8 µs) where a scan costs well under 1 µs a
    row: at 100,000 calls, a figure range holding a third of them took 270 ms through its index and
    20 ms in a scan. So an index leads only when this probe finds few rows (at most about 20 ms)."""
    found = db.execute(f"SELECT COUNT(*) FROM (SELECT 1 FROM {source} WHERE {condition} LIMIT ?)",
                       [*params, probe or LEAD_PROBE]).fetchone()[0]
    return int(found) < (probe or LEAD_PROBE)


def trigram_narrows(db: Any, text: str) -> bool:
    """Whether SQLite's caller trigram table should lead the search for ``text``: it needs 3 characters
    and few calls found (:func:`_few`); past that the ``LIKE`` scans as it did without it."""
    if not isinstance(db, sqlite3.Connection) or len(text) < 3:
        return False
    return _few(db, "caller_fts", "caller_fts MATCH ?", [_phrase(text)])


def figure_index_leads(db: Any, figure: tuple[str, float | None, float | None], probe: int | None = None) -> bool:
    """Whether a figure's own index may lead the search: always on PostgreSQL (its planner knows the
    spread of values), on SQLite when the range holds few calls (:func:`_few`; ``probe``: how few)."""
    return not isinstance(db, sqlite3.Connection) or _few(db, "recordings", *figure_condition(*figure), probe)


def search_where(search: Search, *, trigram: bool = False, figure_index: bool = True) -> tuple[str, list[Any]]:
    """The ``WHERE`` clause (with its leading keyword, or empty) and its parameters (``trigram``: SQLite's
    caller index, :func:`caller_condition`; ``figure_index``: :func:`figure_index_leads`)."""
    where: list[str] = []
    params: list[Any] = []

    def add(condition: str, *values: Any) -> None:
        where.append(condition)
        params.extend(values)

    for spans in (search.spans, search.within):
        if spans is not None:
            add(*spans_condition(spans))
    for condition, value in (("started_ms >= ?", search.since_ms), ("started_ms < ?", search.until_ms),
                             ("device_id = ?", search.device_id), ("duration_ms >= ?", search.min_duration_ms),
                             ("duration_ms <= ?", search.max_duration_ms)):
        if value is not None:
            add(condition, value)
    if search.caller:
        condition, values = caller_condition(search.caller, trigram=trigram)
        add(condition, *values)
    if search.flagged is not None:
        add("flagged = ?", int(search.flagged))
    if search.consent is not None:
        add("consent LIKE ?", f'%"kind": "{CONSENT_STATES[search.consent]}"%')
    if search.figure is not None:
        condition, values = figure_condition(*search.figure, indexed=figure_index)
        add(condition, *values)
    if search.erased is not None:
        add("erased_ms IS NOT NULL" if search.erased else "erased_ms IS NULL")
    for condition, values in search.extra:
        add(condition, *values)
    return (" WHERE " + " AND ".join(where)) if where else "", params


class ConsoleIndex(Protocol):
    """The console's part of :class:`~linetap.sync.central.index.Index`."""

    def add_user(self, name: str, role: str, team: str | None, password_hash: str, now_ms: int) -> None: ...
    def user(self, name: str) -> dict[str, Any] | None: ...
    def users(self) -> list[dict[str, Any]]: ...
    def update_user(self, name: str, **changes: Any) -> bool: ...
    def add_session(self, id_sha256: str, name: str, csrf: str, now_ms: int) -> None: ...
    def session(self, id_sha256: str) -> dict[str, Any] | None: ...
    def touch_session(self, id_sha256: str, now_ms: int) -> None: ...
    def drop_session(self, id_sha256: str) -> None: ...
    def drop_sessions(self, *, name: str | None = None, seen_before_ms: int | None = None) -> int: ...
    def add_failure(self, kind: str, who: str, now_ms: int) -> None: ...
    def failures(self, kind: str, who: str, since_ms: int) -> list[int]: ...
    def clear_failures(self, kind: str, who: str | None = None, *, before_ms: int | None = None) -> None: ...
    def assign_desk(self, device_id: str, agent: str, from_ms: int) -> None: ...
    def desk_assignments(self) -> list[dict[str, Any]]: ...
    def save_filter(self, owner: str, name: str, query: str) -> None: ...
    def saved_filters(self, owner: str) -> list[dict[str, Any]]: ...
    def drop_filter(self, owner: str, name: str) -> None: ...
    def search_recordings(self, search: Search) -> tuple[list[dict[str, Any]], int]: ...


class ConsoleTables:
    """The console's statements, on the index's one connection (``_sql``)."""

    def _sql(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    # -- users --

    def add_user(self, name: str, role: str, team: str | None, password_hash: str, now_ms: int) -> None:
        with self._sql() as db:
            cursor = db.execute("INSERT INTO console_users (name, role, team, password_hash, created_ms) "
                                "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                                (name, role, team, password_hash, now_ms))
        if cursor.rowcount != 1:
            raise DuplicateUser(f"console user {name!r} exists already; `linetap-central users list` shows them")

    def user(self, name: str) -> dict[str, Any] | None:
        with self._sql() as db:
            row = db.execute("SELECT * FROM console_users WHERE name = ?", (name,)).fetchone()
        return None if row is None else _user(row)

    def users(self) -> list[dict[str, Any]]:
        with self._sql() as db:
            return [_user(r) for r in db.execute("SELECT * FROM console_users ORDER BY name")]

    def update_user(self, name: str, **changes: Any) -> bool:
        """Set some of role, team, password_hash, disabled, audio_granted; False when there is no such user."""
        allowed = {"role", "team", "password_hash", "disabled", "audio_granted"}
        if not changes or set(changes) - allowed:
            raise ValueError(f"update_user changes {sorted(changes)}: only {sorted(allowed)} may change")
        values = [int(v) if k in ("disabled", "audio_granted") else v for k, v in changes.items()]
        with self._sql() as db:
            cursor = db.execute(f"UPDATE console_users SET {', '.join(f'{k} = ?' for k in changes)} "
                                "WHERE name = ?", (*values, name))
        return cursor.rowcount == 1

    # -- sessions --

    def add_session(self, id_sha256: str, name: str, csrf: str, now_ms: int) -> None:
        with self._sql() as db:
            db.execute("INSERT INTO console_sessions (id_sha256, name, csrf, created_ms, seen_ms) "
                       "VALUES (?, ?, ?, ?, ?)", (id_sha256, name, csrf, now_ms, now_ms))

    def session(self, id_sha256: str) -> dict[str, Any] | None:
        with self._sql() as db:
            row = db.execute("SELECT * FROM console_sessions WHERE id_sha256 = ?", (id_sha256,)).fetchone()
        return None if row is None else dict(row)

    def touch_session(self, id_sha256: str, now_ms: int) -> None:
        with self._sql() as db:
            db.execute("UPDATE console_sessions SET seen_ms = ? WHERE id_sha256 = ?", (now_ms, id_sha256))

    def drop_session(self, id_sha256: str) -> None:
        with self._sql() as db:
            db.execute("DELETE FROM console_sessions WHERE id_sha256 = ?", (id_sha256,))

    def drop_sessions(self, *, name: str | None = None, seen_before_ms: int | None = None) -> int:
        """End a user's sessions (password changed, disabled), or every session idle since before a time."""
        if (name is None) == (seen_before_ms is None):
            raise ValueError("drop_sessions takes name or seen_before_ms")
        with self._sql() as db:
            if name is not None:
                cursor = db.execute("DELETE FROM console_sessions WHERE name = ?", (name,))
            else:
                cursor = db.execute("DELETE FROM console_sessions WHERE seen_ms < ?", (seen_before_ms,))
        return cursor.rowcount

    # -- failed logins --

    def add_failure(self, kind: str, who: str, now_ms: int) -> None:
        with self._sql() as db:
            db.execute("INSERT INTO console_failures (kind, who, at_ms) VALUES (?, ?, ?)", (kind, who, now_ms))

    def failures(self, kind: str, who: str, since_ms: int) -> list[int]:
        """When ``who`` failed since ``since_ms``, oldest first."""
        with self._sql() as db:
            return [int(r[0]) for r in db.execute(
                "SELECT at_ms FROM console_failures WHERE kind = ? AND who = ? AND at_ms >= ? ORDER BY at_ms",
                (kind, who, since_ms))]

    def clear_failures(self, kind: str, who: str | None = None, *, before_ms: int | None = None) -> None:
        with self._sql() as db:
            if who is not None:
                db.execute("DELETE FROM console_failures WHERE kind = ? AND who = ?", (kind, who))
            else:
                db.execute("DELETE FROM console_failures WHERE kind = ? AND at_ms < ?", (kind, before_ms or 0))

    # -- desks --

    def assign_desk(self, device_id: str, agent: str, from_ms: int) -> None:
        """From ``from_ms`` the device is the agent's (replacing an assignment from that same moment)."""
        with self._sql() as db:
            db.execute("INSERT INTO desk_assignments (device_id, agent, from_ms) VALUES (?, ?, ?) "
                       "ON CONFLICT (device_id, from_ms) DO UPDATE SET agent = excluded.agent",
                       (device_id, agent, from_ms))

    def desk_assignments(self) -> list[dict[str, Any]]:
        """Every assignment, by device then time, each with ``until_ms`` (the device's next one, or None)."""
        with self._sql() as db:
            rows = [dict(r) for r in db.execute(
                "SELECT device_id, agent, from_ms FROM desk_assignments ORDER BY device_id, from_ms")]
        for row, after in zip(rows, rows[1:] + [None]):
            same = after is not None and after["device_id"] == row["device_id"]
            row["until_ms"] = after["from_ms"] if same else None
        return rows

    # -- saved filters --

    def save_filter(self, owner: str, name: str, query: str) -> None:
        with self._sql() as db:
            db.execute("INSERT INTO saved_filters (owner, name, query) VALUES (?, ?, ?) "
                       "ON CONFLICT (owner, name) DO UPDATE SET query = excluded.query", (owner, name, query))

    def saved_filters(self, owner: str) -> list[dict[str, Any]]:
        with self._sql() as db:
            return [dict(r) for r in db.execute(
                "SELECT name, query FROM saved_filters WHERE owner = ? ORDER BY name", (owner,))]

    def drop_filter(self, owner: str, name: str) -> None:
        with self._sql() as db:
            db.execute("DELETE FROM saved_filters WHERE owner = ? AND name = ?", (owner, name))

    # -- the calls search --

    def search_recordings(self, search: Search) -> tuple[list[dict[str, Any]], int]:
        """(one page of recordings, how many match in all, counted up to :data:`COUNT_CAP` + 1: a total
        over :data:`COUNT_CAP` means "more than COUNT_CAP").

        The bounded count stops at the first COUNT_CAP + 1 matches instead of reading every one; the page
        is then read in order from a sort index (``searchschema``) and stops after its rows (pages past
        COUNT_CAP too). A page past the last match counted is not read. On SQLite, when the count found
        few matches (fewer than :data:`LEAD_PROBE`), the page sorts them (``+column``: not through the
        sort index, whose walk in order would visit nearly every row to find a few)."""
        from linetap.sync.central.index import _recording

        limit, offset = max(1, min(search.limit, MAX_PAGE)), max(0, search.offset)
        with self._sql() as db:
            trigram = bool(search.caller) and trigram_narrows(db, search.caller)
            figure_index = search.figure is None or figure_index_leads(db, search.figure)
            where, params = search_where(search, trigram=trigram, figure_index=figure_index)
            # A figure's index leads the count for a wider range than the page (COUNT_LEAD): the count
            # stops early anyway, where a scan for a range of a few thousand calls reads every row.
            count_index = search.figure is None or figure_index or figure_index_leads(db, search.figure, COUNT_LEAD)
            counted, counted_params = (where, params) if figure_index else \
                search_where(search, trigram=trigram, figure_index=count_index)
            run = planned(db)
            total = int(run(f"SELECT COUNT(*) FROM (SELECT 1 FROM recordings{counted} LIMIT ?) AS hits",
                            [*counted_params, COUNT_CAP + 1]).fetchone()[0])
            if total <= COUNT_CAP and offset >= total:
                return [], total
            sorted_here = isinstance(db, sqlite3.Connection) and total < LEAD_PROBE
            rows = run(f"SELECT * FROM recordings{where} ORDER BY {order_by(search, sorted_here)} LIMIT ? OFFSET ?",
                       [*params, limit, offset]).fetchall()
        return [_recording(r) for r in rows], total


def planned(db: Any) -> Callable[[str, list[Any]], Any]:
    """``db.execute``, on PostgreSQL never as a prepared statement: after five runs psycopg prepares one,
    and PostgreSQL may then keep a generic plan, made without the values: a caller's ``LIKE`` pattern
    then never reaches the trigram indexes and a narrow figure range scans every row (seen: 3 ms, then
    25-33 ms from the sixth search on)."""
    if isinstance(db, sqlite3.Connection):
        return db.execute
    return lambda sql, params: db.execute(sql, params, prepare=False)


def order_by(search: Search, sorted_here: bool = False) -> str:
    """The page's ``ORDER BY`` (NULLs as SQLite places them, on both engines: PostgreSQL's sort indexes
    match it); ``sorted_here``: the column as ``+column`` (SQLite: sort, do not walk its index)."""
    column = ("+" if sorted_here else "") + SORTS[search.sort]
    return f"{column} {'DESC NULLS LAST' if search.descending else 'ASC NULLS FIRST'}, device_id, seq"


def _user(row: Any) -> dict[str, Any]:
    out = dict(row)
    out["disabled"] = bool(out["disabled"])
    out["audio_granted"] = bool(out["audio_granted"])
    return out
