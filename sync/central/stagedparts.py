"""Staged bytes in the index: the parts of multi-part objects, and waiting manifests, of a shared store.

When the index is shared by several ingest hosts (PostgreSQL), the parts of
one object reach different hosts with no disk in common, so the bytes of a
staged part live in its ``staged`` row (column ``data``), written by the one
statement that notes the row: the part is durable, and summed for its
device's quota, the moment that statement commits, on every host at once.
Each statement here is a single one: none takes the index's write lock, so
hosts stage in parallel and the primary key decides between racers (a part
sent twice is one row). Joining reads every part of the object in one query,
in part order; removal is ``unstage``, which drops rows and bytes together.

A file-staged row (the embedded store: :mod:`~linetap.sync.central.staging`
keeps the bytes under ``<data_dir>/staging``) has ``data`` NULL, and none of
these statements sees it. :class:`StagedPartTables` is part of
:class:`~linetap.sync.central.index.IndexTables`, so both backends run it.
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager

PENDING_MANIFEST = "pending-manifest"  # the ``staged`` name of a manifest waiting for its segments


class StagedPartTables:
    """The statements of staged bytes, on the index's connection (``_sql``)."""

    def _sql(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def stage_part(self, device_id: str, recording_id: str, name: str, sha256: str, part: int, data: bytes,
                   now_ms: int) -> None:
        """Stage one part's bytes with its row, in one statement (a repeat replaces it)."""
        with self._sql() as db:
            db.execute("INSERT INTO staged (device_id, recording_id, name, sha256, part, bytes, staged_ms, data) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, recording_id, name, sha256, part) "
                       "DO UPDATE SET bytes = excluded.bytes, staged_ms = excluded.staged_ms, data = excluded.data",
                       (device_id, recording_id, name, sha256, part, len(data), now_ms, bytes(data)))

    def staged_count(self, device_id: str, recording_id: str, name: str, sha256: str) -> int:
        """How many parts of that object have their bytes staged in the index."""
        with self._sql() as db:
            row = db.execute("SELECT COUNT(*) FROM staged WHERE device_id = ? AND recording_id = ? AND name = ? "
                             "AND sha256 = ? AND data IS NOT NULL", (device_id, recording_id, name, sha256)).fetchone()
        return int(row[0])

    def staged_parts(self, device_id: str, recording_id: str, name: str, sha256: str) -> list[tuple[int, bytes]]:
        """The staged parts of that object as (part, bytes), in part order."""
        with self._sql() as db:
            rows = db.execute("SELECT part, data FROM staged WHERE device_id = ? AND recording_id = ? AND name = ? "
                              "AND sha256 = ? AND data IS NOT NULL ORDER BY part",
                              (device_id, recording_id, name, sha256)).fetchall()
        return [(int(r[0]), bytes(r[1])) for r in rows]

    def staged_pending(self, device_id: str, recording_id: str) -> bytes | None:
        """The newest manifest staged in the index waiting for this recording's segments, if any."""
        with self._sql() as db:
            row = db.execute("SELECT data FROM staged WHERE device_id = ? AND recording_id = ? AND name = ? "
                             "AND data IS NOT NULL ORDER BY staged_ms DESC, sha256 LIMIT 1",
                             (device_id, recording_id, PENDING_MANIFEST)).fetchone()
        return None if row is None else bytes(row[0])
