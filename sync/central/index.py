"""The central index: enrolled devices, stored objects, recordings, problems, holds.

:class:`Index` is what the ingest core and the tools use; :class:`SqliteIndex`
is the default (one file, WAL, a busy timeout so several ingest processes on
one data dir take turns). Every statement is plain SQL that PostgreSQL runs
too (``INSERT ... ON CONFLICT DO NOTHING``, ``LOWER(x) LIKE``, ``NULLS FIRST``):
they live once, in :class:`IndexTables`, and
:class:`~linetap.sync.central.pgindex.PgIndex` runs them on PostgreSQL.

Idempotence lives here: an object row is *claimed* (inserted if absent) before
its bytes are written, so of two different versions of one object racing in
two workers exactly one wins and the other is told ``conflict``; a recording
row is inserted if absent, so a manifest delivered twice is indexed once.

The schema and its migrations are in :mod:`~linetap.sync.central.indexschema`,
the fleet tracker's tables in :mod:`~linetap.sync.central.fleetindex`, the
receipt log in :mod:`~linetap.sync.central.receiptlog` (a recording's receipt
is appended in the transaction that indexes it).

Keys. Recording ids are unique per device, not across the fleet (a box makes
its own UUIDv7s, and a hostile box may reuse another's): every recording row,
object row, staging row, hold and erasure is keyed by (device, recording).
A lookup by recording id alone (the operator's tools) that matches recordings
of two devices is refused with :class:`AmbiguousRecording`.

Quota accounting. ``staged`` holds one row per staged part of a multi-part
object and per manifest waiting for its segments, with the bytes and when
it was staged (the ingest's clock), so a device's staging is summed and aged
out without walking the file system. An object row is ``vouched`` once a
verified manifest that lists it is indexed; a device's unvouched objects plus
its staged rows are what its ingest quota bounds, and ``verify`` lists the
unvouched ones as orphans.

Personal data: ``caller_number`` and ``caller_name`` are the only columns that
hold it; erasure clears them (and the QA metrics and events) and keeps what
the chain needs. ``caller_withheld`` (why no number came: ``private``,
``out-of-area``, ``unavailable``, ``failed``) identifies nobody and stays.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

from linetap.firmware import manifest as mf
from linetap.firmware import untrusted
from linetap.firmware.errors import SyncError
from linetap.sync.central.accesslog import Access, AccessLogTables
from linetap.sync.central.analytics.tables import AnalyticsIndex, AnalyticsTables, forget_analysis
from linetap.sync.central.copytables import CopyIndex, CopyTables
from linetap.sync.central.consoleindex import ConsoleIndex, ConsoleTables, caller_condition, trigram_narrows
from linetap.sync.central.figuresindex import COLUMNS as FIGURE_COLUMNS
from linetap.sync.central.figuresindex import figure_values
from linetap.sync.central.fleetindex import FleetTables, FleetUpdate
from linetap.sync.central.indexschema import SCHEMA_VERSION, upgrade
from linetap.sync.central.peakslog import PeaksTables
from linetap.sync.central.qaindex import QaIndex, QaTables, erase_qa_text
from linetap.sync.central.rolloutindex import RolloutTables
from linetap.sync.central.receiptlog import ReceiptTables, Signer, append_receipt
from linetap.sync.central.stagedparts import PENDING_MANIFEST, StagedPartTables
from linetap.sync.central.store import StoreUnavailable
from linetap.sync.central.timestamplog import TimestampTables

logger = logging.getLogger(__name__)

INDEX_FILE = "index.db"
# Asked of this module by the fleet and the tests.
__all__ = ["AmbiguousRecording", "FleetUpdate", "INDEX_FILE", "Index", "IndexTables", "PENDING_MANIFEST",
           "SCHEMA_VERSION", "SqliteIndex", "UnknownRecording"]

RECORDING_COLUMNS = ("recording_id", "device_id", "seq", "started_ms", "ended_ms", "duration_ms", "flagged",
                     "recorded", "discarded", "ended_by", "consent", "metrics", "caller_number", "caller_name",
                     "manifest_sha256", "prev", "segments", "bytes", "manifest_key", "stored_ms", "caller_withheld")
_JSON_COLUMNS = ("consent", "metrics")
_FLAG_COLUMNS = ("flagged", "recorded", "discarded", "hold")


class UnknownRecording(SyncError, LookupError):
    """A recording id that the index does not hold."""


class AmbiguousRecording(SyncError, LookupError):
    """A recording id held for more than one device: the device must be named."""


class Index(AnalyticsIndex, ConsoleIndex, CopyIndex, QaIndex, Protocol):
    """What the central store knows about devices and recordings (with the analytics', console's,
    whole-table copy's and quality assessment's parts)."""

    def pinned(self) -> AbstractContextManager[None]: ...
    def enroll(self, device_id: str, public_key_b64: str, now_ms: int) -> None: ...
    def device_key(self, device_id: str) -> str | None: ...
    def devices(self) -> list[dict[str, Any]]: ...

    def claim_object(self, device_id: str, recording_id: str, name: str, sha256: str, size: int,
                     object_key: str, now_ms: int) -> dict[str, Any]:
        """Insert the object's row unless one exists; returns the row now there (maybe another sha256)."""

    def mark_stored(self, device_id: str, recording_id: str, name: str, now_ms: int) -> None: ...
    def object(self, device_id: str, recording_id: str, name: str) -> dict[str, Any] | None: ...
    def objects(self, device_id: str, recording_id: str) -> list[dict[str, Any]]: ...
    def forget_objects(self, device_id: str, recording_id: str) -> None: ...
    def unvouched_objects(self, device_id: str) -> list[dict[str, Any]]:
        """Objects of the device that no indexed manifest lists (stored or only claimed)."""

    def stage(self, device_id: str, recording_id: str, name: str, sha256: str, part: int, size: int,
              now_ms: int) -> None:
        """Note a staged part (or, with name ``pending-manifest``, a waiting manifest)."""

    def unstage(self, device_id: str, recording_id: str, name: str, sha256: str | None = None) -> None: ...
    # staged bytes in the index, for a store shared by several hosts (:mod:`~linetap.sync.central.stagedparts`)
    shared: bool  # True when other hosts reach this index: staging then keeps its bytes in it
    def stage_part(self, device_id: str, recording_id: str, name: str, sha256: str, part: int, data: bytes,
                   now_ms: int) -> None: ...
    def staged_count(self, device_id: str, recording_id: str, name: str, sha256: str) -> int: ...
    def staged_parts(self, device_id: str, recording_id: str, name: str, sha256: str) -> list[tuple[int, bytes]]: ...
    def staged_pending(self, device_id: str, recording_id: str) -> bytes | None: ...

    def held_bytes(self, device_id: str) -> int:
        """Bytes the device holds here that no indexed manifest vouches for: staged plus unvouched objects."""

    def staged(self, *, older_than_ms: int | None = None) -> list[dict[str, Any]]:
        """Staged objects (one row per device, recording, name, sha256: bytes, parts, last_ms),
        those last touched before ``older_than_ms`` when given."""

    def add_recording(self, row: dict[str, Any], vouched: Sequence[str] = (), sign: Signer | None = None) -> bool:
        """Insert a recording unless it is indexed already, and mark the named objects of it vouched;
        True when this call inserted it. With ``sign``, the recording's receipt is appended to the
        receipt log in the same transaction unless the log has one."""

    def receipt(self, device_id: str, recording_id: str) -> dict[str, Any] | None: ...
    def unreceipted(self) -> list[dict[str, Any]]: ...
    def add_receipt(self, device_id: str, recording_id: str, sign: Signer) -> None: ...
    def receipts(self, device_id: str | None = None) -> list[dict[str, Any]]: ...

    # the access log (:mod:`~linetap.sync.central.accesslog`)
    def log_access(self, access: Access, now_ms: int) -> dict[str, Any]: ...
    def access_log(self, device_id: str | None = None, recording_id: str | None = None) -> list[dict[str, Any]]: ...

    # trusted timestamps (:mod:`~linetap.sync.central.timestamplog`)
    def chain_heads(self) -> list[dict[str, Any]]: ...
    def receipt_head(self) -> dict[str, Any] | None: ...
    def receipt_at(self, pos: int) -> dict[str, Any] | None: ...
    def access_head(self) -> dict[str, Any] | None: ...
    def access_at(self, pos: int) -> dict[str, Any] | None: ...
    def add_timestamp(self, made_ms: int, commitment: bytes, digest_sha256: str, tsa: str, token: bytes,
                      gen_time_ms: int, tsa_cert: bytes) -> int: ...
    def timestamps(self) -> list[dict[str, Any]]: ...
    def last_timestamp(self) -> dict[str, Any] | None: ...

    # waveform peaks (:mod:`~linetap.sync.central.peakslog`)
    def add_peaks(self, device_id: str, recording_id: str, data: bytes | None, now_ms: int, *,
                  problem: str | None = None) -> bool: ...
    def peaks(self, device_id: str, recording_id: str) -> dict[str, Any] | None: ...
    def without_peaks(self, limit: int, since_ms: int = 0) -> list[dict[str, Any]]: ...
    def drop_peaks(self, device_id: str, recording_id: str) -> None: ...

    def recording(self, recording_id: str, device_id: str | None = None) -> dict[str, Any] | None:
        """The recording; without ``device_id`` the one of that id, :class:`AmbiguousRecording` if
        several devices have one."""

    def recordings_with_id(self, recording_id: str) -> list[dict[str, Any]]: ...
    def device_recordings(self, device_id: str) -> list[dict[str, Any]]: ...
    def recordings_at(self, device_id: str, seq: int) -> list[dict[str, Any]]: ...
    def recordings(self, *, device_id: str | None = None, since_ms: int | None = None,
                   until_ms: int | None = None, caller: str | None = None, flagged: bool | None = None,
                   min_duration_ms: int | None = None, erased: bool | None = False) -> list[dict[str, Any]]: ...

    def add_problem(self, device_id: str, recording_id: str | None, seq: int | None, kind: str,
                    detail: str, now_ms: int) -> None: ...
    def problems(self, device_id: str) -> list[dict[str, Any]]: ...

    def set_hold(self, recording_id: str, hold: bool, reason: str | None, *, device_id: str) -> None: ...

    def mark_erased(self, recording_id: str, now_ms: int, reason: str, tombstone_key: str, *,
                    device_id: str) -> None: ...
    def close(self) -> None: ...


class IndexTables(FleetTables, ReceiptTables, TimestampTables, AccessLogTables, StagedPartTables,
                  PeaksTables, QaTables, CopyTables, AnalyticsTables, ConsoleTables, RolloutTables):
    """Every statement of :class:`Index`, on the connection the subclass's ``_sql()`` lends.

    The statements use ``?`` placeholders and ``BEGIN IMMEDIATE`` for a write
    transaction that serialises writers; :class:`SqliteIndex` lends a
    ``sqlite3`` connection, :class:`~linetap.sync.central.pgindex.PgIndex` a
    psycopg one behind an adapter that speaks the same dialect, so both
    backends run the same statements and behave alike.
    """

    shared = False  # one host's index (SQLite); PgIndex is shared

    @contextmanager
    def pinned(self) -> Iterator[None]:
        """Every statement of this block on this thread through one connection (PostgreSQL: one borrow from
        the pool instead of one per statement). SQLite has one connection anyway."""
        yield

    # -- devices --

    def enroll(self, device_id: str, public_key_b64: str, now_ms: int) -> None:
        with self._sql() as db:
            db.execute("INSERT INTO devices (device_id, public_key, enrolled_ms) VALUES (?, ?, ?) "
                       "ON CONFLICT (device_id) DO UPDATE SET public_key = excluded.public_key, "
                       "enrolled_ms = excluded.enrolled_ms", (device_id, public_key_b64, now_ms))

    def device_key(self, device_id: str) -> str | None:
        with self._sql() as db:
            row = db.execute("SELECT public_key FROM devices WHERE device_id = ?", (device_id,)).fetchone()
        return None if row is None else row["public_key"]

    def devices(self) -> list[dict[str, Any]]:
        with self._sql() as db:
            return [dict(r) for r in db.execute("SELECT * FROM devices ORDER BY device_id")]

    # -- objects --

    def claim_object(self, device_id: str, recording_id: str, name: str, sha256: str, size: int,
                     object_key: str, now_ms: int) -> dict[str, Any]:
        with self._sql() as db:
            db.execute("INSERT INTO objects (device_id, recording_id, name, sha256, size, object_key, "
                       "claimed_ms) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                       (device_id, recording_id, name, sha256, size, object_key, now_ms))
            row = db.execute("SELECT * FROM objects WHERE device_id = ? AND recording_id = ? AND name = ?",
                             (device_id, recording_id, name)).fetchone()
        return dict(row)

    def mark_stored(self, device_id: str, recording_id: str, name: str, now_ms: int) -> None:
        with self._sql() as db:
            db.execute("UPDATE objects SET stored_ms = ? WHERE device_id = ? AND recording_id = ? "
                       "AND name = ? AND stored_ms IS NULL", (now_ms, device_id, recording_id, name))

    def object(self, device_id: str, recording_id: str, name: str) -> dict[str, Any] | None:
        with self._sql() as db:
            row = db.execute("SELECT * FROM objects WHERE device_id = ? AND recording_id = ? AND name = ?",
                             (device_id, recording_id, name)).fetchone()
        return None if row is None else dict(row)

    def objects(self, device_id: str, recording_id: str) -> list[dict[str, Any]]:
        with self._sql() as db:
            return [dict(r) for r in db.execute(
                "SELECT * FROM objects WHERE device_id = ? AND recording_id = ? ORDER BY name",
                (device_id, recording_id))]

    def forget_objects(self, device_id: str, recording_id: str) -> None:
        with self._sql() as db:
            db.execute("DELETE FROM objects WHERE device_id = ? AND recording_id = ?", (device_id, recording_id))

    def unvouched_objects(self, device_id: str) -> list[dict[str, Any]]:
        with self._sql() as db:
            return [dict(r) for r in db.execute(
                "SELECT * FROM objects WHERE device_id = ? AND vouched = 0 ORDER BY recording_id, name",
                (device_id,))]

    # -- staging and quota --

    def stage(self, device_id: str, recording_id: str, name: str, sha256: str, part: int, size: int,
              now_ms: int) -> None:
        with self._sql() as db:
            db.execute("INSERT INTO staged (device_id, recording_id, name, sha256, part, bytes, staged_ms) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, recording_id, name, sha256, part) "
                       "DO UPDATE SET bytes = excluded.bytes, staged_ms = excluded.staged_ms",
                       (device_id, recording_id, name, sha256, part, size, now_ms))

    def unstage(self, device_id: str, recording_id: str, name: str, sha256: str | None = None) -> None:
        sql, params = "DELETE FROM staged WHERE device_id = ? AND recording_id = ? AND name = ?", \
            [device_id, recording_id, name]
        if sha256 is not None:
            sql += " AND sha256 = ?"
            params.append(sha256)
        with self._sql() as db:
            db.execute(sql, params)

    def held_bytes(self, device_id: str) -> int:
        with self._sql() as db:
            staged = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM staged WHERE device_id = ?",
                                (device_id,)).fetchone()[0]
            loose = db.execute("SELECT COALESCE(SUM(size), 0) FROM objects WHERE device_id = ? AND vouched = 0",
                               (device_id,)).fetchone()[0]
        return int(staged) + int(loose)

    def staged(self, *, older_than_ms: int | None = None) -> list[dict[str, Any]]:
        sql = ("SELECT device_id, recording_id, name, sha256, SUM(bytes) AS bytes, COUNT(*) AS parts, "
               "MIN(staged_ms) AS first_ms, MAX(staged_ms) AS last_ms FROM staged "
               "GROUP BY device_id, recording_id, name, sha256")
        params: list[int] = []
        if older_than_ms is not None:
            sql += " HAVING MAX(staged_ms) < ?"
            params.append(older_than_ms)
        with self._sql() as db:
            return [dict(r) for r in db.execute(sql + " ORDER BY device_id, recording_id, name", params)]

    # -- recordings --

    def add_recording(self, row: dict[str, Any], vouched: Sequence[str] = (), sign: Signer | None = None) -> bool:
        values = [json.dumps(row[c]) if c in _JSON_COLUMNS and row[c] is not None else
                  int(row[c]) if c in _FLAG_COLUMNS else row[c] for c in RECORDING_COLUMNS]
        values += figure_values(row["metrics"])  # the QA figures the calls search filters on
        columns = (*RECORDING_COLUMNS, *FIGURE_COLUMNS.values())
        device, rid = row["device_id"], row["recording_id"]
        with self._sql() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                cursor = db.execute(f"INSERT INTO recordings ({', '.join(columns)}) VALUES "
                                    f"({', '.join('?' * len(columns))}) ON CONFLICT DO NOTHING", values)
                inserted = cursor.rowcount == 1
                db.executemany("UPDATE objects SET vouched = 1 WHERE device_id = ? AND recording_id = ? "
                               "AND name = ? AND vouched = 0", [(device, rid, name) for name in vouched])
                if sign is not None:
                    append_receipt(db, device, rid, sign)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        return inserted

    def recording(self, recording_id: str, device_id: str | None = None) -> dict[str, Any] | None:
        if device_id is not None:
            with self._sql() as db:
                row = db.execute("SELECT * FROM recordings WHERE device_id = ? AND recording_id = ?",
                                 (device_id, recording_id)).fetchone()
            return None if row is None else _recording(row)
        rows = self.recordings_with_id(recording_id)
        if len(rows) > 1:
            devices = ", ".join(r["device_id"] for r in rows)
            raise AmbiguousRecording(f"recording {recording_id} is held for {len(rows)} devices ({devices}); "
                                     "name one with --device DEVICE")
        return rows[0] if rows else None

    def recordings_with_id(self, recording_id: str) -> list[dict[str, Any]]:
        with self._sql() as db:
            rows = db.execute("SELECT * FROM recordings WHERE recording_id = ? ORDER BY device_id",
                              (recording_id,)).fetchall()
        return [_recording(r) for r in rows]

    def device_recordings(self, device_id: str) -> list[dict[str, Any]]:
        with self._sql() as db:
            rows = db.execute("SELECT * FROM recordings WHERE device_id = ? ORDER BY seq, stored_ms",
                              (device_id,)).fetchall()
        return [_recording(r) for r in rows]

    def recordings_at(self, device_id: str, seq: int) -> list[dict[str, Any]]:
        with self._sql() as db:
            rows = db.execute("SELECT * FROM recordings WHERE device_id = ? AND seq = ? ORDER BY stored_ms",
                              (device_id, seq)).fetchall()
        return [_recording(r) for r in rows]

    def recordings(self, *, device_id: str | None = None, since_ms: int | None = None,
                   until_ms: int | None = None, caller: str | None = None, flagged: bool | None = None,
                   min_duration_ms: int | None = None, erased: bool | None = False) -> list[dict[str, Any]]:
        where, params = [], []
        if device_id is not None:
            where.append("device_id = ?")
            params.append(device_id)
        if since_ms is not None:
            where.append("started_ms >= ?")
            params.append(since_ms)
        if until_ms is not None:
            where.append("started_ms < ?")
            params.append(until_ms)
        if flagged is not None:
            where.append("flagged = ?")
            params.append(int(flagged))
        if min_duration_ms is not None:
            where.append("duration_ms >= ?")
            params.append(min_duration_ms)
        if erased is not None:
            where.append("erased_ms IS NOT NULL" if erased else "erased_ms IS NULL")
        sql = "SELECT * FROM recordings"
        with self._sql() as db:
            if caller is not None:  # the calls search's condition (SQLite: its trigram table when it narrows)
                condition, values = caller_condition(caller, trigram=trigram_narrows(db, caller))
                where.append(condition)
                params += values
            if where:
                sql += " WHERE " + " AND ".join(where)
            rows = db.execute(sql + " ORDER BY started_ms NULLS FIRST, device_id, seq", params).fetchall()
        return [_recording(r) for r in rows]

    # -- problems --

    def add_problem(self, device_id: str, recording_id: str | None, seq: int | None, kind: str,
                    detail: str, now_ms: int) -> None:
        with self._sql() as db:
            db.execute("INSERT INTO problems (device_id, recording_id, seq, kind, detail, found_ms) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (device_id, recording_id, seq, kind, detail, now_ms))

    def problems(self, device_id: str) -> list[dict[str, Any]]:
        with self._sql() as db:
            return [dict(r) for r in db.execute(
                "SELECT * FROM problems WHERE device_id = ? ORDER BY found_ms", (device_id,))]

    # -- holds and erasure --

    def set_hold(self, recording_id: str, hold: bool, reason: str | None, *, device_id: str) -> None:
        with self._sql() as db:
            cursor = db.execute("UPDATE recordings SET hold = ?, hold_reason = ? WHERE device_id = ? AND "
                                "recording_id = ?", (int(hold), reason if hold else None, device_id, recording_id))
        if cursor.rowcount != 1:
            raise UnknownRecording(f"recording {recording_id} of device {device_id} is not in the index; "
                                   "`linetap-central list` shows the ids")

    def mark_erased(self, recording_id: str, now_ms: int, reason: str, tombstone_key: str, *, device_id: str) -> None:
        with self._sql() as db:
            db.execute("UPDATE recordings SET caller_number = NULL, caller_name = NULL, metrics = NULL, "
                       f"{''.join(f'{c} = NULL, ' for c in FIGURE_COLUMNS.values())}"
                       "consent = NULL, ended_by = NULL, erased_ms = ?, erase_reason = ?, tombstone_key = ? "
                       "WHERE device_id = ? AND recording_id = ?",
                       (now_ms, reason, tombstone_key, device_id, recording_id))
            db.execute("DELETE FROM peaks WHERE device_id = ? AND recording_id = ?", (device_id, recording_id))
            erase_qa_text(db, device_id, recording_id)
            forget_analysis(db, device_id, recording_id)  # what was said is personal data too


class SqliteIndex(IndexTables):
    """:class:`Index` in one SQLite file. Thread-safe; several processes may share the file."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        try:
            self._db = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            upgrade(self._db, self.path)
        except sqlite3.OperationalError as e:
            self.close()
            raise StoreUnavailable(f"index {self.path} cannot be opened: {e}; check the disk and "
                                   "the file's permissions") from e
        except SyncError:
            self.close()
            raise

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> SqliteIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _sql(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._db is None:
                raise StoreUnavailable(f"index {self.path} is closed")
            try:
                yield self._db
            except (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.ProgrammingError, sqlite3.InterfaceError):
                raise  # about this one row or call: the caller decides
            except sqlite3.DatabaseError as e:
                # Disk full, locked past the busy timeout, I/O error, a damaged file: the index
                # cannot work for anyone, so ingest stops (and leaves the message for later)
                # rather than rejecting every box's upload as if each were at fault.
                raise StoreUnavailable(f"index {self.path}: {e}") from e


def _recording(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    for column in _JSON_COLUMNS:
        if out[column] is not None:
            # Written from a box's manifest: read back with the manifest's own bounds.
            out[column] = untrusted.loads(out[column], what=f"index column {column} of recording "
                                          f"{out['recording_id']}", max_bytes=mf.MAX_BYTES, max_depth=mf.MAX_DEPTH)
    for column in _FLAG_COLUMNS:
        out[column] = bool(out[column])
    return out
