"""The ingest core: upload parts in, durable objects and an indexed recording out, acks back.

Transport-free: the MQTT worker (and ``linetap-central import``) hand it one
validated :class:`~linetap.sync.wire.Part` at a time and publish the
:class:`~linetap.sync.wire.Ack` list it returns. ``receive`` may be called
from many threads and from several processes on one data dir at once, and
the parts of one object may reach different callers. Every step is
idempotent and every shared decision is taken in the index:

1. the device in the topic must be enrolled (else ``not-enrolled``);
2. a part of a multi-part object is staged durably (:mod:`~linetap.sync.central.staging`:
   in the index when it is shared by several hosts, else under
   ``staging/<device>/<recording>/<object>/<sha256>/<part>``) and acknowledged
   per part; whoever stages the last missing part (any worker on any host:
   each counts the parts after its own is durable) joins and checks the whole object;
3. an object is *claimed* in the index (first sha256 wins; a different one
   later is ``conflict``), written to the object store, marked stored, and
   acknowledged object-level;
4. a manifest is checked against the enrolled key and every stored segment
   before it is stored; when segments are still missing (another worker is
   storing the last one right now, or the box has not sent it) the manifest
   waits in staging and is finished by the worker that stores the last
   segment. A broken chain link is stored and recorded as a problem
   (refusing it would lose evidence), and ``verify`` reports it;
5. a stored and verified manifest's recording has every object locked
   (``[store] object_lock``: retained until its start plus its ``[retention]``
   category's days, :mod:`~linetap.sync.central.writeonce`), then is indexed
   and its delivery receipt (:mod:`linetap.firmware.receipt`) signed with the
   store key and appended to the receipt log in the same transaction; the
   manifest's ``stored`` ack carries it. A manifest sent again gets the
   receipt already in the log, never a new one.

Order, so nothing is acknowledged before it is durable: an object is written
(the store's put returns once it is durable) before its index row is marked
stored and before its ack; a recording's objects are all stored and locked
before its index row and receipt are committed, and that commit comes before
the manifest's ack. A crash in between leaves work the resend finishes (a
lock is never shortened, so locking again is harmless).

Everything is keyed by (device, recording): recording ids are unique per
device only, and a box may reuse another's id without touching it.

Quota. What a device holds here that no indexed manifest vouches for (staged
parts, manifests waiting for segments, stored objects no manifest lists) is
bounded by ``[ingest] device_quota_bytes``. A part that would pass it is
answered ``retry`` / ``store-unavailable`` with the quota in the reason: the
box backs off and sends it again, which succeeds once its recordings complete
or stale staging is aged out (:meth:`Ingest.age_out`, from ``retention run``).
Not ``rejected``: that stops the recording on the box until it restarts, and
an honest box at its quota only has to wait. A manifest may pass the quota by
one manifest's size, so that the manifest completing a recording, which frees
what its segments hold, always gets in.

Faults: bad input is a ``rejected`` ack with a code; a full disk or an
unavailable index or store is a ``retry`` ack (``store-unavailable``) with
nothing half-written. Only a programming error raises.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from pathlib import Path
from typing import Any

import pyrage
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from linetap.firmware import manifest as mf
from linetap.firmware import receipt
from linetap.firmware import untrusted
from linetap.firmware.clock import Clock, SystemClock
from linetap.firmware.errors import ConfigError, SyncError
from linetap.firmware.keys import public_key_from_b64
from linetap.sync import wire
from linetap.sync.central.config import DAY_MS, CentralConfig, IndexSection, IngestSection, load_config
from linetap.sync.central.index import Index
from linetap.sync.central.indexes import open_index
from linetap.sync.central.keys import load_identity, load_store_key
from linetap.sync.central.receiptlog import Signer, as_receipt
from linetap.sync.central.rowfields import int_at, text, withheld
from linetap.sync.central.staging import AgedOut, Staging
from linetap.sync.central.store import (DurableFiles, ObjectStore, StoreUnavailable, manifest_key, open_store,
                                        segment_key)
from linetap.sync.central.writeonce import lock_recording

logger = logging.getLogger(__name__)

# The most one object may be on the wire: anything a manifest lists beyond it is garbage.
MAX_OBJECT = wire.MAX_PARTS * wire.PART_BYTES
# The sealed caller id: age header and a number and name of a few dozen bytes each.
MAX_SEALED_CALLER = 4096
MAX_CALLER_JSON = 1024
# Rejections that mean tampering or a broken box, not a race: kept for `verify` to report.
RECORDED_CODES = ("wrong-device", "hash-mismatch", "bad-signature", "conflict")


class Ingest:
    """Turns upload parts into stored objects and indexed recordings; thread- and process-safe.

    ``config`` (default: ``<data_dir>/central.toml`` when there is one) names the
    store (``[store]``, opened here, in the caller's process), the index
    (``[index]``; ``index_config`` overrides it), the limits (``[ingest]``;
    ``limits`` overrides) and the object lock (``[store]``, ``[retention]``).
    ``store`` and ``index`` replace what the config names; ``files`` is the
    durable writer of the staging and a file store (tests pass one that fails
    like a full disk). ``store_key`` signs the delivery receipts; without it
    ``keys/store.key`` is loaded here, once per process, and a store without
    one is refused with the ``keys init`` hint.
    """

    def __init__(self, data_dir: Path, *, clock: Clock | None = None, store: ObjectStore | None = None,
                 index: Index | None = None, files: DurableFiles | None = None,
                 limits: IngestSection | None = None, store_key: Ed25519PrivateKey | None = None,
                 index_config: IndexSection | None = None, config: CentralConfig | None = None) -> None:
        self.data_dir = Path(data_dir)
        self._store_key = store_key if store_key is not None else load_store_key(self.data_dir)
        self.config = config or load_config(None, self.data_dir)
        self.limits = limits or self.config.ingest
        self._clock = clock or SystemClock()
        self._files = files or DurableFiles()
        self.store: ObjectStore = store or open_store(self.config, self.data_dir, files=self._files)
        self._owns_index = index is None
        self.index: Index = index or open_index(index_config or self.config.index, self.data_dir)
        self._staging = Staging(self.data_dir, self.index, self._files)
        self._identity: pyrage.x25519.Identity | None = None

    def close(self) -> None:
        if self._owns_index:
            self.index.close()

    def __enter__(self) -> Ingest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the one entry point --

    def receive(self, part: wire.Part) -> list[wire.Ack]:
        """Take one upload part; returns the acks to publish on ``wire.ack_topic(device, recording)``."""
        try:
            _check_part(part)
        except wire.WireError as e:
            return [_ack(part, "rejected", "malformed", str(e))]
        try:
            with self.index.pinned():  # PostgreSQL: one pooled connection for the whole message
                return self._receive(part)
        except StoreUnavailable as e:
            logger.error("ingest cannot store device=%s recording=%s object=%s: %s",
                         part.device_id, part.recording_id, part.object, e)
            return [_ack(part, "retry", "store-unavailable", str(e), per_part=part.parts > 1)]
        except OSError as e:
            logger.error("ingest cannot store device=%s recording=%s object=%s errno=%s: %s",
                         part.device_id, part.recording_id, part.object, e.errno, e.strerror)
            return [_ack(part, "retry", "store-unavailable",
                         f"central store cannot write ({e.strerror}); it will accept a resend",
                         per_part=part.parts > 1)]

    def _receive(self, part: wire.Part) -> list[wire.Ack]:
        key_b64 = self.index.device_key(part.device_id)
        if key_b64 is None:
            return [_ack(part, "rejected", "not-enrolled",
                         f"device {part.device_id} is not enrolled at the central store; "
                         f"run `linetap-central enroll {part.device_id} --signing-key ...`")]
        if part.object.kind == "manifest" and part.size > mf.MAX_BYTES:
            return [_ack(part, "rejected", "too-large",
                         f"manifest of {part.size} bytes is over {mf.MAX_BYTES}")]
        name = str(part.object)
        row = self.index.object(part.device_id, part.recording_id, name)
        if row is not None and row["sha256"] != part.sha256:
            return [self._refuse(part, "conflict", f"{name} is already stored with sha256 {row['sha256'][:16]}...")]
        if row is not None and row["stored_ms"] is not None:
            if part.object.kind == "seg":
                return self._stored(part)
            return self._finish_manifest(part, self.store.get(row["object_key"]), key_b64)
        recording = self.index.recording(part.recording_id, part.device_id)
        if recording is not None and recording["erased_ms"] is not None:
            return self._stored(part)  # stored once, then erased by an operator: nothing to keep
        if part.parts > 1 or (row is None and part.object.kind == "seg"):
            refusal = self._over_quota(part, len(part.payload) if part.parts > 1 else part.size)
            if refusal is not None:
                return [refusal]

        if part.parts == 1:
            data = part.payload
            if hashlib.sha256(data).hexdigest() != part.sha256:
                return [self._refuse(part, "hash-mismatch", f"{name}'s bytes do not hash to the announced sha256")]
            acks: list[wire.Ack] = []
        else:
            self._staging.put_part(part, self._now_ms())
            acks = [_ack(part, "stored", per_part=True)]
            joined = self.index.object(part.device_id, part.recording_id, name)
            if joined is not None and joined["stored_ms"] is not None:
                # Joined by another worker while this part was being staged.
                self._staging.drop(part)
                return acks + [_ack(part, "stored")]
            assembled = self._staging.assemble(part)
            if assembled is None:
                return acks
            if isinstance(assembled, wire.WireError):
                self._staging.drop(part)
                return acks + [self._refuse(part, "hash-mismatch", str(assembled))]
            data = assembled

        if part.object.kind == "manifest":
            result = self._finish_manifest(part, data, key_b64)
        else:
            result = self._store_segment(part, data, key_b64)
        if part.parts > 1:
            self._staging.drop(part)
        return acks + result

    def _over_quota(self, part: wire.Part, incoming: int) -> wire.Ack | None:
        """A ``retry`` when ``incoming`` more bytes would pass the device's quota, else None."""
        quota = self.limits.device_quota_bytes
        if quota == 0:
            return None
        limit = quota + (mf.MAX_BYTES if part.object.kind == "manifest" else 0)
        held = self.index.held_bytes(part.device_id)
        if held + incoming <= limit:
            return None
        reason = (f"device {part.device_id} holds {held} bytes at the central store that no stored manifest "
                  f"vouches for (staged parts, waiting manifests, segments without a manifest); {incoming} "
                  f"more would pass its quota of {quota} bytes ([ingest] device_quota_bytes). Send the "
                  "manifests of the recordings under way; the operator's `linetap-central retention run` "
                  f"removes staging older than {self.limits.stale_staging_days} days")
        logger.warning("upload over quota device=%s recording=%s object=%s held=%d incoming=%d quota=%d",
                       part.device_id, part.recording_id, part.object, held, incoming, quota)
        return _ack(part, "retry", "store-unavailable", reason, per_part=part.parts > 1)

    # -- segments --

    def _store_segment(self, part: wire.Part, data: bytes, key_b64: str) -> list[wire.Ack]:
        claimed = self._store_object(part, segment_key(part.device_id, part.recording_id, part.object.index), data)
        if claimed is not None:
            return [claimed]
        acks = [_ack(part, "stored")]
        waiting = self._staging.pending(part.device_id, part.recording_id)
        if waiting is not None:
            ref = wire.split(part.device_id, part.recording_id, wire.ObjectRef.manifest(), waiting)[0]
            acks += [a for a in self._finish_manifest(ref, waiting, key_b64) if a.status == "stored"]
        return acks

    def _store_object(self, part: wire.Part, key: str, data: bytes) -> wire.Ack | None:
        """Claim, write and mark one object; returns a refusal, or None once it is stored."""
        name = str(part.object)
        now = self._now_ms()
        row = self.index.claim_object(part.device_id, part.recording_id, name, part.sha256, part.size, key, now)
        if row["sha256"] != part.sha256:
            return self._refuse(part, "conflict", f"{name} is already stored with sha256 {row['sha256'][:16]}...")
        if row["stored_ms"] is not None:
            return None
        self.store.put(key, data)
        self.index.mark_stored(part.device_id, part.recording_id, name, now)
        logger.debug("object stored device=%s recording=%s object=%s bytes=%d",
                     part.device_id, part.recording_id, name, len(data))
        return None

    # -- manifests --

    def _finish_manifest(self, part: wire.Part, data: bytes, key_b64: str) -> list[wire.Ack]:
        device, rid = part.device_id, part.recording_id
        try:
            manifest = mf.verify(data, public_key_from_b64(key_b64))
        except mf.BadSignature as e:
            return [self._refuse(part, "bad-signature", str(e))]
        except (mf.ManifestError, ConfigError) as e:
            return [_ack(part, "rejected", "malformed", str(e))]
        if manifest["device_id"] != device:
            return [self._refuse(part, "wrong-device", f"manifest names device {manifest['device_id']!r}, "
                                                       f"the topic device {device!r}")]
        if manifest["recording_id"] != rid:
            return [_ack(part, "rejected", "malformed",
                         f"manifest names recording {manifest['recording_id']!r}, the topic {rid}")]
        listed = _segment_entries(manifest)
        if listed is None:
            return [_ack(part, "rejected", "malformed", "manifest 'segments' entries lack index/sha256/bytes")]
        missing, wrong = self._compare_segments(device, rid, listed)
        if missing and not wrong and self._over_quota(part, len(data)) is None:
            # Whoever stores the last segment finishes the manifest; checking again after the
            # pending copy is durable closes the race with a worker storing it right now.
            # (Over quota, no copy waits: the box sends the manifest again after the segments.)
            self._staging.put_pending(device, rid, data, self._now_ms())
            missing, wrong = self._compare_segments(device, rid, listed)
        if wrong:
            return [self._refuse(part, "hash-mismatch", f"stored segments {wrong[:20]} differ from the "
                                                        "sha256/size the manifest lists")]
        if missing:
            return [_ack(part, "rejected", "missing-segments",
                         f"{len(missing)} segments not stored yet", missing=tuple(missing))]
        refusal = self._store_object(part, manifest_key(device, rid), data)
        if refusal is not None:
            return [refusal]
        row = self._recording_row(manifest, data)
        vouched = [str(wire.ObjectRef.manifest())] + [str(wire.ObjectRef.segment(i)) for i, _, _ in listed]
        if self.index.recording(rid, device) is None:  # locked before the row: see the module's "Order"
            lock_recording(self.store, self.config.store, self.config.retention,
                           [segment_key(device, rid, i) for i, _, _ in listed] + [row["manifest_key"]],
                           started_ms=row["started_ms"] or row["stored_ms"], flagged=row["flagged"],
                           now_ms=row["stored_ms"])
        if self.index.add_recording(row, vouched, self._signer(manifest, row["manifest_sha256"])):
            self._check_links(manifest, row["manifest_sha256"])
            logger.info("recording stored device=%s recording=%s seq=%d segments=%d",
                        device, rid, manifest["seq"], len(listed))
        self._staging.drop_pending(device, rid)
        issued = self.index.receipt(device, rid)
        if issued is None:
            raise SyncError(f"index {type(self.index).__name__} kept no receipt for recording {rid} of {device}")
        return [_ack(part, "stored", receipt=receipt.encode(as_receipt(issued)))]

    def issue_missing_receipts(self) -> int:
        """Sign receipts for recordings stored before this store kept a receipt log (``serve`` does at start).

        Each is stamped with the time the index says it was stored, and
        appended in that order; returns how many were signed.
        """
        missing = self.index.unreceipted()
        for row in missing:
            self.index.add_receipt(row["device_id"], row["recording_id"], self._signer(row, row["manifest_sha256"]))
        if missing:
            logger.info("receipts signed for recordings stored before the receipt log count=%d", len(missing))
        return len(missing)

    def _signer(self, manifest: dict[str, Any], digest: str) -> Signer:
        """Signs the recording's receipt inside the index's transaction, with ``prev`` from the log."""
        def sign(prev: str, stored_ms: int) -> receipt.Receipt:
            return receipt.sign(self._store_key, device_id=manifest["device_id"],
                                recording_id=manifest["recording_id"], seq=manifest["seq"],
                                manifest_sha256=digest, stored_ms=stored_ms, prev=prev)
        return sign

    def _compare_segments(self, device: str, rid: str,
                          listed: list[tuple[int, str, int]]) -> tuple[list[int], list[int]]:
        stored = {r["name"]: r for r in self.index.objects(device, rid) if r["stored_ms"] is not None}
        missing, wrong = [], []
        for index, sha256, size in listed:
            row = stored.get(f"seg/{index}")
            if row is None:
                missing.append(index)
            elif row["sha256"] != sha256 or row["size"] != size:
                wrong.append(index)
        return missing, wrong

    def _check_links(self, manifest: dict[str, Any], digest: str) -> None:
        device, rid, seq = manifest["device_id"], manifest["recording_id"], manifest["seq"]
        if seq == 1 and manifest["prev"] != mf.GENESIS:
            self._chain_break(device, rid, seq, "seq 1 does not start from the genesis hash")
        for before in self.index.recordings_at(device, seq - 1):
            if manifest["prev"] != before["manifest_sha256"]:
                self._chain_break(device, rid, seq, f"prev {manifest['prev'][:16]}... is not the hash of "
                                                    f"seq {seq - 1} ({before['manifest_sha256'][:16]}...)")
        for after in self.index.recordings_at(device, seq + 1):
            if after["prev"] != digest:
                self._chain_break(device, after["recording_id"], seq + 1,
                                  f"prev {after['prev'][:16]}... is not the hash of seq {seq} ({digest[:16]}...)")
        if len(self.index.recordings_at(device, seq)) > 1:
            self._chain_break(device, rid, seq, f"more than one recording claims seq {seq}")

    def _chain_break(self, device: str, rid: str, seq: int, detail: str) -> None:
        logger.warning("chain break stored device=%s recording=%s seq=%d: %s", device, rid, seq, detail)
        self.index.add_problem(device, rid, seq, "chain-break", detail, self._now_ms())

    def _recording_row(self, manifest: dict[str, Any], data: bytes) -> dict[str, Any]:
        started = int_at(manifest, "started", "wall_ms")
        ended = int_at(manifest, "ended", "wall_ms")
        events = manifest.get("events") if isinstance(manifest.get("events"), list) else []
        number, name = self._open_caller(manifest)
        segments = _segment_entries(manifest) or []
        return {
            "recording_id": manifest["recording_id"], "device_id": manifest["device_id"],
            "seq": manifest["seq"], "started_ms": started, "ended_ms": ended,
            "duration_ms": ended - started if started is not None and ended is not None else None,
            "flagged": manifest.get("flagged") is True, "recorded": manifest.get("recorded") is True,
            "discarded": manifest.get("discarded") is True,
            "ended_by": text(manifest.get("ended_by")),
            "consent": [e for e in events if isinstance(e, dict) and e.get("kind") in mf.CONSENT_KINDS],
            "metrics": manifest.get("metrics") if isinstance(manifest.get("metrics"), dict) else None,
            "caller_number": number, "caller_name": name, "caller_withheld": withheld(manifest),
            "manifest_sha256": mf.manifest_hash(data), "prev": manifest["prev"],
            "segments": len(segments), "bytes": sum(size for _, _, size in segments),
            "manifest_key": manifest_key(manifest["device_id"], manifest["recording_id"]),
            "stored_ms": self._now_ms(),
        }

    def _open_caller(self, manifest: dict[str, Any]) -> tuple[str | None, str | None]:
        sealed = manifest.get("caller")
        if not isinstance(sealed, str):
            return None, None
        if len(sealed) > MAX_SEALED_CALLER:
            logger.warning("caller id not read device=%s recording=%s: sealed caller id is %d characters, "
                           "at most %d", manifest["device_id"], manifest["recording_id"], len(sealed),
                           MAX_SEALED_CALLER)
            return None, None
        identity = self._central_identity()
        if identity is None:
            return None, None
        try:
            caller = untrusted.loads(pyrage.decrypt(base64.b64decode(sealed, validate=True), [identity]),
                                     what="sealed caller id", max_bytes=MAX_CALLER_JSON, max_depth=2)
        except (binascii.Error, pyrage.DecryptError, untrusted.Untrusted) as e:
            logger.warning("caller id not readable device=%s recording=%s: %s", manifest["device_id"],
                           manifest["recording_id"], e)
            return None, None
        if not isinstance(caller, dict):
            return None, None
        number, name = caller.get("number"), caller.get("name")
        return text(number), text(name)

    def _central_identity(self) -> pyrage.x25519.Identity | None:
        if self._identity is None:
            try:
                self._identity = load_identity(self.data_dir)
            except ConfigError as e:
                logger.warning("caller ids stay sealed in the index: %s", e)
        return self._identity

    # -- staging --

    def age_out(self, max_age_days: float | None = None) -> list[AgedOut]:
        """Remove staging untouched for ``max_age_days`` (default: the config's ``stale_staging_days``).

        Parts of objects that never completed and manifests that waited for
        segments that never came; each is logged and returned (device,
        recording, object, bytes). A box still sending that object sends it
        again whole: it never had its object-level ack. Files in staging the
        index does not know go by their modification time.
        """
        days = self.limits.stale_staging_days if max_age_days is None else max_age_days
        return self._staging.age_out(self._now_ms() - round(days * DAY_MS))

    # -- acks --

    def _stored(self, part: wire.Part) -> list[wire.Ack]:
        acks = [_ack(part, "stored", per_part=True)] if part.parts > 1 else []
        issued = self.index.receipt(part.device_id, part.recording_id) if part.object.kind == "manifest" else None
        encoded = None if issued is None else receipt.encode(as_receipt(issued))
        return acks + [_ack(part, "stored", receipt=encoded)]

    def _refuse(self, part: wire.Part, code: str, reason: str) -> wire.Ack:
        logger.warning("upload refused device=%s recording=%s object=%s code=%s: %s",
                       part.device_id, part.recording_id, part.object, code, reason)
        if code in RECORDED_CODES:
            self.index.add_problem(part.device_id, part.recording_id, None, f"refused-{code}",
                                   f"{part.object}: {reason}", self._now_ms())
        return _ack(part, "rejected", code, reason)

    def _now_ms(self) -> int:
        return round(self._clock.wall() * 1000)


def _ack(part: wire.Part, status: wire.Status, code: str | None = None, reason: str | None = None, *,
         per_part: bool = False, missing: tuple[int, ...] = (), receipt: str | None = None) -> wire.Ack:
    return wire.Ack(part.recording_id, part.object, part.sha256, status,
                    part.part if per_part else None, code, reason, missing, receipt)


def _check_part(part: wire.Part) -> None:
    """The checks ``wire.parse_part`` makes, for parts built by hand (import, tests, other workers)."""
    wire.check_device_id(part.device_id)
    wire.check_recording_id(part.recording_id)
    wire.check_sha256(part.sha256)
    if not isinstance(part.object, wire.ObjectRef):
        raise wire.WireError(f"object {part.object!r} is not an ObjectRef")
    wire.ObjectRef.parse(str(part.object))
    if not 1 <= part.parts <= wire.MAX_PARTS or not 0 <= part.part < part.parts:
        raise wire.WireError(f"part {part.part} of {part.parts} is out of range")
    if part.parts != max(1, -(-part.size // wire.PART_BYTES)):
        raise wire.WireError(f"{part.parts} parts cannot carry {part.size} bytes")
    expected = min(wire.PART_BYTES, part.size - part.part * wire.PART_BYTES)
    if len(part.payload) != expected:
        raise wire.WireError(f"part {part.part} of {part.object} is {len(part.payload)} bytes; expected {expected}")


def _segment_entries(manifest: dict[str, Any]) -> list[tuple[int, str, int]] | None:
    entries = []
    for entry in manifest["segments"]:
        if not isinstance(entry, dict):
            return None
        index, sha256, size = entry.get("index"), entry.get("sha256"), entry.get("bytes")
        if not (isinstance(index, int) and not isinstance(index, bool) and 0 <= index < wire.MAX_SEGMENTS
                and isinstance(sha256, str) and wire.SHA256.fullmatch(sha256)
                and isinstance(size, int) and not isinstance(size, bool)
                and 0 <= size <= MAX_OBJECT):
            return None
        entries.append((index, sha256, size))
    return entries
