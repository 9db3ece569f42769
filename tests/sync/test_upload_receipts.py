"""The upload protocol and delivery receipts: a recording is synced only with the store's valid receipt."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_upload import DEVICE, Centre, Store, make, rid, run_clean

from linetap.firmware import receipt
from linetap.firmware.clock import ManualClock
from linetap.sync import wire
from linetap.sync.upload import MANIFEST, Alarm, RecordingSynced
from linetap.sync.wire import Ack

STORE_KEY = Ed25519PrivateKey.generate()
TRUSTED = {receipt.key_id(STORE_KEY.public_key()): STORE_KEY.public_key()}


class ReceiptCentre(Centre):
    """The model centre, signing a receipt into each manifest's stored ack; ``mode`` says how."""

    def __init__(self, store: Store, mode: str = "valid") -> None:
        super().__init__(store)
        self.mode = mode
        self.manifest_acks = 0

    def receive(self, part: wire.Part) -> list[Ack]:
        acks = super().receive(part)
        return [self._with_receipt(a) if a.object == MANIFEST and a.part is None and a.status == "stored"
                else a for a in acks]

    def _with_receipt(self, ack: Ack) -> Ack:
        self.manifest_acks += 1
        if self.mode == "missing":
            return ack
        key = Ed25519PrivateKey.generate() if self.mode == "forged" else STORE_KEY
        digest = "ab" * 32 if self.mode == "other-hash" else ack.sha256
        recording = rid(999) if self.mode == "other-recording" else ack.recording_id
        signed = receipt.sign(key, device_id=DEVICE, recording_id=recording, seq=self.manifest_acks,
                              manifest_sha256=digest, stored_ms=1_700_000_000_000, prev=receipt.GENESIS)
        return Ack(ack.recording_id, ack.object, ack.sha256, "stored", receipt=receipt.encode(signed))


def synced_outputs(up, store: Store, centre: Centre, clock: ManualClock) -> list:
    """Run to quiet, collecting every output (the model store applies them too)."""
    seen = []
    real_poll = up.poll

    def poll() -> list:
        out = real_poll()
        seen.extend(out)
        return out

    up.poll = poll
    run_clean(up, store, centre, clock, limit=50)
    return seen


def test_a_valid_receipt_marks_the_recording_synced_and_is_handed_over_to_keep(clock: ManualClock) -> None:
    store = Store()
    r = store.add(1, [100, 200])
    up = make(store, clock, trusted=TRUSTED)
    up.connected()
    out = synced_outputs(up, store, ReceiptCentre(store), clock)
    [synced] = [o for o in out if isinstance(o, RecordingSynced)]
    manifest = store.objects[r, MANIFEST]
    kept = receipt.verify(synced.receipt, TRUSTED, device_id=DEVICE, recording_id=r,
                          manifest_sha256=hashlib.sha256(manifest).hexdigest())
    assert synced.recording_id == r and kept.data == synced.receipt
    assert store.synced == {r} and not [o for o in out if isinstance(o, Alarm)]


@pytest.mark.parametrize("mode, why", [("forged", "does not trust"), ("other-hash", "manifest_sha256"),
                                       ("other-recording", "recording_id"), ("missing", "no receipt")])
def test_a_missing_forged_or_mismatched_receipt_keeps_the_recording_and_asks_again(
        clock: ManualClock, mode: str, why: str) -> None:
    store = Store()
    r = store.add(1, [100])
    up = make(store, clock, trusted=TRUSTED, retry_base_s=2, ack_timeout_s=60)
    up.connected()
    centre = ReceiptCentre(store, mode)
    out = synced_outputs(up, store, centre, clock)
    alarms = [o for o in out if isinstance(o, Alarm)]
    assert alarms and all(a.recording_id == r and a.object == MANIFEST and a.code == "receipt-invalid"
                          and why in a.reason for a in alarms)
    assert store.synced == set() and not any(isinstance(o, RecordingSynced) for o in out)
    assert not up.is_blocked(r) and up.recordings == 1
    asked = centre.manifest_acks
    assert asked >= 2  # the manifest went again after the back-off, and again
    # The centre answers the next repeat with a good receipt: now it is synced.
    centre.mode = "valid"
    clock.advance(up.wake_at() - clock.monotonic())
    synced_outputs(up, store, centre, clock)
    assert store.synced == {r} and centre.manifest_acks == asked + 1


def test_the_manifest_goes_again_only_after_the_back_off(clock: ManualClock) -> None:
    store = Store()
    r = store.add(1, [10])
    up = make(store, clock, trusted=TRUSTED, retry_base_s=2, ack_timeout_s=60)
    up.connected()
    [seg] = store.apply(up.poll())
    up.acked(Ack(r, seg.object, seg.sha256, "stored"))
    [manifest] = store.apply(up.poll())
    up.acked(Ack(r, MANIFEST, manifest.sha256, "stored"))
    out = up.poll()
    assert [type(o) for o in out] == [Alarm] and store.apply(out) == []
    assert up.wake_at() == pytest.approx(clock.monotonic() + 2)
    clock.advance(2)
    assert store.apply(up.poll()) == [manifest]


def test_without_a_store_key_the_ack_alone_marks_synced_and_no_receipt_is_kept(clock: ManualClock) -> None:
    store = Store()
    r = store.add(1, [100])
    up = make(store, clock)
    up.connected()
    out = synced_outputs(up, store, ReceiptCentre(store, "missing"), clock)
    assert [o for o in out if isinstance(o, RecordingSynced)] == [RecordingSynced(r, None)]
    assert store.synced == {r} and not any(isinstance(o, Alarm) for o in out)
