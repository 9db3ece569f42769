"""The operator's tools on a central store: export, verify, import, erase, legal hold, retention.

Each works on the same object store and index as the ingest core and opens
them the same way, so a tool may run while ``serve`` ingests.

Erasure. A recording is erased by writing a *tombstone* first (canonical
JSON signed with the operator key, keeping the recording's device, seq,
manifest sha256 and prev), then clearing the personal data from its index row,
then overwriting and deleting its objects. The manifest goes too (it holds the
sealed caller id and the call's events); the tombstone carries exactly what
the chain needs, so ``verify`` still checks the links on both sides of an
erased recording and reports it as erased, not missing. A crash half way is
finished by running ``erase`` again. A recording on legal hold is refused.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import json
import logging
import os
import re
import stat
import tempfile
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyrage
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from linetap.firmware import manifest as mf
from linetap.firmware import untrusted
from linetap.firmware.clock import Clock, SystemClock
from linetap.firmware.durable import fsync_dir
from linetap.firmware.errors import AuthError, ConfigError, SyncError
from linetap.firmware.keys import public_key_b64, public_key_from_b64
from linetap.sync import wire
from linetap.sync.central.config import IngestSection, RetentionSection
from linetap.sync.central.index import INDEX_FILE, PENDING_MANIFEST, Index, SqliteIndex, UnknownRecording
from linetap.sync.central import card
from linetap.sync.central.ingest import MAX_MANIFEST, OBJECTS_DIR, AgedOut, Ingest
from linetap.sync.central.keys import load_identity, load_operator_key, operator_public_key
from linetap.sync.central.store import FileStore, ObjectMissing, ObjectStore, segment_key, tombstone_key

logger = logging.getLogger(__name__)

TOMBSTONE_FORMAT = "linetap-tombstone/1"
MAX_TOMBSTONE = 64 * 1024  # ids, hashes, a reason: a few hundred bytes
DAY_MS = 86_400_000


class IntegrityError(AuthError):
    """A stored object does not match what its manifest or index row says (altered or lost)."""


class OnHold(SyncError, PermissionError):
    """The recording is on legal hold: it may not be erased."""


class ExportExists(ConfigError, FileExistsError):
    """The export file is already there (a file, a folder or a symbolic link) and ``--force`` was not given."""


@dataclass(frozen=True)
class Exported:
    path: Path
    segments: int
    frames: int | None  # decoded stereo frames (WAV only)
    rate: int


def write_private_file(out: Path, data: bytes, *, replace: bool) -> None:
    """Write ``out`` complete or not at all, mode 0600, never through a symbolic link.

    The bytes go to a new temporary file in the same folder (``mkstemp``:
    exclusive, no link followed, 0600), which is then renamed over ``out``
    (``replace``: a link at ``out`` is itself replaced, its target untouched)
    or hard-linked to it, which fails if anything, even a dangling link, is
    there. On a file system without hard links (a FAT stick) the file is
    created with ``O_EXCL | O_NOFOLLOW`` instead.
    """
    folder = out.parent
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=folder)
    tmp = Path(name)
    try:
        try:
            os.fchmod(fd, 0o600)
            _write_all(fd, data)
        finally:
            os.close(fd)
        if replace:
            try:
                os.replace(tmp, out)
            except IsADirectoryError:
                raise ConfigError(f"export file {out} is a folder; give -o a file name") from None
        else:
            try:
                os.link(tmp, out, follow_symlinks=False)
            except FileExistsError:
                raise _exists(out) from None
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                _create_exclusive(out, data)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(folder)


def _create_exclusive(out: Path, data: bytes) -> None:
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise _exists(out) from None
    try:
        os.fchmod(fd, 0o600)
        _write_all(fd, data)
    except OSError:
        os.close(fd)
        out.unlink(missing_ok=True)
        raise
    os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


def _exists(out: Path) -> ExportExists:
    what = "a symbolic link" if out.is_symlink() else "a folder" if out.is_dir() else "a file"
    return ExportExists(f"export file {out} already exists ({what}); pass --force to replace it "
                        "(a link is replaced, never written through), or choose another name")


@dataclass
class ImportResult:
    """What ``import`` did with one recording folder of a box."""

    recording_id: str
    status: str  # stored, rejected, retry, skipped
    code: str | None = None
    reason: str | None = None


# The most one object may be on the wire: anything a manifest lists beyond it is garbage.
MAX_OBJECT = wire.MAX_PARTS * wire.PART_BYTES
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")


def _manifest_summary(data: bytes, shown: Path) -> tuple[str, int]:
    """(device, seq) of a manifest read from a card, to order the import; CardRefused if it has none."""
    try:
        value = untrusted.loads(data, what=str(shown), max_bytes=MAX_MANIFEST)
    except untrusted.Untrusted as e:
        raise card.CardRefused(str(e)) from None
    if not isinstance(value, dict):
        raise card.CardRefused(f"{shown} is a JSON {type(value).__name__}, not a manifest (an object)")
    device, seq = value.get("device_id"), value.get("seq")
    if not isinstance(device, str):
        raise card.CardRefused(f"{shown}: device_id {_short(device)} is not a device id")
    try:
        wire.check_device_id(device)
    except wire.WireError as e:
        raise card.CardRefused(f"{shown}: {e}") from None
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise card.CardRefused(f"{shown}: seq {_short(seq)} is not a positive integer")
    return device, seq


def _listed_segments(manifest: dict[str, Any], rid: str, shown: Path) -> list[tuple[int, str, int]]:
    """(index, sha256, bytes) of each segment a verified manifest lists; CardRefused if one is not well typed."""
    if manifest["recording_id"] != rid:
        raise card.CardRefused(f"names recording {_short(manifest['recording_id'])} but lies in folder {rid}")
    if not isinstance(manifest["prev"], str) or not _SHA256.match(manifest["prev"]):
        raise card.CardRefused(f"prev {_short(manifest['prev'])} is not a sha256 (64 lowercase hex digits)")
    listed, seen = [], set()
    for n, entry in enumerate(manifest["segments"]):
        index, sha256, size = ((entry.get("index"), entry.get("sha256"), entry.get("bytes"))
                               if isinstance(entry, dict) else (None, None, None))
        if not (isinstance(index, int) and not isinstance(index, bool) and 0 <= index < wire.MAX_SEGMENTS
                and isinstance(sha256, str) and _SHA256.match(sha256)
                and isinstance(size, int) and not isinstance(size, bool) and 0 < size <= MAX_OBJECT):
            raise card.CardRefused(f"segments[{n}] = {_short(entry)} is not {{index: 0..{wire.MAX_SEGMENTS - 1}, "
                                   f"sha256: 64 hex digits, bytes: 1..{MAX_OBJECT}}}")
        if index in seen:
            raise card.CardRefused(f"segment {index} is listed twice")
        seen.add(index)
        listed.append((index, sha256, size))
    return listed


def _check_segments(fd: int, folder: Path, listed: list[tuple[int, str, int]]) -> list[int]:
    """The listed segments missing from ``folder``; CardRefused (hash-mismatch) at the first that differs."""
    missing = []
    for entry in listed:
        try:
            _read_segment(fd, folder, entry)
        except FileNotFoundError:
            missing.append(entry[0])
    return missing


def _read_segment(fd: int, folder: Path, entry: tuple[int, str, int]) -> bytes:
    index, sha256, size = entry
    path = folder / card.segment_file(index)
    mismatch = (f"{path} does not match the sha256 and size ({size} bytes) its verified manifest lists: "
                "damaged on the card or altered", "hash-mismatch")
    try:
        data = card.read_file(fd, path, size, code="hash-mismatch")
    except card.CardRefused as e:
        if e.code == "hash-mismatch":
            raise card.CardRefused(*mismatch) from None
        raise
    if len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
        raise card.CardRefused(*mismatch)
    return data


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass
class DeviceReport:
    """``problems`` make a device not ok; ``orphans`` (what the device holds that no stored manifest
    vouches for) are listed, and fail only a strict verify."""

    device_id: str
    recordings: int = 0
    erased: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)
    orphans: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "ok": self.ok, "recordings": self.recordings,
                "erased": self.erased, "missing": self.missing, "problems": self.problems,
                "orphans": self.orphans}


class StoreTools:
    """Operator actions on the store under ``data_dir``. ``close()`` releases the index."""

    def __init__(self, data_dir: Path, *, clock: Clock | None = None, store: ObjectStore | None = None,
                 index: Index | None = None) -> None:
        self.data_dir = Path(data_dir)
        self._clock = clock or SystemClock()
        self.store: ObjectStore = store or FileStore(self.data_dir / OBJECTS_DIR)
        self._owns_index = index is None
        self.index: Index = index or SqliteIndex(self.data_dir / INDEX_FILE)

    def close(self) -> None:
        if self._owns_index:
            self.index.close()

    def __enter__(self) -> StoreTools:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- enrolment --

    def enroll(self, device_id: str, signing_key_b64: str, *, replace: bool = False) -> str:
        """Enrol a box's Ed25519 public key (as ``linetap keys show`` prints it); returns the key."""
        try:
            wire.check_device_id(device_id)
        except wire.WireError as e:
            raise ConfigError(f"{e}; use the box's device id (its TLS certificate CN)") from e
        key = public_key_b64(public_key_from_b64(signing_key_b64.strip()))
        known = self.index.device_key(device_id)
        if known is not None and known != key and not replace:
            raise ConfigError(f"device {device_id} is enrolled with another key ({known[:12]}...); pass "
                              "--replace if the box really has a new key (its old manifests then verify "
                              "only against the old key)")
        self.index.enroll(device_id, key, self._now_ms())
        logger.info("device enrolled device=%s", device_id)
        return key

    # -- export --

    def export(self, recording_id: str, out: Path, *, force: bool = False,
               device_id: str | None = None) -> Exported:
        """Check the recording's hashes and signature, decrypt and write it as ``.ogg`` or ``.wav``.

        The file is decrypted audio: it is created mode 0600, an existing file
        is replaced only with ``force``, and a symbolic link at ``out`` is
        never written through (with ``force`` the link itself is replaced).
        """
        out = Path(out)
        if out.suffix.lower() not in (".ogg", ".wav"):
            raise ConfigError(f"export file {out} must end in .ogg (the recorded Opus stream) or .wav (decoded)")
        if not out.parent.is_dir():
            raise ConfigError(f"export folder {out.parent} does not exist; create it or give -o a path "
                              "in an existing folder")
        if not force and os.path.lexists(out):
            raise _exists(out)
        row = self._recording(recording_id, device_id)
        if row["erased_ms"] is not None:
            raise UnknownRecording(f"recording {recording_id} was erased ({row['erase_reason']}); "
                                   "nothing is left to export")
        manifest = self._checked_manifest(row)
        identity = load_identity(self.data_dir)
        plaintexts = []
        for entry in manifest["segments"]:
            data = self._checked_segment(row, entry)
            try:
                plaintexts.append(pyrage.decrypt(data, [identity]))
            except pyrage.DecryptError as e:
                raise AuthError(f"segment {entry['index']} of recording {recording_id} does not decrypt with "
                                f"the central identity in {self.data_dir}/keys ({e}); was the box given "
                                "another recipient?") from e
        if not plaintexts:
            raise SyncError(f"recording {recording_id} has no audio (discarded={row['discarded']}, "
                            f"recorded={row['recorded']}): nothing to export")
        rate = manifest.get("codec", {}).get("rate")
        frames = None
        if out.suffix.lower() == ".ogg":
            audio = b"".join(plaintexts)
        else:
            from linetap.firmware.encoder import segments_to_pcm  # PyAV: only the WAV export needs it

            pcm = segments_to_pcm(plaintexts, rate)
            buffer = io.BytesIO()
            with wave.open(buffer, "wb") as wav:
                wav.setnchannels(2)
                wav.setsampwidth(2)
                wav.setframerate(rate)
                wav.writeframes(pcm.tobytes())
            audio = buffer.getvalue()
            frames = len(pcm)
        write_private_file(out, audio, replace=force)
        logger.info("recording exported recording=%s segments=%d file=%s", recording_id, len(plaintexts), out)
        return Exported(out, len(plaintexts), frames, rate)

    # -- verify --

    def verify(self, recording_id: str | None = None, *, device_id: str | None = None,
               limits: IngestSection | None = None) -> list[DeviceReport]:
        """Re-hash and re-verify stored recordings, per device; one recording's device with ``recording_id``
        (``device_id`` names the device when several have that id; alone it limits the check to it).

        Each report also lists orphans: objects no indexed manifest vouches for,
        manifests waiting for segments, and staging untouched for
        ``limits.stale_staging_days``.
        """
        limits = limits or IngestSection()
        if recording_id is not None:
            row = self._recording(recording_id, device_id)
            return [self._verify_device(row["device_id"], row, limits)]
        devices = sorted({d["device_id"] for d in self.index.devices()})
        if device_id is not None:
            if device_id not in devices:
                raise ConfigError(f"device {device_id} is not enrolled at {self.data_dir}; "
                                  "`linetap-central fleet list` shows the boxes")
            devices = [device_id]
        return [self._verify_device(device, None, limits) for device in devices]

    def _orphans(self, device_id: str, limits: IngestSection) -> list[dict[str, Any]]:
        now = self._now_ms()
        stale_ms = limits.stale_staging_days * DAY_MS
        found = []
        for obj in self.index.unvouched_objects(device_id):
            found.append({"kind": "unvouched-object", "recording_id": obj["recording_id"], "object": obj["name"],
                          "bytes": obj["size"], "age_days": round((now - obj["claimed_ms"]) / DAY_MS, 2),
                          "detail": "stored, but no stored manifest lists it" if obj["stored_ms"] is not None
                          else "claimed, never stored (a write that failed)"})
        for staged in self.index.staged():
            if staged["device_id"] != device_id:
                continue
            age = now - staged["last_ms"]
            waiting = staged["name"] == PENDING_MANIFEST
            if not waiting and age < stale_ms:
                continue  # an object still arriving
            found.append({"kind": "waiting-manifest" if waiting else "stale-staging",
                          "recording_id": staged["recording_id"], "object": staged["name"],
                          "bytes": staged["bytes"], "age_days": round(age / DAY_MS, 2),
                          "detail": "a manifest waiting for segments that have not come" if waiting else
                          f"{staged['parts']} parts of an object that never completed"})
        return found

    def _verify_device(self, device_id: str, only: dict[str, Any] | None,
                       limits: IngestSection | None = None) -> DeviceReport:
        report = DeviceReport(device_id)
        report.orphans = self._orphans(device_id, limits or IngestSection())
        if only is not None:
            report.orphans = [o for o in report.orphans if o["recording_id"] == only["recording_id"]]
        key_b64 = self.index.device_key(device_id)
        rows = self.index.device_recordings(device_id)
        report.recordings = len(rows)

        def problem(kind: str, row: dict[str, Any] | None, detail: str, seq: int | None = None) -> None:
            report.problems.append({"kind": kind, "seq": row["seq"] if row else seq,
                                    "recording_id": row["recording_id"] if row else None, "detail": detail})

        if key_b64 is None:
            problem("not-enrolled", None, f"device {device_id} has recordings but no enrolled key")
            return report
        key = public_key_from_b64(key_b64)
        links: dict[int, tuple[str, str]] = {}  # seq -> (manifest sha256, prev), erased ones from tombstones
        manifests: list[tuple[int, bytes]] = []
        for row in rows:
            seq = row["seq"]
            if row["erased_ms"] is not None:
                report.erased.append(seq)
                tombstone = self._checked_tombstone(row, problem)
                if tombstone is not None:
                    links[seq] = (tombstone["manifest_sha256"], tombstone["prev"])
                continue
            try:
                data = self.store.get(row["manifest_key"])
            except ObjectMissing as e:
                problem("missing-object", row, str(e))
                continue
            if hashlib.sha256(data).hexdigest() != row["manifest_sha256"]:
                problem("altered", row, "the stored manifest's sha256 is not the one indexed at ingest")
            manifests.append((seq, data))
            links.setdefault(seq, (hashlib.sha256(data).hexdigest(), row["prev"]))
            if only is None or only["recording_id"] == row["recording_id"]:
                self._verify_segments(row, data, key, problem)
        manifests.sort(key=lambda item: item[0])
        erased = {seq: "erased" for seq in report.erased}
        chain = mf.verify_chain([data for _, data in manifests], key, explained=erased)
        for found in chain.problems:
            if found.kind == "missing" and found.seq is not None:
                report.missing.append(found.seq)
            report.problems.append({"kind": found.kind, "seq": found.seq, "recording_id": found.recording_id,
                                    "detail": found.detail})
        for seq in report.erased:
            if seq not in links:
                continue
            digest, prev = links[seq]
            before = mf.GENESIS if seq == 1 else links.get(seq - 1, (None, None))[0]
            if before is not None and prev != before:
                problem("broken-link", None, f"tombstone of seq {seq}: prev {prev[:16]}... is not the hash "
                                             f"of seq {seq - 1}", seq)
            after = links.get(seq + 1)
            if after is not None and after[1] != digest:
                problem("broken-link", None, f"seq {seq + 1} does not link to the erased seq {seq}'s "
                                             "manifest hash kept in its tombstone", seq + 1)
        for found in self.index.problems(device_id):
            if found["kind"] != "chain-break":  # recomputed above from what is stored now
                report.problems.append({"kind": found["kind"], "seq": found["seq"],
                                        "recording_id": found["recording_id"], "detail": found["detail"]})
        if only is not None:
            near = (only["seq"], only["seq"] + 1)
            report.problems = [p for p in report.problems
                               if p["recording_id"] == only["recording_id"] or p["seq"] in near]
            report.missing = [seq for seq in report.missing if seq in near]
        return report

    def _verify_segments(self, row: dict[str, Any], data: bytes, key: Ed25519PublicKey, problem) -> None:
        try:
            manifest = mf.verify(data, key)
        except (mf.ManifestError, mf.BadSignature):
            return  # reported by the chain check as malformed / altered
        for entry in manifest["segments"]:
            try:
                self._checked_segment(row, entry)
            except (ObjectMissing, IntegrityError) as e:
                problem("missing-object" if isinstance(e, ObjectMissing) else "altered", row, str(e))

    # -- import --

    def import_dir(self, box_data_dir: Path, *, ingest: Ingest | None = None) -> list[ImportResult]:
        """Feed a box's data dir (``<dir>/spool/<recording>/``) through the ingest checks, oldest first.

        Nothing on the card is trusted (:mod:`linetap.sync.central.card`): no
        link is followed, no file is read past the most it may hold. A
        recording's segments are read only once its manifest has verified with
        the device's enrolled key, and handed to ingest only when every one
        the manifest lists is there with its sha256 and size; a recording that
        fails is refused with the reason and leaves nothing stored, so the
        box's own upload of it, or a later import of a good copy, is stored as
        if this one never happened. One bad recording never stops the others.
        """
        spool = Path(box_data_dir) / card.SPOOL_DIR
        try:
            spool_fd = card.open_folder(spool)
        except FileNotFoundError:
            raise ConfigError(f"{box_data_dir} has no {card.SPOOL_DIR}/ folder; pass the box's data dir "
                              "(the SD card's /var/lib/linetap)") from None
        except card.CardRefused as e:
            raise ConfigError(str(e)) from None
        owned = ingest is None
        ingest = ingest or Ingest(self.data_dir, clock=self._clock, store=self.store, index=self.index)
        try:
            results: list[ImportResult] = []
            found: list[tuple[str, int, Path, bytes]] = []
            with os.scandir(spool_fd) as entries:
                names = sorted(entry.name for entry in entries
                               if entry.is_symlink() or entry.is_dir(follow_symlinks=False))
            for name in names:
                folder = spool / name
                try:
                    wire.check_recording_id(name)
                except wire.WireError:
                    results.append(ImportResult(name, "skipped", None, f"{folder} is not a recording folder"))
                    continue
                try:
                    data = self._read_from(spool_fd, folder, lambda fd: card.read_file(
                        fd, folder / card.MANIFEST_FILE, MAX_MANIFEST))
                    device, seq = _manifest_summary(data, folder / card.MANIFEST_FILE)
                except FileNotFoundError:
                    results.append(ImportResult(name, "skipped", None, f"no {card.MANIFEST_FILE}: the call "
                                                "was still open or was lost on the box"))
                    continue
                except card.CardRefused as e:
                    results.append(ImportResult(name, "rejected", e.code, str(e)))
                    continue
                found.append((device, seq, folder, data))
            for device, _, folder, data in sorted(found, key=lambda item: (item[0], item[1])):
                results.append(self._import_recording(ingest, spool_fd, folder, device, data))
            return results
        finally:
            os.close(spool_fd)
            if owned:
                ingest.close()

    def _import_recording(self, ingest: Ingest, spool_fd: int, folder: Path, device: str,
                          manifest: bytes) -> ImportResult:
        rid = folder.name
        key_b64 = self.index.device_key(device)
        if key_b64 is None:
            return ImportResult(rid, "rejected", "not-enrolled",
                                f"device {device} is not enrolled at this central store; run "
                                f"`linetap-central enroll {device} --signing-key ...` with what its "
                                "`linetap keys show` prints, then import again")
        try:
            listed = _listed_segments(mf.verify(manifest, public_key_from_b64(key_b64)), rid,
                                      folder / card.MANIFEST_FILE)
        except mf.BadSignature as e:
            return ImportResult(rid, "rejected", "bad-signature",
                                f"{folder / card.MANIFEST_FILE}: {e}; nothing of this recording was read further")
        except (mf.ManifestError, card.CardRefused) as e:
            return ImportResult(rid, "rejected", "malformed", f"{folder / card.MANIFEST_FILE}: {e}")
        try:
            missing = self._read_from(spool_fd, folder, lambda fd: _check_segments(fd, folder, listed))
            if missing:
                shown = ", ".join(card.segment_file(i) for i in missing[:10])
                return ImportResult(rid, "rejected", "missing-segments",
                                    f"{len(missing)} of the {len(listed)} segments its manifest lists are not in "
                                    f"{folder} ({shown}{', ...' if len(missing) > 10 else ''}); nothing of this "
                                    "recording was stored: the box uploads it, or import a complete copy")
            for entry in listed:  # read again: what is stored is what was checked just now
                data = self._read_from(spool_fd, folder, lambda fd: _read_segment(fd, folder, entry))
                self._feed(ingest, wire.split(device, rid, wire.ObjectRef.segment(entry[0]), data))
            final = self._feed(ingest, wire.split(device, rid, wire.ObjectRef.manifest(), manifest))
        except card.CardRefused as e:
            return ImportResult(rid, "rejected", e.code, f"{e}; nothing of this recording was stored")
        except wire.WireError as e:
            return ImportResult(rid, "rejected", "malformed", str(e))
        if final is None:
            return ImportResult(rid, "rejected", "malformed", "no answer for the manifest")
        if final.status == "stored":
            # A broken link is stored as evidence (refusing it would lose the recording); say so here too.
            breaks = [p["detail"] for p in self.index.problems(device)
                      if p["kind"] == "chain-break" and p["recording_id"] == rid]
            if breaks:
                return ImportResult(rid, "stored", "chain-break",
                                    f"stored as evidence, but its chain link is broken: {breaks[-1]}; "
                                    "`linetap-central verify` reports it until the chain is explained")
        return ImportResult(rid, final.status, final.code, final.reason)

    @staticmethod
    def _read_from(spool_fd: int, folder: Path, read):
        """``read(fd)`` on recording ``folder`` opened inside the spool; never through a link."""
        fd = card.open_folder(folder, dir_fd=spool_fd)
        try:
            return read(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _feed(ingest: Ingest, parts: list[wire.Part]) -> wire.Ack | None:
        last = None
        for part in parts:
            for ack in ingest.receive(part):
                if ack.part is None and ack.object == part.object:
                    last = ack
        return last

    # -- holds, erasure, retention --

    def set_hold(self, recording_id: str, hold: bool, reason: str | None = None, *,
                 device_id: str | None = None) -> None:
        device = self._recording(recording_id, device_id)["device_id"]
        self.index.set_hold(recording_id, hold, reason, device_id=device)
        logger.info("legal hold %s device=%s recording=%s", "set" if hold else "cleared", device, recording_id)

    def erase(self, recording_id: str, reason: str, *, device_id: str | None = None) -> str:
        """Erase a recording securely, leaving a signed tombstone; returns the tombstone's key.

        ``device_id`` names the device when several have a recording of that id.
        """
        if not reason.strip():
            raise ConfigError("erase needs a --reason (it is kept in the signed tombstone)")
        row = self._recording(recording_id, device_id)
        device = row["device_id"]
        if row["hold"]:
            raise OnHold(f"recording {recording_id} of device {device} is on legal hold "
                         f"({row['hold_reason'] or 'no reason given'}); clear it first with "
                         f"`linetap-central hold clear {recording_id} --device {device}`")
        key = tombstone_key(device, recording_id)
        if row["erased_ms"] is None:
            operator = load_operator_key(self.data_dir)
            now = self._now_ms()
            body = {"format": TOMBSTONE_FORMAT, "device_id": device, "recording_id": recording_id,
                    "seq": row["seq"], "manifest_sha256": row["manifest_sha256"], "prev": row["prev"],
                    "erased_wall_ms": now, "reason": reason, "segments": row["segments"]}
            self.store.put(key, mf.sign(body, operator))
            self.index.mark_erased(recording_id, now, reason, key, device_id=device)
        for obj in self.index.objects(device, recording_id):
            self.store.erase(obj["object_key"])
        self.index.forget_objects(device, recording_id)
        logger.info("recording erased device=%s recording=%s seq=%d", device, recording_id, row["seq"])
        return key

    def retention_due(self, retention: RetentionSection) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(due, held): recordings past their category's days, and those of them kept by a legal hold."""
        now = self._now_ms()
        due, held = [], []
        for row in self.index.recordings(erased=False):
            days = retention.days_for(row["flagged"])
            started = row["started_ms"]
            if days == 0 or started is None or started + days * DAY_MS > now:
                continue
            (held if row["hold"] else due).append(row)
        return due, held

    def retention_run(self, retention: RetentionSection, *,
                      dry_run: bool = False) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """Erase what retention makes due; returns (erased or due, held) as (device, recording) pairs."""
        due, held = self.retention_due(retention)
        if not dry_run:
            for row in due:
                category = "flagged" if row["flagged"] else "default"
                self.erase(row["recording_id"], f"retention: {category} {retention.days_for(row['flagged'])} days",
                           device_id=row["device_id"])
        return ([(r["device_id"], r["recording_id"]) for r in due],
                [(r["device_id"], r["recording_id"]) for r in held])

    def age_out(self, limits: IngestSection, *, dry_run: bool = False) -> list[AgedOut]:
        """Remove staging untouched for ``limits.stale_staging_days`` (with ``dry_run``, only list it)."""
        ingest = Ingest(self.data_dir, clock=self._clock, store=self.store, index=self.index, limits=limits)
        try:
            if not dry_run:
                return ingest.age_out()
            cutoff = self._now_ms() - limits.stale_staging_days * DAY_MS
            return [AgedOut(r["device_id"], r["recording_id"], r["name"], int(r["bytes"]), int(r["last_ms"]))
                    for r in self.index.staged(older_than_ms=cutoff)]
        finally:
            ingest.close()

    # -- helpers --

    def _recording(self, recording_id: str, device_id: str | None = None) -> dict[str, Any]:
        """The recording of that id (of ``device_id`` when given); raises when there is none, or when
        several devices have one and ``device_id`` is not given (:class:`AmbiguousRecording`)."""
        row = self.index.recording(recording_id, device_id)
        if row is None:
            of = f" of device {device_id}" if device_id is not None else ""
            raise UnknownRecording(f"recording {recording_id}{of} is not in the index of {self.data_dir}; "
                                   "`linetap-central list` shows the ids")
        return row

    def _checked_manifest(self, row: dict[str, Any]) -> dict[str, Any]:
        data = self.store.get(row["manifest_key"])
        if hashlib.sha256(data).hexdigest() != row["manifest_sha256"]:
            raise IntegrityError(f"manifest of recording {row['recording_id']} was altered after ingest "
                                 "(its sha256 differs from the index); run `linetap-central verify`")
        key_b64 = self.index.device_key(row["device_id"])
        if key_b64 is None:
            raise AuthError(f"device {row['device_id']} is no longer enrolled; its manifests cannot be checked")
        return mf.verify(data, public_key_from_b64(key_b64))

    def _checked_segment(self, row: dict[str, Any], entry: dict[str, Any]) -> bytes:
        key = segment_key(row["device_id"], row["recording_id"], entry["index"])
        data = self.store.get(key)
        if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise IntegrityError(f"segment {entry['index']} of recording {row['recording_id']} ({key}) does "
                                 "not match the sha256 and size its manifest lists: altered or damaged")
        return data

    def _checked_tombstone(self, row: dict[str, Any], problem) -> dict[str, Any] | None:
        try:
            data = self.store.get(row["tombstone_key"])
            tombstone = verify_tombstone(data, operator_public_key(self.data_dir))
        except (ObjectMissing, AuthError, ConfigError) as e:
            problem("bad-tombstone", row, str(e))
            return None
        expected = {"device_id": row["device_id"], "recording_id": row["recording_id"], "seq": row["seq"],
                    "manifest_sha256": row["manifest_sha256"], "prev": row["prev"]}
        differs = [k for k, v in expected.items() if tombstone.get(k) != v]
        if differs:
            problem("bad-tombstone", row, f"tombstone disagrees with the index on {', '.join(differs)}")
            return None
        return tombstone

    def _now_ms(self) -> int:
        return round(self._clock.wall() * 1000)


def verify_tombstone(data: bytes, operator_key: Ed25519PublicKey) -> dict[str, Any]:
    """Parse a tombstone and check its operator signature; AuthError says what is wrong."""
    try:
        value = untrusted.loads(data, what="tombstone", max_bytes=MAX_TOMBSTONE)
    except untrusted.Untrusted as e:
        raise AuthError(f"tombstone is not JSON: {e}") from None
    if not isinstance(value, dict) or value.get("format") != TOMBSTONE_FORMAT \
            or not isinstance(value.get("signature"), dict):
        raise AuthError(f"tombstone is not a {TOMBSTONE_FORMAT} document")
    signature = value.pop("signature")
    if signature.get("public_key") != public_key_b64(operator_key):
        raise AuthError("tombstone is signed by another key than this store's operator key")
    try:
        operator_key.verify(base64.b64decode(signature.get("value", ""), validate=True), mf.canonical(value))
    except (InvalidSignature, ValueError) as e:
        raise AuthError("tombstone signature does not verify (the tombstone was altered)") from e
    return value
