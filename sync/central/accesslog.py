"""The index's access log: who read, exported, held or erased which recording, in one hash chain.

Every row (``pos``, ``at_ms``, ``actor``, ``action``, ``device_id``,
``recording_id``, ``origin``, ``detail``, ``prev``) is hashed as canonical
JSON (:func:`entry_sha256`; sorted keys, no spaces, as manifests and receipts
are) into ``sha256``, and each row's ``prev`` is the ``sha256`` of the row
before it (the first names :data:`GENESIS`). A row edited, removed or slipped
in afterwards breaks the chain at that position, which :func:`verify_log`
names. Appends run inside a write transaction (``BEGIN IMMEDIATE``, like the
receipt log), so the CLI, ``serve`` and a console in other processes keep one
chain.

``actor`` is who did it (the OS user for the CLI), ``origin`` where from
(``cli``; the console will add its own), ``action`` one of :data:`ACTIONS`.
The log holds no personal data (ids, names of operators, times), so erasure
keeps it. :class:`AccessLogTables` is part of
:class:`~linetap.sync.central.index.SqliteIndex`.
"""

from __future__ import annotations

import getpass
import hashlib
import sqlite3
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from linetap.firmware.manifest import canonical

GENESIS = "0" * 64  # ``prev`` of the first entry
ACTIONS = ("export", "evidence", "hold", "unhold", "erase", "listen", "view",
           "login", "login-failed", "logout", "search", "download", "user", "desk",  # the console's
           "fleet-command", "fleet-config",  # the console's fleet page
           "redact",  # analytics' redacted copy
           "evaluate", "comment")  # the console's QA (web/evaluations.py)
COLUMNS = ("pos", "at_ms", "actor", "action", "device_id", "recording_id", "origin", "detail", "prev", "sha256")
HASHED = COLUMNS[:-1]
MAX_TEXT = 1000  # actor, origin and detail are cut to this many characters


@dataclass(frozen=True)
class Access:
    """One access to log: what the caller knows; position, chain and hash are the log's."""

    actor: str
    action: str
    origin: str
    device_id: str | None = None
    recording_id: str | None = None
    detail: str | None = None


def os_actor() -> str:
    """The OS user running the command (the CLI's actor)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown-user"


def entry_sha256(entry: dict[str, Any]) -> str:
    """The hash of an entry: SHA-256 of the canonical JSON of its fields but ``sha256``."""
    return hashlib.sha256(canonical({name: entry[name] for name in HASHED})).hexdigest()


class AccessLogTables:
    """The access log's statements, on the index's one connection (``_sql``)."""

    def _sql(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def log_access(self, access: Access, now_ms: int) -> dict[str, Any]:
        """Append one entry (own write transaction); returns it as stored."""
        with self._sql() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                entry = append_access(db, access, now_ms)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        return entry

    def access_log(self, device_id: str | None = None, recording_id: str | None = None) -> list[dict[str, Any]]:
        """The log in order; only the entries of one recording (of one device) when given."""
        where, params = [], []
        for column, value in (("device_id", device_id), ("recording_id", recording_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = "SELECT * FROM access_log" + (" WHERE " + " AND ".join(where) if where else "")
        with self._sql() as db:
            return [dict(r) for r in db.execute(sql + " ORDER BY pos", params)]


def append_access(db: sqlite3.Connection, access: Access, now_ms: int) -> dict[str, Any]:
    """Append an entry after the last one; call inside a write transaction."""
    if access.action not in ACTIONS:
        raise ValueError(f"access action {access.action!r} is not one of {ACTIONS}")
    last = db.execute("SELECT pos, sha256 FROM access_log ORDER BY pos DESC LIMIT 1").fetchone()
    pos, prev = (0, GENESIS) if last is None else (last["pos"] + 1, last["sha256"])
    entry: dict[str, Any] = {
        "pos": pos, "at_ms": now_ms, "actor": access.actor[:MAX_TEXT], "action": access.action,
        "device_id": access.device_id, "recording_id": access.recording_id, "origin": access.origin[:MAX_TEXT],
        "detail": None if access.detail is None else access.detail[:MAX_TEXT], "prev": prev}
    entry["sha256"] = entry_sha256(entry)
    db.execute(f"INSERT INTO access_log ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
               tuple(entry[c] for c in COLUMNS))
    return entry


def verify_log(entries: Iterable[dict[str, Any]]) -> tuple[int, str] | None:
    """(position, what is wrong) of the first entry that breaks the chain; None when it holds."""
    prev, expected_pos = GENESIS, 0
    for entry in entries:
        pos = entry["pos"]
        if pos != expected_pos:
            return pos, f"position {pos} follows {expected_pos - 1}: an entry was removed or inserted"
        if entry["prev"] != prev:
            return pos, (f"prev {str(entry['prev'])[:16]}... is not the hash of the entry before it "
                         f"({prev[:16]}...): an entry before it was removed, inserted or altered")
        if entry_sha256(entry) != entry["sha256"]:
            return pos, "its fields do not hash to its sha256: the entry was edited"
        prev, expected_pos = entry["sha256"], pos + 1
    return None
