"""The index's speech-analytics statements, on SQLite and PostgreSQL alike (a mixin of ``IndexTables``).

Jobs. ``analysis_jobs`` holds one row per stored recording: ``queued``,
``running`` (``owner`` holds a lease until ``lease_until_ms``), ``done``,
``failed`` (``reason``; tried again until ``attempts`` reaches the bound) or
``skipped`` (private, opted out, discarded: never decoded). A worker *claims*
the next job in one write transaction (flagged calls first, then the oldest),
which takes the lease before any work starts, so two workers never take the
same job; a killed worker's lease runs out and the job is claimed again.
:meth:`AnalyticsTables.finish_job` writes every result of a call (transcript
lines, their full-text rows, adherence, events) and marks the job done in
one transaction, and only while the caller still holds the lease: results
are all there or not at all, and a worker that lost its lease writes nothing.

Search is engine-specific, the one place these statements branch: SQLite's
FTS5 table ``transcript_fts`` (``MATCH`` with a quoted phrase, rows written
beside the lines), PostgreSQL's GIN index over ``to_tsvector('english',
text)`` (``phraseto_tsquery``). Both stem English words, so "calling" finds
"call".
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from linetap.firmware.errors import SyncError
from linetap.sync.central.indexschema import TSVECTOR

STATES = ("queued", "running", "done", "failed", "skipped")
MAX_QUERY = 500  # characters of a search
MAX_HITS = 1000  # lines one search returns at most


class SearchRefused(SyncError, ValueError):
    """A search phrase or limit out of bounds (the message says which)."""
LINE_COLUMNS = ("device_id", "recording_id", "channel", "line", "start_ms", "end_ms", "text", "words")
ADHERENCE_COLUMNS = ("device_id", "recording_id", "script", "item", "kind", "passed", "score", "at_ms", "heard")
EVENT_COLUMNS = ("device_id", "recording_id", "kind", "channel", "start_ms", "end_ms", "detail", "found_ms")
RESULT_TABLES = ("transcript_lines", "adherence", "analysis_events")


class LeaseLost(SyncError):
    """The job's lease ran out and another worker holds it now: this worker's results are not written."""


@dataclass(frozen=True)
class Results:
    """Everything a job found, written at once: rows as tuples in the column orders above."""

    lines: Sequence[tuple[Any, ...]]
    adherence: Sequence[tuple[Any, ...]]
    events: Sequence[tuple[Any, ...]]
    engine: str


class AnalyticsIndex(Protocol):
    """The analytics part of the :class:`~linetap.sync.central.index.Index` protocol."""

    def enqueue_jobs(self, now_ms: int) -> int: ...
    def claim_job(self, owner: str, now_ms: int, lease_ms: int, max_attempts: int) -> dict[str, Any] | None: ...
    def renew_lease(self, device_id: str, recording_id: str, owner: str, until_ms: int) -> bool: ...
    def end_job(self, device_id: str, recording_id: str, owner: str, state: str, reason: str,
                now_ms: int) -> bool: ...
    def finish_job(self, device_id: str, recording_id: str, owner: str, results: Results, now_ms: int) -> None: ...
    def analysis_jobs(self, state: str | None = None) -> list[dict[str, Any]]: ...
    def transcript(self, device_id: str, recording_id: str) -> list[dict[str, Any]]: ...
    def adherence_results(self, device_id: str, recording_id: str) -> list[dict[str, Any]]: ...
    def analysis_events(self, device_id: str, recording_id: str) -> list[dict[str, Any]]: ...
    def analysis_summary(self) -> dict[tuple[str, str], dict[str, Any]]: ...
    def search_transcripts(self, phrase: str, limit: int = 50) -> list[dict[str, Any]]: ...


class AnalyticsTables:
    """Jobs, results and search; on the connection the index's ``_sql()`` lends."""

    def _sql(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def enqueue_jobs(self, now_ms: int) -> int:
        """Queue every stored, unerased recording that has no job yet; returns how many were queued."""
        with self._sql() as db:
            cursor = db.execute(
                "INSERT INTO analysis_jobs (device_id, recording_id, state, priority, stored_ms, updated_ms) "
                "SELECT device_id, recording_id, 'queued', flagged, stored_ms, ? FROM recordings r "
                "WHERE erased_ms IS NULL AND NOT EXISTS (SELECT 1 FROM analysis_jobs j WHERE "
                "j.device_id = r.device_id AND j.recording_id = r.recording_id) ON CONFLICT DO NOTHING",
                (now_ms,))
        return max(cursor.rowcount, 0)

    def claim_job(self, owner: str, now_ms: int, lease_ms: int, max_attempts: int) -> dict[str, Any] | None:
        """Take the next job's lease (flagged first, then oldest); None when nothing is due."""
        with self._sql() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(
                    "SELECT device_id, recording_id, attempts FROM analysis_jobs WHERE attempts < ? AND "
                    "(state = 'queued' OR state = 'failed' OR (state = 'running' AND lease_until_ms < ?)) "
                    "ORDER BY priority DESC, attempts, stored_ms LIMIT 1", (max_attempts, now_ms)).fetchone()
                if row is not None:
                    db.execute("UPDATE analysis_jobs SET state = 'running', owner = ?, lease_until_ms = ?, "
                               "attempts = attempts + 1, updated_ms = ? WHERE device_id = ? AND recording_id = ?",
                               (owner, now_ms + lease_ms, now_ms, row["device_id"], row["recording_id"]))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        if row is None:
            return None
        return {"device_id": row["device_id"], "recording_id": row["recording_id"], "attempt": row["attempts"] + 1}

    def renew_lease(self, device_id: str, recording_id: str, owner: str, until_ms: int) -> bool:
        """Extend the lease this worker holds; False when it holds it no more."""
        with self._sql() as db:
            cursor = db.execute("UPDATE analysis_jobs SET lease_until_ms = ? WHERE device_id = ? AND "
                                "recording_id = ? AND owner = ? AND state = 'running'",
                                (until_ms, device_id, recording_id, owner))
        return cursor.rowcount == 1

    def end_job(self, device_id: str, recording_id: str, owner: str, state: str, reason: str,
                now_ms: int) -> bool:
        """Mark a job this worker holds ``failed`` or ``skipped`` with why; False if the lease was lost."""
        if state not in ("failed", "skipped"):
            raise ValueError(f"end_job state {state!r}")
        with self._sql() as db:
            cursor = db.execute("UPDATE analysis_jobs SET state = ?, reason = ?, owner = NULL, "
                                "lease_until_ms = NULL, updated_ms = ? WHERE device_id = ? AND recording_id = ? "
                                "AND owner = ? AND state = 'running'",
                                (state, reason[:1000], now_ms, device_id, recording_id, owner))
        return cursor.rowcount == 1

    def finish_job(self, device_id: str, recording_id: str, owner: str, results: Results, now_ms: int) -> None:
        """Replace the call's results and mark its job done, in one transaction, if the lease is still ours."""
        with self._sql() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                held = db.execute("SELECT 1 FROM analysis_jobs WHERE device_id = ? AND recording_id = ? AND "
                                  "owner = ? AND state = 'running'", (device_id, recording_id, owner)).fetchone()
                if held is None:
                    raise LeaseLost(f"job of recording {recording_id} of {device_id} is no longer held by "
                                    f"{owner}; its results were not written")
                erased = db.execute("SELECT 1 FROM recordings WHERE device_id = ? AND recording_id = ? AND "
                                    "erased_ms IS NOT NULL", (device_id, recording_id)).fetchone()
                if erased is not None:  # erased while it was analysed: nothing of it may be written now
                    results = Results((), (), (), results.engine)
                _replace_results(db, device_id, recording_id, results)
                db.execute("UPDATE analysis_jobs SET state = 'done', reason = NULL, owner = NULL, "
                           "lease_until_ms = NULL, engine = ?, card_data = ?, updated_ms = ? WHERE "
                           "device_id = ? AND recording_id = ?",
                           (results.engine, int(bool(results.events)), now_ms, device_id, recording_id))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def analysis_jobs(self, state: str | None = None) -> list[dict[str, Any]]:
        sql, params = "SELECT * FROM analysis_jobs", []
        if state is not None:
            sql, params = sql + " WHERE state = ?", [state]
        with self._sql() as db:
            return [dict(r) for r in db.execute(sql + " ORDER BY device_id, recording_id", params)]

    def transcript(self, device_id: str, recording_id: str) -> list[dict[str, Any]]:
        """The call's transcript lines (both channels) in time order, ``words`` parsed."""
        with self._sql() as db:
            rows = [dict(r) for r in db.execute(
                "SELECT * FROM transcript_lines WHERE device_id = ? AND recording_id = ? ORDER BY start_ms, "
                "channel, line", (device_id, recording_id))]
        for row in rows:
            row["words"] = json.loads(row["words"])  # written by finish_job from the engine's words
        return rows

    def adherence_results(self, device_id: str, recording_id: str) -> list[dict[str, Any]]:
        with self._sql() as db:
            rows = [dict(r) for r in db.execute("SELECT * FROM adherence WHERE device_id = ? AND recording_id = ? "
                                                "ORDER BY script, kind DESC, item", (device_id, recording_id))]
        for row in rows:
            row["passed"] = bool(row["passed"])
        return rows

    def analysis_events(self, device_id: str, recording_id: str) -> list[dict[str, Any]]:
        with self._sql() as db:
            return [dict(r) for r in db.execute("SELECT * FROM analysis_events WHERE device_id = ? AND "
                                                "recording_id = ? ORDER BY start_ms", (device_id, recording_id))]

    def analysis_summary(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Per (device, recording) with a job: state, reason, spoken card data, adherence passed/failed."""
        with self._sql() as db:
            jobs = db.execute("SELECT device_id, recording_id, state, reason, attempts, card_data "
                              "FROM analysis_jobs").fetchall()
            scores = db.execute("SELECT device_id, recording_id, SUM(passed) AS passed, COUNT(*) AS items "
                                "FROM adherence GROUP BY device_id, recording_id").fetchall()
        out = {(j["device_id"], j["recording_id"]): {
            "transcript": j["state"], "reason": j["reason"], "attempts": j["attempts"],
            "spoken_card_data": bool(j["card_data"]), "adherence": None} for j in jobs}
        for s in scores:
            entry = out.get((s["device_id"], s["recording_id"]))
            if entry is not None:
                entry["adherence"] = {"passed": int(s["passed"]), "failed": int(s["items"]) - int(s["passed"])}
        return out

    def search_transcripts(self, phrase: str, limit: int = 50) -> list[dict[str, Any]]:
        """Transcript lines holding ``phrase`` (its words in order, stemmed), best first; ``words`` parsed."""
        if not phrase.strip() or len(phrase) > MAX_QUERY:
            raise SearchRefused(f"a search is 1 to {MAX_QUERY} characters, not {len(phrase)}; shorten the phrase")
        if not 1 <= limit <= MAX_HITS:
            raise SearchRefused(f"a search returns 1 to {MAX_HITS} hits, not {limit}; change --limit")
        with self._sql() as db:
            if isinstance(db, sqlite3.Connection):
                quoted = '"' + " ".join(phrase.replace('"', " ").split()) + '"'
                sql = ("SELECT l.* FROM transcript_fts f JOIN transcript_lines l ON l.device_id = f.device_id "
                       "AND l.recording_id = f.recording_id AND l.channel = f.channel AND l.line = f.line "
                       "WHERE transcript_fts MATCH ? ORDER BY f.rank, l.device_id, l.recording_id LIMIT ?")
                rows = db.execute(sql, (quoted, limit)).fetchall()
            else:
                sql = (f"SELECT l.* FROM transcript_lines l, phraseto_tsquery('english', ?) q WHERE {TSVECTOR} "
                       f"@@ q ORDER BY ts_rank({TSVECTOR}, q) DESC, device_id, recording_id LIMIT ?")
                rows = db.execute(sql, (phrase, limit)).fetchall()
        out = [dict(r) for r in rows]
        for row in out:
            row["words"] = json.loads(row["words"])
        return out


def forget_analysis(db: Any, device_id: str, recording_id: str) -> None:
    """Delete a recording's transcript, adherence and events (erasure; before new results); keeps its job."""
    key = (device_id, recording_id)
    for table in RESULT_TABLES:
        db.execute(f"DELETE FROM {table} WHERE device_id = ? AND recording_id = ?", key)
    if isinstance(db, sqlite3.Connection):
        db.execute("DELETE FROM transcript_fts WHERE device_id = ? AND recording_id = ?", key)


def _replace_results(db: Any, device_id: str, recording_id: str, results: Results) -> None:
    forget_analysis(db, device_id, recording_id)
    sqlite = isinstance(db, sqlite3.Connection)
    for table, columns, rows in (("transcript_lines", LINE_COLUMNS, results.lines),
                                 ("adherence", ADHERENCE_COLUMNS, results.adherence),
                                 ("analysis_events", EVENT_COLUMNS, results.events)):
        if rows:
            db.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                           rows)
    if sqlite and results.lines:
        db.executemany("INSERT INTO transcript_fts (text, device_id, recording_id, channel, line) "
                       "VALUES (?, ?, ?, ?, ?)", [(r[6], r[0], r[1], r[2], r[3]) for r in results.lines])
