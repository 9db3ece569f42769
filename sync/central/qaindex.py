"""The index's quality-assessment tables: forms, evaluations with their versions and life, comments.

``qa_forms``: one row per version of a form (``form_id``, ``version``), with
its TOML as added (``source``), so an old evaluation is always shown with the
questions it was scored on. ``evaluations``: one row per version of an
evaluation (1 when submitted, one more per amendment); rows are only
inserted, never changed (but for erasure, below). ``evaluation_events``: an evaluation's life
(submit, amend, acknowledge, dispute, resolve), one row per step with the
state it led to; the state now is the last row's. A step is stored only if
the state it was decided from is still the last one (checked inside a write
transaction), so two people acting at once cannot both win: the second gets
:class:`StaleEvaluation`. ``comments``: notes on a call at a position in its
audio. Erasing a recording replaces what people wrote about it (comment
bodies, notes: :func:`erase_qa_text`); scores, answers and who did what
stay. Scores are hundredths of a percent (integers). :class:`QaTables` is
part of :class:`~linetap.sync.central.index.IndexTables`, so both backends
run these statements.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

from linetap.firmware import untrusted
from linetap.firmware.errors import SyncError

EVALUATION_COLUMNS = ("evaluation_id", "version", "device_id", "recording_id", "form_id", "form_version",
                      "reviewer", "agent", "answers", "score", "raw_score", "critical_failed", "passed", "note",
                      "submitted_ms")
COMMENT_COLUMNS = ("comment_id", "device_id", "recording_id", "author", "position_ms", "body", "created_ms")
MAX_ANSWERS_BYTES = 64 * 1024

_LATEST = (
    "SELECT e.*, s.state, s.at_ms AS state_ms FROM evaluations e "
    "JOIN (SELECT evaluation_id, MAX(version) AS version FROM evaluations GROUP BY evaluation_id) top "
    "ON top.evaluation_id = e.evaluation_id AND top.version = e.version "
    "JOIN (SELECT evaluation_id, MAX(pos) AS pos FROM evaluation_events GROUP BY evaluation_id) last "
    "ON last.evaluation_id = e.evaluation_id "
    "JOIN evaluation_events s ON s.evaluation_id = last.evaluation_id AND s.pos = last.pos")


class StaleEvaluation(SyncError, ValueError):
    """The evaluation changed since it was read (someone else acted first); reload it."""


class FormVersionTaken(SyncError, ValueError):
    """A form version already stored with other content."""


class QaIndex(Protocol):
    """The quality-assessment part of the :class:`~linetap.sync.central.index.Index` protocol."""

    def add_form(self, form_id: str, version: int, title: str, source: str, added_by: str, now_ms: int) -> bool: ...
    def forms(self) -> list[dict[str, Any]]: ...
    def form(self, form_id: str, version: int | None = None) -> dict[str, Any] | None: ...
    def submit_evaluation(self, row: dict[str, Any], actor: str, now_ms: int) -> None: ...
    def amend_evaluation(self, row: dict[str, Any], from_state: str, to_state: str, actor: str,
                         note: str | None, now_ms: int) -> int: ...
    def evaluation_event(self, evaluation_id: str, from_state: str, action: str, to_state: str, actor: str,
                         note: str | None, now_ms: int) -> None: ...
    def evaluation(self, evaluation_id: str) -> dict[str, Any] | None: ...
    def evaluations(self, *, device_id: str | None = None, recording_id: str | None = None,
                    agent: str | None = None, since_ms: int | None = None,
                    until_ms: int | None = None) -> list[dict[str, Any]]: ...
    def add_comment(self, comment: dict[str, Any]) -> None: ...
    def comments(self, device_id: str, recording_id: str) -> list[dict[str, Any]]: ...


class QaTables:
    """The QA statements, on the index's one connection (``_sql``)."""

    def _sql(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    @contextmanager
    def _qa_write(self) -> Iterator[sqlite3.Connection]:
        with self._sql() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # -- forms --

    def add_form(self, form_id: str, version: int, title: str, source: str, added_by: str, now_ms: int) -> bool:
        """Store a form version; False if that very version is there already with the same source."""
        with self._qa_write() as db:
            there = db.execute("SELECT source FROM qa_forms WHERE form_id = ? AND version = ?",
                               (form_id, version)).fetchone()
            if there is not None:
                if there["source"] == source:
                    return False
                raise FormVersionTaken(f"form {form_id} version {version} is stored already with other content; "
                                       "give the changed form the next version number (a stored version never "
                                       "changes: evaluations were scored on it)")
            db.execute("INSERT INTO qa_forms (form_id, version, title, source, added_ms, added_by) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (form_id, version, title, source, now_ms, added_by))
        return True

    def forms(self) -> list[dict[str, Any]]:
        """Every stored form version (without its source), by id and version."""
        with self._sql() as db:
            return [dict(r) for r in db.execute(
                "SELECT form_id, version, title, added_ms, added_by FROM qa_forms ORDER BY form_id, version")]

    def form(self, form_id: str, version: int | None = None) -> dict[str, Any] | None:
        """A form version with its source; the newest version when none is named."""
        with self._sql() as db:
            if version is None:
                row = db.execute("SELECT * FROM qa_forms WHERE form_id = ? ORDER BY version DESC LIMIT 1",
                                 (form_id,)).fetchone()
            else:
                row = db.execute("SELECT * FROM qa_forms WHERE form_id = ? AND version = ?",
                                 (form_id, version)).fetchone()
        return None if row is None else dict(row)

    # -- evaluations --

    def submit_evaluation(self, row: dict[str, Any], actor: str, now_ms: int) -> None:
        """Store a new evaluation (its version 1, ``row`` as :data:`EVALUATION_COLUMNS` but ``version``)."""
        with self._qa_write() as db:
            _insert_version(db, row | {"version": 1})
            _insert_event(db, row["evaluation_id"], 0, "submit", "submitted", actor, None, now_ms)

    def amend_evaluation(self, row: dict[str, Any], from_state: str, to_state: str, actor: str,
                         note: str | None, now_ms: int) -> int:
        """Store the next version of ``row["evaluation_id"]`` if its state is still ``from_state``; its number."""
        with self._qa_write() as db:
            pos = _check_state(db, row["evaluation_id"], from_state)
            top = db.execute("SELECT MAX(version) FROM evaluations WHERE evaluation_id = ?",
                             (row["evaluation_id"],)).fetchone()[0]
            version = int(top) + 1
            _insert_version(db, row | {"version": version})
            _insert_event(db, row["evaluation_id"], pos + 1, "amend", to_state, actor, note, now_ms)
        return version

    def evaluation_event(self, evaluation_id: str, from_state: str, action: str, to_state: str, actor: str,
                         note: str | None, now_ms: int) -> None:
        """Append a step (acknowledge, dispute, resolve) if the state is still ``from_state``."""
        with self._qa_write() as db:
            pos = _check_state(db, evaluation_id, from_state)
            _insert_event(db, evaluation_id, pos + 1, action, to_state, actor, note, now_ms)

    def evaluation(self, evaluation_id: str) -> dict[str, Any] | None:
        """The newest version with ``state``, plus ``versions`` (all, oldest first) and ``events``."""
        with self._sql() as db:
            top = db.execute(_LATEST + " WHERE e.evaluation_id = ?", (evaluation_id,)).fetchone()
            if top is None:
                return None
            versions = db.execute("SELECT * FROM evaluations WHERE evaluation_id = ? ORDER BY version",
                                  (evaluation_id,)).fetchall()
            events = db.execute("SELECT * FROM evaluation_events WHERE evaluation_id = ? ORDER BY pos",
                                (evaluation_id,)).fetchall()
        out = _evaluation(top)
        out["versions"] = [_evaluation(v) for v in versions]
        out["events"] = [dict(e) for e in events]
        return out

    def evaluations(self, *, device_id: str | None = None, recording_id: str | None = None,
                    agent: str | None = None, since_ms: int | None = None,
                    until_ms: int | None = None) -> list[dict[str, Any]]:
        """The newest version of each evaluation with its ``state``, oldest submission first."""
        where, params = [], []
        for column, value in (("e.device_id", device_id), ("e.recording_id", recording_id), ("e.agent", agent)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since_ms is not None:
            where.append("e.submitted_ms >= ?")
            params.append(since_ms)
        if until_ms is not None:
            where.append("e.submitted_ms < ?")
            params.append(until_ms)
        sql = _LATEST + (" WHERE " + " AND ".join(where) if where else "")
        with self._sql() as db:
            rows = db.execute(sql + " ORDER BY e.submitted_ms, e.evaluation_id", params).fetchall()
        return [_evaluation(r) for r in rows]

    # -- comments --

    def add_comment(self, comment: dict[str, Any]) -> None:
        """Store a comment (``comment`` as :data:`COMMENT_COLUMNS`)."""
        with self._sql() as db:
            db.execute(f"INSERT INTO comments ({', '.join(COMMENT_COLUMNS)}) VALUES "
                       f"({', '.join('?' * len(COMMENT_COLUMNS))})", tuple(comment[c] for c in COMMENT_COLUMNS))

    def comments(self, device_id: str, recording_id: str) -> list[dict[str, Any]]:
        """A call's comments by position in the audio, then by when they were written."""
        with self._sql() as db:
            return [dict(r) for r in db.execute(
                "SELECT * FROM comments WHERE device_id = ? AND recording_id = ? "
                "ORDER BY position_ms, created_ms, comment_id", (device_id, recording_id))]


ERASED_TEXT = "(erased with the recording)"


def erase_qa_text(db: sqlite3.Connection, device_id: str, recording_id: str) -> None:
    """What people wrote about an erased recording may name its caller: comments' bodies and the notes of its
    evaluations and their steps are replaced; scores, answers and who did what stay (they name nobody)."""
    db.execute("UPDATE comments SET body = ? WHERE device_id = ? AND recording_id = ?",
               (ERASED_TEXT, device_id, recording_id))
    db.execute("UPDATE evaluations SET note = NULL WHERE device_id = ? AND recording_id = ?",
               (device_id, recording_id))
    db.execute("UPDATE evaluation_events SET note = NULL WHERE note IS NOT NULL AND evaluation_id IN (SELECT "
               "evaluation_id FROM evaluations WHERE device_id = ? AND recording_id = ?)", (device_id, recording_id))


def _check_state(db: sqlite3.Connection, evaluation_id: str, from_state: str) -> int:
    last = db.execute("SELECT pos, state FROM evaluation_events WHERE evaluation_id = ? ORDER BY pos DESC LIMIT 1",
                      (evaluation_id,)).fetchone()
    if last is None:
        raise StaleEvaluation(f"evaluation {evaluation_id} does not exist; open the call again")
    if last["state"] != from_state:
        raise StaleEvaluation(f"evaluation {evaluation_id} is {last['state']} now, not {from_state}: someone "
                              "acted on it meanwhile; reload it and decide again")
    return int(last["pos"])


def _insert_version(db: sqlite3.Connection, row: dict[str, Any]) -> None:
    values = dict(row)
    values["answers"] = json.dumps(row["answers"], sort_keys=True)
    values["critical_failed"] = ",".join(row["critical_failed"])
    values["passed"] = int(row["passed"])
    db.execute(f"INSERT INTO evaluations ({', '.join(EVALUATION_COLUMNS)}) VALUES "
               f"({', '.join('?' * len(EVALUATION_COLUMNS))})", tuple(values[c] for c in EVALUATION_COLUMNS))


def _insert_event(db: sqlite3.Connection, evaluation_id: str, pos: int, action: str, state: str, actor: str,
                  note: str | None, now_ms: int) -> None:
    db.execute("INSERT INTO evaluation_events (evaluation_id, pos, action, state, actor, note, at_ms) "
               "VALUES (?, ?, ?, ?, ?, ?, ?)", (evaluation_id, pos, action, state, actor, note, now_ms))


def _evaluation(row: Any) -> dict[str, Any]:
    out = dict(row)
    out["answers"] = untrusted.loads(out["answers"], what=f"answers of evaluation {out['evaluation_id']}",
                                     max_bytes=MAX_ANSWERS_BYTES, max_depth=2)
    out["critical_failed"] = tuple(q for q in out["critical_failed"].split(",") if q)
    out["passed"] = bool(out["passed"])
    return out
