"""A redacted copy of a call's audio: its spoken card data silenced, re-encoded, signed by the store key.

``linetap-central redact ID`` reads the call back checked (as export does),
silences both channels over every ``spoken-card-data`` span the analysis
found (with :data:`MARGIN_S` either side: word times are the engine's
estimate), encodes the result as one Ogg Opus stream at the call's rate and
bitrate, encrypts it to the store's own age recipient and stores it beside
the original under ``redacted/`` (:func:`~linetap.sync.central.store.redaction_key`).

Its *record* (``redacted/record.json``, :data:`FORMAT`) is canonical JSON
signed by the store key, as receipts are: device, recording, seq, the
original's manifest sha256 and its receipt's sha256 (the links into the
device's chain and the receipt log), the copy's ciphertext and plaintext
sha256, the silenced spans, and when. The original can then be erased under
the normal rules (``linetap-central erase``): its tombstone keeps the same
manifest sha256, so the chain still runs through the erased call, and the
redacted copy, not an object of the original's index rows, stays.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyrage
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from linetap.firmware import manifest as mf
from linetap.firmware.errors import SyncError
from linetap.sync.central.index import UnknownRecording
from linetap.sync.central.keys import load_identity, load_store_key
from linetap.sync.central.store import redaction_key
from linetap.sync.central.stored import Stored
from linetap.sync.central.tombstone import verify_signed

logger = logging.getLogger(__name__)

FORMAT = "linetap-redaction/1"
AUDIO_NAME = "audio.ogg.age"
RECORD_NAME = "record.json"
MARGIN_S = 0.3
MAX_RECORD = 1 << 20


class NothingToRedact(SyncError, LookupError):
    """The analysis found no spoken card data in the call (or it was not analysed)."""


@dataclass(frozen=True)
class Redacted:
    audio_key: str
    record_key: str
    spans_ms: list[list[int]]


def redact(stored: Stored, recording_id: str, device_id: str | None = None) -> Redacted:
    """Make, sign and store the redacted copy of one analysed call; returns where it is."""
    from linetap.firmware.encoder import segments_to_pcm
    from linetap.sync.central.export import decrypted

    row = stored.recording(recording_id, device_id)
    device, rid = row["device_id"], row["recording_id"]
    if row["erased_ms"] is not None:
        raise UnknownRecording(f"recording {rid} was erased ({row['erase_reason']}); nothing is left to redact")
    events = [e for e in stored.index.analysis_events(device, rid) if e["kind"] == "spoken-card-data"]
    if not events:
        raise NothingToRedact(f"no spoken card data was found in recording {rid}; run `linetap-central analyze` "
                              f"first, and `linetap-central transcript {rid}` shows what it found")
    manifest = stored.checked_manifest(row)
    codec = manifest.get("codec") or {}
    pcm = segments_to_pcm(decrypted(stored, row, manifest), codec.get("rate"))
    spans = silence(pcm, codec["rate"], [(e["start_ms"], e["end_ms"]) for e in events])
    plaintext = encode(pcm, codec["rate"], codec.get("bitrate"))
    ciphertext = pyrage.encrypt(plaintext, [load_identity(stored.data_dir).to_public()])
    receipt = stored.index.receipt(device, rid)
    body = {"format": FORMAT, "device_id": device, "recording_id": rid, "seq": row["seq"],
            "original_manifest_sha256": row["manifest_sha256"],
            "original_receipt_sha256": None if receipt is None else receipt["sha256"],
            "audio_key": redaction_key(device, rid, AUDIO_NAME),
            "audio_sha256": hashlib.sha256(ciphertext).hexdigest(),
            "plaintext_sha256": hashlib.sha256(plaintext).hexdigest(),
            "silenced_ms": spans, "made_ms": stored.now_ms()}
    record = mf.sign(body, load_store_key(stored.data_dir))
    stored.store.put(body["audio_key"], ciphertext)
    record_key = redaction_key(device, rid, RECORD_NAME)
    stored.store.put(record_key, record)
    logger.info("redacted copy made device=%s recording=%s spans=%d", device, rid, len(spans))
    return Redacted(body["audio_key"], record_key, spans)


def silence(pcm: np.ndarray, rate: int, spans_ms: list[tuple[int, int]]) -> list[list[int]]:
    """Zero both channels over each span widened by :data:`MARGIN_S`; returns the spans silenced (ms)."""
    out = []
    for start, end in sorted(spans_ms):
        a = max(0, round(start - MARGIN_S * 1000))
        b = min(round(len(pcm) * 1000 / rate), round(end + MARGIN_S * 1000))
        pcm[a * rate // 1000:b * rate // 1000] = 0
        out.append([a, b])
    return out


def encode(pcm: np.ndarray, rate: int, bitrate: int | None) -> bytes:
    """One Ogg Opus stream of stereo int16 frames, as the box's encoder makes it."""
    from linetap.firmware.encoder import OpusSegmenter

    segmenter = OpusSegmenter(rate, **({"bitrate": bitrate} if isinstance(bitrate, int) else {}))
    pieces = [segmenter.write(pcm[i:i + rate]) for i in range(0, len(pcm), rate)]
    return b"".join(b"".join(p) for p in pieces) + segmenter.finish()


def verify_record(data: bytes, store_key: Ed25519PublicKey) -> dict[str, Any]:
    """Parse a redaction record and check the store key's signature; AuthError says what is wrong."""
    return verify_signed(data, store_key, form=FORMAT, what="redaction record", signer="store key",
                         max_bytes=MAX_RECORD)
