"""Signed delivery receipts: the central store's proof that it stored a recording, and when.

When a recording's manifest is stored and verified, the central store signs
a receipt with its own Ed25519 *store key* (kept apart from the operator key,
which commands boxes) and returns it with the manifest's ``stored`` ack. The
box checks it with the store's public key before it counts the recording as
synced, and keeps it beside the manifest; retention deletes a synced
recording only once it holds a valid receipt. The centre also keeps every
receipt in a log chained by hash (``prev``), so a receipt cannot be dropped
from or slipped into the log afterwards without breaking the chain.

A receipt is canonical JSON (sorted keys, no spaces, no floats), signed like
a manifest: the signature covers the canonical bytes of every member but
``signature``. It travels in the ack as base64 of those exact bytes, so the
box keeps what was signed byte for byte.

Sans-IO: bytes and keys in, receipts or :class:`ReceiptError` out. It sits in
``firmware/`` beside the manifest format, like it: the box checks receipts
(uploader, ``spool verify``) and the central store makes them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from linetap.firmware.errors import AuthError
from linetap.firmware.keys import store_key_id
from linetap.firmware.manifest import DEVICE_ID, RECORDING_ID, SHA256, canonical
from linetap.firmware.untrusted import MAX_SAFE_INT, Untrusted, loads

FORMAT = "linetap-receipt/1"
MAX_BYTES = 1024  # a receipt is about 450 bytes
GENESIS = "0" * 64  # ``prev`` of the first receipt in a store's log
_FIELDS = ("format", "device_id", "recording_id", "seq", "manifest_sha256", "stored_ms", "prev", "key_id",
           "signature")


class ReceiptError(AuthError):
    """A receipt is malformed, signed by a key we do not trust, or about another manifest."""


@dataclass(frozen=True)
class Receipt:
    """A checked receipt and the exact bytes that were signed (what the box keeps)."""

    device_id: str
    recording_id: str
    seq: int
    manifest_sha256: str
    stored_ms: int
    prev: str
    key_id: str
    data: bytes

    @property
    def sha256(self) -> str:
        """What the next receipt in the centre's log names as ``prev``."""
        return hashlib.sha256(self.data).hexdigest()


key_id = store_key_id  # the key's owner names it; the receipt carries the name


def sign(key: Ed25519PrivateKey, *, device_id: str, recording_id: str, seq: int, manifest_sha256: str,
         stored_ms: int, prev: str) -> Receipt:
    """Make and sign a receipt; raises ReceiptError if a field is out of shape (a bug, not input)."""
    body: dict[str, Any] = {"format": FORMAT, "device_id": device_id, "recording_id": recording_id,
                            "seq": seq, "manifest_sha256": manifest_sha256, "stored_ms": stored_ms,
                            "prev": prev, "key_id": key_id(key.public_key())}
    _check_body(body)
    signature = base64.b64encode(key.sign(canonical(body))).decode("ascii")
    data = canonical({**body, "signature": {"alg": "ed25519", "value": signature}})
    return _receipt(body, data)


def encode(receipt: Receipt) -> str:
    """The receipt as it travels in an ack: base64 of the signed bytes."""
    return base64.b64encode(receipt.data).decode("ascii")


def decode(text: Any) -> bytes:
    """The signed bytes from an ack's ``receipt`` member; ReceiptError if it is not base64 of a receipt size."""
    if not isinstance(text, str) or len(text) > (MAX_BYTES * 4) // 3 + 4:
        raise ReceiptError("the ack's receipt is not a base64 text of at most "
                           f"{MAX_BYTES} bytes")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ReceiptError(f"the ack's receipt is not base64 ({e})") from None


def verify(data: bytes, trusted: dict[str, Ed25519PublicKey], *, device_id: str, recording_id: str,
           manifest_sha256: str) -> Receipt:
    """Check a receipt's shape, its signature by a trusted store key, and that it is about this manifest.

    ``trusted`` maps :func:`key_id` to store public keys. Raises
    :class:`ReceiptError` naming what is wrong.
    """
    try:
        value = loads(data, what="receipt", max_bytes=MAX_BYTES, max_depth=2)
    except Untrusted as e:
        raise ReceiptError(str(e)) from None
    if not isinstance(value, dict) or set(value) != set(_FIELDS):
        raise ReceiptError(f"receipt members are not {', '.join(_FIELDS)}")
    if canonical(value) != data:
        raise ReceiptError("receipt bytes are not in canonical form")
    body = {k: v for k, v in value.items() if k != "signature"}
    _check_body(body)
    public_key = trusted.get(body["key_id"])
    if public_key is None:
        raise ReceiptError(f"receipt is signed by store key {body['key_id']}, which this box does not trust "
                           "(provision the store's public key: linetap keys init --store-key)")
    signature = value["signature"]
    if not isinstance(signature, dict) or signature.get("alg") != "ed25519" or set(signature) != {"alg", "value"}:
        raise ReceiptError("receipt signature is not {alg: ed25519, value}")
    try:
        public_key.verify(base64.b64decode(signature["value"], validate=True), canonical(body))
    except (InvalidSignature, binascii.Error, ValueError, TypeError):
        raise ReceiptError(f"receipt signature does not verify with store key {body['key_id']}") from None
    for name, want in (("device_id", device_id), ("recording_id", recording_id),
                       ("manifest_sha256", manifest_sha256)):
        if body[name] != want:
            raise ReceiptError(f"receipt is for {name} {str(body[name])[:64]}, not {want}")
    return _receipt(body, data)


def _check_body(body: dict[str, Any]) -> None:
    for name, pattern in (("device_id", DEVICE_ID), ("recording_id", RECORDING_ID)):
        if not isinstance(body[name], str) or not pattern.fullmatch(body[name]):
            raise ReceiptError(f"receipt {name} {str(body[name])[:64]!r} is not a device id / recording id")
    if body["format"] != FORMAT:
        raise ReceiptError(f"receipt format {str(body['format'])[:40]!r} is not {FORMAT!r}")
    for name in ("seq", "stored_ms"):
        value = body[name]
        if type(value) is not int or not 0 <= value <= MAX_SAFE_INT:
            raise ReceiptError(f"receipt {name} {str(value)[:40]} is not a whole number in range")
    for name in ("manifest_sha256", "prev"):
        if not isinstance(body[name], str) or not SHA256.fullmatch(body[name]):
            raise ReceiptError(f"receipt {name} is not a SHA-256 in hex")
    if not isinstance(body["key_id"], str) or len(body["key_id"]) != 16 or \
            any(c not in "0123456789abcdef" for c in body["key_id"]):
        raise ReceiptError("receipt key_id is not 16 hex digits")


def _receipt(body: dict[str, Any], data: bytes) -> Receipt:
    return Receipt(body["device_id"], body["recording_id"], body["seq"], body["manifest_sha256"],
                   body["stored_ms"], body["prev"], body["key_id"], data)
