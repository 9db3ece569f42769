"""What sync may read and mark: the backlog as typed records, object bytes, synced marks.

The uploader (:mod:`linetap.sync.uploader`) uses this room of the spool and
nothing else: it never names a file or a path. Records are frozen
dataclasses, so a catalogue row never crosses into sync as a dict.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from linetap.firmware import manifest as mf
from linetap.firmware import untrusted
from linetap.firmware.errors import SpoolError
from linetap.firmware.schema import FileRefused, read_bounded
from linetap.firmware.spool.layout import MANIFEST_MAX_BYTES, RECEIPT_MAX_BYTES, SEGMENT_MAX_BYTES, is_recording_id

logger = logging.getLogger(__name__)


class RecordingGone(SpoolError, LookupError):
    """A recording id the caller named is not in the catalogue."""


@dataclass(frozen=True)
class SegmentRecord:
    """One stored segment as the catalogue lists it; ``synced``: the centre has it (a resume hint)."""

    index: int
    size: int
    sha256: str
    synced: bool


@dataclass(frozen=True)
class BacklogRecording:
    """A closed recording the centre does not have yet."""

    recording_id: str
    seq: int
    flagged: bool
    manifest_sha256: str
    bytes: int
    started_wall_ms: int | None


class SyncMarks:
    """The sync side of :class:`~linetap.firmware.spool.Spool`: one room of it, sharing its state.

    Called on the uploader thread; the spool's lock serialises the catalogue
    with the call thread.
    """

    def unsynced(self) -> list[BacklogRecording]:
        """Closed recordings the central store does not have yet, oldest first."""
        with self._lock:
            rows = self.db.execute("SELECT id, seq, flagged, manifest_sha256, bytes, started_wall_ms "
                                   "FROM recordings WHERE state = 'closed' ORDER BY seq").fetchall()
        return [BacklogRecording(r["id"], r["seq"], bool(r["flagged"]), r["manifest_sha256"], r["bytes"],
                                 r["started_wall_ms"]) for r in rows]

    def segments(self, recording_id: str) -> list[SegmentRecord]:
        """A recording's segments as the catalogue lists them, by index."""
        with self._lock:
            self._recording_state(recording_id)
            rows = self.db.execute("SELECT idx, size, sha256, synced FROM segments WHERE recording_id = ? "
                                   "ORDER BY idx", (recording_id,)).fetchall()
        return [SegmentRecord(r["idx"], r["size"], r["sha256"], bool(r["synced"])) for r in rows]

    def read_object(self, recording_id: str, index: int | None = None) -> bytes:
        """The bytes of segment ``index`` of a recording, or (None) of its manifest; bounded.

        Raises :class:`~linetap.firmware.errors.SpoolError` when the file
        cannot be read or is not what the spool writes (too large, not a file).
        """
        if not is_recording_id(recording_id):
            raise SpoolError(f"{recording_id!r} is not a recording id")
        if index is None:
            path, limit = self.layout.manifest(recording_id), MANIFEST_MAX_BYTES
        else:
            path, limit = self.layout.segment(recording_id, index), SEGMENT_MAX_BYTES
        try:
            return read_bounded(path, max_bytes=limit)
        except (FileRefused, OSError) as e:
            raise SpoolError(f"cannot read {path} for upload: {getattr(e, 'strerror', None) or e}") from e

    def mark_synced(self, recording_id: str, index: int | None = None) -> None:
        """The central store has durably stored segment ``index``, or (None) the whole recording.

        Durability differs on purpose. A segment's mark is only a resume hint:
        losing it to a power cut means that segment is sent again, and the
        centre acknowledges a repeat without storing it twice. So it is
        committed with ``synchronous=NORMAL``, which in WAL mode appends to the
        WAL without an fsync (one fsync per segment was most of the cost of
        draining a backlog, and SD-card wear). The recording's mark is what
        retention relies on, so it is committed with ``synchronous=FULL`` and
        is on disk when this returns. That fsync of the WAL also makes every
        earlier hint durable: hints are frames earlier in the same file, and a
        checkpoint under NORMAL fsyncs the WAL before copying it into the
        database. A torn tail of hints cannot corrupt anything either: WAL
        frames carry cumulative checksums, so recovery keeps a prefix of the
        commits.
        """
        if index is not None:
            self.mark_segments_synced(recording_id, (index,))
            return
        with self._lock:
            state = self._recording_state(recording_id)
            if state not in ("closed", "synced"):
                raise SpoolError(f"recording {recording_id} is {state}; only a closed "
                                 "recording can be marked synced")
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.execute("UPDATE segments SET synced = 1 WHERE recording_id = ?", (recording_id,))
                self.db.execute("UPDATE recordings SET state = 'synced', synced_wall_ms = ? WHERE id = ?",
                                (mf.ms(self._clock.wall()), recording_id))
            except sqlite3.Error:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
            logger.info("recording synced recording=%s", recording_id)

    def keep_receipt(self, recording_id: str, data: bytes) -> None:
        """Keep the store's receipt beside the manifest, durably, and note it in the catalogue.

        ``data`` is a receipt the caller has checked (:func:`linetap.firmware.receipt.verify`): retention
        deletes a synced recording only once this has returned. The file is written (fsynced) before
        the row says so, with ``synchronous=FULL``; a crash in between leaves a receipt file the next
        stored ack writes again. Call it before :meth:`mark_synced`.
        """
        if len(data) > RECEIPT_MAX_BYTES:
            raise SpoolError(f"receipt of recording {recording_id} is {len(data)} bytes, over "
                             f"{RECEIPT_MAX_BYTES}; it is not one the store signs")
        with self._lock:
            state = self._recording_state(recording_id)
            if state not in ("closed", "synced"):
                raise SpoolError(f"recording {recording_id} is {state}; only a closed recording can keep a receipt")
            path = self.layout.receipt(recording_id)
            try:
                self._files.write(path, data)
            except OSError as e:
                raise SpoolError(f"cannot keep the receipt {path}: {e.strerror or e}") from e
            # The store's time in the receipt (when the centre stored it), not this box's clock.
            stored_ms = untrusted.loads(data, what=f"receipt of {recording_id}", max_bytes=RECEIPT_MAX_BYTES,
                                        max_depth=2).get("stored_ms")
            self.db.execute("UPDATE recordings SET receipt_stored_ms = ? WHERE id = ?",
                            (stored_ms if type(stored_ms) is int else mf.ms(self._clock.wall()), recording_id))
            logger.info("receipt kept recording=%s", recording_id)

    def ask_receipts_again(self) -> list[str]:
        """Synced recordings without a receipt go back to closed, so their manifest goes again.

        For a box that now has a store key: recordings synced before it (or before receipts) hold
        no receipt, and retention would keep them for ever. Their segments stay marked synced, so only
        the manifest is sent; the centre answers with its receipt. Returns their ids.
        """
        with self._lock:
            rows = self.db.execute("SELECT id FROM recordings WHERE state = 'synced' AND receipt_stored_ms IS NULL "
                                   "ORDER BY seq").fetchall()
            self.db.execute("UPDATE recordings SET state = 'closed', synced_wall_ms = NULL WHERE state = 'synced' "
                            "AND receipt_stored_ms IS NULL")
        ids = [r["id"] for r in rows]
        if ids:
            logger.info("receipts asked for again recordings=%d", len(ids))
        return ids

    def mark_segments_synced(self, recording_id: str, indexes: Iterable[int]) -> None:
        """Segments the central store has durably stored: resume hints, in one commit without an fsync."""
        with self._lock:
            self._recording_state(recording_id)
            self._commit_hint("UPDATE segments SET synced = 1 WHERE recording_id = ? AND idx = ?",
                              [(recording_id, i) for i in indexes])

    def mark_unsynced(self, recording_id: str, indexes: Iterable[int]) -> None:
        """The centre lacks these segments after all: clear their marks so they are sent again.

        A hint like the marks it clears (see :meth:`mark_synced`): if a power
        cut undoes it, the manifest is refused again for the same segments.
        """
        with self._lock:
            self._recording_state(recording_id)
            self._commit_hint("UPDATE segments SET synced = 0 WHERE recording_id = ? AND idx = ?",
                              [(recording_id, i) for i in indexes])

    def _recording_state(self, recording_id: str) -> str:
        row = self.db.execute("SELECT state FROM recordings WHERE id = ?", (recording_id,)).fetchone()
        if row is None:
            raise RecordingGone(f"recording {recording_id} is not in the spool catalogue")
        return row["state"]

    def _commit_hint(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """One transaction that may be lost to a power cut (no fsync); see :meth:`mark_synced`."""
        db = self.db
        db.execute("PRAGMA synchronous=NORMAL")
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(sql, rows)
            except sqlite3.Error:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.execute("PRAGMA synchronous=FULL")

