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
import hashlib
import json
import logging
import wave
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyrage
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from linetap.firmware import manifest as mf
from linetap.firmware.clock import Clock, SystemClock
from linetap.firmware.errors import AuthError, ConfigError, SyncError
from linetap.firmware.keys import public_key_b64, public_key_from_b64
from linetap.sync import wire
from linetap.sync.central.config import RetentionSection
from linetap.sync.central.index import INDEX_FILE, Index, SqliteIndex, UnknownRecording
from linetap.sync.central.ingest import OBJECTS_DIR, Ingest
from linetap.sync.central.keys import load_identity, load_operator_key, operator_public_key
from linetap.sync.central.store import FileStore, ObjectMissing, ObjectStore, segment_key, tombstone_key

logger = logging.getLogger(__name__)

TOMBSTONE_FORMAT = "linetap-tombstone/1"
DAY_MS = 86_400_000


class IntegrityError(AuthError):
    """A stored object does not match what its manifest or index row says (altered or lost)."""


class OnHold(SyncError, PermissionError):
    """The recording is on legal hold: it may not be erased."""


@dataclass(frozen=True)
class Exported:
    path: Path
    segments: int
    frames: int | None  # decoded stereo frames (WAV only)
    rate: int


@dataclass
class ImportResult:
    """What ``import`` did with one recording folder of a box."""

    recording_id: str
    status: str  # stored, rejected, retry, skipped
    code: str | None = None
    reason: str | None = None


@dataclass
class DeviceReport:
    device_id: str
    recordings: int = 0
    erased: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "ok": self.ok, "recordings": self.recordings,
                "erased": self.erased, "missing": self.missing, "problems": self.problems}


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

    def export(self, recording_id: str, out: Path) -> Exported:
        """Check the recording's hashes and signature, decrypt and write it as ``.ogg`` or ``.wav``."""
        out = Path(out)
        if out.suffix.lower() not in (".ogg", ".wav"):
            raise ConfigError(f"export file {out} must end in .ogg (the recorded Opus stream) or .wav (decoded)")
        if not out.parent.is_dir():
            raise ConfigError(f"export folder {out.parent} does not exist; create it or give -o a path "
                              "in an existing folder")
        row = self._recording(recording_id)
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
            out.write_bytes(b"".join(plaintexts))
        else:
            from linetap.firmware.encoder import segments_to_pcm  # PyAV: only the WAV export needs it

            pcm = segments_to_pcm(plaintexts, rate)
            with wave.open(str(out), "wb") as wav:
                wav.setnchannels(2)
                wav.setsampwidth(2)
                wav.setframerate(rate)
                wav.writeframes(pcm.tobytes())
            frames = len(pcm)
        logger.info("recording exported recording=%s segments=%d file=%s", recording_id, len(plaintexts), out)
        return Exported(out, len(plaintexts), frames, rate)

    # -- verify --

    def verify(self, recording_id: str | None = None) -> list[DeviceReport]:
        """Re-hash and re-verify stored recordings, per device; one recording's device with ``recording_id``."""
        if recording_id is not None:
            row = self._recording(recording_id)
            return [self._verify_device(row["device_id"], row)]
        devices = sorted({d["device_id"] for d in self.index.devices()})
        return [self._verify_device(device, None) for device in devices]

    def _verify_device(self, device_id: str, only: dict[str, Any] | None) -> DeviceReport:
        report = DeviceReport(device_id)
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
        """Feed a box's data dir (``<dir>/spool/<recording>/``) through the ingest checks, oldest first."""
        spool = Path(box_data_dir) / "spool"
        if not spool.is_dir():
            raise ConfigError(f"{box_data_dir} has no spool/ folder; pass the box's data dir "
                              "(the SD card's /var/lib/linetap)")
        owned = ingest is None
        ingest = ingest or Ingest(self.data_dir, clock=self._clock, store=self.store, index=self.index)
        try:
            found = []
            results = []
            for folder in sorted(p for p in spool.iterdir() if p.is_dir()):
                manifest_path = folder / "manifest.json"
                if not manifest_path.is_file():
                    results.append(ImportResult(folder.name, "skipped", None, "no manifest.json: the call "
                                                "was still open or was lost on the box"))
                    continue
                data = manifest_path.read_bytes()
                try:
                    summary = json.loads(data)
                    device, seq = summary["device_id"], summary["seq"]
                    segments = [entry["index"] for entry in summary["segments"]]
                except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
                    results.append(ImportResult(folder.name, "rejected", "malformed",
                                                f"manifest.json is not a manifest: {e}"))
                    continue
                found.append((seq if isinstance(seq, int) else 0, folder, device, segments, data))
            for _, folder, device, segments, data in sorted(found, key=lambda item: item[0]):
                results.append(self._import_recording(ingest, folder, device, segments, data))
            return results
        finally:
            if owned:
                ingest.close()

    def _import_recording(self, ingest: Ingest, folder: Path, device: str, segments: Iterable[int],
                          manifest: bytes) -> ImportResult:
        rid = folder.name
        try:
            for index in segments:
                path = folder / f"{index:06d}.age"
                if path.is_file():
                    self._feed(ingest, wire.split(device, rid, wire.ObjectRef.segment(index), path.read_bytes()))
            final = self._feed(ingest, wire.split(device, rid, wire.ObjectRef.manifest(), manifest))
        except wire.WireError as e:
            return ImportResult(rid, "rejected", "malformed", str(e))
        if final is None:
            return ImportResult(rid, "rejected", "malformed", "no answer for the manifest")
        return ImportResult(rid, final.status, final.code, final.reason)

    @staticmethod
    def _feed(ingest: Ingest, parts: list[wire.Part]) -> wire.Ack | None:
        last = None
        for part in parts:
            for ack in ingest.receive(part):
                if ack.part is None and ack.object == part.object:
                    last = ack
        return last

    # -- holds, erasure, retention --

    def set_hold(self, recording_id: str, hold: bool, reason: str | None = None) -> None:
        self.index.set_hold(recording_id, hold, reason)
        logger.info("legal hold %s recording=%s", "set" if hold else "cleared", recording_id)

    def erase(self, recording_id: str, reason: str) -> str:
        """Erase a recording securely, leaving a signed tombstone; returns the tombstone's key."""
        if not reason.strip():
            raise ConfigError("erase needs a --reason (it is kept in the signed tombstone)")
        row = self._recording(recording_id)
        if row["hold"]:
            raise OnHold(f"recording {recording_id} is on legal hold ({row['hold_reason'] or 'no reason given'}); "
                         f"clear it first with `linetap-central hold clear {recording_id}`")
        device = row["device_id"]
        key = tombstone_key(device, recording_id)
        if row["erased_ms"] is None:
            operator = load_operator_key(self.data_dir)
            now = self._now_ms()
            body = {"format": TOMBSTONE_FORMAT, "device_id": device, "recording_id": recording_id,
                    "seq": row["seq"], "manifest_sha256": row["manifest_sha256"], "prev": row["prev"],
                    "erased_wall_ms": now, "reason": reason, "segments": row["segments"]}
            self.store.put(key, mf.sign(body, operator))
            self.index.mark_erased(recording_id, now, reason, key)
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

    def retention_run(self, retention: RetentionSection, *, dry_run: bool = False) -> tuple[list[str], list[str]]:
        """Erase what retention makes due; returns (erased or due ids, held ids)."""
        due, held = self.retention_due(retention)
        if not dry_run:
            for row in due:
                category = "flagged" if row["flagged"] else "default"
                self.erase(row["recording_id"], f"retention: {category} {retention.days_for(row['flagged'])} days")
        return [r["recording_id"] for r in due], [r["recording_id"] for r in held]

    # -- helpers --

    def _recording(self, recording_id: str) -> dict[str, Any]:
        row = self.index.recording(recording_id)
        if row is None:
            raise UnknownRecording(f"recording {recording_id} is not in the index of {self.data_dir}; "
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
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AuthError(f"tombstone is not JSON: {e}") from e
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
