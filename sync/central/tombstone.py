"""Tombstones: what an erased recording leaves, signed with the operator key.

A tombstone is canonical JSON keeping exactly what the chain needs (the
recording's device, seq, manifest sha256 and prev) with when and why it was
erased, so ``verify`` still checks the links on both sides of an erased
recording and reports it as erased, not missing. This module owns the format:
:mod:`~linetap.sync.central.retention` writes tombstones,
:mod:`~linetap.sync.central.verify` reads them.
"""

from __future__ import annotations

import base64
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from linetap.firmware import manifest as mf
from linetap.firmware import untrusted
from linetap.firmware.errors import AuthError
from linetap.firmware.keys import public_key_b64

TOMBSTONE_FORMAT = "linetap-tombstone/1"
MAX_TOMBSTONE = 64 * 1024  # ids, hashes, a reason: a few hundred bytes
# The members a tombstone shares with its recording's index row.
CHAIN_MEMBERS = ("device_id", "recording_id", "seq", "manifest_sha256", "prev")


def sign_tombstone(row: dict[str, Any], reason: str, erased_wall_ms: int, operator: Ed25519PrivateKey) -> bytes:
    """The signed tombstone of the recording indexed as ``row``."""
    body = {"format": TOMBSTONE_FORMAT, "device_id": row["device_id"], "recording_id": row["recording_id"],
            "seq": row["seq"], "manifest_sha256": row["manifest_sha256"], "prev": row["prev"],
            "erased_wall_ms": erased_wall_ms, "reason": reason, "segments": row["segments"]}
    return mf.sign(body, operator)


def verify_tombstone(data: bytes, operator_key: Ed25519PublicKey) -> dict[str, Any]:
    """Parse a tombstone and check its operator signature; AuthError says what is wrong."""
    return verify_signed(data, operator_key, form=TOMBSTONE_FORMAT, what="tombstone", signer="operator key",
                         max_bytes=MAX_TOMBSTONE)


def verify_signed(data: bytes, key: Ed25519PublicKey, *, form: str, what: str, signer: str,
                  max_bytes: int) -> dict[str, Any]:
    """A signed canonical document of format ``form`` (a tombstone, a redaction record), checked against
    ``key`` (the store's ``signer``); returns it without its signature, AuthError naming what is wrong."""
    try:
        value = untrusted.loads(data, what=what, max_bytes=max_bytes)
    except untrusted.Untrusted as e:
        raise AuthError(f"{what} is not JSON: {e}") from None
    if not isinstance(value, dict) or value.get("format") != form or not isinstance(value.get("signature"), dict):
        raise AuthError(f"{what} is not a {form} document")
    signature = value.pop("signature")
    if signature.get("public_key") != public_key_b64(key):
        raise AuthError(f"{what} is signed by another key than this store's {signer}")
    try:
        key.verify(base64.b64decode(signature.get("value", ""), validate=True), mf.canonical(value))
    except (InvalidSignature, ValueError) as e:
        raise AuthError(f"{what} signature does not verify (the {what} was altered)") from e
    return value
