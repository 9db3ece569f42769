"""Writing a call into the spool: open, encrypted segments, discard, the signed manifest; and the sink.

Encryption. Each plaintext segment from the encoder is encrypted in memory
with pyrage to the central recipient; only ciphertext reaches a file. There is
no temporary plaintext file anywhere, so there is nothing to shred.

Durability. Every file is written under a temporary name, fsynced, renamed
and its folder fsynced (:class:`~linetap.firmware.durable.DurableFiles`): a
segment is complete or absent. The catalogue row of a segment is committed
after the rename, so a crash between the two leaves a complete file with no
row, which recovery adopts. Sequence numbers are allocated when a call opens
and written to ``chain.json`` before any segment, and never handed out again
(the file keeps them even if the catalogue is lost).

Disk full. A full disk may show in a file write (ENOSPC) or in the
catalogue's commit (SQLite's "database or disk is full"); both become
:class:`SpoolFull` with the same alarm, and any other catalogue error a
:class:`~linetap.firmware.errors.SpoolError`, which the recorder turns into
the call flow's ``Fault``. A segment whose row cannot be committed is
removed again: a segment the catalogue does not list would never be uploaded.

No writer thread. The sink is called on the call thread, which is fed from
an unbounded queue by the audio reader thread; the audio callback never waits
on it. An fsync stall (tens of milliseconds on an SD card, rarely more) only
lets that queue grow for a moment. Writing on the call thread keeps the
order of events simple and lets a disk-full error reach the caller of
:meth:`SpoolSink.write` directly.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyrage

from linetap.firmware import manifest as mf
from linetap.firmware import untrusted
from linetap.firmware.callflow import CallRecord
from linetap.firmware.errors import SpoolError
from linetap.firmware.recorder import Recording
from linetap.firmware.schema import read_bounded
from linetap.firmware.spool.catalogue import SHA256_HEX
from linetap.firmware.spool.layout import CHAIN_MAX_BYTES
from linetap.firmware.spool.retention import SpoolSettings

if TYPE_CHECKING:
    from linetap.firmware.spool.store import Spool

logger = logging.getLogger(__name__)


class SpoolFull(SpoolError, OSError):
    """No room to keep audio: the disk is full or the spool reached its limits (alarm)."""


@dataclass(frozen=True)
class CodecParams:
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
    # A segment write failed otherwise (an I/O error): nothing more is kept either, so the segments stored
    # are the call's audio up to the failure, never a stream with a piece silently missing from its middle.
    failed: bool = False


def boot_id() -> str | None:
    """The kernel's id for this boot: monotonic times are comparable only within one."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def is_full(e: OSError | sqlite3.Error) -> bool:
    """A full disk (or quota), whether a file write or the catalogue's commit met it."""
    if isinstance(e, sqlite3.Error):
        return getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return e.errno in (errno.ENOSPC, errno.EDQUOT)


def _spans(call: CallRecord, kind: str) -> list[list[int | None]]:
    """[start, end] ms of each ``<kind>-start``/``<kind>-end`` span (pause; mute) in the call's events."""
    spans: list[list[int | None]] = []
    for event in call.events:
        if event.kind == f"{kind}-start":
            spans.append([mf.ms(event.t), None])
        elif event.kind == f"{kind}-end" and spans and spans[-1][1] is None:
            spans[-1][1] = mf.ms(event.t)
    return spans


class SpoolWriter:
    """The write path of :class:`~linetap.firmware.spool.Spool`: one room of it, sharing its state."""

    def begin(self, call: CallRecord, codec: CodecParams) -> OpenRecording:
        """Open a recording for ``call``: allocate its seq and persist it before any audio."""
        with self._lock:
            self.enforce_retention()
            if self.fault is not None:
                raise SpoolFull(f"spool {self.root} refuses new calls: {self.fault}; free space or "
                                "let sync catch up (on_full = 'overwrite-oldest' trades old calls for new)")
            head = self._read_head()
            seq = head["allocated"] + 1
            folder = self.layout.recording(call.call_id)
            opening = {
                "recording_id": call.call_id, "seq": seq, "device_id": self.device_id,
                "started": {"wall_ms": mf.ms(call.started_wall), "mono_ms": mf.ms(call.started_mono),
                            "clock_synced": call.clock_synced, "boot_id": boot_id()},
                "codec": codec.as_dict(), "caller": self._seal(call), "flagged": call.flagged,
                "caller_withheld": call.caller_withheld,
            }
            with self._writing(f"opening recording {call.call_id}"):
                folder.mkdir(mode=0o700)
                self._files.sync_dir(self.root)
                self._files.write(self.layout.opening(call.call_id), mf.canonical(opening))
                head["allocated"] = seq
                self._write_head(head)
                self._commit(
                    ("INSERT INTO recordings (id, seq, state, started_wall_ms, started_mono_ms, clock_synced,"
                     " boot_id, flagged, opening) VALUES (?, ?, 'recording', ?, ?, ?, ?, ?, ?)",
                     (call.call_id, seq, opening["started"]["wall_ms"], opening["started"]["mono_ms"],
                      int(call.clock_synced), opening["started"]["boot_id"], int(call.flagged),
                      json.dumps(opening))))
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
        path = self.layout.segment(rec.recording_id, index)
        entry = {"index": index, "bytes": len(ciphertext), "sha256": hashlib.sha256(ciphertext).hexdigest()}
        try:
            with self._writing(f"writing segment {index} of recording {rec.recording_id}"):
                self._files.write(path, ciphertext)
                try:
                    with self._lock:
                        self._commit(
                            ("INSERT INTO segments (recording_id, idx, size, sha256) VALUES (?, ?, ?, ?)",
                             (rec.recording_id, index, entry["bytes"], entry["sha256"])),
                            ("UPDATE recordings SET segments = segments + 1, bytes = bytes + ? WHERE id = ?",
                             (entry["bytes"], rec.recording_id)))
                except sqlite3.Error:
                    path.unlink(missing_ok=True)  # absent, as the catalogue says
                    raise
        except SpoolFull:
            rec.full = True
            raise
        except SpoolError:
            rec.failed = True
            raise
        rec.segments.append(entry)
        return entry

    def discard(self, rec: OpenRecording) -> None:
        """Destroy the segments written so far (opt-out); the recording stays open and empty."""
        with self._lock, self._writing(f"discarding recording {rec.recording_id}"):
            for entry in rec.segments:
                self.layout.segment(rec.recording_id, entry["index"]).unlink(missing_ok=True)
            self._files.sync_dir(rec.folder)
            self._commit(("DELETE FROM segments WHERE recording_id = ?", (rec.recording_id,)),
                         ("UPDATE recordings SET segments = 0, bytes = 0, discarded = 1 WHERE id = ?",
                          (rec.recording_id,)))
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
            "pauses": _spans(call, "pause"),
            "mutes": _spans(call, "mute"),  # the agent's microphone muted to the far end; audio still kept
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

    # -- shared with recovery --

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
        consent = [e for e in body["events"] if e["kind"] in mf.CONSENT_KINDS]
        with self._writing(f"writing the manifest of recording {recording_id}"):
            self._files.write(self.layout.manifest(recording_id), data)
            head["last"] = {"seq": seq, "sha256": digest}
            head["allocated"] = max(head["allocated"], seq)
            self._write_head(head)
            self._commit(
                ("UPDATE recordings SET state = 'closed', ended_wall_ms = ?, ended_mono_ms = ?, segments = ?,"
                 " bytes = ?, flagged = ?, recorded = ?, discarded = ?, ended_by = ?, consent = ?,"
                 " manifest_sha256 = ? WHERE id = ?",
                 (body["ended"]["wall_ms"], body["ended"]["mono_ms"], len(segments),
                  sum(s["bytes"] for s in segments), int(body["flagged"]), int(body["recorded"]),
                  int(discarded), body["ended_by"], json.dumps(consent), digest, recording_id)))
        self.layout.opening(recording_id).unlink(missing_ok=True)
        logger.info("recording closed recording=%s seq=%d segments=%d ended_by=%s",
                    recording_id, seq, len(segments), body["ended_by"])
        return digest

    def _read_head(self) -> dict[str, Any]:
        """``chain.json``; raises ValueError (``Untrusted``, ``FileRefused``) when it makes no sense."""
        path = self.layout.chain
        try:
            head = untrusted.loads(read_bounded(path, max_bytes=CHAIN_MAX_BYTES), what=str(path),
                                   max_bytes=CHAIN_MAX_BYTES, max_depth=2)
        except FileNotFoundError:
            return {"allocated": 0, "last": {"seq": 0, "sha256": mf.GENESIS}}
        last = head.get("last") if isinstance(head, dict) else None
        if not (isinstance(head, dict) and type(head.get("allocated")) is int and head["allocated"] >= 0
                and isinstance(last, dict) and type(last.get("seq")) is int and last["seq"] >= 0
                and isinstance(last.get("sha256"), str) and SHA256_HEX.fullmatch(last["sha256"])):
            raise untrusted.Untrusted(f"{path} is not {{allocated, last: {{seq, sha256}}}}")
        return head

    def _write_head(self, head: dict[str, Any]) -> None:
        self._files.write(self.layout.chain, mf.canonical(head))

    def _seal(self, call: CallRecord) -> str | None:
        if call.caller is None:
            return None
        return mf.seal_caller(call.caller.number, call.caller.name, self._recipient)

    def _commit(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        """One catalogue transaction (``synchronous=FULL``: on disk when this returns), or none of it."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            for sql, args in statements:
                db.execute(sql, args)
            db.execute("COMMIT")
        except sqlite3.Error:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    @contextmanager
    def _writing(self, doing: str) -> Iterator[None]:
        """File and catalogue errors while ``doing`` as the spool's errors; a full disk raises the alarm."""
        try:
            yield
        except SpoolError:
            raise
        except (OSError, sqlite3.Error) as e:
            if is_full(e):
                self._set_fault(f"disk-full while {doing}")
                raise SpoolFull(f"disk full while {doing} under {self.root}: what was stored so far "
                                "stays valid; free space or let sync and retention catch up") from e
            raise SpoolError(f"{doing} under {self.root} failed: {e}") from e


class SpoolSink:
    """The recorder's :class:`~linetap.firmware.recorder.Sink` that keeps calls in the spool.

    Called on the call thread only. ``write`` raises :class:`SpoolFull` once
    when the disk fills mid-call (the app turns it into the call flow's
    ``Fault``); the call's stored part stays valid and later frames of that
    call are dropped. ``open`` raises :class:`SpoolFull` when retention
    refuses new calls (``spool.fault`` says why).
    """

    def __init__(self, spool: Spool, codec: CodecParams,
                 encoder_factory: Callable[[CodecParams], Segmenter] | None = None) -> None:
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
        if self._rec is None or self._rec.full or self._rec.failed or self._encoder is None:
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
            if encoder is not None and not (rec.full or rec.failed or rec.discarded):
                tail = encoder.finish()
                if tail:
                    self._spool.add_segment(rec, tail)
        except SpoolFull:
            logger.warning("last segment lost to a full disk recording=%s", rec.recording_id)
        self.last_manifest_sha256 = self._spool.finish(rec, recording)


def _opus_segmenter(codec: CodecParams) -> Segmenter:
    from linetap.firmware.encoder import OpusSegmenter

    return OpusSegmenter(codec.rate, bitrate=codec.bitrate, segment_s=codec.segment_s)
