"""The index's ``peaks`` table: each recording's waveform peaks, computed once after it is stored.

A row holds :class:`~linetap.sync.central.peaks.Peaks` in its stored form
(a few tens of KiB: at most 8,000 buckets per lane, and each segment's
plaintext size, which the console's Range answers need). A recording that
could not be decoded gets a row with ``data`` NULL and the reason in
``problem``, so the background step does not try it again and again; the
console says why there is no waveform. Erasing a recording deletes its row
(peaks show when someone spoke). :class:`PeaksTables` is part of
:class:`~linetap.sync.central.index.IndexTables`, so both backends run it.
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from typing import Any

MAX_PROBLEM = 500


class PeaksTables:
    """The peaks table's statements, on the index's one connection (``_sql``)."""

    def _sql(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def add_peaks(self, device_id: str, recording_id: str, data: bytes | None, now_ms: int, *,
                  problem: str | None = None) -> bool:
        """Keep a recording's peaks (or, ``data`` None, why there are none); False if a row was there."""
        with self._sql() as db:
            cursor = db.execute("INSERT INTO peaks (device_id, recording_id, made_ms, data, problem) "
                                "SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM recordings WHERE "
                                "device_id = ? AND recording_id = ? AND erased_ms IS NULL) "
                                "ON CONFLICT DO NOTHING",
                                (device_id, recording_id, now_ms, data,
                                 None if problem is None else problem[:MAX_PROBLEM], device_id, recording_id))
            return cursor.rowcount == 1

    def peaks(self, device_id: str, recording_id: str) -> dict[str, Any] | None:
        """The recording's row (``data`` bytes or None, ``problem``, ``made_ms``), or None before it is made."""
        with self._sql() as db:
            row = db.execute("SELECT made_ms, data, problem FROM peaks WHERE device_id = ? AND recording_id = ?",
                             (device_id, recording_id)).fetchone()
        if row is None:
            return None
        return {"made_ms": row["made_ms"], "data": None if row["data"] is None else bytes(row["data"]),
                "problem": row["problem"]}

    def without_peaks(self, limit: int, since_ms: int = 0) -> list[dict[str, Any]]:
        """Up to ``limit`` recordings with audio stored at ``since_ms`` or later and no peaks row yet,
        oldest stored first (each with its ``stored_ms``, the next call's ``since_ms``)."""
        with self._sql() as db:
            rows = db.execute("SELECT r.device_id, r.recording_id, r.stored_ms FROM recordings r WHERE r.stored_ms >= ? "
                              "AND r.erased_ms IS NULL "
                              "AND r.recorded = 1 AND r.segments > 0 AND NOT EXISTS (SELECT 1 FROM peaks p "
                              "WHERE p.device_id = r.device_id AND p.recording_id = r.recording_id) "
                              "ORDER BY r.stored_ms LIMIT ?", (since_ms, limit)).fetchall()
        return [dict(r) for r in rows]

    def drop_peaks(self, device_id: str, recording_id: str) -> None:
        """Forget a recording's peaks (erased, or to be made again)."""
        with self._sql() as db:
            db.execute("DELETE FROM peaks WHERE device_id = ? AND recording_id = ?", (device_id, recording_id))
