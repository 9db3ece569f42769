"""Evidence bundle: one recording packed so a third party can check it without trusting the store.

:func:`make_bundle` reads the recording back checked (:class:`Stored`),
decrypts it to WAV with the store's own export (:mod:`export`), and streams
a zip (layout: :mod:`~linetap.sync.central.evidence_format`) to a private
file written like an export (0600, complete or absent, never through a
link, replaced only with ``force``): the box's original bytes, the chain of
later manifests up to the chain's head, the store's signed receipt, the
public keys, the recording's access-log entries, a report with the clock
comparison (:mod:`~linetap.sync.central.evidence_clock`), ``VERIFY.md``
(:mod:`~linetap.sync.central.evidence_doc`) and ``SHA256SUMS``. Making a
bundle is itself logged in the access log (action ``evidence``) before it is
packed, so the bundle shows its own making.

The head: when a trusted timestamp covers the recording
(:func:`~linetap.sync.central.timestamps.covering_stamp`: the first stamp
whose commitment names a head of the device that links back to it), that
stamped head, and the token, the commitment it stamps and the TSA's
certificates go in ``timestamp/``; otherwise the device's newest manifest
that links back to it, and the bundle says it is not timestamped.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from linetap.firmware import manifest as mf
from linetap.firmware.errors import ConfigError, SyncError
from linetap.firmware.keys import public_key_from_b64, store_key_id
from linetap.firmware.spool.layout import segment_name
from linetap.sync.central import evidence_format as ef
from linetap.firmware.schema import FileRefused, read_bounded
from linetap.sync.central import timestamps as ts
from linetap.sync.central.accesslog import Access
from linetap.sync.central.config import TimestampsSection
from linetap.sync.central.evidence_clock import clock_report
from linetap.sync.central.evidence_doc import verify_text
from linetap.sync.central.export import ExportExists, export, private_output
from linetap.sync.central.index import UnknownRecording
from linetap.sync.central.keys import load_store_key, operator_public_key
from linetap.sync.central.stored import Stored
from linetap.sync.central.tsa import MAX_CERT_BYTES, trust_files

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
Row = dict[str, Any]


@dataclass(frozen=True)
class Made:
    path: Path
    members: int
    bytes: int
    chain_from: int
    chain_to: int
    timestamped: bool
    warnings: tuple[str, ...]


def pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def make_bundle(stored: Stored, recording_id: str, out: Path, *, device_id: str | None = None,
                force: bool = False, max_skew_ms: int, actor: str, origin: str = "cli",
                timestamps: TimestampsSection | None = None) -> Made:
    """Write the evidence bundle of one recording to ``out`` (a ``.zip``); returns what went in.

    ``timestamps`` is the store's ``[timestamps]`` config: its certificate files go in the bundle beside
    the token of the stamp that covers the recording.
    """
    out = Path(out)
    _check_target(out, force)
    row = stored.recording(recording_id, device_id)
    if row["erased_ms"] is not None:
        raise UnknownRecording(f"recording {recording_id} was erased ({row['erase_reason']}); its tombstone "
                               "is all that is left, and `linetap-central verify` checks it")
    manifest_bytes = stored.store.get(row["manifest_key"])
    manifest = stored.checked_manifest(row)
    logged = stored.index.receipt(row["device_id"], recording_id)
    if logged is None:
        raise SyncError(f"recording {recording_id} has no delivery receipt in the store's log, so the bundle "
                        "could not prove when it was stored; `linetap-central serve` signs missing receipts at "
                        "its start, `linetap-central verify` reports them")
    tsa = trust_files(stored.data_dir, timestamps) if timestamps is not None else None
    chain, head, stamp = _chain(stored, row, tsa)
    stored.index.log_access(Access(actor, "evidence", origin, row["device_id"], recording_id,
                                   detail=f"bundle {out.name}"), stored.now_ms())
    report = _report(stored, row, manifest, logged, head, stamp, max_skew_ms, actor)
    small = _small_members(stored, row, manifest_bytes, logged, chain, report)
    if stamp is not None and tsa is not None:
        small |= _stamp_members(stamp, tsa)
    with tempfile.TemporaryDirectory(prefix=".evidence-", dir=out.parent) as work:
        audio = Path(work) / "call.wav"
        export(stored, recording_id, audio, device_id=row["device_id"])
        size, members = _pack(stored, row, manifest, small, audio, out, force, report["made_ms"])
    made = Made(out, members, size, row["seq"], head["seq"], stamp is not None,
                tuple(w["kind"] for w in report["clock"]["warnings"]))
    logger.info("evidence bundle written recording=%s device=%s file=%s bytes=%d", recording_id,
                row["device_id"], out, size)
    return made


def _check_target(out: Path, force: bool) -> None:
    if out.suffix.lower() != ".zip":
        raise ConfigError(f"evidence bundle {out} must end in .zip")
    if not out.parent.is_dir():
        raise ConfigError(f"folder {out.parent} does not exist; create it or give -o a path in an existing folder")
    if not force and os.path.lexists(out):
        raise ExportExists(f"evidence bundle {out} already exists; pass --force to replace it, or choose "
                           "another name")


def _chain(stored: Stored, row: Row, tsa: dict[str, Path] | None) -> tuple[list[tuple[str, bytes]], Row, Row | None]:
    """(chain members after this recording up to the head, the head, the stamp that covers it or None).

    The head is the nearest stamped head when a stamp covers the recording and the TSA's certificates are
    configured (a token is of no use without them), else the newest manifest that links back to it.
    """
    covering = ts.covering_stamp(stored.index, row["device_id"], row["seq"]) if tsa is not None else None
    if covering is not None:
        rows = covering.chain[1:]
    else:
        rows, want = [], row["manifest_sha256"]
        by_seq: dict[int, list[Row]] = {}
        for later in stored.index.device_recordings(row["device_id"]):
            by_seq.setdefault(later["seq"], []).append(later)
        while (after := next((r for r in by_seq.get(row["seq"] + len(rows) + 1, []) if r["prev"] == want),
                             None)) is not None:
            rows.append(after)
            want = after["manifest_sha256"]
    members = [(ef.chain_name(r["seq"], tombstone=True), stored.store.get(r["tombstone_key"]))
               if r["erased_ms"] is not None else (ef.chain_name(r["seq"]), stored.store.get(r["manifest_key"]))
               for r in rows]
    last = rows[-1] if rows else row
    head = {"seq": last["seq"], "sha256": last["manifest_sha256"], "timestamped": covering is not None}
    return members, head, None if covering is None else covering.stamp


def _report(stored: Stored, row: Row, manifest: Row, logged: Row, head: Row, stamp: Row | None,
            max_skew_ms: int, actor: str) -> dict[str, Any]:
    now = stored.now_ms()
    newest = max(r["seq"] for r in stored.index.device_recordings(row["device_id"]))
    return {
        "format": ef.FORMAT, "device_id": row["device_id"], "recording_id": row["recording_id"], "seq": row["seq"],
        "manifest_sha256": row["manifest_sha256"], "segments": len(manifest["segments"]), "made_ms": now,
        "made_by": actor,
        "chain": {"from_seq": row["seq"], "head_seq": head["seq"], "head_sha256": head["sha256"],
                  "head_is": "timestamped" if head["timestamped"] else "newest" if head["seq"] == newest
                  else f"last before a gap (the store holds up to seq {newest})"},
        "receipt": {"stored_ms": logged["stored_ms"], "key_id": logged["key_id"], "log_position": logged["pos"]},
        "timestamp": None if stamp is None else {
            "pos": stamp["pos"], "tsa": stamp["tsa"], "gen_time_ms": stamp["gen_time_ms"],
            "digest_sha256": stamp["digest_sha256"]},
        "clock": clock_report(manifest, logged["stored_ms"], max_skew_ms)}


def _small_members(stored: Stored, row: dict[str, Any], manifest_bytes: bytes, logged: dict[str, Any],
                   chain: list[tuple[str, bytes]], report: dict[str, Any]) -> dict[str, bytes]:
    store_public = load_store_key(stored.data_dir).public_key()
    box_public = public_key_from_b64(stored.index.device_key(row["device_id"]) or "")
    members = {ef.MANIFEST: manifest_bytes, ef.RECEIPT: logged["data"], **dict(chain),
               ef.BOX_KEY: pem(box_public), ef.STORE_KEY: pem(store_public)}
    if any(name.endswith(".tombstone.json") for name, _ in chain):
        members[ef.OPERATOR_KEY] = pem(operator_public_key(stored.data_dir))
    entries = stored.index.access_log(row["device_id"], row["recording_id"])
    members[ef.ACCESS_LOG] = b"".join(mf.canonical(e) + b"\n" for e in entries)
    members[ef.REPORT] = mf.canonical(report) + b"\n"
    members[ef.VERIFY] = verify_text(report, store_key_id(store_public), operator=ef.OPERATOR_KEY in members
                                     ).encode("utf-8")
    return members


def _stamp_members(stamp: Row, tsa: dict[str, Path]) -> dict[str, bytes]:
    """The stamp's token, commitment and TSA certificate as stored, and the TSA's CA as configured."""
    members = {ef.TOKEN: bytes(stamp["token"]), ef.COMMITMENT: bytes(stamp["commitment"]),
               ef.TSA_CERT: bytes(stamp["tsa_cert"])}
    try:
        members[ef.TSA_CA] = read_bounded(tsa["ca_file"], max_bytes=MAX_CERT_BYTES)
    except (OSError, FileRefused) as e:
        raise ConfigError(f"[timestamps] ca_file {tsa['ca_file']} cannot be read ({e}); the bundle needs the "
                          "TSA's CA certificate beside its token") from None
    return members


def _pack(stored: Stored, row: dict[str, Any], manifest: dict[str, Any], small: dict[str, bytes], audio: Path,
          out: Path, force: bool, made_ms: int) -> tuple[int, int]:
    """Stream every member into the zip at ``out``, SHA256SUMS last; returns (the file's size, members)."""
    when = time.gmtime(made_ms // 1000)[:6]
    digests: dict[str, str] = {}

    def info(name: str, size: int) -> zipfile.ZipInfo:
        member = zipfile.ZipInfo(name, date_time=when)
        member.external_attr = 0o644 << 16
        member.file_size = size
        return member

    def put(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
        zf.writestr(info(name, len(data)), data)
        digests[name] = hashlib.sha256(data).hexdigest()

    with private_output(out, replace=force) as file:
        with zipfile.ZipFile(file, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            digest = hashlib.sha256()
            with audio.open("rb") as source, zf.open(info(ef.AUDIO, audio.stat().st_size), "w",
                                                     force_zip64=True) as target:
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                    target.write(chunk)
            digests[ef.AUDIO] = digest.hexdigest()
            for entry in manifest["segments"]:
                put(zf, ef.ORIGINAL + segment_name(entry["index"]), stored.checked_segment(row, entry))
            for name in sorted(small):
                put(zf, name, small[name])
            zf.writestr(info(ef.SUMS, 0), ef.sums_text(digests).encode("ascii"))
        file.flush()
        return file.tell(), len(digests) + 1
