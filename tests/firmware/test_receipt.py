"""Signed delivery receipts: made by the store key, checked by the box, every forgery named."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from linetap.firmware import receipt
from linetap.firmware.manifest import canonical
from linetap.sync import wire
from linetap.firmware.receipt import GENESIS, ReceiptError

STORE = Ed25519PrivateKey.generate()
TRUSTED = {receipt.key_id(STORE.public_key()): STORE.public_key()}
DEVICE, RID, SHA = "lt-desk-1", "01a24c52-eb68-7c49-9759-0e18ec8e37de", "ab" * 32


def made(**changes: object) -> receipt.Receipt:
    fields = {"device_id": DEVICE, "recording_id": RID, "seq": 7, "manifest_sha256": SHA,
              "stored_ms": 1_765_000_000_000, "prev": GENESIS}
    return receipt.sign(STORE, **{**fields, **changes})  # type: ignore[arg-type]


def check(data: bytes, **want: str) -> receipt.Receipt:
    return receipt.verify(data, TRUSTED, **{"device_id": DEVICE, "recording_id": RID, "manifest_sha256": SHA,
                                            **want})


def test_a_receipt_verifies_and_travels_in_an_ack_byte_for_byte() -> None:
    r = made()
    ack = wire.Ack(RID, wire.ObjectRef.manifest(), SHA, "stored", receipt=receipt.encode(r))
    parsed = wire.parse_ack(wire.ack_topic(DEVICE, RID), ack.encode(), DEVICE)
    data = receipt.decode(parsed.receipt)
    assert data == r.data
    got = check(data)
    assert (got.seq, got.stored_ms, got.prev, got.sha256) == (7, 1_765_000_000_000, GENESIS, r.sha256)


def test_an_ack_without_a_receipt_still_parses() -> None:
    ack = wire.Ack(RID, wire.ObjectRef.manifest(), SHA, "stored")
    assert wire.parse_ack(wire.ack_topic(DEVICE, RID), ack.encode(), DEVICE).receipt is None


def _resigned(body: dict, key: Ed25519PrivateKey = STORE) -> bytes:
    body = {k: v for k, v in body.items() if k != "signature"}
    value = base64.b64encode(key.sign(canonical(body))).decode()
    return canonical({**body, "signature": {"alg": "ed25519", "value": value}})


@pytest.mark.parametrize("want, words", [
    ({"device_id": "lt-desk-2"}, "device_id lt-desk-1, not lt-desk-2"),
    ({"recording_id": "01a24c52-eb68-7c49-9759-0e18ec8e37df"}, "recording_id"),
    ({"manifest_sha256": "cd" * 32}, "manifest_sha256"),
])
def test_a_receipt_about_another_call_is_refused_by_name(want: dict, words: str) -> None:
    with pytest.raises(ReceiptError, match=words):
        check(made().data, **want)


def test_a_changed_byte_an_unknown_key_and_a_foreign_signature_are_refused() -> None:
    body = json.loads(made().data)
    with pytest.raises(ReceiptError, match="does not verify"):
        check(canonical({**body, "stored_ms": body["stored_ms"] + 1}))
    other = Ed25519PrivateKey.generate()
    with pytest.raises(ReceiptError, match="does not trust"):
        check(_resigned({**body, "key_id": receipt.key_id(other.public_key())}, other))
    with pytest.raises(ReceiptError, match="does not verify"):
        check(_resigned(body, other))  # our key id, someone else's signature
    with pytest.raises(ReceiptError, match="canonical"):
        check(json.dumps(body, indent=1).encode())


@pytest.mark.parametrize("change, words", [
    ({"seq": -1}, "seq"), ({"seq": True}, "seq"),
    ({"prev": "x"}, "prev"), ({"format": "linetap-receipt/9"}, "format"), ({"device_id": "A B"}, "device id"),
    ({"extra": 1}, "members"),
])
def test_malformed_receipts_are_refused_by_name(change: dict, words: str) -> None:
    body = {**json.loads(made().data), **change}
    with pytest.raises(ReceiptError, match=words):
        check(_resigned(body) if "extra" not in change else canonical(body))


def test_a_float_is_refused_before_anything_else() -> None:
    data = made().data.replace(b'"stored_ms":1765000000000', b'"stored_ms":1.5')
    with pytest.raises(ReceiptError, match="not an integer"):
        check(data)


def test_ack_receipt_member_that_is_not_text_or_not_base64() -> None:
    body = json.loads(wire.Ack(RID, wire.ObjectRef.manifest(), SHA, "stored").encode())
    with pytest.raises(wire.WireError, match="receipt"):
        wire.parse_ack(wire.ack_topic(DEVICE, RID), canonical({**body, "receipt": 5}), DEVICE)
    with pytest.raises(ReceiptError, match="base64"):
        receipt.decode("not base64!")


@given(st.binary(max_size=600))
def test_any_bytes_are_a_receipt_error_never_a_crash(data: bytes) -> None:
    with pytest.raises(ReceiptError):
        check(data)
