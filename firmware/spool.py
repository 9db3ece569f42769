"""The secure spool: encrypted segments written durably, a catalogue, recovery, retention.

Layout under the data dir::

    spool/
      catalogue.db             SQLite, WAL: recordings and segments
      chain.json               last allocated seq and the chain head (seq, manifest sha256)
      <recording-id>/
        open.json              while the call is open: seq, start, codec (caller sealed)
        000000.age ...         ciphertext segments, standard age files
        manifest.json          signed, once the call is closed
    quarantine/<when>-<what>/  anything recovery found that does not add up
    keys/                      see :mod:`linetap.firmware.keys`

Encryption. Each plaintext segment from the encoder is encrypted in memory
with pyrage to the central recipient; only ciphertext reaches a file. There is
no temporary plaintext file anywhere, so there is nothing to shred.

Durability. Every file is written under a temporary name, fsynced, renamed
and its folder fsynced (:class:`DurableFiles`): a segment is complete or
absent. The catalogue row of a segment is committed after the rename, so a
crash between the two leaves a complete file with no row, which recovery
adopts. Sequence numbers are allocated when a call opens and written to
``chain.json`` before any segment, and never handed out again (the file keeps
them even if the catalogue is lost).

Segment length. The default is 10 s. It bounds what a power cut loses (the
segment in progress, at most 10 s of audio). Shorter segments lose less but
cost more: each segment is two fsyncs plus a catalogue commit (SD-card
journal writes and wear), 335 bytes of age header, and an upload message; at
24 kbit/s a 10 s segment is about 30 KB, so the overhead is about 1 % and a
segment fits one 128 KiB upload message with room for higher bitrates.

No writer thread. The sink is called on the call thread, which is fed from
an unbounded queue by the audio reader thread; the audio callback never waits
on it. An fsync stall (tens of milliseconds on an SD card, rarely more) only
lets that queue grow for a moment. Writing on the call thread keeps the
order of events simple and lets a disk-full error reach the caller of
:meth:`SpoolSink.write` directly, where the app turns it into the call flow's
``Fault``.

Retention. Deleting a recording deletes ciphertext only: without the central
key it is noise, so flash wear-levelling leaving old blocks behind reveals
nothing, and deletion is secure erasure here. Synced recordings go after
``keep_synced_days``, and first when the spool passes ``max_bytes`` or free
space falls below ``min_free_bytes``. Unsynced recordings are deleted only
with ``on_full = "overwrite-oldest"``; by default (``stop-and-alarm``) new
calls are refused with :class:`SpoolFull` and an alarm is raised.

Threads. :class:`Spool` is used by the call thread (:class:`SpoolSink`) and by
the sync side (:meth:`Spool.segments`, :meth:`Spool.mark_synced`,
:meth:`Spool.mark_unsynced`); one lock serialises the catalogue.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import stat
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pyrage
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from linetap.firmware import manifest as mf
from linetap.firmware import untrusted
from linetap.firmware.callflow import CallRecord
from linetap.firmware.clock import Clock
from linetap.firmware.config import segment_s_problem
from linetap.firmware.durable import DurableFiles
from linetap.firmware.errors import SpoolError
from linetap.firmware.keys import load_recipient, load_signing_key
from linetap.firmware.recorder import Recording
from linetap.firmware.schema import FileRefused, read_bounded

logger = logging.getLogger(__name__)

SPOOL_DIR = "spool"
QUARANTINE_DIR = "quarantine"
CATALOGUE = "catalogue.db"
CHAIN_FILE = "chain.json"
OPEN_FILE = "open.json"
MANIFEST_FILE = "manifest.json"
SEGMENT_SUFFIX = ".age"
TMP_SUFFIX = ".tmp"
AGE_MAGIC = b"age-encryption.org/v1\n"
_AGE_CHUNK = 64 * 1024 + 16  # STREAM chunk: 64 KiB of plaintext and its tag
_AGE_NONCE = 16
_AGE_TAG = 16
# Bounds on what the spool reads back from disk: each is far above what the box writes.
CHAIN_MAX_BYTES = 4 * 1024
OPEN_MAX_BYTES = 64 * 1024
MANIFEST_MAX_BYTES = 8 * 1024 * 1024
SEGMENT_MAX_BYTES = 16 * 1024 * 1024  # 120 s at 128 kbit/s is 2 MB
_SQLITE_HEADER = b"SQLite format 3\x00"
_SEGMENT_STEM = re.compile(r"[0-9]{6}")
_RECORDING_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z-]{0,63}")  # a folder name: no '.', no '/'
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
STATES = ("recording", "closed", "synced", "purged", "quarantined")
REBUILT_AT_START = ("the service moves it to quarantine and rebuilds the catalogue from the recordings "
                    "when it starts (restart it: systemctl restart linetap)")
ROW_QUARANTINED_AT_START = ("the service moves the row to quarantine when it starts and adopts the "
                            "recording again from its files (restart it: systemctl restart linetap)")
# What a crash or power cut leaves behind by design; anything else is damage.
BENIGN_FINDINGS = ("temp-removed", "incomplete-open-removed", "closed-after-crash", "adopted",
                   "purge-finished")


class SpoolFull(SpoolError, OSError):
    """No room to keep audio: the disk is full or the spool reached its limits (alarm)."""


class RecordingGone(SpoolError, LookupError):
    """A recording id the caller named is not in the catalogue."""


class CatalogueUnreadable(SpoolError, sqlite3.DatabaseError):
    """The catalogue (or the spool folder holding it) cannot be read; the message says why and what to do."""


# ---------------------------------------------------------------- settings --

@dataclass(frozen=True)
class SpoolSettings:
    """Retention and segmenting; see the module docstring for why these defaults."""

    segment_s: float = 10.0
    keep_synced_days: float = 7.0
    max_bytes: int | None = None  # None: bounded by free space only
    min_free_bytes: int = 256 * 1024 * 1024
    on_full: Literal["stop-and-alarm", "overwrite-oldest"] = "stop-and-alarm"

    def __post_init__(self) -> None:
        if self.on_full not in ("stop-and-alarm", "overwrite-oldest"):
            raise SpoolError(f"spool on_full = {self.on_full!r}; use 'stop-and-alarm' or 'overwrite-oldest'")
        if (problem := segment_s_problem(self.segment_s)) is not None:
            raise SpoolError(f"spool segment_s = {self.segment_s}; {problem}")


@dataclass(frozen=True)
class Codec:
    """What the encoder makes; written into every manifest."""

    rate: int
    bitrate: int = 24000
    segment_s: float = SpoolSettings.segment_s
    name: str = "opus"
    container: str = "ogg"

    def as_dict(self) -> dict[str, Any]:
        return {"codec": self.name, "container": self.container, "rate": self.rate,
                "bitrate": self.bitrate, "channels": ["near", "far"],
                "segment_ms": mf.ms(self.segment_s)}


class Segmenter(Protocol):
    """The encoder interface (``linetap.firmware.encoder.OpusSegmenter``)."""

    def write(self, frames: np.ndarray) -> list[bytes]:
        """Stereo int16 frames in; completed plaintext segments out."""

    def finish(self) -> bytes:
        """The last, partial segment (may be empty)."""


# ----------------------------------------------------------- durable files --

def _disk_free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def boot_id() -> str | None:
    """The kernel's id for this boot: monotonic times are comparable only within one."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def age_shape_problem(data: bytes) -> str | None:
    """Why ``data`` cannot be a whole age file, or None if its structure is plausible.

    Catches zero-length, garbage and most truncations without a key; a cut
    exactly at a chunk boundary passes and is caught by the sha256 in the
    catalogue or, for a file the catalogue never saw, by decryption centrally.
    """
    if not data:
        return "zero-length file"
    if not data.startswith(AGE_MAGIC):
        return f"not an age file (starts with {data[:8]!r})"
    mac = data.find(b"\n--- ")
    end = data.find(b"\n", mac + 1) if mac >= 0 else -1
    if end < 0:
        return "age header is truncated (no MAC line)"
    payload = len(data) - end - 1 - _AGE_NONCE
    if payload < _AGE_TAG:
        return f"age payload is truncated ({max(payload, 0)} bytes after the nonce)"
    last = payload % _AGE_CHUNK
    if 0 < last < _AGE_TAG or (last == _AGE_TAG and payload > _AGE_CHUNK):
        return f"age payload is truncated (last chunk {last} bytes)"
    return None


# ----------------------------------------------------------------- reports --

@dataclass(frozen=True)
class Finding:
    """One thing recovery did or found. ``kind`` names it; ``moved_to`` is in quarantine."""

    kind: str
    path: str
    detail: str
    recording_id: str | None = None
    moved_to: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "detail": self.detail,
                "recording_id": self.recording_id, "moved_to": self.moved_to}


@dataclass
class RecoveryReport:
    findings: list[Finding] = field(default_factory=list)

    def of(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    @property
    def quarantined(self) -> list[Finding]:
        return [f for f in self.findings if f.moved_to is not None]


@dataclass
class OpenRecording:
    """A call being written. Owned by the call thread."""

    recording_id: str
    seq: int
    folder: Path
    opening: dict[str, Any]
    segments: list[dict[str, Any]] = field(default_factory=list)
    discarded: bool = False
    full: bool = False  # a segment write hit a full disk; nothing more is kept


# ---------------------------------------------------------------- catalogue --

_SCHEMA = """
CREATE TABLE IF NOT EXISTS recordings (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    state TEXT NOT NULL,
    started_wall_ms INTEGER, started_mono_ms INTEGER,
    ended_wall_ms INTEGER, ended_mono_ms INTEGER,
    clock_synced INTEGER NOT NULL DEFAULT 0,
    boot_id TEXT,
    segments INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    flagged INTEGER NOT NULL DEFAULT 0,
    recorded INTEGER NOT NULL DEFAULT 0,
    discarded INTEGER NOT NULL DEFAULT 0,
    ended_by TEXT,
    consent TEXT NOT NULL DEFAULT '[]',
    opening TEXT,
    manifest_sha256 TEXT,
    synced_wall_ms INTEGER,
    note TEXT
);
CREATE TABLE IF NOT EXISTS segments (
    recording_id TEXT NOT NULL REFERENCES recordings(id),
    idx INTEGER NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    synced INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (recording_id, idx)
);
"""



_COLUMNS = {
    "recordings": ("id", "seq", "state", "started_wall_ms", "started_mono_ms", "ended_wall_ms",
                   "ended_mono_ms", "clock_synced", "boot_id", "segments", "bytes", "flagged", "recorded",
                   "discarded", "ended_by", "consent", "opening", "manifest_sha256", "synced_wall_ms", "note"),
    "segments": ("recording_id", "idx", "size", "sha256", "synced"),
}


def _schema_problem(db: sqlite3.Connection, *, tables_required: bool) -> str | None:
    """What the catalogue's tables lack, or None. A missing table is made by ``_SCHEMA`` at start."""
    for table, wanted in _COLUMNS.items():
        have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
        if not have and tables_required:
            return f"it has no {table} table"
        if have and (missing := [c for c in wanted if c not in have]):
            return f"its {table} table lacks the columns {', '.join(missing)}"
    return None


def _shown(value: Any) -> str:
    if isinstance(value, bytes):
        return f"a blob of {len(value)} bytes"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _int_problem(key: str, value: Any, lo: int, hi: int, *, null: bool = False) -> str | None:
    if value is None and null:
        return None
    if type(value) is not int or not lo <= value <= hi:
        return f"{key} = {_shown(value)} is not a whole number from {lo} to {hi}"
    return None


def _opening_problem(opening: Any) -> str | None:
    """Why a parsed ``open.json`` (or the row's copy) cannot open a recording, or None."""
    if not isinstance(opening, dict):
        return "it is not a JSON object"
    started = opening.get("started")
    if not isinstance(started, dict):
        return "it has no 'started' object"
    for key in ("wall_ms", "mono_ms"):
        if (p := _int_problem(f"started.{key}", started.get(key), untrusted.MIN_SAFE_INT,
                              untrusted.MAX_SAFE_INT, null=True)) is not None:
            return p
    if not isinstance(started.get("clock_synced"), bool):
        return "started.clock_synced is not true or false"
    if not isinstance(opening.get("device_id"), str) or not isinstance(opening.get("codec"), dict):
        return "it lacks device_id or codec"
    return None


def _row_problem(row: Mapping[str, Any]) -> str | None:
    """Why a ``recordings`` row cannot be trusted (wrong type, out of range, unknown state), or None."""
    rid = row["id"]
    if not isinstance(rid, str) or not _RECORDING_ID.fullmatch(rid):
        return f"id = {_shown(rid)} is not a recording id"
    checks = [_int_problem("seq", row["seq"], 1, untrusted.MAX_SAFE_INT)]
    checks += [_int_problem(k, row[k], 0, untrusted.MAX_SAFE_INT) for k in ("segments", "bytes")]
    checks += [_int_problem(k, row[k], 0, 1) for k in ("clock_synced", "flagged", "recorded", "discarded")]
    checks += [_int_problem(k, row[k], untrusted.MIN_SAFE_INT, untrusted.MAX_SAFE_INT, null=True)
               for k in ("started_wall_ms", "started_mono_ms", "ended_wall_ms", "ended_mono_ms",
                         "synced_wall_ms")]
    if (problem := next((c for c in checks if c is not None), None)) is not None:
        return problem
    if row["state"] not in STATES:
        return f"state = {_shown(row['state'])} is not one of {', '.join(STATES)}"
    for key in ("boot_id", "ended_by", "note"):
        if row[key] is not None and not isinstance(row[key], str):
            return f"{key} = {_shown(row[key])} is not text"
    digest = row["manifest_sha256"]
    if digest is not None and not (isinstance(digest, str) and _SHA256_HEX.fullmatch(digest)):
        return f"manifest_sha256 = {_shown(digest)} is not a SHA-256 in hex"
    try:
        consent = untrusted.loads(row["consent"] if isinstance(row["consent"], str) else b"\xff",
                                  what="consent", max_bytes=MANIFEST_MAX_BYTES)
    except untrusted.Untrusted:
        return f"consent = {_shown(row['consent'])} is not a JSON list of events"
    if not isinstance(consent, list) or not all(isinstance(e, dict) for e in consent):
        return f"consent = {_shown(row['consent'])} is not a JSON list of events"
    if row["state"] == "recording":
        try:
            opening = untrusted.loads(row["opening"] if isinstance(row["opening"], str) else b"\xff",
                                      what="opening", max_bytes=OPEN_MAX_BYTES)
        except untrusted.Untrusted:
            opening = None
        if (problem := _opening_problem(opening)) is not None:
            return f"opening = {_shown(row['opening'])} cannot open the recording: {problem}"
    return None


def _segment_row_problem(row: Mapping[str, Any]) -> str | None:
    if not isinstance(row["recording_id"], str):
        return f"recording_id = {_shown(row['recording_id'])} is not text"
    checks = [_int_problem("idx", row["idx"], 0, 999_999),
              _int_problem("size", row["size"], 0, SEGMENT_MAX_BYTES),
              _int_problem("synced", row["synced"], 0, 1)]
    if (problem := next((c for c in checks if c is not None), None)) is not None:
        return problem
    if not isinstance(row["sha256"], str) or not _SHA256_HEX.fullmatch(row["sha256"]):
        return f"sha256 = {_shown(row['sha256'])} is not a SHA-256 in hex"
    return None


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    # FULL: a committed segment row survives a power cut (NORMAL could roll it back).
    db.execute("PRAGMA synchronous=FULL")
    return db


# -------------------------------------------------------------------- spool --

class Spool:
    """The on-box store of encrypted recordings. Opening it runs recovery.

    ``recovery`` holds what start-up found. Raises
    :class:`~linetap.firmware.keys.KeyMissing` without a recipient or signing
    key: the box must not record what it cannot encrypt and sign.
    """

    def __init__(self, data_dir: Path, *, device_id: str, clock: Clock,
                 settings: SpoolSettings = SpoolSettings(), files: DurableFiles | None = None,
                 disk_free: Callable[[Path], int] = _disk_free,
                 on_alarm: Callable[[str, str], None] | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / SPOOL_DIR
        self.quarantine_dir = self.data_dir / QUARANTINE_DIR
        self.device_id = device_id
        self.settings = settings
        self._clock = clock
        self._files = files or DurableFiles()
        self._disk_free = disk_free
        self._on_alarm = on_alarm
        self._recipient = load_recipient(self.data_dir)
        self._key: Ed25519PrivateKey = load_signing_key(self.data_dir)
        self.public_key: Ed25519PublicKey = self._key.public_key()
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        self.fault: str | None = None  # why new calls are refused, for the Fault event
        self.recovery = RecoveryReport()
        self._make_root()
        self._recover()
        self.enforce_retention()

    # -- life cycle --

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise SpoolError(f"spool {self.root} is closed")
        return self._db

    # -- writing a call --

    def begin(self, call: CallRecord, codec: Codec) -> OpenRecording:
        """Open a recording for ``call``: allocate its seq and persist it before any audio."""
        with self._lock:
            self.enforce_retention()
            if self.fault is not None:
                raise SpoolFull(f"spool {self.root} refuses new calls: {self.fault}; free space or "
                                "let sync catch up (on_full = 'overwrite-oldest' trades old calls for new)")
            head = self._read_head()
            seq = head["allocated"] + 1
            folder = self.root / call.call_id
            opening = {
                "recording_id": call.call_id, "seq": seq, "device_id": self.device_id,
                "started": {"wall_ms": mf.ms(call.started_wall), "mono_ms": mf.ms(call.started_mono),
                            "clock_synced": call.clock_synced, "boot_id": boot_id()},
                "codec": codec.as_dict(), "caller": self._seal(call), "flagged": call.flagged,
                "caller_withheld": call.caller_withheld,
            }
            try:
                folder.mkdir(mode=0o700)
                self._files.sync_dir(self.root)
                self._files.write(folder / OPEN_FILE, mf.canonical(opening))
                head["allocated"] = seq
                self._write_head(head)
            except OSError as e:
                raise self._os_error(e, f"opening recording {call.call_id}") from e
            self.db.execute(
                "INSERT INTO recordings (id, seq, state, started_wall_ms, started_mono_ms, clock_synced,"
                " boot_id, flagged, opening) VALUES (?, ?, 'recording', ?, ?, ?, ?, ?, ?)",
                (call.call_id, seq, opening["started"]["wall_ms"], opening["started"]["mono_ms"],
                 int(call.clock_synced), opening["started"]["boot_id"], int(call.flagged),
                 json.dumps(opening)))
            logger.info("recording opened recording=%s seq=%d", call.call_id, seq)
            return OpenRecording(call.call_id, seq, folder, opening)

    def add_segment(self, rec: OpenRecording, plaintext: bytes) -> dict[str, Any]:
        """Encrypt one plaintext segment in memory and store it durably; returns its entry.

        Raises :class:`SpoolFull` when the disk is full: the partial file is
        gone, the segments already stored stay valid, and the recording is
        marked so that nothing more of it is written.
        """
        index = len(rec.segments)
        ciphertext = pyrage.encrypt(plaintext, [self._recipient])
        path = rec.folder / f"{index:06d}{SEGMENT_SUFFIX}"
        try:
            self._files.write(path, ciphertext)
        except OSError as e:
            if _is_full(e):
                rec.full = True
            raise self._os_error(e, f"writing segment {index} of recording {rec.recording_id}") from e
        entry = {"index": index, "bytes": len(ciphertext), "sha256": hashlib.sha256(ciphertext).hexdigest()}
        rec.segments.append(entry)
        with self._lock:
            self.db.execute("INSERT INTO segments (recording_id, idx, size, sha256) VALUES (?, ?, ?, ?)",
                            (rec.recording_id, index, entry["bytes"], entry["sha256"]))
            self.db.execute("UPDATE recordings SET segments = segments + 1, bytes = bytes + ? WHERE id = ?",
                            (entry["bytes"], rec.recording_id))
        return entry

    def discard(self, rec: OpenRecording) -> None:
        """Destroy the segments written so far (opt-out); the recording stays open and empty."""
        with self._lock:
            for entry in rec.segments:
                (rec.folder / f"{entry['index']:06d}{SEGMENT_SUFFIX}").unlink(missing_ok=True)
            self._files.sync_dir(rec.folder)
            self.db.execute("DELETE FROM segments WHERE recording_id = ?", (rec.recording_id,))
            self.db.execute("UPDATE recordings SET segments = 0, bytes = 0, discarded = 1 WHERE id = ?",
                            (rec.recording_id,))
            logger.info("recording discarded recording=%s segments=%d", rec.recording_id, len(rec.segments))
            rec.segments = []
            rec.discarded = True

    def finish(self, rec: OpenRecording, recording: Recording) -> str:
        """Sign and write the manifest, advance the chain, mark the row closed; returns its hash."""
        call = recording.call
        ended_wall = None if call.ended_mono is None else \
            call.started_wall + (call.ended_mono - call.started_mono)
        extra = {
            "ended": {"wall_ms": mf.ms(ended_wall), "mono_ms": mf.ms(call.ended_mono), "estimated": False},
            "ended_by": call.ended_by,
            "flagged": call.flagged,
            "recorded": call.recorded and not rec.discarded and bool(rec.segments),
            "events": [{"t_ms": mf.ms(e.t), "kind": e.kind, "detail": mf.plain(e.detail)}
                       for e in call.events],
            "pauses": _pauses(call),
            "masks": [[mf.ms(a), mf.ms(b)] for a, b in recording.masks],
            "metrics": mf.plain(recording.metrics),
            "audio": {"frames": recording.frames, "start_ms": mf.ms(recording.audio_start_s),
                      "stopped_by_full_disk": rec.full},
            "caller": self._seal(call) or rec.opening.get("caller"),
            # Plain: a reason such as "private" identifies nobody, and the centre indexes it.
            "caller_withheld": call.caller_withheld or rec.opening.get("caller_withheld"),
        }
        with self._lock:
            return self._close(rec.recording_id, rec.seq, rec.opening, rec.segments, rec.discarded, extra)

    # -- sync hooks --

    def segments(self, recording_id: str) -> list[dict[str, Any]]:
        """A recording's segments as the catalogue lists them, by index: index, size, sha256, synced."""
        with self._lock:
            self._recording_state(recording_id)
            rows = self.db.execute("SELECT idx, size, sha256, synced FROM segments WHERE recording_id = ? "
                                   "ORDER BY idx", (recording_id,)).fetchall()
        return [{"index": r["idx"], "size": r["size"], "sha256": r["sha256"], "synced": bool(r["synced"])}
                for r in rows]

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

    def unsynced(self) -> list[dict[str, Any]]:
        """Closed recordings the central store does not have yet, oldest first."""
        with self._lock:
            rows = self.db.execute("SELECT * FROM recordings WHERE state = 'closed' ORDER BY seq").fetchall()
        return [_row_dict(r) for r in rows]

    # -- retention --

    def enforce_retention(self) -> list[str]:
        """Delete what policy allows; set or clear :attr:`fault`. Returns the purged ids."""
        purged: list[str] = []
        with self._lock:
            cutoff = mf.ms(self._clock.wall() - self.settings.keep_synced_days * 86400)
            for row in self.db.execute("SELECT id FROM recordings WHERE state = 'synced' AND "
                                       "synced_wall_ms < ? ORDER BY seq", (cutoff,)).fetchall():
                self._purge(row["id"], "kept-synced-days")
                purged.append(row["id"])
            while (why := self._over_limit()) is not None:
                victim = self.db.execute("SELECT id FROM recordings WHERE state = 'synced' "
                                         "ORDER BY seq LIMIT 1").fetchone()
                if victim is None and self.settings.on_full == "overwrite-oldest":
                    victim = self.db.execute("SELECT id FROM recordings WHERE state = 'closed' "
                                             "ORDER BY seq LIMIT 1").fetchone()
                    if victim is not None:
                        logger.warning("retention overwrites unsynced recording=%s reason=%s",
                                       victim["id"], why)
                if victim is None:
                    self._set_fault(f"spool-full ({why})")
                    return purged
                self._purge(victim["id"], why)
                purged.append(victim["id"])
            self._set_fault(None)
        return purged

    def purge_synced(self) -> list[str]:
        """Delete every synced recording now, whatever its age (an operator's request); returns the ids."""
        with self._lock:
            rows = self.db.execute("SELECT id FROM recordings WHERE state = 'synced' ORDER BY seq").fetchall()
            for row in rows:
                self._purge(row["id"], "purge-synced")
            purged = [row["id"] for row in rows]
            purged += self.enforce_retention()  # recomputes the fault: freed space may clear spool-full
        return purged

    def status(self) -> dict[str, Any]:
        """Figures for telemetry and the birth message."""
        with self._lock:
            rows = self.db.execute("SELECT state, COUNT(*) AS n, SUM(bytes) AS b FROM recordings "
                                   "GROUP BY state").fetchall()
        return {"by_state": {r["state"]: {"recordings": r["n"], "bytes": r["b"] or 0} for r in rows},
                "used_bytes": self._used_bytes(), "free_bytes": self._disk_free(self.root),
                "fault": self.fault}

    # -- internals --

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

    def _seal(self, call: CallRecord) -> str | None:
        if call.caller is None:
            return None
        return mf.seal_caller(call.caller.number, call.caller.name, self._recipient)

    def _os_error(self, e: OSError, doing: str) -> SpoolError:
        if _is_full(e):
            self._set_fault(f"disk-full while {doing}")
            return SpoolFull(f"disk full while {doing} under {self.root}: what was stored so far "
                             "stays valid; free space or let sync and retention catch up")
        return SpoolError(f"{doing} under {self.root} failed: {e}")

    def _set_fault(self, reason: str | None) -> None:
        if reason == self.fault:
            return
        self.fault = reason
        if reason is None:
            logger.info("spool fault cleared")
            return
        logger.warning("spool alarm reason=%s", reason)
        if self._on_alarm is not None:
            self._on_alarm("spool-full", reason)

    def _used_bytes(self) -> int:
        row = self.db.execute("SELECT SUM(bytes) AS b FROM recordings WHERE state IN "
                              "('recording', 'closed', 'synced')").fetchone()
        return row["b"] or 0

    def _over_limit(self) -> str | None:
        limit = self.settings.max_bytes
        if limit is not None and (used := self._used_bytes()) > limit:
            return f"used {used} bytes > max_bytes {limit}"
        free = self._disk_free(self.root)
        if free < self.settings.min_free_bytes:
            return f"free {free} bytes < min_free_bytes {self.settings.min_free_bytes}"
        return None

    def _purge(self, recording_id: str, why: str) -> None:
        # The row says purged before files go: a crash in between leaves files recovery finishes deleting.
        self.db.execute("UPDATE recordings SET state = 'purged', note = ? WHERE id = ?", (why, recording_id))
        folder = self.root / recording_id
        if folder.exists():
            shutil.rmtree(folder)
            self._files.sync_dir(self.root)
        logger.info("recording purged recording=%s reason=%s", recording_id, why)

    def _read_head(self) -> dict[str, Any]:
        """``chain.json``; raises ValueError (``Untrusted``, ``FileRefused``) when it makes no sense."""
        path = self.root / CHAIN_FILE
        try:
            head = untrusted.loads(read_bounded(path, max_bytes=CHAIN_MAX_BYTES), what=str(path),
                                   max_bytes=CHAIN_MAX_BYTES, max_depth=2)
        except FileNotFoundError:
            return {"allocated": 0, "last": {"seq": 0, "sha256": mf.GENESIS}}
        last = head.get("last") if isinstance(head, dict) else None
        if not (isinstance(head, dict) and type(head.get("allocated")) is int and head["allocated"] >= 0
                and isinstance(last, dict) and type(last.get("seq")) is int and last["seq"] >= 0
                and isinstance(last.get("sha256"), str) and _SHA256_HEX.fullmatch(last["sha256"])):
            raise untrusted.Untrusted(f"{path} is not {{allocated, last: {{seq, sha256}}}}")
        return head

    def _write_head(self, head: dict[str, Any]) -> None:
        self._files.write(self.root / CHAIN_FILE, mf.canonical(head))

    def _close(self, recording_id: str, seq: int, opening: dict[str, Any],
               segments: list[dict[str, Any]], discarded: bool, extra: dict[str, Any]) -> str:
        head = self._read_head()
        body = {
            "format": mf.FORMAT, "recording_id": recording_id, "device_id": opening["device_id"],
            "seq": seq, "prev": head["last"]["sha256"], "started": opening["started"],
            "codec": opening["codec"], "segments": segments, "discarded": discarded,
            "clock_at_close": {"wall_ms": mf.ms(self._clock.wall()), "synced": self._clock.synced(),
                               "boot_id": boot_id()},
            **extra,
        }
        data = mf.sign(body, self._key)
        digest = mf.manifest_hash(data)
        folder = self.root / recording_id
        try:
            self._files.write(folder / MANIFEST_FILE, data)
            head["last"] = {"seq": seq, "sha256": digest}
            head["allocated"] = max(head["allocated"], seq)
            self._write_head(head)
        except OSError as e:
            raise self._os_error(e, f"writing the manifest of recording {recording_id}") from e
        consent = [e for e in body["events"] if e["kind"] in mf.CONSENT_KINDS]
        self.db.execute(
            "UPDATE recordings SET state = 'closed', ended_wall_ms = ?, ended_mono_ms = ?, segments = ?,"
            " bytes = ?, flagged = ?, recorded = ?, discarded = ?, ended_by = ?, consent = ?,"
            " manifest_sha256 = ? WHERE id = ?",
            (body["ended"]["wall_ms"], body["ended"]["mono_ms"], len(segments),
             sum(s["bytes"] for s in segments), int(body["flagged"]), int(body["recorded"]),
             int(discarded), body["ended_by"], json.dumps(consent), digest, recording_id))
        (folder / OPEN_FILE).unlink(missing_ok=True)
        logger.info("recording closed recording=%s seq=%d segments=%d ended_by=%s",
                    recording_id, seq, len(segments), body["ended_by"])
        return digest

    # -- recovery --

    def _recover(self) -> None:
        for tmp in sorted(self.root.rglob(f".*{TMP_SUFFIX}")):
            tmp.unlink()
            self._found("temp-removed", tmp, "incomplete temporary file from an interrupted write")
        self._db = self._open_catalogue()
        self._quarantine_bad_rows()
        rows = {r["id"]: r for r in self.db.execute("SELECT * FROM recordings").fetchall()}
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and p.name not in rows):
            self._adopt(folder)
        self._reconcile_head()
        rows = self.db.execute("SELECT * FROM recordings ORDER BY seq").fetchall()
        for row in rows:
            if row["state"] in ("closed", "synced"):
                self._check_closed(row)
            elif row["state"] == "purged" and (self.root / row["id"]).exists():
                shutil.rmtree(self.root / row["id"])
                self._found("purge-finished", self.root / row["id"], "finished an interrupted purge",
                            row["id"])
        for row in rows:
            if row["state"] == "recording":
                self._close_after_crash(row)
        for stray in sorted(p for p in self.root.iterdir()
                            if p.is_file() and p.name != CHAIN_FILE and not p.name.startswith(CATALOGUE)):
            self._quarantine(stray, "stray-file", "file that is not part of the spool layout")
        self._files.sync_dir(self.root)

    def _found(self, kind: str, path: Path, detail: str, recording_id: str | None = None,
               moved_to: Path | None = None) -> None:
        finding = Finding(kind, str(path), detail, recording_id, None if moved_to is None else str(moved_to))
        self.recovery.findings.append(finding)
        log = logger.info if kind in BENIGN_FINDINGS else logger.warning
        log("spool recovery kind=%s path=%s recording=%s detail=%s moved_to=%s", kind, path,
            recording_id, detail, finding.moved_to)

    def _quarantine(self, path: Path, kind: str, detail: str, recording_id: str | None = None) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self._clock.wall()))
        target_dir = self.quarantine_dir / f"{stamp}-{kind}"
        target_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        rel = path.relative_to(self.root) if path.is_relative_to(self.root) else Path(path.name)
        target = target_dir / str(rel).replace(os.sep, "__")
        n = 1
        while target.exists():
            target = target_dir / f"{rel.name}.{n}"
            n += 1
        os.rename(path, target)
        self._files.sync_dir(target_dir)
        self._files.sync_dir(path.parent)
        self._found(kind, path, detail, recording_id, target)
        return target

    def _make_root(self) -> None:
        """The spool folder; anything else in its place is moved to quarantine, so calls are kept again."""
        if self.root.exists() and not self.root.is_dir():
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self._clock.wall()))
            target_dir = self.quarantine_dir / f"{stamp}-spool-not-a-folder"
            target_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.rename(self.root, target_dir / SPOOL_DIR)
            self._files.sync_dir(self.data_dir)
            self._found("spool-not-a-folder", self.root, "the spool was not a folder; a new spool was made",
                        moved_to=target_dir / SPOOL_DIR)
        self.root.mkdir(parents=True, exist_ok=True)

    def _open_catalogue(self) -> sqlite3.Connection:
        path = self.root / CATALOGUE
        db: sqlite3.Connection | None = None
        try:
            if path.exists() and not path.is_file():
                raise sqlite3.DatabaseError("it is not a file")
            db = _connect(path)
            check = db.execute("PRAGMA integrity_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"integrity_check: {check}")
            if (problem := _schema_problem(db, tables_required=False)) is not None:
                raise sqlite3.DatabaseError(f"not a linetap catalogue: {problem}")
            db.executescript(_SCHEMA)
            return db
        except sqlite3.DatabaseError as e:
            if db is not None:
                db.close()
            for part in sorted(self.root.glob(CATALOGUE + "*")):
                self._quarantine(part, "corrupt-catalogue",
                                 f"catalogue database unreadable ({e}); rebuilt from the recordings on disk")
        db = _connect(path)
        db.executescript(_SCHEMA)
        return db

    def _quarantine_bad_rows(self) -> None:
        """Rows whose values make no sense are copied to quarantine and dropped; the files are adopted again."""
        for row in self.db.execute("SELECT rowid AS rowid_, * FROM recordings").fetchall():
            values = {key: row[key] for key in _COLUMNS["recordings"]}
            if (problem := _row_problem(values)) is None:
                continue
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self._clock.wall()))
            note = self.quarantine_dir / f"{stamp}-bad-catalogue-row-{row['rowid_']}.json"
            note.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._files.write(note, json.dumps(values, default=_shown, sort_keys=True).encode())
            self.db.execute("DELETE FROM recordings WHERE rowid = ?", (row["rowid_"],))
            self.db.execute("DELETE FROM segments WHERE recording_id = ?", (values["id"],))
            rid = values["id"] if isinstance(values["id"], str) else None
            self._found("bad-catalogue-row", self.root / CATALOGUE, f"catalogue row makes no sense: {problem}; "
                        "its recording is adopted again from its files", rid, note)
        for row in self.db.execute("SELECT rowid AS rowid_, * FROM segments").fetchall():
            values = {key: row[key] for key in _COLUMNS["segments"]}
            if (problem := _segment_row_problem(values)) is not None:
                self.db.execute("DELETE FROM segments WHERE rowid = ?", (row["rowid_"],))
                self._found("bad-catalogue-row", self.root / CATALOGUE,
                            f"segment row makes no sense ({problem}); dropped, the recording's files decide")

    def _adopt(self, folder: Path) -> None:
        """A recording folder with no catalogue row (catalogue lost, or a crash at open)."""
        if not any(folder.iterdir()):
            # A crash between creating the folder and writing open.json: no seq was allocated yet.
            folder.rmdir()
            self._found("incomplete-open-removed", folder, "empty recording folder of a call that "
                        "never got its seq", folder.name)
            return
        taken = {r[0] for r in self.db.execute("SELECT seq FROM recordings")}
        manifest_path, opening_path = folder / MANIFEST_FILE, folder / OPEN_FILE
        try:
            if manifest_path.exists():
                data = read_bounded(manifest_path, max_bytes=MANIFEST_MAX_BYTES)
                m = mf.verify(data, self.public_key)
                if m["recording_id"] != folder.name or m["seq"] in taken:
                    raise mf.ManifestError(f"manifest names {m['recording_id']} seq={m['seq']}, "
                                           "which does not fit this folder or reuses a seq")
                opening = {"recording_id": m["recording_id"], "seq": m["seq"], "device_id": m["device_id"],
                           "started": m["started"], "codec": m["codec"], "caller": m.get("caller"),
                           "caller_withheld": m.get("caller_withheld"),
                           "flagged": m.get("flagged", False)}
                self._insert_row(opening, "closed")
                self._restore_from_manifest(folder.name, m, data)
                for s in m["segments"]:
                    self.db.execute("INSERT INTO segments (recording_id, idx, size, sha256) "
                                    "VALUES (?, ?, ?, ?)", (folder.name, s["index"], s["bytes"], s["sha256"]))
            elif opening_path.exists():
                opening = untrusted.loads(read_bounded(opening_path, max_bytes=OPEN_MAX_BYTES),
                                          what=str(opening_path), max_bytes=OPEN_MAX_BYTES)
                if (problem := _opening_problem(opening)) is not None:
                    raise mf.ManifestError(f"open.json cannot open a recording: {problem}")
                if opening.get("recording_id") != folder.name or type(opening.get("seq")) is not int \
                        or not 1 <= opening["seq"] <= untrusted.MAX_SAFE_INT or opening["seq"] in taken:
                    raise mf.ManifestError(f"open.json names {_shown(opening.get('recording_id'))} "
                                           f"seq={_shown(opening.get('seq'))}, which does not fit or reuses a seq")
                self._insert_row(opening, "recording")
            else:
                raise mf.ManifestError("folder has neither manifest.json nor open.json")
        except (mf.ManifestError, mf.BadSignature, ValueError, OSError, KeyError, TypeError) as e:
            self._quarantine(folder, "orphan-recording", f"recording folder with no catalogue row "
                             f"that cannot be adopted: {e}", folder.name)
            return
        self._found("adopted", folder, "recording folder with no catalogue row, adopted", folder.name)

    def _restore_from_manifest(self, recording_id: str, m: dict[str, Any], data: bytes) -> None:
        """Fill a rebuilt row from the signed manifest: what ``spool list`` showed before the catalogue was lost."""
        ended = m.get("ended") if isinstance(m.get("ended"), dict) else {}
        events = m.get("events") if isinstance(m.get("events"), list) else []
        consent = [e for e in events if isinstance(e, dict) and e.get("kind") in mf.CONSENT_KINDS]

        def whole(value: Any) -> int | None:
            return value if type(value) is int else None

        self.db.execute(
            "UPDATE recordings SET manifest_sha256 = ?, ended_by = ?, segments = ?, bytes = ?, ended_wall_ms = ?,"
            " ended_mono_ms = ?, flagged = ?, recorded = ?, discarded = ?, consent = ? WHERE id = ?",
            (mf.manifest_hash(data), m.get("ended_by") if isinstance(m.get("ended_by"), str) else None,
             len(m["segments"]), sum(s["bytes"] for s in m["segments"]), whole(ended.get("wall_ms")),
             whole(ended.get("mono_ms")), int(m.get("flagged") is True), int(m.get("recorded") is True),
             int(m.get("discarded") is True), json.dumps(consent), recording_id))

    def _insert_row(self, opening: dict[str, Any], state: str) -> None:
        started = opening["started"]
        self.db.execute(
            "INSERT INTO recordings (id, seq, state, started_wall_ms, started_mono_ms, clock_synced,"
            " boot_id, flagged, opening) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (opening["recording_id"], opening["seq"], state, started["wall_ms"], started["mono_ms"],
             int(started["clock_synced"]), started.get("boot_id"), int(bool(opening.get("flagged"))),
             json.dumps(opening)))

    def _reconcile_head(self) -> None:
        """``chain.json`` wins for allocation (it survives a lost catalogue); rows can only raise it."""
        path = self.root / CHAIN_FILE
        try:
            head = self._read_head()
        except (ValueError, OSError) as e:
            self._quarantine(path, "corrupt-chain-head", f"chain.json unreadable ({e}); rebuilt from the catalogue")
            head = self._read_head()
        top = self.db.execute("SELECT MAX(seq) FROM recordings").fetchone()[0] or 0
        last = self.db.execute("SELECT seq, manifest_sha256 FROM recordings WHERE manifest_sha256 "
                               "IS NOT NULL ORDER BY seq DESC LIMIT 1").fetchone()
        changed = False
        if top > head["allocated"]:
            head["allocated"], changed = top, True
        if last is not None and last["seq"] > head["last"]["seq"]:
            head["last"], changed = {"seq": last["seq"], "sha256": last["manifest_sha256"]}, True
        if changed or not path.exists():
            self._write_head(head)

    def _check_closed(self, row: sqlite3.Row) -> None:
        rid = row["id"]
        folder = self.root / rid
        if not folder.is_dir() or not (folder / MANIFEST_FILE).exists():
            self._quarantine_row(row, "missing-files", f"catalogue row seq={row['seq']} state={row['state']}"
                                 f" but {folder if not folder.is_dir() else folder / MANIFEST_FILE} is gone")
            if folder.is_dir():
                self._quarantine(folder, "missing-files", "remains of a recording without its manifest", rid)
            return
        problems: list[str] = []
        try:
            try:
                data = read_bounded(folder / MANIFEST_FILE, max_bytes=MANIFEST_MAX_BYTES)
            except (FileRefused, OSError) as e:
                raise mf.ManifestError(f"{MANIFEST_FILE} {e}") from None
            m = mf.verify(data, self.public_key)
            if m["recording_id"] != rid or m["seq"] != row["seq"]:
                problems.append(f"manifest names {m['recording_id']} seq={m['seq']}, catalogue says "
                                f"{rid} seq={row['seq']}")
        except (mf.ManifestError, mf.BadSignature) as e:
            self._set_state(rid, "quarantined", f"bad manifest: {e}")
            self._quarantine(folder, "bad-manifest", f"manifest of seq={row['seq']}: {e}", rid)
            return
        expected = set()
        for s in m["segments"]:
            name = f"{s['index']:06d}{SEGMENT_SUFFIX}"
            expected.add(name)
            problem = _segment_problem(folder / name, s["bytes"], s["sha256"])
            if problem:
                problems.append(f"{name}: {problem}")
        if problems:
            self._set_state(rid, "quarantined", "; ".join(problems))
            self._quarantine(folder, "bad-segment", f"seq={row['seq']}: " + "; ".join(problems), rid)
            return
        for extra in sorted(folder.iterdir()):
            if extra.name == OPEN_FILE:
                extra.unlink()  # a crash between the manifest and its removal; the manifest supersedes it
            elif extra.name not in expected and extra.name != MANIFEST_FILE:
                self._quarantine(extra, "orphan-file", "file not listed in the recording's manifest", rid)

    def _close_after_crash(self, row: sqlite3.Row) -> None:
        rid = row["id"]
        folder = self.root / rid
        folder.mkdir(mode=0o700, exist_ok=True)
        # Checked by _quarantine_bad_rows: a recording row's opening parses and can open a recording.
        opening = untrusted.loads(row["opening"], what=f"catalogue opening of {rid}", max_bytes=OPEN_MAX_BYTES)
        manifest_path = folder / MANIFEST_FILE
        if manifest_path.exists():
            try:
                data = read_bounded(manifest_path, max_bytes=MANIFEST_MAX_BYTES)
                m = mf.verify(data, self.public_key)
                if m["recording_id"] != rid or m["seq"] != row["seq"]:
                    raise mf.ManifestError(f"manifest names {m['recording_id']} seq={m['seq']}")
            except (mf.ManifestError, mf.BadSignature, FileRefused, OSError) as e:
                self._quarantine(manifest_path, "bad-manifest", f"manifest of an open recording: {e}", rid)
            else:
                self._adopt_written_manifest(row, m, data)
                return
        known = {r["idx"]: r for r in self.db.execute(
            "SELECT idx, size, sha256 FROM segments WHERE recording_id = ?", (rid,)).fetchall()}
        segments: list[dict[str, Any]] = []
        last_mtime: float | None = None
        for path in sorted(folder.iterdir()):
            if path.name in (OPEN_FILE, MANIFEST_FILE):
                continue
            index = _segment_index(path.name)
            if index is None:
                self._quarantine(path, "orphan-file", "file that is not a segment in a recording folder", rid)
                continue
            try:
                data = read_bounded(path, max_bytes=SEGMENT_MAX_BYTES)
            except (FileRefused, OSError) as e:
                data, problem = b"", f"cannot be read: {e}"
            else:
                if index in known:
                    problem = _segment_problem(path, known[index]["size"], known[index]["sha256"], data)
                else:
                    problem = age_shape_problem(data)
            if problem:
                self.db.execute("DELETE FROM segments WHERE recording_id = ? AND idx = ?", (rid, index))
                self._quarantine(path, "bad-segment", f"segment {index} of seq={row['seq']}: {problem}", rid)
                continue
            if index not in known:
                self.db.execute("INSERT INTO segments (recording_id, idx, size, sha256) VALUES (?, ?, ?, ?)",
                                (rid, index, len(data), hashlib.sha256(data).hexdigest()))
            segments.append({"index": index, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
            last_mtime = path.stat().st_mtime
        present = {s["index"] for s in segments}
        for index in sorted(set(known) - present):
            if not (folder / f"{index:06d}{SEGMENT_SUFFIX}").exists():
                self.db.execute("DELETE FROM segments WHERE recording_id = ? AND idx = ?", (rid, index))
                self._quarantine_row_note(rid, index, known[index])
        ended_wall = last_mtime if last_mtime is not None else opening["started"]["wall_ms"] / 1000
        extra = {
            "ended": {"wall_ms": mf.ms(ended_wall), "mono_ms": None, "estimated": True},
            "ended_by": "power-loss", "flagged": bool(opening.get("flagged")),
            "recorded": bool(segments), "events": [], "pauses": [], "masks": [], "metrics": {},
            "audio": {"frames": None, "start_ms": None, "stopped_by_full_disk": False},
            "caller": opening.get("caller"),
            "caller_withheld": opening.get("caller_withheld"),
        }
        digest = self._close(rid, row["seq"], opening, segments, bool(row["discarded"]), extra)
        self._found("closed-after-crash", folder, f"seq={row['seq']} closed from {len(segments)} complete "
                    f"segments with ended_by=power-loss (manifest {digest[:16]}...)", rid)

    def _adopt_written_manifest(self, row: sqlite3.Row, m: dict[str, Any], data: bytes) -> None:
        rid = row["id"]
        head = self._read_head()
        if m["seq"] > head["last"]["seq"]:
            head["last"] = {"seq": m["seq"], "sha256": mf.manifest_hash(data)}
            self._write_head(head)
        self.db.execute("DELETE FROM segments WHERE recording_id = ?", (rid,))
        for s in m["segments"]:
            self.db.execute("INSERT INTO segments (recording_id, idx, size, sha256) VALUES (?, ?, ?, ?)",
                            (rid, s["index"], s["bytes"], s["sha256"]))
        self.db.execute("UPDATE recordings SET state = 'closed', segments = ?, bytes = ?, ended_by = ?, "
                        "manifest_sha256 = ? WHERE id = ?",
                        (len(m["segments"]), sum(s["bytes"] for s in m["segments"]), m.get("ended_by"),
                         mf.manifest_hash(data), rid))
        (self.root / rid / OPEN_FILE).unlink(missing_ok=True)
        self._found("adopted", self.root / rid, "open recording whose manifest was already written", rid)
        self._check_closed(self.db.execute("SELECT * FROM recordings WHERE id = ?", (rid,)).fetchone())

    def _set_state(self, recording_id: str, state: str, note: str) -> None:
        self.db.execute("UPDATE recordings SET state = ?, note = ? WHERE id = ?", (state, note, recording_id))

    def _quarantine_row(self, row: sqlite3.Row, kind: str, detail: str) -> None:
        """A row cannot be moved like a file: its content is copied to quarantine, the row kept as quarantined."""
        self._set_state(row["id"], "quarantined", detail)
        note = self.quarantine_dir / f"{row['id']}.row.json"
        note.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._files.write(note, json.dumps(_row_dict(row), sort_keys=True).encode())
        self._found(kind, self.root / row["id"], detail, row["id"], note)

    def _quarantine_row_note(self, recording_id: str, index: int, segment: sqlite3.Row) -> None:
        note = self.quarantine_dir / f"{recording_id}.{index:06d}.row.json"
        note.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._files.write(note, json.dumps({"recording_id": recording_id, "idx": index,
                                            "size": segment["size"], "sha256": segment["sha256"]}).encode())
        self._found("missing-files", self.root / recording_id / f"{index:06d}{SEGMENT_SUFFIX}",
                    "catalogue lists this segment but the file is gone", recording_id, note)


# --------------------------------------------------------------------- sink --

class SpoolSink:
    """The recorder's :class:`~linetap.firmware.recorder.Sink` that keeps calls in the spool.

    Called on the call thread only. ``write`` raises :class:`SpoolFull` once
    when the disk fills mid-call (the app turns it into the call flow's
    ``Fault``); the call's stored part stays valid and later frames of that
    call are dropped. ``open`` raises :class:`SpoolFull` when retention
    refuses new calls (``spool.fault`` says why).
    """

    def __init__(self, spool: Spool, codec: Codec,
                 encoder_factory: Callable[[Codec], Segmenter] | None = None) -> None:
        self._spool = spool
        self.codec = codec
        self._factory = encoder_factory or _opus_segmenter
        self._encoder: Segmenter | None = None
        self._rec: OpenRecording | None = None
        self.last_manifest_sha256: str | None = None

    @property
    def recording(self) -> OpenRecording | None:
        return self._rec

    @property
    def spool(self) -> Spool:
        return self._spool

    def open(self, call: CallRecord) -> None:
        self._rec = None
        self._rec = self._spool.begin(call, self.codec)
        self._encoder = self._factory(self.codec)

    def write(self, frames: np.ndarray) -> None:
        if self._rec is None or self._rec.full or self._encoder is None:
            return
        for segment in self._encoder.write(frames):
            self._spool.add_segment(self._rec, segment)

    def discard(self) -> None:
        if self._rec is None:
            return
        self._spool.discard(self._rec)
        self._encoder = self._factory(self.codec)  # what follows starts a fresh stream

    def close(self, recording: Recording) -> None:
        rec, self._rec = self._rec, None
        if rec is None:
            return
        encoder, self._encoder = self._encoder, None
        try:
            if encoder is not None and not rec.full and not rec.discarded:
                tail = encoder.finish()
                if tail:
                    self._spool.add_segment(rec, tail)
        except SpoolFull:
            logger.warning("last segment lost to a full disk recording=%s", rec.recording_id)
        self.last_manifest_sha256 = self._spool.finish(rec, recording)


def _opus_segmenter(codec: Codec) -> Segmenter:
    from linetap.firmware.encoder import OpusSegmenter

    return OpusSegmenter(codec.rate, bitrate=codec.bitrate, segment_s=codec.segment_s)


# ---------------------------------------------------------------- queries --

@dataclass
class CatalogueView:
    """What ``spool list`` and ``spool verify`` read, without writing anything.

    ``rows`` are the rows that make sense, oldest first; ``problems`` say what
    did not (``kind``, ``recording_id``, ``detail`` with the fix);
    ``readable`` is False when the spool folder or the catalogue as a whole
    could not be read, so the rows say nothing about what is kept.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)
    readable: bool = True

    def problem(self, kind: str, recording_id: str | None, detail: str) -> None:
        self.problems.append({"kind": kind, "recording_id": recording_id, "detail": detail})


def _kind_of(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISREG, "a file"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISFIFO, "a pipe"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file"


def read_catalogue(data_dir: Path) -> CatalogueView:
    """The catalogue's rows and every problem found reading it; read-only, never raises for content.

    Nothing under the data dir is created, changed or removed: without a WAL
    file the database is opened immutable; with a WAL and its shared-memory
    index (the service is running, or stopped by a crash) read-only through
    them, which may refresh that index but never the database or the WAL;
    with a WAL alone, a copy in a temporary folder is read.
    """
    root = Path(data_dir) / SPOOL_DIR
    path = root / CATALOGUE
    view = CatalogueView()
    try:
        mode = os.stat(root).st_mode
    except FileNotFoundError:
        return view
    except OSError as e:
        view.readable = False
        view.problem("spool-unreadable", None, f"{root} cannot be read ({e.strerror}); check that the "
                                               "data dir belongs to the linetap user")
        return view
    if not stat.S_ISDIR(mode):
        view.readable = False
        view.problem("spool-not-a-folder", None,
                     f"{root} is {_kind_of(mode)}, not a folder, so no recording can be kept or read; "
                     f"move it aside (mv {root} {root}.bad) and restart the service, which makes a new spool")
        return view
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return view  # the service makes it at start; recording folders without rows are reported by verify
    except OSError as e:
        view.readable = False
        view.problem("bad-catalogue", None, f"{path} cannot be read ({e.strerror}); check that the data "
                                            "dir belongs to the linetap user")
        return view
    why = None
    if not stat.S_ISREG(st.st_mode):
        why = f"is {_kind_of(st.st_mode)}, not a SQLite database file"
    elif st.st_size == 0:
        why = "is empty (0 bytes)"
    else:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                header = os.read(fd, len(_SQLITE_HEADER))
            finally:
                os.close(fd)
        except OSError as e:
            header, why = b"", f"cannot be read ({e.strerror})"
        if why is None and header != _SQLITE_HEADER:
            why = "is not a SQLite database"
    if why is not None:
        view.readable = False
        view.problem("bad-catalogue", None, f"the catalogue {path} {why}; {REBUILT_AT_START}")
        return view
    rows: list[sqlite3.Row] = []
    wal, shm = root / (CATALOGUE + "-wal"), root / (CATALOGUE + "-shm")
    try:
        with tempfile.TemporaryDirectory(prefix="linetap-catalogue-") as scratch:
            if not wal.exists():
                uri = f"file:{urllib.parse.quote(str(path))}?mode=ro&immutable=1"
            elif shm.exists():  # the service is running, or stopped by a crash: read through its WAL
                uri = f"file:{urllib.parse.quote(str(path))}?mode=ro"
            else:  # a WAL without its index: SQLite would make one here, so a copy is read instead
                copy = Path(scratch) / CATALOGUE
                shutil.copyfile(path, copy)
                if wal.is_file():
                    shutil.copyfile(wal, copy.with_name(CATALOGUE + "-wal"))
                uri = f"file:{urllib.parse.quote(str(copy))}"
            rows, why = _read_rows(uri)
    except (sqlite3.Error, OSError) as e:
        why = f"cannot be read as a SQLite database ({e})"
    if why is not None:
        view.readable = False
        view.problem("bad-catalogue", None, f"the catalogue {path} {why}; {REBUILT_AT_START}")
        return view
    for row in rows:
        values = {key: row[key] for key in _COLUMNS["recordings"]}
        if (problem := _row_problem(values)) is None:
            view.rows.append(_row_dict(values))
            continue
        rid = values["id"] if isinstance(values["id"], str) and _RECORDING_ID.fullmatch(values["id"]) else None
        view.problem("bad-catalogue-row", rid, f"a row of the catalogue {path} makes no sense: {problem}; "
                                               f"{ROW_QUARANTINED_AT_START}")
    view.rows.sort(key=lambda r: r["seq"])
    return view


def _read_rows(uri: str) -> tuple[list[sqlite3.Row], str | None]:
    """The ``recordings`` rows of the catalogue at ``uri``, or why it is not a catalogue."""
    db = sqlite3.connect(uri, uri=True)
    try:
        db.row_factory = sqlite3.Row
        check = [r[0] for r in db.execute("PRAGMA quick_check").fetchmany(3)]
        if check != ["ok"]:
            return [], f"is damaged ({'; '.join(map(str, check))[:200]})"
        if (schema := _schema_problem(db, tables_required=True)) is not None:
            return [], f"is not a linetap catalogue: {schema}"
        return db.execute("SELECT * FROM recordings").fetchall(), None
    finally:
        db.close()


def list_recordings(data_dir: Path) -> list[dict[str, Any]]:
    """Catalogue rows for ``linetap spool list``, oldest first; no personal data. Read-only.

    Raises :class:`CatalogueUnreadable` when the catalogue as a whole cannot
    be read; rows that make no sense are left out (:func:`read_catalogue`
    names them).
    """
    view = read_catalogue(data_dir)
    if not view.readable:
        raise CatalogueUnreadable("; ".join(p["detail"] for p in view.problems))
    for p in view.problems:
        logger.warning("spool catalogue kind=%s recording=%s detail=%s", p["kind"], p["recording_id"],
                       p["detail"])
    return view.rows


def verify_spool(data_dir: Path, public_key: Ed25519PublicKey | None = None) -> dict[str, Any]:
    """``linetap spool verify``: structure, hashes, signatures and chain; never decrypts.

    Read-only: nothing is created, changed or removed, whatever is found.
    ``public_key`` defaults to the device's own key. A damaged catalogue,
    spool folder or file is a problem in the report, never an exception.
    """
    data_dir = Path(data_dir)
    root = data_dir / SPOOL_DIR
    if public_key is None:
        public_key = load_signing_key(data_dir).public_key()
    view = read_catalogue(data_dir)
    rows = {r["id"]: r for r in view.rows}
    problems: list[dict[str, Any]] = list(view.problems)
    manifests: list[tuple[int, bytes]] = []

    def problem(kind: str, rid: str | None, detail: str) -> None:
        problems.append({"kind": kind, "recording_id": rid, "detail": detail})

    folders: list[Path] = []
    if root.is_dir():
        for entry in sorted(root.iterdir()):
            if entry.is_symlink():
                problem("stray-link", None, f"{entry} is a symbolic link; the spool holds none: move it out")
            elif entry.is_dir() and not entry.name.startswith(CATALOGUE):  # a catalogue folder: reported above
                folders.append(entry)
    for folder in folders:
        rid = folder.name
        row = rows.get(rid)
        if row is None and view.readable:
            problem("orphan-recording", rid, "folder has no catalogue row")
        manifest_path = folder / MANIFEST_FILE
        try:
            data = read_bounded(manifest_path, max_bytes=MANIFEST_MAX_BYTES)
        except FileNotFoundError:
            if row is None or row["state"] != "recording":
                problem("missing-manifest", rid, f"{manifest_path} is missing")
            continue
        except (FileRefused, OSError) as e:
            problem("bad-manifest", rid, f"{manifest_path} {e}")
            continue
        try:
            m = mf.verify(data, public_key)
        except (mf.ManifestError, mf.BadSignature) as e:
            problem("bad-manifest", rid, str(e))
            continue
        manifests.append((m["seq"], data))
        listed = set()
        for s in m["segments"]:
            name = f"{s['index']:06d}{SEGMENT_SUFFIX}"
            listed.add(name)
            if (p := _segment_problem(folder / name, s["bytes"], s["sha256"])) is not None:
                problem("bad-segment", rid, f"{name}: {p}")
        for extra in sorted(folder.iterdir()):
            if extra.name not in listed and extra.name not in (MANIFEST_FILE, OPEN_FILE):
                problem("orphan-file", rid, f"{extra.name} is not in the manifest")
    for rid, row in rows.items():
        if row["state"] in ("closed", "synced", "recording") and not (root / rid).is_dir():
            problem("missing-files", rid, f"catalogue row seq={row['seq']} state={row['state']} has no folder")
    manifests.sort()
    by_seq = {r["seq"]: r for r in rows.values()}
    explained = {seq: r["state"] for seq, r in by_seq.items() if r["state"] in ("purged", "quarantined")}
    after: mf.ChainPoint | None = mf.GENESIS_POINT
    if manifests and manifests[0][0] > 1:
        before = by_seq.get(manifests[0][0] - 1)
        after = None
        if before is not None and before["manifest_sha256"]:
            after = mf.ChainPoint(before["seq"], before["manifest_sha256"])
    chain = mf.verify_chain([d for _, d in manifests], public_key, after=after, explained=explained)
    return {"ok": not problems and chain.ok, "recordings": len(rows), "manifests": len(manifests),
            "problems": problems, "chain": chain.as_dict()}


# ------------------------------------------------------------------ helpers --

def _is_full(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT)


def _segment_index(name: str) -> int | None:
    """The index in a segment file name (``000042.age``): six ASCII digits, nothing else."""
    stem, dot, suffix = name.partition(".")
    if dot and "." + suffix == SEGMENT_SUFFIX and _SEGMENT_STEM.fullmatch(stem):
        return int(stem)
    return None


def _segment_problem(path: Path, size: int, sha256: str, data: bytes | None = None) -> str | None:
    if data is None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return "file is missing"
        if not stat.S_ISREG(st.st_mode):
            return f"is {_kind_of(st.st_mode)}, not a file"
        if st.st_size != size:  # judged before reading: a huge or endless file is never read
            return f"{st.st_size} bytes, expected {size} (truncated or replaced)"
        try:
            data = read_bounded(path, max_bytes=max(size, 0))
        except (FileRefused, OSError) as e:
            return f"cannot be read ({e})"
    if len(data) != size:
        return f"{len(data)} bytes, expected {size} (truncated or replaced)"
    if hashlib.sha256(data).hexdigest() != sha256:
        return "sha256 does not match (altered)"
    return age_shape_problem(data)


def _pauses(call: CallRecord) -> list[list[int | None]]:
    spans: list[list[int | None]] = []
    for event in call.events:
        if event.kind == "pause-start":
            spans.append([mf.ms(event.t), None])
        elif event.kind == "pause-end" and spans and spans[-1][1] is None:
            spans[-1][1] = mf.ms(event.t)
    return spans


def _row_dict(row: Mapping[str, Any] | sqlite3.Row) -> dict[str, Any]:
    out = {k: row[k] for k in row.keys() if k != "opening"}
    out["consent"] = untrusted.loads(row["consent"], what="catalogue consent column",
                                     max_bytes=MANIFEST_MAX_BYTES) if row["consent"] else []
    for flag in ("clock_synced", "flagged", "recorded", "discarded"):
        out[flag] = bool(out[flag])
    return out
