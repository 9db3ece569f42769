"""The index's receipt log: every delivery receipt the store signed, in one hash chain.

A receipt (:mod:`linetap.firmware.receipt`) is signed with the store key when a
recording's manifest is stored and verified, in the same write transaction
that indexes the recording (``BEGIN IMMEDIATE``: SQLite's write lock, taken
before the last receipt is read), so of several ingest processes on one
data dir exactly one appends at a time and each receipt names the one before
it as ``prev`` (the first names :data:`~linetap.firmware.receipt.GENESIS`). ``pos``
is the log position. There is at most one receipt per (device, recording): a
manifest sent again is answered with the receipt already in the log.

A receipt holds no personal data (device, recording, seq, hashes, time), so
erasure keeps it: the log stays whole. :class:`ReceiptTables` is part of
:class:`~linetap.sync.central.index.SqliteIndex`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from linetap.firmware.receipt import GENESIS, Receipt

# (prev, stored_ms) -> the signed receipt: what ingest hands the index to sign inside its transaction.
Signer = Callable[[str, int], Receipt]
COLUMNS = ("pos", "device_id", "recording_id", "seq", "manifest_sha256", "stored_ms", "key_id", "prev",
           "sha256", "data")


class ReceiptTables:
    """The receipt log's statements, on the index's one connection (``_sql``)."""

    def _sql(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def receipt(self, device_id: str, recording_id: str) -> dict[str, Any] | None:
        """The receipt of that recording (``data`` is the signed bytes), None when the log has none."""
        with self._sql() as db:
            row = db.execute("SELECT * FROM receipts WHERE device_id = ? AND recording_id = ?",
                             (device_id, recording_id)).fetchone()
        return None if row is None else _row(row)

    def unreceipted(self) -> list[dict[str, Any]]:
        """Recordings the log has no receipt for (stored before the store kept one), oldest first."""
        with self._sql() as db:
            return [dict(r) for r in db.execute(
                "SELECT device_id, recording_id, seq, manifest_sha256 FROM recordings r WHERE NOT EXISTS "
                "(SELECT 1 FROM receipts x WHERE x.device_id = r.device_id AND x.recording_id = r.recording_id) "
                "ORDER BY stored_ms, device_id, seq")]

    def add_receipt(self, device_id: str, recording_id: str, sign: Signer) -> None:
        """Sign and append the receipt of an indexed recording unless the log has one (own transaction)."""
        with self._sql() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                append_receipt(db, device_id, recording_id, sign)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def receipts(self, device_id: str | None = None) -> list[dict[str, Any]]:
        """The log in order (of one device when given)."""
        sql, params = "SELECT * FROM receipts", []
        if device_id is not None:
            sql += " WHERE device_id = ?"
            params.append(device_id)
        with self._sql() as db:
            return [_row(r) for r in db.execute(sql + " ORDER BY pos", params)]


def append_receipt(db: sqlite3.Connection, device_id: str, recording_id: str, sign: Signer) -> None:
    """Sign and append the recording's receipt unless the log has one; call inside a write transaction."""
    if db.execute("SELECT 1 FROM receipts WHERE device_id = ? AND recording_id = ?",
                  (device_id, recording_id)).fetchone() is not None:
        return
    stored = db.execute("SELECT stored_ms FROM recordings WHERE device_id = ? AND recording_id = ?",
                        (device_id, recording_id)).fetchone()
    last = db.execute("SELECT pos, sha256 FROM receipts ORDER BY pos DESC LIMIT 1").fetchone()
    pos, prev = (0, GENESIS) if last is None else (last["pos"] + 1, last["sha256"])
    made = sign(prev, stored["stored_ms"])
    db.execute(f"INSERT INTO receipts ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
               (pos, made.device_id, made.recording_id, made.seq, made.manifest_sha256, made.stored_ms,
                made.key_id, made.prev, made.sha256, made.data))


def as_receipt(row: dict[str, Any]) -> Receipt:
    """A log row as the :class:`~linetap.firmware.receipt.Receipt` it holds (``data``: the signed bytes).

    Not checked here: ``verify`` checks the log against the store key.
    """
    return Receipt(row["device_id"], row["recording_id"], row["seq"], row["manifest_sha256"], row["stored_ms"],
                   row["prev"], row["key_id"], row["data"])


def _row(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    out["data"] = bytes(out["data"])
    return out
