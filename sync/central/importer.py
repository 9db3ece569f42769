"""Import: a box's data dir brought in by hand (its SD card) fed through the same checks as MQTT.

Nothing on the card is trusted (:mod:`linetap.sync.central.card`): no link is
followed, no file is read past the most it may hold. A recording's segments
are read only once its manifest has verified with the device's enrolled key,
and handed to ingest only when every one the manifest lists is there with its
sha256 and size; a recording that fails is refused with the reason and leaves
nothing stored, so the box's own upload of it, or a later import of a good
copy, is stored as if this one never happened. One bad recording never stops
the others.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from linetap.firmware import manifest as mf
from linetap.firmware import untrusted
from linetap.firmware.errors import ConfigError
from linetap.firmware.keys import public_key_from_b64
from linetap.sync import wire
from linetap.sync.central import card
from linetap.sync.central.ingest import MAX_OBJECT, Ingest
from linetap.sync.central.progress import Progress
from linetap.sync.central.stored import Stored

# At most this many missing segments are named in a refusal.
SHOWN_MISSING = 10


@dataclass
class ImportResult:
    """What ``import`` did with one recording folder of a box."""

    recording_id: str
    status: str  # stored, rejected, retry, skipped
    code: str | None = None
    reason: str | None = None


def import_dir(stored: Stored, box_data_dir: Path, *, ingest: Ingest | None = None,
               progress: Progress | None = None) -> list[ImportResult]:
    """Feed a box's data dir (``<dir>/spool/<recording>/``) through the ingest checks, oldest first.

    ``progress`` counts recordings and the bytes their manifests list (a large card takes a while).
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
    ingest = ingest or Ingest(stored.data_dir, clock=stored.clock, store=stored.store, index=stored.index,
                               config=stored.config)
    try:
        results, found = _manifests(spool_fd, spool)
        if progress is not None:
            progress.total(len(found), sum(size for *_, size in found))
        for device, _, folder, data, size in sorted(found, key=lambda item: (item[0], item[1])):
            results.append(_import_recording(stored, ingest, spool_fd, folder, device, data))
            if progress is not None:
                progress.advance(1, size)
        if progress is not None:
            progress.finish()
        return results
    finally:
        os.close(spool_fd)
        if owned:
            ingest.close()


def _manifests(spool_fd: int, spool: Path) -> tuple[list[ImportResult], list[tuple[str, int, Path, bytes, int]]]:
    """(folders skipped or refused, (device, seq, folder, manifest bytes, bytes listed) of the others)."""
    results: list[ImportResult] = []
    found: list[tuple[str, int, Path, bytes, int]] = []
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
            data = _read_from(spool_fd, folder, lambda fd: card.read_file(
                fd, folder / card.MANIFEST_FILE, mf.MAX_BYTES))
            device, seq, size = _manifest_summary(data, folder / card.MANIFEST_FILE)
        except FileNotFoundError:
            results.append(ImportResult(name, "skipped", None, f"no {card.MANIFEST_FILE}: the call "
                                        "was still open or was lost on the box"))
            continue
        except card.CardRefused as e:
            results.append(ImportResult(name, "rejected", e.code, str(e)))
            continue
        found.append((device, seq, folder, data, size))
    return results, found


def _import_recording(stored: Stored, ingest: Ingest, spool_fd: int, folder: Path, device: str,
                      manifest: bytes) -> ImportResult:
    rid = folder.name
    key_b64 = stored.index.device_key(device)
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
        refused = _missing(spool_fd, folder, listed)
        if refused is not None:
            return refused
        for entry in listed:  # read again: what is stored is what was checked just now
            data = _read_from(spool_fd, folder, lambda fd: _read_segment(fd, folder, entry))
            _feed(ingest, wire.split(device, rid, wire.ObjectRef.segment(entry[0]), data))
        final = _feed(ingest, wire.split(device, rid, wire.ObjectRef.manifest(), manifest))
    except card.CardRefused as e:
        return ImportResult(rid, "rejected", e.code, f"{e}; nothing of this recording was stored")
    except wire.WireError as e:
        return ImportResult(rid, "rejected", "malformed", str(e))
    if final is None:
        return ImportResult(rid, "rejected", "malformed", "no answer for the manifest")
    if final.status == "stored":
        # A broken link is stored as evidence (refusing it would lose the recording); say so here too.
        breaks = [p["detail"] for p in stored.index.problems(device)
                  if p["kind"] == "chain-break" and p["recording_id"] == rid]
        if breaks:
            return ImportResult(rid, "stored", "chain-break",
                                f"stored as evidence, but its chain link is broken: {breaks[-1]}; "
                                "`linetap-central verify` reports it until the chain is explained")
    return ImportResult(rid, final.status, final.code, final.reason)


def _missing(spool_fd: int, folder: Path, listed: list[tuple[int, str, int]]) -> ImportResult | None:
    """The refusal when segments the manifest lists are not on the card; CardRefused if one differs."""
    missing = _read_from(spool_fd, folder, lambda fd: _check_segments(fd, folder, listed))
    if not missing:
        return None
    shown = ", ".join(card.segment_file(i) for i in missing[:SHOWN_MISSING])
    return ImportResult(folder.name, "rejected", "missing-segments",
                        f"{len(missing)} of the {len(listed)} segments its manifest lists are not in "
                        f"{folder} ({shown}{', ...' if len(missing) > SHOWN_MISSING else ''}); nothing of "
                        "this recording was stored: the box uploads it, or import a complete copy")


def _read_from(spool_fd: int, folder: Path, read):
    """``read(fd)`` on recording ``folder`` opened inside the spool; never through a link."""
    fd = card.open_folder(folder, dir_fd=spool_fd)
    try:
        return read(fd)
    finally:
        os.close(fd)


def _feed(ingest: Ingest, parts: list[wire.Part]) -> wire.Ack | None:
    last = None
    for part in parts:
        for ack in ingest.receive(part):
            if ack.part is None and ack.object == part.object:
                last = ack
    return last


def _manifest_summary(data: bytes, shown: Path) -> tuple[str, int, int]:
    """(device, seq, bytes) of a manifest read from a card, to order the import and show its progress
    (bytes: the manifest's and the segments' it lists, unchecked yet); CardRefused without device or seq."""
    try:
        value = untrusted.loads(data, what=str(shown), max_bytes=mf.MAX_BYTES)
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
    segments = value.get("segments")
    sizes = [e.get("bytes") for e in segments if isinstance(e, dict)] if isinstance(segments, list) else []
    return device, seq, len(data) + sum(s for s in sizes if isinstance(s, int) and 0 < s <= MAX_OBJECT)


def _listed_segments(manifest: dict[str, Any], rid: str, shown: Path) -> list[tuple[int, str, int]]:
    """(index, sha256, bytes) of each segment a verified manifest lists; CardRefused if one is not well typed."""
    if manifest["recording_id"] != rid:
        raise card.CardRefused(f"names recording {_short(manifest['recording_id'])} but lies in folder {rid}")
    if not isinstance(manifest["prev"], str) or not wire.SHA256.fullmatch(manifest["prev"]):
        raise card.CardRefused(f"prev {_short(manifest['prev'])} is not a sha256 (64 lowercase hex digits)")
    listed, seen = [], set()
    for n, entry in enumerate(manifest["segments"]):
        index, sha256, size = ((entry.get("index"), entry.get("sha256"), entry.get("bytes"))
                               if isinstance(entry, dict) else (None, None, None))
        if not (isinstance(index, int) and not isinstance(index, bool) and 0 <= index < wire.MAX_SEGMENTS
                and isinstance(sha256, str) and wire.SHA256.fullmatch(sha256)
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
