"""The central index: enrolled devices, stored objects, recordings, problems, holds.

:class:`Index` is what the ingest core and the tools use; :class:`SqliteIndex`
is the default (one file, WAL, a busy timeout so several ingest processes on
one data dir take turns). Every statement is plain SQL that PostgreSQL runs
too (``INSERT ... ON CONFLICT DO NOTHING``, ``LOWER(x) LIKE``), so a
PostgreSQL implementation is the same class with another driver and ``%s``
placeholders.

Idempotence lives here: an object row is *claimed* (inserted if absent) before
its bytes are written, so of two different versions of one object racing in
two workers exactly one wins and the other is told ``conflict``; a recording
row is inserted if absent, so a manifest delivered twice is indexed once.

Fleet tables (kept by :class:`linetap.sync.central.fleet.FleetTracker`):
``fleet_devices`` holds each box's newest status order (boot, session,
offline) and when it was last seen, ``fleet_latest`` the newest message of
each subject (status, birth, telemetry, config/reported, alarm/<name>), and
``fleet_seq`` the last config version and command seq the centre used per box.

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

Schema versions. ``PRAGMA user_version`` says which schema a file has; opening
an older file migrates it step by step in one write transaction
(:data:`MIGRATIONS`), so several processes opening it at once migrate it once.

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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from linetap.firmware import untrusted
from linetap.firmware.errors import SyncError
from linetap.sync.central.store import StoreUnavailable

logger = logging.getLogger(__name__)

INDEX_FILE = "index.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    enrolled_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS objects (
    device_id TEXT NOT NULL,
    recording_id TEXT NOT NULL,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    object_key TEXT NOT NULL,
    claimed_ms BIGINT NOT NULL,
    stored_ms BIGINT,
    vouched INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (device_id, recording_id, name)
);
CREATE INDEX IF NOT EXISTS objects_unvouched ON objects (device_id) WHERE vouched = 0;
CREATE TABLE IF NOT EXISTS staged (
    device_id TEXT NOT NULL,
    recording_id TEXT NOT NULL,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    part INTEGER NOT NULL,
    bytes BIGINT NOT NULL,
    staged_ms BIGINT NOT NULL,
    PRIMARY KEY (device_id, recording_id, name, sha256, part)
);
CREATE TABLE IF NOT EXISTS recordings (
    recording_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    started_ms BIGINT,
    ended_ms BIGINT,
    duration_ms BIGINT,
    flagged INTEGER NOT NULL,
    recorded INTEGER NOT NULL,
    discarded INTEGER NOT NULL,
    ended_by TEXT,
    consent TEXT,
    metrics TEXT,
    caller_number TEXT,
    caller_name TEXT,
    caller_withheld TEXT,
    manifest_sha256 TEXT NOT NULL,
    prev TEXT NOT NULL,
    segments INTEGER NOT NULL,
    bytes BIGINT NOT NULL,
    manifest_key TEXT NOT NULL,
    stored_ms BIGINT NOT NULL,
    hold INTEGER NOT NULL DEFAULT 0,
    hold_reason TEXT,
    erased_ms BIGINT,
    erase_reason TEXT,
    tombstone_key TEXT,
    PRIMARY KEY (device_id, recording_id)
);
CREATE INDEX IF NOT EXISTS recordings_id ON recordings (recording_id);
CREATE INDEX IF NOT EXISTS recordings_device_seq ON recordings (device_id, seq);
CREATE INDEX IF NOT EXISTS recordings_started ON recordings (started_ms);
CREATE TABLE IF NOT EXISTS problems (
    device_id TEXT NOT NULL,
    recording_id TEXT,
    seq BIGINT,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL,
    found_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS fleet_devices (
    device_id TEXT PRIMARY KEY,
    boot BIGINT,
    session BIGINT,
    offline INTEGER,
    last_seen_ms BIGINT
);
CREATE TABLE IF NOT EXISTS fleet_latest (
    device_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    received_ms BIGINT NOT NULL,
    PRIMARY KEY (device_id, subject)
);
CREATE TABLE IF NOT EXISTS fleet_seq (
    device_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    last_seq BIGINT NOT NULL,
    PRIMARY KEY (device_id, kind)
);
"""

SCHEMA_VERSION = 1
PENDING_MANIFEST = "pending-manifest"  # the ``staged`` name of a manifest waiting for its segments


def _migrate_0_to_1(db: sqlite3.Connection) -> None:
    """Recordings keyed by (device, recording) instead of recording id alone; vouched objects."""
    old = [r["name"] for r in db.execute("PRAGMA table_info(recordings)")]
    db.execute("ALTER TABLE recordings RENAME TO recordings_v0")
    db.execute("DROP INDEX IF EXISTS recordings_device_seq")
    db.execute("DROP INDEX IF EXISTS recordings_started")
    if "vouched" not in [r["name"] for r in db.execute("PRAGMA table_info(objects)")]:
        db.execute("ALTER TABLE objects ADD COLUMN vouched INTEGER NOT NULL DEFAULT 0")
    _create(db)
    new = [r["name"] for r in db.execute("PRAGMA table_info(recordings)")]
    columns = ", ".join(c for c in old if c in new)
    db.execute(f"INSERT INTO recordings ({columns}) SELECT {columns} FROM recordings_v0")
    db.execute("DROP TABLE recordings_v0")
    db.execute("UPDATE objects SET vouched = 1 WHERE EXISTS (SELECT 1 FROM recordings r WHERE "
               "r.device_id = objects.device_id AND r.recording_id = objects.recording_id)")


# user_version -> the step that brings a file of that version to the next one.
MIGRATIONS = {0: _migrate_0_to_1}


def _create(db: sqlite3.Connection) -> None:
    # Statement by statement: executescript() would commit the caller's transaction.
    for statement in SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)


RECORDING_COLUMNS = ("recording_id", "device_id", "seq", "started_ms", "ended_ms", "duration_ms",
                     "flagged", "recorded", "discarded", "ended_by", "consent", "metrics",
                     "caller_number", "caller_name", "manifest_sha256", "prev", "segments", "bytes",
                     "manifest_key", "stored_ms", "caller_withheld")
_JSON_COLUMNS = ("consent", "metrics")
MAX_JSON_COLUMN = 16 * 1024 * 1024  # a manifest's size bound: a column holds part of one
_FLAG_COLUMNS = ("flagged", "recorded", "discarded", "hold")


@dataclass(frozen=True)
class FleetUpdate:
    """The newest message of one subject from one box, for :meth:`SqliteIndex.record_fleet`."""

    device_id: str
    subject: str  # status, birth, telemetry, config/reported, alarm/<name>
    body: str  # JSON text
    received_ms: int
    seen_ms: int | None  # when the box was last alive by this message; None when unknown
    order: tuple[int, int, int] | None = None  # a status's (boot, session, 1 if offline else 0)


class UnknownRecording(SyncError, LookupError):
    """A recording id that the index does not hold."""


class AmbiguousRecording(SyncError, LookupError):
    """A recording id held for more than one device: the device must be named."""


class Index(Protocol):
    """What the central store knows about devices and recordings."""

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
    def held_bytes(self, device_id: str) -> int:
        """Bytes the device holds here that no indexed manifest vouches for: staged plus unvouched objects."""

    def staged(self, *, older_than_ms: int | None = None) -> list[dict[str, Any]]:
        """Staged objects (one row per device, recording, name, sha256: bytes, parts, last_ms),
        those last touched before ``older_than_ms`` when given."""

    def add_recording(self, row: dict[str, Any], vouched: Sequence[str] = ()) -> bool:
        """Insert a recording unless it is indexed already, and mark the named objects of it vouched;
        True when this call inserted it."""

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


class SqliteIndex:
    """:class:`Index` in one SQLite file. Thread-safe; several processes may share the file."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        try:
            self._db = sqlite3.connect(
                self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._upgrade(self._db)
        except sqlite3.OperationalError as e:
            self.close()
            raise StoreUnavailable(f"index {self.path} cannot be opened: {e}; check the disk and "
                                   "the file's permissions") from e
        except SyncError:
            self.close()
            raise

    def _upgrade(self, db: sqlite3.Connection) -> None:
        """Create the schema, or migrate an older file to :data:`SCHEMA_VERSION`, in one transaction."""
        db.execute("BEGIN IMMEDIATE")  # one process migrates; the others then see the new version
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise SyncError(f"index {self.path} has schema version {version}, newer than this "
                                f"program's {SCHEMA_VERSION}; run the newer linetap-central on it")
            fresh = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'recordings'"
                               ).fetchone() is None
            if fresh:
                _create(db)
            else:
                while version < SCHEMA_VERSION:
                    logger.info("index migrated path=%s from_version=%d", self.path, version)
                    MIGRATIONS[version](db)
                    version += 1
                _create(db)  # tables added since (IF NOT EXISTS)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

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
            except (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.ProgrammingError,
                    sqlite3.InterfaceError):
                raise  # about this one row or call: the caller decides
            except sqlite3.DatabaseError as e:
                # Disk full, locked past the busy timeout, I/O error, a damaged file: the index
                # cannot work for anyone, so ingest stops (and leaves the message for later)
                # rather than rejecting every box's upload as if each were at fault.
                raise StoreUnavailable(f"index {self.path}: {e}") from e

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

    def add_recording(self, row: dict[str, Any], vouched: Sequence[str] = ()) -> bool:
        values = [json.dumps(row[c]) if c in _JSON_COLUMNS and row[c] is not None else
                  int(row[c]) if c in _FLAG_COLUMNS else row[c] for c in RECORDING_COLUMNS]
        device, rid = row["device_id"], row["recording_id"]
        with self._sql() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                cursor = db.execute(f"INSERT INTO recordings ({', '.join(RECORDING_COLUMNS)}) VALUES "
                                    f"({', '.join('?' * len(RECORDING_COLUMNS))}) ON CONFLICT DO NOTHING", values)
                inserted = cursor.rowcount == 1
                db.executemany("UPDATE objects SET vouched = 1 WHERE device_id = ? AND recording_id = ? "
                               "AND name = ? AND vouched = 0", [(device, rid, name) for name in vouched])
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
        if caller is not None:
            pattern = "%" + caller.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where.append("(LOWER(caller_number) LIKE ? ESCAPE '\\' OR LOWER(caller_name) LIKE ? ESCAPE '\\')")
            params += [pattern, pattern]
        if flagged is not None:
            where.append("flagged = ?")
            params.append(int(flagged))
        if min_duration_ms is not None:
            where.append("duration_ms >= ?")
            params.append(min_duration_ms)
        if erased is not None:
            where.append("erased_ms IS NOT NULL" if erased else "erased_ms IS NULL")
        sql = "SELECT * FROM recordings"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._sql() as db:
            rows = db.execute(sql + " ORDER BY started_ms, device_id, seq", params).fetchall()
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

    # -- fleet --

    def record_fleet(self, updates: Sequence[FleetUpdate]) -> list[bool]:
        """Store ``updates`` in one transaction; per update, False for a status older than one kept.

        A status is kept when its order is not below the newest kept for the
        device (offline after online at the same pair: the Will ends that session).
        """
        kept = []
        with self._sql() as db:
            db.execute("BEGIN IMMEDIATE")  # SQLite's write lock up front; PostgreSQL: BEGIN
            try:
                for update in updates:
                    db.execute("INSERT INTO fleet_devices (device_id) VALUES (?) ON CONFLICT DO NOTHING",
                               (update.device_id,))
                    if update.order is not None:
                        boot, session, offline = update.order
                        cursor = db.execute(
                            "UPDATE fleet_devices SET boot = ?, session = ?, offline = ? WHERE device_id = ? "
                            "AND (boot IS NULL OR boot < ? OR (boot = ? AND (session < ? OR "
                            "(session = ? AND offline <= ?))))",
                            (boot, session, offline, update.device_id, boot, boot, session, session, offline))
                        if cursor.rowcount != 1:
                            kept.append(False)
                            continue
                    kept.append(True)
                    db.execute("INSERT INTO fleet_latest (device_id, subject, body, received_ms) VALUES (?, ?, ?, ?) "
                               "ON CONFLICT (device_id, subject) DO UPDATE SET body = excluded.body, "
                               "received_ms = excluded.received_ms",
                               (update.device_id, update.subject, update.body, update.received_ms))
                    if update.seen_ms is not None:
                        db.execute("UPDATE fleet_devices SET last_seen_ms = ? WHERE device_id = ? AND "
                                   "(last_seen_ms IS NULL OR last_seen_ms < ?)",
                                   (update.seen_ms, update.device_id, update.seen_ms))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        return kept

    def fleet_devices(self) -> list[dict[str, Any]]:
        """Every box the fleet tables or the enrolment know, by device id.

        Each: ``device_id``, ``enrolled``, ``boot``, ``session``,
        ``last_seen_ms``, and ``subjects``: subject → ``{"body", "received_ms"}``.
        """
        with self._sql() as db:
            rows = {r["device_id"]: dict(r) | {"enrolled": False, "subjects": {}}
                    for r in db.execute("SELECT device_id, boot, session, last_seen_ms FROM fleet_devices")}
            for r in db.execute("SELECT device_id FROM devices"):
                rows.setdefault(r["device_id"], {"device_id": r["device_id"], "boot": None, "session": None,
                                                 "last_seen_ms": None, "subjects": {}})["enrolled"] = True
            for r in db.execute("SELECT device_id, subject, body, received_ms FROM fleet_latest"):
                rows[r["device_id"]]["subjects"][r["subject"]] = {"body": json.loads(r["body"]),
                                                                  "received_ms": r["received_ms"]}
        return [rows[name] for name in sorted(rows)]

    def fleet_device(self, device_id: str) -> dict[str, Any] | None:
        """One box as in :meth:`fleet_devices`, or None when neither tracked nor enrolled."""
        with self._sql() as db:
            row = db.execute("SELECT device_id, boot, session, last_seen_ms FROM fleet_devices WHERE device_id = ?",
                             (device_id,)).fetchone()
            enrolled = db.execute("SELECT 1 FROM devices WHERE device_id = ?", (device_id,)).fetchone() is not None
            latest = db.execute("SELECT subject, body, received_ms FROM fleet_latest WHERE device_id = ?",
                                (device_id,)).fetchall()
        if row is None and not enrolled:
            return None
        out = dict(row) if row is not None else {"device_id": device_id, "boot": None, "session": None,
                                                 "last_seen_ms": None}
        out["enrolled"] = enrolled
        out["subjects"] = {r["subject"]: {"body": json.loads(r["body"]), "received_ms": r["received_ms"]}
                           for r in latest}
        return out

    def next_fleet_seq(self, device_id: str, kind: str, *, at_least: int = 1) -> int:
        """Take the next ``kind`` ("config", "cmd") sequence number for a box: above every one taken
        before, and at least ``at_least``."""
        with self._sql() as db:
            row = db.execute(
                "INSERT INTO fleet_seq (device_id, kind, last_seq) VALUES (?, ?, ?) "
                "ON CONFLICT (device_id, kind) DO UPDATE SET last_seq = CASE "
                "WHEN fleet_seq.last_seq + 1 > excluded.last_seq THEN fleet_seq.last_seq + 1 "
                "ELSE excluded.last_seq END RETURNING last_seq",
                (device_id, kind, max(1, at_least))).fetchone()
        return int(row["last_seq"])

    # -- holds and erasure --

    def set_hold(self, recording_id: str, hold: bool, reason: str | None, *, device_id: str) -> None:
        with self._sql() as db:
            cursor = db.execute("UPDATE recordings SET hold = ?, hold_reason = ? WHERE device_id = ? AND "
                                "recording_id = ?", (int(hold), reason if hold else None, device_id, recording_id))
        if cursor.rowcount != 1:
            raise UnknownRecording(f"recording {recording_id} of device {device_id} is not in the index; "
                                   "`linetap-central list` shows the ids")

    def mark_erased(self, recording_id: str, now_ms: int, reason: str, tombstone_key: str, *,
                    device_id: str) -> None:
        with self._sql() as db:
            db.execute("UPDATE recordings SET caller_number = NULL, caller_name = NULL, metrics = NULL, "
                       "consent = NULL, ended_by = NULL, erased_ms = ?, erase_reason = ?, tombstone_key = ? "
                       "WHERE device_id = ? AND recording_id = ?",
                       (now_ms, reason, tombstone_key, device_id, recording_id))


def _recording(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    for column in _JSON_COLUMNS:
        if out[column] is not None:
            # Written from a box's manifest: read back with the manifest's own bounds.
            out[column] = untrusted.loads(out[column], what=f"index column {column} of recording "
                                          f"{out['recording_id']}", max_bytes=MAX_JSON_COLUMN, max_depth=16)
    for column in _FLAG_COLUMNS:
        out[column] = bool(out[column])
    return out
